"""Timing statemachine workers on the benchmark workload: W handler threads in this process, or W
worker processes with one handler thread each.

A run starts from N due workflows (started in bulk beforehand, not timed) and ends when the last
one commits its terminal state, seen through the `Worker(on_change=...)` hook.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import text

from statemachine import Store, Worker

from .database import backend_cpu, backend_cpu_delta
from .grouping import group_option
from .hooks import StatementCounter
from .procs import BenchError, ChildReport, RunResult, Shared, child_guard, run_processes
from .workload import TRANSITIONS, BenchFlow

__all__ = ["FinishCounter", "make_worker", "run_grouped_mode", "run_processes_mode",
           "run_threads_mode", "verify_finished"]


class FinishCounter:
    """An `on_change` hook that counts finished workflows and stamps the time the `target`-th
    one committed."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.finished = 0
        self.end_time = 0.0
        self.done = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, change: Any, _version: int) -> None:
        """Called by the worker after every committed change."""
        if change.status != "done":
            return
        with self._lock:
            self.finished += 1
            if self.finished == self.target:
                self.end_time = time.monotonic()
                self.done.set()


def make_worker(store: Store, concurrency: int, on_change: Callable[[Any, int], None],
                group: bool | None = None) -> Worker:
    """The worker every benchmark uses: the bench machine, default lease and polling. `group`:
    turn group commit on or off (None: the Worker's default; see `bench.grouping`)."""
    return Worker(store, [BenchFlow()], concurrency=concurrency, on_change=on_change,
                  **group_option(group))


def run_threads_mode(url: str, workers: int, workflows: int, timeout: float,
                     store_hook: Callable[[Store], None] | None = None,
                     group: bool | None = None) -> RunResult:
    """Time one `Worker(concurrency=workers)` in this process until `workflows` finish. CPU is this
    process's (the main thread only waits). `store_hook` may instrument the store first; `group`
    as for `make_worker`."""
    store = Store(url)
    if store_hook is not None:
        store_hook(store)
    counter = FinishCounter(workflows)
    worker = make_worker(store, workers, counter, group)
    try:
        store.current_time()  # open a pooled connection before the clock starts
        server0 = backend_cpu(url)
        cpu0 = time.process_time()
        t0 = time.monotonic()
        worker.start()
        if not counter.done.wait(timeout):
            raise BenchError(f"{counter.finished} of {workflows} workflows finished after "
                             f"{timeout:.0f}s (threads, {workers} workers)")
        cpu = time.process_time() - cpu0
        elapsed = counter.end_time - t0
        server = backend_cpu_delta(server0, backend_cpu(url))
    finally:
        worker.stop(grace=10)
        store.dispose()
    return RunResult(workflows, workflows * TRANSITIONS, elapsed, cpu, server_cpu_s=server)


def _engine_child(shared: Shared, url: str, concurrency: int, count_statements: bool) -> None:
    def body() -> ChildReport:
        store = Store(url)
        counter = StatementCounter()
        if count_statements:
            counter.install(store)
        worker = make_worker(store, concurrency, lambda change, _v: (
            shared.workflow_finished() if change.status == "done" else None))
        try:
            store.current_time()
            shared.barrier.wait()
            cpu0 = time.process_time()
            worker.start()
            shared.stop.wait()
            cpu = time.process_time() - cpu0
            worker.stop(grace=10)
            return ChildReport(worker.transitions, cpu, stats=counter.stats())
        finally:
            store.dispose()

    child_guard(shared, body)


def run_grouped_mode(url: str, workers: int, workflows: int, timeout: float) -> RunResult:
    """`run_threads_mode` with group commit on (`bench.grouping.available()` must be true)."""
    return run_threads_mode(url, workers, workflows, timeout, group=True)


def run_processes_mode(url: str, workers: int, workflows: int, timeout: float,
                       count_statements: bool = False) -> RunResult:
    """Time `workers` processes, each a `Worker(concurrency=1)`, until `workflows` finish.
    With `count_statements`, the result's `stats` hold their `StatementCounter` figures."""
    return run_processes(_engine_child, (url, 1, count_statements), workers, workflows,
                         workflows * TRANSITIONS, timeout, server_cpu=lambda: backend_cpu(url))


def verify_finished(url: str, workflows: int) -> None:
    """Check that the run really finished `workflows` workflows (at least: the scale section keeps
    earlier runs' rows), with three transitions of history each and nothing left due or parked."""
    store = Store(url)
    try:
        with store.connect() as conn:
            status: dict[str, int] = {str(s): int(c) for s, c in conn.execute(text(
                "SELECT status, count(*) FROM sm_workflows WHERE wake_at IS NULL OR "
                "wake_at < CURRENT_TIMESTAMP GROUP BY status"))}
            steps = conn.execute(text(
                "SELECT count(*) FROM sm_history WHERE kind = 'transition'")).scalar_one()
    finally:
        store.dispose()
    if status.get("done", 0) < workflows or steps < workflows * TRANSITIONS or set(status) - {
            "done"}:
        raise BenchError(f"after the run: rows by status {status}, {steps} transitions in history "
                         f"(expected {workflows} done, {workflows * TRANSITIONS} transitions)")
