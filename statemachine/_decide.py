"""What happens next to a claimed workflow: every rule of the engine, and no I/O.

Two functions hold the rules; the runner (`_runner`) only carries out what they return.

* `decide(attempt)` looks at a claimed row, its machine's spec and its loaded state, and returns
  an *action*: run a handler (`RunHandler`), commit a change (`Commit`: a finish, a park, an in
  doubt mark, a plain cancellation), go back to sleep (`Settle`), or nothing (`Stop`).
* `after_handler(...)` (and `after_error_route(...)`) turn what a handler did (a returned state,
  `Delayed`, `Rerun`, an exception, `RetryAfter`) into the next action: usually a `Commit`, or the
  error route to run, or a park.

**Ask, then decide.** Some facts are only worth fetching for some rows (the pending events of a
waiting state, its entry time, its children), so `decide` is a generator in the style of httpx's
auth flow: it *yields a question* (`PendingEvents()`, `EnteredAt(version)`, `CountChildren()`,
...) and receives the answer through ``send``; a few questions are store writes that cannot be
decided in advance (`RecordExternalChange`, `RejectEvent`, `ReleaseChildren`). Its return value is
the action. `drive(flow, answer)` runs one from a plain loop: the threaded runner answers from
SQL, a test answers from lists, and an async driver can do the same with ``await``.

Imports: definitions, records, errors and the standard library only (a unit test checks that
importing this module loads neither SQLAlchemy nor psycopg).
"""

from __future__ import annotations

import logging
import traceback as tb
from collections.abc import Generator
from datetime import datetime, timedelta
from typing import Any, Literal

import attrs

from ._actions import (
    Action,
    Attempt,
    Call,
    ChildrenResults,
    Commit,
    CountChildren,
    DatabaseNow,
    Done,
    EnteredAt,
    EventSeen,
    Flow,
    Outcome,
    PendingEvents,
    PollingSince,
    Question,
    Raised,
    RecordExternalChange,
    RejectEvent,
    ReleaseChildren,
    Repoll,
    Returned,
    RunErrorRoute,
    RunHandler,
    Settle,
    Stop,
)
from ._declarations import ChildResult, Delayed, Failure, PollAgain, Rerun, state_name
from ._limits import RetryAfter
from ._records import FINISHED, Change, ChildCounts, ClaimedRow, Committed, HistoryKind
from ._spec import Handler
from .errors import DataError, StoreError

__all__ = [
    "MAX_TRACEBACK",
    "after_error_route",
    "after_handler",
    "after_refusal",
    "children_ready",
    "continue_with",
    "decide",
    "describe_failure",
    "failure_text",
    "refused_for_good",
    "unexpected_state_error",
]

log = logging.getLogger("statemachine.worker")

MAX_TRACEBACK = 4000


# -- decide ----------------------------------------------------------------------------------------


def decide(a: Attempt) -> Flow:
    """The action for a claimed row; the dispatch order is the rule order:
    undecodable columns, an external change, a state that does not load, a terminal state, a
    cancel request, a waiting state, an at-most-once step in doubt or cut off, a step whose
    worker was lost, then the step itself."""
    row = a.row
    if row.data_error is not None:
        return _park(a, row, row.data_error)
    if row.external_change:
        if not (yield RecordExternalChange(row)):
            return Stop(row, "lease lost while recording an external change")
        log.info("workflow %s: version %d was written outside the engine (state %s)",
                 row.id, row.version, row.state)
        row = attrs.evolve(row, entered_version=row.version, attempt=1, external_change=False)
        a = attrs.evolve(a, row=row)
    if a.load_error is not None:
        if row.cancel_requested:
            return _cancel_unloadable(a, a.load_error)
        return _commit(a, "park", Change.parked(row, a.load_error, worker=a.worker,
                                                started_at=a.now))
    state, spec = a.state, a.spec
    cls = type(state)
    if spec.is_terminal(cls):
        # Only an operator puts a terminal state in a runnable row: finish it.
        return _commit(a, "finish", Change.finished(row, worker=a.worker, started_at=a.now))
    if row.cancel_requested:
        return _cancel(a, state)
    if spec.is_waiting(cls):
        return (yield from _wait(a, state))
    handler = spec.steps[cls]
    if handler.at_most_once:
        if row.in_doubt:
            return _reconcile(a, handler)
        if row.previous_status == "running":
            return _mark_in_doubt(a, handler, f"attempt {row.attempt - 1} of {handler.name} "
                                  "started and did not finish (worker lost)")
    interrupts = spec.interrupts(cls)
    if interrupts:
        # A step state that accepts events: one that is pending is handled instead of the step
        # (which has not started; an event sent while it runs waits for its commit).
        by_name = {state_name(e): h for e, h in interrupts.items()}
        taken = yield from _take_event(a, by_name, None)
        if taken is not None:
            return taken
    if row.previous_status == "running":
        log.warning("workflow %s: attempt %d of %s was abandoned (worker lost); running again",
                    row.id, row.attempt - 1, row.state)
        if row.attempt > handler.retry.max_attempts:
            return _failed_for_good(a, handler, Failure(
                type="WorkerLost", attempt=row.attempt - 1, permanent=True, message=(
                    f"{row.attempt - 1} attempts were abandoned (worker crashed or lost its "
                    "lease); no attempts left")))
    if handler.poll is not None:
        # A polling step's deadline runs from entering its state (polls keep the version), or
        # from an operator's retry of it (a parked poll gets a fresh deadline).
        since: datetime | None = yield PollingSince(row.entered_version)
        now: datetime = (yield DatabaseNow()) or a.now
        return RunHandler(row, handler, (), Call(poll_since=since or now, poll_now=now))
    return RunHandler(row, handler)


