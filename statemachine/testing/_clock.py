"""`FakeClock`: a clock you move by hand.

    clock = FakeClock()
    store = Store("sqlite:///test.db", clock=clock)
    ...
    clock.advance(days=3)   # sleeping workflows and timeouts come due; workers wake at once
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from ..errors import InvalidArgument

__all__ = ["FakeClock"]


class FakeClock:
    """A clock that stands still until `advance` or `set` moves it. Give it to `Store(clock=...)`:
    timers, timeouts, leases and `ctx.now()` all read it, on every backend.

    It is a *simulated* clock: where the engine otherwise insists on the database's own clock
    (rate-limit windows, which one writer's skewed clock must not move), a `FakeClock` is used
    instead, since every writer of a test shares it."""

    simulated = True

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2030, 1, 1, tzinfo=UTC)
        if self._now.tzinfo is None:
            raise InvalidArgument(f"FakeClock(start={self._now!r}): the start needs a time zone")
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta | float | None = None, **kwargs: float) -> datetime:
        """Move forward by `delta` (a timedelta, or seconds) or by timedelta keywords
        (``days=3``); wakes workers."""
        if isinstance(delta, bool) or not isinstance(delta, timedelta | int | float | None):
            raise InvalidArgument(
                f"advance({delta!r}): give a timedelta, seconds, or keywords such as days=3")
        if delta is not None and kwargs:
            raise InvalidArgument(f"advance({delta!r}, {kwargs}): give a delta or keywords, "
                                  "not both")
        step = (delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
                if delta is not None else timedelta(**kwargs))
        if step < timedelta(0):
            raise InvalidArgument(f"advance({step!r}): a clock does not go backwards")
        with self._lock:
            self._now += step
            now = self._now
        self._notify()
        return now

    def set(self, when: datetime) -> None:
        """Jump to `when` (aware, forward only); wakes workers."""
        if when.tzinfo is None:
            raise InvalidArgument(f"set({when!r}): the time needs a time zone")
        with self._lock:
            if when < self._now:
                raise InvalidArgument(f"set({when.isoformat()}): a clock does not go backwards "
                                      f"(it is {self._now.isoformat()})")
            self._now = when
        self._notify()

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever the clock moves (workers subscribe to claim at once)."""
        with self._lock:  # workers subscribe from their own threads
            self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        """Stop calling `listener`."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:  # outside the lock: a listener may read the clock
            listener()
