"""Engines, the one retry loop every statement goes through, and time as SQL.

`Database.run` is the loop: it makes one attempt at a time (a transaction, a single statement,
or a statement on the psycopg fast path), asks the classifier (`_faults.classify`) what a failure
means, and then repeats the attempt (serialization failures; lost connections, for work that is
safe to repeat), settles it by reading back (an ambiguous outcome), or raises a `StoreError`
carrying the SQLSTATE (`DatabaseUnavailable` for a lost connection).
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import psycopg
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Interval,
    bindparam,
    func,
    literal,
    select,
)
from sqlalchemy.exc import DBAPIError

from .._clock import Clock, SystemClock
from .._database import DEFAULT_POOL_RECYCLE, default_database_url, make_engine
from .._redact import RedactOption, Redactor, install_log_redaction
from .._schema import UTCDateTime
from ._fast import FastPath
from ._faults import Fault, classify, interrupt_behind, short_error, store_error

__all__ = ["Database"]

log = logging.getLogger("statemachine.store")
T = TypeVar("T")


class _LostInCommit(Exception):
    """The connection broke while a transaction's COMMIT was on its way: outcome unknown."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class Database:
    """What every statement needs: the engines, the clock, the retry loop, the redaction rules
    and the cache of statements built once."""

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
        autocommit: Engine | None = None
        if isinstance(url, Engine):
            self.engine = url
        else:
            url = url or default_database_url()
            self.engine = make_engine(url, isolation_level, pool_size, pool_recycle=pool_recycle)
            if self.engine.dialect.name != "sqlite":
                autocommit = make_engine(url, isolation_level, pool_size, autocommit=True,
                                         pool_recycle=pool_recycle)
        self.dialect: str = self.engine.dialect.name
        self.is_sqlite = self.dialect == "sqlite"
        self.server_clock = clock is None and not self.is_sqlite
        self.clock: Clock = clock or SystemClock()
        self.max_retries = max_retries
        self.redact = Redactor(redact)
        install_log_redaction(self.redact)
        # Statements built once per shape and reused: SQLAlchemy then skips rebuilding them and
        # recomputing their cache keys on the hot path.
        self.statements: dict[Any, Any] = {}
        self._deltas: dict[float, timedelta] = {}  # seconds -> timedelta, made once
        self.autocommit = autocommit or (
            self.engine if self.is_sqlite
            else self.engine.execution_options(isolation_level="AUTOCOMMIT"))
        fast_engine = self.engine if self.is_sqlite else autocommit
        self.fast_path = (FastPath(fast_engine) if fast_engine is not None
                          and fast_engine.dialect.driver in ("psycopg", "pysqlite") else None)

    @property
    def engines(self) -> tuple[Engine, ...]:
        """Every engine SQL runs on."""
        if self.autocommit is self.engine:
            return (self.engine,)
        return (self.engine, self.autocommit)

    def dispose(self) -> None:
        """Close every pooled connection."""
        if self.fast_path is not None:
            self.fast_path.release_all()
        self.engine.dispose()
        if self.autocommit is not self.engine:
            self.autocommit.dispose()

    # -- the retry loop ----------------------------------------------------------------------

    def run(
        self,
        attempt: Callable[[], T],
        *,
        reconnect: bool = True,
        settle: Callable[[], T] | None = None,
        retry_for: float = 0.0,
    ) -> T:
        """Make `attempt` until it succeeds or a failure is final.

        `reconnect`: a lost connection is retried on a fresh one (the work is safe to repeat);
        without it, a connection lost under a write makes its outcome unknown. `settle`: what to
        do with an unknown outcome (40003, or a connection lost under a write or a COMMIT),
        typically reading back whether it happened; without it, the error is raised.
        `retry_for`: keep retrying serialization failures past `max_retries` for this many
        seconds (the commit of a handler's result: giving up means running the handler again)."""
        give_up = time.monotonic() + retry_for
        tries = 0
        while True:
            try:
                return attempt()
            except (DBAPIError, psycopg.Error, sqlite3.Error, _LostInCommit) as raised:
                interrupt = interrupt_behind(raised)
                if interrupt is not None:
                    raise interrupt from None  # Ctrl-C stays Ctrl-C, never a database error
                error = raised.error if isinstance(raised, _LostInCommit) else raised
                fault = classify(error)
                unknown = fault is Fault.AMBIGUOUS or isinstance(raised, _LostInCommit) or (
                    fault is Fault.CONNECTION and not reconnect)
                if unknown:
                    if settle is None:
                        raise store_error(error, fault) from error
                    log.warning("outcome of a write unknown (%s): reading it back",
                                short_error(error))
                    return settle()
                tries += 1
                again = fault is Fault.RETRY or fault is Fault.CONNECTION
                if not again or (tries > self.max_retries and time.monotonic() >= give_up):
                    raise store_error(error, fault) from error
                if fault is Fault.CONNECTION:
                    # A fresh connection next time: the pool pings what it hands out, and a
                    # server that is restarting needs a moment.
                    delay = min(2.0, 0.05 * 2 ** min(tries, 6))
                    log.info("connection lost (%s): retrying on a fresh one (attempt %d)",
                             short_error(error), tries)
                elif tries > self.max_retries:
                    # Past the usual retries, inside `retry_for`: try often, or the commits that
                    # keep arriving on the contended rows win every time against this one.
                    delay = 0.05
                else:
                    delay = min(1.0, 0.005 * 2 ** min(tries, 8))
                    log.debug("retrying after %s (attempt %d)", short_error(error), tries)
                time.sleep(delay * (0.5 + random.random() / 2))

    # -- one attempt -------------------------------------------------------------------------

    def attempt_transaction(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn` in one fresh transaction (no retry). A connection lost during the COMMIT
        raises `_LostInCommit`: the transaction may or may not have committed."""
        with self.engine.connect() as conn:
            trans = conn.begin()
            try:
                result = fn(conn)
            except BaseException:
                try:
                    trans.rollback()
                except Exception:  # noqa: S110 (the error that matters is re-raised below)
                    pass  # the connection is gone, and the transaction with it
                raise
            try:
                trans.commit()
            except DBAPIError as e:
                if classify(e) is Fault.CONNECTION:
                    raise _LostInCommit(e) from e
                raise
            return result

    def attempt_single(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn`'s one statement as its own transaction (autocommit on servers)."""
        if self.is_sqlite:
            return self.attempt_transaction(fn)
        with self.autocommit.connect() as conn:
            return fn(conn)

    def fast_ok(self) -> bool:
        """Whether the psycopg fast path may run the hot statements now."""
        return self.fast_path is not None and self.fast_path.usable()

    # -- with retries ------------------------------------------------------------------------

    def transaction(self, fn: Callable[[Connection], T], *, retry_for: float = 0.0) -> T:
        """`fn` in a fresh transaction, repeated on a serialization failure or a connection
        lost before the COMMIT (`retry_for`: as for `run`). `fn` must be safe to run again:
        database work only."""
        return self.run(lambda: self.attempt_transaction(fn), retry_for=retry_for)

    def single(self, fn: Callable[[Connection], T]) -> T:
        """One statement, repeated on a serialization failure or a lost connection: for reads
        and writes that are safe to repeat (claims, renewals, releases, idempotent inserts)."""
        return self.run(lambda: self.attempt_single(fn))

    def fast(self, key: Any, stmt: Any, params: dict[str, Any], *, many: bool = False,
             hold: bool = True) -> Any:
        """A statement safe to repeat, on the fast path (see `FastPath.execute`)."""
        assert self.fast_path is not None
        fast = self.fast_path
        return self.run(lambda: fast.execute(key, stmt, params, many=many, hold=hold))

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

    def now_param(self) -> ColumnElement[datetime]:
        """`now` for a statement built once: the server's ``now()``, or a ``p_now`` parameter."""
        if self.server_clock:
            return func.now()
        return bindparam("p_now", type_=UTCDateTime())

    def later_param(self, name: str) -> ColumnElement[datetime]:
        """``now + seconds`` for a statement built once: the value comes from `later_value`."""
        if self.server_clock:
            later: ColumnElement[datetime] = func.now() + bindparam(name, type_=Interval())
            return later
        return bindparam(name, type_=UTCDateTime())

    def later_value(self, seconds: float) -> datetime | timedelta:
        """The parameter value of a `later_param`."""
        delta = self._deltas.get(seconds)
        if delta is None:
            delta = timedelta(seconds=seconds)
            if len(self._deltas) < 256:  # a worker asks for a handful of lease and delay lengths
                self._deltas[seconds] = delta
        return delta if self.server_clock else self.clock.now() + delta

    def now_value(self) -> dict[str, datetime]:
        """The ``p_now`` parameter, when the statement needs one."""
        return {} if self.server_clock else {"p_now": self.clock.now()}

    def current_time(self) -> datetime:
        """The time the store schedules by, read now."""
        if not self.server_clock:
            return self.clock.now()
        now: datetime = self.single(lambda c: c.execute(select(func.now())).scalar_one())
        return now
