"""What a machine's class body declares: state values, retry policies, and the handler decorators.

Each decorator returns a frozen declaration of its own kind (`StepDeclaration`,
`EventDeclaration`, `TimeoutDeclaration`, `ChildrenDeclaration`, `CancelDeclaration`, and
`RouteDeclaration` for an error route or a reconcile handler). A declaration holds only what was
written; nothing fills it in later. Validation (`_validation`) reads the declarations of a machine
class and builds that machine's own frozen `MachineSpec`, so two machines inheriting one base share
nothing mutable.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, Literal, TypeVar, overload

import attrs

from ._limits import Limit
from .errors import InvalidArgument, InvalidDefinition, PermanentError

__all__ = [
    "DEFAULT_RETRY",
    "CancelDeclaration",
    "ChildResult",
    "ChildrenDeclaration",
    "Declaration",
    "Delayed",
    "EventDeclaration",
    "Failure",
    "Poll",
    "PollAgain",
    "Rerun",
    "RetryPolicy",
    "RouteDeclaration",
    "StepDeclaration",
    "TimeoutDeclaration",
    "later",
    "on_cancel",
    "on_children",
    "on_event",
    "on_timeout",
    "poll_again",
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
        raise InvalidArgument("later() takes exactly one of after= and at=")
    if at is not None and at.tzinfo is None:
        raise InvalidArgument(f"later(at={at!r}): give the time a time zone")
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


def _seconds(value: timedelta | float) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidDefinition(f"Poll: expected seconds or a timedelta, got {value!r}")
    return float(value)


def _maybe_seconds(value: timedelta | float | None) -> float | None:
    return None if value is None else _seconds(value)


@attrs.frozen
class Poll:
    """How a polling step repeats: ``@step(poll=Poll(every=5, max_every=60, deadline=3600))``.

    The step's handler looks once and returns the next state when its condition holds, or
    `poll_again()` when it does not yet. The interval starts at `every` and grows by `backoff`
    per interval (geometrically; it is derived from the time since the state was entered, so a
    restart does not reset it) up to `max_every`, shortened by up to `jitter` at random. After
    `deadline` (from entering the state, on the store's clock) a `poll_again()` is a permanent
    failure of the step (type ``PollDeadline``): its error route runs, or the workflow is parked.

    A poll that returns `poll_again()` writes no history row unless ``record=True``: the row keeps
    its version (and idempotency key); only `wake_at`, `updated_at` and the `polls` counter move,
    under the lease token. Seconds or timedeltas everywhere."""

    every: float = attrs.field(converter=_seconds)
    deadline: float = attrs.field(converter=_seconds)
    max_every: float | None = attrs.field(default=None, converter=_maybe_seconds)
    backoff: float = 2.0
    jitter: float = 0.1
    record: bool = False

    def __attrs_post_init__(self) -> None:
        if not self.every > 0:
            raise InvalidDefinition(f"Poll.every must be > 0 seconds, got {self.every}")
        if not self.deadline > 0:
            raise InvalidDefinition(f"Poll.deadline must be > 0 seconds, got {self.deadline}")
        if self.deadline < self.every:
            raise InvalidDefinition(
                f"Poll.deadline ({self.deadline}s) is shorter than its first interval "
                f"every={self.every}s: it would never poll twice")
        if self.max_every is not None and self.max_every < self.every:
            raise InvalidDefinition(
                f"Poll.max_every ({self.max_every}s) must be >= every ({self.every}s)")
        if not self.backoff >= 1:
            raise InvalidDefinition(
                f"Poll.backoff must be >= 1 (1 polls at a fixed interval), got {self.backoff}")
        if not 0 <= self.jitter < 1:
            raise InvalidDefinition(f"Poll.jitter must be in [0, 1), got {self.jitter}")

    def interval(self, elapsed: float) -> float:
        """Seconds to the next poll, `elapsed` seconds after entering the state (before jitter).

        Polls at every*(1, 1+b, 1+b+b^2, ...) follow from ``every + (backoff - 1) * elapsed``:
        each interval is `backoff` times the previous, with no counter to keep."""
        grown = self.every + (self.backoff - 1) * max(0.0, elapsed)
        return grown if self.max_every is None else min(self.max_every, grown)

    def next_poll(self, elapsed: float) -> float:
        """`interval` shortened by up to `jitter` at random, never past the deadline."""
        base = self.interval(elapsed) * (1 - self.jitter * random.random())
        return max(0.0, min(base, self.deadline - elapsed))


@attrs.frozen
class PollAgain:
    """What a polling step returns while its condition does not hold yet. Build it with
    `poll_again`; annotate the handler ``-> Booted | PollAgain``."""


def poll_again() -> PollAgain:
    """See `PollAgain` and `Poll`."""
    return PollAgain()


T = TypeVar("T")


@attrs.frozen
class ChildResult:
    """How a child workflow ended, as its parent's `on_children` handler sees it.

    `state` is the child's final state object when the worker runs (or knows) the child's
    machine and the child finished, else None; `data` is its stored JSON either way. Use
    `state_as` for a typed view: ``c.state_as(Invoiced)`` is the `Invoiced` state or None."""

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

    def state_as(self, cls: type[T]) -> T | None:
        """The child's state if it is a `cls` (typed for the checker), else None."""
        return self.state if isinstance(self.state, cls) else None



# -- declarations --------------------------------------------------------------------------------
# eq=False: declarations are compared by identity (a route names the very step it belongs to).


@attrs.frozen(eq=False)
class RouteDeclaration(Generic[F]):
    """An error route (``@step.on_error``) or a reconcile handler (``@step.reconcile``) of the
    steps in `steps` (stacked decorators give one route to several steps)."""

    fn: F
    kind: Literal["error", "reconcile"]
    steps: tuple[StepDeclaration[Any], ...]

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        # On an instance it is the plain method it decorates (callable like any other).
        return self if obj is None else self.fn.__get__(obj, owner)


def _route(kind: Literal["error", "reconcile"], of: StepDeclaration[Any],
           fn: Callable[..., Any] | RouteDeclaration[Any]) -> RouteDeclaration[Any]:
    if isinstance(fn, RouteDeclaration):
        if fn.kind != kind:
            raise InvalidDefinition(f"{fn.fn.__name__!r} is declared both an error route and a "
                                    "reconcile handler")
        return attrs.evolve(fn, steps=(*fn.steps, of))
    return RouteDeclaration(fn, kind, (of,))


@attrs.frozen(eq=False)
class StepDeclaration(Generic[F]):
    """What `@step` returns: the handler of one state and how it runs."""

    kind: ClassVar[Literal["step"]] = "step"
    fn: F
    retry: RetryPolicy = DEFAULT_RETRY
    # Concurrency / rate limit shared with other handlers using the same key.
    limit: Limit | None = None
    # Runs inside the transaction that commits its result (ctx.connection).
    transactional: bool = False
    # Never re-run blindly after an attempt that may have taken effect (see `reconcile`).
    at_most_once: bool = False
    # A polling step: returns `poll_again()` until its condition holds (see `Poll`).
    poll: Poll | None = None

    def on_error(self, fn: Callable[..., Any] | RouteDeclaration[Any]) -> RouteDeclaration[Any]:
        """Declare the error route: ``fn(self, state, failure, ctx) -> NextState`` runs when the
        step fails permanently or runs out of retries, instead of parking the workflow."""
        return _route("error", self, fn)

    def reconcile(self, fn: Callable[..., Any] | RouteDeclaration[Any]) -> RouteDeclaration[Any]:
        """Declare how an at-most-once step recovers from an attempt that started and never
        finished (worker killed, or the handler raised): ``fn(self, state, ctx) -> Next`` asks
        the outside world what happened and returns the state to go to (the step's own state to
        try again, with a fresh idempotency key). Without it such a workflow is parked in doubt."""
        if not self.at_most_once:
            raise InvalidDefinition(
                f"step {self.fn.__name__!r}: reconcile needs @step(at_most_once=True)")
        return _route("reconcile", self, fn)

    def __repr__(self) -> str:
        return f"<step {self.fn.__name__}>"


@attrs.frozen(eq=False)
class EventDeclaration(Generic[F]):
    """What `@on_event` returns: the handler of one event in one waiting state."""

    kind: ClassVar[Literal["event"]] = "event"
    fn: F
    retry: RetryPolicy = DEFAULT_RETRY
    limit: Limit | None = None

    def __repr__(self) -> str:
        return f"<event {self.fn.__name__}>"


@attrs.frozen(eq=False)
class TimeoutDeclaration(Generic[F]):
    """What `@on_timeout` returns: a waiting state's deadline and its handler."""

    kind: ClassVar[Literal["timeout"]] = "timeout"
    fn: F
    retry: RetryPolicy = DEFAULT_RETRY
    # A delay from entering the state, or a function of the state giving the time.
    after: float | None = None
    at: Callable[[Any], datetime] | None = None

    def __repr__(self) -> str:
        return f"<timeout {self.fn.__name__}>"


@attrs.frozen(eq=False)
class ChildrenDeclaration(Generic[F]):
    """What `@on_children` returns: the handler run when a state's children have finished."""

    kind: ClassVar[Literal["children"]] = "children"
    fn: F
    retry: RetryPolicy = DEFAULT_RETRY
    wait_for: Literal["all", "first"] = "all"
    max_running: int | None = None

    def __repr__(self) -> str:
        return f"<children {self.fn.__name__}>"


@attrs.frozen(eq=False)
class CancelDeclaration(Generic[F]):
    """What `@on_cancel` returns: the machine's cancel route."""

    kind: ClassVar[Literal["cancel"]] = "cancel"
    fn: F
    retry: RetryPolicy = DEFAULT_RETRY

    def __repr__(self) -> str:
        return f"<cancel {self.fn.__name__}>"


Declaration = (StepDeclaration[Any] | EventDeclaration[Any] | TimeoutDeclaration[Any]
               | ChildrenDeclaration[Any] | CancelDeclaration[Any])
DECLARATIONS = (StepDeclaration, EventDeclaration, TimeoutDeclaration, ChildrenDeclaration,
                CancelDeclaration, RouteDeclaration)


# -- decorators ----------------------------------------------------------------------------------


@overload
def step(fn: F, /) -> StepDeclaration[F]: ...
@overload
def step(
    *, retry: RetryPolicy | None = None, limit: Limit | None = None, transactional: bool = False,
    at_most_once: bool = False, poll: Poll | None = None,
) -> Callable[[F], StepDeclaration[F]]: ...
def step(
    fn: F | None = None, /, *, retry: RetryPolicy | None = None, limit: Limit | None = None,
    transactional: bool = False, at_most_once: bool = False, poll: Poll | None = None,
) -> StepDeclaration[F] | Callable[[F], StepDeclaration[F]]:
    """Mark a method as the step handler of the state its first parameter is annotated with.

    The handler runs one side-effecting action and returns the next state; its return annotation
    declares every state it may return. Use bare (``@step``) or with options (``@step(retry=...)``).
    `limit` caps how many run at once / per second across workflows (see `Limit`).

    ``transactional=True``: the handler runs inside the transaction that commits its next state;
    what it writes through ``ctx.connection`` commits with the state change or not at all (it may
    run again if the transaction is retried, so keep outside I/O out of it).
    ``at_most_once=True``: an attempt that started and never finished is never re-run blindly;
    its `reconcile` handler decides, or the workflow is parked in doubt for a human.
    ``poll=Poll(...)``: the handler looks, and returns `poll_again()` until its condition holds,
    with backoff and a deadline, writing no history row per poll (see `Poll`).
    """
    if transactional and at_most_once:
        raise InvalidDefinition("a step is transactional (exactly-once in the database) or "
                                "at_most_once (outside effects), not both")
    if poll is not None and not isinstance(poll, Poll):
        raise InvalidDefinition(f"step(poll=...) takes a Poll, got {poll!r}")
    if poll is not None and at_most_once:
        raise InvalidDefinition("a polling step looks (it is run again each poll); it cannot be "
                                "at_most_once")

    def make(f: F) -> StepDeclaration[F]:
        return StepDeclaration(f, retry or DEFAULT_RETRY, limit, transactional, at_most_once,
                               poll)

    return make(fn) if fn is not None else make


@overload
def on_event(fn: F, /) -> EventDeclaration[F]: ...
@overload
def on_event(
    *, retry: RetryPolicy | None = None, limit: Limit | None = None
) -> Callable[[F], EventDeclaration[F]]: ...
def on_event(
    fn: F | None = None, /, *, retry: RetryPolicy | None = None, limit: Limit | None = None
) -> EventDeclaration[F] | Callable[[F], EventDeclaration[F]]:
    """Handle an event: ``fn(self, state: Waiting, event: SomeEvent, ctx) -> Next``.

    The state annotation may be a union (``state: Welcome | Waiting | Tip``): one handler for
    the event in each of those states. Events are handled in the order they were sent. In a
    waiting state an event moves it on at once; in a step state a pending event is handled
    instead of the step when the workflow next comes to run it (an event sent while the step
    runs waits for the step's commit, then goes to the state it moved to, if that accepts it).
    Events that arrive before a state accepts them are buffered; those still pending when the
    workflow ends are marked rejected, with the reason."""

    def make(f: F) -> EventDeclaration[F]:
        return EventDeclaration(f, retry or DEFAULT_RETRY, limit)

    return make(fn) if fn is not None else make


def on_timeout(
    *, after: timedelta | float | None = None, at: Callable[[Any], datetime] | None = None,
    retry: RetryPolicy | None = None,
) -> Callable[[F], TimeoutDeclaration[F]]:
    """Give a waiting state a deadline: `after` a delay from entering the state, or `at` the time
    a function of the state returns. ``fn(self, state, ctx) -> Next`` runs if nothing else
    (an event, the children) moved the workflow on first. Exactly one of the two wins."""
    if (after is None) == (at is None):
        raise InvalidDefinition("on_timeout takes exactly one of after= and at=")
    seconds = after.total_seconds() if isinstance(after, timedelta) else after

    def make(f: F) -> TimeoutDeclaration[F]:
        return TimeoutDeclaration(f, retry or DEFAULT_RETRY, seconds, at)

    return make


def on_children(
    *, wait_for: Literal["all", "first"] = "all", max_running: int | None = None,
    retry: RetryPolicy | None = None,
) -> Callable[[F], ChildrenDeclaration[F]]:
    """Wait for the child workflows started with ``ctx.start_child`` on the way into this state:
    ``fn(self, state, children: list[ChildResult], ctx) -> Next`` runs once, when all of them
    (or the first) have finished, failed ones included. `max_running` caps how many children run
    at once; the rest wait in the database, queued in the order they were started."""
    if max_running is not None and max_running < 1:
        raise InvalidDefinition(f"on_children(max_running={max_running}): must be >= 1")

    def make(f: F) -> ChildrenDeclaration[F]:
        return ChildrenDeclaration(f, retry or DEFAULT_RETRY, wait_for, max_running)

    return make


@overload
def on_cancel(fn: F, /) -> CancelDeclaration[F]: ...
@overload
def on_cancel(*, retry: RetryPolicy | None = None) -> Callable[[F], CancelDeclaration[F]]: ...
def on_cancel(
    fn: F | None = None, /, *, retry: RetryPolicy | None = None
) -> CancelDeclaration[F] | Callable[[F], CancelDeclaration[F]]:
    """The machine's cancel route: ``fn(self, state: A | B, ctx) -> Compensating`` runs when a
    workflow in one of the annotated states (annotate ``object`` for any) is cancelled, instead of
    ending it `cancelled` at once. Compensation states are ordinary states."""

    def make(f: F) -> CancelDeclaration[F]:
        return CancelDeclaration(f, retry or DEFAULT_RETRY)

    return make(fn) if fn is not None else make
