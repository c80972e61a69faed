"""The fast path: the hot statements (start, claim, commit) sent straight on the driver's
connection (psycopg, or sqlite3), skipping SQLAlchemy's per-execute work (the larger part of a
transition's CPU).

A statement is compiled once per shape into a `_Plan`: its SQL with positional placeholders, the
order its parameters go in, the bind processor SQLAlchemy itself would apply to each (obtained
through public APIs only: the compiled statement's ``binds`` and each type's
``dialect_impl(dialect).bind_processor(dialect)``), and the values that are the same on every call
(literals) converted once. `tests/integration/test_fast_path.py` checks that the SQL and
parameters sent this way equal what SQLAlchemy sends for the same statement, so a change in
SQLAlchemy fails that test loudly.

Each thread that sends fast statements keeps one pooled connection checked out for itself (up to
the pool's size; past that, threads check one out per statement): no pool round trip and no
pre-ping per statement. A held connection goes back to the pool after `HOLD_SECONDS`, so the
pool's ping and recycling still reach it, and when its thread has ended.

On SQLite, whose commit is a transaction of two statements, `transaction` runs several
statements between ``BEGIN IMMEDIATE`` and ``COMMIT`` on the thread's connection.

Only one attempt is made here; the store's retry loop (`_connections.Database.run`) decides
what a failure means. A connection is discarded only when it is broken (a lost server), never
for an error the server answered with (a 40001, or SQLite's busy, leaves it healthy and pooled).
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine
from sqlalchemy.pool import PoolProxiedConnection

from ._faults import interrupt_behind

__all__ = ["HOLD_SECONDS", "FastPath", "Send", "sql_literal", "sqlalchemy_send"]

# How long a thread keeps its connection before giving it back to the pool (which pings and
# recycles what it hands out).
HOLD_SECONDS = 60.0

_NAMED = re.compile(r"%\((\w+)\)s")
# Errors the database answered with, leaving the connection usable.
_DRIVER_ERRORS = (psycopg.Error, sqlite3.Error)

# `send(key, stmt, params, many=False, decode=False)`: one statement of a `FastPath.transaction`
# (its first row, or with `many` all of them, decoded by SQLAlchemy's result processors with
# `decode`).
Send = Callable[..., Any]


class _Plan:
    """One statement's SQL and how to turn the caller's parameters into the driver's."""

    __slots__ = ("_slots", "constants", "inlined", "names", "outputs", "positional",
                 "processors", "sql")

    def __init__(self, stmt: Any, engine: Engine) -> None:
        dialect = engine.dialect
        compiled = stmt.compile(dialect=dialect)
        self.sql: str = compiled.string
        self.processors: dict[str, Callable[[Any], Any] | None] = {}
        self.constants: dict[str, Any] = {}
        sqlite = dialect.name == "sqlite"
        for name, bind in compiled.binds.items():
            # statemachine's own types on SQLite: one call a value, not SQLAlchemy's chain of
            # three (a test checks the two agree).
            direct = getattr(bind.type, "sqlite_text", None) if sqlite else None
            process = direct or bind.type.dialect_impl(dialect).bind_processor(dialect)
            self.processors[name] = process
            if not bind.required and bind.callable is None:
                value = bind.value
                self.constants[name] = value if process is None else process(value)
        # Constants written into the SQL as literals (servers): fewer parameters to send.
        self.inlined: dict[str, str] = {}
        if dialect.paramstyle == "qmark":  # sqlite3: one ``?`` per use, in order
            self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
            self.positional: str = self.sql
        else:
            for name, value in self.constants.items():
                text = sql_literal(value)
                if text is not None:
                    self.inlined[name] = text
            # Each name once, in order of first use: the n-th is the server-side parameter $n (a
            # name used twice is sent once).
            self.names = tuple(n for n in dict.fromkeys(_NAMED.findall(self.sql))
                               if n not in self.inlined)
            number = {name: f"${n}" for n, name in enumerate(self.names, 1)}
            number.update(self.inlined)
            self.positional = _NAMED.sub(lambda m: number[m.group(1)],
                                         self.sql.replace("%%", "%"))
        # A SELECT's result processors, one per column (see `decode`).
        self.outputs: tuple[Callable[[Any], Any] | None, ...] = tuple(
            c.type.dialect_impl(dialect).result_processor(dialect, None)
            for c in getattr(stmt, "selected_columns", ()))
        # Per parameter: (name, processor) for a value the caller gives, or (None, the value).
        self._slots: tuple[tuple[str | None, Any], ...] = tuple(
            (None, self.constants[n]) if n in self.constants else (n, self.processors.get(n))
            for n in self.names)

    def decode(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """A SELECT's row as SQLAlchemy would return it (each column's result processor
        applied: on SQLite, text to UUIDs and aware datetimes)."""
        return tuple(v if f is None or v is None else f(v)
                     for f, v in zip(self.outputs, row, strict=True))

    def values(self, params: dict[str, Any]) -> dict[str, Any]:
        """The driver-ready parameters by name."""
        return dict(zip(self.names, self.sequence(params), strict=True))

    def sequence(self, params: dict[str, Any]) -> list[Any]:
        """The driver-ready parameters in placeholder order."""
        return [how if name is None else params[name] if how is None else how(params[name])
                for name, how in self._slots]


class FastPath:
    """Prebuilt statements run on raw driver connections: an autocommit engine's psycopg ones,
    or a SQLite engine's sqlite3 ones (which statemachine runs without implicit transactions)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._plans: dict[Any, _Plan] = {}
        # thread ident -> the thread's held connection
        self._held: dict[int, _Held] = {}
        self._held_lock = threading.Lock()
        size = getattr(engine.pool, "size", None)
        self.max_held: int = size() if callable(size) else 0
        self._begin = "BEGIN IMMEDIATE" if engine.dialect.name == "sqlite" else "BEGIN"

    def usable(self) -> bool:
        """Whether nobody listens for SQL events: a SQL log, a lint or a statement counter must
        see every statement, so while one listens the statements go through SQLAlchemy."""
        dispatch = self.engine.dispatch
        return not dispatch.before_cursor_execute and not dispatch.after_cursor_execute

    def plan(self, key: Any, stmt: Any) -> _Plan:
        """The plan of `stmt`, built once per `key`."""
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _Plan(stmt, self.engine)
        return plan

    def prepare(self, key: Any, stmt: Any, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The SQL string (named placeholders) and the driver-ready parameters of `stmt` with
        `params`: what `execute` sends, in SQLAlchemy's form."""
        plan = self.plan(key, stmt)
        return plan.sql, plan.values(params)

    def execute(self, key: Any, stmt: Any, params: dict[str, Any], *, many: bool = False,
                hold: bool = True) -> Any:
        """Run `stmt` once: the first row (a tuple) or None, or all rows with `many`. Raises the
        driver's error as is, for the retry loop to classify. `hold` False: a thread that holds
        no connection yet does not take one to keep (an application's thread calling the
        client, as opposed to a worker's)."""
        plan = self.plan(key, stmt)
        held = self._connection(hold)
        try:
            result = _send(held.cursor_for(plan), plan, params, many)
        except BaseException as e:
            self._failed(held, e)
            raise
        if not held.kept:
            held.raw.close()
        return result

    def execute_all(self, items: Sequence[tuple[Any, Any, dict[str, Any]]]
                    ) -> list[list[tuple[Any, ...]]]:
        """Run several statements, each given as ``(key, stmt, params)``, in one round trip and
        one transaction (psycopg's pipeline mode: one Sync after the last): every row of each.
        If one fails, none of them happened; raises the driver's error as is, for the retry
        loop to classify. Servers only."""
        held = self._connection()
        driver: Any = held.raw.driver_connection
        try:
            cursors = []
            with driver.pipeline():
                for key, stmt, params in items:
                    plan = self.plan(key, stmt)
                    cursor = held.cursor_for(plan)
                    cursor.execute(plan.positional, plan.sequence(params))
                    cursors.append(cursor)
            result = [c.fetchall() for c in cursors]
        except BaseException as e:
            self._failed(held, e)
            raise
        if not held.kept:
            held.raw.close()
        return result

    def transaction(self, body: Callable[[Send], Any]) -> Any:
        """`body(send)`'s result, its statements sent on this thread's connection in one
        transaction (``BEGIN IMMEDIATE`` on SQLite, ``BEGIN`` on servers): committed when `body`
        returns, rolled back when it raises. Raises the driver's error as is, for the retry loop
        to classify."""
        held = self._connection()
        cursor = held.cursor

        def send(key: Any, stmt: Any, params: dict[str, Any], *, many: bool = False,
                 decode: bool = False) -> Any:
            plan = self.plan(key, stmt)
            return _send(held.cursor_for(plan), plan, params, many, decode=decode)

        try:
            cursor.execute(self._begin)
            try:
                result = body(send)
                cursor.execute("COMMIT")
            except BaseException:
                # (also after a failed COMMIT: SQLite leaves the transaction open then)
                _rollback_quietly(cursor)
                raise
        except BaseException as e:
            self._failed(held, e)
            raise
        if not held.kept:
            held.raw.close()
        return result

    def _failed(self, held: _Held, error: BaseException) -> None:
        """After `error` on `held`: an error the database answered with leaves the connection
        as it is (kept, or back to the pool); a broken one, or one interrupted half way (its
        state unknown), is discarded: so is one whose error came while an interrupt was
        unwinding (see `interrupt_behind`)."""
        if isinstance(error, _DRIVER_ERRORS) and interrupt_behind(error) is None \
                and not is_broken(held.raw.driver_connection):
            if not held.kept:
                held.raw.close()
            return
        self._discard(held)

    def release_all(self) -> None:
        """Give every held connection back to the pool (the store is being disposed of)."""
        with self._held_lock:
            held, self._held = list(self._held.values()), {}
        for h in held:
            _close_quietly(h.raw)

    # -- held connections --------------------------------------------------------------------

    def _connection(self, hold: bool = True) -> _Held:
        """This thread's held connection (taking one if there is room and `hold`), or one
        checked out for this statement only (``kept`` False)."""
        me = threading.current_thread()
        held = self._held.get(me.ident or 0)
        if held is not None:
            # Not `me`: a thread that ended and whose ident this one was given.
            if held.thread is me and time.monotonic() - held.since < HOLD_SECONDS:
                return held
            self._give_back(me)
        raw = self.engine.raw_connection()
        if not hold:
            return _Held(me, raw, kept=False)
        with self._held_lock:
            if len(self._held) >= self.max_held:
                self._sweep_locked()
            if len(self._held) < self.max_held:
                held = self._held[me.ident or 0] = _Held(me, raw, kept=True)
                return held
        return _Held(me, raw, kept=False)

    def _sweep_locked(self) -> None:
        """Give back the connections of threads that have ended."""
        for ident, held in list(self._held.items()):
            if not held.thread.is_alive():
                del self._held[ident]
                _close_quietly(held.raw)

    def _give_back(self, thread: threading.Thread) -> None:
        with self._held_lock:
            held = self._held.pop(thread.ident or 0, None)
        if held is not None:
            _close_quietly(held.raw)

    def _discard(self, held: _Held) -> None:
        """Drop a connection that is broken or in an unknown state."""
        if held.kept:
            with self._held_lock:
                ident = held.thread.ident or 0
                if self._held.get(ident) is held:
                    del self._held[ident]
        held.raw.invalidate()


class _Held:
    """A connection a thread uses, with its cursors: on psycopg one per statement, kept with it
    (a cursor keeps the adapters it found for each parameter and column type only while it
    runs the same query again), on sqlite3 one (which caches statements by their text)."""

    __slots__ = ("_by_plan", "cursor", "kept", "raw", "since", "thread")

    def __init__(self, thread: threading.Thread, raw: PoolProxiedConnection, *,
                 kept: bool) -> None:
        self.thread = thread
        self.raw = raw
        self.kept = kept  # held for the thread, not just for one statement
        self.since = time.monotonic()
        driver = raw.driver_connection
        self.cursor: Any = (driver.cursor() if isinstance(driver, sqlite3.Connection)
                            else psycopg.RawCursor(driver))  # type: ignore[arg-type]
        self._by_plan: dict[int, Any] | None = (
            None if isinstance(driver, sqlite3.Connection) else {})

    def cursor_for(self, plan: _Plan) -> Any:
        """The cursor to run `plan` on."""
        if self._by_plan is None:
            return self.cursor
        cursor = self._by_plan.get(id(plan))
        if cursor is None:
            cursor = self._by_plan[id(plan)] = psycopg.RawCursor(
                self.raw.driver_connection)  # type: ignore[arg-type]
        return cursor


def _close_quietly(raw: PoolProxiedConnection) -> None:
    try:
        raw.close()  # back to the pool
    except Exception:  # noqa: S110 (a connection that cannot be returned is dropped by the pool)
        pass


def sql_literal(value: Any) -> str | None:
    """`value` as a PostgreSQL literal, for the plain kinds a statement's constants are (text,
    integers, booleans, NULL, lists of text); None for any other (sent as a parameter). The
    compiled SQL casts each placeholder already (``%(x)s::VARCHAR``), which types the literal."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and "\\" not in value and "\x00" not in value:
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        items = [sql_literal(v) for v in value]
        if all(items):
            return f"ARRAY[{', '.join(items)}]"  # type: ignore[arg-type]
    return None


def _send(cursor: Any, plan: _Plan, params: dict[str, Any], many: bool, *,
          decode: bool = False) -> Any:
    """Run `plan` on `cursor`: its first row, or with `many` all of them (`decode`d)."""
    # ``$n`` (or ``?``) parameters: no client-side query conversion.
    cursor.execute(plan.positional, plan.sequence(params))
    if not many:
        return cursor.fetchone()
    rows = cursor.fetchall()
    return [plan.decode(r) for r in rows] if decode else rows


def sqlalchemy_send(conn: Connection) -> Send:
    """A `Send` on a SQLAlchemy connection, for a body written for `FastPath.transaction` to
    run inside the caller's SQLAlchemy transaction instead (rows decoded by SQLAlchemy)."""

    def send(_key: Any, stmt: Any, params: dict[str, Any], *, many: bool = False,
             decode: bool = False) -> Any:
        result = conn.execute(stmt, params)
        if not result.returns_rows:
            return [] if many else None
        return result.all() if many else result.first()

    return send


def _rollback_quietly(cursor: Any) -> None:
    try:
        cursor.execute("ROLLBACK")
    except Exception:  # noqa: S110 (the error that matters is the one being raised)
        pass


def is_broken(connection: Any) -> bool:
    """Whether a driver connection can no longer be used (a psycopg one closed, or its server
    gone; a sqlite3 one closed)."""
    if isinstance(connection, sqlite3.Connection):
        try:
            connection.total_changes  # noqa: B018 (raises ProgrammingError once closed)
        except sqlite3.ProgrammingError:
            return True
        return False
    return bool(getattr(connection, "closed", True) or getattr(connection, "broken", True))
