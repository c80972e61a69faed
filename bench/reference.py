"""The raw-SQL reference: the least database work one transition can take, in a psycopg loop.

Per transition, two transactions of one statement each (autocommit, so one round trip each;
psycopg prepares them after a few runs):

1. **claim** one due row with ``FOR UPDATE SKIP LOCKED``, writing its lease (status, token,
   expiry), as DESIGN.md's claim does;
2. **commit**: compare-and-set the next state on ``(id, version, lease_token)`` and append one
   history row, in one CTE statement.

The tables are ``bench_ref_workflows`` and ``bench_ref_history``, made ``LIKE`` ``sm_workflows`` and
``sm_history`` ``INCLUDING ALL`` (same columns and indexes, so the same index upkeep per update)
in the same database. The workload has the same shape as statemachine's: N rows, three transitions
each (Received -> Validated -> Processed -> Finished), W worker processes.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from .database import backend_cpu, checkpoint, connect, libpq_dsn
from .procs import BenchError, ChildReport, RunResult, Shared, child_guard, run_processes
from .workload import MACHINE_NAME, TRANSITIONS

__all__ = ["load_reference", "prepare_reference_tables", "reference_loop", "run_reference",
           "time_reference"]

WORKFLOWS = "bench_ref_workflows"
HISTORY = "bench_ref_history"

# state -> (next state, status after the transition)
NEXT = {"Received": ("Validated", "ready"), "Validated": ("Processed", "ready"),
        "Processed": ("Finished", "done")}

CLAIM = f"""
UPDATE {WORKFLOWS} AS w
SET status = 'running', lease_token = %(token)s, lease_owner = %(owner)s,
    wake_at = now() + interval '30 seconds', attempt = w.attempt + 1, updated_at = now()
FROM (SELECT id FROM {WORKFLOWS}
      WHERE wake_at IS NOT NULL AND wake_at <= now() AND status IN ('ready', 'running')
        AND machine = %(machine)s
      ORDER BY wake_at LIMIT 1 FOR UPDATE SKIP LOCKED) AS picked
WHERE w.id = picked.id
RETURNING w.id, w.state, w.data, w.version
"""

COMMIT = f"""
WITH u AS (
    UPDATE {WORKFLOWS}
    SET state = %(to_state)s, data = %(data)s, status = %(status)s, version = version + 1,
        entered_version = version + 1, attempt = 0,
        wake_at = CASE WHEN %(finished)s THEN NULL ELSE now() END,
        lease_token = NULL, lease_owner = NULL, updated_at = now()
    WHERE id = %(id)s AND version = %(version)s AND lease_token = %(token)s
    RETURNING id, version)
INSERT INTO {HISTORY} (workflow_id, version, kind, from_state, to_state, data, status, attempt,
                       worker, started_at, finished_at)
SELECT id, version, 'transition', %(from_state)s, %(to_state)s, %(data)s, %(status)s, 1,
       %(owner)s, %(started)s, now()
FROM u
RETURNING version
"""


def prepare_reference_tables(url: str) -> None:
    """Create the reference tables shaped like statemachine's (columns and indexes)."""
    with connect(url) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {WORKFLOWS} (LIKE sm_workflows INCLUDING ALL)")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {HISTORY} (LIKE sm_history INCLUDING ALL)")


def load_reference(url: str, count: int) -> None:
    """Empty the reference tables and add `count` due workflows (with their start history rows)
    in bulk, as `Client.start_many` does for statemachine."""
    with connect(url) as conn:
        conn.execute(f"TRUNCATE {WORKFLOWS}, {HISTORY}")
        conn.execute(
            f"""
            INSERT INTO {WORKFLOWS} (id, machine, state, data, status, version, entered_version,
                attempt, wake_at, created_at, updated_at)
            SELECT gen_random_uuid(), %(machine)s, 'Received', jsonb_build_object('n', g),
                   'ready', 1, 1, 0, now(), now(), now()
            FROM generate_series(1, %(count)s) AS g
            """, {"machine": MACHINE_NAME, "count": count})
        conn.execute(
            f"""
            INSERT INTO {HISTORY} (workflow_id, version, kind, to_state, data, status, attempt,
                                   finished_at)
            SELECT id, 1, 'start', state, data, status, 0, now() FROM {WORKFLOWS}
            """)


def reference_loop(conn: psycopg.Connection[Any], owner: str,
                   shared: Shared) -> tuple[int, dict[str, float]]:
    """Claim one row, run its (trivial) handler, commit; until every workflow has finished.
    Returns the transitions this loop committed, and how many statements of each kind it ran
    and the seconds they took (as the client sees them: round trip included)."""
    transitions = 0
    stats = {"claim_n": 0.0, "claim_s": 0.0, "empty_claim_n": 0.0, "commit_n": 0.0,
             "commit_s": 0.0}
    claim_params = {"owner": owner, "machine": MACHINE_NAME, "token": ""}
    clock = time.perf_counter
    while not shared.done.is_set():
        token = uuid.uuid4().hex
        claim_params["token"] = token
        t0 = clock()
        row = conn.execute(CLAIM, claim_params).fetchone()
        stats["claim_s"] += clock() - t0
        stats["claim_n"] += 1
        if row is None:
            stats["empty_claim_n"] += 1
            time.sleep(0.001)  # everything due is held by other workers: look again shortly
            continue
        wid, state, data, version = row
        started = datetime.now(UTC)
        to_state, status = NEXT[state]
        new_data = {"n": data["n"]}  # the handler: read the state, build the next one
        t0 = clock()
        committed = conn.execute(COMMIT, {
            "to_state": to_state, "from_state": state, "data": Jsonb(new_data), "status": status,
            "finished": status == "done", "id": wid, "version": version, "token": token,
            "owner": owner, "started": started}).fetchone()
        stats["commit_s"] += clock() - t0
        stats["commit_n"] += 1
        if committed is None:
            continue  # lease lost: nothing written, as in the engine
        transitions += 1
        if status == "done":
            shared.workflow_finished()
    return transitions, stats


def _reference_child(shared: Shared, url: str) -> None:
    def body() -> ChildReport:
        with psycopg.connect(libpq_dsn(url), autocommit=True) as conn:
            conn.execute("SELECT 1")
            shared.barrier.wait()
            cpu0 = time.process_time()
            transitions, stats = reference_loop(conn, f"ref-{uuid.uuid4().hex[:6]}", shared)
            cpu = time.process_time() - cpu0
            shared.stop.wait()  # stay connected until the parent has read the server's CPU
            return ChildReport(transitions, cpu, stats=stats)

    child_guard(shared, body)


def run_reference(url: str, workers: int, workflows: int, timeout: float) -> RunResult:
    """Load `workflows` reference rows and time `workers` processes running them to the end."""
    load_reference(url, workflows)
    checkpoint(url)
    return time_reference(url, workers, workflows, timeout)


def time_reference(url: str, workers: int, workflows: int, timeout: float) -> RunResult:
    """Time `workers` processes running the loaded reference rows to the end, and check them."""
    result = run_processes(_reference_child, (url,), workers, workflows,
                           workflows * TRANSITIONS, timeout, server_cpu=lambda: backend_cpu(url))
    with connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {WORKFLOWS} WHERE status = 'done'").fetchone()
    done = int(row[0]) if row else 0
    if done != workflows:
        raise BenchError(f"reference: {done} of {workflows} rows done after the run")
    return result
