"""`explore(machine)`: a hypothesis `RuleBasedStateMachine` that runs a machine on the real
engine (a `Harness`) under random starts, steps, failures, crashes, events, cancels, forced
states and clock jumps, checking the engine's invariants and the user's after every rule.

    Exploring = explore(lambda: Order(FakePaymentGateway()), invariants=[at_most_one_charge])
    TestOrder = Exploring.TestCase

One migrated database serves every example of a test (rows are deleted between examples), so
an example costs milliseconds, not a new file and a migration.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from .._definition import Machine
from .._store import Store
from ..errors import DataError, InvalidArgument, InvalidOperation
from ._checks import EngineInvariants
from ._graph import Coverage
from ._harness import FAILURES, CrashPoint, Failing, Harness
from ._strategies import Classes, Fields, events, strategy_for

__all__ = ["Exploration", "explore"]

# Clock jumps the `advance` rule takes (seconds): a retry's backoff, a minute, an hour, a day,
# a month: enough to cross every timer and deadline a machine declares, with a few examples.
JUMPS = (0.5, 5.0, 60.0, 3600.0, 86400.0, 30 * 86400.0)


class _NoStateAcceptsThis:
    """An event class no machine declares: sending it must be refused (`DataError`)."""


class Exploration(RuleBasedStateMachine):
    """The base of what `explore` returns. In invariants: `machine` is this example's machine
    instance (with its fakes), `harness` the engine running it, `workflows` the ids started, and
    `trace` the rules run so far (readable lines)."""

    make_machine: ClassVar[Callable[[], Machine]]
    user_invariants: ClassVar[Sequence[Callable[[Exploration], None]]] = ()
    store_factory: ClassVar[Callable[[], Store] | None] = None
    lease: ClassVar[float] = 30.0
    max_workflows: ClassVar[int] = 3
    idle_steps: ClassVar[int] = 50
    # Shared by every example of the class (made on first use).
    _harness: ClassVar[Harness | None] = None
    #: Coverage over every example run so far.
    coverage: ClassVar[Coverage]
    #: The rules of the latest example (after a failure: of the shrunk counter-example).
    last_trace: ClassVar[list[str]] = []

    def __init__(self) -> None:
        super().__init__()
        self.machine = type(self).make_machine()
        cls = type(self)
        if cls._harness is None:
            store = cls.store_factory() if cls.store_factory is not None else None
            cls._harness = Harness([self.machine], store=store, lease=cls.lease)
            atexit.register(cls.close)  # run by `.TestCase`, nobody else closes it
        else:
            cls._harness.reset(machines=[self.machine])
        self.harness: Harness = cls._harness
        self.checks = EngineInvariants(self.harness)
        self.workflows: list[Any] = []
        self.trace: list[str] = []

    @classmethod
    def close(cls) -> None:
        """Close the database shared by the examples (pytest's plugin does it for you)."""
        if cls._harness is not None:
            cls._harness.close()
            if cls.store_factory is not None:
                cls._harness.store.dispose()  # made for these examples, by the factory
            cls._harness = None

    def pick(self, index: int) -> Any:
        """The workflow `index` chooses (modulo the number started)."""
        return self.workflows[index % len(self.workflows)]

    def _note(self, line: str) -> None:
        self.trace.append(line)

    def teardown(self) -> None:
        cls = type(self)
        cls.coverage.record(self.harness.changes)
        cls.last_trace = list(self.trace)


def explore(
    machine: Callable[[], Machine] | type[Machine],
    *,
    initial: st.SearchStrategy[Any] | None = None,
    fields: Fields | None = None,
    classes: Classes | None = None,
    invariants: Iterable[Callable[[Exploration], None]] = (),
    store: Callable[[], Store] | None = None,
    max_workflows: int = 3,
    lease: float = 30.0,
    failures: bool = True,
    crashes: bool = True,
    force: bool = True,
    send_events: bool = True,
) -> type[Exploration]:
    """A `RuleBasedStateMachine` class exploring `machine` (a machine class, or a function
    returning a fresh instance with fresh fakes, called once per example). Run it with
    ``TestX = explore(...).TestCase`` or ``hypothesis.stateful.run_state_machine_as_test``.

    Rules: start a workflow (one at the start of every example), its initial state drawn from
    `initial`, else from the initial class's field types with `fields`/`classes` overrides;
    step; step with the handler failing (transient, permanent, `RetryAfter`); step crashing
    before the handler or after it (at the `CrashPoint` its kind has); run until idle;
    send any event the machine declares (and one no state accepts, which must be refused), cancel,
    force any state, and advance the clock. `failures`, `crashes`, `force` and `send_events`
    turn groups of rules off. After every rule: `EngineInvariants` and each of `invariants`
    (functions of the `Exploration`, raising AssertionError). `store`: a function returning a
    migrated store with a `FakeClock` (default: a temporary SQLite file)."""
    if max_workflows < 1:
        raise InvalidArgument(f"explore(max_workflows={max_workflows}): at least 1")
    factory: Callable[[], Machine] = machine
    spec = type(factory()).spec
    start_with = initial if initial is not None else strategy_for(spec.initial, fields=fields,
                                                                  classes=classes)
    event_strategies = list(events(type(factory()), fields=fields, classes=classes).values())
    state_strategies = [strategy_for(c, fields=fields, classes=classes)
                        for c in spec.states.values()]
    workflow = st.integers(0, 1000)
    has = precondition(lambda self: bool(self.workflows))

    body: dict[str, Any] = {
        "make_machine": staticmethod(factory), "user_invariants": tuple(invariants),
        "store_factory": staticmethod(store) if store is not None else None,
        "lease": lease, "max_workflows": max_workflows, "coverage": Coverage.of(type(factory())),
        "last_trace": [], "_harness": None,
    }

    # Every example starts with one workflow; the `start` rule adds more.
    @initialize(state=start_with)
    def first(self: Exploration, state: Any) -> None:
        self.workflows.append(self.harness.start(state))
        self._note(f"start({state!r})")

    @precondition(lambda self: len(self.workflows) < self.max_workflows)
    @rule(state=start_with)
    def start(self: Exploration, state: Any) -> None:
        self.workflows.append(self.harness.start(state))
        self._note(f"start({state!r})")

    @rule()
    def step(self: Exploration) -> None:
        done = self.harness.step()
        self._note(f"step() -> {done.state or 'nothing due'}")

    @rule()
    def run_until_idle(self: Exploration) -> None:
        run = self.harness.run_until_idle(max_steps=self.idle_steps)
        self._note(f"run_until_idle() -> {run.steps} steps")

    @rule(seconds=st.sampled_from(JUMPS))
    def advance(self: Exploration, seconds: float) -> None:
        self.harness.advance(seconds=seconds)
        self._note(f"advance(seconds={seconds:g})")

    body.update(first=first, start=start, step=step, run_until_idle=run_until_idle, advance=advance)

    # One rule per failure and per crash point (not one rule drawing which): a defect that
    # needs one precise fault is then found in far fewer examples.
    if failures:
        for kind in FAILURES:
            body[f"fail_{kind}"] = _failing_rule(kind)

    if crashes:
        body["crash_before_handler"] = _crashing_rule(CrashPoint.BEFORE_HANDLER)
        body["crash_after_handler"] = _crashing_rule(CrashPoint.AFTER_HANDLER)

    if send_events:
        @has
        @rule(index=workflow, event=st.one_of(*event_strategies) if event_strategies
              else st.nothing())
        def send(self: Exploration, index: int, event: Any) -> None:
            wid = self.pick(index)
            self._note(f"send(workflow {self.workflows.index(wid)}, {event!r})")
            _send(self.harness, wid, event)

        @has
        @rule(index=workflow)
        def send_unknown_event(self: Exploration, index: int) -> None:
            wid = self.pick(index)
            self._note(f"send(workflow {self.workflows.index(wid)}, an event no state accepts)")
            if self.harness.get(wid).finished:
                return
            try:
                self.harness.send(wid, _NoStateAcceptsThis())
            except DataError:
                return
            raise AssertionError("an event no state accepts was not refused")

        if event_strategies:
            body["send"] = send
        body["send_unknown_event"] = send_unknown_event

    @has
    @rule(index=workflow)
    def cancel(self: Exploration, index: int) -> None:
        wid = self.pick(index)
        self._note(f"cancel(workflow {self.workflows.index(wid)})")
        try:
            self.harness.cancel(wid)
        except InvalidOperation:
            if not self.harness.get(wid).finished:
                raise

    body["cancel"] = cancel

    if force:
        @has
        @rule(index=workflow, state=st.one_of(*state_strategies))
        def force_state(self: Exploration, index: int, state: Any) -> None:
            wid = self.pick(index)
            self._note(f"force(workflow {self.workflows.index(wid)}, {state!r})")
            self.harness.force(wid, state)

        body["force_state"] = force_state

    @invariant()
    def engine_invariants(self: Exploration) -> None:
        self.checks.check()
        for check in self.user_invariants:
            check(self)

    body["engine_invariants"] = engine_invariants
    return type(f"Explore{type(factory()).__name__}", (Exploration,), body)


def _failing_rule(kind: Failing) -> Callable[[Exploration], None]:
    @rule()
    def fail(self: Exploration) -> None:
        done = self.harness.step(fail=kind)
        self._note(f"step(fail={kind!r}) -> {done.state or 'nothing due'}"
                   f"{'' if done.failed else ' (no handler ran)'}")

    return fail


def _crashing_rule(point: CrashPoint) -> Callable[[Exploration], None]:
    @rule()
    def crash(self: Exploration) -> None:
        done = self.harness.step(crash=point)
        crashed = f" (crashed {done.crashed.name})" if done.crashed else " (no handler ran)"
        self._note(f"step(crash={point.name}) -> {done.state or 'nothing due'}{crashed}")

    return crash


def _send(harness: Harness, wid: Any, event: object) -> None:
    """Send, accepting the refusal a finished workflow gives."""
    try:
        harness.send(wid, event)
    except InvalidOperation:
        if not harness.get(wid).finished:
            raise
