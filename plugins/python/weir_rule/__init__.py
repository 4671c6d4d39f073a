"""Write weir business rules in Python (componentize-py).

A rule is a class named ``WitWorld`` in your app module that derives from :class:`Rule` and implements
``process_record(record)``, returning :func:`emit` rows, :func:`drop` or :func:`reject`::

    from weir_rule import Rule, emit, drop, reject, row

    class WitWorld(Rule):
        def setup(self, settings):           # optional: the [rule] settings, as a dict
            self.currency = settings.get("currency", "EUR")

        def process_record(self, record):
            text = record.payload.decode("utf-8")
            return emit(row("greetings", text=text))

The same helper builds both contract versions, whichever ``wit/`` folder componentize-py is given:
``weir:rules@0.2.0`` (``-d wit/v0.2``: the host passes the declared tables to ``init`` and the batch's rows go
back packed in one ``bytes`` buffer, built here with ``struct``) or ``weir:rules@0.1.0`` (``-d wit``: one WIT value
per cell).

Cells are plain Python values: ``str`` → text, ``int`` → integer, ``float`` → float, ``bool`` → boolean,
``None`` → NULL, ``decimal.Decimal`` → decimal, ``datetime`` (aware) → timestamp, ``dict``/``list`` → JSON (use
:class:`Json` for a JSON string or scalar). Build with
``componentize-py -d wit/v0.2 -w rule componentize app -p plugins/python -p . -o rule.wasm`` and stamp it with
``weir plugin stamp rule.wasm`` (it names the version the component imports).

Reject bad data with a reason that names the field (``reject("placed_at: not an RFC 3339 timestamp")``). An
exception escaping ``process_record`` rejects that record with the exception as its reason.
"""
# First, before the imports below make objects: pymalloc for the CPython inside the component, which is built
# without it (weir_rule/_alloc.c). Native CPython has its own and no such module.
try:
    from . import _alloc  # noqa: F401
except ImportError:
    pass
import datetime as _dt
import decimal as _decimal
import json as _json
import struct as _struct

import wit_world
from wit_world.imports import host as _host
from wit_world.imports import types as _t

__all__ = ["Rule", "Json", "emit", "drop", "reject", "row", "log", "count", "finish_batch", "CONTRACT_VERSION"]

#: Whether this build is against contract 0.1 (its WIT has outcome values; 0.2's has none).
_V01 = hasattr(_t, "Outcome_Emit")

#: The ``weir:rules`` contract version this build implements.
CONTRACT_VERSION = "0.1.0" if _V01 else "0.2.0"

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


class Json:
    """A JSON cell from a value that would otherwise map to another type (a string, a number)."""

    def __init__(self, value):
        self.value = value


