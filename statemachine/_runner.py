"""Carrying out what `_decide` decides: claim -> decide -> act -> commit, and again while sticky.

The `Runner` is what a worker's handler threads call with each claimed row. It loads the row's
state, drives `decide` (answering its questions from the store), and carries out the action:
runs a handler (under its limit, inside a transaction if it is transactional), commits a change,
or settles the workflow back to sleep. Every rule (what to run, what a result or an error does,
when to park) is in `_decide`; the SQL is in `_store`.

One turn is a generator (`Runner.turn`): it does the loading, deciding and committing itself and
yields a `HandlerCall` where a handler's function must run, receiving what it returned (or having
what it raised thrown in). Two thin drivers run it: `drive_sync` calls the function in place (the
thread worker, the test harness), and the async worker (`_async_worker`) awaits an ``async def``
handler on its event loop and runs everything else in threads. Nothing else differs.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterable
from typing import Any, Literal, TypeVar

import attrs
from sqlalchemy import Connection

from . import _decide as rules
from ._actions import (
    Action,
    Attempt,
    Commit,
    Outcome,
    Raised,
    Repoll,
    Returned,
    RunErrorRoute,
    RunHandler,
    Settle,
    Stop,
    drive,
)
from ._answers import StoreAnswers, acquire
from ._context import Context, Services, child_starter, context_for
from ._definition import Machine, MachineSpec
from ._group_commit import GroupCommit
from ._observe import Observer, Observers, TransitionLog
from ._records import Change, ChildCounts, ChildStart, ClaimedRow, Committed
from ._serde import Codecs, StateCodec
from ._store import Store
from .errors import InvalidArgument, StateMachineError, StoreError

__all__ = ["HandlerCall", "Hook", "HookPoint", "Loaded", "Runner", "Turn", "drive_sync",
           "loaded_machines"]

log = logging.getLogger("statemachine.worker")


# Where `Runner.hook` is called: just before a handler function runs, and just after it returned
# (its effects done, nothing committed yet; inside the transaction for a transactional handler).
HookPoint = Literal["before_handler", "after_handler"]
# `hook(point, row, run, ctx)`: the test harness's seam (`statemachine.testing`) for crashes and
# injected failures. An Exception it raises is the handler's; a BaseException ends the attempt
# as a crash of the worker would (nothing more is written for it).
Hook = Callable[[HookPoint, ClaimedRow, RunHandler | RunErrorRoute, Context], None]


@attrs.frozen
class Loaded:
    """A machine as a worker runs it: the instance (its dependencies), its spec and codec."""

    machine: Machine
    spec: MachineSpec
    codec: StateCodec


def loaded_machines(machines: Iterable[Machine | type[Machine]], who: str) -> dict[str, Loaded]:
    """The machines a worker (or a harness: `who`) runs, by name: each instantiated if given
    as a class. `InvalidArgument` when there are none."""
    found: dict[str, Loaded] = {}
    for m in machines:
        instance = m() if isinstance(m, type) else m
        spec = type(instance).spec
        found[spec.name] = Loaded(instance, spec, StateCodec(spec))
    if not found:
        raise InvalidArgument(f"{who} needs at least one machine")
    return found


@attrs.frozen
class HandlerCall:
    """What a turn yields to its driver: call ``fn(*args)`` (an ``async def`` handler when
    `is_async`) and send back what it returned, or throw in what it raised."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    is_async: bool

    def run_sync(self) -> object:
        """Call it here; an ``async def`` handler runs to its end on a loop of its own."""
        result = self.fn(*self.args)
        if inspect.iscoroutine(result):
            return asyncio.run(result)
        return result


_T = TypeVar("_T")
# One turn of one row (see `Runner.turn`): yields handler calls, returns the row to continue with.
Turn = Generator[HandlerCall, object, ClaimedRow | None]


