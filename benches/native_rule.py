#!/usr/bin/env python3
"""The orders rule in native CPython, for the sandbox's Python and Rust rates to be read against it in one run.

Two rows, records/s over the same input, batches of 100 and 1,000, each run for SECS seconds:
- `orders-py (native)`: plugins/orders-py/app.py with the weir_rule helper exactly as it runs in the sandbox on
  contract 0.2 — the record objects, the rule, and the packing of the rows into the buffer the host reads —
  with a stand-in for the bindings componentize-py generates (`wit_world`), so nothing but the interpreter
  differs from `weir plugin bench plugins/dist/orders-py.wasm`.
- `worker.py rule (native)`: the seed-style worker's own `rule` (benches/baseline/worker.py), which builds tuples
  for psycopg2 and does no packing.

    python3 benches/native_rule.py INPUT.jsonl [SECS]
"""
import os
import sys
import time
import types

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stand_in_bindings():
    """A `wit_world` module shaped like componentize-py's for the 0.2 world (no outcome types: packed rows)."""
    world = types.ModuleType("wit_world")

    class WitWorld:
        pass

    class Err(Exception):
        pass

    world.WitWorld, world.Err = WitWorld, Err
    imports = types.ModuleType("wit_world.imports")
    host = types.ModuleType("wit_world.imports.host")
    host.Level = types.SimpleNamespace(TRACE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4)
    host.log = lambda level, message: None
    host.count = lambda metric, delta: None
    wit_types = types.ModuleType("wit_world.imports.types")
    imports.host, imports.types = host, wit_types
    world.imports = imports
    for name, module in [
        ("wit_world", world),
        ("wit_world.imports", imports),
        ("wit_world.imports.host", host),
        ("wit_world.imports.types", wit_types),
    ]:
        sys.modules[name] = module


class Record:
    __slots__ = ("id", "partition_key", "arrived_at_ms", "attributes", "payload")

    def __init__(self, i, payload):
        self.id = f"file/bench/{i}"
        self.partition_key = "bench"
        self.arrived_at_ms = 0
        self.attributes = [("line", str(i))]
        self.payload = payload


def tables():
    """The quickstart's tables, as `init` gets them."""
    column = lambda name: types.SimpleNamespace(name=name)
    table = lambda name, cols: types.SimpleNamespace(name=name, columns=[column(c) for c in cols], key=[])
    return [
        table("orders", ["order_id", "customer_id", "placed_at", "currency", "total", "line_count", "country", "shipping"]),
        table("order_lines", ["order_id", "line_no", "sku", "qty", "unit_price", "amount"]),
    ]


def rate(run, records, batch, secs):
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < secs:
        for start in range(0, len(records), batch):
            run(records[start:start + batch])
        done += len(records)
    return done / (time.perf_counter() - started)


def main():
    path = sys.argv[1]
    secs = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    with open(path, "rb") as f:
        payloads = [line.rstrip(b"\n") for line in f if line.strip()]
    stand_in_bindings()
    sys.path[:0] = [os.path.join(root, "plugins/python"), os.path.join(root, "plugins/orders-py")]
    import app  # noqa: E402

    rule = app.WitWorld()
    rule.init(tables(), [])
    records = [Record(i + 1, p) for i, p in enumerate(payloads)]
    assert isinstance(rule.process(records[:10]), bytes), "the helper packs rows (contract 0.2)"

    sys.path.insert(0, os.path.join(root, "benches/baseline"))
    try:
        import worker  # noqa: E402
    except ImportError:  # psycopg2 missing: the rule alone is what is measured
        sys.modules["psycopg2"] = types.ModuleType("psycopg2")
        extras = types.ModuleType("psycopg2.extras")
        extras.execute_values = None
        sys.modules["psycopg2.extras"] = extras
        import worker  # noqa: E402
    texts = [p.decode("utf-8") for p in payloads]

    print(f"orders rule in native CPython {sys.version.split()[0]}, {len(records)} records; records/s")
    print("| rule | batch 100 | batch 1000 |")
    print("|---|---:|---:|")
    rows = [
        ("orders-py (native, contract 0.2 packing)", lambda b: rule.process(b), records),
        ("worker.py rule (native)", lambda b: [worker.rule(t) for t in b], texts),
    ]
    for name, run, data in rows:
        print(f"| {name} | {rate(run, data, 100, secs):.0f} | {rate(run, data, 1000, secs):.0f} |")


if __name__ == "__main__":
    main()
