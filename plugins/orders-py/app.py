"""The orders rule in Python: the same outcomes as plugins/orders (Rust), checked by tests/conformance.rs."""
import json
import re
from datetime import datetime
from decimal import Decimal

from weir_rule import Json, Rule, drop, emit, reject, row

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_I64_MAX = 2**63 - 1


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


def _cents(s):
    """Cents of a decimal string with at most 2 decimals, else None."""
    if not isinstance(s, str):
        return None
    whole, dot, frac = s.partition(".")
    if not whole or len(whole) > 30 or not whole.isascii() or not whole.isdigit():
        return None
    if dot and (not frac or len(frac) > 2 or not frac.isascii() or not frac.isdigit()):
        return None
    return int(whole) * 100 + (int(frac.ljust(2, "0")) if frac else 0)


def _money(cents):
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


class WitWorld(Rule):
    def process_record(self, record):
        try:
            text = record.payload.decode("utf-8")
        except UnicodeDecodeError as e:
            return reject(f"payload: not valid UTF-8 ({e})")
        try:
            order = json.loads(text, parse_constant=_no_constants)
        except ValueError as e:
            return reject(f"payload: not valid JSON ({e})")
        if not isinstance(order, dict):
            return reject("payload: not a JSON object")

        order_id = order.get("order_id")
        if order_id is None or (isinstance(order_id, str) and not order_id.strip()):
            return reject("order_id: missing or empty")
        if not isinstance(order_id, str):
            return reject("order_id: must be a string")
        if order.get("test") is True:
            return drop("test order")
        placed_at = order.get("placed_at")
        if not isinstance(placed_at, str):
            return reject("placed_at: missing or not a string")
        try:
            if not _RFC3339.match(placed_at):
                raise ValueError
            placed = datetime.fromisoformat(placed_at.replace("z", "Z").replace("t", "T"))
        except ValueError:
            return reject(f"placed_at: not an RFC 3339 timestamp: {json.dumps(placed_at)}")
        currency = order.get("currency")
        if not (isinstance(currency, str) and len(currency) == 3 and currency.isascii() and currency.isalpha()):
            return reject("currency: must be three letters")
        lines = order.get("lines")
        if not isinstance(lines, list) or not lines:
            return reject("lines: missing or empty")

        rows = []
        total = 0
        for i, line in enumerate(lines):
            line = line if isinstance(line, dict) else {}
            qty = line.get("qty")
            if isinstance(qty, bool) or not isinstance(qty, int) or not 0 < qty <= _I64_MAX:
                return reject(f"lines[{i}].qty: must be a positive integer")
            price = _cents(line.get("unit_price"))
            if price is None:
                return reject(f"lines[{i}].unit_price: must be a decimal string with at most 2 decimals")
            amount = price * qty
            total += amount
            sku = line.get("sku")
            rows.append(row("order_lines", order_id=order_id, line_no=i + 1,
                            sku=sku if isinstance(sku, str) else None, qty=qty,
                            unit_price=Decimal(_money(price)), amount=Decimal(_money(amount))))

        shipping = order.get("shipping")
        country = shipping.get("country") if isinstance(shipping, dict) else None
        customer = order.get("customer_id")
        head = row("orders", order_id=order_id,
                   customer_id=customer if isinstance(customer, str) else None,
                   placed_at=placed, currency=currency, total=Decimal(_money(total)),
                   line_count=len(lines), country=country if isinstance(country, str) else None,
                   shipping=Json(shipping))
        return emit(head, *rows)