def _commit(a: Attempt, what: Done, change: Change) -> Commit:
    return Commit(a.row, _finishing(change, a.row, events=bool(a.spec.event_types)), what)


def _park(a: Attempt, row: ClaimedRow, reason: str) -> Commit:
    """Park with a reason that names the workflow."""
    return _commit(a, "park", Change.parked(row, f"workflow {row.id}: {reason}", worker=a.worker,
                                            started_at=a.now))


def _finish_fields(row: ClaimedRow, status: str, *, clear_cancel: bool,
                   events: bool) -> dict[str, Any]:
    """What a change to `status` that finishes the workflow also does: a child, however it
    finishes (done, parked, cancelled), wakes its parent; unless the change carries out a cancel
    request, a request pending at commit (asked for while the handler ran) is recorded as
    superseded, in the same transaction, so no cancel request is ever lost without a trace; and
    a machine with events rejects the ones still pending when it ends done or cancelled."""
    if status not in FINISHED:
        return {}
    fields: dict[str, Any] = {}
    if row.parent_id is not None:
        fields["wake_parent"] = row.parent_id
    if not clear_cancel:
        fields["supersede_cancel"] = True
    if events and status in ("done", "cancelled"):
        fields["close_inbox"] = True
    return fields


def _finishing(change: Change, row: ClaimedRow, *, events: bool = False) -> Change:
    """`change` with what finishing also does (`_finish_fields`), where it is not set yet."""
    if change.status not in FINISHED:
        return change
    more = {k: v for k, v in _finish_fields(row, change.status, clear_cancel=change.clear_cancel,
                                            events=events).items() if not getattr(change, k)}
    return attrs.evolve(change, **more) if more else change


# -- cancellation ----------------------------------------------------------------------------------


def _cancel(a: Attempt, state: object) -> Action:
    """A cancel request runs the cancel route if it handles this state, else ends the workflow."""
    reason = a.row.cancel_requested or "cancel requested"
    cancel = a.spec.cancel
    if cancel is not None and a.spec.cancel_applies(type(state)):
        return RunHandler(a.row, cancel, (), Call(kind="cancel", cause=reason, clear_cancel=True,
                                                  cancel_children=reason))
    return _cancel_plainly(a)


def _cancel_unloadable(a: Attempt, load_error: str) -> Commit:
    """A cancel request for a state that does not load: no cancel route can run on it. Cancel
    plainly when the machine has no route for the stored state; otherwise park, naming the
    route, for a person to fix the data or cancel again skipping the compensation."""
    route = a.spec.cancel
    # A state name the machine does not know is handled only by a route for every state.
    if route is None or not a.spec.cancel_applies(a.spec.states.get(a.row.state, object)):
        return _cancel_plainly(a)
    row = a.row
    park = _park(a, row, (
        f"cancel requested ({row.cancel_requested}), but the state does not load "
        f"({load_error}): the cancel route {route.name!r} cannot run. Fix the data and cancel "
        f"again, or `statemachine cancel {row.id} --skip-compensation` to end it without "
        "compensation"))
    # The park answers the request (its history row says why): it is not pending any more.
    return attrs.evolve(park, change=attrs.evolve(park.change, clear_cancel=True,
                                                  supersede_cancel=False))


