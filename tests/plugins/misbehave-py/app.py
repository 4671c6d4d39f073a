"""The sandbox test plugin in Python (see tests/plugins/misbehave for the Rust one): each payload is a command.

Written against the generated bindings directly, not the weir_rule helper, so that an exception is a trap.
"""
import wit_world
from wit_world.imports import types as t


def one(record):
    payload = record.payload.decode("utf-8", "replace").strip()
    if payload.startswith("ok:"):
        return t.Outcome_Emit([t.Row("t", [("id", t.Value_Text(payload[3:])), ("n", t.Value_Integer(1))])])
    if payload == "trap":
        raise RuntimeError(f"boom on purpose in {record.id}")
    if payload == "loop":
        n = 0
        while True:
            n += 1
    if payload == "alloc":
        block = bytearray(512 << 20)
        return t.Outcome_Drop(f"allocated {len(block)}")
    if payload == "badcol":
        return t.Outcome_Emit([t.Row("t", [("id", t.Value_Text("x")), ("evil", t.Value_Text("1"))])])
    if payload == "badtable":
        return t.Outcome_Emit([t.Row('t"; DROP TABLE t; --', [("id", t.Value_Text("x"))])])
    if payload == "badtype":
        return t.Outcome_Emit([t.Row("t", [("id", t.Value_Text("x")), ("n", t.Value_Text("one"))])])
    if payload == "drop":
        return t.Outcome_Drop("asked to drop")
    return t.Outcome_Reject("unknown command")


class WitWorld(wit_world.WitWorld):
    def init(self, settings):
        pass

    def process(self, batch):
        out = []
        for record in batch:
            if record.payload.strip() == b"extra":
                out.append(t.Outcome_Drop("one"))
            out.append(one(record))
        return out
