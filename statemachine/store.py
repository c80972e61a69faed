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

from .clock import Clock, SystemClock
from .database import default_database_url, is_retryable, make_engine, short_error
from .errors import StoreError
from .schema import UTCDateTime, history, workflows

__all__ = ["Change", "ClaimedRow", "Store", "default_database_url"]

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
                        w.c.status.in_(("ready", "running")), w.c.machine.in_(machines))

        if self.is_sqlite:
            def run_sqlite(conn: Connection) -> list[ClaimedRow]:
                rows = conn.execute(
                    select(w.c.id, w.c.machine, w.c.state, w.c.data, w.c.version,
                           w.c.entered_version, w.c.attempt, w.c.status, recorded.label("rec"))
                    .where(due(self.now())).order_by(w.c.wake_at).limit(limit)).all()
                if not rows:
                    return []
                ids = [r.id for r in rows]
                conn.execute(update(w).where(w.c.id.in_(ids)).values(**lease_values))
                return [ClaimedRow(r.id, r.machine, r.state, r.data, r.version, r.entered_version,
                                   r.attempt + 1, token, r.status, not r.rec) for r in rows]

            return self.transaction(run_sqlite)

        picked = (
            select(w.c.id, w.c.status).where(due(self.now())).order_by(w.c.wake_at).limit(limit)
            .with_for_update(skip_locked=True).subquery("picked"))
        stmt = (
            update(w).where(w.c.id == picked.c.id).values(**lease_values)
            .returning(w.c.id, w.c.machine, w.c.state, w.c.data, w.c.version, w.c.entered_version,
                       w.c.attempt, picked.c.status, recorded.label("rec")))

        def run(conn: Connection) -> list[ClaimedRow]:
            return [ClaimedRow(r.id, r.machine, r.state, r.data, r.version, r.entered_version,
                               r.attempt, token, r.status, not r.rec)
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
        return self.apply_in(None, change)

    def apply_in(self, conn: Connection | None, change: Change) -> int | None:
        """`apply` inside the caller's transaction (`conn`), or in its own when `conn` is None."""
        c = change
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
            values.update(
                lease_token=None, lease_owner=None,
                wake_at=None if c.wake_after is None else self.later(c.wake_after))
            if c.new_state or c.reset_attempts:
                values["attempt"] = 0
        if c.new_state:
            values["entered_version"] = w.c.version + 1
        upd = update(w).where(*conds).values(**values)
        hist = dict(
            kind=c.kind, from_state=c.from_state, to_state=c.to_state, data=c.data,
            status=c.status, cause=c.cause, attempt=c.attempt, error=c.error, worker=c.worker,
            started_at=c.started_at, finished_at=self.now())

        if self.is_sqlite or conn is not None:
            def run(conn: Connection) -> int | None:
                version = conn.execute(upd.returning(w.c.version)).scalar()
                if version is None:
                    return None
                conn.execute(insert(h).values(workflow_id=c.workflow_id, version=version, **hist))
                return int(version)

            return run(conn) if conn is not None else self.transaction(run)

        u = upd.returning(w.c.id, w.c.version).cte("u")
        cols = list(hist)
        stmt = insert(h).from_select(
            ["workflow_id", "version", *cols],
            select(u.c.id, u.c.version, *[_bind(h.c[k], v) for k, v in hist.items()]),
        ).returning(h.c.version)
        return self._single(lambda conn: _scalar_int(conn.execute(stmt).scalar()))

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


