"""The database behind the engine: `Store`, and every SQL statement statemachine runs.

One module, one concern: `_connections` (engines, the one retry loop, time as SQL), `_faults`
(the classifier of driver errors), `_fast` (the psycopg fast path), `_decode` (rows written by
hand), and the statement groups `_workflows` (start, claim, commit), `_grouped` (many commits in
one statement), `_waiting` (events, children, cancellation), `_limits` (rate limits and
schedules), `_reads`; `_statements` composes
them into the object reached as ``store.sql``.

The contract (see DESIGN.md section 3):

* **claim**: one statement (PostgreSQL/CockroachDB) takes a batch of due rows with
  ``FOR UPDATE SKIP LOCKED`` and rewrites their lease; on SQLite one ``BEGIN IMMEDIATE``
  transaction does the same under SQLite's single write lock.
* **commit**: a compare-and-set on ``(id, version, lease_token)`` that writes the next row and
  appends its history row atomically (one CTE statement on servers), checked through
  ``RETURNING``; an unknown outcome is read back.
* **times**: leases and timers use the database clock (``now()``) on servers, unless the store was
  given an explicit clock (tests move a fake one); SQLite always uses the process clock.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from types import TracebackType
from typing import Self, TypeVar

from sqlalchemy import Connection, Engine

from .._clock import Clock
from .._database import DEFAULT_POOL_RECYCLE, default_database_url
from .._records import Change, ChildStart, ClaimedRow, Committed
from .._redact import RedactOption
from ._connections import Database
from ._decode import StoredRow
from ._statements import Statements

__all__ = ["Change", "ChildStart", "ClaimedRow", "Committed", "Store", "StoredRow",
           "default_database_url"]

T = TypeVar("T")


class Store:
    """The database statemachine keeps workflows in.

    ``Store(url)`` for a SQLAlchemy URL (``sqlite:///file.db``, ``postgresql+psycopg://...``,
    ``cockroachdb+psycopg://...``) or an engine; ``migrate()`` creates or upgrades the tables;
    ``with Store(url) as store:`` closes its connections at the end. The engine's own statements
    live on `sql` (internal)."""

    def __init__(
        self,
        url: str | Engine | None = None,
        *,
        clock: Clock | None = None,
        isolation_level: str | None = None,
        pool_size: int = 10,
        max_retries: int = 10,
        pool_recycle: float | None = DEFAULT_POOL_RECYCLE,
        redact: RedactOption = None,
    ) -> None:
        """`url`: a URL or an engine (default: ``STATEMACHINE_DATABASE_URL``, else a SQLite
        file ``statemachine.db``). `clock`: force a clock (tests); by default servers use their
        own ``now()``. `isolation_level`: e.g. ``"SERIALIZABLE"`` for every transaction on
        PostgreSQL. `pool_size`: connections per pool. `max_retries`: how often a transaction is
        repeated after a serialization failure or a lost connection. `pool_recycle`: seconds
        after which a server connection is replaced (each within +-10%; None: never).
        `redact`: extra rules for masking secrets in the error text the store writes and the
        engine logs: regular expressions (their matches, or first groups, are masked) or a
        function ``str -> str`` applied after the built-in rules."""
        self._db = Database(url, clock=clock, isolation_level=isolation_level,
                            pool_size=pool_size, max_retries=max_retries,
                            pool_recycle=pool_recycle, redact=redact)
        self.engine: Engine = self._db.engine
        self.dialect: str = self._db.dialect
        self.is_sqlite: bool = self._db.is_sqlite
        self.clock: Clock = self._db.clock
        self.sql = Statements(self._db)
        if not isinstance(url, Engine):
            # A store dropped without `dispose()` closes its connections when it is collected,
            # rather than leaving them to the garbage collector one by one (unclosed).
            weakref.finalize(self, self._db.dispose).atexit = False

    @property
    def engines(self) -> tuple[Engine, ...]:
        """Every engine the store runs SQL on (transactions, and single autocommit statements):
        attach event listeners (SQL logging, statement counts) to each."""
        return self._db.engines

    def migrate(self) -> list[str]:
        """Apply the pending migrations; returns the versions applied now. Safe to run from
        many processes at once, and again after an interrupted run."""
        from .._migrate import apply_migrations

        return apply_migrations(self)

    def transaction(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn` in a fresh transaction, retrying the whole of it on a serialization failure
        (SQLSTATE 40001/40P01, or SQLite busy), or on a connection lost before the COMMIT, with
        capped exponential backoff and jitter. `fn` must be safe to run again: database work
        only, no outside I/O. A connection lost during the COMMIT raises `DatabaseUnavailable`
        (the outcome is unknown)."""
        return self._db.transaction(fn)

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A plain connection, for tests and tools that run their own SQL."""
        with self.engine.connect() as conn:
            yield conn

    def current_time(self) -> datetime:
        """The time the store schedules by, read now (the server's clock on servers)."""
        return self._db.current_time()

    def dispose(self) -> None:
        """Close every pooled connection (the store can still be used: it reconnects)."""
        self._db.dispose()

    def close(self) -> None:
        """Close every pooled connection."""
        self._db.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)!r})"
