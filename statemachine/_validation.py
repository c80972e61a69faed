"""Checking a machine when its class is created, and building its `MachineSpec`.

Every handler's signature is resolved (the state it handles from its first parameter, the states
it returns from its return annotation), filed by kind, and the graph is checked: one way out of
every non-terminal state, none out of a terminal one, every state reachable, every target a state.
A machine that breaks a rule fails with `InvalidDefinition` naming the machine, state and rule.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Union

import attrs

from ._definition import Delayed, ErrorRoute, MachineSpec, Rerun, StepHandler, state_name
from .errors import InvalidDefinition

if TYPE_CHECKING:
    from ._definition import Machine

__all__ = ["build_spec"]


def build_spec(cls: type[Machine]) -> MachineSpec:
    """Check `cls` and build its spec; `InvalidDefinition` names what is wrong."""
    where = f"machine {cls.__name__}"
    initial = getattr(cls, "initial", None)
    if initial is None:
        raise InvalidDefinition(f"{where}: no initial state (set `initial = SomeState`)")
    if isinstance(cls.terminal, type):
        raise InvalidDefinition(f"{where}: `terminal` must be a tuple of states, got the class "
                                f"{cls.terminal.__name__} (write `terminal = "
                                f"({cls.terminal.__name__},)`)")
    terminal = list(cls.terminal)
    if not terminal:
        raise InvalidDefinition(f"{where}: no terminal state (set `terminal = (Done, ...)`)")

    # By attribute name, base classes first: a subclass overrides a handler by redefining it.
    by_name: dict[str, StepHandler[Any]] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            if isinstance(value, StepHandler):
                by_name[attr] = value
            elif attr in by_name and value is None:
                del by_name[attr]  # `name = None` in a subclass removes an inherited handler
    handlers = list(by_name.values())

    declared = list(cls.states) if cls.states is not None else None
    localns = {c.__name__: c for c in [initial, *terminal, *(declared or [])]}
    spec_parts = _index_handlers(where, handlers, localns)
    steps, events, timeouts, children, cancel = spec_parts

    known: list[type] = (declared if declared is not None
                         else _collect(initial, terminal, handlers))
    for s in [initial, *terminal]:
        _check_state_class(where, s)
        if declared is not None and s not in declared:
            raise InvalidDefinition(f"{where}: state {s.__name__} is not in `states`")
    for handler in handlers:
        for source in handler.sources:
            if source is not object and declared is not None and source not in declared:
                raise InvalidDefinition(
                    f"{where}: handler {handler.name!r} handles {source.__name__}, "
                    "which is not a state of this machine")
        for target in _all_targets(handler):
            if declared is not None and target not in declared:
                raise InvalidDefinition(
                    f"{where}: handler {handler.name!r} returns {target.__name__}, "
                    "which is not a state of this machine")

    names: dict[str, type] = {}
    for s in known:
        _check_state_class(where, s)
        name = state_name(s)
        if name in names and names[name] is not s:
            raise InvalidDefinition(f"{where}: two states are named {name!r}")
        names[name] = s
    for s in known:
        for alias in _aliases(where, s):
            if alias in names and names[alias] is not s:
                raise InvalidDefinition(f"{where}: {s.__name__} lists alias {alias!r}, which "
                                        f"names another state")
    aliases = {alias: s for s in known for alias in _aliases(where, s)}

    terminal_set = frozenset(terminal)
    if initial in terminal_set:
        raise InvalidDefinition(f"{where}: initial state {initial.__name__} is terminal")
    for s in known:
        ways_out = [h for h in handlers if h.kind != "cancel" and s in h.sources]
        if s in terminal_set and ways_out:
            raise InvalidDefinition(
                f"{where}: terminal state {s.__name__} has a handler ({ways_out[0].name!r}); "
                "terminal states have no way out")
        if s not in terminal_set and not ways_out:
            raise InvalidDefinition(
                f"{where}: state {s.__name__} is a dead end: it is not terminal and has no handler")
    if cancel is not None:
        for source in cancel.sources:
            if source in terminal_set:
                raise InvalidDefinition(
                    f"{where}: cancel route {cancel.name!r} handles terminal state "
                    f"{source.__name__}; finished workflows cannot be cancelled")

    reachable = {initial}
    frontier = [initial]
    while frontier:
        current = frontier.pop()
        for h in handlers:
            applies = current in h.sources or (
                h.kind == "cancel" and object in h.sources and current not in terminal_set)
            if not applies:
                continue
            for t in _all_targets(h):
                if t not in reachable:
                    reachable.add(t)
                    frontier.append(t)
    for s in known:
        if s not in reachable:
            raise InvalidDefinition(
                f"{where}: state {s.__name__} is unreachable from the initial state "
                f"{initial.__name__}")

    event_types: dict[str, type] = {}
    for by_event in events.values():
        for event in by_event:
            name = state_name(event)
            if event_types.setdefault(name, event) is not event:
                raise InvalidDefinition(f"{where}: two event classes are named {name!r}")

    return MachineSpec(name=cls.name, initial=initial, states=names, terminal=terminal_set,
                       steps=steps, events=events, timeouts=timeouts, children=children,
                       cancel=cancel, event_types=event_types, aliases=aliases)


def _aliases(where: str, cls: type) -> tuple[str, ...]:
    found = cls.__dict__.get("__state_aliases__", ())
    if isinstance(found, str) or not all(isinstance(a, str) for a in found):
        raise InvalidDefinition(f"{where}: {cls.__name__}.__state_aliases__ must be a tuple of "
                                "names")
    return tuple(found)


_Indexed = tuple[
    dict[type, StepHandler[Any]], dict[type, dict[type, StepHandler[Any]]],
    dict[type, StepHandler[Any]], dict[type, StepHandler[Any]], StepHandler[Any] | None]


def _index_handlers(
    where: str, handlers: list[StepHandler[Any]], localns: dict[str, Any]
) -> _Indexed:
    """Resolve every handler's signature and file it by kind, rejecting a second way out."""
    steps: dict[type, StepHandler[Any]] = {}
    events: dict[type, dict[type, StepHandler[Any]]] = {}
    timeouts: dict[type, StepHandler[Any]] = {}
    children: dict[type, StepHandler[Any]] = {}
    cancel: StepHandler[Any] | None = None
    owner: dict[type, StepHandler[Any]] = {}  # the state's first handler, for messages

    for handler in handlers:
        sources, targets, extra = _signature(where, handler.fn, localns, handler.kind, handler.name,
                                             any_source=handler.kind == "cancel",
                                             event=handler.kind == "event")
        handler.sources, handler.targets = sources, targets
        handler.source = sources[0]
        if handler.kind == "event":
            handler.event = extra
        for attr, what in (("error_route", "error route"), ("reconcile_route", "reconcile")):
            route = getattr(handler, attr)
            if route is None:
                continue
            # A union annotation lets one route serve several steps (one compensation entry).
            r_sources, r_targets, _ = _signature(where, route.fn, localns, what,
                                                 route.fn.__name__, any_source=True)
            if handler.source not in r_sources and object not in r_sources:
                names = " | ".join(getattr(s, "__name__", str(s)) for s in r_sources)
                raise InvalidDefinition(
                    f"{where}: {what} {route.fn.__name__!r} handles {names}, but its step "
                    f"{handler.name!r} handles {handler.source.__name__}")
            setattr(handler, attr, ErrorRoute(route.fn, r_targets))

        if handler.kind == "cancel":
            if cancel is not None:
                raise InvalidDefinition(
                    f"{where}: two cancel routes: {cancel.name!r} and {handler.name!r}")
            cancel = handler
            continue
        source = handler.source
        first = owner.get(source)

        def clash(other: StepHandler[Any], source: type = source,
                  new: StepHandler[Any] = handler) -> InvalidDefinition:
            return InvalidDefinition(
                f"{where}: state {source.__name__} has two handlers: {other.name!r} and "
                f"{new.name!r}")

        if handler.kind == "step":
            if first is not None:
                raise clash(first)
            steps[source] = handler
        else:
            if source in steps:
                raise clash(steps[source])
            if handler.kind == "event":
                assert handler.event is not None
                by_event = events.setdefault(source, {})
                if handler.event in by_event:
                    raise clash(by_event[handler.event])
                by_event[handler.event] = handler
            elif handler.kind == "timeout":
                if source in timeouts:
                    raise clash(timeouts[source])
                timeouts[source] = handler
            elif handler.kind == "children":
                if source in children:
                    raise clash(children[source])
                children[source] = handler
        owner.setdefault(source, handler)
    return steps, events, timeouts, children, cancel


