"""Worker memory: resident set size of a worker process when it starts and as it commits
100,000 transitions (by default), read from ``/proc/self/status`` (VmRSS, and VmHWM for the peak).

The worker runs alone in a fresh process (so the figures are the worker's, not the benchmark's),
with 4 handler threads. Samples along the way separate warm-up (caches filling in the first
thousand transitions) from steady growth (a leak).
"""

from __future__ import annotations

import math
import queue
import resource
import time
from pathlib import Path
from typing import Any

from statemachine import Store

from .config import Config, Log
from .database import checkpoint, reset_statemachine
from .engine import make_worker
from .procs import mp_context
from .workload import TRANSITIONS, start_workflows

__all__ = ["measure", "rss_kb"]

THRESHOLDS = (1_000, 10_000, 50_000, 100_000, 250_000, 500_000, 1_000_000)


def rss_kb() -> dict[str, int]:
    """This process's resident set size now and at its peak, in kB."""
    try:
        fields = dict(line.split(":", 1) for line in
                      Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return {"rss_kb": int(fields["VmRSS"].split()[0]),
                "peak_kb": int(fields["VmHWM"].split()[0])}
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
        return {"rss_kb": peak, "peak_kb": peak}


def _memory_child(url: str, concurrency: int, target: int, reports: Any) -> None:
    try:
        store = Store(url)
        worker = make_worker(store, concurrency, lambda _c, _v: None)
        store.current_time()
        samples = [{"transitions": 0, **rss_kb()}]
        marks = [t for t in THRESHOLDS if t < target] + [target]
        t0 = time.monotonic()
        worker.start()
        for mark in marks:
            while worker.transitions < mark:
                time.sleep(0.02)
            samples.append({"transitions": worker.transitions, **rss_kb()})
        elapsed = time.monotonic() - t0
        worker.stop(grace=10)
        store.dispose()
        reports.put({"samples": samples, "elapsed_s": elapsed})
    except BaseException as e:
        reports.put({"error": repr(e)})


def measure(cfg: Config, url: str, log: Log) -> dict[str, Any]:
    """Start enough workflows for `cfg.memory_transitions`, run one worker process through them,
    and report its RSS along the way."""
    target = cfg.memory_transitions
    workflows = math.ceil(target / TRANSITIONS)
    reset_statemachine(url)
    store = Store(url)
    try:
        start_workflows(store, workflows)
    finally:
        store.dispose()
    checkpoint(url)
    log(f"memory: {workflows:,} workflows started; running one worker to {target:,} transitions")
    ctx = mp_context()
    reports = ctx.Queue()
    proc = ctx.Process(target=_memory_child, args=(url, cfg.memory_workers, target, reports),
                       daemon=True)
    proc.start()
    timeout = max(cfg.run_timeout, target / 50)
    try:
        report = reports.get(timeout=timeout)
    except queue.Empty:
        raise RuntimeError(f"the memory worker did not reach {target:,} transitions in "
                           f"{timeout:.0f}s") from None
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    if "error" in report:
        raise RuntimeError(f"memory worker failed: {report['error']}")
    samples = [{"transitions": s["transitions"], "rss_mb": round(s["rss_kb"] / 1024, 1)}
               for s in report["samples"]]
    first, last = report["samples"][0], report["samples"][-1]
    return {
        "worker_concurrency": cfg.memory_workers,
        "transitions": last["transitions"],
        "rss_start_mb": round(first["rss_kb"] / 1024, 1),
        "rss_after_mb": round(last["rss_kb"] / 1024, 1),
        "rss_growth_mb": round((last["rss_kb"] - first["rss_kb"]) / 1024, 1),
        "peak_mb": round(last["peak_kb"] / 1024, 1),
        "transitions_per_s": round(last["transitions"] / report["elapsed_s"], 1),
        "samples": samples,
    }
