"""State objects to and from (name, JSON-ready dict), with one cattrs converter per machine.

JSON, never pickle: operators read and write `sm_workflows.data` in SQL. Datetimes are ISO 8601
with a time zone. State classes evolve with workflows in flight: new fields take defaults, a
renamed class lists its old name in ``__state_aliases__``, and a ``__upcast__(data) -> data``
static method rewrites an old shape of stored data before it is loaded.

Structuring is strict (``"ten"`` is not an int, ``"10"`` is not one either), so data forced by
hand that does not fit its class is caught when it is loaded, with an error that names the
workflow, the state and the field. The same check runs on the way in: `dump` refuses a state
object whose fields have the wrong types (attrs does not check them), so `Client.start`,
`Client.force`, ``ctx.start_child`` and a handler's result never write what would not load.

Fields a class does not have are an error in data given by a caller (``--data``, `send_data`),
and dropped from a stored row (`workflow` given): a field removed from a class must not make
the rows written before fail to load.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import attrs
import cattrs
from cattrs.preconf.json import make_converter

from ._definition import MachineSpec, lookup_machine, state_name
from .errors import DataError, UnknownState

__all__ = ["Codecs", "StateCodec", "make_state_converter"]


def _strict(kind: type) -> Callable[[Any, type], Any]:
    def structure(value: Any, _: type) -> Any:
        # bool is an int in Python; a JSON true is not a number of anything.
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise TypeError(f"expected {kind.__name__}, got {value!r}")
        return value

    return structure


def _structure_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected float, got {value!r}")
    return float(value)


def _structure_datetime(value: Any, _: type) -> datetime:
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO 8601 datetime string, got {value!r}")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"datetime {value!r} has no time zone")
    return parsed


def _unstructure_datetime(value: datetime) -> str:
    if value.tzinfo is None:
        raise DataError(f"naive datetime {value!r}: give state datetimes a time zone")
    return value.isoformat()


def make_state_converter(*, forbid_extra_keys: bool = False) -> cattrs.Converter:
    """A fresh converter with statemachine's strict JSON rules (never the global converter)."""
    converter = make_converter(forbid_extra_keys=forbid_extra_keys)
    for kind in (int, str, bool):
        converter.register_structure_hook(kind, _strict(kind))
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook(datetime, _structure_datetime)
    converter.register_unstructure_hook(datetime, _unstructure_datetime)
    return converter


def _describe(error: BaseException, path: str) -> str:
    messages = cattrs.transform_error(error, path=path, format_exception=_format_leaf)
    return "; ".join(messages)


def _format_leaf(error: BaseException, _type: type | None) -> str:
    if isinstance(error, KeyError):
        return "required field missing"
    return str(error) or type(error).__name__


