"""Throughput when ``sm_workflows`` is big: 1,000,000 finished and 100,000 sleeping rows (by
default) against an empty table, run alternately on two databases of the same server, and the
plan of the claim query on the big table.

The claim must find due rows through the ``wake_at`` index without touching the finished rows
(their ``wake_at`` is NULL, outside the partial index) or the sleeping ones (due later, past the
end of the index range scanned). A plan that reads the table or scans the (machine, status) index
instead shows up here as a ratio well below 1.
"""

from __future__ import annotations

import statistics
from typing import Any

from statemachine import Store

from .config import Config, Log
from .database import BenchDatabase, bulk_load_scale, checkpoint, explain_claim, reset_statemachine
from .engine import run_threads_mode, verify_finished
from .procs import RunResult
from .stats import summary
from .workload import start_workflows

__all__ = ["measure"]


def _run(cfg: Config, url: str, explain: bool) -> tuple[RunResult, dict[str, Any] | None]:
    """Start N workflows on top of what the table holds, optionally EXPLAIN the claim with them
    due, then time the workers."""
    store = Store(url)
    try:
        start_workflows(store, cfg.workflows)
    finally:
        store.dispose()
    checkpoint(url)
    plan = explain_claim(url, cfg.scale_workers) if explain else None
    result = run_threads_mode(url, cfg.scale_workers, cfg.workflows, cfg.run_timeout)
    verify_finished(url, cfg.workflows)
    return result, plan


def measure(cfg: Config, url: str, log: Log) -> dict[str, Any]:
    """The empty table (this run's database) against the loaded one (a second database made on
    the same server and loaded once), run alternately, so that background load that changes
    during the section hits both alike. Earlier runs' rows stay in the loaded table between
    repeats: they are finished rows too."""
    empty: list[RunResult] = []
    loaded: list[RunResult] = []
    plans: dict[str, Any] = {}
    big = BenchDatabase(cfg.pg_url)
    try:
        log(f"scale: loading {cfg.scale_finished:,} finished and {cfg.scale_sleeping:,} sleeping "
            f"rows into {big.name}")
        load_s = bulk_load_scale(big.url, cfg.scale_finished, cfg.scale_sleeping)
        log(f"scale: loaded in {load_s:.1f}s")
        for rep in range(cfg.repeats):
            reset_statemachine(url)
            result, plan = _run(cfg, url, explain=rep == 0)
            empty.append(result)
            plans.setdefault("empty", plan)
            log(f"scale rep {rep + 1}: empty table: {result.transitions_per_s:,.0f} "
                "transitions/s")
            result, plan = _run(cfg, big.url, explain=rep == 0)
            loaded.append(result)
            plans.setdefault("loaded", plan)
            log(f"scale rep {rep + 1}: loaded table: {result.transitions_per_s:,.0f} "
                "transitions/s")
    finally:
        big.drop()
    empty_tps = statistics.median(r.transitions_per_s for r in empty)
    loaded_tps = statistics.median(r.transitions_per_s for r in loaded)
    return {
        "workers": cfg.scale_workers, "mode": "threads",
        "finished_rows": cfg.scale_finished, "sleeping_rows": cfg.scale_sleeping,
        "load_s": round(load_s, 1),
        "empty_transitions_per_s": summary([r.transitions_per_s for r in empty]),
        "loaded_transitions_per_s": summary([r.transitions_per_s for r in loaded]),
        "ratio_loaded_to_empty": round(loaded_tps / empty_tps, 3),
        "claim_plan_loaded": plans["loaded"],
        "claim_plan_empty": plans["empty"],
    }
