"""The machines the how-to guides quote, run by ``tests/acceptance/test_docs.py`` on every backend.

- `Trial` (docs/how-to/waiting.md): a 14-day trial that waits for an event (`PlanChosen`) or its
  deadline, sleeps 30 days on a durable timer, and purges the account at once when cancelled.
- `BillingBatch`, `CustomerBilling` and `MONTHLY_BILLING` (docs/how-to/cron-batches.md and
  docs/how-to/rate-limits.md): a monthly schedule starts a batch that bills every customer in a
  child workflow, ten at a time, each call to the payment provider under a shared `Limit` and
  honouring its ``Retry-After``.

The services are in-process fakes (the e-mail and account service) or an ``httpx.Client`` the
test gives a mock transport (the payment provider), so the machines run as they would against
real ones. The guides quote this file verbatim; a test checks that they still do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import attrs
import httpx

from statemachine import (
    ChildResult,
    Context,
    Delayed,
    Limit,
    Machine,
    PermanentError,
    RetryAfter,
    RetryPolicy,
    Schedule,
    later,
    on_cancel,
    on_children,
    on_event,
    on_timeout,
    step,
)

# -- a trial: events, a deadline, a timer, a cancel route ----------------------------------------

TRIAL = timedelta(days=14)
KEEP_DATA = timedelta(days=30)


class Accounts:
    """A fake account service: e-mails sent (deduplicated by key, as e-mail APIs do) and the
    accounts whose data was purged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.mails: dict[str, tuple[str, str]] = {}
        self.purged: list[str] = []

    def mail(self, account: str, text: str, *, key: str) -> None:
        with self._lock:
            self.mails.setdefault(key, (account, text))

    def purge(self, account: str) -> None:
        with self._lock:
            if account not in self.purged:
                self.purged.append(account)


@attrs.frozen
class TrialRequested:
    account: str


@attrs.frozen
class OnTrial:
    account: str
    ends_at: datetime


@attrs.frozen
class PlanChosen:
    """An event: the customer chose a paid plan."""

    plan: str


@attrs.frozen
class Subscribed:
    account: str
    plan: str


@attrs.frozen
class TrialExpired:
    account: str


@attrs.frozen
class PurgeDue:
    account: str


@attrs.frozen
class Purged:
    account: str


class Trial(Machine):
    """A trial ends when the customer chooses a plan, or when its time is up; an expired trial's
    data is purged 30 days later, or at once when the account is closed (the workflow cancelled)."""

    name = "trial"
    initial = TrialRequested
    terminal = (Subscribed, Purged)

    def __init__(self, accounts: Accounts | None = None) -> None:
        self.accounts = accounts or Accounts()

    @step
    def start_trial(self, state: TrialRequested, ctx: Context) -> OnTrial:
        self.accounts.mail(state.account, "Welcome! Your trial runs for 14 days.",
                           key=ctx.idempotency_key)
        return OnTrial(state.account, ends_at=ctx.now() + TRIAL)

    @on_event
    def choose_plan(self, state: OnTrial, event: PlanChosen, ctx: Context) -> Subscribed:
        return Subscribed(state.account, event.plan)

    @on_timeout(at=lambda state: state.ends_at)
    def expire(self, state: OnTrial, ctx: Context) -> TrialExpired:
        return TrialExpired(state.account)

    @step
    def announce_expiry(self, state: TrialExpired, ctx: Context) -> Delayed[PurgeDue]:
        self.accounts.mail(state.account, "Your trial has ended. We keep your data for 30 days.",
                           key=ctx.idempotency_key)
        return later(PurgeDue(state.account), after=KEEP_DATA)

    @step
    def purge(self, state: PurgeDue, ctx: Context) -> Purged:
        self.accounts.purge(state.account)
        return Purged(state.account)

    @on_cancel
    def close_account(self, state: OnTrial | TrialExpired | PurgeDue, ctx: Context) -> PurgeDue:
        # The customer closed the account: purge the data now, not in 30 days.
        return PurgeDue(state.account)


# -- monthly billing: a schedule, a batch, a child per customer, a rate limit --------------------

BERLIN = ZoneInfo("Europe/Berlin")


@attrs.frozen
class InvoiceDue:
    customer_id: str
    period: str  # the month billed: "2030-01"


@attrs.frozen
class Invoiced:
    customer_id: str
    period: str
    invoice_id: str


# The payment provider takes 4 requests at once and 20 a second from us, across all our workers.
PAYMENTS_API = Limit(key="payments-api", concurrency=4, per_second=20)


class CustomerBilling(Machine):
    """Bills one customer for one month: one call to the payment provider's invoicing API."""

    name = "customer_billing"
    initial = InvoiceDue
    terminal = (Invoiced,)

    def __init__(self, payments_url: str = "https://payments.example",
                 http: httpx.Client | None = None) -> None:
        self.payments_url = payments_url
        self.http = http or httpx.Client(timeout=10.0)

    @step(limit=PAYMENTS_API, retry=RetryPolicy(max_attempts=5, initial_delay=2.0))
    def bill(self, state: InvoiceDue, ctx: Context) -> Invoiced:
        response = self.http.post(
            f"{self.payments_url}/invoices", headers={"Idempotency-Key": ctx.idempotency_key},
            json={"customer": state.customer_id, "period": state.period})
        if response.status_code == 429:  # too many requests: not a failure, only "not now"
            raise RetryAfter.from_header(response.headers.get("Retry-After"))
        if response.is_client_error:  # any other 4xx: retrying will not help
            raise PermanentError(f"{response.status_code} {response.text[:200]}")
        response.raise_for_status()  # 5xx: retried with the policy's backoff
        return Invoiced(state.customer_id, state.period, response.json()["id"])


@attrs.frozen
class BillingDue:
    period: str


@attrs.frozen
class BillingCustomers:
    period: str
    customers: int


@attrs.frozen
class BillingDone:
    period: str
    billed: int
    failed: tuple[str, ...]  # customers whose billing was parked, for a human to look at


class BillingBatch(Machine):
    """The monthly billing run: one child workflow per customer, at most ten running at once."""

    name = "billing_batch"
    initial = BillingDue
    terminal = (BillingDone,)

    def __init__(self, customers: Callable[[str], list[str]] = lambda period: []) -> None:
        self.customers = customers  # the customers to bill for a period (a query, in real life)

    @step
    def fan_out(self, state: BillingDue, ctx: Context) -> BillingCustomers:
        customers = self.customers(state.period)
        for customer_id in customers:
            ctx.start_child(CustomerBilling, InvoiceDue(customer_id, state.period))
        return BillingCustomers(state.period, len(customers))

    @on_children(max_running=10)
    def collect(self, state: BillingCustomers, children: list[ChildResult],
                ctx: Context) -> BillingDone:
        failed = tuple(c.data["customer_id"] for c in children if not c.succeeded)
        return BillingDone(state.period, billed=len(children) - len(failed), failed=failed)


def billing_run(tick: datetime) -> BillingDue:
    """The batch a tick starts: the run on the 1st bills the month that just ended."""
    first_of_month = tick.astimezone(BERLIN).date()
    return BillingDue(period=f"{first_of_month - timedelta(days=1):%Y-%m}")


MONTHLY_BILLING = Schedule("monthly-billing", cron="0 6 1 * *", timezone="Europe/Berlin",
                           machine=BillingBatch, start=billing_run, missed="latest")
