"""The changes an operator makes (retry, force), built in one place for `Client` and the bulk
commands, and who the operator is.

An operator's change is fenced like the engine's: its compare-and-set names the version the
operator saw (and, for a retry, the status ``failed``), so it applies once, or not at all when the
workflow moved on meanwhile. Its history row records the reason (``cause``) and the operator
(``worker``: for an operator's change it names the person or tool, `actor`).
"""

from __future__ import annotations

import getpass
import os
import uuid
from typing import Any

from ._records import Change

__all__ = ["default_actor", "force_change", "retry_change"]


def default_actor() -> str:
    """Who is acting, when nobody said: the OS user (``$USER`` when the system cannot tell)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"


def retry_change(*, workflow_id: uuid.UUID, version: int, state: str, data: Any, attempt: int,
                 reason: str | None, actor: str | None) -> Change:
    """Resume a parked workflow in its state: same transition (same idempotency key), fresh
    attempts, due now. Applies only while the row is still ``failed`` at `version`."""
    return Change(
        workflow_id=workflow_id, version=version, expect_status=("failed",), kind="retry",
        from_state=state, to_state=state, data=data, status="ready", attempt=attempt,
        wake_after=0.0, new_state=False, reset_attempts=True,
        cause=reason or "retry requested", clear_in_doubt=True, worker=actor)


def force_change(*, workflow_id: uuid.UUID, version: int, from_state: str, to_state: str,
                 data: Any, terminal: bool, parent_id: uuid.UUID | None, reason: str,
                 actor: str | None, expect_status: tuple[str, ...] = ()) -> Change:
    """Put a workflow in `to_state` (a new transition: a new idempotency key), due now, or
    ``done`` when the state is terminal. Applies only while the row is at `version`."""
    return Change(
        workflow_id=workflow_id, version=version, expect_status=expect_status, kind="forced",
        from_state=from_state, to_state=to_state, data=data,
        status="done" if terminal else "ready", attempt=0,
        wake_after=None if terminal else 0.0, cause=reason, new_state=True,
        wake_parent=parent_id if terminal else None, worker=actor)
