"""The benchmark's sections, run in order on one fresh database, repeated and summarised.

`run(config)` returns the results as a JSON-ready dict (see `report` for its shape). A section that
fails records its error under ``errors`` and the run goes on, so one breakage in the library does
not hide the other figures.
"""

from __future__ import annotations

import sqlite3
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from statemachine import Store

from . import async_worker, grouping, latency, memory, profiling, scale, sqlcount, sysinfo
from .config import Config, Log
from .database import BenchDatabase, checkpoint, reset_statemachine, server_info
from .engine import run_grouped_mode, run_processes_mode, run_threads_mode, verify_finished
from .procs import RunResult
from .reference import prepare_reference_tables, run_reference
from .sameplan import time_same_plan
from .stats import summary
from .workload import start_workflows

__all__ = ["engine_run_on_fresh_rows", "ratios_of", "run", "summarise_runs", "timed_same_plan",
           "total_cpu_us"]


def make_log(t0: float) -> Log:
    """A progress logger to stderr (stdout is for the report), stamped with seconds since `t0`."""

    def log(message: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f}s] {message}", file=sys.stderr, flush=True)

    return log


def summarise_runs(backend: str, impl: str, mode: str, workers: int,
                   runs: list[RunResult]) -> dict[str, Any]:
    """One row of the throughput table: medians (and spread) over the repeats."""
    return {
        "backend": backend, "impl": impl, "mode": mode, "workers": workers, "repeats": len(runs),
        "transitions_per_s": summary([r.transitions_per_s for r in runs]),
        "workflows_per_s": summary([r.workflows_per_s for r in runs]),
        "cpu_us_per_transition": summary([r.cpu_us_per_transition for r in runs]),
        "server_cpu_us_per_transition": _optional_summary(
            [r.server_cpu_us_per_transition for r in runs]),
        "total_cpu_us_per_transition": _optional_summary([total_cpu_us(r) for r in runs]),
        "elapsed_s": summary([r.elapsed_s for r in runs]),
    }


def _optional_summary(samples: list[float | None]) -> dict[str, Any] | None:
    """`summary` of the samples, or None if any is missing (e.g. the server is remote)."""
    present = [s for s in samples if s is not None]
    return summary(present) if present and len(present) == len(samples) else None


def _ungrouped(url: str, workers: int, workflows: int, timeout: float) -> RunResult:
    return run_threads_mode(url, workers, workflows, timeout, group=False)


# statemachine's worker modes: threads and processes as the Worker's defaults have them,
# grouped (threads, group commit on) and ungrouped (threads, group commit off).
ENGINE_RUNS: dict[str, Callable[[str, int, int, float], RunResult]] = {
    "threads": run_threads_mode, "processes": run_processes_mode, "grouped": run_grouped_mode,
    "ungrouped": _ungrouped}


def _engine_run(mode: str) -> Callable[[str, int, int, float], RunResult]:
    return ENGINE_RUNS[mode]


def engine_run_on_fresh_rows(cfg: Config, url: str, mode: str, workers: int) -> RunResult:
    """`_timed_engine_run` without the insert time."""
    return _timed_engine_run(cfg, url, mode, workers)[0]


def _timed_engine_run(cfg: Config, url: str, mode: str, workers: int,
                      fresh: Callable[[], str] | None = None) -> tuple[RunResult, float]:
    """Start N workflows in bulk on a clean table, then time `workers` statemachine workers;
    returns the run and the seconds `start_many` took."""
    if fresh is not None:
        url = fresh()
    else:
        reset_statemachine(url)
    store = Store(url)
    try:
        insert_s = start_workflows(store, cfg.workflows)
    finally:
        store.dispose()
    if fresh is None:
        checkpoint(url)
    result = _engine_run(mode)(url, workers, cfg.workflows, cfg.run_timeout)
    verify_finished(url, cfg.workflows)
    return result, insert_s


# The loops every statemachine figure is divided by: (impl, mode) of their rows.
LOOPS = (("reference", "processes"), ("same_plan", "processes"))


