"""The records that cross layers: a claimed row, a change to commit, a child to start.

They import no database driver: the store fills and reads them, the decision module
(`_decide`) reasons about them, and neither needs the other to be imported. Statuses and history
kinds are `Literal` strings, so they go into SQL as they are and a typo is a type error.

Every kind of change the engine makes has one named constructor on `Change`
(`Change.transition`, `Change.failed_attempt`, `Change.parked`, ...); the plain constructor stays
for the store's own writes and for tests.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal, NamedTuple, get_args

import attrs

__all__ = [
    "FINISHED",
    "Change",
    "ChildCounts",
    "ChildStart",
    "ClaimedRow",
    "Committed",
    "HistoryKind",
    "Status",
]

Status = Literal["ready", "running", "waiting", "done", "failed", "cancelled"]
FINISHED: frozenset[Status] = frozenset(("done", "failed", "cancelled"))
STATUSES: tuple[Status, ...] = get_args(Status)

HistoryKind = Literal[
    "start",            # the workflow was inserted
    "transition",       # a handler returned the next state
    "finished",         # a terminal state found in a runnable row (an operator's) was finished
    "failed_attempt",   # a handler failed; it will be retried
    "rescheduled",      # a handler asked to retry later (RetryAfter); the attempt does not count
    "parked",           # failed for a human to look at (status failed)
    "in_doubt",         # an at-most-once attempt may or may not have taken effect
    "reconciled",       # the reconcile handler decided where an attempt in doubt went
    "rerun",            # reconciled: it did not take effect, run it again
    "polled",           # a polling step's condition did not hold yet (only with Poll(record=True))
    "error_route",      # the step failed for good and its error route chose the next state
    "cancel",           # cancelled (directly, or through the cancel route)
    "cancel_superseded",  # a cancel request found the workflow finished first (not carried out)
    "external_change",  # the row was changed outside the engine (an operator's UPDATE)
    "forced",           # Client.force / statemachine force
    "retry",            # an operator's retry of a parked workflow
]


@attrs.frozen
class ClaimedRow:
    """A workflow row this worker now holds a lease on."""

    id: uuid.UUID
    machine: str
    state: str
    data: Any
    version: int
    entered_version: int
    attempt: int
    lease_token: str
    previous_status: str
    # True when the current version was not written by the engine (an operator changed the row).
    external_change: bool
    parent_id: uuid.UUID | None = None
    # Who asked for cancellation and why, when it was asked and not yet carried out.
    cancel_requested: str | None = None
    # An at-most-once attempt that started and never finished (reconcile before anything else).
    in_doubt: str | None = None
    # Set by the store when a column could not be decoded ("column data: not valid JSON: ...");
    # the workflow is then parked with this text instead of run.
    data_error: str | None = None
    # The row's `wake_at` before this claim (when it came due, or its old lease ran out): the
    # worker's low-water mark for its next claim is derived from it (see `_claimmark`).
    due_at: datetime | None = None


@attrs.frozen
class ChildStart:
    """A child workflow to insert atomically with its parent's transition."""

    id: uuid.UUID
    machine: str
    state: str
    data: Any
    key: str | None = None
    # Queued children (under a max_running cap) wait with no wake-up until the parent lets them go.
    queued: bool = False


class ChildCounts(NamedTuple):
    """A parent's children by where they are."""

    finished: int
    active: int
    queued: int


@attrs.frozen
class Committed:
    """What a successful commit wrote: the new version, and a pending cancellation request."""

    version: int
    cancel_requested: str | None