def _cancel_plainly(a: Attempt) -> Commit:
    reason = a.row.cancel_requested or "cancel requested"
    return _commit(a, "cancel", Change.cancelled(a.row, reason, worker=a.worker,
                                                 started_at=a.now))


# -- at most once ------------------------------------------------------------------------------


def _mark_in_doubt(a: Attempt, handler: Handler[Any], doubt: str) -> Commit:
    """An at-most-once attempt may have taken effect: mark it and reconcile it at once (keeping
    the lease), or, with no reconcile handler, park it for a human."""
    log.warning("workflow %s: in doubt: %s", a.row.id, doubt)
    row = a.row
    if handler.reconcile_route is None:
        return _commit(a, "in_doubt", Change.parked_in_doubt(
            row, doubt, f"in doubt: {doubt}. Resolve it: `statemachine resolve {row.id} --retry` "
            "if it did not happen, `--to STATE --data JSON` if it did.", worker=a.worker,
            started_at=a.now))
    return _commit(a, "in_doubt", Change.in_doubt(row, doubt, keep_lease=a.lease, worker=a.worker,
                                                  started_at=a.now))


def _reconcile(a: Attempt, step: Handler[Any]) -> Action:
    """A row in doubt runs the step's reconcile handler first (or is parked without one)."""
    route = step.reconcile_route
    if route is None:
        return _park(a, a.row, f"in doubt: {a.row.in_doubt}")
    reconciler: Handler[Any] = Handler(
        kind=step.kind, name=route.name, fn=route.fn, sources=step.sources, targets=route.targets,
        retry=step.retry, declaration=step.declaration)
    return RunHandler(a.row, reconciler, (), Call(kind="reconciled",
                                                  cause=f"reconcile: {a.row.in_doubt}"), step)


def _rerun_or_give_up(a: Attempt, step: Handler[Any]) -> Action:
    """Reconcile found that the attempt in doubt did not take effect: run the step again (same
    transition and idempotency key) after its backoff; with no attempts left it has failed for
    good."""
    row = a.row
    if row.attempt >= step.retry.max_attempts:
        return _failed_for_good(a, step, Failure(
            type="NotApplied", attempt=row.attempt, message=(
                f"{row.attempt} attempts of {step.name} did not take effect (reconciled); no "
                "attempts left")))
    return _commit(a, "rerun", Change.rerun(row, after=step.retry.delay(row.attempt),
                                            worker=a.worker, started_at=a.now))


# -- waiting states --------------------------------------------------------------------------------


def _wait(a: Attempt, state: object) -> Flow:
    """A waiting state moves on by an event it accepts (unless it came after a deadline that has
    passed), then by its children, then by its deadline; otherwise it goes back to sleep."""
    spec, row, cls = a.spec, a.row, type(state)
    by_name = {state_name(e): h for e, h in spec.events.get(cls, {}).items()}
    timeout = spec.timeouts.get(cls)
    children = spec.children.get(cls)
    if timeout is not None:
        # Whether the deadline has passed is decided on the database's clock, which wrote the
        # entry time and the events' times, never on this worker's (which may be off).
        a = attrs.evolve(a, now=(yield DatabaseNow()) or a.now)
    now = a.now
    try:
        deadline = yield from _deadline(a, timeout, state)
    except Exception as e:
        return _park(a, row, f"timeout of {row.state} could not be computed: "
                     f"{type(e).__name__}: {e}")

    if by_name:
        taken = yield from _take_event(a, by_name, deadline)
        if taken is not None:
            return taken

    if children is not None:
        if children.max_running is not None:
            yield ReleaseChildren(children.max_running)
        counts: ChildCounts = yield CountChildren()
        if children_ready(children.wait_for, counts):
            results: list[ChildResult] = yield ChildrenResults()
            if children.max_running is not None:
                # Moving on: children still queued (wait_for="first") are let go, not
                # stranded; cancel them in the handler if the race should stop them.
                yield ReleaseChildren(None)
            if children.wait_for == "first":
                results = [r for r in results if r.status in FINISHED]
            return RunHandler(row, children, (results,),
                              Call(cause=f"children finished ({len(results)})"))

    if timeout is not None and deadline is not None and now >= deadline:
        return RunHandler(row, timeout, (), Call(cause=f"timeout at {deadline.isoformat()}"))
    return Settle(row, deadline, tuple(by_name), children)


