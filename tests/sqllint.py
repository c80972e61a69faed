"""A SQL lint that knows CockroachDB, run over every statement the library sends in the suite.

`lint(sql, dialect)` names what a statement does that CockroachDB lacks or handles badly:
its unsupported list (advisory locks, LISTEN/NOTIFY, LOCK TABLE, sequences, temporary tables,
triggers, stored procedures, ctid/xmin, jsonb_path_ops, exclusion constraints, rules, table
inheritance, deferrable constraints, extensions, VACUUM/CLUSTER, tablespaces), ``clock_timestamp()``
(node clocks differ by up to 500 ms: never order or window by it), ``ADD COLUMN`` without
``IF NOT EXISTS``, DDL and DML in one statement, and one statement modifying a table twice
(CockroachDB refuses that unless ``sql.multiple_modifications_of_table.enabled``).

`install()` (called once per test process by tests/conftest.py) hooks every SQLAlchemy engine:
each statement sent *by the library* (its nearest caller outside SQLAlchemy and the driver is in
the `statemachine` package) is linted, and so is each transaction (DDL and DML in one transaction
is what CockroachDB cannot run atomically); the autouse fixture `sql_lint` fails the test during
which a bad one was sent. Statements a test sends itself (fault-injection triggers, PL/pgSQL
``DO`` blocks, set-up by plain SQL) are scaffolding, not what reaches production, and are not
linted. Statements sent by other processes (worker processes, the CLI run as a command) are the
same library code and are linted where the suite runs it in-process.

`KNOWN` lists the violations the library still has, each with the issue item that removes it: a
rule is never weakened to let code through.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import sys
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import psycopg.crdb
from sqlalchemy import event
from sqlalchemy.engine import Engine

__all__ = ["KNOWN", "UNSUPPORTED", "collected", "install", "lint"]

UNSUPPORTED: dict[str, str] = {
    r"\bpg_(try_)?advisory": "advisory locks (CockroachDB stubs some as silent no-ops)",
    r"\b(UN)?LISTEN\b|\bNOTIFY\b|\bpg_notify\b": "LISTEN/NOTIFY",
    r"\bLOCK\s+(TABLE\s+)?\w+": "LOCK TABLE",
    r"\b(SMALL|BIG)?SERIAL\b|\bnextval\s*\(|\bcurrval\s*\(|\bCREATE\s+SEQUENCE\b":
        "SERIAL/sequences (not consecutive on CockroachDB, and a hot row)",
    r"\bCREATE\s+(GLOBAL\s+|LOCAL\s+)?TEMP(ORARY)?\b": "temporary tables",
    r"\bCREATE\s+(OR\s+REPLACE\s+)?(CONSTRAINT\s+)?TRIGGER\b": "triggers",
    r"\bCREATE\s+(OR\s+REPLACE\s+)?(FUNCTION|PROCEDURE)\b|\bDO\s+\$": "stored procedures",
    r"\bctid\b|\bxmin\b": "ctid/xmin system columns",
    r"\bjsonb_path_ops\b": "jsonb_path_ops",
    r"\bEXCLUDE\s+USING\b": "exclusion constraints",
    r"\bCREATE\s+(OR\s+REPLACE\s+)?RULE\b": "rules",
    r"\bINHERITS\s*\(": "table inheritance",
    r"\bDEFERRABLE\b": "deferrable constraints",
    r"\bCREATE\s+EXTENSION\b": "extensions",
    r"^\s*(VACUUM|CLUSTER)\b": "VACUUM/CLUSTER",
    r"\bTABLESPACE\b": "tablespaces",
    r"\bclock_timestamp\s*\(": "clock_timestamp() (node clocks differ by up to 500 ms: never "
                               "order or window by it)",
}

# Statements the library still sends that break a rule, each until the item that removes it.
# (pattern of the statement, rule it breaks, why it is still there)
KNOWN: list[tuple[str, str, str]] = [
    # Only a row inserted by plain SQL takes this default; the library sets created_at itself and
    # orders events by their per-workflow seq (issue 10 item 4). Changing a column default would
    # take an ALTER the migration rules do not allow.
    (r"^CREATE TABLE IF NOT EXISTS sm_events .*DEFAULT clock_timestamp\(\)", "clock_timestamp()",
     "migration 0002's default for sm_events.created_at (plain-SQL inserts only)"),
    # The rate-limit window's stamp must be read after the key's row lock is held (now() would be
    # the transaction's start); stamps are kept monotonic per key, so no window goes out of order.
    (r"^SELECT clock_timestamp\(\) AS clock_timestamp_1$", "clock_timestamp()",
     "the rate-limit window's stamp: read after the row lock, kept monotonic per key"),
]

_DDL = re.compile(r"^\s*(CREATE|ALTER|DROP|TRUNCATE|COMMENT\s+ON)\b", re.I)
_DML = re.compile(r"^\s*(WITH\b.*\b(INSERT|UPDATE|DELETE)\b|INSERT|UPDATE|DELETE|UPSERT)\b",
                  re.I | re.S)
_MODIFIED = re.compile(r"(?<!FOR )(?<!DO )\bUPDATE\s+(\w+)|\bINSERT\s+INTO\s+(\w+)|"
                       r"\bDELETE\s+FROM\s+(\w+)|\bUPSERT\s+INTO\s+(\w+)", re.I)


def _flat(sql: str) -> str:
    return " ".join(sql.split())


def _parts(sql: str) -> list[str]:
    """The statements of a string that may hold several (``;``-separated, outside quotes)."""
    parts, current, quoted = [], [], False
    for ch in sql:
        if ch == "'":
            quoted = not quoted
        if ch == ";" and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def lint(sql: str, dialect: str = "postgresql") -> list[str]:
    """What `sql` does that CockroachDB does not support or runs badly (empty when fine).
    `dialect`: the dialect it is sent to; on ``sqlite`` only the rules about statement shape
    apply (SQLite's own SQL never reaches CockroachDB, and it has no ADD COLUMN IF NOT EXISTS).
    """
    flat = _flat(sql)
    found: list[str] = []
    if dialect != "sqlite":
        found += [why for pattern, why in UNSUPPORTED.items()
                  if re.search(pattern, flat, re.IGNORECASE)]
        if re.search(r"\bADD\s+COLUMN\b(?!\s+IF\s+NOT\s+EXISTS\b)", flat, re.I):
            found.append("ADD COLUMN without IF NOT EXISTS (a migration must be safe to repeat)")
    parts = _parts(sql)
    if any(_DDL.match(p) for p in parts) and any(_DML.match(p) for p in parts):
        found.append("DDL and DML in one statement (CockroachDB runs DDL in a transaction of "
                     "its own)")
    for part in parts:
        tables = [next(t for t in m.groups() if t).lower() for m in _MODIFIED.finditer(
            _flat(part))]
        twice = sorted({t for t in tables if tables.count(t) > 1})
        if twice:
            found.append(f"modifies {', '.join(twice)} twice in one statement (CockroachDB "
                         "refuses that by default)")
    return [why for why in found if not _known(flat, why)]


def _known(flat: str, why: str) -> bool:
    return any(why.startswith(rule) and re.search(pattern, flat, re.I | re.S)
               for pattern, rule, _ in KNOWN)


# -- the session-wide hook -----------------------------------------------------------------------

_LIBRARY = str(Path(__file__).resolve().parent.parent / "statemachine") + "/"
_PASS_THROUGH = ("/sqlalchemy/", "/psycopg/", "/sqlalchemy_cockroachdb/", "/contextlib.py",
                 "/threading.py", "/concurrent/", "/tests/sqllint.py")
_lock = threading.Lock()
_found: list[str] = []


def _from_library() -> bool:
    """Whether the statement being sent comes from the library: its nearest caller outside
    SQLAlchemy, the driver and the standard library's plumbing is in `statemachine/`."""
    frame: Any = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(_LIBRARY):
            return True
        if not any(p in name for p in _PASS_THROUGH):
            return False
        frame = frame.f_back
    return False


def _kind(sql: str) -> str | None:
    if _DDL.match(sql):
        return "ddl"
    if _DML.match(sql):
        return "dml"
    return None


def _check(statement: str, dialect: str, transaction: set[str] | None) -> None:
    """Lint one statement the library sends; `transaction`: the kinds of statement (ddl, dml)
    its transaction has sent so far (None in autocommit: each statement is its own)."""
    problems = lint(statement, dialect)
    kind = _kind(statement)
    if kind is not None and transaction is not None:
        transaction.add(kind)
        if transaction == {"ddl", "dml"} and not _known(_flat(statement), "DDL and DML"):
            problems.append("DDL and DML in one transaction (CockroachDB runs DDL in a "
                            "transaction of its own)")
    if problems:
        with _lock:
            _found.extend(f"{p} ({dialect}): {_flat(statement)[:300]}" for p in problems)


# psycopg: every statement goes through Cursor.execute/executemany, SQLAlchemy's and the fast
# path's alike (an SQLAlchemy cursor listener would turn the fast path off: see _fast.py).
_transactions: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def _psycopg_statement(cursor: Any, query: Any) -> None:
    if not _from_library():
        return
    conn = cursor.connection
    sql = query if isinstance(query, str) else (
        query.decode() if isinstance(query, bytes) else query.as_string(conn))
    dialect = "cockroachdb" if isinstance(conn, psycopg.crdb.CrdbConnection) else "postgresql"
    transaction = None
    if not conn.autocommit:
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            _transactions[conn] = set()  # this statement begins a transaction
        transaction = _transactions.setdefault(conn, set())
    _check(sql, dialect, transaction)


def _wrap(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def linted(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        _psycopg_statement(self, query)
        return method(self, query, *args, **kwargs)

    return linted


# SQLite: each sqlite3 connection's trace callback, which sees every statement run on it,
# SQLAlchemy's and the fast path's alike (a cursor event listener would turn the fast path off).
_BEGIN = re.compile(r"^\s*BEGIN\b", re.IGNORECASE)
_END = re.compile(r"^\s*(COMMIT|ROLLBACK|END)\b", re.IGNORECASE)


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    if not isinstance(dbapi_conn, sqlite3.Connection):
        return
    transaction: set[str] | None = None  # kinds sent since BEGIN (None: autocommit)

    def trace(statement: str) -> None:
        nonlocal transaction
        if _BEGIN.match(statement):
            transaction = set()
        elif _END.match(statement):
            transaction = None
        elif _from_library():
            _check(statement, "sqlite", transaction)

    dbapi_conn.set_trace_callback(trace)


_installed = False


def install() -> None:
    """Lint what this process sends to any database (once per process)."""
    global _installed
    if _installed:
        return
    psycopg.Cursor.execute = _wrap(psycopg.Cursor.execute)  # type: ignore[method-assign]
    psycopg.Cursor.executemany = _wrap(psycopg.Cursor.executemany)  # type: ignore[method-assign]
    event.listen(Engine, "connect", _sqlite_connect)
    _installed = True


def collected() -> list[str]:
    """The violations found since the last call (and forget them)."""
    with _lock:
        found = list(_found)
        _found.clear()
    return found
