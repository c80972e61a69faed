"""Where time comes from: the system clock, or a clock a test moves by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

__all__ = ["Clock", "SystemClock", "utcnow"]


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


class Clock(Protocol):
    """A source of aware UTC datetimes. A clock may set ``simulated = True`` (as `FakeClock`
    does) to stand for the database's clock too: rate-limit windows are then measured on it
    instead of on the database's."""

    def now(self) -> datetime: ...


class SystemClock:
    """The machine's clock."""

    def now(self) -> datetime:
        return utcnow()
