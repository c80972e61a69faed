"""The in-process engine contract, on every backend: retries and backoff, error routes, parking and
`retry`, `cancel`, states forced by an operator's SQL, fencing of in-flight handlers, idempotent
starts, and transparent retries of serialization failures (SQLSTATE 40001)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import attrs
import pytest
from sqlalchemy import func, select, text

from statemachine import (
    Client,
    Context,
    Failure,
    InvalidArgument,
    InvalidOperation,
    LeaseLost,
    Machine,
    PermanentError,
    RetryPolicy,
    Store,
    UnknownMachine,
    Worker,
    WorkflowNotFound,
    step,
)
from statemachine._schema import history, workflows
from tests.claims import ClaimLog
from tests.conftest import POSTGRES_BACKENDS
from tests.waits import wait_until

# Every test here runs for sync handlers on the thread worker and async ones on the async
# worker (see tests/async_handlers.py).
pytestmark = pytest.mark.usefixtures("handlers")

FAST = dict(poll_interval=0.05, min_poll_interval=0.01)


def force_by_sql(store: Store, workflow_id: uuid.UUID, state: str, data: Any) -> int:
    """Force a workflow into `state` with plain SQL, the way an operator does it from psql or the
    sqlite3 shell (docs: "operating by SQL"); returns the version the operator wrote.

    SQLite keeps times as naive UTC text ``YYYY-MM-DD HH:MM:SS.ffffff``; ``strftime('%f')`` gives
    only milliseconds, so three zeros complete the microseconds."""
    if store.is_sqlite:
        sql = """
            UPDATE sm_workflows
               SET state = :state, data = :data, status = 'ready',
                   wake_at = strftime('%Y-%m-%d %H:%M:%f', 'now') || '000',
                   version = version + 1
             WHERE id = :id
            RETURNING version"""
    else:
        sql = """
            UPDATE sm_workflows
               SET state = :state, data = CAST(:data AS jsonb), status = 'ready',
                   wake_at = now(), version = version + 1
             WHERE id = CAST(:id AS uuid)
            RETURNING version"""
    with store.connect() as conn:
        version = conn.execute(
            text(sql), {"state": state, "data": json.dumps(data), "id": str(workflow_id)}
        ).scalar_one()
        conn.commit()
    return int(version)


def row_counts(store: Store, workflow_id: uuid.UUID) -> tuple[int, int]:
    """(rows in sm_workflows with this id, rows in sm_history for it)."""
    with store.connect() as conn:
        n_rows = conn.execute(select(func.count()).select_from(workflows)
                              .where(workflows.c.id == workflow_id)).scalar_one()
        n_hist = conn.execute(select(func.count()).select_from(history)
                              .where(history.c.workflow_id == workflow_id)).scalar_one()
    return int(n_rows), int(n_hist)


# -- retries, error routes, parking ----------------------------------------------------------


class Flaky(Exception):
    """A transient failure (a 503 from some service)."""


@attrs.frozen
class Fetching:
    fail_times: int


@attrs.frozen
class Fetched:
    attempts: int


RETRY = RetryPolicy(max_attempts=5, initial_delay=0.1, multiplier=2.0, jitter=0.2)


class FlakyFetch(Machine):
    """Fails transiently `fail_times` times, then succeeds."""

    name = "engine_flaky_fetch"
    initial = Fetching
    terminal = (Fetched,)

    def __init__(self) -> None:
        self.calls: list[tuple[int, float]] = []  # (ctx.attempt, wall time)

    @step(retry=RETRY)
    def fetch(self, state: Fetching, ctx: Context) -> Fetched:
        self.calls.append((ctx.attempt, time.time()))
        if ctx.attempt <= state.fail_times:
            raise Flaky(f"service unavailable on attempt {ctx.attempt}")
        return Fetched(attempts=ctx.attempt)


def test_transient_error_is_retried_with_backoff(store: Store) -> None:
    machine = FlakyFetch()
    client = Client(store, [FlakyFetch])
    with Worker(store, [machine], **FAST):
        wid = client.start(FlakyFetch, Fetching(fail_times=2))
        info = client.wait(wid, timeout=60)

    assert info.status == "done"
    assert info.state == Fetched(attempts=3)
    assert info.last_error is None
    assert [a for a, _ in machine.calls] == [1, 2, 3]
    for n in (1, 2):
        waited = machine.calls[n][1] - machine.calls[n - 1][1]
        minimum = RETRY.initial_delay * RETRY.multiplier ** (n - 1) * (1 - RETRY.jitter)
        assert waited >= minimum - 0.002, f"retry {n} came after {waited:.3f}s < {minimum}s"

    hist = client.history(wid)
    assert [h.kind for h in hist] == ["start", "failed_attempt", "failed_attempt", "transition"]
    assert [h.version for h in hist] == [1, 2, 3, 4]
    failed = [h for h in hist if h.kind == "failed_attempt"]
    assert [h.attempt for h in failed] == [1, 2]
    for h in failed:
        assert h.error is not None
        assert f"Flaky: service unavailable on attempt {h.attempt}" in h.error
        assert h.status == "ready"
        assert h.to_state == "Fetching"
    assert hist[-1].to_state == "Fetched"
    assert hist[-1].status == "done"


class Rejected(PermanentError):
    """The other side said no; asking again will not change its mind."""


class ConfigBroken(Exception):
    """Listed as permanent in the step's RetryPolicy."""


