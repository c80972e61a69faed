"""The async worker: one event loop runs many ``async def`` handlers at once.

`AsyncWorker` is the thread `Worker` with another way of running a claimed row; everything else
(the claimer, the heartbeat that renews leases, the sweeper that starts schedules, limits, sticky
continuation, graceful shutdown, health and thread supervision) is the same code. A claimed row
is driven through its turn (`Runner.turn`, the one decision algorithm both workers share) in a
bounded thread pool: loading, deciding and committing are the sync store's calls, and a sync
handler runs there too, in place. Only where the turn yields an ``async def`` handler does the
row go to the event loop, as that handler's task, holding no thread while it waits; when the
task ends, the turn goes on in the pool. So a thousand handlers awaiting HTTP calls need a
thousand tasks and a few threads, and the loop never waits on the database.

The hand-offs are plain callbacks (`_Run`): a pool thread schedules the handler's task on the
loop, and the task's last step submits the rest of the turn to the pool. A row whose run ends
takes its next row in the same pool thread (one claim, as a thread worker's thread does), so a
busy worker goes from row to row without passing through the claimer or the loop; when many end
together, the claimer claims for them at once.

Why the sync store in threads rather than an async driver: a turn's database work is a few short
statements between two awaits, and the pool keeps them on the same tested SQL (one store, one
set of golden statements); `bench/async_worker.py` measures it against the thread worker.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from datetime import timedelta
from typing import Any

from ._definition import Machine
from ._health import WorkerHealth, is_unreachable, one_line
from ._observe import Observer
from ._runner import HandlerCall, Loaded, Runner, Turn
from ._runtime import Worker, log
from ._schedules import Schedule
from ._store import Change, ClaimedRow, Store
from .errors import InvalidArgument, InvalidOperation

__all__ = ["AsyncWorker", "has_async_handlers"]


def has_async_handlers(machines: Iterable[Machine | type[Machine]]) -> bool:
    """Whether any handler of these machines is an ``async def`` (then `AsyncWorker` suits)."""
    for m in machines:
        spec = m.spec
        for handler in spec.handlers():
            fns = [handler.fn] + [r.fn for r in (handler.error_route, handler.reconcile_route)
                                  if r is not None]
            if any(inspect.iscoroutinefunction(fn) for fn in fns):
                return True
    return False


def _advance(runner: Runner, turn: Turn, value: object,
             error: BaseException | None) -> tuple[Turn, HandlerCall] | None:
    """Go on with `turn` in this thread, sending it `value` (or throwing in `error`), calling sync
    handlers in place and running the turns that follow it while the lease is kept, until a turn
    yields an ``async def`` handler call: that turn and its call; None when the run ended."""
    while True:
        try:
            call = turn.send(value) if error is None else turn.throw(error)
        except StopIteration as stop:
            row: ClaimedRow | None = stop.value
            if row is None:
                return None
            turn, value, error = runner.turn(row), None, None
            continue
        if call.is_async:
            return turn, call
        try:
            value, error = call.run_sync(), None
        except BaseException as e:  # thrown in: the turn reacts as to its handler's error
            error = e


def _close(turn: Turn) -> None:
    """End a turn whose handler was cancelled: its cleanup (a limit's slot, the at-most-once
    bookkeeping) runs; nothing is committed."""
    try:
        turn.close()
    except Exception as e:
        log.warning("cleanup of a cancelled handler failed: %s", one_line(e))


class _Pool:
    """`threads` threads that run what is put on one queue. A hand-off is a put on a C queue,
    with no future per call: the loop hands each row over at every ``async def`` handler, and
    a `ThreadPoolExecutor`'s bookkeeping per call was a measurable part of a light turn."""

    def __init__(self, threads: int, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = (
            queue.SimpleQueue())
        self._closed = False
        self._threads = [threading.Thread(target=self._serve, name=f"{name}_{n}", daemon=True)
                         for n in range(threads)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` in one of the threads; RuntimeError once shut down."""
        if self._closed:
            raise RuntimeError("the pool is shut down")
        self._queue.put((fn, args))

    def shutdown(self) -> None:
        """Drop what is queued and let the threads end when their calls return (a handler
        still running past the grace is not waited for)."""
        self._closed = True
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        for _ in self._threads:
            self._queue.put(None)

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, args = item
            try:
                fn(*args)
            except BaseException as e:  # each call catches its own; a stray one is said here
                log.critical("async worker pool: %s", one_line(e), exc_info=e)


class _Run:
    """One claimed row's run, and the rows it goes on with (its next state while the lease is
    kept, then the next row its pool thread claims). Between handler calls it is in the pool;
    while an ``async def`` handler runs, `task` is that handler's task on the loop. `done` is
    the slot it takes in the worker's count of rows in flight."""

    __slots__ = ("done", "row", "task", "turn")

    def __init__(self, row: ClaimedRow) -> None:
        self.row = row
        self.turn: Turn | None = None
        self.task: asyncio.Task[Any] | None = None
        self.done: Future[None] = Future()


class _LoopWorker(Worker):
    """The thread worker whose claimed rows run as tasks on an event loop (see the module)."""

    def __init__(self, owner: AsyncWorker, store: Store,
                 machines: Iterable[Machine | type[Machine]], **options: Any) -> None:
        super().__init__(store, machines, **options)
        self._owner = owner

    def _submit(self, row: ClaimedRow) -> None:
        self._owner._begin(row)


class AsyncWorker:
    """Runs workflows of the given machines on this process's event loop: ``async def``
    handlers as tasks (`concurrency` at once: hundreds or thousands), sync handlers and the
    database's calls in a pool of `threads`.

    Embed it with ``async with AsyncWorker(...)`` (or `start()`/`stop()`), or serve with
    ``asyncio.run(worker.run())``. Every option but `threads` means what it means for `Worker`.
    """

    def __init__(
        self,
        store: Store,
        machines: Iterable[Machine | type[Machine]],
        *,
        concurrency: int = 100,
        threads: int = 8,
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
        """`concurrency`: workflows in flight at once (tasks on the loop). `threads`: the pool
        that runs sync handlers and every database call (claims, commits, renewals run in the
        worker's own threads besides); a sync handler that blocks holds one of them, so keep
        slow sync handlers few or raise it. `on_change` is called in a pool thread. The other
        options: see `Worker` (with `group_commit`, at most `threads` commits go together: the
        pool's threads send them)."""
        if concurrency < 1 or threads < 1:
            raise InvalidArgument(f"concurrency and threads must be at least 1, not "
                                  f"{concurrency!r} and {threads!r}")
        self.threads = threads
        self._core = _LoopWorker(
            self, store, machines, concurrency=concurrency, lease=lease,
            poll_interval=poll_interval, min_poll_interval=min_poll_interval, grace=grace,
            sticky=sticky, name=name, on_change=on_change, schedules=schedules,
            max_backoff=max_backoff, exit_if_unreachable=exit_if_unreachable,
            audit_interval=audit_interval, full_sweep_interval=full_sweep_interval,
            claim_margin=claim_margin, observers=observers, purge_older_than=purge_older_than,
            purge_interval=purge_interval, purge_batch_size=purge_batch_size,
            group_commit=group_commit)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: _Pool | None = None
        self._stopped = False
        self._cancelling = False  # past the grace: no handler starts any more
        self._runs: dict[Future[None], _Run] = {}
        self._claiming = threading.Lock()  # held by the pool thread claiming a next row

    # -- what it is -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """This worker's name (in leases, logs and history)."""
        return self._core.name

    @property
    def machines(self) -> dict[str, Loaded]:
        """The machines it runs, by name."""
        return self._core.machines

    @property
    def store(self) -> Store:
        """The store it runs from."""
        return self._core.store

    @property
    def concurrency(self) -> int:
        """Workflows in flight at once."""
        return self._core.concurrency

    @property
    def grace(self) -> float:
        """Seconds in-flight handlers may take to finish on stop."""
        return self._core.grace

    @property
    def transitions(self) -> int:
        """Changes this worker has committed."""
        return self._core.transitions

    @property
    def abandoned(self) -> int:
        """Handlers still running when `stop()` gave their workflows back (and cancelled them)."""
        return self._core.abandoned

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop it runs on (set by `start()`)."""
        if self._loop is None:
            raise InvalidOperation("the async worker is not started")
        return self._loop

    def health(self) -> WorkerHealth:
        """How this worker is doing now (no database call), as `Worker.health`."""
        return self._core.health()

    def wake(self) -> None:
        """Claim now instead of at the next poll (any thread may call it)."""
        self._core.wake()

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start claiming onto the running event loop; returns at once."""
        if self._loop is not None:
            raise InvalidOperation("worker already started")
        self._loop = asyncio.get_running_loop()
        self._pool = _Pool(self.threads, "sm-async")
        self._core.start()

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming, let in-flight handlers finish for up to `grace` seconds, give back
        what is still held, then cancel the handlers' tasks that are still running (their
        attempts end uncommitted; an at-most-once one is reconciled, not given back)."""
        if self._loop is None or self._stopped:
            return
        self._stopped = True
        # The thread worker's stop, in a thread: the loop goes on running handlers meanwhile.
        await asyncio.to_thread(self._core.stop, grace)
        with self._core._lock:
            left = [run for run in self._runs.values() if not run.done.done()]
        self._cancel(left)
        if left:
            await asyncio.wait([asyncio.wrap_future(run.done) for run in left], timeout=5.0)
        if self._pool is not None:
            self._pool.shutdown()

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        """Run until SIGTERM/SIGINT (or `stop()` from another task): the first signal stops
        gracefully (see `grace`), a second one gives back held work at once. Raises as
        `Worker.run` does when the worker cannot go on serving."""
        loop = asyncio.get_running_loop()
        core = self._core
        installed: list[signal.Signals] = []
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            def on_signal(signum: signal.Signals) -> None:
                if core._stopping.is_set():
                    core._hurry.set()
                log.info("worker %s: signal %d, stopping", self.name, signum)
                core._stopping.set()
                core.wake()

            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, on_signal, signum)
                installed.append(signum)
        try:
            await self.start()
            while not core._stopping.is_set():
                await asyncio.sleep(0.2)
                core._supervise()
                if core._fatal is not None:
                    break
            await self.stop()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
        if core._fatal is not None:
            raise core._fatal

    async def __aenter__(self) -> AsyncWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- running ----------------------------------------------------------------------------

    def _begin(self, row: ClaimedRow) -> None:
        """Take a row the claimer claimed: its slot, then its turn in the pool."""
        core, run = self._core, _Run(row)
        with core._lock:
            core._inflight[row.id] = (row.lease_token, core.lease, time.monotonic())
            core._futures.add(run.done)
            self._runs[run.done] = run
        run.done.add_done_callback(self._ended)
        run.done.add_done_callback(core._done)
        self._to_pool(self._in_pool, run, None, None)

    def _ended(self, done: Future[None]) -> None:
        with self._core._lock:
            self._runs.pop(done, None)

    def _to_pool(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._pool is not None
        try:
            self._pool.submit(fn, *args)
        except RuntimeError:  # the pool is shut down (the worker has stopped): end it anyway
            threading.Thread(target=fn, args=args, name="sm-async-late", daemon=True).start()

    def _in_pool(self, run: _Run, value: object, error: BaseException | None) -> None:
        """Go on with `run` in this pool thread (sending its turn `value`, or throwing in
        `error`) until it awaits an ``async def`` handler, which is then started on the loop;
        when its rows are done, take the next row (sticky) and go on with that one."""
        core = self._core
        while True:
            try:
                turn = run.turn if run.turn is not None else core.runner.turn(run.row)
                step = _advance(core.runner, turn, value, error)
            except Exception as e:
                self._failed(run.row, e)
                step = None
            if step is not None:
                run.turn, call = step
                try:
                    self.loop.call_soon_threadsafe(self._start_call, run, call)
                except RuntimeError:  # the loop is closed: nothing can run the handler
                    self._abandon(run)
                return
            with core._lock:
                core._inflight.pop(run.row.id, None)
            following = None
            # One row at a time claims its next in place: when rows end in a crowd (a thousand
            # answers arriving together), the others free their slots and the claimer takes
            # them all in one claim, cheaper than a claim each.
            if self._claiming.acquire(blocking=False):
                try:
                    following = core._claim_next()
                finally:
                    self._claiming.release()
            if following is None:
                run.done.set_result(None)
                return
            run.row, run.turn, value, error = following, None, None, None

    def _start_call(self, run: _Run, call: HandlerCall) -> None:
        """On the loop: the ``async def`` handler of `run` as a task."""
        if self._cancelling:  # stopped past the grace: its workflow was given back
            self._to_pool(self._abandon, run)
            return
        run.task = self.loop.create_task(self._call(run, call))

    async def _call(self, run: _Run, call: HandlerCall) -> None:
        """The handler's task: await the handler, then hand the turn back to the pool (from
        the task's last step, not a done-callback: one loop iteration less per call)."""
        try:
            value = await call.fn(*call.args)
        except asyncio.CancelledError:  # at shutdown, past the grace: ended as a crash would
            run.task = None
            self._to_pool(self._abandon, run)
            raise
        except Exception as e:  # the turn reacts as to a handler's error
            run.task = None
            self._to_pool(self._in_pool, run, None, e)
            return
        except BaseException:  # a SystemExit or KeyboardInterrupt: not a result to commit
            run.task = None
            self._to_pool(self._abandon, run)
            raise
        run.task = None
        self._to_pool(self._in_pool, run, value, None)

    def _cancel(self, runs: list[_Run]) -> None:
        """On the loop, past the grace: no handler starts any more, and the running ones'
        tasks are cancelled (each hands its run back to the pool as it ends)."""
        self._cancelling = True
        for run in runs:
            if (task := run.task) is not None:
                task.cancel()
                task.add_done_callback(functools.partial(self._cancelled_early, run))

    def _cancelled_early(self, run: _Run, task: asyncio.Task[Any]) -> None:
        """On the loop: a handler's task cancelled at shutdown before its first step never
        entered `_call`, so nothing handed its run back: do it here."""
        if run.task is task:
            run.task = None
            self._to_pool(self._abandon, run)

    def _abandon(self, run: _Run) -> None:
        """End a run whose handler was cancelled: its turn's cleanup (a limit's slot, the
        at-most-once bookkeeping) runs; nothing is committed."""
        if run.turn is not None:
            _close(run.turn)
        with self._core._lock:
            self._core._inflight.pop(run.row.id, None)
        run.done.cancel()

    def _failed(self, row: ClaimedRow, e: Exception) -> None:
        """An outage or a bug while running `row`: its lease expires and another attempt runs
        (the runner has already kept what it could); an outage is said once."""
        core = self._core
        if is_unreachable(e):
            core.reachability.lost(e)
        else:
            core._troubles["sm-handler"].last_error = one_line(e)
            log.error("worker %s: unexpected error running workflow %s", self.name, row.id,
                      exc_info=e)
