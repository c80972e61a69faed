"""Connecting: engines per backend (SQLite tuned for a worker's threads; server pools that check a
connection before use and replace it after a while). What a driver error means is the classifier's
job (`_store/_faults.py`)."""

from __future__ import annotations

import os
import random
import time
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import NullPool

from .errors import InvalidArgument

__all__ = ["DEFAULT_POOL_RECYCLE", "DEFAULT_URL", "RECYCLE_JITTER", "default_database_url",
           "make_engine"]

# Server connections are replaced after about half an hour (each at its own moment, within
# +-10%, so a pool does not reconnect all at once): a proxy or load balancer that drops idle
# connections, or a failover, then costs a reconnect instead of an error.
DEFAULT_POOL_RECYCLE = 1800.0
RECYCLE_JITTER = 0.1
DEFAULT_URL = "sqlite:///statemachine.db"


def default_database_url() -> str:
    """``STATEMACHINE_DATABASE_URL`` if set, else a SQLite file in the current directory."""
    return os.environ.get("STATEMACHINE_DATABASE_URL") or DEFAULT_URL


def make_engine(url: str, isolation_level: str | None, pool_size: int, *,
                autocommit: bool = False,
                pool_recycle: float | None = DEFAULT_POOL_RECYCLE) -> Engine:
    """An engine for `url`; `isolation_level` becomes the session default on PostgreSQL.
    `autocommit`: connections in autocommit mode from the start, for single statements (set once
    per connection, not on every checkout, and nothing to roll back when one is returned).
    Server pools ping a connection before handing it out (``pool_pre_ping``) and replace one
    older than `pool_recycle` seconds, +-10% (None: never)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise InvalidArgument("statemachine needs a SQLite file (sqlite:///path.db); "
                                  "in-memory databases cannot be shared by a worker's threads")
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
    pool: dict[str, Any] = {"pool_size": pool_size, "max_overflow": pool_size,
                            "pool_pre_ping": True}
    if autocommit:
        pool.update(isolation_level="AUTOCOMMIT", pool_reset_on_return=None)
    engine = create_engine(parsed, **pool)
    if pool_recycle is not None:
        if pool_recycle <= 0:
            raise InvalidArgument(f"pool_recycle must be positive seconds or None, not "
                                  f"{pool_recycle!r}")
        _recycle_with_jitter(engine, pool_recycle)
    return engine


def _recycle_with_jitter(engine: Engine, seconds: float) -> None:
    """Replace each pooled connection once it is older than `seconds` (+-10%, drawn per
    connection). Raising `DisconnectionError` at checkout is SQLAlchemy's documented way to
    make the pool discard a connection and hand out a fresh one."""

    @event.listens_for(engine, "connect")
    def on_connect(_dbapi_conn: Any, record: Any) -> None:
        jitter = 1.0 + random.uniform(-RECYCLE_JITTER, RECYCLE_JITTER)
        record.info["statemachine_recycle_at"] = time.monotonic() + seconds * jitter

    @event.listens_for(engine, "checkout")
    def on_checkout(_dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() >= record.info.get("statemachine_recycle_at", float("inf")):
            raise DisconnectionError("connection older than pool_recycle: replaced")


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