@attrs.frozen
class Paying:
    mode: str  # "permanent-subclass", "permanent-listed" or "transient"


@attrs.frozen
class Paid:
    pass


@attrs.frozen
class Refused:
    reason: str
    attempt: int
    permanent: bool


class Payment(Machine):
    """A step with an error route (a compensation state)."""

    name = "engine_payment"
    initial = Paying
    terminal = (Paid, Refused)

    def __init__(self) -> None:
        self.calls = 0

    # A retry of a permanent error would wait a minute and time the test out.
    @step(retry=RetryPolicy(max_attempts=2, initial_delay=0.05, multiplier=1200.0, jitter=0.0,
                            permanent=(ConfigBroken,)))
    def pay(self, state: Paying, ctx: Context) -> Paid:
        self.calls += 1
        if state.mode == "permanent-subclass":
            raise Rejected("card declined")
        if state.mode == "permanent-listed":
            raise ConfigBroken("bad api key")
        raise Flaky("gateway timeout")

    @pay.on_error
    def refuse(self, state: Paying, failure: Failure, ctx: Context) -> Refused:
        return Refused(reason=str(failure), attempt=failure.attempt, permanent=failure.permanent)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("permanent-subclass", "Rejected: card declined"),
     ("permanent-listed", "ConfigBroken: bad api key")],
)
def test_permanent_error_takes_the_error_route_at_once(store: Store, mode: str,
                                                       reason: str) -> None:
    machine = Payment()
    client = Client(store, [Payment])
    with Worker(store, [machine], **FAST):
        wid = client.start(Payment, Paying(mode=mode))
        info = client.wait(wid, timeout=60)

    assert machine.calls == 1
    assert info.status == "done"
    assert info.state == Refused(reason=reason, attempt=1, permanent=True)
    hist = client.history(wid)
    assert [h.kind for h in hist] == ["start", "error_route"]
    assert hist[1].from_state == "Paying"
    assert hist[1].to_state == "Refused"
    assert hist[1].error is not None
    assert reason in hist[1].error


def test_exhausted_retries_take_the_error_route(store: Store) -> None:
    machine = Payment()
    client = Client(store, [Payment])
    with Worker(store, [machine], **FAST):
        wid = client.start(Payment, Paying(mode="transient"))
        info = client.wait(wid, timeout=60)

    assert machine.calls == 2
    assert info.state == Refused(reason="Flaky: gateway timeout", attempt=2, permanent=False)
    assert [h.kind for h in client.history(wid)] == ["start", "failed_attempt", "error_route"]


class ServiceDown(Exception):
    """The downstream service is down until someone fixes it."""


@attrs.frozen
class Syncing:
    account: str


@attrs.frozen
class Synced:
    account: str
    attempt: int