def _take_event(a: Attempt, by_name: dict[str, Handler[Any]],
                deadline: datetime | None) -> Generator[Question, Any, RunHandler | None]:
    """The handler run for the first pending event (in the order sent) that the state accepts,
    rejecting on the way those that no state of the machine could ever accept; None if there is
    none, or it came after a deadline that has passed (the timeout wins)."""
    spec, row = a.spec, a.row
    seen: list[EventSeen] = yield PendingEvents()
    for event in seen:
        if event.type not in spec.event_types:
            yield RejectEvent(event.id, f"machine {spec.name} has no event named "
                              f"{event.type!r}")
            continue
        if event.type not in by_name:
            continue  # buffered for a later state
        if event.error is not None:
            yield RejectEvent(event.id, event.error)
            continue
        if deadline is not None and a.now >= deadline and event.created_at > deadline:
            return None  # it came after the deadline: the timeout wins
        return RunHandler(row, by_name[event.type], (event.event,), Call(
            cause=f"event {event.type} {event.id}", consume_event=event.id))
    return None


def _deadline(a: Attempt, timeout: Handler[Any] | None,
              state: object) -> Generator[Question, Any, datetime | None]:
    """When a waiting state's timeout is due: a time of the state's, or a delay from entering."""
    if timeout is None:
        return None
    if timeout.timeout_at is not None:
        at = timeout.timeout_at(state)
        if not isinstance(at, datetime) or at.tzinfo is None:
            raise DataError(f"on_timeout(at=...) returned {at!r}, not an aware datetime")
        return at
    assert timeout.timeout_after is not None
    entered: datetime | None = yield EnteredAt(a.row.entered_version)
    return (entered or a.now) + timedelta(seconds=timeout.timeout_after)


def children_ready(wait_for: Literal["all", "first"], counts: ChildCounts) -> bool:
    """Whether a parent waiting for its children moves on: all finished, or (``first``) one
    finished, or none left to wait for."""
    nothing_left = counts.active == 0 and counts.queued == 0
    if wait_for == "first":
        return counts.finished > 0 or nothing_left
    return nothing_left


# -- after a handler ---------------------------------------------------------------------------


@attrs.frozen
class _Returner:
    """Who returned a state: its name and declared targets, how its commit is recorded, and
    whose permanent failure a mistyped state is (None: park)."""

    name: str
    targets: tuple[type, ...]
    kind: HistoryKind
    error: str | None = None
    fails: Handler[Any] | None = None


def after_handler(a: Attempt, run: RunHandler, outcome: Outcome, *, sticky: bool) -> Action:
    """The action for what a handler did: its returned state committed, a retry, an in-doubt
    mark, the error route, or a park. `sticky`: keep the lease to run the next state at once."""
    row, handler = run.row, run.handler
    if a.row is not row:
        a = attrs.evolve(a, row=row)
    if isinstance(outcome, Raised):
        return _after_error(a, handler, outcome.error)
    value = outcome.value
    if isinstance(value, Rerun) and run.call.kind == "reconciled" and run.step is not None:
        return _rerun_or_give_up(a, run.step)
    if isinstance(value, PollAgain) and run.call.poll_since is not None:
        return _poll_again(a, handler, run.call.poll_since, run.call.poll_now or a.now)
    who = _Returner(handler.name, handler.targets, run.call.kind, fails=handler)
    return _result(a, who, outcome, run.call, sticky=sticky)


def after_error_route(a: Attempt, run: RunErrorRoute, outcome: Outcome, *,
                      sticky: bool) -> Action:
    """The action for what an error route did: its state committed (history kind error_route,
    the failure as its error), or, if it failed too, a park."""
    a = attrs.evolve(a, row=run.row)
    text = failure_text(run.failure)
    route = run.handler.error_route
    assert route is not None
    if isinstance(outcome, Raised):
        e = outcome.error
        return _park(a, a.row, f"{text}\nerror route {route.name!r} failed too: "
                     f"{type(e).__name__}: {e}")
    who = _Returner(route.name, route.targets, "error_route", error=text)
    return _result(a, who, outcome, Call(), sticky=sticky)


