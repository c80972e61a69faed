"""The parts of `statemachine.testing` that need no database: a handler called directly with a
built `Context`, the static checks of a machine's graph, and the strategies from attrs types."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import attrs
import pytest
from hypothesis import given, settings

from machines.order import (
    CardDeclined,
    Charged,
    FakePaymentGateway,
    Order,
    OrderPlaced,
    PaymentFailed,
    Shipped,
)
from statemachine import Context, Failure, Machine, on_event, on_timeout, step
from statemachine.errors import InvalidArgument
from statemachine.testing import (
    Coverage,
    FakeClock,
    call,
    closed_loops,
    context,
    states,
    strategy_for,
    unfinishable_states,
)
from tests.planted_bugs import Collected, Collecting, Collector, Item


def test_a_step_is_called_with_a_context_a_first_attempt_has() -> None:
    gateway = FakePaymentGateway(flaky=False)
    wid = uuid.uuid4()
    ctx = context(Order, OrderPlaced("o-1", 100), workflow_id=wid)
    assert (ctx.attempt, ctx.version, ctx.machine, ctx.state) == (1, 1, "order", "OrderPlaced")
    assert ctx.idempotency_key == f"{wid}:1"
    charged = call(Order(gateway), OrderPlaced("o-1", 100), ctx)
    assert charged == Charged("o-1", "ch_00001")
    assert gateway.charges == {f"{wid}:1": "ch_00001"}


def test_the_context_clock_is_fake_and_settable() -> None:
    when = datetime(2031, 5, 1, tzinfo=UTC)
    shipped = call(Order(), Charged("o-1", "ch_1"), context(Order, Charged, now=when))
    assert isinstance(shipped, Shipped)
    assert shipped.shipped_at == when
    clock = FakeClock(when)
    ctx = context(clock=clock)
    clock.advance(hours=1)
    assert ctx.now() == when + timedelta(hours=1)
    clock.advance(1.5)  # seconds
    clock.advance(timedelta(seconds=2))
    assert ctx.now() == when + timedelta(hours=1, seconds=3.5)
    for bad in ("1", True, -1.0):
        with pytest.raises(InvalidArgument, match="advance"):
            clock.advance(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="not both"):
        clock.advance(1, hours=1)
    assert ctx.now() == when + timedelta(hours=1, seconds=3.5)  # nothing moved


def test_an_error_route_an_event_and_a_timeout_are_called_by_name() -> None:
    failure = Failure(type="CardDeclined", message="declined", attempt=1, permanent=True)
    assert call(Order(), OrderPlaced("o-1", 1), failure=failure) == PaymentFailed(
        "o-1", "CardDeclined: declined")
    assert call(Collector(), Collecting((1, 2)), event=Item(3)) == Collected((1, 2, 3))
    assert call(Collector(), Collecting((1,)), timeout=True) == Collected((1,))


def test_what_a_handler_raises_propagates() -> None:
    with pytest.raises(CardDeclined):
        call(Order(FakePaymentGateway(flaky=False)), OrderPlaced("o-1", 1, card="0000"))


def test_a_call_that_cannot_be_made_says_why() -> None:
    with pytest.raises(InvalidArgument, match="Collecting does not accept OrderPlaced"):
        call(Collector(), Collecting(), event=OrderPlaced("o", 1))
    with pytest.raises(InvalidArgument, match="Collecting has no step handler: it is a waiting"):
        call(Collector(), Collecting())
    with pytest.raises(InvalidArgument, match="Item is not a state of machine collector"):
        call(Collector(), Item(1))
    with pytest.raises(InvalidArgument, match="has no error route"):
        call(Order(), Charged("o", "c"), failure=Failure("X", "x", 1, True))
    with pytest.raises(InvalidArgument, match="attempt=0"):
        context(attempt=0)


def test_cancel_and_lease_calls_reach_the_test() -> None:
    extended: list[float] = []
    ctx = context(extend_lease=extended.append, cancel_requested="ops: stop")
    ctx.extend_lease(60)
    assert extended == [60]
    assert ctx.cancel_requested == "ops: stop"
    assert isinstance(ctx, Context)


# -- the graph -----------------------------------------------------------------------------------


@attrs.frozen
class Idle:
    pass


@attrs.frozen
class Polling:
    n: int


@attrs.frozen
class Ping:
    pass


@attrs.frozen
class Pong:
    pass


@attrs.frozen
class Finished:
    pass


class Looping(Machine):
    """Polling can only loop (Ping <-> Pong too); Idle can finish."""

    name = "looping"
    initial = Idle
    terminal = (Finished,)

    @step
    def begin(self, state: Idle, ctx: Context) -> Polling | Ping | Finished:
        return Finished()

    @step
    def poll(self, state: Polling, ctx: Context) -> Polling:
        return state

    @step
    def ping(self, state: Ping, ctx: Context) -> Pong:
        return Pong()

    @on_event
    def pong(self, state: Pong, event: Idle, ctx: Context) -> Ping:
        return Ping()

    @on_timeout(after=60)
    def pong_late(self, state: Pong, ctx: Context) -> Ping:
        return Ping()


def test_states_that_cannot_finish_and_loops_are_found() -> None:
    assert unfinishable_states(Looping) == ["Ping", "Polling", "Pong"]
    assert closed_loops(Looping) == [["Ping", "Pong"], ["Polling"]]
    assert unfinishable_states(Order) == []
    assert closed_loops(Order) == []


def test_coverage_reports_what_was_never_taken() -> None:
    coverage = Coverage.of(Order)
    assert coverage.unreached == ["Charged", "Confirmed", "PaymentFailed", "Shipped"]
    assert len(coverage.untaken) == 4
    assert "order: 0/4 transitions taken, 1/5 states reached" in coverage.report()
    assert "never taken: OrderPlaced -> Charged (charge_card)" in coverage.report()


# -- strategies ----------------------------------------------------------------------------------


@given(strategy_for(OrderPlaced))
@settings(max_examples=30)
def test_states_are_drawn_from_their_field_types(placed: OrderPlaced) -> None:
    assert isinstance(placed.amount_cents, int)
    assert "\x00" not in placed.order_id  # PostgreSQL's JSON cannot hold it


@given(states(Order, fields={"Shipped.tracking": strategy_for(Idle).map(lambda _: "T"),
                              "order_id": strategy_for(Idle).map(lambda _: "fixed")})[Shipped])
@settings(max_examples=10)
def test_fields_are_overridden_by_name_and_by_class(shipped: Shipped) -> None:
    assert (shipped.tracking, shipped.order_id) == ("T", "fixed")
    assert shipped.shipped_at.tzinfo is not None  # aware, as the store keeps them


@given(strategy_for(Collecting))
@settings(max_examples=10)
def test_containers_are_drawn(collecting: Collecting) -> None:
    assert isinstance(collecting.items, tuple)
    assert all(isinstance(i, int) for i in collecting.items)
