"""Deciding what a handler's outcome does to its workflow: pure functions, no SQL, no threads.

The runtime runs a handler and hands the result (a state, or the exception it raised) to these
functions, which return the `Change` to write. Keeping them pure lets the rules be tested without a
database: retry or not, which error route, which status.
"""

from __future__ import annotations

import traceback as tb
from datetime import datetime
from typing import Any

from ._definition import Failure, MachineSpec, StepHandler, state_name
from ._store import Change, ClaimedRow
from .errors import DataError

__all__ = ["describe_failure", "failure_change", "park_change", "transition_change",
           "unexpected_state_error"]

MAX_TRACEBACK = 4000


def describe_failure(error: BaseException, attempt: int, permanent: bool) -> Failure:
    """A `Failure` for `error`, with a traceback bounded to the last few thousand characters."""
    trace = "".join(tb.format_exception(error))
    if len(trace) > MAX_TRACEBACK:
        trace = "...\n" + trace[-MAX_TRACEBACK:]
    return Failure(type=type(error).__name__, message=str(error), attempt=attempt,
                   traceback=trace, permanent=permanent)


def unexpected_state_error(
    handler_name: str, returned: object, allowed: tuple[type, ...]
) -> DataError | None:
    """The error for a handler that returned something its annotation does not declare."""
    if type(returned) in allowed:
        return None
    declared = " | ".join(state_name(t) for t in allowed) or "nothing"
    got = type(returned).__name__
    return DataError(f"handler {handler_name!r} returned {got}, which its return annotation does "
                     f"not declare (declared: {declared})")


def transition_change(
    row: ClaimedRow,
    spec: MachineSpec,
    to_state: str,
    data: object,
    *,
    terminal: bool,
    worker: str,
    started_at: datetime,
    continue_lease: float | None,
    kind: str = "transition",
    error: str | None = None,
) -> Change:
    """The change that moves `row` to its next state (finished if `terminal`)."""
    return Change(
        workflow_id=row.id, version=row.version, lease_token=row.lease_token, kind=kind,
        from_state=row.state, to_state=to_state, data=data,
        status="done" if terminal else "ready", attempt=row.attempt,
        wake_after=None if terminal else 0.0,
        keep_lease=None if terminal else continue_lease,
        error=error, worker=worker, started_at=started_at)


def failure_change(
    row: ClaimedRow, handler: StepHandler[Any], failure: Failure, *, worker: str,
    started_at: datetime,
) -> Change | None:
    """The change for a failed attempt that will be retried, or None when the step has failed for
    good (a permanent error, or retries exhausted): then the error route or parking applies."""
    if failure.permanent or row.attempt >= handler.retry.max_attempts:
        return None
    return Change(
        workflow_id=row.id, version=row.version, lease_token=row.lease_token,
        kind="failed_attempt", from_state=row.state, to_state=row.state, data=row.data,
        status="ready", attempt=row.attempt, wake_after=handler.retry.delay(row.attempt),
        new_state=False, error=_error_text(failure), worker=worker, started_at=started_at)


def park_change(
    row: ClaimedRow, reason: str, *, worker: str, started_at: datetime | None
) -> Change:
    """The change that parks `row` (status failed) for a human, keeping its state and data."""
    return Change(
        workflow_id=row.id, version=row.version, lease_token=row.lease_token, kind="parked",
        from_state=row.state, to_state=row.state, data=row.data, status="failed",
        attempt=row.attempt, wake_after=None, new_state=False, error=reason, worker=worker,
        started_at=started_at)


def _error_text(failure: Failure) -> str:
    head = f"attempt {failure.attempt}: {failure}"
    return f"{head}\n{failure.traceback}" if failure.traceback else head


def failure_text(failure: Failure) -> str:
    """How a failure is written to `last_error` and history: a headline, then the traceback."""
    return _error_text(failure)