def _all_targets(handler: StepHandler[Any]) -> tuple[type, ...]:
    route = handler.error_route.targets if handler.error_route else ()
    reconcile = handler.reconcile_route.targets if handler.reconcile_route else ()
    return handler.targets + route + reconcile


def _collect(initial: type, terminal: list[type], handlers: list[StepHandler[Any]]) -> list[type]:
    seen: dict[type, None] = {initial: None}
    for handler in handlers:
        seen.update(dict.fromkeys(s for s in handler.sources if s is not object))
        seen.update(dict.fromkeys(_all_targets(handler)))
    seen.update(dict.fromkeys(terminal))
    return list(seen)


def _check_state_class(where: str, cls: Any, context: str = "") -> None:
    if not (isinstance(cls, type) and attrs.has(cls)):
        prefix = f"{context} " if context else "state "
        raise InvalidDefinition(f"{where}: {prefix}{cls!r} is not a state class (an attrs class)")


def _signature(
    where: str, fn: Callable[..., Any], localns: dict[str, Any], kind: str, name: str,
    *, any_source: bool = False, event: bool = False,
) -> tuple[tuple[type, ...], tuple[type, ...], type | None]:
    """(states handled, states returned, event class) from a handler's annotations: its first
    parameter after self names the state (a union for a cancel route), the second the event."""
    try:
        hints = typing.get_type_hints(fn, localns=localns)
    except NameError as e:
        raise InvalidDefinition(f"{where}: {kind} {name!r} has an annotation that does not "
                                f"resolve: {e}") from e
    params = list(inspect.signature(fn).parameters.values())[1:]
    if not params or params[0].name not in hints:
        raise InvalidDefinition(
            f"{where}: {kind} {name!r} must annotate its first parameter with the state it handles")
    sources = _union_members(hints[params[0].name])
    if any_source and sources == (object,):
        pass
    else:
        if len(sources) > 1 and not any_source:
            raise InvalidDefinition(f"{where}: {kind} {name!r} must handle exactly one state")
        for s in sources:
            _check_state_class(where, s, f"{kind} {name!r} handles")
    event_cls: type | None = None
    if event:
        if len(params) < 2 or params[1].name not in hints:
            raise InvalidDefinition(
                f"{where}: event handler {name!r} must annotate its second parameter with the "
                "event class it handles")
        event_cls = hints[params[1].name]
        if not (isinstance(event_cls, type) and attrs.has(event_cls)):
            raise InvalidDefinition(
                f"{where}: event handler {name!r} handles {event_cls!r}, which is not an event "
                "class (an attrs class)")
    if "return" not in hints:
        raise InvalidDefinition(
            f"{where}: {kind} {name!r} has no return annotation; declare the states it may return "
            "(-> NextState | OtherState)")
    targets = tuple(_unwrap_delayed(t) for t in _union_members(hints["return"])
                    if t is not Rerun or kind != "reconcile")
    for t in targets:
        _check_state_class(where, t, f"{kind} {name!r} returns")
    return sources, targets, event_cls


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _unwrap_delayed(annotation: Any) -> Any:
    if typing.get_origin(annotation) is Delayed:
        return typing.get_args(annotation)[0]
    return annotation
