"""Retention: `purge` deletes finished workflows older than a given age, batch after batch, for
`statemachine purge --older-than 30d` and for workers started with ``purge_older_than``.

What is purged: a top-level workflow that finished for good (``done`` or ``cancelled``) more than
the given age ago (its ``purge_after``), with its children and theirs, and the history and events
of them all. A parked (``failed``) workflow is kept: it waits for a person. A tree with any member
still running, waiting or parked is kept whole. Each batch is one short transaction, so workers
go on meanwhile; on CockroachDB, row-level TTL does this by itself (see
docs/how-to/postgresql-and-cockroachdb.md).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import timedelta

import attrs

from ._store import Store
from .errors import InvalidArgument

__all__ = ["PurgeTotals", "parse_age", "purge"]

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s`` or ``2w`` as a timedelta."""
    match = _AGE.match(text)
    if match is None:
        raise InvalidArgument(f"{text!r} is not an age: write a number and a unit, e.g. 30d, "
                              "12h, 90m, 45s or 2w")
    return timedelta(seconds=float(match.group(1)) * _UNIT[match.group(2)])


@attrs.define
class PurgeTotals:
    """What a purge deleted so far: workflows (children included), history rows, events; and
    `kept`: top-level workflows past the age kept because a member of their tree still runs."""

    workflows: int = 0
    history: int = 0
    events: int = 0
    kept: int = 0
    batches: int = 0

    def describe(self) -> str:
        """One line for people: ``purged 120 workflows (840 history rows, 12 events) ...``."""
        kept = f"; kept {self.kept} with unfinished children" if self.kept else ""
        return (f"purged {self.workflows} workflows ({self.history} history rows, "
                f"{self.events} events) in {self.batches} batches{kept}")


def purge(store: Store, older_than: timedelta, *, batch_size: int = 100, pause: float = 0.0,
          progress: Callable[[PurgeTotals], None] | None = None,
          stop: Callable[[], bool] | None = None) -> PurgeTotals:
    """Delete finished workflow trees older than `older_than`, `batch_size` top-level workflows
    per transaction, until none is left; `pause` seconds between batches leaves the database
    to the workers. `progress` is called after each batch with the totals so far; `stop`
    (checked between batches) ends the purge early."""
    if older_than < timedelta(0):
        raise InvalidArgument(f"older_than must not be negative, not {older_than}")
    if batch_size <= 0:
        raise InvalidArgument(f"batch_size must be positive, not {batch_size}")
    totals = PurgeTotals()
    after = None
    while stop is None or not stop():
        batch = store.sql.purge_batch(older_than.total_seconds(), batch_size, after)
        if batch.after is None:
            break
        totals.workflows += batch.workflows
        totals.history += batch.history
        totals.events += batch.events
        totals.kept += batch.kept
        totals.batches += 1
        after = batch.after
        if progress is not None:
            progress(totals)
        if pause:
            time.sleep(pause)
    return totals
