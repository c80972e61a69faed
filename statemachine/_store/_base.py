"""The store's foundation: engine, the retry wrapper, time as SQL, and plain reads."""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Self, TypeVar

import psycopg
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Interval,
    bindparam,
    func,
    literal,
    literal_column,
    select,
)
from sqlalchemy.exc import DBAPIError

from .._clock import Clock, SystemClock
from .._database import default_database_url, is_retryable, make_engine, short_error
from .._schema import UTCDateTime, history, workflows
from .._schema import events as ev
from ..errors import StoreError

__all__ = ["StoreBase"]

log = logging.getLogger("statemachine.store")
T = TypeVar("T")
w = workflows
h = history


class StoreBase:
    """Connections, transactions, time and reads; the statement groups build on it."""

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
        autocommit: Engine | None = None
        if isinstance(url, Engine):
            self.engine = url
        else:
            url = url or default_database_url()
            self.engine = make_engine(url, isolation_level, pool_size)
            if self.engine.dialect.name != "sqlite":
                autocommit = make_engine(url, isolation_level, pool_size, autocommit=True)
        self.dialect = self.engine.dialect.name
        self.is_sqlite = self.dialect == "sqlite"
        self.server_clock = clock is None and not self.is_sqlite
        self.clock: Clock = clock or SystemClock()
        self.max_retries = max_retries
        self._listeners: list[Callable[[], None]] = []
        self._watchers: dict[uuid.UUID, list[threading.Event]] = {}
        self._compiled: dict[Any, Any] = {}
        self._watch_lock = threading.Lock()
        # Statements built once per shape and reused: SQLAlchemy then skips rebuilding them and
        # recomputing their cache keys on the hot path.
        self._statements: dict[Any, Any] = {}
        self._autocommit = autocommit or (
            self.engine if self.is_sqlite
            else self.engine.execution_options(isolation_level="AUTOCOMMIT"))
        self._fast_driver = autocommit is not None and autocommit.dialect.driver == "psycopg"

    @property
    def sql(self) -> Self:
        """The engine's statements (claim, commit, events, ...): internal, not the user's API.

        Transitional: the statements still live on the store itself; they move to a separate
        object behind this attribute, so callers already spell them ``store.sql.<name>``."""
        return self

    @property
    def engines(self) -> tuple[Engine, ...]:
        """Every engine the store runs SQL on (transactions, and single autocommit statements):
        attach event listeners (SQL logging, statement counts) to each."""
        if self._autocommit is self.engine:
            return (self.engine,)
        return (self.engine, self._autocommit)

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
        if self._autocommit is not self.engine:
            self._autocommit.dispose()

    # -- in-process wake-ups ------------------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever work is started or changed through this store object."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        """Stop calling `listener`."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def watch(self, workflow_id: uuid.UUID) -> threading.Event:
        """An event set when a worker of this process commits a finished status (done, failed,
        cancelled) for `workflow_id`. Call `unwatch` when done with it."""
        event = threading.Event()
        with self._watch_lock:
            self._watchers.setdefault(workflow_id, []).append(event)
        return event

    def unwatch(self, workflow_id: uuid.UUID, event: threading.Event) -> None:
        """Forget an event made by `watch`."""
        with self._watch_lock:
            events = self._watchers.get(workflow_id, [])
            if event in events:
                events.remove(event)
            if not events:
                self._watchers.pop(workflow_id, None)

    def finished(self, workflow_id: uuid.UUID) -> None:
        """A worker of this process finished `workflow_id`: wake whoever watches it."""
        if self._watchers:
            with self._watch_lock:
                events = list(self._watchers.get(workflow_id, ()))
            for event in events:
                event.set()

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

    # -- the fast path ---------------------------------------------------------------------------

    def _fast_ok(self) -> bool:
        """Whether the hot statements may skip SQLAlchemy's execution layer: on psycopg, and only
        while nobody listens for SQL events (a SQL log, a lint, a counter sees everything)."""
        engine = self._autocommit
        return (self._fast_driver and not engine.dispatch.before_cursor_execute
                and not engine.dispatch.after_cursor_execute)

    def _fast(self, key: Any, stmt: Any, params: dict[str, Any], *, many: bool = False) -> Any:
        """Run a prebuilt statement straight on a pooled psycopg connection (autocommit): its SQL
        is compiled once, its parameters converted by the same bind processors SQLAlchemy would
        use. Saves SQLAlchemy's per-execute work, the larger part of a transition's CPU. Returns
        the first row (a tuple) or None, or all rows with `many`. Same retries as
        `_retrying`."""
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = stmt.compile(dialect=self._autocommit.dialect)
        # _bind_processors: SQLAlchemy's own per-bind converters for this dialect (JSON, UUID,
        # aware datetimes), keyed by the names the compiled SQL uses.
        processors = compiled._bind_processors
        values = compiled.construct_params(params)
        for name, process in processors.items():
            if name in values:
                values[name] = process(values[name])
        attempt = 0
        while True:
            raw = self._autocommit.raw_connection()
            try:
                cursor = raw.driver_connection.execute(  # type: ignore[union-attr]
                    compiled.string, values)
                result = cursor.fetchall() if many else cursor.fetchone()
                raw.close()
                return result
            except psycopg.Error as e:
                if isinstance(e, psycopg.OperationalError):
                    raw.invalidate()
                else:
                    raw.close()
                if attempt >= self.max_retries or not is_retryable(e):
                    raise StoreError(f"database error: {str(e).strip().splitlines()[0]}") from e
                attempt += 1
                time.sleep(min(1.0, 0.005 * 2**attempt) * (0.5 + random.random() / 2))

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

    def _now_param(self) -> ColumnElement[datetime]:
        """`now` for a statement built once: the server's ``now()``, or a ``p_now`` parameter."""
        if self.server_clock:
            return func.now()
        return bindparam("p_now", type_=UTCDateTime())

    def _later_param(self, name: str) -> ColumnElement[datetime]:
        """``now + seconds`` for a statement built once: the value comes from `_later_value`."""
        if self.server_clock:
            later: ColumnElement[datetime] = func.now() + bindparam(name, type_=Interval())
            return later
        return bindparam(name, type_=UTCDateTime())

    def _later_value(self, seconds: float) -> datetime | timedelta:
        """The parameter value of a `_later_param`."""
        delta = timedelta(seconds=seconds)
        return delta if self.server_clock else self.clock.now() + delta

    def _now_value(self) -> dict[str, datetime]:
        """The ``p_now`` parameter, when the statement needs one."""
        return {} if self.server_clock else {"p_now": self.clock.now()}

    def current_time(self) -> datetime:
        """The time the store schedules by, read now."""
        if not self.server_clock:
            return self.clock.now()
        now: datetime = self._single(lambda c: c.execute(select(func.now())).scalar_one())
        return now

    # -- schema ------------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply the pending migrations; returns the versions applied now. Idempotent."""
        from .._migrate import apply_migrations

        return apply_migrations(self)

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

    def scan(self, machines: Sequence[str], statuses: Sequence[str],
             batch: int = 500) -> Iterator[Any]:
        """Every workflow row of `machines` in `statuses`, in batches (for checks over the whole
        table without holding a long transaction)."""
        after: uuid.UUID | None = None
        while True:
            stmt = (select(w).where(w.c.machine.in_(machines), w.c.status.in_(statuses))
                    .order_by(w.c.id).limit(batch))
            if after is not None:
                stmt = stmt.where(w.c.id > after)
            rows: list[Any] = self._single(partial(_all_rows, stmt))
            yield from rows
            if len(rows) < batch:
                return
            after = rows[-1].id

    def pending_events_of(self, machines: Sequence[str]) -> list[Any]:
        """Pending events of workflows of `machines` (for checks)."""
        stmt = (select(ev.c.id, ev.c.workflow_id, ev.c.type, ev.c.data, w.c.machine)
                .join(w, w.c.id == ev.c.workflow_id)
                .where(ev.c.status == "pending", w.c.machine.in_(machines)))
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


def _all_rows(stmt: Any, conn: Connection) -> list[Any]:
    return list(conn.execute(stmt))


def _headline(error: str | None) -> str | None:
    """What `last_error` keeps of an error: its text without the traceback."""
    return None if error is None else error.split("\nTraceback", 1)[0]


def _bind(column: Any, value: Any) -> Any:
    if isinstance(value, ColumnElement):
        return value
    return literal(value, column.type) if value is not None else literal_column("NULL")


def _scalar_int(value: Any) -> int | None:
    return None if value is None else int(value)


