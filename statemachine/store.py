"""Every SQL statement statemachine runs, and the one retry wrapper they all go through.

The contract (see DESIGN.md section 3):

* **claim**: one statement (PostgreSQL/CockroachDB) takes a batch of due rows with
  ``FOR UPDATE SKIP LOCKED`` and rewrites their lease; on SQLite one ``BEGIN IMMEDIATE``
  transaction does the same under SQLite's single write lock.
* **apply**: a compare-and-set on ``(id, version, lease_token)`` that writes the next row and
  appends its history row atomically (one CTE statement on servers), checked through ``RETURNING``.
* **times**: leases and timers use the database clock (``now()``) on servers, unless the store was
  given an explicit clock (tests move a fake one); SQLite always uses the process clock.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar

import attrs
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Interval,
    and_,
    case,
    exists,
    func,
    insert,
    literal,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError

from .clock import Clock, SystemClock, utcnow
from .database import default_database_url, is_retryable, make_engine, short_error
from .errors import InvalidOperation, StoreError, WorkflowNotFound
from .schema import FINISHED_STATUSES, UTCDateTime, history, workflows
from .schema import events as ev

__all__ = ["Change", "ChildStart", "ClaimedRow", "Committed", "Store", "default_database_url"]

log = logging.getLogger("statemachine.store")
T = TypeVar("T")
w = workflows
h = history

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
    `expect_status`, when given); `Store.apply` returns the new version, or None if it did not.
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

    @property
    def simple(self) -> bool:
        """True when the change is one row update plus its history row (the fast path)."""
        return not (self.consume_event or self.children or self.wake_parent
                    or self.cancel_children)


class Store:
    """The database behind the engine: a SQLAlchemy engine plus every statement, by name."""

    def __init__(
        self,
        url: str | Engine | None = None,
        *,
        clock: Clock | None = None,
        isolation_level: str | None = None,
        pool_size: int = 10,
        max_retries: int = 10,
    ) -> None:
        """`url`: a SQLAlchemy URL (``sqlite:///file.db``, ``postgresql+psycopg://...``,
        ``cockroachdb+psycopg://...``) or an engine. `clock`: force a clock (tests); by default
        servers use their own ``now()``. `isolation_level`: e.g. ``"SERIALIZABLE"`` for every
        transaction on PostgreSQL (CockroachDB always is)."""
        if isinstance(url, Engine):
            self.engine = url
        else:
            self.engine = make_engine(url or default_database_url(), isolation_level, pool_size)
        self.dialect = self.engine.dialect.name
        self.is_sqlite = self.dialect == "sqlite"
        self.server_clock = clock is None and not self.is_sqlite
        self.clock: Clock = clock or SystemClock()
        self.max_retries = max_retries
        self._listeners: list[Callable[[], None]] = []
        self._autocommit = (
            self.engine if self.is_sqlite
            else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    # -- in-process wake-ups ------------------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever work is started or changed through this store object."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        """Stop calling `listener`."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def notify(self) -> None:
        """Wake this process's workers: there is new work."""
        for listener in list(self._listeners):
            listener()

    # -- transactions ------------------------------------------------------------------------

    def transaction(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn` in a fresh transaction, retrying the whole of it on a serialization failure
        (SQLSTATE 40001/40P01, or SQLite busy) with capped exponential backoff and jitter.
        `fn` must be safe to run again: database work only, no outside I/O."""
        return self._retrying(fn, self.engine, transactional=True)

    def _single(self, fn: Callable[[Connection], T]) -> T:
        """Run one statement as its own transaction (autocommit on servers: one round trip)."""
        return self._retrying(fn, self._autocommit, transactional=self.is_sqlite)

    def _retrying(self, fn: Callable[[Connection], T], engine: Engine, transactional: bool) -> T:
        attempt = 0
        while True:
            try:
                with engine.connect() as conn:
                    if not transactional:
                        return fn(conn)
                    with conn.begin():
                        return fn(conn)
            except DBAPIError as e:
                if attempt >= self.max_retries or not is_retryable(e):
                    raise StoreError(f"database error: {short_error(e)}") from e
                attempt += 1
                delay = min(1.0, 0.005 * 2**attempt) * (0.5 + random.random() / 2)
                log.debug("retrying transaction after %s (attempt %d)", short_error(e), attempt)
                time.sleep(delay)

    # -- time --------------------------------------------------------------------------------

    def now(self) -> ColumnElement[datetime]:
        """The current time as SQL: the server's ``now()``, or the store clock's time."""
        if self.server_clock:
            return func.now()
        return literal(self.clock.now(), UTCDateTime())

    def later(self, seconds: float) -> ColumnElement[datetime]:
        """``now() + seconds`` as SQL."""
        if self.server_clock:
            return func.now() + literal(timedelta(seconds=seconds), Interval())
        return literal(self.clock.now() + timedelta(seconds=seconds), UTCDateTime())

    def current_time(self) -> datetime:
        """The time the store schedules by, read now."""
        if not self.server_clock:
            return self.clock.now()
        now: datetime = self._single(lambda c: c.execute(select(func.now())).scalar_one())
        return now

    # -- schema ------------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply the pending migrations; returns the versions applied now. Idempotent."""
        from .migrate import apply_migrations

        return apply_migrations(self)

    # -- starting ----------------------------------------------------------------------------

    def insert_workflow(
        self,
        *,
        machine: str,
        state: str,
        data: Any,
        key: str | None = None,
        parent_id: uuid.UUID | None = None,
        wake_after: float = 0.0,
    ) -> tuple[uuid.UUID, bool]:
        """Insert a new workflow and its first history row; returns (id, created). With a `key`
        already used for this machine, returns the existing workflow's id and ``created=False``."""

        def run(conn: Connection) -> tuple[uuid.UUID, bool]:
            new_id = uuid.uuid4()
            now = self.now()
            values = dict(
                id=new_id, machine=machine, state=state, data=data, status="ready", version=1,
                entered_version=1, attempt=0, wake_at=self.later(wake_after), key=key,
                parent_id=parent_id, created_at=now, updated_at=now,
            )
            if key is None:
                conn.execute(insert(w).values(**values))
            else:
                ins = (pg_insert(w) if not self.is_sqlite else sqlite_insert(w)).values(**values)
                ins = ins.on_conflict_do_nothing(
                    index_elements=[w.c.machine, w.c.key], index_where=w.c.key.is_not(None))
                if conn.execute(ins.returning(w.c.id)).first() is None:
                    existing = conn.execute(
                        select(w.c.id).where(w.c.machine == machine, w.c.key == key)).scalar_one()
                    return existing, False
            conn.execute(insert(h).values(
                workflow_id=new_id, version=1, kind="start", from_state=None, to_state=state,
                data=data, status="ready", attempt=0, finished_at=now,
                cause=f"key={key}" if key else None))
            return new_id, True

        return self.transaction(run)

    def insert_workflows(self, machine: str, rows: Sequence[tuple[str, Any]]) -> list[uuid.UUID]:
        """Start many workflows of one machine in one transaction (no keys); returns their ids."""
        ids = [uuid.uuid4() for _ in rows]

        def run(conn: Connection) -> list[uuid.UUID]:
            now = self.current_time() if self.server_clock else self.clock.now()
            conn.execute(insert(w), [
                dict(id=i, machine=machine, state=s, data=d, status="ready", version=1,
                     entered_version=1, attempt=0, wake_at=now, key=None, parent_id=None,
                     created_at=now, updated_at=now)
                for i, (s, d) in zip(ids, rows, strict=True)])
            conn.execute(insert(h), [
                dict(workflow_id=i, version=1, kind="start", from_state=None, to_state=s, data=d,
                     status="ready", attempt=0, finished_at=now)
                for i, (s, d) in zip(ids, rows, strict=True)])
            return ids

        return self.transaction(run)

    # -- claiming ----------------------------------------------------------------------------

    def claim(
        self, *, owner: str, machines: Sequence[str], limit: int, lease: float
    ) -> list[ClaimedRow]:
        """Take up to `limit` due workflows of `machines` (ready and due, or running with an
        expired lease) and lease them to `owner` for `lease` seconds; attempt is counted up."""
        if limit <= 0 or not machines:
            return []
        token = uuid.uuid4().hex
        recorded = exists().where(h.c.workflow_id == w.c.id, h.c.version == w.c.version)
        lease_values = dict(
            status="running", lease_token=token, lease_owner=owner, wake_at=self.later(lease),
            attempt=w.c.attempt + 1, updated_at=self.now())

        def due(now: ColumnElement[datetime]) -> Any:
            return and_(w.c.wake_at.is_not(None), w.c.wake_at <= now,
                        w.c.status.in_(("ready", "running", "waiting")),
                        w.c.machine.in_(machines))

        if self.is_sqlite:
            def run_sqlite(conn: Connection) -> list[ClaimedRow]:
                rows = conn.execute(
                    select(w.c.id, w.c.machine, w.c.state, w.c.data, w.c.version,
                           w.c.entered_version, w.c.attempt, w.c.status, recorded.label("rec"),
                           w.c.parent_id, w.c.cancel_requested)
                    .where(due(self.now())).order_by(w.c.wake_at).limit(limit)).all()
                if not rows:
                    return []
                ids = [r.id for r in rows]
                conn.execute(update(w).where(w.c.id.in_(ids)).values(**lease_values))
                return [ClaimedRow(r.id, r.machine, r.state, r.data, r.version, r.entered_version,
                                   r.attempt + 1, token, r.status, not r.rec, r.parent_id,
                                   r.cancel_requested) for r in rows]

            return self.transaction(run_sqlite)

        picked = (
            select(w.c.id, w.c.status).where(due(self.now())).order_by(w.c.wake_at).limit(limit)
            .with_for_update(skip_locked=True).subquery("picked"))
        stmt = (
            update(w).where(w.c.id == picked.c.id).values(**lease_values)
            .returning(w.c.id, w.c.machine, w.c.state, w.c.data, w.c.version, w.c.entered_version,
                       w.c.attempt, picked.c.status, recorded.label("rec"), w.c.parent_id,
                       w.c.cancel_requested))

        def run(conn: Connection) -> list[ClaimedRow]:
            return [ClaimedRow(r.id, r.machine, r.state, r.data, r.version, r.entered_version,
                               r.attempt, token, r.status, not r.rec, r.parent_id,
                               r.cancel_requested)
                    for r in conn.execute(stmt)]

        return self._single(run)

    def renew_leases(self, ids: Sequence[uuid.UUID], token: str, lease: float) -> set[uuid.UUID]:
        """Push the lease expiry of rows this worker still holds; returns the ids still held."""
        if not ids:
            return set()
        stmt = (update(w).where(w.c.id.in_(ids), w.c.lease_token == token, w.c.status == "running")
                .values(wake_at=self.later(lease)).returning(w.c.id))
        return self._single(lambda c: {r.id for r in c.execute(stmt)})

    def release(self, ids: Sequence[uuid.UUID], token: str) -> int:
        """Give rows back (shutdown): due at once, for any worker; attempt not counted."""
        if not ids:
            return 0
        stmt = (update(w).where(w.c.id.in_(ids), w.c.lease_token == token, w.c.status == "running")
                .values(status="ready", wake_at=self.now(), lease_token=None, lease_owner=None,
                        attempt=w.c.attempt - 1, updated_at=self.now())
                .returning(w.c.id))
        return self._single(lambda c: len(c.execute(stmt).all()))

    # -- writing changes -------------------------------------------------------------------------

    def apply(self, change: Change) -> int | None:
        """Compare-and-set the row and append history in one atomic step; returns the new version,
        or None when the row no longer matches (lease lost, or changed by an operator)."""
        done = self.commit(change)
        return None if done is None else done.version

    def commit(self, change: Change) -> Committed | None:
        """`apply`, also reporting a cancellation request that arrived meanwhile. A plain change
        is one statement on servers; one with events, children or a parent is one transaction."""
        if self.is_sqlite or not change.simple:
            return self.transaction(lambda conn: self.commit_in(conn, change))
        upd, hist = self._change_statements(change)
        u = upd.returning(w.c.id, w.c.version, w.c.cancel_requested).cte("u")
        i = insert(h).from_select(
            ["workflow_id", "version", *hist],
            select(u.c.id, u.c.version, *[_bind(h.c[k], v) for k, v in hist.items()]),
        ).returning(h.c.version).cte("i")
        stmt = select(u.c.version, u.c.cancel_requested).select_from(
            u.join(i, i.c.version == u.c.version))
        row = self._single(lambda conn: conn.execute(stmt).first())
        return None if row is None else Committed(int(row.version), row.cancel_requested)

    def commit_in(self, conn: Connection, change: Change) -> Committed | None:
        """`commit` inside the caller's transaction."""
        c = change
        upd, hist = self._change_statements(c)
        row = conn.execute(upd.returning(w.c.version, w.c.cancel_requested)).first()
        if row is None:
            return None
        version = int(row.version)
        conn.execute(insert(h).values(workflow_id=c.workflow_id, version=version, **hist))
        if c.consume_event is not None:
            consumed = conn.execute(
                update(ev).where(ev.c.id == c.consume_event, ev.c.status == "pending")
                .values(status="consumed", consumed_at=self.now(), consumed_version=version)
                .returning(ev.c.id)).first()
            if consumed is None:
                raise StoreError(f"event {c.consume_event} was consumed twice")  # rolls back
        if c.children:
            self._insert_children(conn, c.workflow_id, c.children)
        if c.wake_parent is not None:
            self._wake(conn, [c.wake_parent])
        if c.cancel_children is not None:
            self._cancel_children(conn, c.workflow_id, c.cancel_children)
        return Committed(version, None if c.clear_cancel else row.cancel_requested)

    def apply_in(self, conn: Connection | None, change: Change) -> int | None:
        """`apply` inside the caller's transaction (`conn`), or in its own when `conn` is None."""
        done = self.commit(change) if conn is None else self.commit_in(conn, change)
        return None if done is None else done.version

    def _change_statements(self, c: Change) -> tuple[Any, dict[str, Any]]:
        conds = [w.c.id == c.workflow_id, w.c.version == c.version]
        if c.lease_token is not None:
            conds.append(w.c.lease_token == c.lease_token)
        if c.expect_status:
            conds.append(w.c.status.in_(c.expect_status))
        values: dict[str, Any] = dict(
            state=c.to_state, data=c.data, status=c.status, version=w.c.version + 1,
            updated_at=self.now(), last_error=_headline(c.error))
        if c.keep_lease is not None:
            values.update(status="running", wake_at=self.later(c.keep_lease), attempt=1)
        else:
            if c.wake_at is not None:
                wake: Any = literal(c.wake_at, UTCDateTime())
            else:
                wake = None if c.wake_after is None else self.later(c.wake_after)
            values.update(lease_token=None, lease_owner=None, wake_at=wake)
            if c.new_state or c.reset_attempts:
                values["attempt"] = 0
        if c.new_state:
            values["entered_version"] = w.c.version + 1
        if c.clear_cancel:
            values["cancel_requested"] = None
        hist = dict(
            kind=c.kind, from_state=c.from_state, to_state=c.to_state, data=c.data,
            status=c.status, cause=c.cause, attempt=c.attempt, error=c.error, worker=c.worker,
            started_at=c.started_at, finished_at=self.now())
        return update(w).where(*conds).values(**values), hist

    def _insert_children(self, conn: Connection, parent: uuid.UUID,
                         children: Sequence[ChildStart]) -> None:
        now = self.now()
        for child in children:
            values = dict(
                id=child.id, machine=child.machine, state=child.state, data=child.data,
                status="ready", version=1, entered_version=1, attempt=0,
                wake_at=None if child.queued else now, key=child.key, parent_id=parent,
                created_at=now, updated_at=now)
            conn.execute(insert(w).values(**values))
            conn.execute(insert(h).values(
                workflow_id=child.id, version=1, kind="start", from_state=None,
                to_state=child.state, data=child.data, status="ready", attempt=0,
                cause=f"child of {parent}", finished_at=now))

    def _wake(self, conn: Connection, ids: Sequence[uuid.UUID]) -> None:
        """Make waiting workflows due now. Touching the row even when it is not waiting takes its
        lock, so a worker settling it concurrently sees the news (see `settle_waiting`)."""
        conn.execute(update(w).where(w.c.id.in_(ids)).values(
            wake_at=case((w.c.status == "waiting", self.now()), else_=w.c.wake_at)))

    def _cancel_children(self, conn: Connection, parent: uuid.UUID, reason: str) -> None:
        conn.execute(update(w).where(
            w.c.parent_id == parent, w.c.status.in_(("ready", "running", "waiting")),
            w.c.cancel_requested.is_(None),
        ).values(cancel_requested=reason, wake_at=case(
            (w.c.status.in_(("ready", "waiting")), self.now()), else_=w.c.wake_at)))

    # -- waiting -----------------------------------------------------------------------------

    def settle_waiting(
        self, row: ClaimedRow, *, deadline: datetime | None, accepts: Sequence[str],
        children_ready: Callable[[Connection], bool] | None = None,
    ) -> bool | None:
        """Put a claimed workflow back to sleep in its waiting state until `deadline` (or an
        event). Returns False instead when there is news to act on first (an event it accepts,
        children to look at), None when the lease is gone, True when it sleeps.

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
            conn.execute(update(w).where(w.c.id == row.id).values(
                status="waiting", lease_token=None, lease_owner=None, updated_at=self.now(),
                wake_at=None if deadline is None else literal(deadline, UTCDateTime())))
            return True

        return self.transaction(run)

    def pending_events(self, workflow_id: uuid.UUID) -> list[Any]:
        """The workflow's pending events, oldest first."""
        stmt = (select(ev.c.id, ev.c.type, ev.c.data, ev.c.created_at)
                .where(ev.c.workflow_id == workflow_id, ev.c.status == "pending")
                .order_by(ev.c.created_at, ev.c.id))
        return self._single(lambda c: list(c.execute(stmt)))

    def reject_event(self, event_id: uuid.UUID, reason: str) -> None:
        """Mark an event that does not fit its class (inserted by SQL) as rejected, with why."""
        stmt = update(ev).where(ev.c.id == event_id, ev.c.status == "pending").values(
            status="rejected", error=reason, consumed_at=self.now(), noticed=True)
        self._single(lambda c: c.execute(stmt))

    def insert_event(self, workflow_id: uuid.UUID, type_name: str, data: Any) -> uuid.UUID:
        """Queue an event for a workflow and wake it if it waits. Raises `InvalidOperation`
        when the workflow does not exist or has finished."""
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
            values: dict[str, Any] = dict(id=event_id, workflow_id=workflow_id, type=type_name,
                                          data=data, status="pending", noticed=True)
            if self.is_sqlite or not self.server_clock:
                values["created_at"] = self.clock.now() if not self.is_sqlite else utcnow()
            else:
                values["created_at"] = func.clock_timestamp()
            conn.execute(insert(ev).values(**values))
            return event_id

        return self.transaction(run)

    def notice_sql_events(self, limit: int = 500) -> int:
        """Wake the workflows of events inserted by plain SQL (``noticed`` false); returns how
        many events were noticed. Cheap when there are none (a partial index)."""

        def run(conn: Connection) -> int:
            found = conn.execute(select(ev.c.id, ev.c.workflow_id).where(
                ev.c.noticed.is_(False)).limit(limit)).all()
            if not found:
                return 0
            self._wake(conn, sorted({r.workflow_id for r in found}))
            conn.execute(update(ev).where(ev.c.id.in_([r.id for r in found]))
                         .values(noticed=True))
            return len(found)

        return self.transaction(run)

    def entered_at(self, workflow_id: uuid.UUID, version: int) -> datetime | None:
        """When the workflow reached `version` (the time its history row was written)."""
        stmt = select(h.c.finished_at).where(h.c.workflow_id == workflow_id,
                                             h.c.version == version)
        return self._single(lambda c: c.execute(stmt).scalar())

    def children_of(self, parent: uuid.UUID) -> list[Any]:
        """The parent's child workflows, in the order they were started."""
        stmt = select(w).where(w.c.parent_id == parent).order_by(w.c.created_at, w.c.id)
        return self._single(lambda c: list(c.execute(stmt)))

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
                    wake_parent=row.parent_id, cancel_children=reason))
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
                .values(entered_version=row.version, attempt=1).returning(w.c.id)).first()
            if done is None:
                return False
            conn.execute(insert(h).values(
                workflow_id=row.id, version=row.version, kind="external_change", from_state=None,
                to_state=row.state, data=row.data, status="ready", attempt=0, worker=worker,
                cause="row changed outside the engine", finished_at=self.now()))
            return True

        return self.transaction(run)

    # -- reading -----------------------------------------------------------------------------

    def get(self, workflow_id: uuid.UUID) -> Any:
        """The workflow row, or None."""
        stmt = select(w).where(w.c.id == workflow_id)
        return self._single(lambda c: c.execute(stmt).first())

    def get_many(self, ids: Sequence[uuid.UUID]) -> list[Any]:
        """The rows of these workflows (missing ones are left out)."""
        stmt = select(w).where(w.c.id.in_(ids))
        return self._single(lambda c: list(c.execute(stmt)))

    def list_workflows(
        self,
        *,
        machine: str | None = None,
        status: str | None = None,
        state: str | None = None,
        limit: int = 100,
    ) -> list[Any]:
        """Workflow rows, newest first, filtered by machine, status and state."""
        stmt = select(w).order_by(w.c.created_at.desc(), w.c.id).limit(limit)
        if machine:
            stmt = stmt.where(w.c.machine == machine)
        if status:
            stmt = stmt.where(w.c.status == status)
        if state:
            stmt = stmt.where(w.c.state == state)
        return self._single(lambda c: list(c.execute(stmt)))

    def history(self, workflow_id: uuid.UUID) -> list[Any]:
        """History rows of one workflow, oldest first."""
        stmt = select(h).where(h.c.workflow_id == workflow_id).order_by(h.c.version)
        return self._single(lambda c: list(c.execute(stmt)))

    def count_by_status(self, machine: str | None = None) -> dict[str, int]:
        """How many workflows are in each status."""
        stmt = select(w.c.status, func.count()).group_by(w.c.status)
        if machine:
            stmt = stmt.where(w.c.machine == machine)
        return self._single(lambda c: {r[0]: int(r[1]) for r in c.execute(stmt)})

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A plain connection, for tests and tools that run their own SQL."""
        with self.engine.connect() as conn:
            yield conn


def _headline(error: str | None) -> str | None:
    """What `last_error` keeps of an error: its text without the traceback."""
    return None if error is None else error.split("\nTraceback", 1)[0]


def _bind(column: Any, value: Any) -> Any:
    if isinstance(value, ColumnElement):
        return value
    return literal(value, column.type) if value is not None else literal_column("NULL")


def _scalar_int(value: Any) -> int | None:
    return None if value is None else int(value)


