"""The psycopg fast path: the hot statements (claim, commit) sent straight on a psycopg
connection, skipping SQLAlchemy's per-execute work (the larger part of a transition's CPU).

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

Only one attempt is made here; the store's retry loop (`_connections.Database.run`) decides
what a failure means. A connection is discarded only when it is broken (a lost server), never
for an error the server answered with (a 40001 leaves it healthy and pooled).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import Engine
from sqlalchemy.pool import PoolProxiedConnection

__all__ = ["HOLD_SECONDS", "FastPath"]

# How long a thread keeps its connection before giving it back to the pool (which pings and
# recycles what it hands out).
HOLD_SECONDS = 60.0

_NAMED = re.compile(r"%\((\w+)\)s")


class _Plan:
    """One statement's SQL and how to turn the caller's parameters into the driver's."""

    __slots__ = ("_slots", "constants", "names", "positional", "processors", "sql")

    def __init__(self, stmt: Any, engine: Engine) -> None:
        dialect = engine.dialect
        compiled = stmt.compile(dialect=dialect)
        self.sql: str = compiled.string
        # Each name once, in order of first use: the n-th is the server-side parameter $n (a
        # name used twice is sent once).
        self.names: tuple[str, ...] = tuple(dict.fromkeys(_NAMED.findall(self.sql)))
        number = {name: n for n, name in enumerate(self.names, 1)}
        self.positional: str = _NAMED.sub(lambda m: f"${number[m.group(1)]}",
                                          self.sql.replace("%%", "%"))
        self.processors: dict[str, Callable[[Any], Any] | None] = {}
        self.constants: dict[str, Any] = {}
        for name, bind in compiled.binds.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            self.processors[name] = process
            if not bind.required and bind.callable is None:
                value = bind.value
                self.constants[name] = value if process is None else process(value)
        # Per parameter: (name, processor) for a value the caller gives, or (None, the value).
        self._slots: tuple[tuple[str | None, Any], ...] = tuple(
            (None, self.constants[n]) if n in self.constants else (n, self.processors.get(n))
            for n in self.names)

    def values(self, params: dict[str, Any]) -> dict[str, Any]:
        """The driver-ready parameters by name."""
        return dict(zip(self.names, self.sequence(params), strict=True))

    def sequence(self, params: dict[str, Any]) -> list[Any]:
        """The driver-ready parameters in placeholder order."""
        out: list[Any] = []
        for name, how in self._slots:
            if name is None:
                out.append(how)
            elif how is None:
                out.append(params[name])
            else:
                out.append(how(params[name]))
        return out


class FastPath:
    """Prebuilt statements run on raw psycopg connections of an autocommit engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._plans: dict[Any, _Plan] = {}
        # thread ident -> the thread's held connection
        self._held: dict[int, _Held] = {}
        self._held_lock = threading.Lock()
        size = getattr(engine.pool, "size", None)
        self.max_held: int = size() if callable(size) else 0

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

    def execute(self, key: Any, stmt: Any, params: dict[str, Any], *, many: bool = False) -> Any:
        """Run `stmt` once: the first row (a tuple) or None, or all rows with `many`. Raises the
        driver's error as is, for the retry loop to classify."""
        plan = self.plan(key, stmt)
        values = plan.sequence(params)
        held = self._connection()
        raw = held.raw
        try:
            # ``$n`` parameters: no client-side query conversion.
            held.cursor.execute(plan.positional, values)
            result = held.cursor.fetchall() if many else held.cursor.fetchone()
        except psycopg.Error:
            if is_broken(raw.driver_connection):
                self._discard(held)
            elif not held.kept:
                raw.close()
            raise
        except BaseException:
            self._discard(held)  # interrupted half way: the connection's state is unknown
            raise
        if not held.kept:
            raw.close()
        return result

    def release_all(self) -> None:
        """Give every held connection back to the pool (the store is being disposed of)."""
        with self._held_lock:
            held, self._held = list(self._held.values()), {}
        for h in held:
            _close_quietly(h.raw)

    # -- held connections --------------------------------------------------------------------

    def _connection(self) -> _Held:
        """This thread's held connection (taking one if there is room), or one checked out for
        this statement only (``kept`` False)."""
        me = threading.current_thread()
        held = self._held.get(me.ident or 0)
        if held is not None:
            # Not `me`: a thread that ended and whose ident this one was given.
            if held.thread is me and time.monotonic() - held.since < HOLD_SECONDS:
                return held
            self._give_back(me)
        raw = self.engine.raw_connection()
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
    """A connection a thread uses, with its cursor (kept with it: the adapters the cursor found
    for each parameter type are found once)."""

    __slots__ = ("cursor", "kept", "raw", "since", "thread")

    def __init__(self, thread: threading.Thread, raw: PoolProxiedConnection, *,
                 kept: bool) -> None:
        self.thread = thread
        self.raw = raw
        self.kept = kept  # held for the thread, not just for one statement
        self.since = time.monotonic()
        self.cursor: psycopg.RawCursor[Any] = psycopg.RawCursor(
            raw.driver_connection)  # type: ignore[arg-type]


def _close_quietly(raw: PoolProxiedConnection) -> None:
    try:
        raw.close()  # back to the pool
    except Exception:  # noqa: S110 (a connection that cannot be returned is dropped by the pool)
        pass


def is_broken(connection: Any) -> bool:
    """Whether a psycopg connection can no longer be used (closed, or its server gone)."""
    return bool(getattr(connection, "closed", True) or getattr(connection, "broken", True))
