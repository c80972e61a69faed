"""What a handler's context refuses, and what `ctx.start_child` checks before anything is
written. No database: the context is built from a hand-made row."""

import logging
import uuid
from typing import Any

import pytest

from machines.order import Charged, Order, OrderPlaced
from statemachine import Context, DataError, InvalidOperation
from statemachine._context import Services, child_starter, context_for
from statemachine._records import ChildStart, ClaimedRow
from statemachine._serde import Codecs
from statemachine.errors import InvalidArgument
from statemachine.testing import FakeClock

ROW = ClaimedRow(id=uuid.UUID("7d1c6f7e-1b43-4f0a-9a54-3c2b1a0f9e8d"), machine="order",
                 state="OrderPlaced", data={}, version=7, entered_version=5, attempt=2,
                 lease_token="t", previous_status="ready", external_change=False)


def context(**services: Any) -> Context:
    return context_for(ROW, Services(worker="w1", clock=FakeClock(), extend=lambda s: None,
                                     **services))


def test_the_context_describes_the_attempt() -> None:
    ctx = context()
    assert (ctx.workflow_id, ctx.machine, ctx.state, ctx.attempt, ctx.version, ctx.worker) == (
        ROW.id, "order", "OrderPlaced", 2, 7, "w1")
    # Same for every retry of this transition: the version it was entered at.
    assert ctx.idempotency_key == f"{ROW.id}:5"
    assert isinstance(ctx.log, logging.LoggerAdapter)


def test_children_cannot_be_started_outside_a_worker() -> None:
    with pytest.raises(InvalidOperation, match="children can only be started") as info:
        context().start_child(Order, OrderPlaced(order_id="o", amount_cents=1))
    assert info.value.workflow_id == ROW.id


def test_the_connection_of_a_handler_that_is_not_transactional_is_refused() -> None:
    with pytest.raises(InvalidOperation, match="not transactional"):
        _ = context().connection


def test_a_child_is_collected_to_start_with_the_transition() -> None:
    children: list[ChildStart] = []
    ctx = context(start_child=child_starter(Codecs(), ROW, children))
    child_id = ctx.start_child(Order, OrderPlaced(order_id="o", amount_cents=1), key="k")
    assert [(c.id, c.machine, c.state, c.key) for c in children] == [
        (child_id, "order", "OrderPlaced", "k")]


def test_a_child_must_start_in_its_machines_initial_state() -> None:
    children: list[ChildStart] = []
    ctx = context(start_child=child_starter(Codecs(), ROW, children))
    with pytest.raises(InvalidArgument, match="starts in OrderPlaced, not Charged"):
        ctx.start_child(Order, Charged(order_id="o", charge_id="c"))
    assert children == []


def test_a_child_state_with_a_mistyped_field_is_refused_at_the_call() -> None:
    children: list[ChildStart] = []
    ctx = context(start_child=child_starter(Codecs(), ROW, children))
    with pytest.raises(DataError, match=r"expected int, got 'ten' @ data\.amount_cents"):
        ctx.start_child(Order, OrderPlaced(order_id="o", amount_cents="ten"))  # type: ignore[arg-type]
    assert children == []
