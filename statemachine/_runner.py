"""Carrying out what `_decide` decides: claim -> decide -> act -> commit, and again while sticky.

The `Runner` is what a worker's handler threads call with each claimed row. It loads the row's
state, drives `decide` (answering its questions from the store), and carries out the action:
runs a handler (under its limit, inside a transaction if it is transactional), commits a change,
or settles the workflow back to sleep. Every rule (what to run, what a result or an error does,
when to park) is in `_decide`; the SQL is in `_store`.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections.abc import Callable
from typing import Any

import attrs
from sqlalchemy import Connection

from ._context import Services, context_for
from ._decide import (
    Action,
    Attempt,
    ChildrenResults,
    Commit,
    CountChildren,
    EnteredAt,
    EventSeen,
    Outcome,
    PendingEvents,
    Question,
    Raised,
    RecordExternalChange,
    RejectEvent,
    ReleaseChildren,
    Returned,
    RunErrorRoute,
    RunHandler,
    Settle,
    Stop,
    after_error_route,
    after_handler,
    after_refusal,
    children_ready,
    continue_with,
    decide,
    drive,
)
from ._definition import ChildResult, Machine, MachineSpec
from ._limits import Limit
from ._records import FINISHED, Change, ChildCounts, ChildStart, ClaimedRow, Committed
from ._serde import Codecs, StateCodec
from ._store import Store
from .errors import InvalidArgument, StateMachineError, StoreError

__all__ = ["Loaded", "Runner"]

log = logging.getLogger("statemachine.worker")

ALL_CHILDREN = 2**31 - 1


@attrs.frozen
class Loaded:
    """A machine as a worker runs it: the instance (its dependencies), its spec and codec."""

    machine: Machine
    spec: MachineSpec
    codec: StateCodec


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
    ) -> None:
        self.store = store
        self.machines = machines
        self.worker = worker
        self.lease = lease
        self._sticky = sticky
        self._extend_lease = extend_lease
        self.on_change = on_change
        # Shared by the handler threads (written by each, read by the worker's shutdown): every
        # access to the two below goes through `_lock`.
        self._lock = threading.Lock()
        self._transitions = 0
        # Rows inside an at-most-once handler: never give them back on shutdown (a new claim
        # after their lease expires sees the unfinished attempt and reconciles).
        self._unreleasable: set[uuid.UUID] = set()
        # Filled lazily by any thread; a race only builds one codec twice.
        self.codecs = Codecs(m.spec for m in machines.values())

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
        loaded = self.machines[row.machine]
        state: object | None = None
        load_error: str | None = None
        try:
            state = loaded.codec.load(row.state, row.data, workflow=row.id)
        except StateMachineError as e:  # DataError, UnknownState
            load_error = str(e)
        turn = _Turn(loaded, Attempt(row, loaded.spec, state, load_error, self.store.clock.now(),
                                     self.worker, self.lease))
        action: Action | None = drive(decide(turn.attempt), lambda q: self._answer(q, row))
        while action is not None:
            match action:
                case Commit():
                    return self._write(action)
                case Settle():
                    return self._settle(action)
                case Stop():
                    log.warning("workflow %s: %s", row.id, action.reason)
                    return None
                case RunHandler():
                    after = self._invoke(turn, action)
                    if after is None or isinstance(after, ClaimedRow):
                        return after  # deferred by a limit, or committed in its transaction
                    action = after
                case RunErrorRoute():
                    action = self._run_error_route(turn, action)
        return None

    # -- answering the decision's questions --------------------------------------------------

    def _answer(self, q: Question, row: ClaimedRow) -> Any:
        sql = self.store.sql
        match q:
            case RecordExternalChange():
                return sql.record_external_change(q.row, worker=self.worker)
            case PendingEvents():
                return [self._event(row, e) for e in sql.pending_events(row.id)]
            case RejectEvent():
                log.warning("workflow %s: event %s rejected: %s", row.id, q.event_id, q.reason)
                return sql.reject_event(q.event_id, q.reason)
            case EnteredAt():
                return sql.entered_at(row.id, q.version)
            case ReleaseChildren():
                up_to = ALL_CHILDREN if q.up_to is None else q.up_to
                return self.store.transaction(lambda c: sql.release_children(c, row.id, up_to))
            case CountChildren():
                return self.store.transaction(lambda c: ChildCounts(*sql.child_counts(c, row.id)))
            case ChildrenResults():
                return [self._child_result(c) for c in sql.children_of(row.id)]
        raise AssertionError(q)

    def _event(self, row: ClaimedRow, e: Any) -> EventSeen:
        codec = self.machines[row.machine].codec
        if e.type not in codec.spec.event_types:
            return EventSeen(e.id, e.type, e.created_at)
        try:
            return EventSeen(e.id, e.type, e.created_at,
                             event=codec.load_event(e.type, e.data, workflow=row.id))
        except StateMachineError as error:
            return EventSeen(e.id, e.type, e.created_at, error=str(error))

    def _child_result(self, child: Any) -> ChildResult:
        state: object | None = None
        codec = self.codecs.get(child.machine)
        if codec is not None and child.status in FINISHED:
            try:
                state = codec.load(child.state, child.data, workflow=child.id)
            except StateMachineError:
                state = None
        return ChildResult(id=child.id, machine=child.machine, status=child.status,
                           state_name=child.state, data=child.data, state=state,
                           last_error=child.last_error)

    # -- running handlers --------------------------------------------------------------------

    def _invoke(self, turn: _Turn, run: RunHandler) -> Action | ClaimedRow | None:
        """Run the handler under its limit: the next action; or, when a transactional handler
        committed, the row to continue with; None when deferred by the limit."""
        held: tuple[str, int | None] | None = None
        if run.handler.limit is not None:
            acquired = self._acquire(run.row, run.handler.limit, turn.attempt.state)
            if isinstance(acquired, float):
                self.store.sql.defer(run.row, acquired)
                return None
            held = acquired
        try:
            if run.handler.transactional:
                return self._run_transactional(turn, run)
            outcome = self._call(turn, run.row, run.handler.at_most_once,
                                 lambda ctx: run.handler.fn(turn.loaded.machine,
                                                            turn.attempt.state, *run.args, ctx))
            return after_handler(turn.attempt, run, outcome, turn.loaded.codec.dump,
                                 sticky=self._sticky())
        finally:
            if held is not None and held[1] is not None:
                self.store.sql.release_slot(held[0], held[1], run.row.id)

    def _run_error_route(self, turn: _Turn, run: RunErrorRoute) -> Action:
        route = run.handler.error_route
        assert route is not None
        outcome = self._call(turn, run.row, False, lambda ctx: route.fn(
            turn.loaded.machine, turn.attempt.state, run.failure, ctx))
        return after_error_route(turn.attempt, run, outcome, turn.loaded.codec.dump,
                                 sticky=self._sticky())

    def _call(self, turn: _Turn, row: ClaimedRow, at_most_once: bool,
              fn: Callable[[Any], object], connection: Connection | None = None) -> Outcome:
        """Call a handler with its context; what it returned (and the children it started), or
        what it raised."""
        children: list[ChildStart] = []
        ctx = context_for(row, self._services(row, children, connection))
        if at_most_once:
            with self._lock:
                self._unreleasable.add(row.id)
        try:
            return Returned(fn(ctx), tuple(children))
        except Exception as e:
            return Raised(e)
        finally:
            if at_most_once:
                with self._lock:
                    self._unreleasable.discard(row.id)

    def _run_transactional(self, turn: _Turn, run: RunHandler) -> Action | ClaimedRow | None:
        """Run the handler and commit its result in one transaction: its own writes through
        ``ctx.connection`` and the state change commit together, or neither does."""

        def attempt(conn: Connection) -> tuple[Commit, Committed]:
            outcome = self._call(turn, run.row, False, lambda ctx: run.handler.fn(
                turn.loaded.machine, turn.attempt.state, *run.args, ctx), conn)
            if isinstance(outcome, Raised):
                raise outcome.error  # rolls back; handled below like any handler's error
            action = after_handler(turn.attempt, run, outcome, turn.loaded.codec.dump,
                                   sticky=self._sticky())
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
            return after_handler(turn.attempt, run, Raised(e), turn.loaded.codec.dump,
                                 sticky=False)
        return self._committed(commit, done)

    def _services(self, row: ClaimedRow, children: list[ChildStart],
                  connection: Connection | None) -> Services:
        def start_child(machine: Any, state: object, key: str | None) -> uuid.UUID:
            spec: MachineSpec = machine.spec
            if type(state) is not spec.initial:
                raise InvalidArgument(f"machine {spec.name} starts in {spec.initial.__name__}, "
                                      f"not {type(state).__name__}", workflow_id=row.id,
                                      state=row.state)
            name, data = self.codecs.of(spec).dump(state)
            child = ChildStart(id=uuid.uuid4(), machine=spec.name, state=name, data=data,
                               key=key)
            children.append(child)
            return child.id

        return Services(
            worker=self.worker, clock=self.store.clock,
            extend=lambda seconds: self._extend_lease(row, seconds), start_child=start_child,
            cancel_check=lambda: self.store.sql.cancel_requested(row.id), connection=connection)

    def _acquire(self, row: ClaimedRow, limit: Limit,
                 state: object) -> tuple[str, int | None] | float:
        """Take what `limit` asks for: (key, slot) to release after the handler, or the seconds
        to wait (nothing held, a little jitter added) when the key is at its limit."""
        key = limit.key_for(state)
        slot: int | None = None
        if limit.concurrency is not None:
            slot = self.store.sql.acquire_slot(key, limit.concurrency, row.id, self.lease)
            if slot is None:
                return 0.05 + random.random() * 0.15
        if limit.per_second is not None:
            count, window = limit.window
            wait = self.store.sql.take_start(key, count, window)
            if wait > 0:
                if slot is not None:
                    self.store.sql.release_slot(key, slot, row.id)
                return wait + random.random() * 0.01
        return key, slot

    # -- committing --------------------------------------------------------------------------

    def _write(self, commit: Commit) -> ClaimedRow | None:
        try:
            done = self.store.sql.commit(commit.change, retry_for=self.lease / 2)
        except StoreError as e:
            instead = after_refusal(commit, e)
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
        if self.on_change is not None:
            self.on_change(commit.change, done.version)
        return continue_with(commit.row, commit.change, done)

    def _settle(self, settle: Settle) -> ClaimedRow | None:
        """Sleep in the waiting state, unless news arrived while deciding: then decide again,
        still holding the lease."""
        row, children = settle.row, settle.children
        sql = self.store.sql

        def news_from_children(conn: Connection) -> bool:
            assert children is not None
            if children.max_running is not None:
                sql.release_children(conn, row.id, children.max_running)
            return children_ready(children.wait_for, ChildCounts(*sql.child_counts(conn, row.id)))

        settled = sql.settle_waiting(row, deadline=settle.deadline, accepts=list(settle.accepts),
                                     children_ready=news_from_children if children else None)
        return row if settled is False else None
