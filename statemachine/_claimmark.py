"""The low-water mark a worker's claims start from, so a claim reads a bounded range of the due
index instead of every dead index entry the queue left behind (PostgreSQL until vacuum,
CockroachDB until `gc.ttlseconds`).

A claim takes due rows in `wake_at` order with ``wake_at >= mark``. After a claim that returned
rows, every due row it could see and did not take has a `wake_at` at or after the latest `due_at`
it took (the claim orders by `wake_at`, and its byte cap keeps a prefix), so the mark moves up to
that `due_at` less `margin`. The margin covers rows the claim could not see yet: written by a
transaction whose ``now()`` is older than the claim (a commit in flight; on CockroachDB, a node's
clock up to 500 ms behind). A claim that returns nothing leaves the mark where it is.

Every `sweep_interval` seconds the next claim is a full sweep (no lower bound). It takes the
stragglers: rows made due with a `wake_at` below the mark (a forced state written by hand with an
old time, a timer set `at` a past time, a transaction that took longer than `margin` between its
``now()`` and its commit, a row skipped because another transaction held its lock). A straggler is
therefore claimed at most `sweep_interval` seconds after it is due and visible, once the worker
has a free slot. The sweep then sets the mark from what it found (its oldest rows first, so a
batch of stragglers lowers the mark and the bounded claims take the rest in order), or to the
database time before it less `margin` when it found nothing. Claims that began before a sweep
ended do not move the mark the sweep set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import attrs

from ._records import ClaimedRow

__all__ = ["ClaimMark", "Ticket"]


@attrs.frozen
class Ticket:
    """What one claim was asked to scan: from `since` (None: a full sweep)."""

    since: datetime | None
    epoch: int


class ClaimMark:
    """A worker's low-water mark (thread safe: the claimer and handler threads share it)."""

    def __init__(self, *, margin: float, sweep_interval: float,
                 database_now: Callable[[], datetime],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.margin = timedelta(seconds=margin)
        self.sweep_interval = sweep_interval
        self._database_now = database_now
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._mark: datetime | None = None
        self._epoch = 0
        self._last_sweep = float("-inf")
        self.sweeps = 0

    @property
    def mark(self) -> datetime | None:
        """The current mark (None until the first sweep)."""
        with self._lock:
            return self._mark

    def sweep_soon(self) -> None:
        """Make the next claim a full sweep (a test clock jumped: rows may have come due below
        the mark)."""
        with self._lock:
            self._last_sweep = float("-inf")

    def next(self) -> tuple[Ticket, datetime | None]:
        """The ticket for the next claim, and (for a sweep) the database time before it."""
        with self._lock:
            now = self._monotonic()
            sweep = self._mark is None or now - self._last_sweep >= self.sweep_interval
            if not sweep:
                return Ticket(self._mark, self._epoch), None
            self._last_sweep = now  # one sweep per interval, whichever thread claims first
        return Ticket(None, self._epoch), self._database_now()

    def claimed(self, ticket: Ticket, rows: Sequence[ClaimedRow],
                before: datetime | None) -> None:
        """Move the mark after the claim made with `ticket` returned `rows`; `before` is the
        database time taken before a sweep."""
        dues = [r.due_at for r in rows if r.due_at is not None]
        with self._lock:
            if ticket.since is None:
                self.sweeps += 1
                self._epoch += 1
                if dues:
                    self._mark = max(dues) - self.margin
                elif before is not None and len(dues) == len(rows):
                    self._mark = before - self.margin
                return
            if ticket.epoch != self._epoch or not dues:
                return  # a sweep ended meanwhile, or nothing to learn
            candidate = max(dues) - self.margin
            if self._mark is None or candidate > self._mark:
                self._mark = candidate