class Sync(Machine):
    """No error route: running out of retries parks the workflow for a human."""

    name = "engine_sync"
    initial = Syncing
    terminal = (Synced,)

    def __init__(self) -> None:
        self.broken = True
        self.calls = 0

    @step(retry=RetryPolicy(max_attempts=2, initial_delay=0.05, jitter=0.0))
    def sync(self, state: Syncing, ctx: Context) -> Synced:
        self.calls += 1
        if self.broken:
            raise ServiceDown("downstream is down")
        return Synced(account=state.account, attempt=ctx.attempt)


def test_exhausted_retries_park_and_retry_resumes(store: Store) -> None:
    machine = Sync()
    client = Client(store, [Sync])
    with Worker(store, [machine], **FAST):
        wid = client.start(Sync, Syncing(account="acme"))
        parked = client.wait(wid, timeout=60)

        assert parked.status == "failed"
        assert parked.state_name == "Syncing"
        assert parked.last_error is not None
        assert "ServiceDown: downstream is down" in parked.last_error
        assert "Traceback" not in parked.last_error  # the headline; history keeps the traceback
        hist = client.history(wid)
        assert [h.kind for h in hist] == ["start", "failed_attempt", "parked"]
        errors = [(h.attempt, h.error) for h in hist if h.error is not None]
        assert [a for a, _ in errors] == [1, 2]
        assert all("ServiceDown: downstream is down" in e for _, e in errors)
        assert "Traceback" in hist[-1].error  # type: ignore[operator]
        assert machine.calls == 2

        machine.broken = False
        client.retry(wid)
        done = client.wait(wid, timeout=60)

    assert done.status == "done"
    # Resumed from the same state with a fresh set of attempts.
    assert done.state == Synced(account="acme", attempt=1)
    assert done.last_error is None
    hist = client.history(wid)
    assert [h.kind for h in hist] == ["start", "failed_attempt", "parked", "retry", "transition"]
    assert hist[3].status == "ready"
    assert hist[4].from_state == "Syncing"
    assert [h.version for h in hist] == list(range(1, len(hist) + 1))


def test_retry_of_a_workflow_that_is_not_parked_is_refused(store: Store) -> None:
    machine = Sync()
    machine.broken = False
    client = Client(store, [Sync])
    wid = client.start(Sync, Syncing(account="a"))
    with pytest.raises(InvalidOperation, match="ready"):
        client.retry(wid)
    with Worker(store, [machine], **FAST):
        assert client.wait(wid, timeout=60).status == "done"
    before = client.history(wid)
    with pytest.raises(InvalidOperation, match="done"):
        client.retry(wid)
    assert client.history(wid) == before


