"""Declaring machines: states, step handlers, retry policies, and the checks run at class creation.

A machine is a class. Its states are attrs frozen classes; each non-terminal state has one step
handler, a method whose first parameter is annotated with the state it handles and whose return
annotation (a union of state classes) declares where it may go::

    class Order(Machine):
        initial = OrderPlaced
        terminal = (Confirmed, PaymentFailed)

        @step(retry=RetryPolicy(max_attempts=5))
        def charge_card(self, state: OrderPlaced, ctx: Context) -> Charged: ...

The graph is derived from those annotations and checked when the class is created: a bad machine
fails at import with `InvalidDefinition`, naming the state and the rule it breaks.
"""

from __future__ import annotations

import inspect
import random
import types
import typing
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, Literal, TypeVar, Union, overload

import attrs

from .errors import InvalidDefinition, PermanentError
from .limits import Limit

__all__ = [
    "ChildResult",
    "Delayed",
    "ErrorRoute",
    "Failure",
    "Machine",
    "MachineSpec",
    "Rerun",
    "RetryPolicy",
    "StepHandler",
    "later",
    "lookup_machine",
    "on_cancel",
    "on_children",
    "on_event",
    "on_timeout",
    "rerun",
    "state_name",
    "step",
]

F = TypeVar("F", bound=Callable[..., Any])


def state_name(cls: type) -> str:
    """The stable name a state class is stored under: `__state_name__` if the class sets it, else
    the class name. Set `__state_name__` to rename a class without touching stored rows (or list
    the old name in ``__state_aliases__`` to store the new name from now on)."""
    name = cls.__dict__.get("__state_name__")
    return name if isinstance(name, str) else cls.__name__


