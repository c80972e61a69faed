"""Latency of one workflow on an idle worker, and (once events exist) of an event's delivery.

`start_to_done`: `Client.start` of one 3-transition workflow in the worker's own process (so the
start wakes the worker at once), until its terminal state is committed, seen through the
worker's `on_change` hook. `start_to_wait`: the same, ended by `Client.wait` returning, which is
what a caller sees (it adds `wait`'s polling). `start_call`: how long `Client.start` itself took.
`send_to_handler` (the events section): `Client.send` to the start of the event's handler.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from statemachine import Client, Store, Worker

from .config import Config, Log
from .database import reset_statemachine
from .engine import make_worker
from .stats import percentile
from .workload import Arrived, BenchFlow, Ping, Received, ping_machine

__all__ = ["latency_summary", "measure", "measure_send_to_handler_latency", "start_to_done"]

PAUSE_S = 0.01  # between runs, so that each start finds the worker idle
WARMUP = 5


def latency_summary(samples_s: list[float]) -> dict[str, float | int]:
    """p50/p90/p99/max/mean in milliseconds."""
    ms = [s * 1000 for s in samples_s]
    return {"runs": len(ms), "p50_ms": round(percentile(ms, 50), 3),
            "p90_ms": round(percentile(ms, 90), 3), "p99_ms": round(percentile(ms, 99), 3),
            "max_ms": round(max(ms), 3), "mean_ms": round(sum(ms) / len(ms), 3)}


class _DoneTimes:
    """`on_change` hook: when each workflow committed its terminal state."""

    def __init__(self) -> None:
        self.times: dict[uuid.UUID, float] = {}
        self.cond = threading.Condition()

    def __call__(self, change: Any, _version: int) -> None:
        if change.status == "done":
            now = time.perf_counter()
            with self.cond:
                self.times[change.workflow_id] = now
                self.cond.notify_all()

    def wait_for(self, workflow_id: uuid.UUID, timeout: float) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: workflow_id in self.times, timeout):
                raise TimeoutError(f"workflow {workflow_id} not done after {timeout}s")
            return self.times[workflow_id]


def _one_at_a_time(client: Client, done: _DoneTimes, runs: int,
                   start_calls: list[float] | None = None) -> list[float]:
    """Start `runs` workflows one by one (after a warm-up), each when the previous is done;
    returns the seconds from `Client.start` to the terminal commit of each."""
    to_done: list[float] = []
    for i in range(WARMUP + runs):
        time.sleep(PAUSE_S)
        t0 = time.perf_counter()
        wid = client.start(BenchFlow, Received(n=i))
        t1 = time.perf_counter()
        finished = done.wait_for(wid, 30.0)
        if i >= WARMUP:
            if start_calls is not None:
                start_calls.append(t1 - t0)
            to_done.append(finished - t0)
    return to_done


def measure(cfg: Config, url: str, log: Log, *, backend: str = "postgresql") -> dict[str, Any]:
    """Run `cfg.latency_runs` workflows one at a time on an idle in-process worker (concurrency 4,
    the default), twice: timed by the worker hook, then by `Client.wait`. On PostgreSQL the
    tables are emptied first; a SQLite `url` should be a fresh file."""
    if backend == "postgresql":
        reset_statemachine(url)
    store = Store(url)
    client = Client(store, [BenchFlow])
    done = _DoneTimes()
    worker = make_worker(store, 4, done)
    start_calls: list[float] = []
    to_wait: list[float] = []
    worker.start()
    try:
        to_done = _one_at_a_time(client, done, cfg.latency_runs, start_calls)
        log(f"latency ({backend}) start->done p50 {percentile(to_done, 50) * 1000:.1f} ms")
        for i in range(cfg.latency_runs):
            time.sleep(PAUSE_S)
            t0 = time.perf_counter()
            wid = client.start(BenchFlow, Received(n=i))
            info = client.wait(wid, timeout=30.0)
            to_wait.append(time.perf_counter() - t0)
            if info.status != "done":
                raise RuntimeError(f"latency workflow {wid} ended {info.status}")
        log(f"latency ({backend}) start->wait() p50 {percentile(to_wait, 50) * 1000:.1f} ms")
    finally:
        worker.stop(grace=10)
        store.dispose()
    return {"start_to_done": latency_summary(to_done),
            "start_to_wait": latency_summary(to_wait),
            "start_call": latency_summary(start_calls),
            "worker_concurrency": 4, "backend": backend}


def start_to_done(cfg: Config, url: str, *, concurrency: int,
                  group: bool | None = None) -> dict[str, float | int]:
    """start -> done latency of `cfg.latency_runs` workflows one at a time on a PostgreSQL worker
    of `concurrency` threads, grouping set to `group` (see `bench.grouping`)."""
    reset_statemachine(url)
    store = Store(url)
    client = Client(store, [BenchFlow])
    done = _DoneTimes()
    worker = make_worker(store, concurrency, done, group)
    worker.start()
    try:
        return latency_summary(_one_at_a_time(client, done, cfg.latency_runs))
    finally:
        worker.stop(grace=10)
        store.dispose()


def _wait_for_stamp(cond: threading.Condition, stamps: dict[uuid.UUID, float],
                    wid: uuid.UUID) -> float:
    with cond:
        if not cond.wait_for(lambda: wid in stamps, 30.0):
            raise TimeoutError(f"event handler of {wid} did not start within 30 s")
        return stamps[wid]


def measure_send_to_handler_latency(url: str, runs: int) -> dict[str, Any]:
    """Latency from `Client.send` of an event to a workflow waiting for it until that event's
    handler starts running (in-process idle worker, one event at a time).

    `runs` ping workflows are started and left waiting in `AwaitingPing`; then each gets its
    `Ping`, timed from just before `send` to the first line of the event handler. Skipped (with
    the reason) while statemachine does not export `on_event` and `Client.send`.
    """
    stamps: dict[uuid.UUID, float] = {}
    cond = threading.Condition()

    def stamp(ctx: Any) -> None:
        now = time.perf_counter()
        with cond:
            stamps.setdefault(ctx.workflow_id, now)
            cond.notify_all()

    machine = ping_machine(stamp)
    if machine is None or not hasattr(Client, "send"):
        return {"skipped": "events are not public in statemachine yet (no `on_event` export); "
                           "bench.latency.measure_send_to_handler_latency runs once they are"}
    reset_statemachine(url)
    store = Store(url)
    client = Client(store, [type(machine)])
    worker = Worker(store, [machine], concurrency=4)
    send: Callable[[uuid.UUID, object], Any] = client.send
    samples: list[float] = []
    worker.start()
    try:
        ids = client.start_many(type(machine), [Arrived(n=i) for i in range(WARMUP + runs)])
        deadline = time.monotonic() + 60
        while store.sql.count_by_status().get("waiting", 0) < len(ids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"ping workflows not all waiting: {store.sql.count_by_status()}")
            time.sleep(0.05)
        for i, wid in enumerate(ids):
            time.sleep(PAUSE_S)
            t0 = time.perf_counter()
            send(wid, Ping(n=i))
            started = _wait_for_stamp(cond, stamps, wid)
            if i >= WARMUP:
                samples.append(started - t0)
    finally:
        worker.stop(grace=10)
        store.dispose()
    return {"send_to_handler": latency_summary(samples), "worker_concurrency": 4}
