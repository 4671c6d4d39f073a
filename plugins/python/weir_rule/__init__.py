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

Cells are plain Python values: ``str`` → text, ``int`` → integer, ``float`` → float, ``bool`` → boolean,
``None`` → NULL, ``decimal.Decimal`` → decimal, ``datetime`` (aware) → timestamp, ``dict``/``list`` → JSON (use
:class:`Json` for a JSON string or scalar). Build with
``componentize-py -d wit -w rule componentize app -p plugins/python -p . -o rule.wasm`` and stamp it with
``weir plugin stamp rule.wasm``.

Reject bad data with a reason that names the field (``reject("placed_at: not an RFC 3339 timestamp")``). An
exception escaping ``process_record`` rejects that record with the exception as its reason.
"""
import datetime as _dt
import decimal as _decimal
import json as _json

import wit_world
from wit_world.imports import host as _host
from wit_world.imports import types as _t

__all__ = ["Rule", "Json", "emit", "drop", "reject", "row", "log", "count", "CONTRACT_VERSION"]

#: The ``weir:rules`` contract version this helper implements.
CONTRACT_VERSION = "0.1.0"

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


def row(table, **cells):
    """A row of ``table`` with the given cells (column=value)."""
    return _t.Row(table, [(name, _value(v)) for name, v in cells.items()])


def emit(*rows):
    """The record becomes these rows (possibly none)."""
    return _t.Outcome_Emit(list(rows))


def drop(reason):
    """The record is deliberately not loaded, for this reason."""
    return _t.Outcome_Drop(reason)


def reject(reason):
    """The record is bad data; the reason should name the field."""
    return _t.Outcome_Reject(reason)


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

    def init(self, settings):
        try:
            self.setup(dict(settings))
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
                out.append(_t.Outcome_Reject(f"rule error: {type(e).__name__}: {e}"))
        return out