@attrs.frozen
class RetryPolicy:
    """How a failing handler is retried.

    Attempt n (1-based) that fails is retried after ``min(max_delay, initial_delay * multiplier **
    (n - 1))`` seconds, shortened by up to ``jitter`` (a fraction) at random so that a crowd of
    failing workflows spreads out. Exceptions in `permanent` (and `PermanentError`) are not retried.
    """

    max_attempts: int = 3
    initial_delay: float = 1.0
    max_delay: float = 300.0
    multiplier: float = 2.0
    jitter: float = 0.2
    permanent: tuple[type[BaseException], ...] = attrs.field(default=(), converter=tuple)

    def __attrs_post_init__(self) -> None:
        if self.max_attempts < 1:
            raise InvalidDefinition(
                f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if not 0 <= self.jitter <= 1:
            raise InvalidDefinition(f"RetryPolicy.jitter must be in [0, 1], got {self.jitter}")
        for field in ("initial_delay", "max_delay", "multiplier"):
            if getattr(self, field) < 0:
                raise InvalidDefinition(
                    f"RetryPolicy.{field} must be >= 0, got {getattr(self, field)}")

    def is_permanent(self, error: BaseException) -> bool:
        """Whether `error` must not be retried."""
        return isinstance(error, (PermanentError, *self.permanent))

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retrying after failed attempt number `attempt` (1-based)."""
        try:
            growth = self.initial_delay * self.multiplier ** max(0, attempt - 1)
        except OverflowError:  # float ** int raises instead of giving inf
            growth = self.max_delay if self.initial_delay > 0 else 0.0
        base = min(self.max_delay, growth)
        return base * (1 - self.jitter * random.random())


DEFAULT_RETRY = RetryPolicy()


@attrs.frozen
class Failure:
    """What went wrong in a handler, as the error route sees it."""

    type: str
    message: str
    attempt: int
    traceback: str = ""
    permanent: bool = False

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


@attrs.frozen
class ErrorRoute:
    """The handler run when a step fails for good; it returns the state to go to instead."""

    fn: Callable[..., Any]
    targets: tuple[type, ...] = ()


S = TypeVar("S")


@attrs.frozen
class Delayed(Generic[S]):
    """A next state that takes effect later: the workflow sleeps in the database until then,
    holding no worker. Build it with `later`; annotate the handler ``-> Delayed[NextState]``."""

    state: S
    at: datetime | None = None
    after: float | None = None


def later(state: S, *, after: timedelta | float | None = None,
          at: datetime | None = None) -> Delayed[S]:
    """`state`, to take effect `after` a delay (seconds or timedelta) or `at` an aware time."""
    if (after is None) == (at is None):
        raise ValueError("later() takes exactly one of after= and at=")
    if at is not None and at.tzinfo is None:
        raise ValueError(f"later(at={at!r}): give the time a time zone")
    seconds = after.total_seconds() if isinstance(after, timedelta) else after
    return Delayed(state, at=at, after=seconds)


@attrs.frozen
class Rerun:
    """What a reconcile handler returns when the attempt in doubt did not take effect: run the
    step again with the same idempotency key (so a service that deduplicates by key also catches
    an attempt still in flight), after the step's retry backoff and within its attempts. Build it
    with `rerun`; annotate the reconcile handler ``-> Charged | Rerun``."""


def rerun() -> Rerun:
    """See `Rerun`."""
    return Rerun()


@attrs.frozen
class ChildResult:
    """How a child workflow ended, as its parent's `on_children` handler sees it."""

    id: uuid.UUID
    machine: str
    status: str
    state_name: str
    data: Any
    state: object | None
    last_error: str | None

    @property
    def succeeded(self) -> bool:
        """True when the child reached one of its terminal states (status done)."""
        return self.status == "done"


HandlerKind = Literal["step", "event", "timeout", "children", "cancel"]


class StepHandler(Generic[F]):
    """A handler as declared on a machine: what `@step`, `@on_event`, `@on_timeout`,
    `@on_children` and `@on_cancel` return. `kind` says which."""

    def __init__(self, fn: F, retry: RetryPolicy | None, kind: HandlerKind = "step",
                 limit: Limit | None = None, *, transactional: bool = False,
                 at_most_once: bool = False) -> None:
        self.fn = fn
        self.kind: HandlerKind = kind
        self.retry = retry or DEFAULT_RETRY
        # Concurrency / rate limit shared with other handlers using the same key.
        self.limit = limit
        # Runs inside the transaction that commits its result (ctx.connection).
        self.transactional = transactional
        # Never re-run blindly after an attempt that may have taken effect (see `reconcile`).
        self.at_most_once = at_most_once
        self.reconcile_route: ErrorRoute | None = None
        self.error_route: ErrorRoute | None = None
        self.name = fn.__name__
        # Filled in by the machine's validation.
        self.source: type = object
        self.sources: tuple[type, ...] = ()
        self.targets: tuple[type, ...] = ()
        self.event: type | None = None
        # on_timeout: a delay from entering the state, or a function of the state giving the time.
        self.timeout_after: float | None = None
        self.timeout_at: Callable[[Any], datetime] | None = None
        # on_children: wake on "all" children finished, or the "first"; cap on running children.
        self.wait_for: Literal["all", "first"] = "all"
        self.max_running: int | None = None

    def on_error(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Declare the error route: ``fn(self, state, failure, ctx) -> NextState`` runs when the
        step fails permanently or runs out of retries, instead of parking the workflow."""
        if self.error_route is not None:
            raise InvalidDefinition(f"step {self.name!r} has two error routes")
        self.error_route = ErrorRoute(fn)
        return fn

    def reconcile(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Declare how an at-most-once step recovers from an attempt that started and never
        finished (worker killed, or the handler raised): ``fn(self, state, ctx) -> Next`` asks
        the outside world what happened and returns the state to go to (the step's own state to
        try again, with a fresh idempotency key). Without it such a workflow is parked in doubt."""
        if not self.at_most_once:
            raise InvalidDefinition(f"step {self.name!r}: reconcile needs @step(at_most_once=True)")
        if self.reconcile_route is not None:
            raise InvalidDefinition(f"step {self.name!r} has two reconcile handlers")
        self.reconcile_route = ErrorRoute(fn)
        return fn

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name}>"


@overload
def step(fn: F, /) -> StepHandler[F]: ...
@overload
def step(
    *, retry: RetryPolicy | None = None, limit: Limit | None = None, transactional: bool = False,
    at_most_once: bool = False,
) -> Callable[[F], StepHandler[F]]: ...
def step(
    fn: F | None = None, /, *, retry: RetryPolicy | None = None, limit: Limit | None = None,
    transactional: bool = False, at_most_once: bool = False,
) -> StepHandler[F] | Callable[[F], StepHandler[F]]:
    """Mark a method as the step handler of the state its first parameter is annotated with.

    The handler runs one side-effecting action and returns the next state; its return annotation
    declares every state it may return. Use bare (``@step``) or with options (``@step(retry=...)``).
    `limit` caps how many run at once / per second across workflows (see `Limit`).

    ``transactional=True``: the handler runs inside the transaction that commits its next state;
    what it writes through ``ctx.connection`` commits with the state change or not at all (it may
    run again if the transaction is retried, so keep outside I/O out of it).
    ``at_most_once=True``: an attempt that started and never finished is never re-run blindly;
    its `reconcile` handler decides, or the workflow is parked in doubt for a human.
    """
    if transactional and at_most_once:
        raise InvalidDefinition("a step is transactional (exactly-once in the database) or "
                                "at_most_once (outside effects), not both")

    def make(f: F) -> StepHandler[F]:
        return StepHandler(f, retry, limit=limit, transactional=transactional,
                           at_most_once=at_most_once)

    return make(fn) if fn is not None else make


@overload
def on_event(fn: F, /) -> StepHandler[F]: ...
@overload
def on_event(
    *, retry: RetryPolicy | None = None, limit: Limit | None = None
) -> Callable[[F], StepHandler[F]]: ...
def on_event(
    fn: F | None = None, /, *, retry: RetryPolicy | None = None, limit: Limit | None = None
) -> StepHandler[F] | Callable[[F], StepHandler[F]]:
    """Handle an event in a waiting state: ``fn(self, state: Waiting, event: SomeEvent, ctx) ->
    Next``. Events that arrive before the workflow waits for them are buffered, in order."""
    if fn is not None:
        return StepHandler(fn, retry, "event", limit)

    def decorate(f: F) -> StepHandler[F]:
        return StepHandler(f, retry, "event", limit)

    return decorate


def on_timeout(
    *, after: timedelta | float | None = None, at: Callable[[Any], datetime] | None = None,
    retry: RetryPolicy | None = None,
) -> Callable[[F], StepHandler[F]]:
    """Give a waiting state a deadline: `after` a delay from entering the state, or `at` the time
    a function of the state returns. ``fn(self, state, ctx) -> Next`` runs if nothing else
    (an event, the children) moved the workflow on first. Exactly one of the two wins."""
    if (after is None) == (at is None):
        raise InvalidDefinition("on_timeout takes exactly one of after= and at=")

    def decorate(f: F) -> StepHandler[F]:
        handler = StepHandler(f, retry, "timeout")
        handler.timeout_after = after.total_seconds() if isinstance(after, timedelta) else after
        handler.timeout_at = at
        return handler

    return decorate


def on_children(
    *, wait_for: Literal["all", "first"] = "all", max_running: int | None = None,
    retry: RetryPolicy | None = None,
) -> Callable[[F], StepHandler[F]]:
    """Wait for the child workflows started with ``ctx.start_child`` on the way into this state:
    ``fn(self, state, children: list[ChildResult], ctx) -> Next`` runs once, when all of them
    (or the first) have finished, failed ones included. `max_running` caps how many children run
    at once; the rest wait in the database, queued in the order they were started."""
    if max_running is not None and max_running < 1:
        raise InvalidDefinition(f"on_children(max_running={max_running}): must be >= 1")

    def decorate(f: F) -> StepHandler[F]:
        handler = StepHandler(f, retry, "children")
        handler.wait_for = wait_for
        handler.max_running = max_running
        return handler

    return decorate


@overload
def on_cancel(fn: F, /) -> StepHandler[F]: ...
@overload
def on_cancel(*, retry: RetryPolicy | None = None) -> Callable[[F], StepHandler[F]]: ...
def on_cancel(
    fn: F | None = None, /, *, retry: RetryPolicy | None = None
) -> StepHandler[F] | Callable[[F], StepHandler[F]]:
    """The machine's cancel route: ``fn(self, state: A | B, ctx) -> Compensating`` runs when a
    workflow in one of the annotated states (annotate ``object`` for any) is cancelled, instead of
    ending it `cancelled` at once. Compensation states are ordinary states."""
    if fn is not None:
        return StepHandler(fn, retry, "cancel")

    def decorate(f: F) -> StepHandler[F]:
        return StepHandler(f, retry, "cancel")

    return decorate


@attrs.frozen
class MachineSpec:
    """A validated machine: its states by name and its handlers by state class."""

    name: str
    initial: type
    states: dict[str, type]
    terminal: frozenset[type]
    steps: dict[type, StepHandler[Any]]
    events: dict[type, dict[type, StepHandler[Any]]] = attrs.Factory(dict)
    timeouts: dict[type, StepHandler[Any]] = attrs.Factory(dict)
    children: dict[type, StepHandler[Any]] = attrs.Factory(dict)
    cancel: StepHandler[Any] | None = None
    event_types: dict[str, type] = attrs.Factory(dict)
    # Former names of states (``__state_aliases__``): rows stored under them still load.
    aliases: dict[str, type] = attrs.Factory(dict)

    def handlers(self) -> list[StepHandler[Any]]:
        """Every handler of the machine."""
        out = list(self.steps.values())
        for by_event in self.events.values():
            out.extend(by_event.values())
        out.extend(self.timeouts.values())
        out.extend(self.children.values())
        if self.cancel is not None:
            out.append(self.cancel)
        return out

    def edges(self) -> list[tuple[type, type, str]]:
        """Every declared transition as (source, target, handler name), in declaration order."""
        out: list[tuple[type, type, str]] = []
        for handler in self.handlers():
            sources = handler.sources or (handler.source,)
            if handler.kind == "cancel" and object in sources:
                sources = tuple(s for s in self.states.values() if s not in self.terminal)
            for source in sources:
                out.extend((source, t, handler.name) for t in handler.targets)
                for route in (handler.error_route, handler.reconcile_route):
                    if route is not None:
                        out.extend((source, t, route.fn.__name__) for t in route.targets)
        return out

    def is_terminal(self, cls: type) -> bool:
        return cls in self.terminal

    def is_waiting(self, cls: type) -> bool:
        """Whether `cls` is a waiting state (events, a timeout or children move it on)."""
        return cls in self.events or cls in self.timeouts or cls in self.children

    def cancel_applies(self, cls: type) -> bool:
        """Whether the machine's cancel route handles a workflow in state `cls`."""
        c = self.cancel
        return c is not None and (object in c.sources or cls in c.sources)


class Machine:
    """Base class of every workflow machine.

    Subclasses set `initial` (the state a workflow starts in) and `terminal` (the states it ends
    in), and define one `@step` handler per other state. `name` (default: the class name) is what
    rows store; keep it stable. Instances carry the handlers' dependencies (HTTP clients, settings):
    give a worker instances, not classes. Pass ``abstract=True`` in the class statement for a base
    class that shares helpers but is not a machine itself.
    """

    name: ClassVar[str]
    initial: ClassVar[type]
    terminal: ClassVar[Iterable[type]] = ()
    states: ClassVar[Iterable[type] | None] = None
    spec: ClassVar[MachineSpec]

    def __init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if abstract:
            return
        if "name" not in cls.__dict__:
            cls.name = cls.__name__
        cls.spec = _build_spec(cls)
        _REGISTRY[cls.name] = cls


_REGISTRY: dict[str, type[Machine]] = {}


def lookup_machine(name: str) -> type[Machine] | None:
    """The most recently defined machine class stored under `name`, if any was imported."""
    return _REGISTRY.get(name)


def _build_spec(cls: type[Machine]) -> MachineSpec:
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
