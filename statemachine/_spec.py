"""A validated machine as the engine runs it: `MachineSpec`, its `Handler`s and their `Route`s.

Built by `_validation.build_spec` from a machine class's declarations, once per machine class, and
frozen: nothing is filled in later and nothing is shared with another machine.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

import attrs

from ._declarations import Declaration, Poll, RetryPolicy
from ._limits import Limit

__all__ = ["Handler", "HandlerKind", "MachineSpec", "Route"]

F = TypeVar("F", bound=Callable[..., Any])
HandlerKind = Literal["step", "event", "timeout", "children", "cancel"]


@attrs.frozen
class Route:
    """An error route or reconcile handler as attached to one step: its function and targets."""

    fn: Callable[..., Any]
    targets: tuple[type, ...] = ()

    @property
    def name(self) -> str:
        return self.fn.__name__


@attrs.frozen(kw_only=True)
class Handler(Generic[F]):
    """One handler of one machine, its signature resolved: the states it handles (`sources`),
    the states it may return (`targets`), and the options of its kind."""

    kind: HandlerKind
    name: str
    fn: F
    sources: tuple[type, ...]
    targets: tuple[type, ...]
    retry: RetryPolicy
    declaration: Declaration = attrs.field(repr=False)
    limit: Limit | None = None
    transactional: bool = False
    at_most_once: bool = False
    # A polling step (it returns `poll_again()` until its condition holds).
    poll: Poll | None = None
    error_route: Route | None = None
    reconcile_route: Route | None = None
    # on_event: the event class handled (in every state of `sources`).
    event: type | None = None
    # on_timeout: a delay from entering the state, or a function of the state giving the time.
    timeout_after: float | None = None
    timeout_at: Callable[[Any], datetime] | None = None
    # on_children: wake on "all" children finished, or the "first"; cap on running children.
    wait_for: Literal["all", "first"] = "all"
    max_running: int | None = None

    @property
    def source(self) -> type:
        """The (first) state this handler handles."""
        return self.sources[0]

    def all_targets(self) -> tuple[type, ...]:
        """The states this handler, its error route and its reconcile handler may return."""
        route = self.error_route.targets if self.error_route else ()
        reconcile = self.reconcile_route.targets if self.reconcile_route else ()
        return self.targets + route + reconcile

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name}>"


@attrs.frozen
class MachineSpec:
    """A validated machine: its states by name and its handlers by state class."""

    name: str
    initial: type
    states: dict[str, type]
    terminal: frozenset[type]
    steps: dict[type, Handler[Any]]
    events: dict[type, dict[type, Handler[Any]]] = attrs.Factory(dict)
    timeouts: dict[type, Handler[Any]] = attrs.Factory(dict)
    children: dict[type, Handler[Any]] = attrs.Factory(dict)
    cancel: Handler[Any] | None = None
    event_types: dict[str, type] = attrs.Factory(dict)
    # Former names of states (``__state_aliases__``): rows stored under them still load.
    aliases: dict[str, type] = attrs.Factory(dict)

    def handlers(self) -> list[Handler[Any]]:
        """Every handler of the machine, once each (an event handler of several states too)."""
        out = list(self.steps.values())
        for by_event in self.events.values():
            out.extend(h for h in by_event.values() if not any(h is o for o in out))
        out.extend(self.timeouts.values())
        out.extend(self.children.values())
        if self.cancel is not None:
            out.append(self.cancel)
        return out

    def edges(self) -> list[tuple[type, type, str]]:
        """Every declared transition as (source, target, handler name), in declaration order."""
        out: list[tuple[type, type, str]] = []
        for handler in self.handlers():
            sources = handler.sources
            if handler.kind == "cancel" and object in sources:
                sources = tuple(s for s in self.states.values() if s not in self.terminal)
            for source in sources:
                out.extend((source, t, handler.name) for t in handler.targets)
                for route in (handler.error_route, handler.reconcile_route):
                    if route is not None:
                        out.extend((source, t, route.name) for t in route.targets)
        return out

    def is_terminal(self, cls: type) -> bool:
        """Whether `cls` is a terminal state."""
        return cls in self.terminal

    def is_waiting(self, cls: type) -> bool:
        """Whether `cls` is a waiting state (events, a timeout or children move it on, not a
        step; a step state may accept events too, see `interrupts`)."""
        return cls not in self.steps and (
            cls in self.events or cls in self.timeouts or cls in self.children)

    def interrupts(self, cls: type) -> dict[type, Handler[Any]]:
        """The events that a step state `cls` accepts before its step starts (by event class)."""
        return self.events.get(cls, {}) if cls in self.steps else {}

    def cancel_applies(self, cls: type) -> bool:
        """Whether the machine's cancel route handles a workflow in state `cls`."""
        c = self.cancel
        return c is not None and (object in c.sources or cls in c.sources)
