"""Monthly billing (`machines.billing`) end to end: real workers, real HTTP fakes, every backend.

Nobody is charged twice, whatever fails: the fake bank counts charges per idempotency key and per
customer and period, and every test checks both.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from machines.billing import (
    BillingFailed,
    BillingRun,
    CustomerInvoice,
    RunDue,
    RunReported,
    monthly_schedule,
    run_key,
    start_run,
)
from machines.fakes.billing import BillingService
from machines.fakes.mail import MailService
from statemachine import Client, Store, Worker
from statemachine.testing import FakeClock
from tests.procs import WorkerProcesses
from tests.waits import wait_until

# SQLite and PostgreSQL (read committed): the third backend of the suite, PostgreSQL at
# SERIALIZABLE, adds nothing these machines would notice and a third of the time.
pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)

FAST: dict[str, Any] = dict(concurrency=8, poll_interval=0.05)
PERIOD = "2030-01"


@pytest.fixture(name="bank")
def bank_fixture() -> Iterator[BillingService]:
    with BillingService() as bank:
        yield bank


@pytest.fixture(name="mail")
def mail_fixture() -> Iterator[MailService]:
    with MailService() as mail:
        yield mail


def machines_for(bank: BillingService, mail: MailService,
                 page_size: int = 2) -> list[BillingRun | CustomerInvoice]:
    return [BillingRun(bank.url, page_size=page_size), CustomerInvoice(bank.url, mail.url)]


def customers(bank: BillingService, n: int) -> list[str]:
    return [bank.add_customer(f"c{i}@example.com", plan_cents=1000 + i,
                              usage=[("seats", 100 * i)]) for i in range(n)]


def customer_of(row: Any) -> str | None:
    """The customer of an invoice workflow's stored row, whatever its state."""
    data = row.data
    return data.get("customer_id") or (data.get("invoice") or {}).get("customer_id")


def charged_once(bank: BillingService, ids: list[str]) -> None:
    """Each of `ids` paid exactly once for PERIOD, and no idempotency key charged twice."""
    assert {c: len(bank.paid(c, PERIOD)) for c in ids} == dict.fromkeys(ids, 1)
    assert set(bank.charges_per_key.values()) <= {1}


def test_a_run_pages_through_customers_and_bills_each_once(
    store: Store, bank: BillingService, mail: MailService
) -> None:
    ids = customers(bank, 5)
    added: list[str] = []

    def add_while_running(request: Any) -> bool:
        # When the run asks for its second page, a new customer signs up.
        if request.arg("starting_after") and not added:
            added.append(bank.add_customer("late@example.com"))
        return False

    bank.fail_next(1, "GET /customers", where=add_while_running)
    client = Client(store, [BillingRun, CustomerInvoice])
    with Worker(store, machines_for(bank, mail), **FAST):
        wid = start_run(client, PERIOD)
        info = client.wait(wid, timeout=60)
    everyone = sorted([*ids, *added])
    assert info.state == RunReported(PERIOD, paid=tuple(everyone), declined=(), failed=(),
                                     pages=3)
    charged_once(bank, everyone)
    assert bank.paid(ids[2], PERIOD)[0]["amount_cents"] == 1002 + 200  # plan + seats
    assert sorted(m["to"] for m in mail.sent) == sorted(
        [f"c{i}@example.com" for i in range(5)] + ["late@example.com"])
    assert set(mail.sends_per_key.values()) == {1}
    # The same month again: the same run, nothing started, nobody charged.
    assert start_run(client, PERIOD) == wid
    assert len(client.list(machine="billing_run")) == 1


