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
from datetime import datetime
from types import FrameType
from typing import Any

import attrs

from .clock import Clock
from .context import Context
from .definition import Failure, Machine, MachineSpec, StepHandler
from .errors import DataError, StateMachineError, UnknownMachine
from .outcome import (
    describe_failure,
    failure_change,
    failure_text,
    park_change,
    transition_change,
    unexpected_state_error,
)
from .serde import StateCodec
from .store import Change, ClaimedRow, Store

__all__ = ["Worker"]

log = logging.getLogger("statemachine.worker")


@attrs.frozen
class _Loaded:
    machine: Machine
    spec: MachineSpec
    codec: StateCodec


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
    ) -> None:
        """`concurrency`: handlers run at once (threads). `lease`: seconds a claimed workflow is
        held before another worker may take it over (renewed while the handler runs).
        `poll_interval`: the longest wait between claims when idle (it shrinks when busy).
        `grace`: on stop, how long in-flight handlers may take to finish. `on_change` is called
        (in the handler's thread) with every change this worker commits and its new version."""
        self.store = store
        self.machines: dict[str, _Loaded] = {}
        for m in machines:
            instance = m() if isinstance(m, type) else m
            spec = type(instance).spec
            self.machines[spec.name] = _Loaded(instance, spec, StateCodec(spec))
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
        self._threads: list[threading.Thread] = []
        self.on_change = on_change
        self.transitions = 0  # committed by this worker

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start claiming and running in background threads; returns at once."""
        if self._threads:
            raise StateMachineError("worker already started")
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="sm-handler")
        self.store.subscribe(self.wake)
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
        self.store.unsubscribe(self.wake)
        deadline = time.monotonic() + grace
        for t in self._threads[:1]:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            futures = list(self._futures)
        for f in futures:
            try:
                f.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: S110 - handler errors were logged where they happened
                pass
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
                    self.grace = 0.0
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
        names = list(self.machines)
        idle_wait = self.min_poll_interval
        while not self._stopping.is_set():
            with self._lock:
                free = self.concurrency - len(self._futures)
            if free <= 0:
                self._slot_free.wait(self.poll_interval)
                self._slot_free.clear()
                continue
            try:
                rows = self.store.claim(owner=self.name, machines=names, limit=free,
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
                    kept = self.store.renew_leases(ids, token, lease)
                except StateMachineError as e:
                    log.warning("worker %s: lease renewal failed: %s", self.name, e)
                    continue
                for lost in set(ids) - kept:
                    log.warning("worker %s: lost the lease of workflow %s", self.name, lost)

    def _release_all(self) -> None:
        with self._lock:
            held = dict(self._inflight)
            self._inflight.clear()
        by_token: dict[str, list[uuid.UUID]] = {}
        for wid, (token, _) in held.items():
            by_token.setdefault(token, []).append(wid)
        for token, ids in by_token.items():
            try:
                released = self.store.release(ids, token)
                log.info("worker %s: released %d workflows", self.name, released)
            except StateMachineError as e:
                log.warning("worker %s: release failed (leases will expire): %s", self.name, e)

    # -- running -----------------------------------------------------------------------------

    def _run_safely(self, row: ClaimedRow) -> None:
        try:
            self._run(row)
        except Exception:
            # A bug or a database outage: the lease will expire and another attempt will run.
            log.exception("worker %s: unexpected error running workflow %s", self.name, row.id)
        finally:
            with self._lock:
                self._inflight.pop(row.id, None)

    def _run(self, row: ClaimedRow) -> None:
        current: ClaimedRow | None = row
        while current is not None:
            current = self._step(current)

    def _step(self, row: ClaimedRow) -> ClaimedRow | None:
        """Run one transition of `row`; returns the row to continue with (sticky), or None."""
        loaded = self.machines[row.machine]
        started = self.clock.now()
        if row.external_change:
            recorded = self._record_external_change(row)
            if recorded is None:
                return None
            row = recorded
        try:
            state = loaded.codec.load(row.state, row.data, workflow=row.id)
        except (DataError, UnknownMachine) as e:
            return self._write(park_change(row, str(e), worker=self.name, started_at=started), row)
        spec = loaded.spec
        if spec.is_terminal(type(state)):
            # Only an operator puts a terminal state in a runnable row: finish it.
            return self._write(transition_change(
                row, spec, row.state, row.data, terminal=True, worker=self.name,
                started_at=started, continue_lease=None, kind="finished"), row)
        handler = spec.steps[type(state)]
        if row.previous_status == "running":
            log.warning("workflow %s: attempt %d of %s was abandoned (worker lost); running again",
                        row.id, row.attempt - 1, row.state)
            if row.attempt > handler.retry.max_attempts:
                failure = Failure(type="WorkerLost", attempt=row.attempt - 1, message=(
                    f"{row.attempt - 1} attempts were abandoned (worker crashed or lost its "
                    "lease); no attempts left"), permanent=True)
                return self._failed_for_good(row, loaded, handler, state, failure, started)

        ctx = self._context(row)
        try:
            result = handler.fn(loaded.machine, state, ctx)
        except Exception as e:
            failure = describe_failure(e, row.attempt, handler.retry.is_permanent(e))
            change = failure_change(row, handler, failure, worker=self.name, started_at=started)
            if change is not None:
                log.info("workflow %s: %s failed (attempt %d), retrying: %s",
                         row.id, row.state, row.attempt, failure)
                return self._write(change, row)
            return self._failed_for_good(row, loaded, handler, state, failure, started)
        return self._commit_result(row, loaded, handler.name, handler.targets, result, started)

    def _commit_result(
        self, row: ClaimedRow, loaded: _Loaded, handler_name: str, allowed: tuple[type, ...],
        result: object, started: datetime, *, kind: str = "transition", error: str | None = None,
    ) -> ClaimedRow | None:
        wrong = unexpected_state_error(handler_name, result, allowed)
        if wrong is not None:
            return self._write(park_change(row, f"workflow {row.id}: {wrong}", worker=self.name,
                                           started_at=started), row)
        try:
            name, data = loaded.codec.dump(result)
        except (DataError, Exception) as e:
            return self._write(park_change(
                row, f"workflow {row.id}: handler {handler_name!r} returned a state that does not "
                f"serialize: {e}", worker=self.name, started_at=started), row)
        terminal = loaded.spec.is_terminal(type(result))
        sticky = self.lease if self.sticky and not self._stopping.is_set() else None
        change = transition_change(row, loaded.spec, name, data, terminal=terminal,
                                   worker=self.name, started_at=started, continue_lease=sticky,
                                   kind=kind, error=error)
        return self._write(change, row)

    def _failed_for_good(
        self, row: ClaimedRow, loaded: _Loaded, handler: StepHandler[Any], state: object,
        failure: Failure, started: datetime,
    ) -> ClaimedRow | None:
        text = failure_text(failure)
        route = handler.error_route
        if route is None:
            why = "permanent error" if failure.permanent else "no attempts left"
            log.warning("workflow %s parked in %s (%s): %s", row.id, row.state, why, failure)
            return self._write(park_change(row, text, worker=self.name, started_at=started), row)
        try:
            result = route.fn(loaded.machine, state, failure, self._context(row))
        except Exception as e:
            return self._write(park_change(
                row, f"{text}\nerror route {route.fn.__name__!r} failed too: "
                f"{type(e).__name__}: {e}", worker=self.name, started_at=started), row)
        return self._commit_result(row, loaded, route.fn.__name__, route.targets, result, started,
                                   kind="error_route", error=text)

    def _write(self, change: Change, row: ClaimedRow) -> ClaimedRow | None:
        version = self.store.apply(change)
        if version is None:
            log.warning("workflow %s: lease lost or row changed at version %d; result of %s "
                        "discarded", row.id, row.version, row.state)
            return None
        self.transitions += 1
        if self.on_change is not None:
            self.on_change(change, version)
        if change.keep_lease is None:
            return None
        return ClaimedRow(id=row.id, machine=row.machine, state=change.to_state, data=change.data,
                          version=version, entered_version=version, attempt=1,
                          lease_token=row.lease_token, previous_status="ready",
                          external_change=False)

    def _record_external_change(self, row: ClaimedRow) -> ClaimedRow | None:
        ok = self.store.record_external_change(row, worker=self.name)
        if not ok:
            return None
        log.info("workflow %s: version %d was written outside the engine (state %s)",
                 row.id, row.version, row.state)
        return attrs.evolve(row, entered_version=row.version, attempt=1, external_change=False)

    def _context(self, row: ClaimedRow) -> Context:
        def extend(seconds: float) -> None:
            with self._lock:
                self._inflight[row.id] = (row.lease_token, max(seconds, self.lease))
            self.store.renew_leases([row.id], row.lease_token, seconds)

        return Context(
            workflow_id=row.id, machine=row.machine, state=row.state, attempt=row.attempt,
            version=row.version, idempotency_key=f"{row.id}:{row.entered_version}",
            worker=self.name,
            log=logging.LoggerAdapter(logging.getLogger(f"statemachine.workflow.{row.machine}"),
                                      {"workflow_id": str(row.id), "state": row.state}),
            clock=self.clock, extend=extend)

