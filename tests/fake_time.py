"""Running a workflow to its end on a `FakeClock`: whenever it sleeps (a timer, a retry's
backoff, the next poll of a polling step), move the clock to its wake-up; never sleep for real.

    info = run_to_end(client, clock, wid)
"""

from __future__ import annotations

import uuid

from statemachine import Client, WorkflowInfo
from statemachine.testing import FakeClock
from tests.waits import wait_until


def _mark(info: WorkflowInfo) -> tuple[object, ...]:
    return info.status, info.version, info.wake_at, info.updated_at


def run_to_end(client: Client, clock: FakeClock, workflow_id: uuid.UUID, *,
               max_wakes: int = 500) -> WorkflowInfo:
    """Move `clock` to each wake-up of the workflow until it finishes; returns it finished."""
    for _ in range(max_wakes):
        info = client.get(workflow_id)
        if info.finished:
            return info
        if info.status in ("ready", "waiting") and info.wake_at is not None \
                and info.wake_at > clock.now():
            clock.set(info.wake_at)
        before = _mark(info)
        wait_until(lambda before=before: _mark(client.get(workflow_id)) != before,
                   f"workflow {workflow_id} to move on from {info.state_name} ({info.status})",
                   describe=lambda: client.get(workflow_id))
    raise AssertionError(f"workflow {workflow_id} did not finish after {max_wakes} wake-ups")
