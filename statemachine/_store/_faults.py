"""The one classifier of driver errors: what a failure of the database means for the caller.

Every path of the store (the transaction wrapper, single statements, the psycopg fast path, the
commit's read-back) asks `classify` and acts on its answer; the SQLSTATE tables live here only.

* `Fault.RETRY`: run the whole transaction again (serialization failure 40001, deadlock 40P01,
  SQLite busy or locked).
* `Fault.AMBIGUOUS`: the outcome of a COMMIT is unknown (40003, CockroachDB): read back.
* `Fault.REFUSED`: the data itself was refused (SQLSTATE class 22 data exception, class 23
  integrity constraint; SQLite's IntegrityError): running it again meets the same refusal.
* `Fault.CONNECTION`: the connection is lost or the server unreachable (class 08, 57P01-57P03,
  a closed or broken psycopg connection, SQLAlchemy's ``connection_invalidated``): safe work is
  repeated on a fresh connection.
* `Fault.OTHER`: anything else (a syntax error, a missing table): raised at once.

An error raised while an interrupt (Ctrl-C, `SystemExit`) was unwinding is not a database
failure at all: `interrupt_behind` finds the interrupt, which the store raises in its place.
"""

from __future__ import annotations

import enum
import sqlite3

import psycopg
from sqlalchemy.exc import DBAPIError

from ..errors import DatabaseUnavailable, StoreError

__all__ = ["AMBIGUOUS_SQLSTATES", "CONNECTION_SQLSTATES", "LOST_CONNECTION_SQLSTATE",
           "REFUSED_CLASSES", "RETRY_SQLSTATES", "SQLITE_INTEGRITY_SQLSTATE", "Fault",
           "classify", "driver_error", "interrupt_behind", "is_retryable", "refused_by_data",
           "short_error", "sqlstate_of", "store_error"]

RETRY_SQLSTATES = frozenset({"40001", "40P01"})
AMBIGUOUS_SQLSTATES = frozenset({"40003"})
# Class 08 (connection exception) is matched by its prefix; these are the server going away.
CONNECTION_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})
REFUSED_CLASSES = frozenset({"22", "23"})
# What a StoreError carries when the driver gives no SQLSTATE: SQLite's integrity errors, and a
# connection that broke without the server saying why (08006: connection failure).
SQLITE_INTEGRITY_SQLSTATE = "23000"
LOST_CONNECTION_SQLSTATE = "08006"


class Fault(enum.Enum):
    """What a driver error means for the work that met it."""

    RETRY = "retry"
    AMBIGUOUS = "ambiguous"
    REFUSED = "refused"
    CONNECTION = "connection"
    OTHER = "other"


def driver_error(error: BaseException) -> BaseException:
    """The DBAPI error under a SQLAlchemy error (or the error itself)."""
    if isinstance(error, DBAPIError) and error.orig is not None:
        return error.orig
    if isinstance(error, StoreError) and error.__cause__ is not None:
        return driver_error(error.__cause__)
    return error


def sqlstate_of(error: BaseException) -> str | None:
    """The SQLSTATE the server reported for `error`, if any."""
    state = getattr(driver_error(error), "sqlstate", None)
    return str(state) if state else None


def classify(error: BaseException) -> Fault:
    """What `error` (a SQLAlchemy error, a psycopg or sqlite3 error) means: see the module."""
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return Fault.CONNECTION
    orig = driver_error(error)
    state = sqlstate_of(orig)
    if state is not None:
        if state in RETRY_SQLSTATES:
            return Fault.RETRY
        if state in AMBIGUOUS_SQLSTATES:
            return Fault.AMBIGUOUS
        if state.startswith("08") or state in CONNECTION_SQLSTATES:
            return Fault.CONNECTION
        if state[:2] in REFUSED_CLASSES:
            return Fault.REFUSED
        return Fault.OTHER
    if isinstance(orig, psycopg.Error):
        # psycopg reports a dropped or refused connection as an OperationalError (or an
        # InterfaceError on a closed one) without a SQLSTATE: the server never answered.
        if isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError):
            return Fault.CONNECTION
        return Fault.OTHER
    if isinstance(orig, sqlite3.Error):
        if isinstance(orig, sqlite3.IntegrityError):
            return Fault.REFUSED
        name = getattr(orig, "sqlite_errorname", "")
        if name in ("SQLITE_BUSY", "SQLITE_LOCKED") or "database is locked" in str(orig):
            return Fault.RETRY
        return Fault.OTHER
    return Fault.OTHER


def interrupt_behind(error: BaseException) -> BaseException | None:
    """The interrupt (`KeyboardInterrupt` or `SystemExit`) `error` was raised while handling,
    if any. An interrupt that lands while a statement is on its way leaves the connection
    mid-query, and clean-up that then touches it fails in the interrupt's place (SQLAlchemy's
    pre-ping restoring psycopg's autocommit: "can't change 'autocommit' now")."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt | SystemExit):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def is_retryable(error: BaseException) -> bool:
    """Whether `error` means "run the transaction again" (`Fault.RETRY`)."""
    return classify(error) is Fault.RETRY


def refused_by_data(error: BaseException) -> bool:
    """Whether the database refused the data itself (`Fault.REFUSED`), for a driver error or a
    `StoreError` raised for one."""
    if isinstance(error, StoreError) and error.sqlstate is not None:
        return error.sqlstate[:2] in REFUSED_CLASSES
    return classify(error) is Fault.REFUSED


def short_error(error: BaseException) -> str:
    """The first line of the driver's message."""
    text = str(driver_error(error)).strip()
    return text.splitlines()[0] if text else type(driver_error(error)).__name__


def store_error(error: BaseException, fault: Fault | None = None, *,
                prefix: str = "database error") -> StoreError:
    """The `StoreError` to raise for a driver error (the caller raises it ``from error``):
    `DatabaseUnavailable` for a lost connection; `sqlstate` always set where one applies."""
    fault = classify(error) if fault is None else fault
    state = sqlstate_of(error)
    message = f"{prefix}: {short_error(error)}"
    if fault is Fault.CONNECTION:
        return DatabaseUnavailable(message, sqlstate=state or LOST_CONNECTION_SQLSTATE)
    if fault is Fault.REFUSED and state is None:
        state = SQLITE_INTEGRITY_SQLSTATE
    return StoreError(message, sqlstate=state)
