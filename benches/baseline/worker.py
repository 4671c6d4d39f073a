#!/usr/bin/env python3
"""The seed-style Python worker weir is measured against: read JSON lines, apply the orders rule in Python,
load with psycopg2 `execute_values` into a temp stage, merge with DELETE + INSERT, one commit per 5,000-row
batch. Same rule and same tables as weir's orders example (exact decimals, test orders dropped, malformed
orders rejected).

    python3 benches/baseline/worker.py INPUT.jsonl POSTGRES_URL
"""
import json
import sys
from datetime import datetime
from decimal import Decimal, InvalidOperation

import psycopg2
from psycopg2.extras import execute_values

BATCH = 5000

DDL = """
CREATE TABLE IF NOT EXISTS orders (order_id VARCHAR(36) NOT NULL, customer_id VARCHAR(64), placed_at TIMESTAMPTZ,
  currency VARCHAR(3), total DECIMAL(18,2), line_count INTEGER, country VARCHAR(2), shipping SUPER,
  PRIMARY KEY (order_id));
CREATE TABLE IF NOT EXISTS order_lines (order_id VARCHAR(36) NOT NULL, line_no INTEGER NOT NULL, sku VARCHAR(64),
  qty INTEGER, unit_price DECIMAL(18,2), amount DECIMAL(18,2), PRIMARY KEY (order_id, line_no));
CREATE TEMP TABLE stage_orders (LIKE orders);
CREATE TEMP TABLE stage_lines (LIKE order_lines);
"""


def rule(payload):
    """Returns (order_row, line_rows) or None for a drop or a reject."""
    try:
        o = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(o, dict) or not o.get("order_id"):
        return None
    if o.get("test") is True:
        return None
    try:
        placed_at = datetime.fromisoformat(o["placed_at"].replace("Z", "+00:00"))
    except (KeyError, ValueError, AttributeError):
        return None
    currency = o.get("currency")
    if not (isinstance(currency, str) and len(currency) == 3 and currency.isalpha()):
        return None
    lines = o.get("lines")
    if not lines:
        return None
    rows, total = [], Decimal(0)
    for i, line in enumerate(lines, 1):
        qty = line.get("qty")
        if not isinstance(qty, int) or qty <= 0:
            return None
        try:
            price = Decimal(line["unit_price"])
        except (KeyError, InvalidOperation, TypeError):
            return None
        if price.as_tuple().exponent < -2:
            return None
        amount = price * qty
        total += amount
        rows.append((o["order_id"], i, line.get("sku"), qty, price, amount))
    shipping = o.get("shipping")
    order = (o["order_id"], o.get("customer_id"), placed_at, currency, total, len(lines),
             (shipping or {}).get("country"), json.dumps(shipping) if shipping is not None else None)
    return order, rows


def flush(conn, orders, lines):
    with conn.cursor() as cur:
        cur.execute("DELETE FROM stage_orders; DELETE FROM stage_lines;")
        execute_values(cur, "INSERT INTO stage_orders VALUES %s", orders,
                       template="(%s, %s, %s, %s, %s, %s, %s, JSON_PARSE(%s))", page_size=1000)
        execute_values(cur, "INSERT INTO stage_lines VALUES %s", lines, page_size=1000)
        cur.execute("DELETE FROM orders USING stage_orders WHERE orders.order_id = stage_orders.order_id;"
                    "INSERT INTO orders SELECT * FROM stage_orders;"
                    "DELETE FROM order_lines USING stage_lines WHERE order_lines.order_id = stage_lines.order_id"
                    " AND order_lines.line_no = stage_lines.line_no;"
                    "INSERT INTO order_lines SELECT * FROM stage_lines;")
    conn.commit()


def main() -> None:
    path, url = sys.argv[1], sys.argv[2]
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute(DDL)
    conn.commit()
    orders, lines, n = [], [], 0
    with open(path, "rb") as f:
        for payload in f:
            n += 1
            out = rule(payload)
            if out:
                # Latest row per key within a batch, as the merge requires.
                orders.append(out[0])
                lines.extend(out[1])
            if n % BATCH == 0:
                flush(conn, list({r[0]: r for r in orders}.values()),
                      list({(r[0], r[1]): r for r in lines}.values()))
                orders, lines = [], []
    if orders:
        flush(conn, list({r[0]: r for r in orders}.values()), list({(r[0], r[1]): r for r in lines}.values()))
    print(n)


if __name__ == "__main__":
    main()
