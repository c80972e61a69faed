"""The engine's rules (`statemachine._decide`), one rule per test, with no database: rows are
built by hand and the decision's questions are answered from plain values."""

import subprocess
import sys
import traceback
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest

from machines.order import (
    CardDeclined,
    Charged,
    Confirmed,
    GatewayUnavailable,
    Order,
    OrderPlaced,
    PaymentFailed,
    Shipped,
)
from statemachine import (
    ChildResult,
    Context,
    DataError,
    Failure,
    InvalidDefinition,
    Machine,
    PermanentError,
    Poll,
    PollAgain,
    Rerun,
    RetryAfter,
    RetryPolicy,
    StoreError,
    later,
    on_cancel,
    on_children,
    on_event,
    on_timeout,
    poll_again,
    rerun,
    step,
)
from statemachine._actions import (
    Action,
    Attempt,
    ChildrenResults,
    Commit,
    CountChildren,
    DatabaseNow,
    EnteredAt,
    EventSeen,
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
    drive,
)
from statemachine._decide import (
    MAX_TRACEBACK,
    after_error_route,
    after_handler,
    after_refusal,
    children_ready,
    continue_with,
    decide,
    describe_failure,
    refused_for_good,
    unexpected_state_error,
)
from statemachine._records import Change, ChildCounts, ChildStart, ClaimedRow, Committed
from statemachine._serde import StateCodec
from statemachine._spec import MachineSpec

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
WID = uuid.UUID("7d1c6f7e-1b43-4f0a-9a54-3c2b1a0f9e8d")
PARENT = uuid.UUID("00000000-0000-4000-8000-000000000001")
DATA = {"order_id": "o1", "amount_cents": 100, "card": "4242"}
PLACED = OrderPlaced(order_id="o1", amount_cents=100)
CHARGE = Order.spec.steps[OrderPlaced]  # max_attempts=5, with an error route


# -- machines for the rules ----------------------------------------------------------------------


@attrs.frozen
class Waiting:
    n: int = 0


@attrs.frozen
class Paid:
    pass


@attrs.frozen
class Expired:
    pass


@attrs.frozen
class Payment:
    amount: int


@attrs.frozen
class Refund:
    amount: int


class Waits(Machine):
    initial = Waiting
    terminal = (Paid, Expired)

    @on_event
    def paid(self, state: Waiting, event: Payment, ctx: Context) -> Paid:
        return Paid()

    @on_timeout(after=60)
    def expire(self, state: Waiting, ctx: Context) -> Expired:
        return Expired()


@attrs.frozen
class Later:
    pass


class Buffers(Machine):
    """Accepts Refund only in Later: a Refund sent while in Waiting is kept for later."""

    initial = Waiting
    terminal = (Paid,)

    @on_event
    def paid(self, state: Waiting, event: Payment, ctx: Context) -> Later:
        return Later()

    @on_event
    def refunded(self, state: Later, event: Refund, ctx: Context) -> Paid:
        return Paid()


@attrs.frozen
class Deadline:
    at: datetime


class WaitsUntil(Machine):
    initial = Deadline
    terminal = (Expired,)

    @on_timeout(at=lambda s: s.at)
    def expire(self, state: Deadline, ctx: Context) -> Expired:
        return Expired()


@attrs.frozen
class Spawn:
    pass


@attrs.frozen
class Gathering:
    pass


@attrs.frozen
class Gathered:
    pass


class Fan(Machine):
    initial = Spawn
    terminal = (Gathered,)

    @step
    def spawn(self, state: Spawn, ctx: Context) -> Gathering:
        return Gathering()

    @on_children(wait_for="first", max_running=2)
    def gather(self, state: Gathering, children: list[ChildResult], ctx: Context) -> Gathered:
        return Gathered()


class FanAll(Machine):
    initial = Spawn
    terminal = (Gathered,)

    @step
    def spawn(self, state: Spawn, ctx: Context) -> Gathering:
        return Gathering()

    @on_children()
    def gather(self, state: Gathering, children: list[ChildResult], ctx: Context) -> Gathered:
        return Gathered()


@attrs.frozen
class Charging:
    n: int = 0


@attrs.frozen
class Done:
    pass


@attrs.frozen
class GaveUp:
    pass


class Once(Machine):
    initial = Charging
    terminal = (Done, GaveUp)

    @step(at_most_once=True, retry=RetryPolicy(max_attempts=2))
    def charge(self, state: Charging, ctx: Context) -> Done:
        return Done()

    @charge.reconcile
    def look_up(self, state: Charging, ctx: Context) -> Done | Rerun:
        return rerun()

    @charge.on_error
    def give_up(self, state: Charging, failure: Failure, ctx: Context) -> GaveUp:
        return GaveUp()


class OnceBare(Machine):
    initial = Charging
    terminal = (Done,)

    @step(at_most_once=True)
    def charge(self, state: Charging, ctx: Context) -> Done:
        return Done()


@attrs.frozen
class Undoing:
    pass


class Cancellable(Machine):
    initial = Charging
    terminal = (Done, Undoing)

    @step
    def charge(self, state: Charging, ctx: Context) -> Done:
        return Done()

    @on_cancel
    def undo(self, state: Charging, ctx: Context) -> Undoing:
        return Undoing()


# -- helpers -------------------------------------------------------------------------------------


def claimed(state: str = "OrderPlaced", data: Any = None, **fields: Any) -> ClaimedRow:
    values: dict[str, Any] = dict(
        id=WID, machine="order", state=state, data=DATA if data is None else data, version=7,
        entered_version=5, attempt=1, lease_token="lease-abc", previous_status="ready",
        external_change=False)
    values.update(fields)
    return ClaimedRow(**values)


def attempt(row: ClaimedRow, spec: MachineSpec = Order.spec, state: object = PLACED,
            load_error: str | None = None, now: datetime = NOW) -> Attempt:
    return Attempt(row, spec, state, load_error, now, "w1", 30.0, StateCodec(spec).dump)