def test_the_cap_holds_and_results_are_typed(store: Store, bank: BillingService,
                                             mail: MailService) -> None:
    ids = customers(bank, 14)
    bank.latency = 0.05
    client = Client(store, [BillingRun, CustomerInvoice])
    peak = [0]

    def running() -> int:
        return sum(1 for i in client.list(machine="customer_invoice")
                   if i.status in ("running",) or (i.status == "ready" and i.wake_at))

    with Worker(store, machines_for(bank, mail, page_size=100), concurrency=16,
                poll_interval=0.05):
        wid = start_run(client, PERIOD)

        def finished() -> bool:
            peak[0] = max(peak[0], running())
            return client.get(wid).finished

        wait_until(finished, "the run to finish", timeout=90)
    assert 1 <= peak[0] <= 10  # MAX_RUNNING
    assert client.get(wid).state == RunReported(PERIOD, tuple(ids), (), (), pages=1)
    charged_once(bank, ids)


def test_declined_cards_are_retried_twice_three_days_apart_then_suspended(
    db_url: str, bank: BillingService, mail: MailService
) -> None:
    clock = FakeClock(datetime(2030, 2, 1, 3, 0, tzinfo=UTC))
    store = Store(db_url, clock=clock)
    ok, late, broke = customers(bank, 3)
    bank.decline(late, times=1)  # pays on the first retry
    bank.decline(broke)  # never pays
    client = Client(store, [BillingRun, CustomerInvoice])
    try:
        with Worker(store, machines_for(bank, mail), **FAST):
            wid = start_run(client, PERIOD)
            def invoice(customer: str) -> Any:
                return next((c for c in store.sql.children_of(wid)
                             if customer_of(c) == customer), None)

            def dunning(customer: str, declines: int) -> bool:
                info = invoice(customer)
                return info is not None and info.state == "DunningDue" \
                    and info.data["declines"] == declines

            wait_until(lambda: dunning(late, 1) and dunning(broke, 1), "the first declines")
            assert client.get(invoice(broke).id).wake_at == clock.now() + timedelta(days=3)
            assert not client.get(wid).finished  # the run waits for its dunning customers
            clock.advance(days=3)
            wait_until(lambda: dunning(broke, 2), "the second decline")
            wait_until(lambda: invoice(late).state == "Paid", "the late payer")
            clock.advance(days=3)
            info = client.wait(wid, timeout=60)
    finally:
        store.dispose()
    assert info.state == RunReported(PERIOD, paid=(ok, late), declined=(broke,), failed=(),
                                     pages=2)
    assert bank.suspended == [broke]
    assert [c["status"] for c in bank.charges.values() if c["customer"] == broke] == [
        "failed"] * 3
    charged_once(bank, [ok, late])
    assert sorted(m["to"] for m in mail.sent) == ["c0@example.com", "c1@example.com"]


def test_failures_transient_and_permanent(store: Store, bank: BillingService,
                                          mail: MailService) -> None:
    ok, flaky, gone, bounced = customers(bank, 4)
    mail.rejected.add("c3@example.com")
    # The bank charges and the answer is lost, twice: retried with the same key, charged once.
    bank.fail_next(2, "POST /charges", status=503, after_effect=True,
                   where=lambda r: r.body.get("customer") == flaky)
    bank.fail_next(1, "GET /customers", status=502)  # the first page, once
    bank.fail_next(1, "POST /charges", drop=True, after_effect=True,
                   where=lambda r: r.body.get("customer") == ok)
    bank.fail_next(100, f"GET /customers/{gone}/usage", status=404)  # permanent: no retry
    client = Client(store, [BillingRun, CustomerInvoice])
    with Worker(store, machines_for(bank, mail, page_size=10), **FAST):
        wid = start_run(client, PERIOD)
        info = client.wait(wid, timeout=60)
    assert info.state == RunReported(PERIOD, paid=(ok, flaky, bounced), declined=(),
                                     failed=(gone,), unmailed=(bounced,), pages=1)
    charged_once(bank, [ok, flaky, bounced])
    assert len(bank.received(f"GET /customers/{gone}/usage")) == 1
    failed = next(c for c in store.sql.children_of(wid) if customer_of(c) == gone)
    state = client.get(failed.id).state
    assert isinstance(state, BillingFailed)
    assert (state.failed_in, state.failure.type) == ("InvoiceDue", "Rejected")
    assert "404" in state.failure.message


