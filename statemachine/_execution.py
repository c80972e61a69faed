"""Running one claimed workflow: pick its handler, run it, commit what it returned.

The `Runner` is what a worker's handler threads call with each claimed row. It dispatches on the
row's state: a step runs; a waiting state looks for an event it accepts, its children, or its
deadline, and otherwise goes back to sleep; a cancellation request runs the cancel route. The
rules of what an outcome does (retry, error route, park) live in `outcome`; the SQL in `store`.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import attrs
from sqlalchemy import Connection

from ._clock import Clock
from ._context import Context
from ._definition import (
    ChildResult,
    Delayed,
    Failure,
    Machine,
    MachineSpec,
    Rerun,
    StepHandler,
    state_name,
)
from ._limits import Limit, RetryAfter
from ._outcome import (
    describe_failure,
    failure_change,
    failure_text,
    park_change,
    transition_change,
)
from ._serde import Codecs, StateCodec
from ._store import Change, ChildStart, ClaimedRow, Committed, Store
from .errors import DataError, StateMachineError, StoreError, UnknownMachine

__all__ = ["Loaded", "Runner"]

log = logging.getLogger("statemachine.worker")


@attrs.frozen
class Loaded:
    """A machine as a worker runs it: the instance (its dependencies), its spec and codec."""

    machine: Machine
    spec: MachineSpec
    codec: StateCodec


_FINISHED = ("done", "failed", "cancelled")


def _telling_the_parent(change: Change, row: ClaimedRow) -> Change:
    """A child that finishes, however it finishes (done, parked, cancelled), wakes its parent."""
    if change.status in _FINISHED and row.parent_id is not None and change.wake_parent is None:
        return attrs.evolve(change, wake_parent=row.parent_id)
    return change


def _refused_for_good(error: StoreError) -> bool:
    """Whether the database rejected the data itself (SQLSTATE class 23, integrity constraint,
    or 22, data exception): running the handler again would meet the same refusal."""
    driver_error = getattr(error.__cause__, "orig", error.__cause__)
    sqlstate = getattr(driver_error, "sqlstate", None)
    if sqlstate is None:  # SQLite reports constraints by exception type, not SQLSTATE
        return type(driver_error).__name__ == "IntegrityError"
    return str(sqlstate)[:2] in ("22", "23")


class _Rollback(Exception):
    """Abort a transactional handler's transaction: park (with a reason) or lease lost (None)."""

    def __init__(self, park_reason: str | None) -> None:
        super().__init__(park_reason or "lease lost")
        self.park_reason = park_reason


@attrs.define
class _Pending:
    """What a handler asked for besides its next state (children to start)."""

    children: list[ChildStart] = attrs.Factory(list)


