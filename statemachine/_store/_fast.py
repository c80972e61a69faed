"""The psycopg fast path: the hot statements (claim, commit) sent straight on a pooled psycopg
connection, skipping SQLAlchemy's per-execute work (the larger part of a transition's CPU).

A statement is compiled once per shape; its parameters are converted by the bind processors
SQLAlchemy itself would apply, obtained through public APIs only: the compiled statement's
``binds`` and each type's ``dialect_impl(dialect).bind_processor(dialect)``.
`tests/integration/test_fast_path.py` checks that the SQL and parameters sent this way equal what
SQLAlchemy sends for the same statement, so a change in SQLAlchemy fails that test loudly.

Only one attempt is made here; the store's retry loop (`_connections.Database.run`) decides
what a failure means. A connection is discarded only when it is broken (a lost server), never
for an error the server answered with (a 40001 leaves it healthy and pooled).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import Engine

__all__ = ["FastPath"]


class FastPath:
    """Prebuilt statements run on raw pooled psycopg connections (autocommit)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._compiled: dict[Any, tuple[str, Any, dict[str, Callable[[Any], Any] | None]]] = {}

    def usable(self) -> bool:
        """Whether nobody listens for SQL events: a SQL log, a lint or a statement counter must
        see every statement, so while one listens the statements go through SQLAlchemy."""
        dispatch = self.engine.dispatch
        return not dispatch.before_cursor_execute and not dispatch.after_cursor_execute

    def prepare(self, key: Any, stmt: Any, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The SQL string and the driver-ready parameters of `stmt` with `params`."""
        entry = self._compiled.get(key)
        if entry is None:
            dialect = self.engine.dialect
            compiled = stmt.compile(dialect=dialect)
            processors = {name: bind.type.dialect_impl(dialect).bind_processor(dialect)
                          for name, bind in compiled.binds.items()}
            entry = self._compiled[key] = (compiled.string, compiled, processors)
        sql, compiled, processors = entry
        values = compiled.construct_params(params)
        for name, process in processors.items():
            if process is not None and name in values:
                values[name] = process(values[name])
        return sql, values

    def execute(self, key: Any, stmt: Any, params: dict[str, Any], *, many: bool = False) -> Any:
        """Run `stmt` once: the first row (a tuple) or None, or all rows with `many`. Raises the
        driver's error as is, for the retry loop to classify."""
        sql, values = self.prepare(key, stmt, params)
        raw = self.engine.raw_connection()
        try:
            cursor = raw.driver_connection.execute(sql, values)  # type: ignore[union-attr]
            result = cursor.fetchall() if many else cursor.fetchone()
        except psycopg.Error:
            if is_broken(raw.driver_connection):
                raw.invalidate()
            else:
                raw.close()
            raise
        except BaseException:
            raw.invalidate()  # interrupted half way: the connection's state is unknown
            raise
        raw.close()
        return result


def is_broken(connection: Any) -> bool:
    """Whether a psycopg connection can no longer be used (closed, or its server gone)."""
    return bool(getattr(connection, "closed", True) or getattr(connection, "broken", True))
