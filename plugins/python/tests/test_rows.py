#!/usr/bin/env python3
"""The Python helper's `row()` fast path against its general path, in native CPython.

`row()` encodes the common cell types inline for speed (plugins/python/weir_rule); everything else, and every
error, goes through `_general_row`. Over random rows of edge values, both must give the same packed buffer, or
the same exception with the same message, so a rule's output and its rejects never depend on which path ran.

    python3 plugins/python/tests/test_rows.py [CASES]
"""
import datetime as dt
import decimal
import os
import random
import sys

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path[:0] = [os.path.join(root, "benches"), os.path.join(root, "plugins", "python")]
import native_rule  # noqa: E402  (the stand-in for componentize-py's bindings, and the quickstart's tables)

native_rule.stand_in_bindings()
import weir_rule  # noqa: E402

D = decimal.Decimal
UTC = dt.timezone.utc


def values(rng):
    """Edge values of every type a cell can hold, and some it cannot."""
    text = [
        "",
        "a",
        "é" * rng.randrange(1, 140),  # two bytes each: both sides of the 256-byte head table
        "x" * rng.choice([254, 255, 256, 257, 1000]),
        "\ud800 lone surrogate",
        "nul\x00inside",
        "日本語",
    ]
    ints = [0, 1, 255, 256, -1, -256, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 10**30, rng.randrange(-(10**12), 10**12)]
    decimals = [D("0"), D("-0"), D("1.50"), D("1E+3"), D("1e-30"), D("123456789.123456789"), D("NaN"), D("Infinity"),
                D("-Infinity"), D("sNaN"), D("0E-7"), D(rng.randrange(-(10**9), 10**9)).scaleb(-rng.randrange(0, 12))]
    other = [
        None, True, False, 1.5, float("nan"), float("inf"), -0.0,
        dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), dt.datetime(2026, 1, 2),  # the second is naive: an error
        {"a": [1, "é"]}, [1, 2], weir_rule.Json("just text"), weir_rule.Json(None), b"bytes", object(), (1, 2),
    ]
    pool = text + ints + decimals + other
    return [rng.choice(pool) for _ in range(12)]


def outcome(make):
    try:
        return ("packed", weir_rule._pack([weir_rule.emit(make())]))
    except Exception as e:  # noqa: BLE001 — the exception is the result under test
        return ("raised", type(e), str(e))


def main():
    cases = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    rng = random.Random(19)
    weir_rule.Rule().init(native_rule.tables(), [])
    declared = {t.name: [c.name for c in t.columns] for t in native_rule.tables()}
    fast = 0
    for case in range(cases):
        table = rng.choice(["orders", "orders", "order_lines", "order_lines", "not_declared"])
        names = list(declared.get(table, ["a", "b"]))
        rng.shuffle(names)
        names = names[: rng.randrange(0, len(names) + 1)]
        if rng.random() < 0.1:
            names.insert(rng.randrange(0, len(names) + 1), "not_a_column")
        pool = values(rng)
        # Mostly storable values, so the fast path runs to the end in most cases.
        cells = {n: (rng.choice(pool) if rng.random() < 0.15 else rng.choice(["text", 7, D("2.50"), None])) for n in names}
        try:
            fast += type(weir_rule.row(table, **cells)) is bytes
        except Exception:  # noqa: BLE001 — compared below
            pass
        got = outcome(lambda: weir_rule.row(table, **cells))
        want = outcome(lambda: weir_rule._general_row(table, cells))
        if got != want:
            print(f"case {case}: row({table!r}, {cells!r})\n  fast path:    {got!r}\n  general path: {want!r}")
            return 1
    # The comparison means something only if the fast path ran: most rows are declared and storable.
    if fast < cases // 4:
        print(f"the fast path made only {fast} of {cases} rows")
        return 1
    print(f"ok: {cases} rows, {fast} by the fast path, identical to the general path")
    return 0


if __name__ == "__main__":
    sys.exit(main())