def _poll_again(a: Attempt, handler: Handler[Any], since: datetime, now: datetime) -> Action:
    """A polling step's condition does not hold yet: poll again after the backoff, or, past
    the deadline, the step has failed for good (its error route, or a park). `now` is the
    database's time when the poll started, so a worker's own clock never moves the deadline."""
    poll = handler.poll
    assert poll is not None
    elapsed = (now - since).total_seconds()
    if elapsed >= poll.deadline:
        return _failed_for_good(a, handler, Failure(
            type="PollDeadline", attempt=a.row.attempt, permanent=True, message=(
                f"{handler.name}: the condition did not hold within "
                f"{timedelta(seconds=poll.deadline)} (polling since {since.isoformat()})")))
    after = poll.next_poll(elapsed)
    if poll.record:
        return _commit(a, "poll", Change.polled(a.row, after=after, worker=a.worker,
                                                started_at=a.now))
    return Repoll(a.row, after)


def _after_error(a: Attempt, handler: Handler[Any], error: BaseException) -> Action:
    """An exception: `RetryAfter` reschedules; an at-most-once step's is in doubt; a transient
    one is retried while attempts remain; otherwise the step has failed for good."""
    row = a.row
    if isinstance(error, RetryAfter):
        log.info("workflow %s: %s asked to retry after %.3gs", row.id, row.state, error.seconds)
        return _commit(a, "retry", Change.rescheduled(
            row, after=error.seconds, error=f"{type(error).__name__}: {error}", worker=a.worker,
            started_at=a.now))
    # A DataError (a state with a mistyped field given to ctx.start_child, say) is a mistake in
    # the code: running it again would make the same one.
    permanent = handler.retry.is_permanent(error) or isinstance(error, DataError)
    failure = describe_failure(error, row.attempt, permanent)
    if handler.at_most_once and not failure.permanent:
        # It may have taken effect before failing: never re-run it blindly.
        return _mark_in_doubt(a, handler, f"attempt {row.attempt} of {handler.name} raised "
                              f"{failure}; it may or may not have taken effect")
    if not failure.permanent and row.attempt < handler.retry.max_attempts:
        log.info("workflow %s: %s failed (attempt %d), retrying: %s",
                 row.id, row.state, row.attempt, failure)
        return _commit(a, "retry", Change.failed_attempt(
            row, error=failure_text(failure), retry_after=handler.retry.delay(row.attempt),
            worker=a.worker, started_at=a.now))
    return _failed_for_good(a, handler, failure)


def _failed_for_good(a: Attempt, handler: Handler[Any], failure: Failure) -> Action:
    """A permanent error or no attempts left: the error route if the step has one, else park."""
    if handler.error_route is not None:
        return RunErrorRoute(a.row, handler, failure)
    why = "permanent error" if failure.permanent else "no attempts left"
    log.warning("workflow %s parked in %s (%s): %s", a.row.id, a.row.state, why, failure)
    return _commit(a, "park", Change.parked(a.row, failure_text(failure), worker=a.worker,
                                            started_at=a.now))


