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

import random
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, Literal, TypeVar, overload

import attrs

from ._limits import Limit
from .errors import InvalidDefinition, PermanentError

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
        from ._validation import build_spec  # validation needs the classes above

        cls.spec = build_spec(cls)
        _REGISTRY[cls.name] = cls


_REGISTRY: dict[str, type[Machine]] = {}


def lookup_machine(name: str) -> type[Machine] | None:
    """The most recently defined machine class stored under `name`, if any was imported."""
    return _REGISTRY.get(name)