def test_cancel(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    machine = Sync()
    client = Client(store, [Sync])
    claims = ClaimLog(store, monkeypatch)
    ready = client.start(Sync, Syncing(account="ready"))

    client.cancel(ready, reason="customer asked")
    info = client.get(ready)
    assert info.status == "cancelled"
    last = client.history(ready)[-1]
    assert (last.kind, last.status, last.cause) == ("cancel", "cancelled", "customer asked")

    with Worker(store, [machine], **FAST):
        parked = client.start(Sync, Syncing(account="parked"))
        assert client.wait(parked, timeout=60).status == "failed"
        calls = machine.calls
        client.cancel(parked)
        assert client.get(parked).status == "cancelled"
        assert client.history(parked)[-1].kind == "cancel"

        machine.broken = False
        done = client.start(Sync, Syncing(account="done"))
        assert client.wait(done, timeout=60).status == "done"
        # The worker has looked for work since: a cancelled workflow is never claimed again.
        taken = claims.claims_since(claims.mark(), claims=2)
    assert not taken & {ready, parked}
    assert machine.calls == calls + 1
    assert client.get(ready).status == "cancelled"

    with pytest.raises(InvalidOperation, match="done"):
        client.cancel(done)
    with pytest.raises(InvalidOperation, match="cancelled"):
        client.cancel(ready)
    assert client.get(done).status == "done"


# -- operating by SQL ----------------------------------------------------------------------------


@attrs.frozen
class Invoice:
    amount: int
    # "review" | "settle" | "undeclared" | "none"
    route: str = "review"


@attrs.frozen
class Review:
    amount: int
    note: str


@attrs.frozen
class Settled:
    amount: int
    via: str


class Billing(Machine):
    name = "engine_billing"
    initial = Invoice
    terminal = (Settled,)

    def __init__(self) -> None:
        self.reviewed: list[Review] = []

    @step
    def bill(self, state: Invoice, ctx: Context) -> Review:
        if state.route == "undeclared":
            return Settled(amount=state.amount, via="bill")  # type: ignore[return-value]
        if state.route == "none":
            return None  # type: ignore[return-value]
        return Review(amount=state.amount, note="auto")

    @step
    def review(self, state: Review, ctx: Context) -> Settled:
        self.reviewed.append(state)
        return Settled(amount=state.amount, via=f"review:{state.note}")


def test_state_forced_by_sql_is_picked_up(store: Store) -> None:
    machine = Billing()
    client = Client(store, [Billing])
    wid = client.start(Billing, Invoice(amount=5))
    version = force_by_sql(store, wid, "Review", {"amount": 7, "note": "manual"})

    with Worker(store, [machine], **FAST):
        info = client.wait(wid, timeout=60)

    assert info.status == "done"
    assert info.state == Settled(amount=7, via="review:manual")
    assert machine.reviewed == [Review(amount=7, note="manual")]
    hist = client.history(wid)
    assert [h.kind for h in hist] == ["start", "external_change", "transition"]
    external = hist[1]
    assert external.version == version == 2
    assert (external.to_state, external.data) == ("Review", {"amount": 7, "note": "manual"})
    assert hist[2].from_state == "Review"
    assert hist[2].version == 3


def test_forced_terminal_state_is_finished(store: Store) -> None:
    client = Client(store, [Billing])
    wid = client.start(Billing, Invoice(amount=5))
    force_by_sql(store, wid, "Settled", {"amount": 0, "via": "operator"})
    with Worker(store, [Billing()], **FAST):
        info = client.wait(wid, timeout=60)
    assert info.status == "done"
    assert info.state == Settled(amount=0, via="operator")
    assert [h.kind for h in client.history(wid)][:2] == ["start", "external_change"]


def test_forced_data_that_does_not_fit_parks_only_that_workflow(store: Store) -> None:
    machine = Billing()
    client = Client(store, [Billing])
    bad = client.start(Billing, Invoice(amount=5))
    before = [client.start(Billing, Invoice(amount=i)) for i in range(3)]
    force_by_sql(store, bad, "Review", {"amount": "ten", "note": "manual"})

    with Worker(store, [machine], **FAST):
        parked = client.wait(bad, timeout=60)
        after = [client.start(Billing, Invoice(amount=i)) for i in range(3)]
        others = [client.wait(w, timeout=60) for w in before + after]

    assert parked.status == "failed"
    assert parked.state_name == "Review"
    assert parked.last_error is not None
    for part in (str(bad), "Review", "data.amount"):
        assert part in parked.last_error, f"{part!r} missing from {parked.last_error!r}"
    assert parked.load_error is not None
    assert "data.amount" in parked.load_error
    assert [h.kind for h in client.history(bad)] == ["start", "external_change", "parked"]
    assert [o.status for o in others] == ["done"] * 6
    assert all(isinstance(o.state, Settled) for o in others)


def test_forced_unknown_state_parks_readably(store: Store) -> None:
    client = Client(store, [Billing])
    wid = client.start(Billing, Invoice(amount=5))
    force_by_sql(store, wid, "Refunded", {"amount": 5})
    with Worker(store, [Billing()], **FAST):
        info = client.wait(wid, timeout=60)
        ok = client.wait(client.start(Billing, Invoice(amount=1)), timeout=60)
    assert info.status == "failed"
    assert info.last_error is not None
    assert str(wid) in info.last_error
    assert "'Refunded'" in info.last_error
    assert ok.status == "done"


@pytest.mark.parametrize(("route", "returned"), [("undeclared", "Settled"), ("none", "NoneType")])
def test_handler_returning_an_undeclared_state_parks(store: Store, route: str,
                                                     returned: str) -> None:
    client = Client(store, [Billing])
    with Worker(store, [Billing()], **FAST):
        wid = client.start(Billing, Invoice(amount=5, route=route))
        info = client.wait(wid, timeout=60)
    assert info.status == "failed"
    assert info.state_name == "Invoice"  # nothing of the bad result was committed
    assert info.last_error is not None
    for part in (str(wid), "'bill'", returned, "Review"):
        assert part in info.last_error, f"{part!r} missing from {info.last_error!r}"
    assert [h.kind for h in client.history(wid)] == ["start", "parked"]


# -- fencing -------------------------------------------------------------------------------------


@attrs.frozen
class Begun:
    n: int


@attrs.frozen
class Overridden:
    n: int


@attrs.frozen
class Finished:
    via: str


class Slow(Machine):
    """`work` blocks until the test lets it go, so the test can change the row meanwhile."""

    name = "engine_slow"
    initial = Begun
    terminal = (Finished,)

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.returned = threading.Event()

    @step
    def work(self, state: Begun, ctx: Context) -> Overridden | Finished:
        self.entered.set()
        assert self.release.wait(10), "test never released the handler"
        self.returned.set()
        return Finished(via="handler")

    @step
    def override(self, state: Overridden, ctx: Context) -> Finished:
        return Finished(via=f"override:{state.n}")


@pytest.mark.parametrize("concurrency", [1, 2])
def test_forced_state_wins_over_the_in_flight_handler(store: Store, concurrency: int) -> None:
    """With one slot the forced row waits for the slow handler, so only the version fences its
    commit (the operator's UPDATE left the lease token alone); with two, the forced row is
    claimed again (a new lease token) and finishes while the slow handler still runs."""
    machine = Slow()
    client = Client(store, [Slow])
    with Worker(store, [machine], concurrency=concurrency, **FAST):
        wid = client.start(Slow, Begun(n=1))
        assert machine.entered.wait(10)
        assert client.get(wid).status == "running"
        force_by_sql(store, wid, "Overridden", {"n": 42})
        if concurrency == 2:
            assert client.wait(wid, timeout=60).state == Finished(via="override:42")
        machine.release.set()
        info = client.wait(wid, timeout=60)
        assert machine.returned.wait(10)
    # The worker has stopped: the slow handler's commit attempt is over.
    info = client.get(wid)
    assert info.state == Finished(via="override:42")
    hist = client.history(wid)
    assert [h.kind for h in hist] == ["start", "external_change", "transition"]
    assert [h.version for h in hist] == [1, 2, 3]
    assert hist[2].from_state == "Overridden"
    assert info.version == 3


# -- idempotent start ----------------------------------------------------------------------------


def test_start_with_a_key_is_idempotent(store: Store) -> None:
    client = Client(store, [Billing])
    first = client.start(Billing, Invoice(amount=1), key="order-17")
    again = client.start(Billing, Invoice(amount=1), key="order-17")
    assert again == first
    # The same key with different data is a mistake, not a retry: refused, naming the workflow.
    with pytest.raises(InvalidOperation, match=str(first)):
        client.start(Billing, Invoice(amount=999), key="order-17")
    assert row_counts(store, first) == (1, 1)
    assert client.get(first).state == Invoice(amount=1)  # the second start changed nothing

    other = client.start(Billing, Invoice(amount=1), key="order-18")
    assert other != first
    # Keys are unique per machine, not across machines.
    elsewhere = client.start(Sync, Syncing(account="x"), key="order-17")
    assert elsewhere != first


def test_concurrent_starts_with_one_key_make_one_workflow(store: Store) -> None:
    client = Client(store, [Billing])
    barrier = threading.Barrier(6)
    ids: list[uuid.UUID] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            barrier.wait(5)
            ids.append(client.start(Billing, Invoice(amount=1), key="same"))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    assert len(ids) == 6
    assert len(set(ids)) == 1
    assert row_counts(store, ids[0]) == (1, 1)
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(workflows)).scalar_one() == 1


