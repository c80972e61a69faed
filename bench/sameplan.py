"""The same-plan hand-written loop: statemachine's own plan, written by hand in a psycopg loop.

`bench/reference.py` is the shortest *generic* loop (claim one row, commit it, claim again: two
statements per transition). statemachine does less than that: it continues a workflow in the
same handler thread without a new claim (sticky), keeping the lease for the next step. This loop
does exactly that, by hand, on **statemachine's own tables** (``sm_workflows``, ``sm_history``,
the rows started by `Client.start_many` as for statemachine's runs), with **the statements
statemachine sends** (``docs/reference/sql/postgresql.sql``), so the ratio against it is what the
framework costs over the same database work:

1. **claim** (one per workflow): statemachine's claim, the ``FOR UPDATE SKIP LOCKED`` batch capped
   by size, bounded below by a low-water mark (the due time of the last row claimed, less 5 s),
   returning the same columns (the ``EXISTS`` on ``sm_history`` included), ``limit`` 1 as a
   worker of one handler thread claims;
2. **sticky commit** (steps 1 and 2): the CTE that compare-and-sets on ``(id, version,
   lease_token)``, keeps the lease (``status`` running, ``wake_at`` left as it is while half the
   lease is left) and appends the history row;
3. **final commit** (step 3): the same CTE, clearing the lease (``wake_at`` NULL, ``purge_after``
   now), fenced also on ``cancel_requested IS NULL`` (a cancel asked for meanwhile must be
   recorded as superseded, which takes a transaction; no cancel is asked for here). This is the
   one statement lane `perf` sends for a finishing transition; statemachine on ``main`` at the
   time of writing sent it as a transaction of an UPDATE and an INSERT instead. The plan is the
   one issue 15 sets as the bar, 1.33 statements per transition; the `sql` section shows what
   statemachine really sends.

Autocommit, one connection per process, psycopg's automatic prepare; W processes.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from .database import backend_cpu, libpq_dsn
from .procs import ChildReport, RunResult, Shared, child_guard, run_processes
from .workload import MACHINE_NAME, TRANSITIONS

__all__ = ["CLAIM", "COMMIT_FINAL", "COMMIT_STICKY", "same_plan_loop", "time_same_plan"]

LEASE = timedelta(seconds=30)
KEEP = LEASE / 2
MARGIN = timedelta(seconds=5)
ROW_BYTES = 160  # what statemachine counts for a claimed row's fixed columns
MAX_BYTES = 16384

# state -> next state (the bench machine, bench/workload.py)
NEXT = {"Received": "Validated", "Validated": "Processed", "Processed": "Finished"}

_LEASE_SET = """
UPDATE sm_workflows SET status = 'running', attempt = sm_workflows.attempt + 1,
    wake_at = now() + %(lease)s, lease_token = %(token)s, lease_owner = %(owner)s,
    updated_at = now()
FROM (SELECT locked.id, locked.status, locked.due_at, locked.size,
             sum(locked.size) OVER (ORDER BY locked.due_at, locked.id) AS upto
      FROM (SELECT id, status, wake_at AS due_at,
                   octet_length(data::text) + octet_length(state) + octet_length(machine)
                   + %(row_bytes)s AS size
            FROM sm_workflows
            WHERE {since} wake_at IS NOT NULL AND wake_at <= now()
              AND status = ANY ('{{ready,running,waiting}}'::text[])
              AND machine = ANY (%(machines)s::text[])
            ORDER BY wake_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED) AS locked) AS picked
WHERE sm_workflows.id = picked.id AND (picked.upto <= %(max_bytes)s OR picked.upto = picked.size)
RETURNING sm_workflows.id, sm_workflows.machine, sm_workflows.state, sm_workflows.data,
    sm_workflows.version, sm_workflows.entered_version, sm_workflows.attempt, picked.status,
    picked.due_at,
    EXISTS (SELECT * FROM sm_history WHERE sm_history.workflow_id = sm_workflows.id
            AND sm_history.version = sm_workflows.version) AS rec,
    sm_workflows.parent_id, sm_workflows.cancel_requested, sm_workflows.in_doubt
"""
CLAIM = _LEASE_SET.format(since="")
CLAIM_SINCE = _LEASE_SET.format(since="wake_at >= %(since)s AND")

_HISTORY = """
i AS (INSERT INTO sm_history (workflow_id, version, kind, from_state, to_state, data, status,
                              cause, attempt, error, worker, started_at, finished_at)
      SELECT u.id, u.version, 'transition', %(from_state)s, %(to_state)s, %(data)s,
             %(h_status)s, NULL, %(attempt)s, NULL, %(owner)s, %(started)s, now()
      FROM u RETURNING sm_history.version)
