"""The worker: claim due workflows, run their handlers, commit the next state, hold leases.

A `Worker` runs inside the application's process: `run()` blocks (and handles SIGTERM/SIGINT),
`start()`/`stop()` embed it. One claimer thread takes batches of due rows, a pool of handler threads
runs them, and a heartbeat thread keeps the leases of in-flight workflows alive. When a commit
yields a state that can run now, the same thread keeps the lease and runs it at once (sticky
continuation: one round trip per transition). A sweeper thread notices events inserted by SQL,
starts scheduled workflows and reports rows that can never be claimed.

A worker never stops serving while its process lives: every round of every loop runs under a
`Trouble` tracker (see `_health`) that logs a failure once, backs off (capped exponential with
jitter) and tries again, whatever the exception. A thread that dies anyway is noticed by `run()`
(and by `health()`), logged and restarted; when that keeps failing, `run()` raises instead of
leaving a live process that does nothing.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from datetime import UTC, datetime, timedelta
from types import FrameType

from ._claimmark import ClaimMark
from ._clock import Clock
from ._definition import Machine
from ._health import Backoff, Reachability, Trouble, WorkerHealth, is_unreachable, one_line
from ._observe import Observer, Observers, TransitionLog
from ._retention import purge
from ._runner import Loaded, Runner, loaded_machines
from ._schedules import Schedule, run_schedule
from ._store import Change, ClaimedRow, Store
from ._store._audit import unclaimable
from .errors import DatabaseUnavailable, InvalidArgument, InvalidOperation, LeaseLost

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
        max_backoff: float = 10.0,
        exit_if_unreachable: float | None = None,
        audit_interval: float = 300.0,
        full_sweep_interval: float = 10.0,
        claim_margin: float = 5.0,
        observers: Iterable[Observer] = (),
        purge_older_than: timedelta | None = None,
        purge_interval: float = 60.0,
        purge_batch_size: int = 100,
        group_commit: bool = False,
    ) -> None:
        """`concurrency`: handlers run at once (threads). `lease`: seconds a claimed workflow is
        held before another worker may take it over (renewed while the handler runs).
        `poll_interval`: the longest wait between claims when idle (it shrinks when busy).
        `grace`: on stop, how long in-flight handlers may take to finish. `on_change` is called
        (in the handler's thread) with every change this worker commits and its new version.
        `schedules` are checked every poll interval (any number of workers may share them).
        `max_backoff`: the longest wait, in seconds, between tries of a loop that keeps failing
        (from 0.1 s, doubling, with jitter; at most 5 s while the database is unreachable).
        `exit_if_unreachable`: when the database has been unreachable for this many seconds in a
        row, `run()` raises `DatabaseUnavailable` (so a supervisor can restart the process or
        alert); by default the worker waits for ever.
        `audit_interval`: how often (seconds) the worker looks for rows of its machines that can
        never be claimed (unknown status, ready without wake_at) and logs them: two queries over
        the rows of its machines (by the machine/status index), hence not every poll.
        `full_sweep_interval`, `claim_margin`: claims read the due index from a low-water mark
        (the due time of the latest rows claimed, less `claim_margin` seconds) instead of from
        its start, so they do not slow down as dead index entries pile up; every
        `full_sweep_interval` seconds one claim reads the whole range, which takes rows made due
        with an older time (a row forced by hand with an old `wake_at`, a timer set in the
        past): those wait at most that long (see `statemachine._claimmark`).
        `observers` are told of every claim, handler and commit (`Metrics`, `Tracing`, your
        own); the transition log (one INFO line per commit) is always one of them.
        `purge_older_than`: also purge, every `purge_interval` seconds, finished workflows
        older than this, with their children, history and events (as `statemachine purge`,
        `purge_batch_size` top-level workflows per transaction; see `_retention`). Default:
        never (on CockroachDB, row-level TTL does it).
        `group_commit`: the commits of handler threads that are ready at the same time go to
        the database together, one statement (one transaction on SQLite) for all of them, each
        row still fenced by its own version and lease token (a lost one is discarded alone);
        a lone commit goes at once, as without it. Transactional steps, and changes that
        consume an event or start children, keep their own transaction."""
        self.store = store
        self.machines: dict[str, Loaded] = loaded_machines(machines, "a worker")
        self.concurrency = concurrency
        self.lease = lease
        self.poll_interval = poll_interval
        self.min_poll_interval = min_poll_interval
        self.grace = grace
        self.sticky = sticky
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.clock: Clock = store.clock
        self._executor: ThreadPoolExecutor | None = None
        # id -> (lease token, lease seconds, monotonic time the lease was last granted)
        self._inflight: dict[uuid.UUID, tuple[str, float, float]] = {}
        self._futures: set[Future[None]] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._slot_free = threading.Event()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._hurry = threading.Event()  # a second signal: stop waiting for handlers
        self.abandoned = 0  # handlers still running when stop() gave their workflows back
        self._threads: dict[str, threading.Thread] = {}
        self._loops: dict[str, Callable[[], None]] = {
            "sm-claimer": self._claim_loop, "sm-heartbeat": self._heartbeat,
            "sm-sweeper": self._sweep_loop}
        if purge_older_than is not None:
            if purge_older_than < timedelta(0) or purge_interval <= 0 or purge_batch_size <= 0:
                raise InvalidArgument(
                    f"purge_older_than must not be negative, purge_interval and "
                    f"purge_batch_size must be positive, not {purge_older_than}, "
                    f"{purge_interval!r} and {purge_batch_size!r}")
            self._loops["sm-purger"] = self._purge_loop
        self.purge_older_than = purge_older_than
        self.purge_interval = purge_interval
        self.purge_batch_size = purge_batch_size
        # Supervision state: written by `_supervise` (under `_supervise_lock`: `run()`'s thread
        # and any caller of `health()`), and `_deaths`/`_last_death` by a dying thread, once.
        self._supervise_lock = threading.Lock()
        self._deaths: dict[str, list[float]] = {}  # thread name -> monotonic times it died
        self._fatal: BaseException | None = None
        self._last_death: BaseException | None = None
        self.thread_restarts = 0
        self.max_backoff = max_backoff
        self.exit_if_unreachable = exit_if_unreachable
        self.audit_interval = audit_interval
        self.claim_mark = ClaimMark(margin=claim_margin, sweep_interval=full_sweep_interval,
                                    database_now=store.current_time)
        self.reachability = Reachability(self.name, log)
        self._troubles = {name: self._trouble(name.removeprefix("sm-"))
                          for name in (*self._loops, "sm-handler")}
        # Set by the claimer and by handler threads after a claim: one reference assignment.
        self._last_claim_at: datetime | None = None
        self.schedules = list(schedules)
        self._names = list(self.machines)
        self.observer = Observers([TransitionLog(), *observers])
        self.runner = Runner(
            store, self.machines, worker=self.name, lease=lease, on_change=on_change,
            observer=self.observer, group_commit=group_commit,
            sticky=lambda: self.sticky and not self._stopping.is_set(),
            extend_lease=self._extend_lease)

    def _trouble(self, what: str) -> Trouble:
        return Trouble(what, self.name, log, self.reachability,
                       Backoff(initial=0.1, maximum=self.max_backoff))

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start claiming and running in background threads; returns at once."""
        if self._threads:
            raise InvalidOperation("worker already started")
        self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="sm-handler")
        self.store.sql.subscribe(self.wake)
        subscribe = getattr(self.clock, "subscribe", None)
        if subscribe is not None:
            subscribe(self._clock_moved)  # a test's FakeClock: claim as soon as time moves
        # Under the supervisor's lock: a `health()` call from another thread must not take a
        # thread that is registered but not started yet for one that died.
        with self._supervise_lock:
            for name in self._loops:
                self._start_thread(name)
        log.info("worker %s started: %s", self.name, ", ".join(self.machines))

    def _start_thread(self, name: str) -> None:
        t = threading.Thread(target=self._thread_main, args=(name,), name=name, daemon=True)
        self._threads[name] = t
        t.start()

    def _thread_main(self, name: str) -> None:
        """Run one loop. Each loop handles its own failures, so an exception that gets here is a
        bug (or a BaseException): it is logged and kept, and `_supervise` restarts the thread."""
        try:
            self._loops[name]()
        except BaseException as e:
            self._deaths.setdefault(name, []).append(time.monotonic())
            self._troubles[name].last_error = one_line(e)
            self._last_death = e
            log.critical("worker %s: thread %s died", self.name, name, exc_info=e)

    def _supervise(self) -> None:
        """Restart any loop thread that died (a bug: each loop catches its own failures); after
        `_MAX_DEATHS` deaths of one thread within `_DEATH_WINDOW` seconds, or when a thread cannot
        be started, the worker is failed: `run()` raises. Also enforces `exit_if_unreachable`."""
        with self._supervise_lock:
            self._supervise_locked()

    def _supervise_locked(self) -> None:
        if self._stopping.is_set() or self._fatal is not None or not self._threads:
            return
        if (self.exit_if_unreachable is not None
                and self.reachability.down_for() >= self.exit_if_unreachable):
            self._fatal = DatabaseUnavailable(
                f"worker {self.name}: the database has been unreachable for "
                f"{self.reachability.down_for():.0f} s (exit_if_unreachable="
                f"{self.exit_if_unreachable:g})")
            log.error("%s; giving up", self._fatal)
            return
        for name, t in list(self._threads.items()):
            if t.is_alive():
                continue
            now = time.monotonic()
            recent = [d for d in self._deaths.get(name, []) if now - d < _DEATH_WINDOW]
            self._deaths[name] = recent
            if len(recent) >= _MAX_DEATHS:
                self._fatal = self._last_death or InvalidOperation(f"thread {name} died")
                log.error("worker %s: thread %s died %d times in %.0f s; giving up", self.name,
                          name, len(recent), _DEATH_WINDOW)
                return
            log.error("worker %s: thread %s is not running (%s); restarting it", self.name, name,
                      self._troubles[name].last_error)
            try:
                self._start_thread(name)
            except Exception as e:  # e.g. "can't start new thread"
                self._fatal = e
                log.error("worker %s: cannot restart thread %s: %s; giving up", self.name, name,
                          one_line(e))
                return
            self.thread_restarts += 1

    def health(self) -> WorkerHealth:
        """How this worker is doing now (cheap: no database call). Also restarts a loop thread
        that died, as `run()` does: an embedding application that calls `start()` can call this
        from its liveness probe."""
        self._supervise()
        threads = {name: t.is_alive() for name, t in self._threads.items()}
        alive = bool(threads) and all(threads.values())
        errors = [t.last_error for t in self._troubles.values() if t.last_error]
        return WorkerHealth(
            name=self.name,
            serving=alive and not self._stopping.is_set() and self._fatal is None,
            database_reachable=self.reachability.reachable,
            unreachable_since=self.reachability.down_since,
            last_claim_at=self._last_claim_at,
            consecutive_failures=max(t.consecutive for t in self._troubles.values()),
            threads=threads,
            thread_restarts=self.thread_restarts,
            transitions=self.transitions,
            last_error=errors[-1] if errors else None)

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
            unsubscribe(self._clock_moved)
        deadline = time.monotonic() + grace
        claimer = self._threads.get("sm-claimer")
        if claimer is not None:
            claimer.join(max(0.0, deadline - time.monotonic()))
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
        for name, t in self._threads.items():
            if name != "sm-claimer":
                t.join(2.0)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        log.info("worker %s stopped after %d transitions", self.name, self.transitions)

    def run(self, *, install_signal_handlers: bool = True) -> None:
        """Run until SIGTERM/SIGINT (or `stop()` from another thread). The first signal stops
        gracefully (see `grace`); a second one gives back held work and returns at once.

        Raises (after stopping) when the worker cannot go on serving: a thread that keeps dying,
        or `DatabaseUnavailable` once the database has been unreachable for
        `exit_if_unreachable` seconds."""
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
            self._supervise()
            if self._fatal is not None:
                break
        self.stop()
        if self._fatal is not None:
            raise self._fatal

    def wake(self) -> None:
        """Claim now instead of at the next poll (called when work was started in-process)."""
        self._wake.set()

    def _clock_moved(self) -> None:
        """A test clock jumped: rows may have come due below the claim mark; sweep at once."""
        self.claim_mark.sweep_soon()
        self._wake.set()

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- claiming ----------------------------------------------------------------------------

    def _claim_loop(self) -> None:
        idle_wait = self.min_poll_interval
        trouble = self._troubles["sm-claimer"]
        while not self._stopping.is_set():
            with self._lock:
                free = self.concurrency - len(self._futures)
            if free <= 0:
                self._slot_free.wait(self.poll_interval)
                self._slot_free.clear()
                continue
            try:
                rows = self._claim(free)
                # Said before the rows run: a workflow can finish before this thread goes on.
                trouble.ok()
                self._last_claim_at = datetime.now(UTC)
                for row in rows:
                    self._submit(row)
            except Exception as e:
                self._stopping.wait(trouble.failed(e))
                continue
            if rows:
                idle_wait = self.min_poll_interval
                continue
            self._wake.wait(idle_wait)
            if not self._wake.is_set():
                idle_wait = min(self.poll_interval, idle_wait * 2)
            else:
                idle_wait = self.min_poll_interval
            self._wake.clear()

    def _claim(self, limit: int) -> list[ClaimedRow]:
        """One claim from the low-water mark (or a full sweep, when one is due)."""
        ticket, before = self.claim_mark.next()
        began = time.monotonic()
        rows = self.store.sql.claim(owner=self.name, machines=self._names, limit=limit,
                                    lease=self.lease, since=ticket.since)
        self.observer.claimed(self._names, len(rows), time.monotonic() - began)
        self.claim_mark.claimed(ticket, rows, before)
        return rows

    def _sweep_loop(self) -> None:
        """Every poll interval (give or take a quarter): notice events inserted by SQL and start
        due scheduled workflows; every `audit_interval`: report rows of this worker's machines
        that cannot be claimed."""
        trouble = self._troubles["sm-sweeper"]
        last_audit = time.monotonic() - self.audit_interval + min(5.0, self.audit_interval)
        reported: tuple[object, ...] = ()
        reported_at = 0.0
        wait = 0.0
        while not self._stopping.wait(wait):
            try:
                if self.store.sql.notice_sql_events():
                    self.wake()
                for schedule in self.schedules:
                    run_schedule(self.store, schedule)
                if time.monotonic() - last_audit >= self.audit_interval:
                    last_audit = time.monotonic()
                    found = unclaimable(self.store, self._names)
                    summary = tuple(found)
                    # Said when it changes, and again every ten minutes while it lasts.
                    if found and (summary != reported or time.monotonic() - reported_at >= 600):
                        log.warning("worker %s: %s can never be claimed (see `statemachine "
                                    "check`): %s", self.name,
                                    _rows(sum(p.count for p in found)),
                                    "; ".join(p.describe() for p in found))
                        reported_at = time.monotonic()
                    reported = summary
            except Exception as e:
                wait = trouble.failed(e)
                continue
            trouble.ok()
            # A quarter either way: workers started together would otherwise sweep in step, and
            # the one whose phase comes first after each second would start every schedule tick.
            wait = self.poll_interval * random.uniform(0.75, 1.25)

    def _purge_loop(self) -> None:
        """Every `purge_interval`: purge what is older than `purge_older_than`, a batch at a
        time, stopping between batches when the worker stops."""
        trouble = self._troubles["sm-purger"]
        assert self.purge_older_than is not None
        wait = 0.0
        while not self._stopping.wait(wait):
            try:
                totals = purge(self.store, self.purge_older_than,
                               batch_size=self.purge_batch_size, pause=0.05,
                               stop=self._stopping.is_set)
                if totals.workflows:
                    log.info("worker %s: %s", self.name, totals.describe())
            except Exception as e:
                wait = trouble.failed(e)
                continue
            trouble.ok()
            wait = self.purge_interval

    def _submit(self, row: ClaimedRow) -> None:
        assert self._executor is not None
        with self._lock:
            self._inflight[row.id] = (row.lease_token, self.lease, time.monotonic())
            future = self._executor.submit(self._run_safely, row)
            self._futures.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)
        self._slot_free.set()
        # `_run_safely` catches every Exception; what gets here (a handler's SystemExit, say) is
        # said, not lost in a future nobody reads. The pool's thread itself lives on.
        error = None if future.cancelled() else future.exception()
        if error is not None:
            self._troubles["sm-handler"].last_error = one_line(error)
            log.critical("worker %s: a handler thread was stopped by %s; its workflow comes back "
                         "after its lease", self.name, one_line(error), exc_info=error)

    def _heartbeat(self) -> None:
        interval = max(0.05, self.lease / 3)
        trouble = self._troubles["sm-heartbeat"]
        wait = interval
        while not self._stopped.wait(wait):
            try:
                called = self._renew()
            except Exception as e:
                # Retry sooner than the interval (a lease may be about to run out), never later.
                wait = min(interval, trouble.failed(e))
                continue
            if called:  # nothing held, nothing asked: says nothing about the database
                trouble.ok()
            wait = interval

    def _renew(self) -> bool:
        """Renew the leases that need it, and the rate-limit slots their workflows hold; False
        when nothing needed it (no database call).

        A lease is renewed only once a sixth of it has passed since it was granted or last
        renewed (half the heartbeat's interval, so it is renewed by the time half of it is gone):
        a running row's `wake_at` is its lease expiry, the key of the due index, and rewriting it
        leaves a dead index entry behind, so handlers that finish within a sixth of their lease
        (most) never have theirs rewritten."""
        now = time.monotonic()
        with self._lock:
            held = {wid: v for wid, v in self._inflight.items()
                    if now - v[2] >= v[1] / 6}
        if not held:
            return False
        by_token: dict[tuple[str, float], list[uuid.UUID]] = {}
        for wid, (token, lease, _) in held.items():
            by_token.setdefault((token, lease), []).append(wid)
        for (token, lease), ids in by_token.items():
            kept = self.store.sql.renew_leases(ids, token, lease)
            with self._lock:  # rows that finished since the snapshot are not lost
                lost = [i for i in set(ids) - kept
                        if self._inflight.get(i, ("",))[0] == token]
                for i in kept:
                    entry = self._inflight.get(i)
                    if entry is not None and entry[0] == token:
                        self._inflight[i] = (entry[0], entry[1], now)
            for wid in lost:
                log.warning("worker %s: lost the lease of workflow %s", self.name, wid)
        self.store.sql.renew_slots(list(held), self.lease)
        return True

    def _release_all(self) -> None:
        with self._lock:
            held = {k: v for k, v in self._inflight.items()
                    if k not in self.runner.unreleasable}
            self._inflight.clear()
        by_token: dict[str, list[uuid.UUID]] = {}
        for wid, (token, _, _) in held.items():
            by_token.setdefault(token, []).append(wid)
        for token, ids in by_token.items():
            try:
                released = self.store.sql.release(ids, token)
                log.info("worker %s: released %d workflows", self.name, released)
            except Exception as e:
                log.warning("worker %s: release failed (leases will expire): %s", self.name,
                            one_line(e))

    # -- running -----------------------------------------------------------------------------

    def _run_safely(self, row: ClaimedRow) -> None:
        current: ClaimedRow | None = row
        trouble = self._troubles["sm-handler"]
        while current is not None:
            try:
                self.runner.run(current)
            except Exception as e:
                # An outage or a bug: the lease expires and another attempt runs (the runner has
                # already kept what it could). An outage is said once, by `reachability`.
                if is_unreachable(e):
                    self.reachability.lost(e)
                else:
                    trouble.last_error = one_line(e)
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
            rows = self._claim(1)
        except Exception as e:
            # The claimer thread, with its backoff, is the one that retries.
            if is_unreachable(e):
                self.reachability.lost(e)
            else:
                log.warning("worker %s: claim failed: %s", self.name, one_line(e))
            return None
        self.reachability.reached()
        self._last_claim_at = datetime.now(UTC)
        if not rows:
            return None
        with self._lock:
            self._inflight[rows[0].id] = (rows[0].lease_token, self.lease, time.monotonic())
        return rows[0]

    def _extend_lease(self, row: ClaimedRow, seconds: float) -> None:
        with self._lock:
            self._inflight[row.id] = (row.lease_token, max(seconds, self.lease), time.monotonic())
        if row.id not in self.store.sql.renew_leases([row.id], row.lease_token, seconds):
            raise LeaseLost(
                f"workflow {row.id}: the lease on version {row.version} ({row.state}) was lost "
                "(it expired and another worker took the workflow, or an operator changed the "
                "row); stop: this attempt's result will be discarded",
                workflow_id=row.id, state=row.state, version=row.version)

    @property
    def transitions(self) -> int:
        """Changes this worker has committed."""
        return self.runner.transitions


# A loop thread that dies this many times within this many seconds fails the worker.
_MAX_DEATHS = 5
_DEATH_WINDOW = 60.0


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"
