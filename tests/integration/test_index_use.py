"""Statements a worker sends all the time read their index, whatever the tables hold: their cost
must not grow with the backlog or with the history kept. Each test captures the SQL the store
really sends and asks the database for its plan."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, text, update

from statemachine import Store
from statemachine._schema import workflows


def _plan(store: Store, call: Callable[[], Any], sent_with: str) -> tuple[Any, str]:
    """Run `call`, then EXPLAIN the one statement it sent that contains `sent_with`; returns
    what `call` returned and the plan as one line. On PostgreSQL a sequential scan is priced out,
    so the plan shows whether an index *can* serve the statement, not whether this tiny table
    makes one worth it."""
    sent: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if sent_with in statement:
            sent.append((statement, parameters))

    # (While a listener is installed the store sends its SQL through SQLAlchemy, not its fast
    # path: the same SQL, as tests/integration/test_fast_path*.py check.)
    event.listen(store.engine, "before_cursor_execute", record)
    try:
        result = call()
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    [(statement, parameters)] = sent
    with store.engine.connect() as conn:
        if store.engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            plan = " / ".join(str(row[-1]) for row in rows)
        else:
            conn.execute(text("SET LOCAL enable_seqscan = off"))
            rows = conn.exec_driver_sql("EXPLAIN " + statement, parameters)
            plan = " / ".join(str(row[0]).strip() for row in rows)
        conn.rollback()
    return result, plan


def test_noticing_events_inserted_by_sql_reads_the_partial_index(store: Store) -> None:
    # `noticed IS false` (what it sent before) is not the index's `noticed = false` to either
    # planner: every worker read the whole of sm_events on every poll.
    _, plan = _plan(store, store.sql.notice_sql_events, "FROM sm_events")
    assert "sm_events_unnoticed" in plan, plan


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_sqlite_claim_reads_the_due_index_in_order_and_sorts_no_backlog(
        store: Store) -> None:
    # Given (machine, status) as index keys, SQLite's planner looked the runnable rows up through
    # sm_workflows_machine_status and sorted all of them on every claim: a cost that grew with
    # the backlog (440 µs a claim with 3,000 due).
    now = store.current_time()

    def start(machine: str, n: int) -> list[Any]:
        return [store.sql.insert_workflow(machine=machine, state="Start", data={})[0]
                for _ in range(n)]

    def set_wake(ids: list[Any], when: Any) -> None:
        with store.connect() as conn:
            conn.execute(update(workflows).where(workflows.c.id.in_(ids)).values(wake_at=when))
            conn.commit()

    ours, others = start("ours", 50), start("others", 50)
    set_wake(others, now - timedelta(hours=2))  # due first, but not ours
    set_wake(ours[1:], now - timedelta(minutes=1))
    set_wake(ours[:1], now - timedelta(hours=1))
    [first], plan = _plan(store, lambda: store.sql.claim(owner="w", machines=["ours"], limit=1,
                                                         lease=30), "SELECT sm_workflows.id")
    assert first.id == ours[0]  # the earliest due of this machine's rows, the others skipped
    assert "USING INDEX sm_workflows_due" in plan, plan
    assert "TEMP B-TREE" not in plan, plan
