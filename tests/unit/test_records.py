"""The records that cross layers (`statemachine._records`): one named constructor per kind of
change, each keeping what it must. No database."""

import uuid
from datetime import UTC, datetime
from typing import Any, get_args

import pytest

from statemachine._records import FINISHED, STATUSES, Change, ClaimedRow, HistoryKind, Status

STARTED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
DATA = {"order_id": "o1", "amount_cents": 100, "card": "4242"}


def claimed(attempt: int = 1, state: str = "OrderPlaced", data: Any = None,
            in_doubt: str | None = None) -> ClaimedRow:
    return ClaimedRow(
        id=uuid.UUID("7d1c6f7e-1b43-4f0a-9a54-3c2b1a0f9e8d"), machine="order", state=state,
        data=DATA if data is None else data, version=7, entered_version=5, attempt=attempt,
        lease_token="lease-abc", previous_status="ready", external_change=False,
        in_doubt=in_doubt)


def same_row(change: Change, row: ClaimedRow) -> None:
    assert (change.workflow_id, change.version, change.lease_token, change.attempt) == (
        row.id, row.version, row.lease_token, row.attempt)


def test_statuses_are_the_six_the_schema_allows() -> None:
    assert set(STATUSES) == {"ready", "running", "waiting", "done", "failed", "cancelled"}
    assert set(get_args(Status)) == set(STATUSES)
    assert {"done", "failed", "cancelled"} == FINISHED


def test_every_named_constructor_writes_a_declared_history_kind() -> None:
    kinds = set(get_args(HistoryKind))
    row = claimed(in_doubt="maybe")
    made = [
        Change.transition(row, "Charged", {}, terminal=False, worker="w", started_at=STARTED),
        Change.finished(row, worker="w", started_at=STARTED),
        Change.failed_attempt(row, error="e", retry_after=1.0, worker="w", started_at=STARTED),
        Change.rescheduled(row, after=1.0, error="e", worker="w", started_at=STARTED),
        Change.parked(row, "r", worker="w", started_at=STARTED),
        Change.parked_in_doubt(row, "d", "r", worker="w", started_at=STARTED),
        Change.in_doubt(row, "d", keep_lease=30.0, worker="w", started_at=STARTED),
        Change.rerun(row, after=1.0, worker="w", started_at=STARTED),
        Change.cancelled(row, "r", worker="w", started_at=STARTED),
    ]
    assert all(c.kind in kinds for c in made)
    for change in made:
        same_row(change, row)


def test_park_keeps_state_and_data_and_fails_the_workflow() -> None:
    row = claimed(5)
    change = Change.parked(row, "attempt 5: GatewayUnavailable: 503", worker="w1",
                           started_at=STARTED)
    assert (change.status, change.kind) == ("failed", "parked")
    assert (change.from_state, change.to_state, change.data) == ("OrderPlaced", "OrderPlaced",
                                                                 DATA)
    assert (change.wake_after, change.keep_lease, change.new_state) == (None, None, False)
    assert change.error == "attempt 5: GatewayUnavailable: 503"
    same_row(change, row)


def test_park_keeps_data_that_does_not_load() -> None:
    # Parking is what happens to a row whose data does not fit: it must be kept as it was.
    row = claimed(1, data={"order_id": "o1", "amount_cents": "ten"})
    change = Change.parked(row, "bad data", worker="w1", started_at=None)
    assert change.data == {"order_id": "o1", "amount_cents": "ten"}
    assert change.started_at is None


def test_transition_to_a_terminal_state_finishes_and_keeps_no_lease() -> None:
    row = claimed(2, state="Shipped")
    change = Change.transition(row, "Confirmed", {"order_id": "o1", "tracking": "T"},
                               terminal=True, worker="w1", started_at=STARTED, keep_lease=30.0)
    assert (change.status, change.wake_after, change.keep_lease) == ("done", None, None)
    assert (change.kind, change.from_state, change.to_state) == ("transition", "Shipped",
                                                                 "Confirmed")
    assert change.new_state is True
    # A cancel request pending now is recorded as superseded after the commit
    # (`_decide.superseded_cancel`): the commit leaves it for the store to report.
    assert change.clear_cancel is False
    assert change.error is None
    same_row(change, row)


@pytest.mark.parametrize("keep_lease", [30.0, None])
def test_transition_to_a_runnable_state_is_due_at_once(keep_lease: float | None) -> None:
    change = Change.transition(claimed(1), "Charged", {"order_id": "o1", "charge_id": "c1"},
                               terminal=False, worker="w1", started_at=STARTED,
                               keep_lease=keep_lease)
    assert (change.status, change.wake_after) == ("ready", 0.0)
    assert change.keep_lease == keep_lease  # sticky continuation when the worker offers it
    assert change.new_state is True
    assert change.clear_cancel is False


def test_failed_attempt_stays_in_the_same_transition() -> None:
    change = Change.failed_attempt(claimed(2), error="attempt 2: X: y", retry_after=4.0,
                                   worker="w1", started_at=STARTED)
    assert (change.kind, change.status, change.wake_after) == ("failed_attempt", "ready", 4.0)
    assert change.new_state is False  # keeps its attempts and idempotency key
    assert change.uncount_attempt is False


def test_rescheduled_attempt_does_not_count() -> None:
    change = Change.rescheduled(claimed(2), after=9.0, error="RetryAfter: 429", worker="w1",
                                started_at=STARTED)
    assert (change.kind, change.wake_after, change.uncount_attempt) == ("rescheduled", 9.0, True)


def test_in_doubt_mark_keeps_the_lease_and_marks_the_row() -> None:
    change = Change.in_doubt(claimed(1), "attempt 1 raised", keep_lease=30.0, worker="w1",
                             started_at=STARTED)
    assert (change.status, change.keep_lease, change.new_state) == ("ready", 30.0, False)
    assert (change.mark_in_doubt, change.clear_in_doubt) == ("attempt 1 raised", False)


def test_parked_in_doubt_marks_and_parks() -> None:
    change = Change.parked_in_doubt(claimed(1), "lost", "in doubt: lost", worker="w1",
                                    started_at=STARTED)
    assert (change.kind, change.status, change.mark_in_doubt) == ("in_doubt", "failed", "lost")


def test_rerun_clears_the_doubt_and_names_it_as_cause() -> None:
    change = Change.rerun(claimed(2, in_doubt="worker lost"), after=1.5, worker="w1",
                          started_at=STARTED)
    assert (change.kind, change.wake_after, change.new_state) == ("rerun", 1.5, False)
    assert (change.mark_in_doubt, change.clear_in_doubt) == (None, True)
    assert change.cause == "reconcile: worker lost"


def test_cancelled_asks_the_children_to_cancel_too() -> None:
    change = Change.cancelled(claimed(1), "by ops", worker="w1", started_at=STARTED)
    assert (change.kind, change.status, change.cause) == ("cancel", "cancelled", "by ops")
    assert (change.clear_cancel, change.cancel_children) == (True, "by ops")
    assert change.finishes


def test_a_simple_change_is_one_row_and_its_history() -> None:
    plain = Change.parked(claimed(), "r", worker="w", started_at=STARTED)
    assert plain.simple
    assert not Change.cancelled(claimed(), "r", worker="w", started_at=STARTED).simple
