"""Checking a machine when its class is created, and building its frozen `MachineSpec`.

Every handler's signature is resolved (the state it handles from its first parameter, the states
it returns from its return annotation) into a `Handler` of this machine, and the graph is checked:
one way out of every non-terminal state, none out of a terminal one, every state reachable, every
target a state. Each rule is one small `_check_*` function raising one `InvalidDefinition` that
names the machine, the state and the rule. Nothing given is mutated: declarations stay as the
decorators made them.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Union

import attrs

from ._declarations import (
    DECLARATIONS,
    CancelDeclaration,
    ChildrenDeclaration,
    Declaration,
    Delayed,
    EventDeclaration,
    PollAgain,
    Rerun,
    RouteDeclaration,
    StepDeclaration,
    TimeoutDeclaration,
    state_name,
)
from ._spec import Handler, MachineSpec, Route
from .errors import InvalidDefinition

if TYPE_CHECKING:
    from ._definition import Machine

__all__ = ["build_spec"]

AnyHandler = Handler[Any]


@attrs.frozen
class _Where:
    """The machine being checked, for error messages and fields."""

    cls: type
    name: str

    def error(self, message: str, state: type | None = None) -> InvalidDefinition:
        return InvalidDefinition(f"machine {self.cls.__name__}: {message}", machine=self.name,
                                 state=None if state is None else state_name(state))


def build_spec(cls: type[Machine]) -> MachineSpec:
    """Check `cls` and build its spec; `InvalidDefinition` names what is wrong."""
    where = _Where(cls, getattr(cls, "name", cls.__name__))
    initial = _check_initial(where, cls)
    terminal = _check_terminal(where, cls)
    declared = list(cls.states) if cls.states is not None else None
    localns = {c.__name__: c for c in [initial, *terminal, *(declared or [])]}
    found, routes = _declarations(cls)
    handlers = [_resolve(where, name, decl, routes, localns) for name, decl in found]
    steps, events, timeouts, children, cancel = _index(where, handlers)

    known = declared if declared is not None else _collect(initial, terminal, handlers)
    for s in [initial, *terminal]:
        _check_state_class(where, s)
    if declared is not None:
        _check_declared(where, declared, initial, terminal, handlers)
    names = _check_state_names(where, known)
    aliases = _check_aliases(where, known, names)
    terminal_set = frozenset(terminal)
    _check_initial_not_terminal(where, initial, terminal_set)
    _check_ways_out(where, known, terminal_set, handlers)
    _check_cancel_sources(where, cancel, terminal_set)
    _check_reachable(where, initial, known, terminal_set, handlers)
    event_types = _check_event_names(where, events)
    return MachineSpec(name=where.name, initial=initial, states=names, terminal=terminal_set,
                       steps=steps, events=events, timeouts=timeouts, children=children,
                       cancel=cancel, event_types=event_types, aliases=aliases)


# -- collecting ----------------------------------------------------------------------------------


def _declarations(
    cls: type,
) -> tuple[list[tuple[str, Declaration]], list[RouteDeclaration[Any]]]:
    """(attribute name, declaration) of every handler of `cls`, and every route declared on it.
    By attribute name, base classes first: a subclass overrides a handler by redefining it, and
    removes an inherited one with ``name = None``."""
    by_name: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            if isinstance(value, DECLARATIONS):
                by_name[attr] = value
            elif attr in by_name and value is None:
                del by_name[attr]
    handlers = [(n, d) for n, d in by_name.items() if not isinstance(d, RouteDeclaration)]
    routes = [d for d in by_name.values() if isinstance(d, RouteDeclaration)]
    return handlers, routes


def _resolve(
    where: _Where, name: str, decl: Declaration, routes: list[RouteDeclaration[Any]],
    localns: dict[str, Any],
) -> AnyHandler:
    """The `Handler` of this machine for one declaration, its routes attached."""
    kind = decl.kind
    sources, targets, event = _signature(where, decl.fn, localns, kind, name,
                                         any_source=kind in ("cancel", "event"),
                                         event=kind == "event")
    if kind == "event" and object in sources:
        raise where.error(f"event handler {name!r} handles `object`; name the states that "
                          "accept the event (a union: A | B | C)")
    common: dict[str, Any] = dict(kind=kind, name=name, fn=decl.fn, sources=sources,
                                  targets=targets, retry=decl.retry, declaration=decl)
    if isinstance(decl, StepDeclaration):
        _check_poll(where, decl, name, sources[0], localns)
        _check_transactional_sync(where, decl, name)
        return Handler(
            **common, limit=decl.limit, transactional=decl.transactional,
            at_most_once=decl.at_most_once, poll=decl.poll,
            error_route=_route_of(where, decl, name, sources[0], "error", routes, localns),
            reconcile_route=_route_of(where, decl, name, sources[0], "reconcile", routes,
                                      localns))
    if isinstance(decl, EventDeclaration):
        return Handler(**common, limit=decl.limit, event=event)
    if isinstance(decl, TimeoutDeclaration):
        return Handler(**common, timeout_after=decl.after, timeout_at=decl.at)
    if isinstance(decl, ChildrenDeclaration):
        return Handler(**common, wait_for=decl.wait_for, max_running=decl.max_running)
    assert isinstance(decl, CancelDeclaration)
    return Handler(**common)


def _route_of(
    where: _Where, step: StepDeclaration[Any], step_name: str, source: type,
    kind: str, routes: list[RouteDeclaration[Any]], localns: dict[str, Any],
) -> Route | None:
    mine = [r for r in routes if r.kind == kind and any(s is step for s in r.steps)]
    what = "error route" if kind == "error" else "reconcile"
    _check_one_route(where, mine, step_name, kind, source)
    if not mine:
        return None
    fn = mine[0].fn
    # A union annotation lets one route serve several steps (one compensation entry).
    r_sources, r_targets, _ = _signature(where, fn, localns, what, fn.__name__, any_source=True)
    _check_route_handles(where, what, fn.__name__, r_sources, step_name, source)
    return Route(fn, r_targets)


def _index(where: _Where, handlers: list[AnyHandler]) -> tuple[
        dict[type, AnyHandler], dict[type, dict[type, AnyHandler]], dict[type, AnyHandler],
        dict[type, AnyHandler], AnyHandler | None]:
    """File every handler by kind and state, rejecting a second way out of one state."""
    steps: dict[type, AnyHandler] = {}
    events: dict[type, dict[type, AnyHandler]] = {}
    timeouts: dict[type, AnyHandler] = {}
    children: dict[type, AnyHandler] = {}
    cancel: AnyHandler | None = None
    for h in handlers:
        if h.kind == "cancel":
            _check_one_cancel_route(where, cancel, h)
            cancel = h
            continue
        # An event handler may name several states (a union); the others name one. A step
        # state may accept events too (they are handled before its step starts).
        for source in h.sources:
            if h.kind == "step":
                _check_no_clash(where, source, steps.get(source) or timeouts.get(source)
                                or children.get(source), h)
                steps[source] = h
            elif h.kind == "event":
                assert h.event is not None
                by_event = events.setdefault(source, {})
                _check_no_clash(where, source, by_event.get(h.event), h)
                by_event[h.event] = h
            elif h.kind == "timeout":
                _check_no_clash(where, source, steps.get(source) or timeouts.get(source), h)
                timeouts[source] = h
            else:
                _check_no_clash(where, source, steps.get(source) or children.get(source), h)
                children[source] = h
    return steps, events, timeouts, children, cancel


def _collect(initial: type, terminal: list[type], handlers: list[AnyHandler]) -> list[type]:
    seen: dict[type, None] = {initial: None}
    for handler in handlers:
        seen.update(dict.fromkeys(s for s in handler.sources if s is not object))
        seen.update(dict.fromkeys(handler.all_targets()))
    seen.update(dict.fromkeys(terminal))
    return list(seen)


def _check_alias_list(where: _Where, cls: type) -> tuple[str, ...]:
    found = cls.__dict__.get("__state_aliases__", ())
    if isinstance(found, str) or not all(isinstance(a, str) for a in found):
        raise where.error(f"{cls.__name__}.__state_aliases__ must be a tuple of names", cls)
    return tuple(found)


# -- the rules, one function each ------------------------------------------------------------


def _check_initial(where: _Where, cls: type) -> type:
    initial = getattr(cls, "initial", None)
    if initial is None:
        raise where.error("no initial state (set `initial = SomeState`)")
    return typing.cast(type, initial)


def _check_terminal(where: _Where, cls: type) -> list[type]:
    given = getattr(cls, "terminal", ())
    if isinstance(given, type):
        raise where.error(f"`terminal` must be a tuple of states, got the class "
                          f"{given.__name__} (write `terminal = ({given.__name__},)`)")
    terminal = list(given)
    if not terminal:
        raise where.error("no terminal state (set `terminal = (Done, ...)`)")
    return terminal


def _check_state_class(where: _Where, cls: Any, context: str = "") -> None:
    if not (isinstance(cls, type) and attrs.has(cls)):
        prefix = f"{context} " if context else "state "
        raise where.error(f"{prefix}{cls!r} is not a state class (an attrs class)")


def _check_declared(where: _Where, declared: list[type], initial: type, terminal: list[type],
                    handlers: list[AnyHandler]) -> None:
    """With an explicit `states` list, everything named elsewhere must be in it."""
    for s in [initial, *terminal]:
        if s not in declared:
            raise where.error(f"state {s.__name__} is not in `states`", s)
    for h in handlers:
        for source in h.sources:
            if source is not object and source not in declared:
                raise where.error(f"handler {h.name!r} handles {source.__name__}, which is not "
                                  "a state of this machine", source)
        for target in h.all_targets():
            if target not in declared:
                raise where.error(f"handler {h.name!r} returns {target.__name__}, which is not "
                                  "a state of this machine", target)


def _check_state_names(where: _Where, known: list[type]) -> dict[str, type]:
    names: dict[str, type] = {}
    for s in known:
        _check_state_class(where, s)
        name = state_name(s)
        if name in names and names[name] is not s:
            raise where.error(f"two states are named {name!r}", s)
        names[name] = s
    return names


def _check_aliases(where: _Where, known: list[type], names: dict[str, type]) -> dict[str, type]:
    for s in known:
        for alias in _check_alias_list(where, s):
            if alias in names and names[alias] is not s:
                raise where.error(f"{s.__name__} lists alias {alias!r}, which names another "
                                  "state", s)
    return {alias: s for s in known for alias in _check_alias_list(where, s)}


def _check_initial_not_terminal(where: _Where, initial: type, terminal: frozenset[type]) -> None:
    if initial in terminal:
        raise where.error(f"initial state {initial.__name__} is terminal", initial)


def _check_ways_out(where: _Where, known: list[type], terminal: frozenset[type],
                    handlers: list[AnyHandler]) -> None:
    for s in known:
        ways_out = [h for h in handlers if h.kind != "cancel" and s in h.sources]
        if s in terminal and ways_out:
            raise where.error(f"terminal state {s.__name__} has a handler ({ways_out[0].name!r}); "
                              "terminal states have no way out", s)
        if s not in terminal and not ways_out:
            raise where.error(f"state {s.__name__} is a dead end: it is not terminal and has no "
                              "handler", s)


def _check_cancel_sources(where: _Where, cancel: AnyHandler | None,
                          terminal: frozenset[type]) -> None:
    if cancel is None:
        return
    for source in cancel.sources:
        if source in terminal:
            raise where.error(f"cancel route {cancel.name!r} handles terminal state "
                              f"{source.__name__}; finished workflows cannot be cancelled", source)


def _check_reachable(where: _Where, initial: type, known: list[type], terminal: frozenset[type],
                     handlers: list[AnyHandler]) -> None:
    reachable = {initial}
    frontier = [initial]
    while frontier:
        current = frontier.pop()
        for h in handlers:
            applies = current in h.sources or (
                h.kind == "cancel" and object in h.sources and current not in terminal)
            if not applies:
                continue
            for t in h.all_targets():
                if t not in reachable:
                    reachable.add(t)
                    frontier.append(t)
    for s in known:
        if s not in reachable:
            raise where.error(f"state {s.__name__} is unreachable from the initial state "
                              f"{initial.__name__}", s)


def _check_event_names(where: _Where,
                       events: dict[type, dict[type, AnyHandler]]) -> dict[str, type]:
    event_types: dict[str, type] = {}
    for by_event in events.values():
        for event in by_event:
            name = state_name(event)
            if event_types.setdefault(name, event) is not event:
                raise where.error(f"two event classes are named {name!r}")
    return event_types


def _check_no_clash(where: _Where, source: type, other: AnyHandler | None,
                    new: AnyHandler) -> None:
    if other is not None:
        raise where.error(f"state {source.__name__} has two handlers: {other.name!r} and "
                          f"{new.name!r}", source)


def _check_one_cancel_route(where: _Where, cancel: AnyHandler | None, new: AnyHandler) -> None:
    if cancel is not None:
        raise where.error(f"two cancel routes: {cancel.name!r} and {new.name!r}")


def _check_one_route(where: _Where, routes: list[RouteDeclaration[Any]], step: str, kind: str,
                     source: type) -> None:
    if len(routes) > 1:
        what = "error routes" if kind == "error" else "reconcile handlers"
        raise where.error(f"step {step!r} has two {what}: "
                          f"{' and '.join(repr(r.fn.__name__) for r in routes)}", source)


def _check_route_handles(where: _Where, what: str, name: str, sources: Iterable[type],
                         step: str, source: type) -> None:
    sources = tuple(sources)
    if source not in sources and object not in sources:
        names = " | ".join(getattr(s, "__name__", str(s)) for s in sources)
        raise where.error(f"{what} {name!r} handles {names}, but its step {step!r} handles "
                          f"{source.__name__}", source)


# -- signatures ----------------------------------------------------------------------------------


def _signature(
    where: _Where, fn: Callable[..., Any], localns: dict[str, Any], kind: str, name: str,
    *, any_source: bool = False, event: bool = False,
) -> tuple[tuple[type, ...], tuple[type, ...], type | None]:
    """(states handled, states returned, event class) from a handler's annotations: its first
    parameter after self names the state (a union for a cancel route or an event handler), the
    second the event."""
    _check_not_async_generator(where, fn, kind, name)
    try:
        hints = typing.get_type_hints(fn, localns=localns)
    except NameError as e:
        raise where.error(f"{kind} {name!r} has an annotation that does not resolve: {e}") from e
    params = list(inspect.signature(fn).parameters.values())[1:]
    if not params or params[0].name not in hints:
        raise where.error(f"{kind} {name!r} must annotate its first parameter with the state it "
                          "handles")
    sources = _union_members(hints[params[0].name])
    if not (any_source and sources == (object,)):
        if len(sources) > 1 and not any_source:
            raise where.error(f"{kind} {name!r} must handle exactly one state")
        for s in sources:
            _check_state_class(where, s, f"{kind} {name!r} handles")
    event_cls = _check_event_param(where, name, params, hints) if event else None
    if "return" not in hints:
        raise where.error(f"{kind} {name!r} has no return annotation; declare the states it may "
                          "return (-> NextState | OtherState)")
    targets = tuple(_unwrap_delayed(t) for t in _union_members(hints["return"])
                    if not (t is Rerun and kind == "reconcile")
                    and not (t is PollAgain and kind == "step"))
    for t in targets:
        _check_state_class(where, t, f"{kind} {name!r} returns")
    return sources, targets, event_cls


def _check_poll(where: _Where, decl: StepDeclaration[Any], name: str, source: type,
                localns: dict[str, Any]) -> None:
    """A step returns `PollAgain` exactly when it is declared with ``poll=Poll(...)``."""
    returns = _union_members(typing.get_type_hints(decl.fn, localns=localns).get("return"))
    if decl.poll is not None and PollAgain not in returns:
        raise where.error(f"step {name!r} polls (poll=Poll(...)) but its return annotation "
                          "does not include PollAgain (-> Next | PollAgain)", source)
    if decl.poll is None and PollAgain in returns:
        raise where.error(f"step {name!r} may return PollAgain but has no poll=Poll(...) "
                          "saying how often and until when", source)


def _check_not_async_generator(where: _Where, fn: Callable[..., Any], kind: str,
                               name: str) -> None:
    """A handler is a function or an ``async def`` coroutine function (either driver runs
    both); an async generator returns no state, so it is refused here, not parked at run time."""
    if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
        raise where.error(
            f"{kind} {name!r} is a generator (it uses `yield`), and a handler returns the next "
            "state: write it as `def` or `async def` returning a state")


def _check_transactional_sync(where: _Where, decl: StepDeclaration[Any], name: str) -> None:
    """``ctx.connection`` is a sync connection held in a thread; an ``async def`` handler would
    block the event loop on it, so a transactional step must be a plain ``def``."""
    if decl.transactional and inspect.iscoroutinefunction(decl.fn):
        raise where.error(
            f"step {name!r} is transactional and declared `async def`: its transaction "
            "(ctx.connection) is a sync connection, so write it as `def` (the async worker runs "
            "it in its thread pool), or drop transactional=True")


def _check_event_param(where: _Where, name: str, params: list[inspect.Parameter],
                       hints: dict[str, Any]) -> type:
    if len(params) < 2 or params[1].name not in hints:
        raise where.error(f"event handler {name!r} must annotate its second parameter with the "
                          "event class it handles")
    event_cls = hints[params[1].name]
    if not (isinstance(event_cls, type) and attrs.has(event_cls)):
        raise where.error(f"event handler {name!r} handles {event_cls!r}, which is not an event "
                          "class (an attrs class)")
    return event_cls


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _unwrap_delayed(annotation: Any) -> Any:
    if typing.get_origin(annotation) is Delayed:
        return typing.get_args(annotation)[0]
    return annotation