class StateCodec:
    """Encodes and decodes the states of one machine."""

    def __init__(self, spec: MachineSpec, converter: cattrs.Converter | None = None) -> None:
        self.spec = spec
        self.converter = converter or make_state_converter()
        self._strict: cattrs.Converter | None = None  # forbids unknown fields; made when needed

    def dump(self, state: object) -> tuple[str, dict[str, Any]]:
        """(stored name, JSON-ready fields) of a state object of this machine; `DataError` when
        it is not one of this machine's states or a field does not have its declared type."""
        cls = type(state)
        name = state_name(cls)
        if self.spec.states.get(name) is not cls:
            raise DataError(f"{cls.__name__} is not a state of machine {self.spec.name}")
        where = f"machine {self.spec.name}, state {name}"
        data = self._unstructure(state, where)
        if not isinstance(data, dict):
            raise DataError(f"state {name} did not serialize to an object")
        self._check(cls, data, where)
        return name, data

    def _unstructure(self, value: object, where: str) -> Any:
        """The JSON-ready form of a state or event; `DataError` naming the field that has no
        JSON form for its declared type (a string in a datetime field, a naive datetime)."""
        try:
            return self.converter.unstructure(value)
        except Exception as e:
            cls: Any = type(value)
            # String annotations to types, as cattrs does (unresolvable: reported as written).
            with contextlib.suppress(Exception):
                attrs.resolve_types(cls)
            for field in attrs.fields(cls):
                item = getattr(value, field.name)
                try:
                    self.converter.unstructure(item, unstructure_as=field.type)
                except Exception as inner:
                    expected = getattr(field.type, "__name__", str(field.type))
                    what = (str(inner) if isinstance(inner, DataError)
                            else f"expected {expected}, got {item!r}")
                    raise DataError(f"{where}: {what} @ data.{field.name}",
                                    state=state_name(cls)) from e
            raise DataError(f"{where}: does not serialize: {type(e).__name__}: {e}",
                            state=state_name(cls)) from e

    def _check(self, cls: type, data: dict[str, Any], where: str) -> None:
        """Raise `DataError` unless `data` (the unstructured `state`) would load again: structuring
        it with the strict converter is the exact check, and costs about a microsecond for a
        three-field state (cattrs generates the code once per class)."""
        try:
            self.converter.structure(data, cls)
        except Exception as e:
            raise DataError(f"{where}: {_describe(e, 'data')}", state=state_name(cls)) from e

    def _converter(self, stored: bool) -> cattrs.Converter:
        if stored:
            return self.converter
        if self._strict is None:
            self._strict = make_state_converter(forbid_extra_keys=True)
        return self._strict

    def dump_event(self, event: object) -> tuple[str, dict[str, Any]]:
        """(stored type name, JSON-ready fields) of an event this machine accepts somewhere;
        `DataError` for an event class it does not know."""
        cls = type(event)
        name = state_name(cls)
        if self.spec.event_types.get(name) is not cls:
            known = ", ".join(sorted(self.spec.event_types)) or "none"
            raise DataError(f"machine {self.spec.name} accepts no event {cls.__name__} "
                            f"(its events: {known})")
        where = f"machine {self.spec.name}, event {name}"
        data = self._unstructure(event, where)
        # attrs does not check field types; the stored form must load
        self._check(cls, data, where)
        return name, data

    def load_event(self, name: str, data: Any, *, workflow: object = None,
                   stored: bool | None = None) -> object:
        """The event object for (type, data); `DataError` names what does not fit. `stored`
        (default: whether `workflow` is given) drops fields the class does not have; data given
        by a caller may have none."""
        cls = self.spec.event_types.get(name)
        if cls is None:
            known = ", ".join(sorted(self.spec.event_types)) or "none"
            raise DataError(f"{_at(workflow)}machine {self.spec.name} accepts no event named "
                            f"{name!r} (its events: {known})")
        if not isinstance(data, dict):
            raise DataError(f"{_at(workflow)}event {name}: data must be a JSON object, "
                            f"got {data!r}")
        converter = self._converter(workflow is not None if stored is None else stored)
        try:
            return converter.structure(data, cls)
        except Exception as e:
            raise DataError(f"{_at(workflow)}event {name}: {_describe(e, 'data')}") from e

    def load(self, name: str, data: Any, *, workflow: object = None,
             stored: bool | None = None) -> object:
        """The state object for (name, data); `DataError` names what does not fit,
        `UnknownState` a name the machine does not have. `stored` (default: whether `workflow`
        is given) drops fields the class does not have; data given by a caller may have none."""
        cls = self.spec.states.get(name) or self.spec.aliases.get(name)
        if cls is None:
            raise UnknownState(f"{_at(workflow)}machine {self.spec.name} has no state named "
                               f"{name!r}", machine=self.spec.name, state=name)
        if not isinstance(data, dict):
            raise DataError(f"{_at(workflow)}state {name}: data must be a JSON object, "
                            f"got {data!r}")
        upcast = getattr(cls, "__upcast__", None)
        if upcast is not None:
            try:
                data = upcast(dict(data))
            except Exception as e:
                raise DataError(f"{_at(workflow)}state {name}: __upcast__ failed: "
                                f"{type(e).__name__}: {e}") from e
        converter = self._converter(workflow is not None if stored is None else stored)
        try:
            return converter.structure(data, cls)
        except Exception as e:
            raise DataError(f"{_at(workflow)}state {name}: {_describe(e, 'data')}") from e


def _at(workflow: object) -> str:
    """The start of an error about a stored workflow's data (made only when one is raised)."""
    return f"workflow {workflow}: " if workflow is not None else ""


class Codecs:
    """Codecs by machine name: the machines given up front, then any machine class imported in
    this process (found by its stored name)."""

    def __init__(self, specs: Iterable[MachineSpec] = ()) -> None:
        self._codecs = {spec.name: StateCodec(spec) for spec in specs}

    def get(self, machine: str) -> StateCodec | None:
        """The codec of `machine`, or None if this process does not know it."""
        codec = self._codecs.get(machine)
        if codec is None:
            cls = lookup_machine(machine)
            if cls is None:
                return None
            codec = self._codecs[machine] = StateCodec(cls.spec)
        return codec

    def of(self, spec: MachineSpec) -> StateCodec:
        """The codec of a machine given by its spec (made once)."""
        codec = self._codecs.get(spec.name)
        if codec is None or codec.spec is not spec:
            codec = self._codecs[spec.name] = StateCodec(spec)
        return codec
