"""Waiting: events, settling back to sleep, children, cancellation requests."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Connection,
    Text,
    and_,
    bindparam,
    case,
    false,
    func,
    literal,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .._clock import utcnow
from .._records import Change, ClaimedRow
from .._schema import FINISHED_STATUSES, JSONData, TextUUID, UTCDateTime, history, workflows
from .._schema import events as ev
from ..errors import InvalidOperation, WorkflowNotFound
from ._decode import StoredRow, stored_rows
from ._workflows import WorkflowStatements

__all__ = ["WaitingStatements"]

w = workflows
h = history


class WaitingStatements(WorkflowStatements):
    """Events, settle, children, cancel."""

    # -- waiting -----------------------------------------------------------------------------

    def settle_waiting(
        self, row: ClaimedRow, *, deadline: datetime | None, accepts: Sequence[str],
        children_ready: Callable[[Connection], bool] | None = None, retry_for: float = 0.0,
    ) -> bool | None:
        """Put a claimed workflow back to sleep in its waiting state until `deadline` (or an
        event). Returns False instead when there is news to act on first (an event it accepts,
        children to look at), None when the lease is gone, True when it sleeps. `retry_for`:
        keep retrying contention this long past the usual retries (as `commit` does).

        The row is locked *before* looking for news: a sender that touched it first has
        committed by then, and one that touches it after sees status 'waiting' and wakes it."""

        def run(conn: Connection) -> bool | None:
            held = select(w.c.id).where(
                w.c.id == row.id, w.c.version == row.version, w.c.lease_token == row.lease_token)
            if conn.execute(held.with_for_update()).first() is None:
                return None
            if accepts and conn.execute(select(ev.c.id).where(
                    ev.c.workflow_id == row.id, ev.c.status == "pending",
                    ev.c.type.in_(accepts)).limit(1)).first() is not None:
                return False
            if children_ready is not None and children_ready(conn):
                return False
            # A cancel asked for while this worker looked (the row was running, so the request
            # left wake_at alone) must not sleep until the deadline: due now, it is carried out.
            sleep_until = None if deadline is None else literal(deadline, UTCDateTime())
            conn.execute(update(w).where(w.c.id == row.id).values(
                # Looking for news is not an attempt of a handler: undo the claim's count.
                attempt=w.c.attempt - 1,
                status="waiting", lease_token=None, lease_owner=None, updated_at=self.now(),
                wake_at=case((w.c.cancel_requested.is_not(None), self.now()),
                             else_=sleep_until)))
            return True

        return self._db.transaction(run, retry_for=retry_for)

    def pending_events(self, workflow_id: uuid.UUID) -> list[StoredRow]:
        """The workflow's pending events, oldest first. On SQLite an event whose data is not
        JSON comes back with its raw text and a `data_error` (to be rejected, not fatal)."""
        data = type_coerce(ev.c.data, Text()).label("data") if self.is_sqlite else ev.c.data
        # In the order sent (`seq`), never by a clock. Unnumbered rows come first, by time:
        # events recorded before schema version 0006, and rows inserted by SQL that no worker
        # has noticed (and numbered) yet.
        stmt = (select(ev.c.id, ev.c.type, data, ev.c.created_at)
                .where(ev.c.workflow_id == workflow_id, ev.c.status == "pending")
                .order_by(ev.c.seq.asc().nulls_first(), ev.c.created_at, ev.c.id))
        is_sqlite = self.is_sqlite
        return self._single(lambda c: list(stored_rows(c.execute(stmt), ev, is_sqlite)))

    def reject_event(self, event_id: uuid.UUID, reason: str) -> None:
        """Mark an event that does not fit its class (inserted by SQL) as rejected, with why."""
        stmt = update(ev).where(ev.c.id == event_id, ev.c.status == "pending").values(
            status="rejected", error=self._redact(reason), consumed_at=self.now(), noticed=True)
        self._single(lambda c: c.execute(stmt))

    def insert_event(self, workflow_id: uuid.UUID, type_name: str, data: Any) -> uuid.UUID:
        """Queue an event for a workflow and wake it if it waits. Raises `InvalidOperation`
        when the workflow does not exist or has finished. The event's id is made here, so the
        send repeated after a lost connection does not queue it twice."""
        event_id = uuid.uuid4()

        def run(conn: Connection) -> uuid.UUID:
            # Touch (and lock) the workflow first: see `_wake` and `settle_waiting`.
            status = conn.execute(update(w).where(w.c.id == workflow_id).values(
                wake_at=case((w.c.status == "waiting", self.now()), else_=w.c.wake_at))
                .returning(w.c.status)).scalar()
            if status is None:
                raise WorkflowNotFound(f"no workflow {workflow_id}")
            if status in FINISHED_STATUSES:
                raise InvalidOperation(
                    f"workflow {workflow_id} is {status}: it accepts no more events")
            # The time is for people and for an event racing a deadline, never for the order:
            # the transaction's time (one per transaction on CockroachDB too, unlike a node's
            # clock_timestamp()).
            created: Any = literal(utcnow(), UTCDateTime()) if self.is_sqlite else self.now()
            # Numbered in this statement: one more than the inbox's last (the workflow's row,
            # locked above, makes concurrent senders to one workflow take turns).
            row = select(
                literal(event_id, TextUUID()), literal(workflow_id, TextUUID()),
                literal(type_name, Text()), literal(data, JSONData), literal("pending", Text()),
                literal(True, Boolean()), created,
                func.coalesce(func.max(ev.c.seq), 0) + 1,
            ).where(ev.c.workflow_id == workflow_id)
            upsert = sqlite_insert if self.is_sqlite else pg_insert
            conn.execute(upsert(ev).from_select(
                ["id", "workflow_id", "type", "data", "status", "noticed", "created_at", "seq"],
                row).on_conflict_do_nothing(index_elements=[ev.c.id]))
            return event_id

        return self.transaction(run)

    def notice_sql_events(self, limit: int = 500) -> int:
        """Wake the workflows of events inserted by plain SQL (``noticed`` false); returns how
        many events were noticed. Cheap when there are none: it reads the partial index
        ``sm_events_unnoticed``, whatever the table holds."""

        def run(conn: Connection) -> int:
            # ``noticed = false``, the index's own predicate: neither PostgreSQL nor SQLite
            # proves ``noticed IS false`` implies it, and read every event on each poll.
            found = conn.execute(select(ev.c.id, ev.c.workflow_id, ev.c.created_at).where(
                ev.c.noticed == false()).limit(limit)).all()
            if not found:
                return 0
            self._wake(conn, sorted({r.workflow_id for r in found}))
            # Number them after what the inboxes hold, in the order of their times (the
            # workflows' rows, locked by the wake-up, keep senders out meanwhile).
            top = ev.alias("numbered")
            number = update(ev).where(ev.c.id == bindparam("e_id", type_=TextUUID()),
                                      ev.c.seq.is_(None)).values(
                noticed=True,
                seq=select(func.coalesce(func.max(top.c.seq), 0) + 1)
                .where(top.c.workflow_id == ev.c.workflow_id).scalar_subquery())
            for r in sorted(found, key=lambda r: (str(r.workflow_id), r.created_at, str(r.id))):
                conn.execute(number, {"e_id": r.id})
            conn.execute(update(ev).where(ev.c.id.in_([r.id for r in found]))
                         .values(noticed=True))
            return len(found)

        return self.transaction(run)

    def entered_at(self, workflow_id: uuid.UUID, version: int) -> datetime | None:
        """When the workflow reached `version` (the time its history row was written)."""
        stmt = select(h.c.finished_at).where(h.c.workflow_id == workflow_id,
                                             h.c.version == version)
        return self._single(lambda c: c.execute(stmt).scalar())

    def polling_since(self, workflow_id: uuid.UUID, version: int) -> datetime | None:
        """When a polling step's deadline starts: the time of the history row of `version`
        (entering the state) or of the latest operator retry after it."""
        stmt = select(func.max(h.c.finished_at)).where(
            h.c.workflow_id == workflow_id, h.c.version >= version,
            or_(h.c.version == version, h.c.kind == "retry"))
        return self._single(lambda c: c.execute(stmt).scalar())

    def release_children(self, conn: Connection, parent: uuid.UUID, max_running: int) -> int:
        """Let queued children go while fewer than `max_running` are active; returns how many."""
        active = conn.execute(select(func.count()).select_from(w).where(
            w.c.parent_id == parent, w.c.status.in_(("ready", "running", "waiting")),
            ~and_(w.c.status == "ready", w.c.wake_at.is_(None)))).scalar_one()
        room = max_running - int(active)
        if room <= 0:
            return 0
        queued = select(w.c.id).where(
            w.c.parent_id == parent, w.c.status == "ready", w.c.wake_at.is_(None),
        ).order_by(w.c.created_at, w.c.id).limit(room)
        ids = [r.id for r in conn.execute(queued)]
        if ids:
            conn.execute(update(w).where(w.c.id.in_(ids)).values(wake_at=self.now()))
        return len(ids)

    def child_counts(self, conn: Connection, parent: uuid.UUID) -> tuple[int, int, int]:
        """(finished, active, queued) children of `parent`."""
        no_wake = w.c.wake_at.is_(None)
        rows = conn.execute(select(w.c.status, no_wake, func.count()).where(
            w.c.parent_id == parent).group_by(w.c.status, no_wake)).all()
        finished = queued = active = 0
        for status, sleeping_forever, n in rows:
            if status in FINISHED_STATUSES:
                finished += int(n)
            elif status == "ready" and sleeping_forever:
                queued += int(n)
            else:
                active += int(n)
        return finished, active, queued

    def request_cancel(self, workflow_id: uuid.UUID, reason: str, *, direct: bool) -> str:
        """Ask a workflow to cancel. With `direct` (its machine has no cancel route for its
        state) a workflow that is not running ends `cancelled` at once, with its children asked
        to cancel too; otherwise the request is recorded and the workflow woken, and a worker
        carries it out. Returns what happened: "cancelled" or "requested"."""

        def run(conn: Connection) -> str:
            row = conn.execute(select(w).where(w.c.id == workflow_id).with_for_update()).first()
            if row is None:
                raise WorkflowNotFound(f"no workflow {workflow_id}")
            if row.status in FINISHED_STATUSES and row.status != "failed":
                raise InvalidOperation(f"cannot cancel workflow {workflow_id}: it is {row.status}")
            if direct and row.status != "running":
                done = self.commit_in(conn, Change(
                    workflow_id=row.id, version=row.version, kind="cancel",
                    from_state=row.state, to_state=row.state, data=row.data, status="cancelled",
                    attempt=row.attempt, new_state=False, cause=reason, clear_cancel=True,
                    wake_parent=row.parent_id, cancel_children=reason, close_inbox=True))
                assert done is not None  # the row is locked
                return "cancelled"
            wake = row.wake_at if row.status == "running" else self.now()
            conn.execute(update(w).where(w.c.id == workflow_id).values(
                cancel_requested=reason, wake_at=wake,
                status="ready" if row.status == "failed" else row.status))
            return "requested"

        return self.transaction(run)

    def cancel_requested(self, workflow_id: uuid.UUID) -> str | None:
        """The pending cancellation request of a workflow, if any."""
        stmt = select(w.c.cancel_requested).where(w.c.id == workflow_id)
        return self._single(lambda c: c.execute(stmt).scalar())

    def record_external_change(self, row: ClaimedRow, *, worker: str) -> bool:
        """Record in history that `row`'s current version was written outside the engine (an
        operator's UPDATE), and make it the start of a new transition. False if the lease is
        gone."""

        def run(conn: Connection) -> bool:
            done = conn.execute(
                update(w).where(w.c.id == row.id, w.c.version == row.version,
                                w.c.lease_token == row.lease_token)
                .values(entered_version=row.version, attempt=1, polls=0)
                .returning(w.c.id)).first()
            if done is None:
                return False
            # (Repeated after a connection lost during its COMMIT, the history row is there.)
            upsert = sqlite_insert if self.is_sqlite else pg_insert
            conn.execute(upsert(h).values(
                workflow_id=row.id, version=row.version, kind="external_change", from_state=None,
                to_state=row.state, data=row.data, status="ready", attempt=0, worker=worker,
                cause="row changed outside the engine", finished_at=self.now(),
            ).on_conflict_do_nothing(index_elements=[h.c.workflow_id, h.c.version]))
            return True

        return self.transaction(run)