# -- serialization failures ----------------------------------------------------------------------


@attrs.frozen
class Step1:
    n: int


@attrs.frozen
class Step2:
    n: int


@attrs.frozen
class Step3:
    n: int


@attrs.frozen
class AllDone:
    n: int


class Chain(Machine):
    name = "engine_chain"
    initial = Step1
    terminal = (AllDone,)

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    @step
    def one(self, state: Step1, ctx: Context) -> Step2:
        self._count("one")
        return Step2(state.n + 1)

    @step
    def two(self, state: Step2, ctx: Context) -> Step3:
        self._count("two")
        return Step3(state.n + 1)

    @step
    def three(self, state: Step3, ctx: Context) -> AllDone:
        self._count("three")
        return AllDone(state.n + 1)


INJECTED_FAILURES = 3

# A sequence, not a counter table: the failing statement's transaction rolls back, and with it any
# row it wrote, while nextval() is not transactional. The trigger makes the commit statement itself
# (the CTE that writes the row and appends history) fail with a genuine 40001.
INJECT_40001 = [
    "CREATE SEQUENCE sm_test_inject_calls",
    f"""
    CREATE FUNCTION sm_test_inject() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.kind = 'transition' THEN
            IF nextval('sm_test_inject_calls') <= {INJECTED_FAILURES} THEN
                RAISE EXCEPTION USING ERRCODE = '40001',
                    MESSAGE = 'restart transaction: injected';
            END IF;
        END IF;
        RETURN NEW;
    END $$""",
    """
    CREATE TRIGGER sm_test_inject BEFORE INSERT ON sm_history
        FOR EACH ROW EXECUTE FUNCTION sm_test_inject()""",
]


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS, indirect=True)  # a PL/pgSQL trigger
def test_serialization_failures_on_commit_are_retried_transparently(
    store: Store, backend: str
) -> None:
    with store.connect() as conn:
        for statement in INJECT_40001:
            conn.execute(text(statement))
        conn.commit()

    machine = Chain()
    client = Client(store, [Chain])
    with Worker(store, [machine], **FAST):
        wid = client.start(Chain, Step1(n=0))
        info = client.wait(wid, timeout=60)

    assert info.status == "done"
    assert info.state == AllDone(n=3)
    # The store re-ran the statement; the handlers were not re-run and saw no failure.
    assert machine.calls == {"one": 1, "two": 1, "three": 1}
    hist = client.history(wid)
    assert [h.kind for h in hist] == ["start", "transition", "transition", "transition"]
    assert [h.version for h in hist] == [1, 2, 3, 4] == [*range(1, info.version + 1)]
    assert all(h.error is None for h in hist)
    with store.connect() as conn:
        calls = conn.execute(text("SELECT last_value FROM sm_test_inject_calls")).scalar_one()
    # Every transition insert asked the trigger; the first ones were refused.
    assert calls == INJECTED_FAILURES + 3


