"""Connecting: engines per backend (SQLite tuned for a worker's threads; server pools that check a
connection before use and replace it after a while). What a driver error means is the classifier's
job (`_store/_faults.py`).

CockroachDB: ``cockroachdb://`` means the psycopg driver (``cockroachdb+psycopg://``); a
``postgresql://`` URL whose server turns out to be CockroachDB fails at its first connection with
an error naming the URL to write instead; a requested isolation level is set on every new
CockroachDB connection and read back, so a cluster that silently runs another level (READ
COMMITTED disabled by ``sql.txn.read_committed_isolation.enabled``) is an error, not a surprise."""

from __future__ import annotations

import os
import random
import time
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import NullPool

from .errors import InvalidArgument

__all__ = ["DEFAULT_POOL_RECYCLE", "DEFAULT_URL", "RECYCLE_JITTER", "check_isolation",
           "check_server",
           "default_database_url", "is_cockroach_version", "make_engine"]

# Server connections are replaced after about half an hour (each at its own moment, within
# +-10%, so a pool does not reconnect all at once): a proxy or load balancer that drops idle
# connections, or a failover, then costs a reconnect instead of an error.
DEFAULT_POOL_RECYCLE = 1800.0
RECYCLE_JITTER = 0.1
DEFAULT_URL = "sqlite:///statemachine.db"
_ISOLATION_LEVELS = frozenset({"serializable", "repeatable read", "read committed"})


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
    if isolation_level is not None and \
            isolation_level.lower().replace("_", " ") not in _ISOLATION_LEVELS:
        raise InvalidArgument(f"isolation_level {isolation_level!r}: expected one of "
                              f"{', '.join(sorted(lv.upper() for lv in _ISOLATION_LEVELS))}")
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
    if parsed.drivername == "cockroachdb":  # the dialect's own default is psycopg2
        parsed = parsed.set(drivername="cockroachdb+psycopg")
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
    _check_server_on_connect(engine, parsed, isolation_level)
    if pool_recycle is not None:
        if pool_recycle <= 0:
            raise InvalidArgument(f"pool_recycle must be positive seconds or None, not "
                                  f"{pool_recycle!r}")
        _recycle_with_jitter(engine, pool_recycle)
    return engine


def is_cockroach_version(version: str) -> bool:
    """Whether `version` (what ``SELECT version()`` answers) is a CockroachDB server's:
    ``CockroachDB CCL v24.1.5 (x86_64-pc-linux-gnu, ...)``, not ``PostgreSQL 15.4 ...``."""
    return version.lstrip().startswith("CockroachDB")


def check_server(url: URL, version: str) -> None:
    """`InvalidArgument` when a PostgreSQL-dialect `url` reached a CockroachDB server (whose
    ``version()`` is `version`): the PostgreSQL dialect cannot read CockroachDB's version and
    catalogs, so say which URL to write instead of failing deep inside SQLAlchemy."""
    if url.get_backend_name() == "postgresql" and is_cockroach_version(version):
        driver = url.get_driver_name() or "psycopg"
        wanted = url.set(drivername=f"cockroachdb+{driver}")
        raise InvalidArgument(
            f"{url.render_as_string(hide_password=True)} reaches a CockroachDB server "
            f"({version.split('(')[0].strip()}): write "
            f"{wanted.render_as_string(hide_password=True)} instead (the postgresql:// dialect "
            "cannot talk to CockroachDB)")


def check_isolation(asked: str, got: str) -> None:
    """`InvalidArgument` unless the session runs the isolation level asked for: CockroachDB
    accepts ``SET default_transaction_isolation = 'read committed'`` and runs SERIALIZABLE when
    the cluster has READ COMMITTED disabled."""
    if got.strip().lower() != asked.strip().lower().replace("_", " "):
        raise InvalidArgument(
            f"isolation_level {asked.upper()!r} was asked for, but the server runs "
            f"{got.upper()!r} (on CockroachDB, READ COMMITTED needs the cluster setting "
            "sql.txn.read_committed_isolation.enabled = true)")


def _check_server_on_connect(engine: Engine, url: URL, isolation_level: str | None) -> None:
    """Before SQLAlchemy's own first-connection set-up (which fails with a bare AssertionError
    on CockroachDB's version string): check the server fits the URL, once per engine; on
    CockroachDB URLs, set `isolation_level` as the session default of every new connection and
    read it back."""
    cockroach = url.get_backend_name() == "cockroachdb"
    if not cockroach and url.get_backend_name() != "postgresql":
        return
    checked = False
    level = isolation_level.lower().replace("_", " ") if isolation_level else None

    @event.listens_for(engine, "connect", insert=True)
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        nonlocal checked
        if checked and not (cockroach and level):
            return
        with dbapi_conn.cursor() as cur:
            if not checked:
                cur.execute("SELECT version()")
                check_server(url, str(cur.fetchone()[0]))
            if cockroach and level:
                cur.execute(f"SET default_transaction_isolation = '{level}'")
                cur.execute("SHOW default_transaction_isolation")
                check_isolation(level, str(cur.fetchone()[0]))
        if not dbapi_conn.autocommit:
            dbapi_conn.commit()
        checked = True


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

    @event.listens_for(engine, "handle_error")
    def on_error(ctx: ExceptionContext) -> None:
        # An interrupt (Ctrl-C) inside a statement makes SQLAlchemy close the connection, but a
        # sqlite3 connection closed with a statement still unfinished (its cursor lives on in
        # the interrupt's traceback until the garbage collector runs) keeps its transaction and
        # the write lock: every other connection's BEGIN IMMEDIATE would wait for it. End both
        # first.
        if isinstance(ctx.original_exception, Exception) or ctx.connection is None:
            return
        try:
            if ctx.execution_context is not None:
                ctx.execution_context.cursor.close()
            ctx.connection.connection.driver_connection.rollback()  # type: ignore[union-attr]
        except Exception:  # noqa: S110 (the interrupt is what the caller must see)
            pass
