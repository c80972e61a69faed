"""What every group of statements builds on: the database (`Database`), reached by short names."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Connection

from .._clock import Clock
from ._connections import Database

__all__ = ["StatementGroup"]

T = TypeVar("T")


class StatementGroup:
    """A group of the engine's statements (`_workflows`, `_waiting`, `_limits`, `_reads`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is SQLite (which has statements of its own)."""
        return self._db.is_sqlite

    @property
    def server_clock(self) -> bool:
        """Whether times come from the server's ``now()`` (else from `clock`)."""
        return self._db.server_clock

    @property
    def clock(self) -> Clock:
        """The store's clock."""
        return self._db.clock

    @property
    def _statements(self) -> dict[Any, Any]:
        return self._db.statements

    def transaction(self, fn: Callable[[Connection], T]) -> T:
        """`fn` in a fresh transaction, with the store's retries."""
        return self._db.transaction(fn)

    def _single(self, fn: Callable[[Connection], T]) -> T:
        return self._db.single(fn)

    def _redact(self, text: str | None) -> str | None:
        """Error text as the store writes it: credentials masked."""
        return None if text is None else self._db.redact(text)

    def now(self) -> ColumnElement[datetime]:
        """The current time as SQL."""
        return self._db.now()

    def later(self, seconds: float) -> ColumnElement[datetime]:
        """``now() + seconds`` as SQL."""
        return self._db.later(seconds)

    def _now_param(self) -> ColumnElement[datetime]:
        return self._db.now_param()

    def _later_param(self, name: str) -> ColumnElement[datetime]:
        return self._db.later_param(name)

    def _later_value(self, seconds: float) -> datetime | timedelta:
        return self._db.later_value(seconds)

    def _now_value(self) -> dict[str, datetime]:
        return self._db.now_value()

    def current_time(self) -> datetime:
        """The time the store schedules by, read now."""
        return self._db.current_time()


def _headline(error: str | None) -> str | None:
    """What `last_error` keeps of an error: its text without the traceback."""
    return None if error is None else error.split("\nTraceback", 1)[0]

