"""The sandbox test plugin in Python (see tests/plugins/misbehave for the Rust one): each payload is a command.

It overrides the weir_rule helper's ``process``, so that an exception is a trap rather than a reject, and builds
either contract version (scripts/build-plugins.sh makes misbehave-py on 0.2 and misbehave-py-v01 on 0.1).
"""
import random
import sys

from weir_rule import Rule, drop, emit, finish_batch, reject, row


def churn(seed):
    """Objects of every small size and a few larger ones, made, grown, shrunk and freed in a random order, each
    checked against what it must hold: the helper's allocator (weir_rule/_alloc.c) hands out, moves and takes
    back blocks here. None when every object kept its contents, else what changed."""
    if "weir_rule._alloc" not in sys.modules:
        return "the helper's allocator module is not loaded"
    rng = random.Random(seed)
    live = {}

    def expected(kind, key, n):
        if kind == 0:
            return bytes([key & 255]) * n
        if kind == 1:
            return [key] * n
        return {i: key for i in range(n)}

    for _ in range(30_000):
        key = rng.randrange(3_000)
        if key in live:
            kind, n, obj = live.pop(key)
            if obj != expected(kind, key, n):
                return f"object {key} ({('bytes', 'list', 'dict')[kind]} of {n}) changed"
            continue
        kind = rng.randrange(3)
        n = rng.randrange(0, 90) if rng.random() < 0.95 else rng.randrange(90, 3_000)
        if kind == 1 and rng.random() < 0.5:  # grown one item at a time: realloc through every size class
            obj = []
            for _ in range(n):
                obj.append(key)
        elif kind == 0 and rng.random() < 0.5:  # grown, then shrunk back
            obj = bytearray(bytes([key & 255]) * (n + 600))
            del obj[n:]
            obj = bytes(obj)
        else:
            obj = expected(kind, key, n)
        live[key] = (kind, n, obj)
    for key, (kind, n, obj) in live.items():
        if obj != expected(kind, key, n):
            return f"object {key} ({('bytes', 'list', 'dict')[kind]} of {n}) changed"
    return None


def one(record):
    payload = record.payload.decode("utf-8", "replace").strip()
    if payload.startswith("ok:"):
        return emit(row("t", id=payload[3:], n=1))
    if payload == "trap":
        raise RuntimeError(f"boom on purpose in {record.id}")
    if payload == "loop":
        n = 0
        while True:
            n += 1
    if payload == "alloc":
        block = bytearray(512 << 20)
        return drop(f"allocated {len(block)}")
    if payload.startswith("churn:"):
        changed = churn(int(payload[6:]))
        return reject(changed) if changed else emit(row("t", id=payload, n=1))
    if payload == "badcol":
        return emit(row("t", id="x", evil="1"))
    if payload == "badtable":
        return emit(row('t"; DROP TABLE t; --', id="x"))
    if payload == "badtype":
        return emit(row("t", id="x", n="one"))
    if payload == "drop":
        return drop("asked to drop")
    return reject("unknown command")


class WitWorld(Rule):
    def process(self, batch):
        out = []
        for record in batch:
            if record.payload.strip() == b"extra":
                out.append(drop("one"))
            out.append(one(record))
        return finish_batch(out)
