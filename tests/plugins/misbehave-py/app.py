"""The sandbox test plugin in Python (see tests/plugins/misbehave for the Rust one): each payload is a command.

It overrides the weir_rule helper's ``process``, so that an exception is a trap rather than a reject, and builds
either contract version (scripts/build-plugins.sh makes misbehave-py on 0.2 and misbehave-py-v01 on 0.1).
"""
from weir_rule import Rule, drop, emit, finish_batch, reject, row


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