class Answers:
    """Answers the decision's questions from values, and records what it asked."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.asked: list[Question] = []

    def __call__(self, q: Question) -> Any:
        self.asked.append(q)
        return self.answers.get(type(q).__name__)


def decided(a: Attempt, **answers: Any) -> tuple[Action, list[Question]]:
    given = Answers(**answers)
    return drive(decide(a), given), given.asked


def committed(action: Action) -> Change:
    assert isinstance(action, Commit), action
    return action.change


def raised(error: BaseException) -> BaseException:
    """`error` with a traceback, as a handler's exception has one."""
    try:
        raise error
    except BaseException as e:
        return e


def outcome_of(value: object, a: Attempt | None = None, handler: Any = CHARGE,
               sticky: bool = False, run: RunHandler | None = None) -> Action:
    a = a or attempt(claimed())
    run = run or RunHandler(a.row, handler)
    given = Raised(raised(value)) if isinstance(value, BaseException) else Returned(value)
    return after_handler(a, run, given, sticky=sticky)


# -- the module itself ---------------------------------------------------------------------------


def test_importing_the_decision_module_loads_no_database_driver() -> None:
    # The package loads its modules lazily, so a plain import shows exactly what the decision
    # module pulls in.
    code = (
        "import sys\n"
        "import statemachine._decide\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'psycopg'))\n"
        "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_using_the_package_loads_the_store_when_needed() -> None:
    # The other side of laziness: a name that needs the database still works from the package.
    code = ("import sys, statemachine\n"
            "assert 'sqlalchemy' not in sys.modules\n"
            "print(statemachine.Store.__module__, 'sqlalchemy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "statemachine True"


# -- decide: the dispatch order ------------------------------------------------------------------


def test_a_column_that_did_not_decode_parks_naming_workflow_and_column() -> None:
    row = claimed(data_error="column data: not valid JSON: Expecting value", external_change=True)
    action, asked = decided(attempt(row, state=None, load_error="whatever"))
    change = committed(action)
    assert (change.kind, change.status) == ("parked", "failed")
    assert change.error == f"workflow {WID}: column data: not valid JSON: Expecting value"
    assert asked == []  # nothing else is looked at, not even the external change


def test_an_external_change_is_recorded_and_starts_a_new_transition() -> None:
    row = claimed(external_change=True, attempt=3)
    action, asked = decided(attempt(row), RecordExternalChange=True)
    assert asked == [RecordExternalChange(row)]
    assert isinstance(action, RunHandler)
    assert (action.row.entered_version, action.row.attempt) == (7, 1)  # a fresh idempotency key
    assert action.row.external_change is False


def test_an_external_change_whose_lease_is_gone_stops() -> None:
    action, _ = decided(attempt(claimed(external_change=True)), RecordExternalChange=False)
    assert isinstance(action, Stop)


def test_a_state_that_does_not_load_parks_with_the_load_error() -> None:
    action, _ = decided(attempt(claimed(), state=None, load_error="workflow x: data.n: bad"))
    change = committed(action)
    assert (change.kind, change.error) == ("parked", "workflow x: data.n: bad")


def test_a_state_that_does_not_load_is_cancelled_plainly_when_asked() -> None:
    row = claimed(cancel_requested="by ops")
    action, _ = decided(attempt(row, spec=Cancellable.spec, state=None, load_error="bad"))
    change = committed(action)
    assert (change.kind, change.status, change.cause) == ("cancel", "cancelled", "by ops")


def test_a_state_that_does_not_load_parks_naming_the_cancel_route_that_cannot_run() -> None:
    row = claimed("Charging", cancel_requested="by ops")
    action, _ = decided(attempt(row, spec=Cancellable.spec, state=None, load_error="data.n: bad"))
    change = committed(action)
    assert (change.kind, change.status) == ("parked", "failed")
    assert "cancel route 'undo' cannot run" in (change.error or "")
    assert "--skip-compensation" in (change.error or "")
    assert "data.n: bad" in (change.error or "")
    assert change.clear_cancel  # the park answers the request


def test_a_terminal_state_in_a_runnable_row_is_finished() -> None:
    row = claimed("Confirmed", cancel_requested="too late")
    action, _ = decided(attempt(row, state=Confirmed(order_id="o1", tracking="T")))
    change = committed(action)
    assert (change.kind, change.status, change.to_state) == ("finished", "done", "Confirmed")
    # The request is not carried out: left pending for `superseded_cancel` to record.
    assert not change.clear_cancel


def test_a_cancel_request_runs_the_cancel_route_that_handles_the_state() -> None:
    row = claimed("Charging", {"n": 0}, cancel_requested="by ops")
    action, _ = decided(attempt(row, Cancellable.spec, Charging()))
    assert isinstance(action, RunHandler)
    assert action.handler.name == "undo"
    assert (action.call.kind, action.call.cause, action.call.clear_cancel,
            action.call.cancel_children) == ("cancel", "by ops", True, "by ops")


def test_a_cancel_request_without_a_cancel_route_ends_the_workflow() -> None:
    row = claimed(cancel_requested="by ops", parent_id=PARENT)
    change = committed(decided(attempt(row))[0])
    assert (change.status, change.cancel_children, change.clear_cancel) == (
        "cancelled", "by ops", True)
    assert change.wake_parent == PARENT


def test_a_cancel_request_comes_before_a_waiting_states_events() -> None:
    row = waiting_row(cancel_requested="by ops")
    action, asked = decided(attempt(row, Waits.spec, Waiting()),
                            PendingEvents=[seen("Payment", event=Payment(5))])
    assert committed(action).status == "cancelled"
    assert asked == []  # the events were not even looked at


def test_a_cancel_request_comes_before_reconciling_an_attempt_in_doubt() -> None:
    row = claimed("Charging", {"n": 0}, in_doubt="it raised", cancel_requested="by ops")
    action, _ = decided(attempt(row, Cancellable.spec, Charging()))
    assert isinstance(action, RunHandler)
    assert action.handler.name == "undo"


def test_a_step_runs_its_handler() -> None:
    action, asked = decided(attempt(claimed()))
    assert isinstance(action, RunHandler)
    assert action.handler is CHARGE
    assert (action.args, action.call.kind) == ((), "transition")
    assert asked == []


def test_a_lost_worker_with_attempts_left_runs_the_step_again() -> None:
    action, _ = decided(attempt(claimed(previous_status="running", attempt=3)))
    assert isinstance(action, RunHandler)
    assert action.handler is CHARGE


def test_a_lost_worker_with_no_attempts_left_fails_the_step_for_good() -> None:
    action, _ = decided(attempt(claimed(previous_status="running", attempt=6)))
    assert isinstance(action, RunErrorRoute)  # Order's charge_card has one
    assert (action.failure.type, action.failure.permanent) == ("WorkerLost", True)
    assert "5 attempts were abandoned" in action.failure.message


# -- at most once --------------------------------------------------------------------------------


def once_row(**fields: Any) -> ClaimedRow:
    return claimed("Charging", {"n": 0}, machine="Once", **fields)


def test_a_cut_off_at_most_once_attempt_is_marked_in_doubt_keeping_the_lease() -> None:
    action, _ = decided(attempt(once_row(previous_status="running", attempt=2), Once.spec,
                                Charging()))
    change = committed(action)
    assert (change.kind, change.status, change.keep_lease) == ("in_doubt", "ready", 30.0)
    assert change.mark_in_doubt == "attempt 1 of charge started and did not finish (worker lost)"


def test_a_cut_off_at_most_once_attempt_without_reconcile_is_parked_in_doubt() -> None:
    row = claimed("Charging", {"n": 0}, previous_status="running", attempt=2)
    change = committed(decided(attempt(row, OnceBare.spec, Charging()))[0])
    assert (change.kind, change.status) == ("in_doubt", "failed")
    assert change.mark_in_doubt is not None
    assert change.error is not None
    assert f"statemachine resolve {WID} --retry" in change.error


def test_a_row_in_doubt_runs_the_reconcile_handler_first() -> None:
    action, _ = decided(attempt(once_row(in_doubt="it raised", previous_status="running"),
                                Once.spec, Charging()))
    assert isinstance(action, RunHandler)
    assert action.handler.name == "look_up"
    assert action.step is Once.spec.steps[Charging]
    assert (action.call.kind, action.call.cause) == ("reconciled", "reconcile: it raised")


def test_a_row_in_doubt_without_reconcile_is_parked() -> None:
    row = claimed("Charging", {"n": 0}, in_doubt="it raised")
    change = committed(decided(attempt(row, OnceBare.spec, Charging()))[0])
    assert (change.kind, change.error) == ("parked", f"workflow {WID}: in doubt: it raised")


def test_reconciled_as_not_applied_is_run_again_in_the_same_transition() -> None:
    a = attempt(once_row(in_doubt="it raised"), Once.spec, Charging())
    run = decided(a)[0]
    assert isinstance(run, RunHandler)
    change = committed(outcome_of(rerun(), a, run=run))
    assert (change.kind, change.new_state, change.clear_in_doubt) == ("rerun", False, True)


def test_reconciled_as_not_applied_with_no_attempts_left_takes_the_error_route() -> None:
    a = attempt(once_row(in_doubt="it raised", attempt=2), Once.spec, Charging())
    run = decided(a)[0]
    assert isinstance(run, RunHandler)
    action = outcome_of(rerun(), a, run=run)
    assert isinstance(action, RunErrorRoute)
    assert action.failure.type == "NotApplied"


def test_an_at_most_once_step_that_raises_is_in_doubt_not_retried() -> None:
    a = attempt(once_row(), Once.spec, Charging())
    change = committed(outcome_of(TimeoutError("read timed out"), a,
                                  Once.spec.steps[Charging]))
    assert change.kind == "in_doubt"
    assert change.mark_in_doubt is not None
    assert "may or may not have taken effect" in change.mark_in_doubt


def test_an_at_most_once_step_that_raises_a_permanent_error_is_not_in_doubt() -> None:
    a = attempt(once_row(), Once.spec, Charging())
    action = outcome_of(PermanentError("refused"), a, Once.spec.steps[Charging])
    assert isinstance(action, RunErrorRoute)


# -- waiting states ------------------------------------------------------------------------------


def waiting_row(**fields: Any) -> ClaimedRow:
    return claimed("Waiting", {"n": 0}, machine="Waits", **fields)


def seen(type_: str, created: datetime = NOW, event: object = None,
         error: str | None = None) -> EventSeen:
    return EventSeen(uuid.uuid4(), type_, created, event, error)


def test_an_accepted_event_runs_its_handler_and_is_consumed() -> None:
    pay = seen("Payment", event=Payment(5))
    action, asked = decided(attempt(waiting_row(), Waits.spec, Waiting()),
                            PendingEvents=[pay], EnteredAt=NOW)
    assert isinstance(action, RunHandler)
    assert (action.handler.name, action.args) == ("paid", (Payment(5),))
    assert action.call.consume_event == pay.id
    assert action.call.cause == f"event Payment {pay.id}"
    assert PendingEvents() in asked


def test_an_event_of_no_type_of_the_machine_is_rejected() -> None:
    odd = seen("Nonsense")
    action, asked = decided(attempt(waiting_row(), Waits.spec, Waiting()),
                            PendingEvents=[odd], EnteredAt=NOW)
    assert RejectEvent(odd.id, "machine Waits has no event named 'Nonsense'") in asked
    assert isinstance(action, Settle)


def test_an_event_for_a_later_state_is_kept() -> None:
    refund = seen("Refund", event=Refund(1))
    row = claimed("Waiting", {"n": 0}, machine="Buffers")
    action, asked = decided(attempt(row, Buffers.spec, Waiting()), PendingEvents=[refund])
    assert not any(isinstance(q, RejectEvent) for q in asked)
    assert isinstance(action, Settle)
    assert action.accepts == ("Payment",)


def test_an_event_that_does_not_load_is_rejected_and_the_next_one_runs() -> None:
    bad = seen("Payment", error="event Payment: data.amount: expected int")
    good = seen("Payment", event=Payment(5))
    action, asked = decided(attempt(waiting_row(), Waits.spec, Waiting()),
                            PendingEvents=[bad, good], EnteredAt=NOW)
    assert RejectEvent(bad.id, "event Payment: data.amount: expected int") in asked
    assert isinstance(action, RunHandler)
    assert action.call.consume_event == good.id


def test_an_event_sent_after_a_passed_deadline_loses_to_the_timeout() -> None:
    entered = NOW - timedelta(seconds=120)  # deadline NOW - 60 s
    late = seen("Payment", created=NOW - timedelta(seconds=30), event=Payment(5))
    action, _ = decided(attempt(waiting_row(), Waits.spec, Waiting()),
                        PendingEvents=[late], EnteredAt=entered)
    assert isinstance(action, RunHandler)
    assert action.handler.name == "expire"


def test_an_event_sent_before_a_passed_deadline_still_wins() -> None:
    entered = NOW - timedelta(seconds=120)
    early = seen("Payment", created=NOW - timedelta(seconds=90), event=Payment(5))
    action, _ = decided(attempt(waiting_row(), Waits.spec, Waiting()),
                        PendingEvents=[early], EnteredAt=entered)
    assert isinstance(action, RunHandler)
    assert action.handler.name == "paid"


def test_a_timeout_after_counts_from_entering_the_state() -> None:
    entered = NOW - timedelta(seconds=10)
    action, asked = decided(attempt(waiting_row(), Waits.spec, Waiting()),
                            PendingEvents=[], EnteredAt=entered)
    assert EnteredAt(5) in asked  # the row's entered_version
    assert action == Settle(waiting_row(), entered + timedelta(seconds=60), ("Payment",), None)


def test_a_passed_deadline_runs_the_timeout_handler() -> None:
    action, _ = decided(attempt(waiting_row(), Waits.spec, Waiting()), PendingEvents=[],
                        EnteredAt=NOW - timedelta(seconds=61))
    assert isinstance(action, RunHandler)
    assert action.handler.name == "expire"
    assert action.call.cause == f"timeout at {(NOW - timedelta(seconds=1)).isoformat()}"


def test_a_timeout_whose_entry_time_is_unknown_counts_from_now() -> None:
    action, _ = decided(attempt(waiting_row(), Waits.spec, Waiting()), PendingEvents=[],
                        EnteredAt=None)
    assert isinstance(action, Settle)
    assert action.deadline == NOW + timedelta(seconds=60)


def test_a_timeout_at_a_time_of_the_state() -> None:
    at = NOW + timedelta(hours=1)
    row = claimed("Deadline", {}, machine="WaitsUntil")
    action, asked = decided(attempt(row, WaitsUntil.spec, Deadline(at)))
    assert asked == [DatabaseNow()]  # the one question: the database's time
    assert isinstance(action, Settle)
    assert action.deadline == at


def test_a_deadline_is_decided_on_the_databases_clock_not_the_workers() -> None:
    at = NOW + timedelta(seconds=1)
    row = claimed("Deadline", {}, machine="WaitsUntil")
    # This worker's clock is 400 ms ahead of the deadline; the database's is 400 ms before it.
    ahead = attrs.evolve(attempt(row, WaitsUntil.spec, Deadline(at)),
                         now=at + timedelta(milliseconds=400))
    action, _ = decided(ahead, DatabaseNow=at - timedelta(milliseconds=400))
    assert action == Settle(row, at, (), None)
    # And the other way round: a worker behind the database still times out.
    behind = attrs.evolve(ahead, now=at - timedelta(milliseconds=400))
    action, _ = decided(behind, DatabaseNow=at + timedelta(milliseconds=400))
    assert isinstance(action, RunHandler)
    assert action.handler.kind == "timeout"


def test_a_deadline_that_cannot_be_computed_parks() -> None:
    row = claimed("Deadline", {}, machine="WaitsUntil")
    naive = datetime(2024, 5, 1, 12, 0)  # noqa: DTZ001 (the bad input under test)
    change = committed(decided(attempt(row, WaitsUntil.spec, Deadline(naive)))[0])
    assert change.kind == "parked"
    assert change.error is not None
    assert "timeout of Deadline could not be computed" in change.error


# -- children ------------------------------------------------------------------------------------


def child(status: str) -> ChildResult:
    return ChildResult(id=uuid.uuid4(), machine="m", status=status, state_name="S", data={},
                       state=None, last_error=None)


@pytest.mark.parametrize(("counts", "ready"), [
    (ChildCounts(0, 2, 0), False), (ChildCounts(1, 1, 0), False), (ChildCounts(1, 0, 1), False),
    (ChildCounts(3, 0, 0), True), (ChildCounts(0, 0, 0), True)])
def test_waiting_for_all_children_needs_none_running_or_queued(counts: ChildCounts,
                                                               ready: bool) -> None:
    assert children_ready("all", counts) is ready


@pytest.mark.parametrize(("counts", "ready"), [
    (ChildCounts(0, 2, 1), False), (ChildCounts(1, 1, 1), True), (ChildCounts(0, 0, 0), True)])
def test_waiting_for_the_first_child_needs_one_finished(counts: ChildCounts,
                                                        ready: bool) -> None:
    assert children_ready("first", counts) is ready


def test_children_under_a_cap_are_released_then_counted() -> None:
    row = claimed("Gathering", {}, machine="Fan")
    action, asked = decided(attempt(row, Fan.spec, Gathering()), CountChildren=ChildCounts(0, 2, 3))
    assert asked == [ReleaseChildren(2), CountChildren()]
    assert action == Settle(row, None, (), Fan.spec.children[Gathering])


def test_the_first_finished_child_moves_on_with_the_finished_ones_only() -> None:
    row = claimed("Gathering", {}, machine="Fan")
    results = [child("done"), child("running"), child("failed")]
    action, asked = decided(attempt(row, Fan.spec, Gathering()),
                            CountChildren=ChildCounts(2, 1, 0), ChildrenResults=results)
    assert isinstance(action, RunHandler)
    assert action.args == ([results[0], results[2]],)
    assert action.call.cause == "children finished (2)"
    # Moving on: children still queued are let go, not stranded.
    assert asked[-2:] == [ChildrenResults(), ReleaseChildren(None)]


def test_all_children_finished_moves_on_with_all_of_them() -> None:
    row = claimed("Gathering", {}, machine="FanAll")
    results = [child("done"), child("cancelled")]
    action, asked = decided(attempt(row, FanAll.spec, Gathering()),
                            CountChildren=ChildCounts(2, 0, 0), ChildrenResults=results)
    assert isinstance(action, RunHandler)
    assert action.args == (results,)
    assert not any(isinstance(q, ReleaseChildren) for q in asked)  # no cap


def test_children_started_into_a_capped_state_are_queued() -> None:
    a = attempt(claimed("Spawn", {}, machine="Fan"), Fan.spec, Spawn())
    kids = (ChildStart(uuid.uuid4(), "m", "S", {}),)
    action = after_handler(a, RunHandler(a.row, Fan.spec.steps[Spawn]),
                           Returned(Gathering(), kids), sticky=False)
    change = committed(action)
    assert [c.queued for c in change.children] == [True]


# -- after a handler: its returned state -------------------------------------------------------


def test_a_declared_state_is_committed_as_the_next_transition() -> None:
    change = committed(outcome_of(Charged(order_id="o1", charge_id="c1")))
    assert (change.kind, change.status, change.to_state) == ("transition", "ready", "Charged")
    assert change.data == {"order_id": "o1", "charge_id": "c1"}
    assert change.keep_lease is None


def test_a_sticky_worker_keeps_the_lease_for_the_next_state() -> None:
    change = committed(outcome_of(Charged(order_id="o1", charge_id="c1"), sticky=True))
    assert change.keep_lease == 30.0


def test_a_terminal_state_keeps_no_lease_even_when_sticky() -> None:
    a = attempt(claimed("Shipped"), state=Shipped("o1", "T", NOW))
    change = committed(outcome_of(Confirmed(order_id="o1", tracking="T"), a,
                                  Order.spec.steps[Shipped], sticky=True))
    assert (change.status, change.keep_lease) == ("done", None)


def test_a_delayed_state_sleeps_and_keeps_no_lease() -> None:
    change = committed(outcome_of(later(Charged(order_id="o1", charge_id="c1"), after=90),
                                  sticky=True))
    assert (change.wake_after, change.keep_lease) == (90, None)


def test_a_finished_child_wakes_its_parent() -> None:
    a = attempt(claimed("Shipped", parent_id=PARENT), state=Shipped("o1", "T", NOW))
    change = committed(outcome_of(Confirmed(order_id="o1", tracking="T"), a,
                                  Order.spec.steps[Shipped]))
    assert change.wake_parent == PARENT


def test_an_unfinished_child_does_not_wake_its_parent() -> None:
    a = attempt(claimed(parent_id=PARENT))
    change = committed(outcome_of(Charged(order_id="o1", charge_id="c1"), a))
    assert change.wake_parent is None


def test_an_undeclared_state_parks_naming_the_handler() -> None:
    change = committed(outcome_of(Confirmed(order_id="o1", tracking="T")))
    assert change.kind == "parked"
    assert change.error is not None
    for part in (str(WID), "'charge_card'", "Confirmed", "declared: Charged"):
        assert part in change.error


def test_a_state_with_a_mistyped_field_is_a_permanent_failure_of_its_handler() -> None:
    action = outcome_of(Charged(order_id="o1", charge_id=7))  # type: ignore[arg-type]
    assert isinstance(action, RunErrorRoute)  # charge_card has an error route
    assert (action.failure.type, action.failure.permanent) == ("DataError", True)
    assert "'charge_card'" in action.failure.message
    assert "data.charge_id" in action.failure.message


def test_a_state_with_a_mistyped_field_parks_when_the_step_has_no_error_route() -> None:
    a = attempt(claimed("Charged"), state=Charged("o1", "c1"))
    change = committed(outcome_of(Shipped("o1", 5, NOW), a,  # type: ignore[arg-type]
                                  Order.spec.steps[Charged]))
    assert change.kind == "parked"
    assert change.error is not None
    assert "'ship'" in change.error
    assert "data.tracking" in change.error


# -- after a handler: its exception --------------------------------------------------------------


@pytest.mark.parametrize("attempt_no", [1, 2, 3, 4])
def test_a_transient_failure_is_retried_while_attempts_remain(attempt_no: int) -> None:
    change = committed(outcome_of(GatewayUnavailable("payment gateway returned 503"),
                                  attempt(claimed(attempt=attempt_no))))
    assert (change.kind, change.status, change.new_state) == ("failed_attempt", "ready", False)
    base = min(2.0, 0.2 * 2 ** (attempt_no - 1))
    assert change.wake_after is not None
    assert base * (1 - CHARGE.retry.jitter) <= change.wake_after <= base
    assert change.error is not None
    assert f"attempt {attempt_no}: GatewayUnavailable: payment gateway returned 503" in \
        change.error
    assert "Traceback" in change.error


@pytest.mark.parametrize("attempt_no", [5, 6])
def test_no_retry_once_attempts_are_exhausted(attempt_no: int) -> None:
    action = outcome_of(GatewayUnavailable("503"), attempt(claimed(attempt=attempt_no)))
    assert isinstance(action, RunErrorRoute)
    assert not action.failure.permanent


@pytest.mark.parametrize("error", [CardDeclined("card ending 0000 declined"),
                                   PermanentError("no")], ids=repr)
def test_a_permanent_error_takes_the_error_route_at_once(error: Exception) -> None:
    action = outcome_of(error)
    assert isinstance(action, RunErrorRoute)
    assert action.failure.permanent


def test_a_step_failed_for_good_without_an_error_route_is_parked() -> None:
    a = attempt(claimed("Charged"), state=Charged("o1", "c1"))
    change = committed(outcome_of(PermanentError("no"), a, Order.spec.steps[Charged]))
    assert (change.kind, change.status) == ("parked", "failed")
    assert change.error is not None
    assert change.error.startswith("attempt 1: PermanentError: no")


def test_retry_after_reschedules_without_counting_the_attempt() -> None:
    change = committed(outcome_of(RetryAfter(12.0, "429")))
    assert (change.kind, change.wake_after, change.uncount_attempt) == ("rescheduled", 12.0, True)


def test_permanent_types_of_the_policy_are_not_retried() -> None:
    policy = RetryPolicy(max_attempts=10, permanent=(KeyError,))
    handler = attrs.evolve(Order.spec.steps[Charged], retry=policy)
    a = attempt(claimed("Charged"), state=Charged("o1", "c1"))
    assert committed(outcome_of(KeyError("k"), a, handler)).kind == "parked"
    assert committed(outcome_of(ValueError("v"), a, handler)).kind == "failed_attempt"


# -- after the error route -----------------------------------------------------------------------


def test_the_error_routes_state_is_committed_with_the_failure_as_error() -> None:
    a = attempt(claimed(attempt=5))
    failure = Failure(type="CardDeclined", message="declined", attempt=5)
    run = RunErrorRoute(a.row, CHARGE, failure)
    change = committed(after_error_route(
        a, run, Returned(PaymentFailed(order_id="o1", reason="declined")), sticky=True))
    assert (change.kind, change.status, change.to_state) == ("error_route", "done",
                                                            "PaymentFailed")
    assert change.error == "attempt 5: CardDeclined: declined"


def test_an_error_route_that_fails_too_parks_with_both_errors() -> None:
    a = attempt(claimed(attempt=5))
    run = RunErrorRoute(a.row, CHARGE, Failure(type="CardDeclined", message="declined",
                                                attempt=5))
    change = committed(after_error_route(a, run, Raised(raised(OSError("disk"))), sticky=False))
    assert change.kind == "parked"
    assert change.error is not None
    assert "CardDeclined: declined" in change.error
    assert "error route 'payment_failed' failed too: OSError: disk" in change.error


# -- after a commit ------------------------------------------------------------------------------


class IntegrityError(Exception):
    """Named like SQLite's: it carries no SQLSTATE."""


def store_error(sqlstate: str | None, cause: BaseException | None = None) -> StoreError:
    error = StoreError("refused", sqlstate=sqlstate)
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(("error", "for_good"), [
    (store_error("23505"), True), (store_error("22P02"), True), (store_error("40001"), False),
    (store_error("08006"), False), (store_error(None, IntegrityError()), True),
    (store_error(None, OSError()), False)], ids=repr)
def test_only_integrity_and_data_errors_are_refusals_for_good(error: StoreError,
                                                              for_good: bool) -> None:
    assert refused_for_good(error) is for_good


def test_a_change_refused_for_good_parks_instead() -> None:
    row = claimed(parent_id=PARENT)
    commit = Commit(row, Change.transition(row, "Charged", {}, terminal=False, worker="w1",
                                           started_at=NOW), "transition")
    instead = after_refusal(commit, store_error("23505"))
    assert instead is not None
    assert instead.change.kind == "parked"
    assert instead.change.error is not None
    assert "the database refused the result of OrderPlaced" in instead.change.error
    assert instead.change.wake_parent == PARENT


def test_a_refused_park_or_an_outage_is_not_turned_into_a_park() -> None:
    row = claimed()
    park = Commit(row, Change.parked(row, "x", worker="w1", started_at=NOW), "park")
    assert after_refusal(park, store_error("23505")) is None
    move = Commit(row, Change.transition(row, "Charged", {}, terminal=False, worker="w1",
                                         started_at=NOW), "transition")
    assert after_refusal(move, store_error("08006")) is None


def test_a_kept_lease_continues_with_the_next_state_as_a_new_transition() -> None:
    row = claimed(attempt=3)
    change = Change.transition(row, "Charged", {"x": 1}, terminal=False, worker="w1",
                               started_at=NOW, keep_lease=30.0)
    nxt = continue_with(row, change, Committed(8, "by ops"))
    assert nxt is not None
    assert (nxt.state, nxt.data, nxt.version, nxt.entered_version, nxt.attempt) == (
        "Charged", {"x": 1}, 8, 8, 1)
    assert (nxt.previous_status, nxt.cancel_requested, nxt.in_doubt) == ("ready", "by ops", None)


def test_an_in_doubt_mark_continues_in_the_same_transition_to_reconcile() -> None:
    row = claimed(attempt=2)
    change = Change.in_doubt(row, "lost", keep_lease=30.0, worker="w1", started_at=NOW)
    nxt = continue_with(row, change, Committed(8, None))
    assert nxt is not None
    assert (nxt.entered_version, nxt.attempt, nxt.in_doubt) == (5, 2, "lost")  # same key


def test_a_change_that_lets_the_lease_go_continues_with_nothing() -> None:
    row = claimed()
    assert continue_with(row, Change.parked(row, "x", worker="w", started_at=NOW),
                         Committed(8, None)) is None


# -- a cancel request that found the workflow finished -----------------------------------------


def test_a_handlers_terminal_state_records_a_pending_cancel_as_superseded() -> None:
    change = committed(outcome_of(Confirmed(order_id="o1", tracking="T"),
                                  attempt(claimed("Shipped"), state=Shipped("o1", "T", NOW)),
                                  Order.spec.steps[Shipped]))
    assert change.status == "done"
    assert (change.clear_cancel, change.supersede_cancel) == (False, True)
    assert not change.simple  # one transaction: the record cannot be lost in a crash


def test_a_park_records_a_pending_cancel_as_superseded() -> None:
    change = committed(decided(attempt(claimed(), state=None, load_error="bad"))[0])
    assert (change.status, change.supersede_cancel) == ("failed", True)


def test_carrying_out_a_cancel_supersedes_nothing() -> None:
    plain = committed(decided(attempt(claimed(cancel_requested="by ops")))[0])
    assert (plain.status, plain.clear_cancel, plain.supersede_cancel) == (
        "cancelled", True, False)
    row = claimed("Charging", {"n": 0}, cancel_requested="by ops")
    route = decided(attempt(row, Cancellable.spec, Charging()))[0]
    assert isinstance(route, RunHandler)
    done = committed(after_handler(attempt(row, Cancellable.spec, Charging()), route,
                                   Returned(Undoing()), sticky=False))
    assert (done.status, done.clear_cancel, done.supersede_cancel) == ("done", True, False)


def test_a_change_that_does_not_finish_leaves_a_cancel_request_for_the_next_claim() -> None:
    change = committed(outcome_of(Charged(order_id="o1", charge_id="c1")))
    assert (change.status, change.supersede_cancel, change.clear_cancel) == (
        "ready", False, False)


def test_the_superseded_record_says_who_asked_and_what_happened_first() -> None:
    row = claimed("Shipped")
    finished = Change.transition(row, "Confirmed", {"order_id": "o1"}, terminal=True,
                                 worker="w1", started_at=NOW)
    note = Change.cancel_superseded(finished, 8, "by ops", worker="w1")
    assert (note.kind, note.version, note.status, note.from_state, note.to_state) == (
        "cancel_superseded", 8, "done", "Confirmed", "Confirmed")
    assert (note.expect_status, note.lease_token, note.clear_cancel) == (("done",), None, True)
    assert note.cause == ("cancel requested (by ops) but superseded: the workflow finished "
                          "first (done)")
    parked = Change.parked(row, "boom", worker="w1", started_at=NOW)
    assert "cancel it again" in (Change.cancel_superseded(parked, 8, "x", worker="w").cause
                                 or "")


# -- unexpected_state_error, describe_failure ---------------------------------------------------


def test_declared_state_is_expected() -> None:
    assert unexpected_state_error("charge_card", Charged(order_id="o1", charge_id="c"),
                                  (Charged,)) is None


@pytest.mark.parametrize(
    "returned", [Confirmed(order_id="o1", tracking="T"), None, "Charged"], ids=repr)
def test_undeclared_return_names_handler_and_declared_states(returned: object) -> None:
    error = unexpected_state_error("ship", returned, (Shipped, PaymentFailed))
    assert isinstance(error, DataError)
    text = str(error)
    assert "'ship'" in text
    assert type(returned).__name__ in text
    assert "Shipped | PaymentFailed" in text


def test_subclass_of_a_declared_state_is_not_declared() -> None:
    @attrs.frozen
    class SpecialCharged(Charged):
        pass

    assert unexpected_state_error("charge_card", SpecialCharged(order_id="o1", charge_id="c"),
                                  (Charged,)) is not None


def test_declared_states_are_named_by_their_stored_names() -> None:
    @attrs.frozen
    class Settled:
        __state_name__: ClassVar[str] = "Paid"

    error = unexpected_state_error("settle", Confirmed(order_id="o1", tracking="T"), (Settled,))
    assert error is not None
    assert "declared: Paid" in str(error)


def test_handler_declaring_nothing() -> None:
    error = unexpected_state_error("noop", Confirmed(order_id="o1", tracking="T"), ())
    assert error is not None
    assert "declared: nothing" in str(error)


def test_describe_failure_keeps_type_message_and_traceback() -> None:
    def charge() -> None:
        raise GatewayUnavailable("payment gateway returned 503")

    try:
        charge()
    except GatewayUnavailable as e:
        failure = describe_failure(e, 3, permanent=False)
    assert (failure.type, failure.message, failure.attempt, failure.permanent) == (
        "GatewayUnavailable", "payment gateway returned 503", 3, False)
    assert failure.traceback.startswith("Traceback (most recent call last)")
    assert "in charge" in failure.traceback
    assert str(failure) == "GatewayUnavailable: payment gateway returned 503"


def test_describe_failure_bounds_a_long_traceback_keeping_its_end() -> None:
    def fetch() -> None:
        raise ValueError("cause " + "x" * 6000)

    def charge() -> None:
        try:
            fetch()
        except ValueError as e:
            raise GatewayUnavailable("payment gateway returned 503") from e

    try:
        charge()
    except GatewayUnavailable as e:
        error = e
    full = "".join(traceback.format_exception(error))
    assert len(full) > MAX_TRACEBACK  # the case under test
    failure = describe_failure(error, 1, permanent=True)
    assert failure.traceback == "...\n" + full[-MAX_TRACEBACK:]
    assert failure.traceback.rstrip().endswith("GatewayUnavailable: payment gateway returned 503")


def test_describe_failure_bounds_a_huge_message() -> None:
    failure = describe_failure(raised(ValueError("y" * 50_000)), 1, permanent=False)
    assert len(failure.traceback) <= MAX_TRACEBACK + len("...\n")
    assert failure.message == "y" * 50_000  # the message itself is the handler's; kept whole


def test_a_data_error_raised_by_a_handler_is_not_retried() -> None:
    # What ctx.start_child raises for a child state with a mistyped field.
    action = outcome_of(DataError("machine m, state S: expected int, got 'x' @ data.n"))
    assert isinstance(action, RunErrorRoute)
    assert action.failure.permanent


def test_an_error_route_returning_a_mistyped_state_parks_with_the_failure() -> None:
    a = attempt(claimed(attempt=5))
    run = RunErrorRoute(a.row, CHARGE, Failure(type="CardDeclined", message="declined",
                                                attempt=5))
    change = committed(after_error_route(
        a, run, Returned(PaymentFailed(order_id="o1", reason=3)),  # type: ignore[arg-type]
        sticky=False))
    assert change.kind == "parked"
    assert change.error is not None
    assert "CardDeclined: declined" in change.error
    assert "'payment_failed' returned a state that does not fit" in change.error
    assert "data.reason" in change.error


# -- polling steps -------------------------------------------------------------------------------


@attrs.frozen
class Booting:
    server: str = "s1"


@attrs.frozen
class Booted:
    pass


@attrs.frozen
class NeverBooted:
    reason: str


BOOT_POLL = Poll(every=5, max_every=60, deadline=timedelta(minutes=30), jitter=0)


class Boots(Machine):
    initial = Booting
    terminal = (Booted, NeverBooted)

    @step(poll=BOOT_POLL)
    def wait_for_boot(self, state: Booting, ctx: Context) -> Booted | PollAgain:
        return poll_again()

    @wait_for_boot.on_error
    def give_up(self, state: Booting, failure: Failure, ctx: Context) -> NeverBooted:
        return NeverBooted(reason=failure.type)


class BootsRecorded(Machine):
    initial = Booting
    terminal = (Booted,)

    @step(poll=Poll(every=5, deadline=600, record=True, jitter=0))
    def wait_for_boot(self, state: Booting, ctx: Context) -> Booted | PollAgain:
        return poll_again()


class BootsBare(Machine):
    initial = Booting
    terminal = (Booted,)

    @step(poll=Poll(every=5, deadline=600, jitter=0))
    def wait_for_boot(self, state: Booting, ctx: Context) -> Booted | PollAgain:
        return poll_again()


def boot_attempt(spec: MachineSpec = Boots.spec, now: datetime = NOW, **fields: Any) -> Attempt:
    return attempt(claimed("Booting", {"server": "s1"}, machine=spec.name, **fields), spec,
                   Booting(), now=now)


def polled(spec: MachineSpec, entered: datetime, now: datetime, value: object = None) -> Action:
    """What a poll that returned `value` (default: poll_again()) at `now` leads to."""
    a = boot_attempt(spec, now)
    action, asked = decided(a, PollingSince=entered)
    assert isinstance(action, RunHandler)
    # The deadline runs from entering the state (or a retry), measured on the database's clock.
    assert asked == [PollingSince(5), DatabaseNow()]
    assert action.call.poll_since == entered
    return after_handler(a, action, Returned(poll_again() if value is None else value),
                         sticky=False)


def test_a_polls_deadline_is_decided_on_the_databases_clock_not_the_workers() -> None:
    entered = NOW - timedelta(seconds=BOOT_POLL.deadline - 1)
    # The worker's clock is 2 s ahead (past the deadline); the database's is not.
    a = boot_attempt(Boots.spec, NOW + timedelta(seconds=2))
    action, _ = decided(a, PollingSince=entered, DatabaseNow=NOW)
    assert isinstance(action, RunHandler)
    assert action.call.poll_now == NOW
    after = after_handler(a, action, Returned(poll_again()), sticky=False)
    assert isinstance(after, Repoll), after
    assert after.after == pytest.approx(1.0)  # the last poll lands on the deadline


def test_a_polling_step_learns_when_its_state_was_entered() -> None:
    action, _ = decided(boot_attempt(), PollingSince=None)
    assert isinstance(action, RunHandler)
    assert action.call.poll_since == NOW  # no history row to ask: from now


def test_poll_again_polls_later_writing_no_history_row() -> None:
    action = polled(Boots.spec, NOW, NOW)
    assert isinstance(action, Repoll)  # not a Commit: no version, no history row
    assert action.after == 5


def test_the_poll_interval_backs_off_up_to_max_every() -> None:
    # every=5, backoff=2: polls at 0, 5, 15, 35 ... intervals 5, 10, 20, 40, then 60 at most.
    for elapsed, interval in [(5, 10), (15, 20), (35, 40), (75, 60), (1000, 60)]:
        action = polled(Boots.spec, NOW, NOW + timedelta(seconds=elapsed))
        assert isinstance(action, Repoll)
        assert action.after == interval, elapsed


def test_the_last_poll_is_at_the_deadline() -> None:
    action = polled(Boots.spec, NOW, NOW + timedelta(minutes=29, seconds=50))
    assert isinstance(action, Repoll)
    assert action.after == 10  # not 60: the deadline comes first


def test_poll_again_after_the_deadline_fails_the_step_for_good() -> None:
    action = polled(Boots.spec, NOW, NOW + timedelta(minutes=30))
    assert isinstance(action, RunErrorRoute)
    assert (action.failure.type, action.failure.permanent) == ("PollDeadline", True)
    assert "did not hold within 0:30:00" in action.failure.message


def test_a_poll_past_its_deadline_without_error_route_is_parked() -> None:
    change = committed(polled(BootsBare.spec, NOW, NOW + timedelta(hours=1)))
    assert (change.kind, change.status) == ("parked", "failed")
    assert "PollDeadline" in (change.error or "")


def test_a_poll_whose_condition_holds_moves_on() -> None:
    change = committed(polled(Boots.spec, NOW, NOW + timedelta(minutes=40), Booted()))
    assert (change.kind, change.to_state, change.status) == ("transition", "Booted", "done")


def test_a_recorded_poll_commits_a_history_row_with_fresh_attempts() -> None:
    change = committed(polled(BootsRecorded.spec, NOW, NOW + timedelta(seconds=5)))
    assert (change.kind, change.to_state, change.status) == ("polled", "Booting", "ready")
    assert (change.new_state, change.reset_attempts, change.count_poll) == (False, True, True)
    assert change.wake_after == 10


def test_a_failing_poll_is_retried_by_its_retry_policy() -> None:
    a = boot_attempt(BootsBare.spec)
    action, _ = decided(a, PollingSince=NOW)
    assert isinstance(action, RunHandler)
    after = after_handler(a, action, Raised(raised(ConnectionError("refused"))), sticky=False)
    assert committed(after).kind == "failed_attempt"


def test_poll_options_are_checked_at_import() -> None:
    for bad, says in [(dict(every=0, deadline=10), "every must be > 0"),
                      (dict(every=5, deadline=0), "deadline must be > 0"),
                      (dict(every=60, deadline=30), "shorter than its first interval"),
                      (dict(every=5, deadline=60, max_every=1), "max_every"),
                      (dict(every=5, deadline=60, backoff=0.5), "backoff must be >= 1"),
                      (dict(every=5, deadline=60, jitter=1), "jitter"),
                      (dict(every="5", deadline=60), "expected seconds or a timedelta")]:
        with pytest.raises(InvalidDefinition, match=says):
            Poll(**bad)  # type: ignore[arg-type]


def test_a_polling_step_must_declare_poll_again_and_the_other_way_round() -> None:
    with pytest.raises(InvalidDefinition, match="does not include PollAgain"):
        class NoPollAgain(Machine):
            initial = Booting
            terminal = (Booted,)

            @step(poll=Poll(every=5, deadline=60))
            def wait_for_boot(self, state: Booting, ctx: Context) -> Booted:
                return Booted()

    with pytest.raises(InvalidDefinition, match="has no poll=Poll"):
        class NoPoll(Machine):
            initial = Booting
            terminal = (Booted,)

            @step
            def wait_for_boot(self, state: Booting, ctx: Context) -> Booted | PollAgain:
                return Booted()

    with pytest.raises(InvalidDefinition, match="cannot be at_most_once"):
        step(poll=Poll(every=5, deadline=60), at_most_once=True)