SELECT u.version, u.cancel_requested FROM u JOIN i ON i.version = u.version
"""

COMMIT_STICKY = """
WITH u AS (
    UPDATE sm_workflows SET state = %(to_state)s, data = %(data)s, status = 'running',
        version = sm_workflows.version + 1, entered_version = sm_workflows.version + 1,
        attempt = 1,
        wake_at = CASE WHEN sm_workflows.wake_at >= now() + %(keep)s THEN sm_workflows.wake_at
                       ELSE now() + %(lease)s END,
        last_error = NULL, updated_at = now(), in_doubt = NULL, polls = 0, purge_after = NULL
    WHERE sm_workflows.id = %(id)s AND sm_workflows.version = %(version)s
      AND sm_workflows.lease_token = %(token)s
    RETURNING sm_workflows.id, sm_workflows.version, sm_workflows.cancel_requested),
""" + _HISTORY

COMMIT_FINAL = """
WITH u AS (
    UPDATE sm_workflows SET state = %(to_state)s, data = %(data)s, status = 'done',
        version = sm_workflows.version + 1, entered_version = sm_workflows.version + 1,
        attempt = 0, wake_at = NULL, lease_token = NULL, lease_owner = NULL, last_error = NULL,
        updated_at = now(), in_doubt = NULL, polls = 0, purge_after = now()
    WHERE sm_workflows.id = %(id)s AND sm_workflows.version = %(version)s
      AND sm_workflows.cancel_requested IS NULL AND sm_workflows.lease_token = %(token)s
    RETURNING sm_workflows.id, sm_workflows.version, sm_workflows.cancel_requested),
""" + _HISTORY


def same_plan_loop(conn: psycopg.Connection[Any], owner: str,
                   shared: Shared) -> tuple[int, dict[str, float]]:
    """Claim one workflow, run its three steps in a row keeping the lease, commit each; until
    every workflow has finished. Returns the transitions committed and statement counters (as
    `reference.reference_loop` does)."""
    transitions = 0
    stats = {"claim_n": 0.0, "claim_s": 0.0, "empty_claim_n": 0.0, "commit_n": 0.0,
             "commit_s": 0.0}
    claim = {"lease": LEASE, "token": "", "owner": owner, "row_bytes": ROW_BYTES,
             "machines": [MACHINE_NAME], "limit": 1, "max_bytes": MAX_BYTES, "since": None}
    clock = time.perf_counter
    while not shared.done.is_set():
        token = uuid.uuid4().hex
        claim["token"] = token
        t0 = clock()
        row = conn.execute(CLAIM if claim["since"] is None else CLAIM_SINCE, claim).fetchone()
        stats["claim_s"] += clock() - t0
        stats["claim_n"] += 1
        if row is None:
            stats["empty_claim_n"] += 1
            claim["since"] = None  # nothing above the mark: the next claim sweeps it all
            time.sleep(0.001)
            continue
        wid, _machine, state, data, version, _entered, _attempt, _status, due_at = row[:9]
        claim["since"] = due_at - MARGIN
        while True:  # sticky: the next step runs at once, under the same lease
            started = datetime.now(UTC)
            to_state = NEXT[state]
            new_data = Jsonb({"n": data["n"]})  # the handler: read the state, build the next
            final = to_state == "Finished"
            t0 = clock()
            committed = conn.execute(COMMIT_FINAL if final else COMMIT_STICKY, {
                "to_state": to_state, "from_state": state, "data": new_data, "keep": KEEP,
                "lease": LEASE, "id": wid, "version": version, "token": token,
                "h_status": "done" if final else "ready", "attempt": 1, "owner": owner,
                "started": started}).fetchone()
            stats["commit_s"] += clock() - t0
            stats["commit_n"] += 1
            if committed is None:
                break  # lease lost: nothing written, as in the engine
            transitions += 1
            if final:
                shared.workflow_finished()
                break
            version, state = committed[0], to_state
    return transitions, stats


def _same_plan_child(shared: Shared, url: str) -> None:
    def body() -> ChildReport:
        with psycopg.connect(libpq_dsn(url), autocommit=True) as conn:
            conn.execute("SELECT 1")
            shared.barrier.wait()
            cpu0 = time.process_time()
            transitions, stats = same_plan_loop(conn, f"plan-{uuid.uuid4().hex[:6]}", shared)
            cpu = time.process_time() - cpu0
            shared.stop.wait()  # stay connected until the parent has read the server's CPU
            return ChildReport(transitions, cpu, stats=stats)

    child_guard(shared, body)


def time_same_plan(url: str, workers: int, workflows: int, timeout: float) -> RunResult:
    """Time `workers` processes running the `workflows` due in ``sm_workflows`` (started by
    `workload.start_workflows`) to the end; the caller checks them (`engine.verify_finished`)."""
    return run_processes(_same_plan_child, (url,), workers, workflows, workflows * TRANSITIONS,
                         timeout, server_cpu=lambda: backend_cpu(url))