def test_the_run_and_its_invoices_may_run_on_different_workers(
    store: Store, bank: BillingService, mail: MailService
) -> None:
    """The run's worker need not know `CustomerInvoice`: its report reads the children's stored
    state names, not loaded states."""
    ids = customers(bank, 3)
    mail.rejected.add("c2@example.com")
    client = Client(store, [BillingRun, CustomerInvoice])
    with Worker(store, [BillingRun(bank.url, page_size=2)], **FAST), \
            Worker(store, [CustomerInvoice(bank.url, mail.url)], **FAST):
        wid = start_run(client, PERIOD)
        info = client.wait(wid, timeout=60)
    assert info.state == RunReported(PERIOD, paid=tuple(ids), declined=(), failed=(),
                                     unmailed=(ids[2],), pages=2)
    charged_once(bank, ids)


def test_the_schedule_starts_one_run_per_month_at_three_in_its_zone(
    db_url: str, bank: BillingService, mail: MailService
) -> None:
    clock = FakeClock(datetime(2030, 1, 31, 12, 0, tzinfo=UTC))
    store = Store(db_url, clock=clock)
    schedule = monthly_schedule("Europe/Berlin")
    client = Client(store, [BillingRun, CustomerInvoice])
    customers(bank, 2)
    try:
        workers = [Worker(store, machines_for(bank, mail), schedules=[schedule], **FAST)
                   for _ in range(2)]
        for w in workers:
            w.start()
        try:
            wait_until(lambda: schedule.name in store.sql.schedule_ticks(), "the first sweep")
            clock.set(datetime(2030, 2, 1, 2, 0, 30, tzinfo=UTC))  # 03:00:30 in Berlin
            runs = wait_until(lambda: client.list(machine="billing_run"), "the month's run")
            info = client.wait(runs[0].id, timeout=60)
        finally:
            for w in workers:
                w.stop()
        assert info.key == run_key(PERIOD, "Europe/Berlin")
        assert isinstance(info.state, RunReported)
        assert info.state.period == PERIOD
        # Started again by hand, the month is refused by its key: the same run comes back.
        assert start_run(client, PERIOD, "Europe/Berlin") == info.id
        assert len(client.list(machine="billing_run")) == 1
        assert len(bank.paid()) == 2
    finally:
        store.dispose()


@pytest.mark.slow
# (A kill after the mail API answered is test_drip's: the same mail API, the same key rule.)
@pytest.mark.parametrize("moment", ["after POST /charges", "after GET /customers"])
def test_a_worker_killed_at_the_worst_moment_charges_and_mails_nobody_twice(
    db_url: str, tmp_path: Path, bank: BillingService, mail: MailService, moment: str
) -> None:
    ids = customers(bank, 4)
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {"BILLING_API_URL": bank.url, "MAIL_API_URL": mail.url, "BILLING_PAGE_SIZE": "3",
           "JOBS_KILL": moment, "JOBS_MARKS": str(marks)}
    store = Store(db_url)
    client = Client(store, [BillingRun, CustomerInvoice])
    try:
        with WorkerProcesses(db_url, tmp_path / "logs", env=env) as workers:
            workers.spawn("w1", "tests.jobs_apps:billing")
            wid = client.start(BillingRun, RunDue(PERIOD), key=run_key(PERIOD))
            wait_until(lambda: (marks / "killed").exists()
                       and workers.procs["w1"].poll() is not None, "w1 to die at " + moment)
            workers.spawn("w2", "tests.jobs_apps:billing")
            info = client.wait(wid, timeout=90)
        assert info.state == RunReported(PERIOD, paid=tuple(ids), declined=(), failed=(),
                                         pages=2)
        charged_once(bank, ids)
        assert sorted(mail.sends_per_key.values()) == [1] * 4
        assert len(mail.sent) == 4
    finally:
        store.dispose()
