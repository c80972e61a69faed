"""Deciding what a handler's outcome does to its workflow (`statemachine._outcome`): retry, park or
move on. Pure functions on `ClaimedRow` objects built by hand; no database."""

import traceback
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

import attrs
import pytest

from machines.order import (
    CardDeclined,
    Charged,
    Confirmed,
    GatewayUnavailable,
    Order,
    OrderPlaced,
    PaymentFailed,
    Shipped,
)
from statemachine import DataError, Failure, PermanentError, RetryPolicy
from statemachine._definition import StepHandler
from statemachine._outcome import (
    MAX_TRACEBACK,
    describe_failure,
    failure_change,
    park_change,
    transition_change,
    unexpected_state_error,
)
from statemachine._store import ClaimedRow

STARTED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
CHARGE = Order.spec.steps[OrderPlaced]  # max_attempts=5, initial_delay=0.2, max_delay=2.0
DATA = {"order_id": "o1", "amount_cents": 100, "card": "4242"}


def claimed(attempt: int = 1, state: str = "OrderPlaced", data: Any = None) -> ClaimedRow:
    return ClaimedRow(
        id=uuid.UUID("7d1c6f7e-1b43-4f0a-9a54-3c2b1a0f9e8d"), machine="order", state=state,
        data=DATA if data is None else data, version=7, entered_version=5, attempt=attempt,
        lease_token="lease-abc", previous_status="ready", external_change=False)


def raised(error: BaseException) -> BaseException:
    """`error` with a traceback, as a handler's exception has one."""
    try:
        raise error
    except BaseException as e:
        return e


def failure_of(error: BaseException, attempt: int, policy: RetryPolicy = CHARGE.retry) -> Failure:
    """The failure as the runtime describes it (permanence decided by the handler's policy)."""
    return describe_failure(raised(error), attempt, policy.is_permanent(error))


# --- failure_change: retry or not ---------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 3, 4])
def test_transient_failure_is_retried_while_attempts_remain(attempt: int) -> None:
    row = claimed(attempt)
    failure = failure_of(GatewayUnavailable("payment gateway returned 503"), attempt)
    change = failure_change(row, CHARGE, failure, worker="w1", started_at=STARTED)
    assert change is not None
    assert change.status == "ready"
    assert change.kind == "failed_attempt"
    assert change.new_state is False  # same transition: keeps its attempts and idempotency key
    assert (change.from_state, change.to_state, change.data) == ("OrderPlaced", "OrderPlaced",
                                                                 DATA)
    assert (change.workflow_id, change.version, change.lease_token) == (
        row.id, 7, "lease-abc")
    assert change.attempt == attempt
    assert (change.worker, change.started_at) == ("w1", STARTED)
    assert change.keep_lease is None
    base = min(2.0, 0.2 * 2 ** (attempt - 1))
    assert change.wake_after is not None
    assert base * (1 - CHARGE.retry.jitter) <= change.wake_after <= base
    assert change.error is not None
    assert f"attempt {attempt}" in change.error
    assert "GatewayUnavailable: payment gateway returned 503" in change.error
    assert "Traceback" in change.error


@pytest.mark.parametrize("attempt", [5, 6])
def test_no_retry_once_attempts_are_exhausted(attempt: int) -> None:
    failure = failure_of(GatewayUnavailable("503"), attempt)
    assert failure_change(claimed(attempt), CHARGE, failure, worker="w1",
                          started_at=STARTED) is None


@pytest.mark.parametrize("error", [CardDeclined("card ending 0000 declined"),
                                   PermanentError("no")], ids=repr)
def test_no_retry_for_a_permanent_error(error: Exception) -> None:
    failure = failure_of(error, 1)
    assert failure.permanent
    assert failure_change(claimed(1), CHARGE, failure, worker="w1", started_at=STARTED) is None


def test_permanent_types_of_the_policy_are_not_retried() -> None:
    policy = RetryPolicy(max_attempts=10, permanent=(KeyError,))
    handler = StepHandler(CHARGE.fn, policy)
    assert failure_change(claimed(1), handler, failure_of(KeyError("k"), 1, policy),
                          worker="w1", started_at=STARTED) is None
    assert failure_change(claimed(1), handler, failure_of(ValueError("v"), 1, policy),
                          worker="w1", started_at=STARTED) is not None


def test_single_attempt_policy_never_retries() -> None:
    handler = StepHandler(CHARGE.fn, RetryPolicy(max_attempts=1))
    assert failure_change(claimed(1), handler, failure_of(ValueError("v"), 1),
                          worker="w1", started_at=STARTED) is None


# --- park_change --------------------------------------------------------------------------------


def test_park_keeps_state_and_data_and_fails_the_workflow() -> None:
    row = claimed(5)
    change = park_change(row, "attempt 5: GatewayUnavailable: 503", worker="w1",
                         started_at=STARTED)
    assert change.status == "failed"
    assert change.kind == "parked"
    assert (change.from_state, change.to_state, change.data) == ("OrderPlaced", "OrderPlaced",
                                                                 DATA)
    assert change.wake_after is None
    assert change.keep_lease is None
    assert change.new_state is False
    assert change.error == "attempt 5: GatewayUnavailable: 503"
    assert (change.workflow_id, change.version, change.lease_token, change.attempt) == (
        row.id, 7, "lease-abc", 5)


def test_park_keeps_data_that_does_not_load() -> None:
    # Parking is what happens to a row whose data does not fit: it must be kept as it was.
    row = claimed(1, data={"order_id": "o1", "amount_cents": "ten"})
    change = park_change(row, "bad data", worker="w1", started_at=None)
    assert change.data == {"order_id": "o1", "amount_cents": "ten"}
    assert change.started_at is None


