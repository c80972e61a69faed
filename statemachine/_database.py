"""Connecting: engines per backend (SQLite tuned for a worker's threads), and which driver errors
mean "run the transaction again"."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from .errors import StoreError

__all__ = ["DEFAULT_URL", "RETRYABLE_SQLSTATES", "default_database_url", "is_retryable",
           "make_engine", "short_error"]

RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
DEFAULT_URL = "sqlite:///statemachine.db"


def default_database_url() -> str:
    """``STATEMACHINE_DATABASE_URL`` if set, else a SQLite file in the current directory."""
    return os.environ.get("STATEMACHINE_DATABASE_URL") or DEFAULT_URL


def is_retryable(e: BaseException) -> bool:
    """Serialization failures and deadlocks (40001/40P01), and SQLite's busy lock: for a
    SQLAlchemy error (its driver error) or a driver error."""
    orig = getattr(e, "orig", e)
    if getattr(orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
        return True
    name = getattr(orig, "sqlite_errorname", "")
    return name in ("SQLITE_BUSY", "SQLITE_LOCKED") or "database is locked" in str(orig)


def short_error(e: DBAPIError) -> str:
    """The first line of the driver's message."""
    text = str(e.orig) if e.orig is not None else str(e)
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def make_engine(url: str, isolation_level: str | None, pool_size: int, *,
                autocommit: bool = False) -> Engine:
    """An engine for `url`; `isolation_level` becomes the session default on PostgreSQL.
    `autocommit`: connections in autocommit mode from the start, for single statements (set once
    per connection, not on every checkout, and nothing to roll back when one is returned)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise StoreError("statemachine needs a SQLite file (sqlite:///path.db); in-memory "
                             "databases cannot be shared by a worker's threads")
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30},
                               poolclass=NullPool if pool_size == 0 else None)
        _configure_sqlite(engine)
        return engine
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if isolation_level and parsed.get_backend_name() == "postgresql":
        # Set as the session default so single-statement (autocommit) work runs at it too.
        # libpq keeps quotes in `options` literally; a space in a value is escaped instead.
        level = isolation_level.lower().replace("_", " ").replace(" ", "\\ ")
        options = " ".join(filter(None, [str(parsed.query.get("options", "")),
                                         f"-c default_transaction_isolation={level}"]))
        parsed = parsed.update_query_dict({"options": options})
    if autocommit:
        return create_engine(parsed, pool_size=pool_size, max_overflow=pool_size,
                             isolation_level="AUTOCOMMIT", pool_reset_on_return=None)
    return create_engine(parsed, pool_size=pool_size, max_overflow=pool_size)


def _configure_sqlite(engine: Engine) -> None:
    """WAL for concurrent readers, and BEGIN IMMEDIATE so a transaction takes the write lock up
    front (a deferred one could fail to upgrade its lock half way, which retries cannot fix)."""

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
