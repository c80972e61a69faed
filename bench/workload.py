"""The benchmark workload: a machine of three trivial transitions, and starting N of them in bulk.

``Received -> Validated -> Processed -> Finished``: each handler only builds the next state, so
what is measured is the engine (claim, load, run, serialize, commit), not the handlers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs

import statemachine
from statemachine import Client, Context, Machine, Store, step

__all__ = [
    "MACHINE_NAME",
    "BenchFlow",
    "Finished",
    "Processed",
    "Received",
    "Validated",
    "ping_machine",
    "start_workflows",
]

MACHINE_NAME = "bench_flow"
TRANSITIONS = 3


@attrs.frozen
class Received:
    """Initial state."""

    n: int


@attrs.frozen
class Validated:
    """After the first transition."""

    n: int


@attrs.frozen
class Processed:
    """After the second transition."""

    n: int


@attrs.frozen
class Finished:
    """Terminal state, reached by the third transition."""

    n: int


class BenchFlow(Machine):
    """Three transitions with trivial handlers."""

    name = MACHINE_NAME
    initial = Received
    terminal = (Finished,)

    @step
    def validate(self, state: Received, ctx: Context) -> Validated:
        """First transition."""
        return Validated(n=state.n)

    @step
    def process(self, state: Validated, ctx: Context) -> Processed:
        """Second transition."""
        return Processed(n=state.n)

    @step
    def finish(self, state: Processed, ctx: Context) -> Finished:
        """Third (terminal) transition."""
        return Finished(n=state.n)


def start_workflows(store: Store, count: int, *, chunk: int = 10_000) -> float:
    """Start `count` workflows with `Client.start_many` (one transaction per `chunk`); returns the
    seconds it took."""
    client = Client(store, [BenchFlow])
    t0 = time.perf_counter()
    for first in range(0, count, chunk):
        client.start_many(BenchFlow, [Received(n=i)
                                      for i in range(first, min(count, first + chunk))])
    return time.perf_counter() - t0


# -- events: the send -> handler latency workload ------------------------------------------------


@attrs.frozen
class Arrived:
    """Initial state of the ping workflow: one step into the waiting state."""

    n: int


@attrs.frozen
class AwaitingPing:
    """Waiting state: accepts one `Ping` event."""

    n: int


@attrs.frozen
class Ping:
    """The event."""

    n: int


@attrs.frozen
class Acknowledged:
    """Terminal state of the ping workflow."""

    n: int


def ping_machine(stamp: Callable[[Context], None]) -> Machine | None:
    """A machine instance whose workflows step into `AwaitingPing` and finish when a `Ping`
    arrives; its event handler calls `stamp(ctx)` first thing. None while statemachine does not
    export `on_event` (events are not public yet)."""
    on_event: Any = getattr(statemachine, "on_event", None)
    if on_event is None:
        return None

    class PingFlow(Machine):
        """Wait for one event."""

        name = "bench_ping_flow"
        initial = Arrived
        terminal = (Acknowledged,)

        @step
        def wait(self, state: Arrived, ctx: Context) -> AwaitingPing:
            """Go and wait."""
            return AwaitingPing(n=state.n)

        @on_event  # type: ignore[untyped-decorator]  # on_event is looked up at run time
        def pinged(self, state: AwaitingPing, event: Ping, ctx: Context) -> Acknowledged:
            """The handler whose start is timed."""
            stamp(ctx)
            return Acknowledged(n=state.n)

    return PingFlow()