def _json_text(value):
    return _json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _value(v):
    if v is None:
        return _t.Value_Null()
    if isinstance(v, bool):
        return _t.Value_Boolean(v)
    if isinstance(v, int):
        return _t.Value_Integer(v)
    if isinstance(v, float):
        return _t.Value_Float(v)
    if isinstance(v, _decimal.Decimal):
        return _t.Value_Decimal(format(v, "f"))
    if isinstance(v, str):
        return _t.Value_Text(v)
    if isinstance(v, _dt.datetime):
        if v.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return _t.Value_TimestampUs((v - _EPOCH) // _dt.timedelta(microseconds=1))
    if isinstance(v, Json):
        return _t.Value_Null() if v.value is None else _t.Value_Json(_json_text(v.value))
    if isinstance(v, (dict, list)):
        return _t.Value_Json(_json_text(v))
    raise TypeError(f"cannot store a {type(v).__name__} in a cell")


# Contract 0.2's packed layout (docs/CONTRACT.md): each cell is encoded when the row is made, so a value that
# cannot be stored raises inside ``process_record`` exactly as with 0.1.
_U32 = _struct.Struct("<I").pack
_TAG_U32 = _struct.Struct("<BI").pack
_TAG_I64 = _struct.Struct("<Bq").pack
_TAG_F64 = _struct.Struct("<Bd").pack
_NULL = b"\x00"
_TRUE = b"\x01\x01"
_FALSE = b"\x01\x00"
_EMIT, _DROP, _REJECT, _INVALID = 0, 1, 2, 3


def _text(tag, s):
    b = s.encode("utf-8", "surrogatepass")
    return _TAG_U32(tag, len(b)) + b


def _cell(v):
    if v is None:
        return _NULL
    if isinstance(v, bool):
        return _TRUE if v else _FALSE
    if isinstance(v, int):
        if not -(2**63) <= v < 2**63:
            raise OverflowError(f"{v} does not fit in 64 bits")
        return _TAG_I64(2, v)
    if isinstance(v, float):
        return _TAG_F64(3, v)
    if isinstance(v, _decimal.Decimal):
        return _text(4, format(v, "f"))
    if isinstance(v, str):
        return _text(5, v)
    if isinstance(v, _dt.datetime):
        if v.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return _TAG_I64(6, (v - _EPOCH) // _dt.timedelta(microseconds=1))
    if isinstance(v, Json):
        return _NULL if v.value is None else _text(7, _json_text(v.value))
    if isinstance(v, (dict, list)):
        return _text(7, _json_text(v))
    raise TypeError(f"cannot store a {type(v).__name__} in a cell")


def row(table, **cells):
    """A row of ``table`` with the given cells (column=value)."""
    if _V01:
        return _t.Row(table, [(name, _value(v)) for name, v in cells.items()])
    declared = _TABLES.get(table)
    if declared is not None and cells.keys() <= declared[3]:
        # The packed row, every declared column in order, as one ``bytes``. The common types are encoded
        # here with no call and, for short text and small integers, no new object per cell: inside the
        # sandbox CPython runs without pymalloc, so each small allocation is a trip through libc's malloc.
        try:
            get = cells.get
            parts = [declared[4]]
            append = parts.append
            for name in declared[5]:
                v = get(name)
                t = type(v)
                if t is str:
                    b = v.encode("utf-8", "surrogatepass")
                    n = len(b)
                    append(_TEXT_HEAD[n] if n < _HEADS else _TAG_U32(5, n))
                    append(b)
                elif v is None:
                    append(_NULL)
                elif t is int:
                    if 0 <= v < _HEADS:
                        append(_SMALL_INT[v])
                    elif _I64_MIN <= v < _I64_END:
                        append(_TAG_I64(2, v))
                    else:
                        raise OverflowError
                elif t is _decimal.Decimal:
                    b = str(v)  # the same text as format(v, "f") unless in exponent form, and twice as fast
                    b = (format(v, "f") if "E" in b or "e" in b else b).encode()
                    n = len(b)
                    append(_DECIMAL_HEAD[n] if n < _HEADS else _TAG_U32(4, n))
                    append(b)
                else:
                    append(_cell(v))
            return b"".join(parts)
        except Exception:
            pass  # the general path below raises the same error, for the first bad cell in the caller's order
    return _general_row(table, cells)


def _general_row(table, cells):
    """A row as (table, {column: encoded cell}), checked against the declared tables only when packed: what
    ``row`` falls back to, and what its fast path must match byte for byte (plugins/python/tests)."""
    return (table, {name: _cell(v) for name, v in cells.items()})


_I64_MIN, _I64_END = -(2**63), 2**63
#: Encoded heads of text and decimal cells shorter than this many bytes, and encoded integer cells below it.
_HEADS = 256
_TEXT_HEAD = [_TAG_U32(5, n) for n in range(_HEADS)]
_DECIMAL_HEAD = [_TAG_U32(4, n) for n in range(_HEADS)]
_SMALL_INT = [_TAG_I64(2, n) for n in range(_HEADS)]
_EMIT_HEAD = [_TAG_U32(_EMIT, n) for n in range(_HEADS)]


def emit(*rows):
    """The record becomes these rows (possibly none)."""
    return _t.Outcome_Emit(list(rows)) if _V01 else (_EMIT, rows)


def drop(reason):
    """The record is deliberately not loaded, for this reason."""
    return _t.Outcome_Drop(reason) if _V01 else (_DROP, reason)


def reject(reason):
    """The record is bad data; the reason should name the field."""
    return _t.Outcome_Reject(reason) if _V01 else (_REJECT, reason)


def _printable(s):
    """At most 64 characters, escaped for a message (without codecs: componentize-py's CPython has few)."""
    out = []
    for ch in s[:64]:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])
    return "".join(out)


