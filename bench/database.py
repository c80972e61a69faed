"""The bench database: created fresh per run on the given server, loaded, inspected, dropped.

Everything here is set-up and inspection; none of it is timed. Plain psycopg is used (autocommit),
except where statemachine's own `Store` must run the statement (capturing its claim SQL).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url

from statemachine import Store

from .workload import MACHINE_NAME

__all__ = [
    "BenchDatabase",
    "backend_cpu",
    "backend_cpu_delta",
    "bulk_load_scale",
    "capture_claim_sql",
    "checkpoint",
    "connect",
    "count_by_status",
    "explain_claim",
    "libpq_dsn",
    "reset_statemachine",
    "server_info",
    "store_engines",
    "xact_counters",
]


def libpq_dsn(sa_url: str) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg://...``) as a libpq URL psycopg connects with."""
    return make_url(sa_url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def connect(sa_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit psycopg connection to `sa_url`."""
    with psycopg.connect(libpq_dsn(sa_url), autocommit=True) as conn:
        yield conn


class BenchDatabase:
    """A database made for one benchmark run (``sm_bench_<random>``) on the server `admin_url`
    points to, migrated for statemachine; `drop()` removes it."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.name = f"sm_bench_{uuid.uuid4().hex[:10]}"
        with connect(admin_url) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.url = make_url(admin_url).set(database=self.name).render_as_string(
            hide_password=False)
        try:
            store = Store(self.url)
            try:
                store.migrate()
            finally:
                store.dispose()
        except BaseException:  # an interrupted migration too: the database is not left behind
            self.drop()
            raise

    def drop(self) -> None:
        """Drop the database, disconnecting whoever is still connected."""
        with connect(self.admin_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def reset_statemachine(url: str) -> None:
    """Empty statemachine's tables (between timed runs)."""
    with connect(url) as conn:
        conn.execute("TRUNCATE sm_workflows, sm_history")


def checkpoint(url: str) -> None:
    """Flush dirty pages now, so that a checkpoint does not land in the middle of a timed run, and
    refresh planner statistics. Best effort: a non-superuser may not CHECKPOINT."""
    with connect(url) as conn:
        conn.execute("ANALYZE")
        try:
            conn.execute("CHECKPOINT")
        except psycopg.Error:
            pass


def count_by_status(url: str, table: str = "sm_workflows") -> dict[str, int]:
    """Rows of `table` by status."""
    with connect(url) as conn:
        rows = conn.execute(f"SELECT status, count(*) FROM {table} GROUP BY status").fetchall()
    return {str(s): int(c) for s, c in rows}


def server_info(url: str) -> dict[str, str]:
    """The server's version and the settings that move the figures most."""
    names = ("server_version", "synchronous_commit", "fsync", "shared_buffers", "wal_level",
             "max_connections", "default_transaction_isolation")
    with connect(url) as conn:
        return {n: str(conn.execute(f"SHOW {n}").fetchone()[0]) for n in names}  # type: ignore[index]


def backend_cpu(url: str) -> dict[int, float] | None:
    """CPU seconds (user + system) used so far by each server process connected to this
    database, read from ``/proc``: None when the server is not on this machine (or not a
    PostgreSQL we can see). The difference of two readings is what the server spent on the work
    in between (backends that exit in between are missed; background writers are not counted)."""
    if not url.startswith("postgresql"):
        return None
    with connect(url) as conn:
        pids = [int(r[0]) for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()").fetchall()]
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    if pids and not out:
        return None
    return out


def backend_cpu_delta(before: dict[int, float] | None, after: dict[int, float] | None
                      ) -> float | None:
    """Server CPU seconds between two `backend_cpu` readings (new backends count in full)."""
    if before is None or after is None:
        return None
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def xact_counters(url: str) -> dict[str, int]:
    """This database's cumulative transaction and row counters from ``pg_stat_database``.
    The statistics lag up to a second behind (backends flush them when idle)."""
    with connect(url) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_fetched "
            "FROM pg_stat_database WHERE datname = current_database()").fetchone()
    assert row is not None
    keys = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_fetched")
    return {k: int(v) for k, v in zip(keys, row, strict=True)}


def bulk_load_scale(url: str, finished: int, sleeping: int) -> float:
    """Add `finished` done workflows and `sleeping` ones waiting on a timer (due tomorrow or
    later) to ``sm_workflows``, each with one INSERT ... SELECT generate_series, plus each row's
    latest ``sm_history`` row, then VACUUM ANALYZE; returns the seconds it took. Call it on empty
    tables. The rows belong to the bench machine, so the claim query has to skip them, not merely
    filter another machine out."""
    import time

    t0 = time.perf_counter()
    with connect(url) as conn:
        conn.execute(
            """
            INSERT INTO sm_workflows (id, machine, state, data, status, version, entered_version,
                attempt, wake_at, created_at, updated_at)
            SELECT gen_random_uuid(), %(machine)s, 'Finished', jsonb_build_object('n', g), 'done',
                   4, 4, 0, NULL, now() - interval '2 days', now() - interval '1 day'
            FROM generate_series(1, %(count)s) AS g
            """, {"machine": MACHINE_NAME, "count": finished})
        conn.execute(
            """
            INSERT INTO sm_workflows (id, machine, state, data, status, version, entered_version,
                attempt, wake_at, created_at, updated_at)
            SELECT gen_random_uuid(), %(machine)s, 'Received', jsonb_build_object('n', g), 'ready',
                   2, 2, 0, now() + interval '1 day' + g * interval '1 second',
                   now() - interval '1 hour', now() - interval '1 hour'
            FROM generate_series(1, %(count)s) AS g
            """, {"machine": MACHINE_NAME, "count": sleeping})
        # Each loaded row's latest history row, as the engine would have left it: sm_history grows
        # with sm_workflows, and the claim looks a row's current version up in it.
        conn.execute(
            """
            INSERT INTO sm_history (workflow_id, version, kind, from_state, to_state, data,
                                    status, attempt, finished_at)
            SELECT id, version, 'transition', NULL, state, data, status, 1, updated_at
            FROM sm_workflows
            """)
        conn.execute("VACUUM ANALYZE sm_workflows")
        conn.execute("VACUUM ANALYZE sm_history")
    return time.perf_counter() - t0


_PROBE_MACHINE = "__bench_claim_probe__"


def store_engines(store: Store) -> list[Engine]:
    """Every SQLAlchemy engine `store` sends SQL through (it may keep a separate autocommit
    engine for single statements), so that hooks see all of its statements."""
    return list(store.engines)


def capture_claim_sql(url: str, limit: int, *, since: datetime | None = None,
                      machine: str = MACHINE_NAME) -> tuple[str, Any]:
    """The SQL and parameters of statemachine's claim, exactly as the library sends it, for
    `limit` rows of `machine` (default the bench machine), bounded below by `since` (a worker's
    low-water mark; None: the full sweep). Captured by running a real claim for a machine that
    has no rows (so nothing is claimed) and swapping the machine name in its parameters."""
    store = Store(url)
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any,
               _many: bool) -> None:
        if "SKIP LOCKED" in statement.upper():
            seen.append((statement, parameters))

    engines = store_engines(store)
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        store.sql.claim(owner="bench-probe", machines=[_PROBE_MACHINE], limit=limit, lease=30.0,
                        since=since)
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)
        store.dispose()
    if not seen:
        raise RuntimeError("could not capture the claim statement (no FOR UPDATE SKIP LOCKED seen)")
    statement, params = seen[-1]
    return statement, _swap(params, _PROBE_MACHINE, machine)


def _swap(params: Any, old: str, new: str) -> Any:
    if isinstance(params, dict):
        return {k: _swap(v, old, new) for k, v in params.items()}
    if isinstance(params, list | tuple):
        return type(params)(_swap(v, old, new) for v in params)
    return new if params == old else params


def explain_claim(url: str, limit: int) -> dict[str, Any]:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of statemachine's claim for `limit` rows, run in a
    transaction that is rolled back (nothing stays claimed). Returns the plan text and which
    indexes it scans (empty when it reads the table sequentially)."""
    statement, params = capture_claim_sql(url, limit)
    with psycopg.connect(libpq_dsn(url)) as conn:
        cur = conn.cursor()
        cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, params)
        lines = [str(r[0]) for r in cur.fetchall()]
        conn.rollback()
    plan = "\n".join(lines)
    indexes = sorted(set(re.findall(r"Index (?:Only )?Scan(?: Backward)? using (\w+)", plan))
                     | set(re.findall(r"Bitmap Index Scan on (\w+)", plan)))
    seq = sorted(set(re.findall(r"Seq Scan on (\w+)", plan)))
    times = re.findall(r"Execution Time: ([\d.]+) ms", plan)
    return {
        "statement": statement,
        "plan": plan,
        "indexes": indexes,
        "seq_scans": seq,
        "uses_index": bool(indexes) and "sm_workflows" not in seq,
        "execution_ms": float(times[-1]) if times else None,
    }
