"""The records the store reads and writes: claimed rows and changes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import attrs

__all__ = ["Change", "ChildStart", "ClaimedRow", "Committed"]



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
    # A stored value that does not decode (written by hand), e.g. "column data: not valid JSON:
    # ..."; `data` is None then. The engine parks the row with this as the reason.
    data_error: str | None = None


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


@attrs.frozen
class Committed:
    """What a successful commit wrote: the new version, and a pending cancellation request."""

    version: int
    cancel_requested: str | None


@attrs.frozen
class Change:
    """One engine-made change to a workflow row plus the history row that records it.

    The update only happens if the row still has `version` (and `lease_token`, and one of
    `expect_status`, when given); `store.sql.commit` returns what it wrote, or None if it did not.
    """

    workflow_id: uuid.UUID
    version: int
    kind: str
    from_state: str | None
    to_state: str
    data: Any
    status: str
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
    # Mark (text) or clear ("") the row's in-doubt flag; None leaves it.
    in_doubt: str | None = None

    @property
    def simple(self) -> bool:
        """True when the change is one row update plus its history row (the fast path)."""
        return not (self.consume_event or self.children or self.wake_parent
                    or self.cancel_children)


