"""The examples of docs/how-to/property-testing.md, run as the guide says (the guide quotes this
file verbatim; tests/acceptance/test_docs.py checks that it still does)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable

import attrs
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from statemachine import Context, Machine, RetryPolicy, step
from statemachine.testing import (
    CrashPoint,
    Exploration,
    Harness,
    call,
    closed_loops,
    context,
    explore,
    unfinishable_states,
)

# -- the machine under test, and its fake of the outside world ------------------------------------


class FakeBank:
    """Refunds deduplicated by idempotency key, as a real payment API does."""

    def __init__(self) -> None:
        self.by_key: dict[str, uuid.UUID] = {}

    def refund(self, workflow_id: uuid.UUID, amount: int, key: str) -> str:
        self.by_key.setdefault(key, workflow_id)
        return f"re_{len(self.by_key)}"

    def refunds_of(self, workflow_id: uuid.UUID) -> int:
        return Counter(self.by_key.values())[workflow_id]


@attrs.frozen
class RefundRequested:
    order_id: str
    amount: int


@attrs.frozen
class Refunded:
    order_id: str
    refund_id: str


@attrs.frozen
class RefundRejected:
    order_id: str


class Refunds(Machine):
    name = "refunds"
    initial = RefundRequested
    terminal = (Refunded, RefundRejected)

    def __init__(self, bank: FakeBank) -> None:
        self.bank = bank

    @step(retry=RetryPolicy(max_attempts=3))
    def refund(self, state: RefundRequested, ctx: Context) -> Refunded | RefundRejected:
        if state.amount <= 0:
            return RefundRejected(state.order_id)
        refund_id = self.bank.refund(ctx.workflow_id, state.amount, key=ctx.idempotency_key)
        return Refunded(state.order_id, refund_id)


# -- one handler, called directly -----------------------------------------------------------------


def test_refund_calls_the_bank_with_the_idempotency_key() -> None:
    bank = FakeBank()
    ctx = context(Refunds, RefundRequested)
    assert call(Refunds(bank), RefundRequested("o-1", 500), ctx) == Refunded("o-1", "re_1")
    assert bank.by_key == {ctx.idempotency_key: ctx.workflow_id}


# -- the real engine, step by step, with a crash ---------------------------------------------------


def test_a_crash_after_the_refund_does_not_refund_twice() -> None:
    bank = FakeBank()
    with Harness([Refunds(bank)]) as harness:
        wid = harness.start(RefundRequested("o-1", 500))
        crashed = harness.step(crash=CrashPoint.AFTER_EFFECT)
        assert crashed.crashed is CrashPoint.AFTER_EFFECT  # refunded, not committed
        harness.run_until_idle()  # the lease runs out, another worker takes over
        assert harness.state(wid) == Refunded("o-1", "re_1")
        assert bank.refunds_of(wid) == 1


# -- the same with the pytest plugin's fixture -----------------------------------------------------


def test_with_the_plugin_fixture(sm_harness: Callable[..., Harness]) -> None:
    harness = sm_harness([Refunds(FakeBank())])
    wid = harness.start(RefundRequested("o-2", 0))
    assert harness.run_until_idle().idle
    assert harness.state(wid) == RefundRejected("o-2")


# -- exploration -----------------------------------------------------------------------------------


def refunded_at_most_once(ex: Exploration) -> None:
    for wid in ex.workflows:
        assert ex.machine.bank.refunds_of(wid) <= 1, f"workflow {wid} refunded twice"


TestRefunds = explore(
    lambda: Refunds(FakeBank()),
    fields={"amount": st.integers(-10, 10_000)},
    invariants=[refunded_at_most_once],
    force=False,  # a forced RefundRequested is a new refund: not what this invariant says
).TestCase
TestRefunds.settings = settings(max_examples=30, stateful_step_count=10, deadline=None)


def test_every_state_can_finish_and_none_only_loops() -> None:
    assert unfinishable_states(Refunds) == []
    assert closed_loops(Refunds) == []


def test_the_exploration_covers_every_transition() -> None:
    exploring = explore(lambda: Refunds(FakeBank()), fields={"amount": st.integers(-10, 10)})
    run_state_machine_as_test(exploring, settings=settings(max_examples=20, deadline=None))
    exploring.close()
    print(exploring.coverage.report())  # "refunds: 2/2 transitions taken, 3/3 states reached"
    assert exploring.coverage.untaken == []
