"""Hypothesis strategies for a machine's state and event classes, from their attrs field types.

Values are the ones the store can keep: text without NUL characters (PostgreSQL's JSON refuses
it), integers within 53 bits and finite floats (JSON numbers every backend reads back exactly),
aware UTC datetimes. Override any field by name (``"amount_cents"``, or ``"Order.amount_cents"``
for one class) or any type (``{datetime: ...}``, or a whole state class).
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
from hypothesis import strategies as st

from .._definition import Machine

__all__ = ["events", "states", "strategy_for"]

Fields = Mapping[str, st.SearchStrategy[Any]]
Classes = Mapping[type, st.SearchStrategy[Any]]

_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
                max_size=12)
_DEFAULTS: dict[type, st.SearchStrategy[Any]] = {
    str: _TEXT,
    int: st.integers(-(2**53), 2**53),
    float: st.floats(allow_nan=False, allow_infinity=False, width=64),
    datetime: st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),  # noqa: DTZ001 (hypothesis takes naive bounds)
                           timezones=st.just(UTC)),
    timedelta: st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3650)),
}


def strategy_for(cls: type, *, fields: Fields | None = None,
                 classes: Classes | None = None) -> st.SearchStrategy[Any]:
    """Instances of the attrs class `cls`, each field drawn from its type (nested attrs classes
    recursively), unless `fields` or `classes` say otherwise."""
    fields, classes = fields or {}, classes or {}
    if cls in classes:
        return classes[cls]
    if not attrs.has(cls):
        raise TypeError(f"strategy_for({cls.__name__}): not an attrs class")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, st.SearchStrategy[Any]] = {}
    for f in attrs.fields(cls):
        if not f.init:
            continue
        name = f.alias or f.name
        chosen = fields.get(f"{cls.__name__}.{f.name}", fields.get(f.name))
        kwargs[name] = chosen if chosen is not None else _for_type(
            hints.get(f.name, f.type), fields, classes)
    return st.builds(cls, **kwargs)


def _for_type(tp: Any, fields: Fields, classes: Classes) -> st.SearchStrategy[Any]:
    if isinstance(tp, type) and tp in classes:
        return classes[tp]
    if isinstance(tp, type) and attrs.has(tp):
        return strategy_for(tp, fields=fields, classes=classes)
    if isinstance(tp, type) and tp in _DEFAULTS:
        return _DEFAULTS[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return st.one_of(*(_for_type(a, fields, classes) for a in args))
    if origin in (list, tuple, set, frozenset) and args:
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return st.tuples(*(_for_type(a, fields, classes) for a in args))
        items = st.lists(_for_type(args[0], fields, classes), max_size=4)
        return items.map(origin)
    if origin is dict and args:
        return st.dictionaries(_for_type(args[0], fields, classes),
                               _for_type(args[1], fields, classes), max_size=4)
    if tp is type(None):
        return st.none()
    return st.from_type(tp)


def states(machine: Machine | type[Machine], *, fields: Fields | None = None,
           classes: Classes | None = None) -> dict[type, st.SearchStrategy[Any]]:
    """A strategy for every state class of `machine`, by class."""
    return {cls: strategy_for(cls, fields=fields, classes=classes)
            for cls in machine.spec.states.values()}


def events(machine: Machine | type[Machine], *, fields: Fields | None = None,
           classes: Classes | None = None) -> dict[type, st.SearchStrategy[Any]]:
    """A strategy for every event class some state of `machine` accepts, by class."""
    return {cls: strategy_for(cls, fields=fields, classes=classes)
            for cls in machine.spec.event_types.values()}