@attrs.frozen
class Change:
    """One engine-made change to a workflow row plus the history row that records it.

    The update only happens if the row still has `version` (and `lease_token`, and one of
    `expect_status`, when given); the store's commit returns what it wrote, or None if it did not.
    """

    workflow_id: uuid.UUID
    version: int
    kind: HistoryKind
    from_state: str | None
    to_state: str
    data: Any
    status: Status
    attempt: int
    lease_token: str | None = None
    expect_status: tuple[str, ...] = ()
    # Seconds from now the row comes due (ready/waiting), None: no wake-up (finished rows).
    wake_after: float | None = None
    # Keep the lease and run the next state at once (sticky continuation).
    keep_lease: float | None = None
    # A new state was entered: reset the attempt counter and the idempotency base.
    new_state: bool = True
    # Give the transition a fresh set of attempts (an operator's retry).
    reset_attempts: bool = False
    # This attempt does not count (a `RetryAfter`): the attempt counter goes back by one.
    uncount_attempt: bool = False
    error: str | None = None
    cause: str | None = None
    worker: str | None = None
    started_at: datetime | None = None
    # An absolute wake-up time (a timer), instead of `wake_after`.
    wake_at: datetime | None = None
    # The event this transition consumes (atomically).
    consume_event: uuid.UUID | None = None
    # Child workflows started by this transition (atomically).
    children: tuple[ChildStart, ...] = ()
    # A parent to wake because this (child) workflow finished.
    wake_parent: uuid.UUID | None = None
    # The cancellation request was carried out by this change.
    clear_cancel: bool = False
    # Ask every unfinished child of this workflow to cancel, with this reason.
    cancel_children: str | None = None
    # Mark the row in doubt with this text (an at-most-once attempt that may have taken effect).
    mark_in_doubt: str | None = None
    # Clear the row's in-doubt mark (reconciled, or retried by an operator). A new state always
    # clears it.
    clear_in_doubt: bool = False
    # The workflow ends (done or cancelled) with events still pending: mark them rejected, with
    # why, so that none waits in the inbox for ever unseen (machines that accept events only).
    close_inbox: bool = False
    # A recorded poll: count it in `polls` (a new state resets the counter).
    count_poll: bool = False
    # This change finishes the workflow without carrying out a cancel request: one pending at
    # commit (asked for while the handler ran) is recorded in the same transaction as history
    # kind cancel_superseded (see `Change.cancel_superseded`).
    supersede_cancel: bool = False

    @property
    def simple(self) -> bool:
        """True when the change is one row update plus its history row (the fast path)."""
        return not (self.consume_event or self.children or self.wake_parent
                    or self.cancel_children or self.close_inbox or self.supersede_cancel)

    @property
    def simple_but_cancel(self) -> bool:
        """True when the change is simple but for recording a cancel request as superseded
        (which only matters when one is pending at commit)."""
        return not (self.consume_event or self.children or self.wake_parent
                    or self.cancel_children or self.close_inbox)

    @property
    def finishes(self) -> bool:
        """True when the workflow ends with this change (done, failed or cancelled)."""
        return self.status in FINISHED

    # -- one constructor per kind of change the engine makes -----------------------------------

    @classmethod
    def transition(
        cls, row: ClaimedRow, to_state: str, data: Any, *, terminal: bool, worker: str,
        started_at: datetime, keep_lease: float | None = None,
        kind: HistoryKind = "transition", error: str | None = None, **more: Any,
    ) -> Change:
        """Move `row` to its next state: done if `terminal`, else ready at once (or, with
        `keep_lease`, still held by this worker to run the next state now). `more`: any other
        field of the change (one construction, not a copy per field on the hot path)."""
        fields: dict[str, Any] = dict(
            workflow_id=row.id, version=row.version, lease_token=row.lease_token, kind=kind,
            from_state=row.state, to_state=to_state, data=data,
            status="done" if terminal else "ready", attempt=row.attempt,
            wake_after=None if terminal else 0.0, keep_lease=None if terminal else keep_lease,
            error=error, worker=worker, started_at=started_at)
        fields.update(more)
        return cls(**fields)

    @classmethod
    def finished(cls, row: ClaimedRow, *, worker: str, started_at: datetime) -> Change:
        """Finish a runnable row that holds a terminal state (an operator put it there)."""
        return cls.transition(row, row.state, row.data, terminal=True, worker=worker,
                              started_at=started_at, kind="finished")

    @classmethod
    def failed_attempt(
        cls, row: ClaimedRow, *, error: str, retry_after: float, worker: str,
        started_at: datetime,
    ) -> Change:
        """A failed attempt to be retried after `retry_after` seconds (same transition)."""
        return cls(
            workflow_id=row.id, version=row.version, lease_token=row.lease_token,
            kind="failed_attempt", from_state=row.state, to_state=row.state, data=row.data,
            status="ready", attempt=row.attempt, wake_after=retry_after, new_state=False,
            error=error, worker=worker, started_at=started_at)

    @classmethod
    def rescheduled(
        cls, row: ClaimedRow, *, after: float, error: str, worker: str, started_at: datetime,
    ) -> Change:
        """The handler asked to run again later (`RetryAfter`): this attempt does not count."""
        return cls(
            workflow_id=row.id, version=row.version, lease_token=row.lease_token,
            kind="rescheduled", from_state=row.state, to_state=row.state, data=row.data,
            status="ready", attempt=row.attempt, wake_after=after, new_state=False,
            uncount_attempt=True, error=error, worker=worker, started_at=started_at)

    @classmethod
    def polled(
        cls, row: ClaimedRow, *, after: float, worker: str, started_at: datetime,
    ) -> Change:
        """A polling step's condition did not hold yet (``Poll(record=True)``): poll again after
        `after` seconds, recorded in history; the next poll gets a fresh set of attempts."""
        return cls(
            workflow_id=row.id, version=row.version, lease_token=row.lease_token, kind="polled",
            from_state=row.state, to_state=row.state, data=row.data, status="ready",
            attempt=row.attempt, wake_after=after, new_state=False, reset_attempts=True,
            count_poll=True, worker=worker, started_at=started_at)

    @classmethod
    def parked(
        cls, row: ClaimedRow, reason: str, *, worker: str, started_at: datetime | None,
    ) -> Change:
        """Park `row` (status failed) for a human, keeping its state and data."""
        return cls(
            workflow_id=row.id, version=row.version, lease_token=row.lease_token, kind="parked",
            from_state=row.state, to_state=row.state, data=row.data, status="failed",
            attempt=row.attempt, wake_after=None, new_state=False, error=reason, worker=worker,
            started_at=started_at)

    @classmethod
    def parked_in_doubt(
        cls, row: ClaimedRow, doubt: str, reason: str, *, worker: str, started_at: datetime,
    ) -> Change:
        """Park an at-most-once attempt that may have taken effect (no reconcile handler)."""
        return attrs.evolve(cls.parked(row, reason, worker=worker, started_at=started_at),
                            kind="in_doubt", mark_in_doubt=doubt)

    @classmethod
    def in_doubt(
        cls, row: ClaimedRow, doubt: str, *, keep_lease: float, worker: str,
        started_at: datetime,
    ) -> Change:
        """Mark an at-most-once attempt in doubt, keeping the lease to reconcile it at once."""
        return cls(
            workflow_id=row.id, version=row.version, lease_token=row.lease_token,
            kind="in_doubt", from_state=row.state, to_state=row.state, data=row.data,
            status="ready", attempt=row.attempt, new_state=False, keep_lease=keep_lease,
            mark_in_doubt=doubt, error=doubt, worker=worker, started_at=started_at)

    @classmethod
    def rerun(
        cls, row: ClaimedRow, *, after: float, worker: str, started_at: datetime,
    ) -> Change:
        """Reconciled: the attempt in doubt did not take effect; run it again after `after`."""
        return cls(
            workflow_id=row.id, version=row.version, lease_token=row.lease_token, kind="rerun",
            from_state=row.state, to_state=row.state, data=row.data, status="ready",
            attempt=row.attempt, wake_after=after, new_state=False, clear_in_doubt=True,
            cause=f"reconcile: {row.in_doubt}", worker=worker, started_at=started_at)

    @classmethod
    def cancel_superseded(
        cls, finished: Change, version: int, reason: str, *, worker: str | None,
    ) -> Change:
        """Record that a cancel request (`reason`) arrived while the workflow was finishing:
        `finished` was committed first (at `version`), so the cancel is not carried out."""
        status = finished.status
        then = " (cancel it again to end it)" if status == "failed" else ""
        return cls(
            workflow_id=finished.workflow_id, version=version, kind="cancel_superseded",
            expect_status=(status,), from_state=finished.to_state, to_state=finished.to_state,
            data=finished.data, status=status, attempt=finished.attempt, wake_after=None,
            new_state=False, clear_cancel=True, worker=worker,
            cause=f"cancel requested ({reason}) but superseded: the workflow finished first "
                  f"({status}){then}")

    @classmethod
    def cancelled(
        cls, row: ClaimedRow, reason: str, *, worker: str, started_at: datetime,
    ) -> Change:
        """End the workflow `cancelled`, asking its children to cancel too."""
        return cls(
            workflow_id=row.id, version=row.version, lease_token=row.lease_token, kind="cancel",
            from_state=row.state, to_state=row.state, data=row.data, status="cancelled",
            attempt=row.attempt, new_state=False, cause=reason, worker=worker,
            started_at=started_at, clear_cancel=True, cancel_children=reason)
