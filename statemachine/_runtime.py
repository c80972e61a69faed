"""The worker: claim due workflows, run their handlers, commit the next state, hold leases.

A `Worker` runs inside the application's process: `run()` blocks (and handles SIGTERM/SIGINT),
`start()`/`stop()` embed it. One claimer thread takes batches of due rows, a pool of handler threads
runs them, and a heartbeat thread keeps the leases of in-flight workflows alive. When a commit
yields a state that can run now, the same thread keeps the lease and runs it at once (sticky
continuation: one round trip per transition).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from types import FrameType

from ._clock import Clock
from ._definition import Machine
from ._runner import Loaded, Runner
from ._schedules import Schedule, run_schedule
from ._serde import StateCodec
from ._store import Change, ClaimedRow, Store
from .errors import StateMachineError

__all__ = ["Worker"]

log = logging.getLogger("statemachine.worker")


class Worker:
    """Runs workflows of the given machines from the store, in this process."""

    def __init__(
        self,
        store: Store,
        machines: Iterable[Machine | type[Machine]],
        *,
        concurrency: int = 4,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        min_poll_interval: float = 0.02,
        grace: float = 30.0,
        sticky: bool = True,
        name: str | None = None,
        on_change: Callable[[Change, int], None] | None = None,
        schedules: Iterable[Schedule] = (),
    ) -> None:
        """`concurrency`: handlers run at once (threads). `lease`: seconds a claimed workflow is
        held before another worker may take it over (renewed while the handler runs).
        `poll_interval`: the longest wait between claims when idle (it shrinks when busy).
        `grace`: on stop, how long in-flight handlers may take to finish. `on_change` is called
        (in the handler's thread) with every change this worker commits and its new version.
        `schedules` are checked every poll interval (any number of workers may share them)."""
        self.store = store
        self.machines: dict[str, Loaded] = {}
        for m in machines:
            instance = m() if isinstance(m, type) else m
            spec = type(instance).spec
            self.machines[spec.name] = Loaded(instance, spec, StateCodec(spec))
        if not self.machines:
            raise StateMachineError("a worker needs at least one machine")
        self.concurrency = concurrency
        self.lease = lease
        self.poll_interval = poll_interval
        self.min_poll_interval = min_poll_interval
        self.grace = grace
        self.sticky = sticky
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.clock: Clock = store.clock
        self._executor: ThreadPoolExecutor | None = None
        self._inflight: dict[uuid.UUID, tuple[str, float]] = {}  # id -> (lease token, lease secs)
        self._futures: set[Future[None]] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._slot_free = threading.Event()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._hurry = threading.Event()  # a second signal: stop waiting for handlers
        self.abandoned = 0  # handlers still running when stop() gave their workflows back
        self._threads: list[threading.Thread] = []
        self.schedules = list(schedules)
        self._names = list(self.machines)
        self.runner = Runner(
            store, self.machines, worker=self.name, lease=lease, on_change=on_change,
            sticky=lambda: self.sticky and not self._stopping.is_set(),
            extend_lease=self._extend_lease)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start claiming and running in background threads; returns at once."""
        if self._threads:
            raise StateMachineError("worker already started")
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="sm-handler")
        self.store.sql.subscribe(self.wake)
        subscribe = getattr(self.clock, "subscribe", None)
        if subscribe is not None:
            subscribe(self.wake)  # a test's FakeClock: claim as soon as time moves
        for target, name in ((self._claim_loop, "sm-claimer"), (self._heartbeat, "sm-heartbeat")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        log.info("worker %s started: %s", self.name, ", ".join(self.machines))

    def stop(self, grace: float | None = None) -> None:
        """Stop claiming, let in-flight handlers finish for up to `grace` seconds, then give back
        whatever is still held so other workers can take it at once."""
        grace = self.grace if grace is None else grace
        self._stopping.set()
        self._wake.set()
        self._slot_free.set()
        self.store.sql.unsubscribe(self.wake)
        unsubscribe = getattr(self.clock, "unsubscribe", None)
        if unsubscribe is not None:
            unsubscribe(self.wake)
        deadline = time.monotonic() + grace
        for t in self._threads[:1]:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            pending = set(self._futures)
        # Short slices, so that a second signal (`_hurry`) cuts the grace short.
        while pending and not self._hurry.is_set() and time.monotonic() < deadline:
            _, pending = wait_futures(pending, min(0.1, max(0.0, deadline - time.monotonic())))
        self.abandoned = sum(not f.done() for f in pending)
        if self.abandoned:
            log.warning("worker %s: %d handlers still running, their workflows are given back",
                        self.name, self.abandoned)
        self._release_all()
        self._stopped.set()
        for t in self._threads[1:]:
            t.join(2.0)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        log.info("worker %s stopped after %d transitions", self.name, self.transitions)

    def run(self, *, install_signal_handlers: bool = True) -> None:
        """Run until SIGTERM/SIGINT (or `stop()` from another thread). The first signal stops
        gracefully (see `grace`); a second one gives back held work and returns at once."""
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            def on_signal(signum: int, _frame: FrameType | None) -> None:
                if self._stopping.is_set():
                    self._hurry.set()
                log.info("worker %s: signal %d, stopping", self.name, signum)
                self._stopping.set()
                self._wake.set()

            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
        self.start()
        while not self._stopping.wait(0.2):
            pass
        self.stop()

    def wake(self) -> None:
        """Claim now instead of at the next poll (called when work was started in-process)."""
        self._wake.set()

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- claiming ----------------------------------------------------------------------------

    def _claim_loop(self) -> None:
        names = self._names
        idle_wait = self.min_poll_interval
        last_sweep = 0.0
        while not self._stopping.is_set():
            if time.monotonic() - last_sweep >= self.poll_interval:
                last_sweep = time.monotonic()
                try:
                    self.store.sql.notice_sql_events()
                    for schedule in self.schedules:
                        run_schedule(self.store, schedule)
                except StateMachineError as e:
                    log.warning("worker %s: event sweep or schedule failed: %s", self.name, e)
            with self._lock:
                free = self.concurrency - len(self._futures)
            if free <= 0:
                self._slot_free.wait(self.poll_interval)
                self._slot_free.clear()
                continue
            try:
                rows = self.store.sql.claim(owner=self.name, machines=names, limit=free,
                                        lease=self.lease)
            except StateMachineError as e:
                log.warning("worker %s: claim failed: %s", self.name, e)
                rows = []
                idle_wait = self.poll_interval
            for row in rows:
                self._submit(row)
            if rows:
                idle_wait = self.min_poll_interval
                continue
            self._wake.wait(idle_wait)
            if not self._wake.is_set():
                idle_wait = min(self.poll_interval, idle_wait * 2)
            else:
                idle_wait = self.min_poll_interval
            self._wake.clear()

    def _submit(self, row: ClaimedRow) -> None:
        assert self._executor is not None
        with self._lock:
            self._inflight[row.id] = (row.lease_token, self.lease)
            future = self._executor.submit(self._run_safely, row)
            self._futures.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)
        self._slot_free.set()

    def _heartbeat(self) -> None:
        interval = max(0.05, self.lease / 3)
        while not self._stopped.wait(interval):
            with self._lock:
                held = dict(self._inflight)
            by_token: dict[tuple[str, float], list[uuid.UUID]] = {}
            for wid, key in held.items():
                by_token.setdefault(key, []).append(wid)
            for (token, lease), ids in by_token.items():
                try:
                    kept = self.store.sql.renew_leases(ids, token, lease)
                except StateMachineError as e:
                    log.warning("worker %s: lease renewal failed: %s", self.name, e)
                    continue
                with self._lock:  # rows that finished since the snapshot are not lost
                    lost = [i for i in set(ids) - kept
                            if self._inflight.get(i, ("",))[0] == token]
                for wid in lost:
                    log.warning("worker %s: lost the lease of workflow %s", self.name, wid)
            try:
                self.store.sql.renew_slots(list(held), self.lease)
            except StateMachineError as e:
                log.warning("worker %s: limit slot renewal failed: %s", self.name, e)

    def _release_all(self) -> None:
        with self._lock:
            held = {k: v for k, v in self._inflight.items()
                    if k not in self.runner.unreleasable}
            self._inflight.clear()
        by_token: dict[str, list[uuid.UUID]] = {}
        for wid, (token, _) in held.items():
            by_token.setdefault(token, []).append(wid)
        for token, ids in by_token.items():
            try:
                released = self.store.sql.release(ids, token)
                log.info("worker %s: released %d workflows", self.name, released)
            except StateMachineError as e:
                log.warning("worker %s: release failed (leases will expire): %s", self.name, e)

    # -- running -----------------------------------------------------------------------------

    def _run_safely(self, row: ClaimedRow) -> None:
        current: ClaimedRow | None = row
        while current is not None:
            try:
                self.runner.run(current)
            except Exception:
                # A bug or a database outage: the lease will expire and another attempt runs.
                log.exception("worker %s: unexpected error running workflow %s", self.name,
                              current.id)
            finally:
                with self._lock:
                    self._inflight.pop(current.id, None)
            current = self._claim_next()

    def _claim_next(self) -> ClaimedRow | None:
        """While busy, a handler thread that finished takes its next workflow itself: no hand-off
        through the claimer thread (which still claims for idle slots and wake-ups)."""
        if not self.sticky or self._stopping.is_set():
            return None
        try:
            rows = self.store.sql.claim(owner=self.name, machines=self._names, limit=1,
                                    lease=self.lease)
        except StateMachineError as e:
            log.warning("worker %s: claim failed: %s", self.name, e)
            return None
        if not rows:
            return None
        with self._lock:
            self._inflight[rows[0].id] = (rows[0].lease_token, self.lease)
        return rows[0]

    def _extend_lease(self, row: ClaimedRow, seconds: float) -> None:
        with self._lock:
            self._inflight[row.id] = (row.lease_token, max(seconds, self.lease))
        self.store.sql.renew_leases([row.id], row.lease_token, seconds)

    @property
    def transitions(self) -> int:
        """Changes this worker has committed."""
        return self.runner.transitions
