"""What `statemachine stats` reports: counts, the oldest due row, and the rows that look stuck.

Each figure is one grouped query (no row is read into Python to be counted). "Stuck" is measured
against the store's clock (the server's ``now()`` on servers), with a tolerance `overdue` so that
a row a worker is about to claim is not reported:

* running with an expired lease: ``status='running' AND wake_at < now - overdue`` (its worker died
  or stalled; any worker takes it over once it polls);
* ready and overdue: ``status='ready' AND wake_at < now - overdue`` (no worker of its machine is
  running, or the workers are saturated);
* waiting past a deadline: ``status='waiting' AND wake_at < now - overdue`` (its timeout should
  have fired);
* orphaned events: pending events of workflows that finished (``done`` or ``cancelled``): no state
  will consume them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs
from sqlalchemy import Text, cast, func, select

from .._schema import events, workflows

if TYPE_CHECKING:
    from . import Store

__all__ = ["Stats", "Stuck", "stats"]

w = workflows


@attrs.frozen
class Stuck:
    """`count` rows of `machine` are stuck in one way (`kind`); `oldest` is the earliest
    `wake_at` among them, `example` the id of one."""

    kind: str
    machine: str
    count: int
    oldest: datetime | None
    example: str


@attrs.frozen
class Stats:
    """The figures of `statemachine stats`."""

    now: datetime
    counts: list[tuple[str, str, str, int]]  # machine, state, status, count
    oldest_due: datetime | None
    oldest_due_id: str | None
    stuck: list[Stuck]
    orphaned_events: int
    orphaned_example: str | None


STUCK_KINDS = {
    "running": "running with an expired lease",
    "ready": "ready and overdue",
    "waiting": "waiting past its deadline",
}


def stats(store: Store, *, overdue: timedelta, machines: tuple[str, ...] = ()) -> Stats:
    """Counts by machine, state and status; the oldest due row; stuck rows; orphaned events
    (of `machines` only, when given)."""
    now = store.current_time()
    scope: list[Any] = [w.c.machine.in_(machines)] if machines else []
    counts_q = (select(w.c.machine, w.c.state, w.c.status, func.count()).where(*scope)
                .group_by(w.c.machine, w.c.state, w.c.status)
                .order_by(w.c.machine, w.c.state, w.c.status))
    due_q = (select(w.c.wake_at, cast(w.c.id, Text)).where(*scope, w.c.status == "ready",
                                                           w.c.wake_at <= now)
             .order_by(w.c.wake_at).limit(1))
    stuck_q = (select(w.c.status, w.c.machine, func.count(), func.min(w.c.wake_at),
                      func.min(cast(w.c.id, Text)))
               .where(*scope, w.c.status.in_(tuple(STUCK_KINDS)), w.c.wake_at < now - overdue)
               .group_by(w.c.status, w.c.machine).order_by(w.c.status, w.c.machine))
    ev = events
    orphan_q = (select(func.count(), func.min(cast(ev.c.workflow_id, Text)))
                .select_from(ev.join(w, w.c.id == ev.c.workflow_id))
                .where(*scope, ev.c.status == "pending", w.c.status.in_(("done", "cancelled"))))

    def run(conn: Any) -> Stats:
        counts = [(str(m), str(s), str(st), int(n)) for m, s, st, n in conn.execute(counts_q)]
        due = conn.execute(due_q).first()
        stuck = [Stuck(STUCK_KINDS[st], str(m), int(n), oldest, str(example))
                 for st, m, n, oldest, example in conn.execute(stuck_q)]
        orphans, example = conn.execute(orphan_q).one()
        return Stats(now=now, counts=counts, oldest_due=None if due is None else due[0],
                     oldest_due_id=None if due is None else str(due[1]), stuck=stuck,
                     orphaned_events=int(orphans), orphaned_example=example)

    return store.transaction(run)