class Runner:
    """Runs claimed workflows of known machines; one instance is shared by a worker's threads."""

    def __init__(
        self,
        store: Store,
        machines: dict[str, Loaded],
        *,
        worker: str,
        lease: float,
        sticky: Callable[[], bool],
        extend_lease: Callable[[ClaimedRow, float], None],
        on_change: Callable[[Change, int], None] | None = None,
    ) -> None:
        self.store = store
        self.machines = machines
        self.worker = worker
        self.lease = lease
        self.clock: Clock = store.clock
        self._sticky = sticky
        self._extend_lease = extend_lease
        self.on_change = on_change
        self.transitions = 0
        # Rows inside an at-most-once handler: never give them back on shutdown (a new claim
        # after their lease expires sees the unfinished attempt and reconciles).
        self.unreleasable: set[uuid.UUID] = set()
        self.codecs = Codecs(m.spec for m in machines.values())

    def run(self, row: ClaimedRow) -> None:
        """Run `row`, and the states that follow it at once while the lease is kept."""
        current: ClaimedRow | None = row
        while current is not None:
            current = self.step(current)

    # -- dispatch ----------------------------------------------------------------------------

    def step(self, row: ClaimedRow) -> ClaimedRow | None:
        """Run one transition of `row`; returns the row to continue with (sticky), or None."""
        loaded = self.machines[row.machine]
        started = self.clock.now()
        if row.external_change:
            if not self.store.sql.record_external_change(row, worker=self.worker):
                return None
            log.info("workflow %s: version %d was written outside the engine (state %s)",
                     row.id, row.version, row.state)
            row = attrs.evolve(row, entered_version=row.version, attempt=1, external_change=False)
        try:
            state = loaded.codec.load(row.state, row.data, workflow=row.id)
        except (DataError, UnknownMachine) as e:
            if row.cancel_requested:  # no cancel route can run on data that does not load
                return self._cancel_plainly(row, started)
            return self._write(park_change(row, str(e), worker=self.worker, started_at=started),
                               row)
        spec = loaded.spec
        if spec.is_terminal(type(state)):
            # Only an operator puts a terminal state in a runnable row: finish it.
            return self._write(attrs.evolve(transition_change(
                row, spec, row.state, row.data, terminal=True, worker=self.worker,
                started_at=started, continue_lease=None, kind="finished"), clear_cancel=True), row)
        if row.cancel_requested:
            return self._cancel(row, loaded, state, started)
        if spec.is_waiting(type(state)):
            return self._wait(row, loaded, state, started)
        handler = spec.steps[type(state)]
        if handler.at_most_once:
            if row.in_doubt:
                return self._reconcile(row, loaded, handler, state, started)
            if row.previous_status == "running":
                return self._in_doubt(row, loaded, handler, state, started,
                                       f"attempt {row.attempt - 1} of {handler.name} started and "
                                       "did not finish (worker lost)")
        if row.previous_status == "running":
            log.warning("workflow %s: attempt %d of %s was abandoned (worker lost); running again",
                        row.id, row.attempt - 1, row.state)
            if row.attempt > handler.retry.max_attempts:
                failure = Failure(type="WorkerLost", attempt=row.attempt - 1, message=(
                    f"{row.attempt - 1} attempts were abandoned (worker crashed or lost its "
                    "lease); no attempts left"), permanent=True)
                return self._failed_for_good(row, loaded, handler, state, failure, started)
        return self._invoke(row, loaded, handler, state, (), started)

    # -- limits ------------------------------------------------------------------------------

    def _acquire(
        self, row: ClaimedRow, limit: Limit, state: object
    ) -> tuple[str, int | None] | float:
        """Take what `limit` asks for: (key, slot) to release after the handler, or the seconds
        to wait (nothing held) when the key is at its limit."""
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

    # -- running a handler -------------------------------------------------------------------

    def _invoke(
        self, row: ClaimedRow, loaded: Loaded, handler: StepHandler[Any], state: object,
        args: tuple[object, ...], started: datetime, *, kind: str = "transition",
        cause: str | None = None, extra: dict[str, Any] | None = None,
    ) -> ClaimedRow | None:
        """Run `handler(state, *args, ctx)` and commit its outcome (next state or failure)."""
        held: tuple[str, int | None] | None = None
        if handler.limit is not None:
            acquired = self._acquire(row, handler.limit, state)
            if isinstance(acquired, float):
                self.store.sql.defer(row, acquired)
                return None
            held = acquired
        try:
            return self._run_handler(row, loaded, handler, state, args, started, kind=kind,
                                     cause=cause, extra=extra)
        finally:
            if held is not None and held[1] is not None:
                self.store.sql.release_slot(held[0], held[1], row.id)

    def _run_handler(
        self, row: ClaimedRow, loaded: Loaded, handler: StepHandler[Any], state: object,
        args: tuple[object, ...], started: datetime, *, kind: str,
        cause: str | None, extra: dict[str, Any] | None,
    ) -> ClaimedRow | None:
        pending = _Pending()
        try:
            if handler.transactional:
                return self._run_transactional(row, loaded, handler, state, args, started,
                                               kind=kind, cause=cause, extra=extra)
            if handler.at_most_once:
                self.unreleasable.add(row.id)
            result = handler.fn(loaded.machine, state, *args, self._context(row, pending))
        except RetryAfter as e:
            log.info("workflow %s: %s asked to retry after %.3gs", row.id, row.state, e.seconds)
            return self._write(Change(
                workflow_id=row.id, version=row.version, lease_token=row.lease_token,
                kind="rescheduled", from_state=row.state, to_state=row.state, data=row.data,
                status="ready", attempt=row.attempt, wake_after=e.seconds, new_state=False,
                uncount_attempt=True, error=f"{type(e).__name__}: {e}", worker=self.worker,
                started_at=started), row)
        except Exception as e:
            failure = describe_failure(e, row.attempt, handler.retry.is_permanent(e))
            if handler.at_most_once and not failure.permanent:
                # It may have taken effect before failing: never re-run it blindly.
                return self._in_doubt(row, loaded, handler, state, started,
                                      f"attempt {row.attempt} of {handler.name} raised "
                                      f"{failure}; it may or may not have taken effect")
            change = failure_change(row, handler, failure, worker=self.worker, started_at=started)
            if change is not None:
                log.info("workflow %s: %s failed (attempt %d), retrying: %s",
                         row.id, row.state, row.attempt, failure)
                return self._write(change, row)
            return self._failed_for_good(row, loaded, handler, state, failure, started)
        finally:
            self.unreleasable.discard(row.id)
        if isinstance(result, Rerun) and kind == "reconciled":
            return self._rerun(row, loaded, state, started)
        return self._commit_result(row, loaded, handler.name, handler.targets, result, started,
                                   kind=kind, cause=cause, pending=pending, extra=extra)

    def _run_transactional(
        self, row: ClaimedRow, loaded: Loaded, handler: StepHandler[Any], state: object,
        args: tuple[object, ...], started: datetime, *, kind: str,
        cause: str | None, extra: dict[str, Any] | None,
    ) -> ClaimedRow | None:
        """Run the handler and commit its result in one transaction: its own writes through
        ``ctx.connection`` and the state change commit together, or neither does."""

        def run(conn: Connection) -> tuple[Change, Committed]:
            pending = _Pending()
            result = handler.fn(loaded.machine, state, *args,
                                self._context(row, pending, connection=conn))
            change = self._result_change(row, loaded, handler.name, handler.targets, result,
                                         started, kind=kind, cause=cause, pending=pending,
                                         extra=extra)
            if isinstance(change, str):
                raise _Rollback(change)
            change = _telling_the_parent(change, row)
            done = self.store.sql.commit_in(conn, change)
            if done is None:
                raise _Rollback(None)
            return change, done

        try:
            change, done = self.store.transaction(run)
        except _Rollback as r:
            if r.park_reason is not None:
                return self._park(row, started, r.park_reason)
            log.warning("workflow %s: lease lost or row changed at version %d; the transaction "
                        "of %s was rolled back", row.id, row.version, row.state)
            return None
        return self._committed(change, done, row)

    def _in_doubt(self, row: ClaimedRow, loaded: Loaded, handler: StepHandler[Any],
                  state: object, started: datetime, reason: str) -> ClaimedRow | None:
        """Record that an at-most-once attempt may have taken effect, then reconcile (or park)."""
        log.warning("workflow %s: in doubt: %s", row.id, reason)
        if handler.reconcile_route is None:
            return self._write(attrs.evolve(park_change(
                row, f"in doubt: {reason}. Resolve it: `statemachine resolve {row.id} --retry` "
                "if it did not happen, `--to STATE --data JSON` if it did.",
                worker=self.worker, started_at=started), kind="in_doubt", in_doubt=reason), row)
        marked = self._write(Change(
            workflow_id=row.id, version=row.version, lease_token=row.lease_token,
            kind="in_doubt", from_state=row.state, to_state=row.state, data=row.data,
            status="ready", attempt=row.attempt, new_state=False, keep_lease=self.lease,
            in_doubt=reason, error=reason, worker=self.worker, started_at=started), row)
        return None if marked is None else attrs.evolve(marked, in_doubt=reason)

    def _reconcile(self, row: ClaimedRow, loaded: Loaded, handler: StepHandler[Any],
                   state: object, started: datetime) -> ClaimedRow | None:
        route = handler.reconcile_route
        if route is None:
            return self._park(row, started, f"in doubt: {row.in_doubt}")
        reconciler: StepHandler[Any] = StepHandler(route.fn, handler.retry)
        reconciler.name, reconciler.targets = route.fn.__name__, route.targets
        return self._invoke(row, loaded, reconciler, state, (), started, kind="reconciled",
                            cause=f"reconcile: {row.in_doubt}")

    def _rerun(self, row: ClaimedRow, loaded: Loaded, state: object,
               started: datetime) -> ClaimedRow | None:
        """Reconcile found that the attempt in doubt did not take effect: run the step again,
        same transition and idempotency key, after its backoff; with no attempts left the step
        has failed for good (its error route, or parked)."""
        handler = loaded.spec.steps[type(state)]
        if row.attempt >= handler.retry.max_attempts:
            return self._failed_for_good(row, loaded, handler, state, Failure(
                type="NotApplied", attempt=row.attempt, message=(
                    f"{row.attempt} attempts of {handler.name} did not take effect (reconciled); "
                    "no attempts left")), started)
        return self._write(Change(
            workflow_id=row.id, version=row.version, lease_token=row.lease_token, kind="rerun",
            from_state=row.state, to_state=row.state, data=row.data, status="ready",
            attempt=row.attempt, wake_after=handler.retry.delay(row.attempt), new_state=False,
            in_doubt="", cause=f"reconcile: {row.in_doubt}", worker=self.worker,
            started_at=started), row)

    def _commit_result(
        self, row: ClaimedRow, loaded: Loaded, handler_name: str, allowed: tuple[type, ...],
        result: object, started: datetime, *, kind: str = "transition", error: str | None = None,
        cause: str | None = None, pending: _Pending | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ClaimedRow | None:
        change = self._result_change(row, loaded, handler_name, allowed, result, started,
                                     kind=kind, error=error, cause=cause, pending=pending,
                                     extra=extra)
        if isinstance(change, str):
            return self._park(row, started, change)
        return self._write(change, row)

    def _result_change(
        self, row: ClaimedRow, loaded: Loaded, handler_name: str, allowed: tuple[type, ...],
        result: object, started: datetime, *, kind: str = "transition", error: str | None = None,
        cause: str | None = None, pending: _Pending | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Change | str:
        """The change a handler's result makes, or why the workflow must be parked instead."""
        delayed = result if isinstance(result, Delayed) else None
        state = delayed.state if delayed is not None else result
        if type(state) not in allowed:
            declared = " | ".join(state_name(t) for t in allowed) or "nothing"
            return (f"handler {handler_name!r} returned {type(state).__name__}, which its return "
                    f"annotation does not declare (declared: {declared})")
        try:
            name, data = loaded.codec.dump(state)
        except Exception as e:
            return f"handler {handler_name!r} returned a state that does not serialize: {e}"
        spec = loaded.spec
        terminal = spec.is_terminal(type(state))
        keep = self.lease if self._sticky() and delayed is None and not terminal else None
        change = transition_change(row, spec, name, data, terminal=terminal, worker=self.worker,
                                   started_at=started, continue_lease=keep, kind=kind, error=error)
        children = tuple(pending.children) if pending else ()
        waits = spec.children.get(type(state))
        if children and waits is not None and waits.max_running is not None:
            children = tuple(attrs.evolve(c, queued=True) for c in children)
        fields: dict[str, Any] = {"cause": cause, "children": children,
                                  "clear_cancel": terminal, **(extra or {})}
        if terminal:
            fields["clear_cancel"] = True
        change = attrs.evolve(change, **fields)
        if delayed is not None:
            change = attrs.evolve(change, wake_at=delayed.at, wake_after=delayed.after)
        return change

    def _failed_for_good(
        self, row: ClaimedRow, loaded: Loaded, handler: StepHandler[Any], state: object,
        failure: Failure, started: datetime,
    ) -> ClaimedRow | None:
        text = failure_text(failure)
        route = handler.error_route
        if route is None:
            why = "permanent error" if failure.permanent else "no attempts left"
            log.warning("workflow %s parked in %s (%s): %s", row.id, row.state, why, failure)
            return self._write(park_change(row, text, worker=self.worker, started_at=started),
                               row)
        pending = _Pending()
        try:
            result = route.fn(loaded.machine, state, failure, self._context(row, pending))
        except Exception as e:
            return self._park(row, started, f"{text}\nerror route {route.fn.__name__!r} failed "
                              f"too: {type(e).__name__}: {e}")
        return self._commit_result(row, loaded, route.fn.__name__, route.targets, result,
                                   started, kind="error_route", error=text, pending=pending)

    def _park(self, row: ClaimedRow, started: datetime | None, reason: str) -> ClaimedRow | None:
        change = park_change(row, f"workflow {row.id}: {reason}", worker=self.worker,
                             started_at=started)
        return self._write(change, row)

    def _write(self, change: Change, row: ClaimedRow) -> ClaimedRow | None:
        change = _telling_the_parent(change, row)
        try:
            done = self.store.sql.commit(change, retry_for=self.lease / 2)
        except StoreError as e:
            if change.kind == "parked" or not _refused_for_good(e):
                raise  # an outage or contention: the lease expires and the workflow runs again
            # The database refused the change for good (a constraint: a child's key already
            # used, say): park the workflow with the reason rather than run it again and again.
            return self._write(park_change(
                row, f"workflow {row.id}: the database refused the result of {row.state}: {e}",
                worker=self.worker, started_at=change.started_at), row)
        if done is None:
            log.warning("workflow %s: lease lost or row changed at version %d; result of %s "
                        "discarded", row.id, row.version, row.state)
            return None
        return self._committed(change, done, row)

    def _committed(self, change: Change, done: Committed, row: ClaimedRow) -> ClaimedRow | None:
        """After a commit: count it, report it, and continue with the next state if sticky."""
        self.transitions += 1
        if change.status in ("done", "failed", "cancelled"):
            self.store.sql.finished(change.workflow_id)
        if self.on_change is not None:
            self.on_change(change, done.version)
        if change.keep_lease is None:
            return None
        return ClaimedRow(id=row.id, machine=row.machine, state=change.to_state, data=change.data,
                          version=done.version,
                          # Same state (an in-doubt mark): same transition, same idempotency key.
                          entered_version=done.version if change.new_state else row.entered_version,
                          attempt=1 if change.new_state else row.attempt,
                          lease_token=row.lease_token, previous_status="ready",
                          external_change=False, parent_id=row.parent_id,
                          cancel_requested=done.cancel_requested)

    # -- waiting states ----------------------------------------------------------------------

    def _wait(self, row: ClaimedRow, loaded: Loaded, state: object,
              started: datetime) -> ClaimedRow | None:
        spec, cls = loaded.spec, type(state)
        accepts = spec.events.get(cls, {})
        by_name = {state_name(e): h for e, h in accepts.items()}
        timeout = spec.timeouts.get(cls)
        children = spec.children.get(cls)
        try:
            deadline = self._deadline(row, timeout, state)
        except Exception as e:
            return self._park(row, started, f"timeout of {row.state} could not be computed: "
                              f"{type(e).__name__}: {e}")
        now = self.clock.now()

        if by_name:
            for event_row in self.store.sql.pending_events(row.id):
                if event_row.type not in spec.event_types:
                    self._reject(row, event_row, f"machine {spec.name} has no event named "
                                 f"{event_row.type!r}")
                    continue
                if event_row.type not in by_name:
                    continue  # buffered for a later state
                try:
                    event = loaded.codec.load_event(event_row.type, event_row.data,
                                                    workflow=row.id)
                except DataError as e:
                    self._reject(row, event_row, str(e))
                    continue
                if deadline is not None and now >= deadline and event_row.created_at > deadline:
                    break  # it came after the deadline: the timeout wins
                return self._invoke(
                    row, loaded, by_name[event_row.type], state, (event,), started,
                    cause=f"event {event_row.type} {event_row.id}",
                    extra={"consume_event": event_row.id})

        if children is not None:
            results = self._children_results(row, children)
            if results is not None:
                if children.max_running is not None:
                    # Moving on: children still queued (wait_for="first") are let go, not
                    # stranded; cancel them in the handler if the race should stop them.
                    self.store.transaction(
                        lambda c: self.store.sql.release_children(c, row.id, 2**31 - 1))
                return self._invoke(row, loaded, children, state, (results,), started,
                                    cause=f"children finished ({len(results)})")

        if timeout is not None and deadline is not None and now >= deadline:
            return self._invoke(row, loaded, timeout, state, (), started,
                                cause=f"timeout at {deadline.isoformat()}")

        check = None
        if children is not None:
            def check(conn: Connection, handler: StepHandler[Any] = children) -> bool:
                return self._children_ready(conn, row.id, handler)

        settled = self.store.sql.settle_waiting(row, deadline=deadline, accepts=list(by_name),
                                            children_ready=check)
        if settled is False:
            return row  # news arrived while deciding: look again, still holding the lease
        return None

    def _deadline(self, row: ClaimedRow, timeout: StepHandler[Any] | None,
                  state: object) -> datetime | None:
        if timeout is None:
            return None
        if timeout.timeout_at is not None:
            at = timeout.timeout_at(state)
            if at.tzinfo is None:
                raise DataError(f"on_timeout(at=...) returned a naive datetime {at!r}")
            return at
        assert timeout.timeout_after is not None
        entered = self.store.sql.entered_at(row.id, row.entered_version) or self.clock.now()
        return entered + timedelta(seconds=timeout.timeout_after)

    def _reject(self, row: ClaimedRow, event_row: Any, reason: str) -> None:
        log.warning("workflow %s: event %s rejected: %s", row.id, event_row.id, reason)
        self.store.sql.reject_event(event_row.id, reason)

    def _children_ready(self, conn: Connection, parent: uuid.UUID,
                        handler: StepHandler[Any]) -> bool:
        if handler.max_running is not None:
            self.store.sql.release_children(conn, parent, handler.max_running)
        finished, active, queued = self.store.sql.child_counts(conn, parent)
        if handler.wait_for == "first":
            return finished > 0 or (active == 0 and queued == 0)
        return active == 0 and queued == 0

    def _children_results(self, row: ClaimedRow,
                          handler: StepHandler[Any]) -> list[ChildResult] | None:
        ready = self.store.transaction(lambda c: self._children_ready(c, row.id, handler))
        if not ready:
            return None
        results = []
        for child in self.store.sql.children_of(row.id):
            loaded_state: object | None = None
            codec = self.codecs.get(child.machine)
            if codec is not None and child.status in ("done", "failed", "cancelled"):
                try:
                    loaded_state = codec.load(child.state, child.data, workflow=child.id)
                except StateMachineError:
                    loaded_state = None
            results.append(ChildResult(
                id=child.id, machine=child.machine, status=child.status,
                state_name=child.state, data=child.data, state=loaded_state,
                last_error=child.last_error))
        if handler.wait_for == "first":
            results = [r for r in results if r.status in ("done", "failed", "cancelled")]
        return results

    # -- cancellation ------------------------------------------------------------------------

    def _cancel(self, row: ClaimedRow, loaded: Loaded, state: object,
                started: datetime) -> ClaimedRow | None:
        reason = row.cancel_requested or "cancel requested"
        spec = loaded.spec
        if spec.cancel is not None and spec.cancel_applies(type(state)):
            return self._invoke(row, loaded, spec.cancel, state, (), started, kind="cancel",
                                cause=reason,
                                extra={"clear_cancel": True, "cancel_children": reason})
        return self._cancel_plainly(row, started)

    def _cancel_plainly(self, row: ClaimedRow, started: datetime) -> ClaimedRow | None:
        """End the workflow `cancelled` (children asked to cancel too, parent told)."""
        reason = row.cancel_requested or "cancel requested"
        return self._write(Change(
            workflow_id=row.id, version=row.version, lease_token=row.lease_token, kind="cancel",
            from_state=row.state, to_state=row.state, data=row.data, status="cancelled",
            attempt=row.attempt, new_state=False, cause=reason, worker=self.worker,
            started_at=started, clear_cancel=True, cancel_children=reason), row)

    # -- context -----------------------------------------------------------------------------

    def _context(self, row: ClaimedRow, pending: _Pending,
                 connection: Connection | None = None) -> Context:
        def start_child(machine: Any, state: object, key: str | None) -> uuid.UUID:
            spec: MachineSpec = machine.spec
            if type(state) is not spec.initial:
                raise StateMachineError(f"machine {spec.name} starts in "
                                        f"{spec.initial.__name__}, not {type(state).__name__}")
            name, data = self.codecs.of(spec).dump(state)
            child = ChildStart(id=uuid.uuid4(), machine=spec.name, state=name, data=data,
                               key=key)
            pending.children.append(child)
            return child.id

        return Context(
            workflow_id=row.id, machine=row.machine, state=row.state, attempt=row.attempt,
            version=row.version, idempotency_key=f"{row.id}:{row.entered_version}",
            worker=self.worker,
            log=logging.LoggerAdapter(logging.getLogger(f"statemachine.workflow.{row.machine}"),
                                      {"workflow_id": str(row.id), "state": row.state}),
            clock=self.clock, extend=lambda seconds: self._extend_lease(row, seconds),
            start_child=start_child, connection=connection,
            cancel_check=lambda: self.store.sql.cancel_requested(row.id))