# The declared tables (0.2): name -> (index, {column: position}, width, the column names as a set, the encoded
# index, the column names in declared order).
_TABLES = {}


def _pack_emit(rows, out):
    """Appends one emit; returns a reason when a row breaks the declared tables."""
    n = len(rows)
    out += _EMIT_HEAD[n] if n < _HEADS else _TAG_U32(_EMIT, n)
    for r in rows:
        if type(r) is bytes:  # encoded by `row` against the declared tables
            out += r
            continue
        table, cells = r
        declared = _TABLES.get(table)
        if declared is None:
            return f"table `{_printable(table)}` is not declared in the sink configuration"
        index, columns, width = declared[:3]
        slots = [_NULL] * width
        for name, encoded in cells.items():
            c = columns.get(name)
            if c is None:
                return f"table {table}, column `{_printable(name)}`: not a declared column"
            slots[c] = encoded
        out += _U32(index)
        out += b"".join(slots)
    return None


def finish_batch(outcomes):
    """What the contract's ``process`` returns for these outcomes, for a rule that overrides ``process``: the
    list itself on contract 0.1, the packed buffer on 0.2. The host checks there is one per record."""
    return outcomes if _V01 else _pack(outcomes)


def _pack(outcomes):
    out = bytearray()
    for kind, detail in outcomes:
        if kind == _EMIT:
            start = len(out)
            invalid = _pack_emit(detail, out)
            if invalid is not None:
                del out[start:]
                out += _text(_INVALID, invalid)
        else:
            out += _text(kind, detail)
    return bytes(out)


_LEVELS = {
    "trace": _host.Level.TRACE,
    "debug": _host.Level.DEBUG,
    "info": _host.Level.INFO,
    "warn": _host.Level.WARN,
    "error": _host.Level.ERROR,
}


def log(level, message):
    """A line in the worker's log (``level``: trace, debug, info, warn, error)."""
    _host.log(_LEVELS[level], message)


def count(metric, delta=1):
    """Adds ``delta`` to the rule counter ``metric``."""
    _host.count(metric, delta)


class Rule(wit_world.WitWorld):
    """Base class of a Python rule: implements the contract's ``init`` and ``process``."""

    def setup(self, settings):
        """Called once per instance with the ``[rule] settings`` as a dict. Raise to refuse them."""

    def process_record(self, record):
        """One record (``id``, ``partition_key``, ``arrived_at_ms``, ``attributes``, ``payload`` bytes)."""
        raise NotImplementedError

    # componentize-py makes a new object for every call into the component: what `setup` stores on `self` is
    # kept here and restored before each batch.
    _state = {}

    def init(self, *args):
        # 0.1: init(settings); 0.2: init(tables, settings).
        if not _V01:
            _TABLES.clear()
            for i, t in enumerate(args[0]):
                columns = {c.name: n for n, c in enumerate(t.columns)}
                _TABLES[t.name] = (i, columns, len(t.columns), frozenset(columns), _U32(i), tuple(columns))
        try:
            self.setup(dict(args[-1]))
        except Exception as e:  # the contract's error: stops the worker with this message
            raise wit_world.Err(str(e)) from None
        Rule._state = dict(self.__dict__)

    def process(self, batch):
        self.__dict__.update(Rule._state)
        out = []
        for record in batch:
            try:
                out.append(self.process_record(record))
            except Exception as e:
                out.append(reject(f"rule error: {type(e).__name__}: {e}"))
        if _V01:
            return out
        if len(out) != len(batch):
            # As the host would say it for 0.1: the batch is then split until the record is isolated.
            raise RuntimeError(
                f"rule returned {len(out)} outcomes for {len(batch)} records (it must return exactly one per record)"
            )
        return _pack(out)