def drive_sync(turn: Generator[HandlerCall, object, _T]) -> _T:
    """Run a turn (or part of one) in this thread, calling each handler in place."""
    try:
        call = next(turn)
        while True:
            try:
                value = call.run_sync()
            except BaseException as e:  # thrown in: the turn reacts as to its handler's error
                call = turn.throw(e)
            else:
                call = turn.send(value)
    except StopIteration as stop:
        result: _T = stop.value
        return result


@attrs.frozen
class _Turn:
    """One decision about one row: the machine it runs on and what was known when deciding."""

    loaded: Loaded
    attempt: Attempt


class _Rollback(Exception):
    """Abort a transactional handler's transaction; `action` is what to do instead (None: the
    lease was lost)."""

    def __init__(self, action: Action | None) -> None:
        super().__init__("rolled back")
        self.action = action


class Runner:
    """Runs claimed workflows of known machines; one instance is shared by a worker's threads."""

    def __init__(
        self, store: Store, machines: dict[str, Loaded], *, worker: str, lease: float,
        sticky: Callable[[], bool], extend_lease: Callable[[ClaimedRow, float], None],
        on_change: Callable[[Change, int], None] | None = None,
        observer: Observer | None = None, group_commit: bool = False,
    ) -> None:
        self.store = store
        # With `group_commit`, commits ready in several threads at once go together.
        self.group = GroupCommit(
            lambda c, retry_for: store.sql.commit(c, retry_for=retry_for),
            lambda cs, retry_for: store.sql.commit_group(cs, retry_for=retry_for),
        ) if group_commit else None
        # Told of every handler and commit (logs, metrics, spans): see `_observe`.
        self.observer: Observer = observer or Observers([TransitionLog()])
        self._turns = threading.local()  # when this thread's current row's turn began
        self.machines = machines
        self.worker = worker
        self.lease = lease
        self._sticky = sticky
        self._extend_lease = extend_lease
        self.on_change = on_change
        # None in a worker; the test harness sets it (see `Hook`).
        self.hook: Hook | None = None
        # Shared by the handler threads (written by each, read by the worker's shutdown): every
        # access to the two below goes through `_lock`.
        self._lock = threading.Lock()
        self._transitions = 0
        # Rows inside an at-most-once handler: never give them back on shutdown (a new claim
        # after their lease expires sees the unfinished attempt and reconciles).
        self._unreleasable: set[uuid.UUID] = set()
        # Filled lazily by any thread; a race only builds one codec twice.
        self.codecs = Codecs(m.spec for m in machines.values())
        self._answers = StoreAnswers(store, self.codecs, worker=worker)
        self._async_fns: dict[object, bool] = {}  # handler function -> whether async def

    @property
    def transitions(self) -> int:
        """Changes committed so far."""
        with self._lock:
            return self._transitions

    @property
    def unreleasable(self) -> frozenset[uuid.UUID]:
        """Rows whose at-most-once handler is running now (a snapshot)."""
        with self._lock:
            return frozenset(self._unreleasable)

    def run(self, row: ClaimedRow) -> None:
        """Run `row`, and the states that follow it at once while the lease is kept."""
        current: ClaimedRow | None = row
        while current is not None:
            current = self.step(current)

    def step(self, row: ClaimedRow) -> ClaimedRow | None:
        """Decide about `row` and carry it out; returns the row to continue with, or None."""
        return drive_sync(self.turn(row))

    def turn(self, row: ClaimedRow) -> Turn:
        """`step` as a generator, for a driver that runs handlers itself (see `HandlerCall`)."""
        self._turns.began = time.monotonic()
        loaded = self.machines[row.machine]
        state: object | None = None
        load_error: str | None = None
        try:
            state = loaded.codec.load(row.state, row.data, workflow=row.id)
        except StateMachineError as e:  # DataError, UnknownState
            load_error = str(e)
        turn = _Turn(loaded, Attempt(row, loaded.spec, state, load_error, self.store.clock.now(),
                                     self.worker, self.lease, loaded.codec.dump))
        action: Action | None = drive(rules.decide(turn.attempt),
                                      lambda q: self._answers(row, loaded.codec, q))
        while action is not None:
            match action:
                case Commit():
                    return self._write(action)
                case Settle():
                    return self._settle(action)
                case Repoll():
                    if not self.store.sql.poll_again(action.row, action.after):
                        log.warning("workflow %s: lease lost or row changed at version %d; "
                                    "poll of %s discarded", row.id, row.version, row.state)
                    return None
                case Stop():
                    log.warning("workflow %s: %s", row.id, action.reason)
                    return None
                case RunHandler():
                    after = yield from self._invoke(turn, action)
                    if after is None or isinstance(after, ClaimedRow):
                        return after  # deferred by a limit, or committed in its transaction
                    action = after
                case RunErrorRoute():
                    action = yield from self._run_error_route(turn, action)
        return None

    # -- running handlers --------------------------------------------------------------------

    def _is_async(self, fn: Callable[..., Any]) -> bool:
        """Whether `fn` is an ``async def`` handler (found once per function)."""
        key = getattr(fn, "__func__", fn)
        found = self._async_fns.get(key)
        if found is None:
            found = self._async_fns[key] = inspect.iscoroutinefunction(fn)
        return found

    def _invoke(self, turn: _Turn,
                run: RunHandler) -> Generator[HandlerCall, object, Action | ClaimedRow | None]:
        """Run the handler under its limit: the next action; or, when a transactional handler
        committed, the row to continue with; None when deferred by the limit."""
        held: tuple[str, int | None] | None = None
        if run.handler.limit is not None:
            acquired = acquire(self.store, run.row, run.handler.limit, turn.attempt.state,
                               self.lease)
            if isinstance(acquired, float):
                self.store.sql.defer(run.row, acquired)
                return None
            held = acquired
        try:
            if run.handler.transactional:
                return self._run_transactional(turn, run)
            outcome = yield from self._call(turn, run)
            return rules.after_handler(turn.attempt, run, outcome, sticky=self._sticky())
        finally:
            if held is not None and held[1] is not None:
                self.store.sql.release_slot(held[0], held[1], run.row.id)

    def _run_error_route(self, turn: _Turn,
                         run: RunErrorRoute) -> Generator[HandlerCall, object, Action]:
        outcome = yield from self._call(turn, run)
        return rules.after_error_route(turn.attempt, run, outcome, sticky=self._sticky())

    def _call(self, turn: _Turn, run: RunHandler | RunErrorRoute,
              connection: Connection | None = None) -> Generator[HandlerCall, object, Outcome]:
        """Call a handler with its context; what it returned (and the children it started), or
        what it raised."""
        row = run.row
        children: list[ChildStart] = []
        fn, args = run.function()
        ctx = context_for(row, Services(
            worker=self.worker, clock=self.store.clock, connection=connection,
            extend=lambda seconds: self._extend_lease(row, seconds),
            start_child=child_starter(self.codecs, row, children),
            cancel_check=lambda: self.store.sql.cancel_requested(row.id)))
        at_most_once = isinstance(run, RunHandler) and run.handler.at_most_once
        if at_most_once:
            with self._lock:
                self._unreleasable.add(row.id)
        name = run.handler.error_route.name if isinstance(run, RunErrorRoute) and \
            run.handler.error_route is not None else run.handler.name
        self.observer.handler_started(row, name)
        began, raised = time.monotonic(), None
        hook = self.hook
        try:
            if hook is not None:
                hook("before_handler", row, run, ctx)
            began_turn = getattr(self._turns, "began", None)
            result = yield HandlerCall(fn, (turn.loaded.machine, turn.attempt.state, *args, ctx),
                                       self._is_async(fn))
            # An async driver resumes the turn in whichever of its threads is free.
            self._turns.began = began_turn
            if hook is not None:
                hook("after_handler", row, run, ctx)
            return Returned(result, tuple(children))
        except Exception as e:
            raised = e
            return Raised(e)
        finally:
            self.observer.handler_finished(row, name, time.monotonic() - began, raised)
            if at_most_once:
                with self._lock:
                    self._unreleasable.discard(row.id)

    def _run_transactional(self, turn: _Turn, run: RunHandler) -> Action | ClaimedRow | None:
        """Run the handler and commit its result in one transaction: its own writes through
        ``ctx.connection`` and the state change commit together, or neither does."""

        def attempt(conn: Connection) -> tuple[Commit, Committed]:
            outcome = drive_sync(self._call(turn, run, conn))
            if isinstance(outcome, Raised):
                raise outcome.error  # rolls back; handled below like any handler's error
            action = rules.after_handler(turn.attempt, run, outcome, sticky=self._sticky())
            if not (isinstance(action, Commit) and action.what == "transition"):
                raise _Rollback(action)
            done = self.store.sql.commit_in(conn, action.change)
            if done is None:
                raise _Rollback(None)
            return action, done

        try:
            commit, done = self.store.transaction(attempt)
        except _Rollback as r:
            if r.action is None:
                log.warning("workflow %s: lease lost or row changed at version %d; the "
                            "transaction of %s was rolled back", run.row.id, run.row.version,
                            run.row.state)
            return r.action
        except Exception as e:
            return rules.after_handler(turn.attempt, run, Raised(e), sticky=False)
        return self._committed(commit, done)

    # -- committing --------------------------------------------------------------------------

    def _write(self, commit: Commit) -> ClaimedRow | None:
        try:
            # As long as the lease: the heartbeat keeps renewing it while this thread retries, and
            # giving up means running the handler again once it has expired.
            if self.group is not None:
                done = self.group.commit(commit.change, retry_for=self.lease)
            else:
                done = self.store.sql.commit(commit.change, retry_for=self.lease)
        except StoreError as e:
            instead = rules.after_refusal(commit, e)
            if instead is None:
                raise  # an outage or contention: the lease expires and the workflow runs again
            return self._write(instead)
        if done is None:
            log.warning("workflow %s: lease lost or row changed at version %d; result of %s "
                        "discarded", commit.row.id, commit.row.version, commit.row.state)
            return None
        return self._committed(commit, done)

    def _committed(self, commit: Commit, done: Committed) -> ClaimedRow | None:
        """After a commit: count it, report it, and continue with the next state if sticky."""
        with self._lock:
            self._transitions += 1
        if commit.change.finishes:
            self.store.sql.finished(commit.change.workflow_id)
        began = getattr(self._turns, "began", None)
        self.observer.committed(commit.row, commit.change, done.version,
                                0.0 if began is None else time.monotonic() - began)
        if self.on_change is not None:
            self.on_change(commit.change, done.version)
        return rules.continue_with(commit.row, commit.change, done)

    def _settle(self, settle: Settle) -> ClaimedRow | None:
        """Sleep in the waiting state, unless news arrived while deciding: then decide again,
        still holding the lease."""
        row, children = settle.row, settle.children
        sql = self.store.sql

        def news_from_children(conn: Connection) -> bool:
            assert children is not None
            # Again under the row's lock: a child that finished since the decision could not
            # wake this (running) row, so its slot is handed on here or never.
            if children.max_running is not None:
                sql.release_children(conn, row.id, children.max_running)
            counts = ChildCounts(*sql.child_counts(conn, row.id))
            return rules.children_ready(children.wait_for, counts)

        # Contention retried as long as the lease, as a commit's: giving up would leave the row
        # held (nothing runs it) until the lease expires.
        settled = sql.settle_waiting(row, deadline=settle.deadline, accepts=list(settle.accepts),
                                     children_ready=news_from_children if children else None,
                                     retry_for=self.lease)
        return row if settled is False else None
