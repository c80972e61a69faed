"""How a worker's threads ride out failures, and what the worker reports about its health.

Every loop of a worker (claimer, heartbeat, sweeper) runs each round under a `Trouble` tracker:
a failed round is logged once with its traceback, then at most every `STILL_FAILING_EVERY`
seconds ("still failing"), and the loop waits a capped exponential backoff with jitter before the
next round. Failures that mean the database cannot be reached go to the worker's one
`Reachability` instead, which says "database unreachable ..., retrying in N s" once and
"database is back after N s" when a call succeeds again: one line per outage, not one per retry.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime

import attrs
import psycopg
from sqlalchemy.exc import DBAPIError, DisconnectionError

from .errors import DatabaseUnavailable

__all__ = ["Backoff", "Reachability", "Trouble", "WorkerHealth", "is_unreachable"]

#: A failure that goes on is logged again at most this often (seconds).
STILL_FAILING_EVERY = 30.0
#: While the database is unreachable, each loop tries again at least this often (seconds), so
#: that work resumes within this long of the server accepting connections again.
UNREACHABLE_RETRY_EVERY = 5.0

# SQLSTATEs that mean the connection, not the statement, failed: class 08 (connection exception)
# and the server shutting down or crashing (57P01 admin shutdown, 57P02 crash, 57P03 starting).
_CONNECTION_STATES = ("57P01", "57P02", "57P03")


@attrs.frozen
class WorkerHealth:
    """What `Worker.health()` reports: enough for a liveness probe to tell a serving worker from
    a process that is up but doing nothing."""

    #: The worker's name (as in leases and history).
    name: str
    #: Started, not stopping, and every thread alive.
    serving: bool
    #: False while the worker's last database call failed because the server was unreachable.
    database_reachable: bool
    #: When the current outage began (None while the database is reachable).
    unreachable_since: datetime | None
    #: When a claim last succeeded (found work or not); None before the first one.
    last_claim_at: datetime | None
    #: Failed rounds in a row of the worker's loops (the largest over its threads); 0 when well.
    consecutive_failures: int
    #: Each supervised thread by name, and whether it is alive.
    threads: Mapping[str, bool]
    #: How many times a dead thread was restarted.
    thread_restarts: int
    #: Changes this worker has committed.
    transitions: int
    #: The last failure any loop met, one line (None if none yet).
    last_error: str | None


class Backoff:
    """Capped exponential backoff with jitter: `initial`, doubling up to `maximum`, each delay
    drawn from its upper half so that workers that failed together do not retry together."""

    def __init__(self, initial: float = 0.1, maximum: float = 10.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.failures = 0

    def next_delay(self) -> float:
        """Count one more failure; the seconds to wait before trying again."""
        self.failures += 1
        base: float = min(self.maximum, self.initial * 2.0 ** (self.failures - 1))
        return base * (0.5 + random.random() / 2)

    def reset(self) -> None:
        """A success: the next failure starts from `initial` again."""
        self.failures = 0


def is_unreachable(error: BaseException) -> bool:
    """Whether `error` (or its cause) means the database could not be reached or dropped the
    connection, rather than refusing the statement."""
    seen: BaseException | None = error
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, DatabaseUnavailable | DisconnectionError):
            return True
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, psycopg.Error):
            state = seen.sqlstate or ""
            if state.startswith("08") or state in _CONNECTION_STATES:
                return True
            # libpq's own failures (refused, reset, closed) carry no SQLSTATE.
            if not state and isinstance(seen, psycopg.OperationalError | psycopg.InterfaceError):
                return True
        seen = seen.__cause__ or seen.__context__
    return False


def one_line(error: BaseException) -> str:
    """The error's type and first line, for a log line a person reads."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


class Reachability:
    """Whether the database answers, as every thread of one worker last saw it. Logs the start
    of an outage once, "still unreachable" at most every `STILL_FAILING_EVERY` seconds, and its
    end with how long it lasted."""

    def __init__(self, worker: str, log: logging.Logger) -> None:
        self.worker = worker
        self.log = log
        self._lock = threading.Lock()
        self._down_since: float | None = None  # monotonic
        self._down_since_wall: datetime | None = None
        self._last_said = 0.0
        self.outages = 0

    @property
    def reachable(self) -> bool:
        """False from a failed call until a call succeeds."""
        return self._down_since is None

    @property
    def down_since(self) -> datetime | None:
        """When the current outage began."""
        return self._down_since_wall

    def down_for(self) -> float:
        """Seconds the current outage has lasted (0 while reachable)."""
        since = self._down_since
        return 0.0 if since is None else time.monotonic() - since

    def lost(self, error: BaseException, retry_in: float | None = None) -> None:
        """A call failed because the database could not be reached."""
        now = time.monotonic()
        retry = f", retrying in {retry_in:.1f} s" if retry_in is not None else ""
        with self._lock:
            if self._down_since is None:
                self._down_since = self._last_said = now
                self._down_since_wall = datetime.now(UTC)
                self.outages += 1
                self.log.warning("worker %s: database unreachable (%s)%s", self.worker,
                                 one_line(error), retry)
            elif now - self._last_said >= STILL_FAILING_EVERY:
                self._last_said = now
                self.log.warning("worker %s: database still unreachable after %.0f s (%s)%s",
                                 self.worker, now - self._down_since, one_line(error), retry)

    def reached(self) -> None:
        """A call succeeded."""
        if self._down_since is None:  # the common case, without the lock
            return
        with self._lock:
            if self._down_since is None:
                return
            lasted = time.monotonic() - self._down_since
            self._down_since = self._down_since_wall = None
        self.log.warning("worker %s: database is back after %.1f s", self.worker, lasted)


class Trouble:
    """The failures in a row of one loop (one thread): the backoff to wait, and logging that
    says each kind of failure once, then "still failing" at most every `STILL_FAILING_EVERY` s."""

    def __init__(self, what: str, worker: str, log: logging.Logger, reachability: Reachability,
                 backoff: Backoff) -> None:
        self.what = what
        self.worker = worker
        self.log = log
        self.reachability = reachability
        self.backoff = backoff
        self.last_error: str | None = None
        self._since = 0.0
        self._last_said = 0.0
        self._logged = False  # this run of failures was logged here (not only as an outage)

    @property
    def consecutive(self) -> int:
        """Failed rounds in a row."""
        return self.backoff.failures

    def failed(self, error: BaseException) -> float:
        """One round failed with `error`: log as needed; returns the seconds to wait."""
        delay = self.backoff.next_delay()
        self.last_error = one_line(error)
        if is_unreachable(error):
            delay = min(delay, UNREACHABLE_RETRY_EVERY)
            self.reachability.lost(error, delay)
            return delay
        now = time.monotonic()
        if not self._logged:
            self._logged = True
            self._since = self._last_said = now
            self.log.error("worker %s: %s failed, retrying in %.1f s", self.worker, self.what,
                           delay, exc_info=error)
        elif now - self._last_said >= STILL_FAILING_EVERY:
            self._last_said = now
            self.log.error("worker %s: %s still failing after %d attempts in %.0f s (%s), "
                           "retrying in %.1f s", self.worker, self.what, self.backoff.failures,
                           now - self._since, self.last_error, delay)
        return delay

    def ok(self) -> None:
        """One round succeeded."""
        self.reachability.reached()
        if self._logged:
            self.log.warning("worker %s: %s works again after %d failures", self.worker,
                             self.what, self.backoff.failures)
            self._logged = False
        self.backoff.reset()
