"""Seeing that in-process workers have looked for work, instead of sleeping and hoping they did.

A test that asserts something does *not* happen (a timer not yet due, a cancelled workflow never
claimed again) needs the workers to have had their chance: `ClaimLog` records every claim and
sweep the workers on one `Store` make, and `claims_since` / `sweeps_since` wait until one that
began after a mark has finished.

    log = ClaimLog(store, monkeypatch)
    mark = log.mark()
    clock.advance(days=2)                  # not due yet
    assert wid not in log.claims_since(mark)
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from statemachine import Store
from tests.waits import wait_until


class ClaimLog:
    """Every `claim` and event/schedule sweep made through `store` (by any of its workers)."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self._lock = threading.Lock()
        self._calls = 0
        # (call that began it, call number when it returned, ids claimed)
        self._claims: list[tuple[int, int, frozenset[uuid.UUID]]] = []
        self._sweeps: list[tuple[int, int]] = []  # (call, thread ident)
        claim, sweep = store.sql.claim, store.sql.notice_sql_events

        def counted_claim(*args: Any, **kwargs: Any) -> Any:
            call = self._begin()
            rows = claim(*args, **kwargs)
            with self._lock:
                self._calls += 1
                self._claims.append((call, self._calls, frozenset(r.id for r in rows)))
            return rows

        def counted_sweep(*args: Any, **kwargs: Any) -> Any:
            call = self._begin()
            with self._lock:
                self._sweeps.append((call, threading.get_ident()))
            return sweep(*args, **kwargs)

        monkeypatch.setattr(store.sql, "claim", counted_claim)
        monkeypatch.setattr(store.sql, "notice_sql_events", counted_sweep)

    def _begin(self) -> int:
        with self._lock:
            self._calls += 1
            return self._calls

    def mark(self) -> int:
        """A point in time: later calls are the ones that began after it."""
        with self._lock:
            return self._calls

    def claims_since(self, mark: int, claims: int = 1) -> set[uuid.UUID]:
        """Wait until `claims` claims that began after `mark` have finished; the ids they took."""
        def done() -> list[frozenset[uuid.UUID]]:
            with self._lock:
                after = [ids for call, _, ids in self._claims if call > mark]
            return after if len(after) >= claims else []

        return set().union(*wait_until(done, f"{claims} claim(s) after the mark"))

    def wait_claimed(self, mark: int, workflow_id: uuid.UUID) -> None:
        """Wait until a claim that returned after `mark` took `workflow_id` (one that began
        before it may have waited for the write that made the workflow due, and taken it)."""
        def taken() -> bool:
            with self._lock:
                return any(workflow_id in ids for _, ended, ids in self._claims if ended > mark)

        wait_until(taken, f"a worker to claim workflow {workflow_id}")

    def sweeps_since(self, mark: int, threads: int) -> None:
        """Wait until each of `threads` claiming threads has finished a sweep (events, then
        schedules) that began after `mark`: it has begun another one since."""
        def done() -> bool:
            with self._lock:
                begun: dict[int, int] = {}
                for call, thread in self._sweeps:
                    if call > mark:
                        begun[thread] = begun.get(thread, 0) + 1
            return sum(n >= 2 for n in begun.values()) >= threads

        wait_until(done, f"{threads} worker(s) to sweep again")
