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
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Generic, TypeVar, Union, overload

import attrs

from .errors import InvalidDefinition, PermanentError

__all__ = [
    "ErrorRoute",
    "Failure",
    "Machine",
    "MachineSpec",
    "RetryPolicy",
    "StepHandler",
    "lookup_machine",
    "state_name",
    "step",
]

F = TypeVar("F", bound=Callable[..., Any])


def state_name(cls: type) -> str:
    """The stable name a state class is stored under: `__state_name__` if the class sets it, else
    the class name. Set `__state_name__` to rename a class without touching stored rows."""
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

    def is_permanent(self, error: BaseException) -> bool:
        """Whether `error` must not be retried."""
        return isinstance(error, (PermanentError, *self.permanent))

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retrying after failed attempt number `attempt` (1-based)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** max(0, attempt - 1))
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


class StepHandler(Generic[F]):
    """A step handler as declared on a machine (what `@step` returns)."""

    def __init__(self, fn: F, retry: RetryPolicy | None) -> None:
        self.fn = fn
        self.retry = retry or DEFAULT_RETRY
        self.error_route: ErrorRoute | None = None
        self.name = fn.__name__
        # Filled in by the machine's validation.
        self.source: type = object
        self.targets: tuple[type, ...] = ()

    def on_error(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Declare the error route: ``fn(self, state, failure, ctx) -> NextState`` runs when the
        step fails permanently or runs out of retries, instead of parking the workflow."""
        if self.error_route is not None:
            raise InvalidDefinition(f"step {self.name!r} has two error routes")
        self.error_route = ErrorRoute(fn)
        return fn

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<step {self.name}>"


@overload
def step(fn: F, /) -> StepHandler[F]: ...
@overload
def step(*, retry: RetryPolicy | None = None) -> Callable[[F], StepHandler[F]]: ...
def step(
    fn: F | None = None, /, *, retry: RetryPolicy | None = None
) -> StepHandler[F] | Callable[[F], StepHandler[F]]:
    """Mark a method as the step handler of the state its first parameter is annotated with.

    The handler runs one side-effecting action and returns the next state; its return annotation
    declares every state it may return. Use bare (``@step``) or with options (``@step(retry=...)``).
    """
    if fn is not None:
        return StepHandler(fn, retry)

    def decorate(f: F) -> StepHandler[F]:
        return StepHandler(f, retry)

    return decorate


@attrs.frozen
class MachineSpec:
    """A validated machine: its states by name and its handlers by state class."""

    name: str
    initial: type
    states: dict[str, type]
    terminal: frozenset[type]
    steps: dict[type, StepHandler[Any]]

    def edges(self) -> list[tuple[type, type, str]]:
        """Every declared transition as (source, target, handler name), in declaration order."""
        out: list[tuple[type, type, str]] = []
        for source, handler in self.steps.items():
            out.extend((source, t, handler.name) for t in handler.targets)
            if handler.error_route is not None:
                out.extend((source, t, handler.error_route.fn.__name__)
                           for t in handler.error_route.targets)
        return out

    def is_terminal(self, cls: type) -> bool:
        return cls in self.terminal


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
    terminal = list(cls.terminal)
    if not terminal:
        raise InvalidDefinition(f"{where}: no terminal state (set `terminal = (Done, ...)`)")

    handlers: list[StepHandler[Any]] = []
    for klass in reversed(cls.__mro__):
        handlers.extend(v for v in vars(klass).values() if isinstance(v, StepHandler))

    declared = list(cls.states) if cls.states is not None else None
    localns = {c.__name__: c for c in [initial, *terminal, *(declared or [])]}
    steps: dict[type, StepHandler[Any]] = {}
    for handler in handlers:
        source, targets = _signature(where, handler.fn, localns, "step", handler.name)
        handler.source, handler.targets = source, targets
        if handler.error_route is not None:
            route = handler.error_route
            r_source, r_targets = _signature(where, route.fn, localns, "error route",
                                             route.fn.__name__)
            if r_source is not source:
                raise InvalidDefinition(
                    f"{where}: error route {route.fn.__name__!r} handles {r_source.__name__}, "
                    f"but its step {handler.name!r} handles {source.__name__}")
            handler.error_route = ErrorRoute(route.fn, r_targets)
        if source in steps:
            raise InvalidDefinition(
                f"{where}: state {source.__name__} has two handlers: "
                f"{steps[source].name!r} and {handler.name!r}")
        steps[source] = handler

    known: list[type] = declared if declared is not None else _collect(initial, terminal, steps)
    for s in [initial, *terminal]:
        _check_state_class(where, s)
        if declared is not None and s not in declared:
            raise InvalidDefinition(f"{where}: state {s.__name__} is not in `states`")
    for source, handler in steps.items():
        if declared is not None and source not in declared:
            raise InvalidDefinition(
                f"{where}: handler {handler.name!r} handles {source.__name__}, "
                "which is not a state of this machine")
        for target in _all_targets(handler):
            _check_state_class(where, target, f"handler {handler.name!r} returns")
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

    terminal_set = frozenset(terminal)
    if initial in terminal_set:
        raise InvalidDefinition(f"{where}: initial state {initial.__name__} is terminal")
    for s in known:
        if s in terminal_set and s in steps:
            raise InvalidDefinition(
                f"{where}: terminal state {s.__name__} has a handler ({steps[s].name!r}); "
                "terminal states have no way out")
        if s not in terminal_set and s not in steps:
            raise InvalidDefinition(
                f"{where}: state {s.__name__} is a dead end: it is not terminal and has no handler")

    reachable = {initial}
    frontier = [initial]
    while frontier:
        out = steps.get(frontier.pop())
        for t in _all_targets(out) if out else ():
            if t not in reachable:
                reachable.add(t)
                frontier.append(t)
    for s in known:
        if s not in reachable:
            raise InvalidDefinition(
                f"{where}: state {s.__name__} is unreachable from the initial state "
                f"{initial.__name__}")

    return MachineSpec(name=cls.name, initial=initial, states=names, terminal=terminal_set,
                       steps=steps)


def _all_targets(handler: StepHandler[Any]) -> tuple[type, ...]:
    route = handler.error_route.targets if handler.error_route else ()
    return handler.targets + route


def _collect(
    initial: type, terminal: list[type], steps: dict[type, StepHandler[Any]]
) -> list[type]:
    seen: dict[type, None] = {initial: None}
    for source, handler in steps.items():
        seen[source] = None
        seen.update(dict.fromkeys(_all_targets(handler)))
    seen.update(dict.fromkeys(terminal))
    return list(seen)


def _check_state_class(where: str, cls: Any, context: str = "") -> None:
    if not (isinstance(cls, type) and attrs.has(cls)):
        prefix = f"{context} " if context else "state "
        raise InvalidDefinition(f"{where}: {prefix}{cls!r} is not a state class (an attrs class)")


def _signature(
    where: str, fn: Callable[..., Any], localns: dict[str, Any], kind: str, name: str
) -> tuple[type, tuple[type, ...]]:
    """The state a handler handles (its first parameter after self) and the states it returns."""
    try:
        hints = typing.get_type_hints(fn, localns=localns)
    except NameError as e:
        raise InvalidDefinition(f"{where}: {kind} {name!r} has an annotation that does not "
                                f"resolve: {e}") from e
    params = [p for p in inspect.signature(fn).parameters.values()][1:]
    if not params or params[0].name not in hints:
        raise InvalidDefinition(
            f"{where}: {kind} {name!r} must annotate its first parameter with the state it handles")
    source = hints[params[0].name]
    _check_state_class(where, source, f"{kind} {name!r} handles")
    if "return" not in hints:
        raise InvalidDefinition(
            f"{where}: {kind} {name!r} has no return annotation; declare the states it may return "
            "(-> NextState | OtherState)")
    ret = hints["return"]
    targets = typing.get_args(ret) if typing.get_origin(ret) in (Union, types.UnionType) else (ret,)
    for t in targets:
        _check_state_class(where, t, f"{kind} {name!r} returns")
    return source, tuple(targets)
