#!/usr/bin/env python3
"""Writes N deterministic order records (about 230 bytes of JSON each, one per line) to stdout.

About 2 % are test orders (dropped by the rule) and 1 % are malformed (rejected), like a real stream.
    python3 benches/gen_orders.py 200000 > /tmp/orders.jsonl
    python3 benches/gen_orders.py 20000 40000 > /tmp/part-3.jsonl    # ids from o-00040000 (other workers' files)
"""
import json
import random
import sys


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    first = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    rng = random.Random(42 + first)
    out = sys.stdout
    for i in range(first, first + n):
        lines = [
            {"sku": f"SKU-{rng.randrange(100)}", "qty": 1 + rng.randrange(5),
             "unit_price": f"{rng.randrange(50)}.{rng.randrange(100):02d}"}
            for _ in range(1 + rng.randrange(2))
        ]
        order = {
            "order_id": f"o-{i:08d}", "customer_id": f"c-{rng.randrange(10000)}",
            "placed_at": f"2026-11-21T{rng.randrange(24):02d}:{rng.randrange(60):02d}:30Z", "currency": "EUR",
            "test": rng.random() < 0.02, "shipping": {"country": "ES", "city": "Madrid"}, "lines": lines,
        }
        if rng.random() < 0.01:
            order["currency"] = "EURO"
        out.write(json.dumps(order, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