# -- the client's errors, and what it closes -----------------------------------------------------


def test_client_errors_carry_the_workflow_state_and_status(store: Store) -> None:
    client = Client(store, [Sync, Chain])
    wid = client.start(Sync, Syncing(account="a"))

    missing = uuid.uuid4()
    with pytest.raises(WorkflowNotFound) as not_found:
        client.get(missing)
    assert not_found.value.workflow_id == missing
    with pytest.raises(WorkflowNotFound) as no_history:
        client.history(missing)
    assert no_history.value.workflow_id == missing

    with pytest.raises(InvalidOperation, match="ready") as refused:
        client.retry(wid)
    assert (refused.value.workflow_id, refused.value.state, refused.value.status) == (
        wid, "Syncing", "ready")
    with pytest.raises(InvalidOperation, match="not parked") as unresolved:
        client.resolve(wid)
    assert (unresolved.value.workflow_id, unresolved.value.status) == (wid, "ready")

    with pytest.raises(InvalidArgument, match="starts in Syncing, not Step1") as wrong_start:
        client.start(Sync, Step1(n=0))
    assert isinstance(wrong_start.value, ValueError)
    assert wrong_start.value.state == "Step1"
    with pytest.raises(InvalidArgument, match="starts in Syncing"):
        client.start_many(Sync, [Syncing(account="b"), Step1(n=0)])
    assert [i.id for i in client.list(machine=Sync.name)] == [wid]  # nothing of the bulk started

    client.cancel(wid)
    with pytest.raises(InvalidOperation, match="accepts no more events") as finished:
        client.send(wid, Step1(n=0))
    assert (finished.value.workflow_id, finished.value.status) == (wid, "cancelled")


