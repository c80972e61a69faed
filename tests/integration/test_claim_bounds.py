"""The claim's bounds, on every backend: it reads the due index from a lower bound (`since`), it
reports each row's due time before the claim, its result stays under ~16 KiB however large the
rows, and a worker claims a row made due below its low-water mark by its periodic full sweep."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import attrs
import pytest
from sqlalchemy import update

from statemachine import Client, Context, Machine, Store, Worker, step
from statemachine._schema import workflows
from statemachine._store import Change
from statemachine._store._workflows import CLAIM_BYTES
from tests.waits import wait_until


def _start(store: Store, n: int, data: dict[str, Any] | None = None) -> list[Any]:
    return [store.sql.insert_workflow(machine="bound_m", state="Start", data=data or {"n": i})[0]
            for i in range(n)]


def _set_wake(store: Store, ids: list[Any], when: Any) -> None:
    with store.connect() as conn:
        conn.execute(update(workflows).where(workflows.c.id.in_(ids)).values(wake_at=when))
        conn.commit()


def test_a_bounded_claim_skips_rows_due_before_its_mark_and_reports_due_times(
        store: Store) -> None:
    now = store.current_time()
    old, recent = _start(store, 1), _start(store, 1)
    _set_wake(store, old, now - timedelta(hours=1))
    _set_wake(store, recent, now - timedelta(seconds=1))
    since = now - timedelta(minutes=1)
    [row] = store.sql.claim(owner="w", machines=["bound_m"], limit=10, lease=30, since=since)
    assert row.id == recent[0]
    assert row.due_at == now - timedelta(seconds=1)
    # Nothing else at or after the mark; the full sweep (no mark) takes the old row.
    assert store.sql.claim(owner="w", machines=["bound_m"], limit=10, lease=30,
                           since=since) == []
    [swept] = store.sql.claim(owner="w", machines=["bound_m"], limit=10, lease=30)
    assert (swept.id, swept.due_at) == (old[0], now - timedelta(hours=1))


def test_a_claim_result_stays_under_16_kib(store: Store) -> None:
    ids = set(_start(store, 12, {"blob": "x" * 4000}))
    batches = []
    while len(taken := [r.id for b in batches for r in b]) < len(ids):
        batch = store.sql.claim(owner="w", machines=["bound_m"], limit=12, lease=30)
        assert batch, f"claimed {len(taken)} of {len(ids)}"
        batches.append(batch)
    # ~4 KB of data a row: three rows fit in 16 KiB, a fourth would not.
    assert [len(b) for b in batches] == [3, 3, 3, 3]
    assert {r.id for b in batches for r in b} == ids
    for batch in batches:
        assert sum(len(str(r.data)) for r in batch) < CLAIM_BYTES


def test_a_row_larger_than_the_cap_is_still_claimed_alone(store: Store) -> None:
    [big] = _start(store, 1, {"blob": "y" * (CLAIM_BYTES + 100)})
    _start(store, 2)
    first = store.sql.claim(owner="w", machines=["bound_m"], limit=10, lease=30)
    assert [r.id for r in first] == [big]
    assert len(store.sql.claim(owner="w", machines=["bound_m"], limit=10, lease=30)) == 2


@attrs.frozen
class Start:
    n: int = 0


@attrs.frozen
class Done:
    pass


class Bounded(Machine):
    name = "bounded"
    initial = Start
    terminal = (Done,)

    @step
    def go(self, state: Start, ctx: Context) -> Done:
        return Done()


def test_a_worker_claims_a_row_made_due_below_its_mark_by_its_full_sweep(store: Store) -> None:
    client = Client(store, [Bounded])
    worker = Worker(store, [Bounded], concurrency=2, poll_interval=0.05,
                    full_sweep_interval=1.0, claim_margin=1.0)
    claims: list[tuple[Any, list[Any]]] = []
    lock = threading.Lock()
    claim = store.sql.claim

    def logged(**kwargs: Any) -> Any:
        rows = claim(**kwargs)
        with lock:
            claims.append((kwargs.get("since"), [r.id for r in rows]))
        return rows

    store.sql.claim = logged  # type: ignore[method-assign]
    with worker:
        first = client.start(Bounded, Start())
        wait_until(lambda: client.get(first).status == "done", "the first workflow finished")
        mark = worker.claim_mark.mark
        assert mark is not None
        # Made due an hour below the mark, by hand: only a full sweep can see it.
        # (inserted not due, so the worker cannot take it before it is set)
        straggler, _ = store.sql.insert_workflow(machine="bounded", state="Start",
                                                 data={"n": 1}, wake_after=3600)
        _set_wake(store, [straggler], mark - timedelta(hours=1))
        wait_until(lambda: client.get(straggler).status == "done", "the straggler finished",
                   timeout=60)
    with lock:
        took = [since for since, ids in claims if straggler in ids]
    assert took == [None], "the straggler was taken by a full sweep (a claim with no mark)"
    assert any(since is not None for since, _ in claims), "claims between sweeps are bounded"


@pytest.mark.parametrize(("age_in_sixths", "renewed"), [(0.5, False), (2.0, True)])
def test_the_heartbeat_renews_only_leases_that_have_aged(
        store: Store, age_in_sixths: float, renewed: bool) -> None:
    [wid] = _start(store, 1)
    [row] = store.sql.claim(owner="w", machines=["bound_m"], limit=1, lease=60)
    worker = Worker(store, [Bounded], lease=60)
    worker._inflight[row.id] = (row.lease_token, 60.0, time.monotonic() - 10 * age_in_sixths)
    before = store.sql.get(wid).wake_at
    assert worker._renew() is renewed
    after = store.sql.get(wid).wake_at
    assert (after != before) is renewed


def test_a_sticky_commit_leaves_the_lease_expiry_alone_while_half_of_it_is_left(
        store: Store) -> None:
    [wid] = _start(store, 1)
    [row] = store.sql.claim(owner="w", machines=["bound_m"], limit=1, lease=60)
    expiry = store.sql.get(wid).wake_at

    def sticky(version: int) -> Change:
        return Change.transition(attrs.evolve(row, version=version), "Next", {"n": 1},
                                 terminal=False, worker="w", started_at=expiry,
                                 keep_lease=60)

    done = store.sql.commit(sticky(row.version))
    assert done is not None
    after = store.sql.get(wid)
    assert (after.status, after.version, after.wake_at) == ("running", 2, expiry)
    # Less than half the lease left: the commit pushes it a whole lease ahead.
    _set_wake(store, [wid], store.current_time() + timedelta(seconds=10))
    done = store.sql.commit(sticky(after.version))
    assert done is not None
    pushed = store.sql.get(wid).wake_at
    assert pushed is not None
    assert pushed >= store.current_time() + timedelta(seconds=50)