def timed_same_plan(cfg: Config, url: str, workers: int) -> RunResult:
    """The same-plan loop on statemachine's own tables, started as statemachine's runs are."""
    reset_statemachine(url)
    store = Store(url)
    try:
        start_workflows(store, cfg.workflows)
    finally:
        store.dispose()
    checkpoint(url)
    result = time_same_plan(url, workers, cfg.workflows, cfg.run_timeout)
    verify_finished(url, cfg.workflows)
    return result


def _median(runs: list[RunResult], figure: Callable[[RunResult], float | None]) -> float | None:
    values = [figure(r) for r in runs]
    present = [v for v in values if v is not None]
    return statistics.median(present) if present and len(present) == len(values) else None


def total_cpu_us(r: RunResult) -> float | None:
    """Client + PostgreSQL backend CPU µs per transition (None when the server's is unknown)."""
    server = r.server_cpu_us_per_transition
    return None if server is None else r.cpu_us_per_transition + server


def ratios_of(runs: dict[tuple[str, str, int], list[RunResult]], modes: tuple[str, ...],
              workers: tuple[int, ...]) -> dict[str, Any]:
    """statemachine ÷ each loop, from the medians of runs made in the same run: transitions/s
    (higher is better) and CPU per transition, client + server (lower is better)."""
    out: dict[str, Any] = {"ratio_to_reference": {}, "ratio_to_same_plan": {},
                           "cpu_ratio_to_same_plan": {}}
    for mode in modes:
        for w in workers:
            sm = runs.get(("statemachine", mode, w))
            if not sm:
                continue
            rate = _median(sm, lambda r: r.transitions_per_s)
            cpu = _median(sm, total_cpu_us)
            for (impl, loop_mode), key in zip(LOOPS, ("ratio_to_reference", "ratio_to_same_plan"),
                                              strict=True):
                loop = runs.get((impl, loop_mode, w))
                loop_rate = _median(loop, lambda r: r.transitions_per_s) if loop else None
                if rate and loop_rate:
                    out[key].setdefault(mode, {})[str(w)] = round(rate / loop_rate, 3)
            plan = runs.get(("same_plan", "processes", w))
            plan_cpu = _median(plan, total_cpu_us) if plan else None
            if cpu and plan_cpu:
                out["cpu_ratio_to_same_plan"].setdefault(mode, {})[str(w)] = round(
                    cpu / plan_cpu, 3)
    return out


def throughput_postgres(cfg: Config, url: str, log: Log) -> dict[str, Any]:
    """Both hand-written loops and statemachine, for every worker count and mode, interleaved
    per repeat so that background noise hits all of them alike."""
    prepare_reference_tables(url)
    runs: dict[tuple[str, str, int], list[RunResult]] = {}
    inserts: list[float] = []
    modes, missing = available_modes(cfg.modes)

    def record(key: tuple[str, str, int], res: RunResult, rep: int) -> None:
        runs.setdefault(key, []).append(res)
        log(f"throughput rep {rep + 1}/{cfg.repeats}: {key[0]}, {key[2]} {key[1]}: "
            f"{res.transitions_per_s:,.0f} transitions/s")

    for rep in range(cfg.repeats):
        for workers in cfg.workers:
            record(("reference", "processes", workers),
                   run_reference(url, workers, cfg.workflows, cfg.run_timeout), rep)
            record(("same_plan", "processes", workers), timed_same_plan(cfg, url, workers), rep)
            for mode in modes:
                res, insert_s = _timed_engine_run(cfg, url, mode, workers)
                inserts.append(cfg.workflows / insert_s)
                record(("statemachine", mode, workers), res, rep)
    order = {"reference": 0, "same_plan": 1, "statemachine": 2}
    entries = [summarise_runs("postgresql", impl, mode, w, r) for (impl, mode, w), r in
               sorted(runs.items(), key=lambda kv: (kv[0][2], order[kv[0][0]], kv[0][1]))]
    return {"runs": entries, **ratios_of(runs, modes, cfg.workers),
            "start_many_workflows_per_s": summary(inserts), "not_available": missing}


