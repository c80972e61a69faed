"""What one transition costs the database, counted: statements sent per transition (by kind;
statemachine's through SQLAlchemy cursor hooks, the reference's by its loop), how long each kind
takes as the client sees it (round trip included), and transactions the server committed per
transition (``pg_stat_database.xact_commit``). One run each of statemachine with threads,
statemachine with processes (no GIL shared between workers, like the loops), the same-plan loop
and the CTE reference.

The hooks cost a little time, so this section is not timed; the throughput section is.
"""

from __future__ import annotations

import time
from typing import Any

from statemachine import Store

from .config import Config, Log
from .database import checkpoint, reset_statemachine, xact_counters
from .engine import run_processes_mode, run_threads_mode
from .hooks import APPLY, CLAIM, StatementCounter
from .reference import load_reference, prepare_reference_tables, time_reference
from .sameplan import time_same_plan
from .workload import TRANSITIONS, start_workflows

__all__ = ["measure"]


def _server_delta(url: str, before: dict[str, int], transitions: int) -> dict[str, float]:
    time.sleep(0.5)  # backends flush their statistics when they close; give them a moment
    after = xact_counters(url)
    return {f"{k}_per_transition": round((after[k] - before[k]) / transitions, 3)
            for k in ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated")}


def _statemachine(cfg: Config, url: str, mode: str) -> dict[str, Any]:
    n, workers = cfg.sql_workflows, cfg.sql_workers
    _fresh_workflows(url, n)
    before = xact_counters(url)
    if mode == "threads":
        counter = StatementCounter()
        run_threads_mode(url, workers, n, cfg.run_timeout, store_hook=counter.install)
        stats = counter.stats()
    else:
        stats = run_processes_mode(url, workers, n, cfg.run_timeout, count_statements=True).stats
    server = _server_delta(url, before, n * TRANSITIONS)
    return {**StatementCounter.summarise(stats, n * TRANSITIONS), "server": server}


def _loop_summary(ref: dict[str, float], transitions: int) -> dict[str, Any]:
    """Per-transition figures from a hand-written loop's own counters."""
    return {
        "statements_per_transition": round((ref["claim_n"] + ref["commit_n"]) / transitions, 3),
        "by_kind_per_transition": {
            CLAIM: round(ref["claim_n"] / transitions, 3),
            APPLY: round(ref["commit_n"] / transitions, 3)},
        "empty_claims_per_transition": round(ref["empty_claim_n"] / transitions, 3),
        "mean_ms_by_kind": {
            CLAIM: round(1000 * ref["claim_s"] / max(1.0, ref["claim_n"]), 3),
            APPLY: round(1000 * ref["commit_s"] / max(1.0, ref["commit_n"]), 3)},
    }


def _reference(cfg: Config, url: str) -> dict[str, Any]:
    n, workers = cfg.sql_workflows, cfg.sql_workers
    transitions = n * TRANSITIONS
    prepare_reference_tables(url)
    load_reference(url, n)
    checkpoint(url)
    before = xact_counters(url)
    ref = time_reference(url, workers, n, cfg.run_timeout).stats
    return {**_loop_summary(ref, transitions), "server": _server_delta(url, before, transitions)}


def _fresh_workflows(url: str, n: int) -> None:
    """Empty statemachine's tables, start `n` workflows, and checkpoint before counting."""
    reset_statemachine(url)
    store = Store(url)
    try:
        start_workflows(store, n)
    finally:
        store.dispose()
    checkpoint(url)


def _same_plan(cfg: Config, url: str) -> dict[str, Any]:
    n, workers = cfg.sql_workflows, cfg.sql_workers
    transitions = n * TRANSITIONS
    _fresh_workflows(url, n)
    before = xact_counters(url)
    stats = time_same_plan(url, workers, n, cfg.run_timeout).stats
    return {**_loop_summary(stats, transitions), "server": _server_delta(url, before, transitions)}


def measure(cfg: Config, url: str, log: Log) -> dict[str, Any]:
    """statemachine (threads, then processes) and the reference, on `cfg.sql_workflows`
    workflows with `cfg.sql_workers` workers each."""
    out: dict[str, Any] = {"workflows": cfg.sql_workflows, "workers": cfg.sql_workers}
    for mode in ("threads", "processes"):
        out[f"statemachine_{mode}"] = _statemachine(cfg, url, mode)
    out["same_plan"] = _same_plan(cfg, url)
    out["reference"] = _reference(cfg, url)
    for key in ("statemachine_threads", "statemachine_processes", "same_plan", "reference"):
        log(f"sql: {key}: {out[key]['statements_per_transition']:.2f} statements and "
            f"{out[key]['server']['xact_commit_per_transition']:.2f} server transactions "
            "per transition")
    return out
