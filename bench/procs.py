"""Timing W worker processes on one shared workload, for the reference loop and for statemachine.

Children start (from a fork server that has already imported the libraries), open their
connections, then meet the parent at a barrier; the clock starts when the barrier opens. Each
finished workflow counts up a shared counter; the child that counts the last one stamps the end
time (``time.monotonic`` is system-wide on Linux, so the stamps of different processes compare)
and sets the `done` event. Then the parent sets `stop` and collects each child's report.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import multiprocessing.context
import multiprocessing.synchronize
import queue
import time
import traceback
from collections.abc import Callable
from multiprocessing.sharedctypes import Synchronized
from typing import Any

__all__ = ["BenchError", "ChildReport", "RunResult", "Shared", "child_guard", "mp_context",
           "run_processes"]

from .database import backend_cpu_delta

_PRELOAD = ["statemachine", "sqlalchemy", "psycopg", "bench.workload", "bench.reference",
            "bench.sameplan",
            "bench.engine"]


class BenchError(RuntimeError):
    """A timed run did not complete (a worker crashed, or the workload did not finish in time)."""


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One timed run: `workflows` finished, `transitions` committed, in `elapsed_s` seconds of
    wall time, using `cpu_s` seconds of CPU in the worker processes (client side only)."""

    workflows: int
    transitions: int
    elapsed_s: float
    cpu_s: float
    # Counters the workers kept (summed over processes), e.g. the reference's statement times.
    stats: dict[str, float] = dataclasses.field(default_factory=dict)
    # CPU seconds the database server's backends spent (None: server not on this machine).
    server_cpu_s: float | None = None

    @property
    def transitions_per_s(self) -> float:
        """Committed transitions per second of wall time."""
        return self.transitions / self.elapsed_s

    @property
    def workflows_per_s(self) -> float:
        """Finished workflows per second of wall time."""
        return self.workflows / self.elapsed_s

    @property
    def cpu_us_per_transition(self) -> float:
        """Client CPU microseconds spent per committed transition."""
        return self.cpu_s / self.transitions * 1e6

    @property
    def server_cpu_us_per_transition(self) -> float | None:
        """Database server CPU microseconds per committed transition, when it could be read."""
        if self.server_cpu_s is None:
            return None
        return self.server_cpu_s / self.transitions * 1e6


@dataclasses.dataclass(frozen=True)
class ChildReport:
    """What a worker process sends back when it stops."""

    transitions: int
    cpu_s: float
    error: str | None = None
    stats: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Shared:
    """The synchronisation objects a run's processes share."""

    target: int
    barrier: multiprocessing.synchronize.Barrier
    finished: Synchronized  # type: ignore[type-arg]
    end_time: Synchronized  # type: ignore[type-arg]
    done: multiprocessing.synchronize.Event
    stop: multiprocessing.synchronize.Event
    reports: multiprocessing.Queue  # type: ignore[type-arg]

    def workflow_finished(self) -> None:
        """Count one finished workflow; the last one stamps the end time and sets `done`."""
        with self.finished.get_lock():
            self.finished.value += 1
            if self.finished.value == self.target:
                self.end_time.value = time.monotonic()
                self.done.set()


def mp_context() -> multiprocessing.context.ForkServerContext:
    """A fork-server context whose server has imported the heavy modules already: children start
    fast and inherit no open connections (forking a process that holds pooled connections is
    unsafe)."""
    ctx = multiprocessing.get_context("forkserver")
    assert isinstance(ctx, multiprocessing.context.ForkServerContext)
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def child_guard(shared: Shared, body: Callable[[], ChildReport]) -> None:
    """Run a child's `body` and send its report; on an error, break the barrier (so the parent
    does not wait for a child that will never arrive) and report the traceback."""
    try:
        report = body()
    except BaseException:
        shared.barrier.abort()
        report = ChildReport(0, 0.0, traceback.format_exc())
    shared.reports.put(report)


def run_processes(
    target: Callable[..., None], args: tuple[Any, ...], workers: int, workflows: int,
    transitions: int, timeout: float,
    server_cpu: Callable[[], dict[int, float] | None] | None = None,
) -> RunResult:
    """Start `workers` processes running ``target(shared, *args)`` and time them until
    `workflows` have finished. `transitions` is what the run commits (for the rate).
    `server_cpu` reads the database backends' CPU (`database.backend_cpu`) when the clock starts
    (the children are connected by then) and when the last workflow is done."""
    cpu_before: dict[int, float] | None = None
    ctx = mp_context()
    shared = Shared(
        target=workflows, barrier=ctx.Barrier(workers + 1), finished=ctx.Value("q", 0),
        end_time=ctx.Value("d", 0.0), done=ctx.Event(), stop=ctx.Event(), reports=ctx.Queue())
    procs = [ctx.Process(target=target, args=(shared, *args), daemon=True,
                         name=f"bench-worker-{i}") for i in range(workers)]
    for p in procs:
        p.start()
    reports: list[ChildReport] = []
    try:
        try:
            shared.barrier.wait(timeout=120)
        except Exception as e:
            raise BenchError(f"worker processes did not start: {_errors(shared, reports)}") from e
        t0 = time.monotonic()
        cpu_before = server_cpu() if server_cpu else None
        if not shared.done.wait(timeout):
            raise BenchError(f"{shared.finished.value} of {workflows} workflows finished after "
                             f"{timeout:.0f}s {_errors(shared, reports)}")
        elapsed = shared.end_time.value - t0
        cpu_after = server_cpu() if server_cpu else None
    finally:
        shared.stop.set()
        deadline = time.monotonic() + 60
        while len(reports) < workers and time.monotonic() < deadline:
            try:
                reports.append(shared.reports.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                break
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
    errors = [r.error for r in reports if r.error]
    if errors:
        raise BenchError("a worker process failed:\n" + errors[0])
    stats: dict[str, float] = {}
    for r in reports:
        for k, v in r.stats.items():
            stats[k] = stats.get(k, 0.0) + v
    return RunResult(workflows=workflows, transitions=transitions, elapsed_s=elapsed,
                     cpu_s=sum(r.cpu_s for r in reports), stats=stats,
                     server_cpu_s=backend_cpu_delta(cpu_before, cpu_after))


def _errors(shared: Shared, reports: list[ChildReport]) -> str:
    try:
        while True:
            reports.append(shared.reports.get(timeout=1.0))
    except queue.Empty:
        pass
    errors = [r.error for r in reports if r.error]
    return ("; first worker error:\n" + errors[0]) if errors else ""