def test_client_names_a_machine_it_does_not_know(store: Store) -> None:
    wid, _ = store.sql.insert_workflow(machine="engine_never_defined", state="Begun", data={})
    client = Client(store)
    info = client.get(wid)
    assert info.state is None
    assert "engine_never_defined is not known" in (info.load_error or "")
    for call in (lambda: client.send(wid, Step1(n=0)),
                 lambda: client.send_data(wid, "Step1", {"n": 0}),
                 lambda: client.force(wid, Step1(n=0))):
        with pytest.raises(UnknownMachine, match="engine_never_defined") as unknown:
            call()
        assert (unknown.value.machine, unknown.value.workflow_id) == ("engine_never_defined", wid)


def test_forcing_a_state_of_another_machine_names_both(store: Store) -> None:
    client = Client(store, [Sync, Chain])
    wid = client.start(Sync, Syncing(account="a"))
    with pytest.raises(InvalidArgument) as other:
        client.force(wid, Step2(n=1))
    message = str(other.value)
    assert "Step2 is a state of machine engine_chain, not machine engine_sync" in message
    assert "its states: Synced, Syncing" in message
    assert isinstance(other.value, ValueError)
    assert other.value.workflow_id == wid

    @attrs.frozen
    class Stray:
        n: int

    with pytest.raises(InvalidArgument, match="Stray is not a state of machine engine_sync"):
        client.force(wid, Stray(n=1))
    assert [h.kind for h in client.history(wid)] == ["start"]  # nothing was forced


def pooled(store: Store) -> int:
    """Connections the store's pools hold open now."""
    return sum(engine.pool.checkedin() for engine in store.engines)


def test_a_client_closes_the_store_it_opened_and_only_that(db_url: str, store: Store) -> None:
    with Client(db_url, machines=[Sync]) as client:
        wid = client.start(Sync, Syncing(account="a"))
        assert client.get(wid).state == Syncing(account="a")
        opened = client.store
        assert pooled(opened) >= 1
    assert pooled(opened) == 0

    given = Client(store, [Sync])
    assert given.get(wid).state == Syncing(account="a")
    held = pooled(store)
    assert held >= 1
    given.close()
    with given:
        pass
    assert pooled(store) == held  # the caller's store: still open, still pooled
    assert given.get(wid).status == "ready"


# -- a lost lease --------------------------------------------------------------------------------


class Extending(Machine):
    """`work` waits until the test has taken its row away, then asks for more time."""

    name = "engine_extending"
    initial = Begun
    terminal = (Finished,)

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.raised: list[BaseException] = []

    @step
    def work(self, state: Begun, ctx: Context) -> Finished:
        self.entered.set()
        assert self.release.wait(30), "test never released the handler"
        try:
            ctx.extend_lease(60)
        except LeaseLost as e:
            self.raised.append(e)
            raise
        return Finished(via="handler")


def test_extending_a_lost_lease_raises_lease_lost(store: Store) -> None:
    """A handler asking for more time after its row was taken away learns it at once, with the
    workflow, state and version it held; its attempt changes nothing."""
    machine = Extending()
    client = Client(store, [Extending])
    with Worker(store, [machine], concurrency=1, **FAST):
        wid = client.start(Extending, Begun(n=1))
        assert machine.entered.wait(30)
        held = client.get(wid)
        with store.connect() as conn:  # another worker took it over: a new lease token
            conn.execute(workflows.update().where(workflows.c.id == wid)
                         .values(lease_token="someone-else"))
            conn.commit()
        machine.release.set()
        wait_until(lambda: machine.raised, "the handler to see LeaseLost")
    error = machine.raised[0]
    assert isinstance(error, LeaseLost)
    assert (error.workflow_id, error.state, error.version) == (wid, "Begun", held.version)
    after = client.get(wid)
    assert (after.version, after.state_name) == (held.version, "Begun")  # nothing committed