# --- transition_change --------------------------------------------------------------------------


def test_transition_to_a_terminal_state_finishes() -> None:
    row = claimed(2, state="Shipped")
    change = transition_change(row, Order.spec, "Confirmed", {"order_id": "o1", "tracking": "T"},
                               terminal=True, worker="w1", started_at=STARTED,
                               continue_lease=30.0)
    assert change.status == "done"
    assert change.wake_after is None
    assert change.keep_lease is None  # nothing to continue with
    assert change.kind == "transition"
    assert (change.from_state, change.to_state) == ("Shipped", "Confirmed")
    assert change.data == {"order_id": "o1", "tracking": "T"}
    assert change.new_state is True
    assert change.error is None
    assert (change.workflow_id, change.version, change.lease_token, change.attempt) == (
        row.id, 7, "lease-abc", 2)


@pytest.mark.parametrize("continue_lease", [30.0, None])
def test_transition_to_a_runnable_state(continue_lease: float | None) -> None:
    change = transition_change(claimed(1), Order.spec, "Charged",
                               {"order_id": "o1", "charge_id": "c1"}, terminal=False,
                               worker="w1", started_at=STARTED, continue_lease=continue_lease)
    assert change.status == "ready"
    assert change.wake_after == 0.0  # due at once
    assert change.keep_lease == continue_lease  # sticky continuation when the worker offers it
    assert change.new_state is True
    assert (change.from_state, change.to_state) == ("OrderPlaced", "Charged")


def test_error_route_transition_records_the_error() -> None:
    change = transition_change(claimed(5), Order.spec, "PaymentFailed",
                               {"order_id": "o1", "reason": "declined"}, terminal=True,
                               worker="w1", started_at=STARTED, continue_lease=None,
                               kind="error_route", error="attempt 5: CardDeclined: declined")
    assert change.kind == "error_route"
    assert change.error == "attempt 5: CardDeclined: declined"
    assert change.status == "done"


# --- unexpected_state_error ---------------------------------------------------------------------


def test_declared_state_is_expected() -> None:
    assert unexpected_state_error("charge_card", Charged(order_id="o1", charge_id="c"),
                                  (Charged,)) is None
    assert unexpected_state_error(
        "payment_failed", PaymentFailed(order_id="o1", reason="r"),
        (Charged, PaymentFailed)) is None


@pytest.mark.parametrize(
    "returned", [Confirmed(order_id="o1", tracking="T"), None, "Charged"], ids=repr)
def test_undeclared_return_names_handler_and_declared_states(returned: object) -> None:
    error = unexpected_state_error("ship", returned, (Shipped, PaymentFailed))
    assert isinstance(error, DataError)
    text = str(error)
    assert "'ship'" in text
    assert type(returned).__name__ in text
    assert "Shipped | PaymentFailed" in text


def test_subclass_of_a_declared_state_is_not_declared() -> None:
    @attrs.frozen
    class SpecialCharged(Charged):
        pass

    assert unexpected_state_error("charge_card", SpecialCharged(order_id="o1", charge_id="c"),
                                  (Charged,)) is not None


def test_declared_states_are_named_by_their_stored_names() -> None:
    @attrs.frozen
    class Settled:
        __state_name__: ClassVar[str] = "Paid"

    error = unexpected_state_error("settle", Confirmed(order_id="o1", tracking="T"), (Settled,))
    assert error is not None
    assert "declared: Paid" in str(error)


def test_handler_declaring_nothing() -> None:
    error = unexpected_state_error("noop", Confirmed(order_id="o1", tracking="T"), ())
    assert error is not None
    assert "declared: nothing" in str(error)


# --- describe_failure ---------------------------------------------------------------------------


def test_describe_failure_keeps_type_message_and_traceback() -> None:
    def charge() -> None:
        raise GatewayUnavailable("payment gateway returned 503")

    try:
        charge()
    except GatewayUnavailable as e:
        failure = describe_failure(e, 3, permanent=False)
    assert (failure.type, failure.message, failure.attempt, failure.permanent) == (
        "GatewayUnavailable", "payment gateway returned 503", 3, False)
    assert failure.traceback.startswith("Traceback (most recent call last)")
    assert "in charge" in failure.traceback
    assert failure.traceback.rstrip().endswith(
        "GatewayUnavailable: payment gateway returned 503")
    assert str(failure) == "GatewayUnavailable: payment gateway returned 503"


def test_describe_failure_bounds_a_long_traceback_keeping_its_end() -> None:
    def fetch() -> None:
        raise ValueError("cause " + "x" * 6000)

    def charge() -> None:
        try:
            fetch()
        except ValueError as e:
            raise GatewayUnavailable("payment gateway returned 503") from e

    try:
        charge()
    except GatewayUnavailable as e:
        error = e
    full = "".join(traceback.format_exception(error))
    assert len(full) > MAX_TRACEBACK  # the case under test
    failure = describe_failure(error, 1, permanent=True)
    assert len(failure.traceback) <= MAX_TRACEBACK + len("...\n")
    assert failure.traceback.startswith("...")
    # The end is kept: what was raised last, and where.
    assert failure.traceback == "...\n" + full[-MAX_TRACEBACK:]
    assert failure.traceback.rstrip().endswith("GatewayUnavailable: payment gateway returned 503")
    assert "in charge" in failure.traceback
    assert failure.permanent


def test_describe_failure_bounds_a_huge_message() -> None:
    failure = describe_failure(raised(ValueError("y" * 50_000)), 1, permanent=False)
    assert len(failure.traceback) <= MAX_TRACEBACK + len("...\n")
    assert failure.message == "y" * 50_000  # the message itself is the handler's; kept whole
