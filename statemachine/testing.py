"""Helpers for testing workflows: a clock you move by hand.

    clock = FakeClock()
    store = Store("sqlite:///test.db", clock=clock)
    ...
    clock.advance(days=3)   # sleeping workflows and timeouts come due; workers wake at once
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

__all__ = ["FakeClock"]


class FakeClock:
    """A clock that stands still until `advance` or `set` moves it. Give it to `Store(clock=...)`:
    timers, timeouts, leases and `ctx.now()` all read it, on every backend."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2030, 1, 1, tzinfo=UTC)
        if self._now.tzinfo is None:
            raise ValueError("FakeClock needs an aware start time")
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        """Move forward by `delta` or by timedelta keywords (``days=3``); wakes workers."""
        step = delta if delta is not None else timedelta(**kwargs)
        if step < timedelta(0):
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._now += step
            now = self._now
        self._notify()
        return now

    def set(self, when: datetime) -> None:
        """Jump to `when` (forward only); wakes workers."""
        with self._lock:
            if when < self._now:
                raise ValueError("a clock does not go backwards")
            self._now = when
        self._notify()

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever the clock moves (workers subscribe to claim at once)."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        """Stop calling `listener`."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()