def _result(a: Attempt, who: _Returner, returned: Returned, call: Call, *,
            sticky: bool) -> Action:
    """The commit of a handler's returned state. An undeclared state parks (the code and its
    annotation disagree); a state whose fields have the wrong types is a permanent failure of
    the handler that returned it (its error route, or a park)."""
    row, spec = a.row, a.spec
    delayed = returned.value if isinstance(returned.value, Delayed) else None
    state = delayed.state if delayed is not None else returned.value
    undeclared = unexpected_state_error(who.name, state, who.targets)
    if undeclared is not None:
        return _park(a, row, str(undeclared))
    try:
        stored, data = a.dump(state)
    except DataError as e:
        message = f"handler {who.name!r} returned a state that does not fit its class: {e}"
        if who.fails is None:
            return _park(a, row, f"{who.error}\n{message}" if who.error else message)
        return _failed_for_good(a, who.fails, Failure(
            type="DataError", message=message, attempt=row.attempt, permanent=True))
    except Exception as e:
        return _park(a, row, f"handler {who.name!r} returned a state that does not serialize: "
                     f"{type(e).__name__}: {e}")
    terminal = spec.is_terminal(type(state))
    keep = a.lease if sticky and delayed is None and not terminal else None
    started = returned.children
    waits = spec.children.get(type(state))
    if started and waits is not None and waits.max_running is not None:
        started = tuple(attrs.evolve(c, queued=True) for c in started)
    more: dict[str, Any] = {}
    if delayed is not None:
        more.update(wake_at=delayed.at, wake_after=delayed.after)
    if terminal:  # set at construction, so `_commit` has nothing to copy in
        more.update(_finish_fields(row, "done", clear_cancel=call.clear_cancel,
                                   events=bool(spec.event_types)))
    change = Change.transition(row, stored, data, terminal=terminal, worker=a.worker,
                               started_at=a.now, keep_lease=keep, kind=who.kind,
                               error=who.error, cause=call.cause, children=started,
                               consume_event=call.consume_event, clear_cancel=call.clear_cancel,
                               cancel_children=call.cancel_children, **more)
    return _commit(a, "transition", change)


def unexpected_state_error(
    handler_name: str, returned: object, allowed: tuple[type, ...]
) -> DataError | None:
    """The error for a handler that returned something its annotation does not declare."""
    if type(returned) in allowed:
        return None
    declared = " | ".join(state_name(t) for t in allowed) or "nothing"
    got = type(returned).__name__
    return DataError(f"handler {handler_name!r} returned {got}, which its return annotation does "
                     f"not declare (declared: {declared})")


def describe_failure(error: BaseException, attempt: int, permanent: bool) -> Failure:
    """A `Failure` for `error`, with a traceback bounded to the last few thousand characters."""
    trace = "".join(tb.format_exception(error))
    if len(trace) > MAX_TRACEBACK:
        trace = "...\n" + trace[-MAX_TRACEBACK:]
    return Failure(type=type(error).__name__, message=str(error), attempt=attempt,
                   traceback=trace, permanent=permanent)


def failure_text(failure: Failure) -> str:
    """How a failure is written to `last_error` and history: a headline, then the traceback."""
    head = f"attempt {failure.attempt}: {failure}"
    return f"{head}\n{failure.traceback}" if failure.traceback else head


# -- after a commit ----------------------------------------------------------------------------


def refused_for_good(error: StoreError) -> bool:
    """Whether the database rejected the data itself (SQLSTATE class 23, integrity constraint,
    or 22, data exception): running the handler again would meet the same refusal."""
    sqlstate = error.sqlstate
    if sqlstate is None:
        driver_error = getattr(error.__cause__, "orig", error.__cause__)
        sqlstate = getattr(driver_error, "sqlstate", None)
        if sqlstate is None:  # SQLite reports constraints by exception type, not SQLSTATE
            return type(driver_error).__name__ == "IntegrityError"
    return str(sqlstate)[:2] in ("22", "23")


def after_refusal(commit: Commit, error: StoreError) -> Commit | None:
    """The park to commit instead of a change the database refused for good (a child's key
    already used, say), rather than run the handler again and again; None when the failure is
    an outage or contention (the lease expires and the workflow runs again), or a park itself
    was refused."""
    if commit.change.kind == "parked" or not refused_for_good(error):
        return None
    row = commit.row
    return Commit(row, _finishing(Change.parked(
        row, f"workflow {row.id}: the database refused the result of {row.state}: {error}",
        worker=commit.change.worker or "", started_at=commit.change.started_at), row), "park")


def continue_with(row: ClaimedRow, change: Change, done: Committed) -> ClaimedRow | None:
    """The row to run next, still holding the lease, after a committed change that keeps it
    (sticky continuation, or an in-doubt mark to reconcile at once); None otherwise."""
    if change.keep_lease is None:
        return None
    return ClaimedRow(
        id=row.id, machine=row.machine, state=change.to_state, data=change.data,
        version=done.version,
        # Same state (an in-doubt mark): same transition, same idempotency key.
        entered_version=done.version if change.new_state else row.entered_version,
        attempt=1 if change.new_state else row.attempt, lease_token=row.lease_token,
        previous_status="ready", external_change=False, parent_id=row.parent_id,
        cancel_requested=done.cancel_requested, in_doubt=change.mark_in_doubt)