def available_modes(modes: tuple[str, ...]) -> tuple[tuple[str, ...], dict[str, str]]:
    """The modes this statemachine can run, and why each other one cannot."""
    if "grouped" in modes and not grouping.available():
        return tuple(m for m in modes if m != "grouped"), {"grouped": grouping.unavailable_reason()}
    return modes, {}


def throughput_sqlite(cfg: Config, log: Log) -> dict[str, Any]:
    """statemachine on the embedded SQLite backend: a fresh database file for every run; then
    latency on a fresh file."""
    runs: dict[tuple[str, int], list[RunResult]] = {}
    modes, missing = available_modes(cfg.modes)
    with tempfile.TemporaryDirectory(prefix="sm_bench_sqlite_") as tmp:
        counter = iter(range(10**6))

        def fresh() -> str:
            url = f"sqlite:///{Path(tmp) / f'bench-{next(counter)}.db'}"
            store = Store(url)
            store.migrate()
            store.dispose()
            return url

        for rep in range(cfg.repeats):
            for workers in cfg.sqlite_workers:
                for mode in modes:
                    res, _ = _timed_engine_run(cfg, "", mode, workers, fresh=fresh)
                    runs.setdefault((mode, workers), []).append(res)
                    log(f"sqlite rep {rep + 1}/{cfg.repeats}: statemachine, {workers} {mode}: "
                        f"{res.transitions_per_s:,.0f} transitions/s")
        lat = latency.measure(cfg, fresh(), log, backend="sqlite")
    entries = [summarise_runs("sqlite", "statemachine", mode, w, r)
               for (mode, w), r in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0]))]
    return {"runs": entries, "sqlite_version": sqlite3.sqlite_version, "not_available": missing,
            "latency": lat}


def run(cfg: Config) -> dict[str, Any]:
    """Run every section `cfg` asks for; returns the results (errors included, never raised)."""
    t0 = time.monotonic()
    log = make_log(t0)
    started = datetime.now(UTC)
    results: dict[str, Any] = {"schema": 1, "errors": {}}
    meta: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "machine": sysinfo.machine(),
        "software": sysinfo.software(),
        "git": sysinfo.git_revision(),
        "load_average_start": sysinfo.load_average(),
        "config": sysinfo.config_dict(cfg),
    }
    results["meta"] = meta

    def section(name: str, fn: Callable[[], Any]) -> None:
        if not cfg.wants(name):
            return
        log(f"section {name}")
        s0 = time.monotonic()
        try:
            results[name] = fn()
        except Exception:
            results["errors"][name] = traceback.format_exc()
            log(f"section {name} FAILED:\n{results['errors'][name]}")
        meta.setdefault("section_seconds", {})[name] = round(time.monotonic() - s0, 1)

    needs_pg = any(cfg.wants(s) for s in ("throughput", "grouping", "sql", "latency", "scale",
                                          "memory", "profile", "async"))
    db: BenchDatabase | None = None
    try:
        if needs_pg:
            db = BenchDatabase(cfg.pg_url)
            log(f"database {db.name} created")
            meta["postgres"] = server_info(db.url)
            url = db.url
            section("throughput", lambda: throughput_postgres(cfg, url, log))
            section("grouping", lambda: grouping.measure(cfg, url, log))
            section("sql", lambda: sqlcount.measure(cfg, url, log))
            section("latency", lambda: latency.measure(cfg, url, log))
            section("events",
                    lambda: latency.measure_send_to_handler_latency(url, cfg.latency_runs))
            section("scale", lambda: scale.measure(cfg, url, log))
            section("memory", lambda: memory.measure(cfg, url, log))
            section("profile", lambda: profiling.measure(cfg, url, log))
            section("async", lambda: async_worker.measure_for(cfg, url, log))
        section("sqlite", lambda: throughput_sqlite(cfg, log))
    finally:
        if db is not None:
            if cfg.keep:
                log(f"kept database {db.name}: {db.url}")
                meta["kept_database"] = db.url
            else:
                db.drop()
                log(f"database {db.name} dropped")
    meta["load_average_end"] = sysinfo.load_average()
    meta["git_end"] = sysinfo.git_revision()
    meta["duration_s"] = round(time.monotonic() - t0, 1)
    return results
