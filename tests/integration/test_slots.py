"""Concurrency slots (`acquire_slot`): one statement, and never more than `size` holders, with
real threads on every backend (PostgreSQL at READ COMMITTED and at SERIALIZABLE included)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from sqlalchemy import event, func, select

from statemachine import Store
from statemachine._schema import limit_slots

SIZE = 3


def test_acquiring_a_slot_is_one_statement(store: Store) -> None:
    sent: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    for engine in store.engines:
        event.listen(engine, "before_cursor_execute", count)
    try:
        holders = [uuid.uuid4() for _ in range(SIZE + 1)]
        for h in holders[:SIZE]:  # a fresh key: the slot rows are made by the same statement
            sent.clear()
            assert store.sql.acquire_slot("one-statement", SIZE, h, lease=30) is not None
            # (SQLite's write transaction opens with BEGIN IMMEDIATE: not a statement of ours.)
            assert [s.split()[0] for s in sent if not s.startswith("BEGIN")] == ["WITH"], sent
        sent.clear()
        assert store.sql.acquire_slot("one-statement", SIZE, holders[-1], lease=30) is None
        assert len([s for s in sent if not s.startswith("BEGIN")]) == 1, sent
    finally:
        for engine in store.engines:
            event.remove(engine, "before_cursor_execute", count)


def test_a_holder_keeps_its_slot_and_a_freed_or_expired_one_is_taken(store: Store) -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    first = store.sql.acquire_slot("k", 2, a, lease=30)
    second = store.sql.acquire_slot("k", 2, b, lease=0.001)
    assert {first, second} == {0, 1}
    assert store.sql.acquire_slot("k", 2, a, lease=30) == first  # its own again
    # b's lease runs out (by the database's clock), and c takes b's slot.
    deadline = time.monotonic() + 60
    got = None
    while got is None and time.monotonic() < deadline:
        got = store.sql.acquire_slot("k", 2, c, lease=30)
    assert got == second
    assert store.sql.acquire_slot("k", 2, b, lease=30) is None
    assert first is not None
    store.sql.release_slot("k", first, a)
    assert store.sql.acquire_slot("k", 2, b, lease=30) == first
    # A smaller size ignores the slots above it.
    assert store.sql.acquire_slot("k", 1, uuid.uuid4(), lease=30) is None


def test_never_more_holders_than_slots_under_real_threads(store: Store) -> None:
    key = f"threads-{uuid.uuid4().hex[:8]}"
    lock = threading.Lock()
    holding = [0]
    peak = [0]
    taken = [0]
    errors: list[BaseException] = []

    # Phase 1: SIZE holders meet at a barrier while they hold (so SIZE certainly held at once);
    # meanwhile every other thread's attempt must fail.
    barrier = threading.Barrier(SIZE, timeout=60)
    met = threading.Event()
    refused = [0]

    def first_round() -> None:
        me = uuid.uuid4()
        try:
            while not met.is_set():
                slot = store.sql.acquire_slot(key, SIZE, me, lease=60)
                if slot is None:
                    with lock:
                        refused[0] += 1
                    time.sleep(0.01)  # back off, as a worker does (it defers 50-200 ms)
                    continue
                if met.is_set():  # the holders have met (and let go): not one of them
                    store.sql.release_slot(key, slot, me)
                    return
                with lock:
                    holding[0] += 1
                    peak[0] = max(peak[0], holding[0])
                try:
                    barrier.wait()
                finally:
                    met.set()
                    with lock:
                        holding[0] -= 1
                store.sql.release_slot(key, slot, me)
                return
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=first_round) for _ in range(SIZE + 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert peak[0] == SIZE

    # Phase 2: churn, eight threads taking and giving back slots.
    stop = time.monotonic() + 2.0  # a load generator's duration, not a wait for a condition

    def churn() -> None:
        me = uuid.uuid4()
        try:
            while time.monotonic() < stop:
                slot = store.sql.acquire_slot(key, SIZE, me, lease=60)
                if slot is None:
                    time.sleep(0.005)  # back off, as a worker does
                    continue
                with lock:
                    holding[0] += 1
                    peak[0] = max(peak[0], holding[0])
                    taken[0] += 1
                time.sleep(0.002)  # hold it a moment
                with lock:
                    holding[0] -= 1
                store.sql.release_slot(key, slot, me)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert peak[0] == SIZE, peak  # counted only while the database says it holds
    assert taken[0] > SIZE
    with store.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(limit_slots).where(
            limit_slots.c.key == key)).scalar_one()
        held = conn.execute(select(func.count()).select_from(limit_slots).where(
            limit_slots.c.key == key, limit_slots.c.holder.is_not(None))).scalar_one()
    assert rows == SIZE
    assert held == 0
