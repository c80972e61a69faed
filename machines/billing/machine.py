"""Monthly billing in batches: one run per month pages through the customers and starts one
invoice child per customer, at most `MAX_RUNNING` at once.

The run (`BillingRun`)::

    RunDue --fetch_page--> PageStarted --next_page (at once)--> RunDue
       \\--(last page)--> AllPagesStarted --collect (every invoice finished)--> RunReported

One invoice (`CustomerInvoice`)::

    InvoiceDue --compute_invoice--> InvoiceReady --charge--> Charged --email_invoice--> Paid
                                      |  declined: in 3 days                 (mail failed:
                                      v                                       PaidUnmailed)
                                    DunningDue --retry_charge--> Charged
                                      |  declined twice more
                                      v
                                    SuspensionDue --suspend_account--> Suspended

    any step failing for good (a 4xx, or out of retries) --> BillingFailed

Why nobody is charged twice: the charge sends the transition's idempotency key
(``ctx.idempotency_key``), the same on every retry of that transition, so a retried charge (a
timeout, a 5xx, a worker killed after the bank said yes) is the same charge; each dunning retry is
a new transition, hence a new key, hence a new charge attempt. A customer has one invoice per
period: its child is started with the key ``invoice:PERIOD:CUSTOMER``, and the pages come by
cursor, so a customer added mid-run shows up once, on a later page. A page's children are written
in the same commit as the move to `PageStarted`: a run killed while fetching a page starts none,
and the retry starts them once.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import attrs
import httpx

from machines._http import client
from machines.billing.api import BillingAPI, CardDeclined, MailAPI
from statemachine import (
    ChildResult,
    Context,
    Delayed,
    Failure,
    Machine,
    RetryPolicy,
    later,
    on_children,
    on_timeout,
    state_name,
    step,
)

__all__ = [
    "DUNNING_DELAY",
    "DUNNING_RETRIES",
    "MAX_RUNNING",
    "AllPagesStarted",
    "BillingFailed",
    "BillingRun",
    "Charged",
    "CustomerInvoice",
    "DunningDue",
    "Invoice",
    "InvoiceDue",
    "InvoiceLine",
    "InvoiceReady",
    "PageStarted",
    "Paid",
    "PaidUnmailed",
    "RunDue",
    "RunReported",
    "Suspended",
    "SuspensionDue",
]

MAX_RUNNING = 10  # invoices of one run in flight at once, across every worker
DUNNING_DELAY = timedelta(days=3)  # a declined card is tried again this long after
DUNNING_RETRIES = 2  # ... this many times, then the account is suspended

# Transient failures (5xx, timeouts, dropped connections) are retried quickly, then less often;
# the same idempotency key every time, so the service does the work once.
SERVICE_RETRY = RetryPolicy(max_attempts=6, initial_delay=0.2, max_delay=30.0)


# -- one customer's invoice ----------------------------------------------------------------------


@attrs.frozen
class InvoiceLine:
    description: str
    amount_cents: int


@attrs.frozen
class Invoice:
    customer_id: str
    email: str
    period: str  # YYYY-MM
    lines: tuple[InvoiceLine, ...]

    @property
    def amount_cents(self) -> int:
        return sum(line.amount_cents for line in self.lines)


@attrs.frozen
class InvoiceDue:
    customer_id: str
    email: str
    period: str


@attrs.frozen
class InvoiceReady:
    invoice: Invoice


@attrs.frozen
class DunningDue:
    """The card was declined `declines` times; the next try is this state's transition."""

    invoice: Invoice
    declines: int
    last_charge_id: str


@attrs.frozen
class Charged:
    invoice: Invoice
    charge_id: str


@attrs.frozen
class SuspensionDue:
    invoice: Invoice
    declines: int


@attrs.frozen
class Paid:
    invoice: Invoice
    charge_id: str
    message_id: str


@attrs.frozen
class PaidUnmailed:
    """Paid, but the invoice mail could not be sent (the address bounced, say)."""

    invoice: Invoice
    charge_id: str
    failure: Failure


@attrs.frozen
class Suspended:
    invoice: Invoice
    declines: int


@attrs.frozen
class BillingFailed:
    """A step failed for good: what failed, and the state it failed in."""

    customer_id: str
    period: str
    failed_in: str
    failure: Failure


def _brief(failure: Failure) -> Failure:
    """The failure as a state keeps it (the traceback is in sm_history)."""
    return attrs.evolve(failure, traceback="")


class CustomerInvoice(Machine):
    """Bill one customer for one period: compute, charge, mail; dunning on a declined card."""

    name = "customer_invoice"
    initial = InvoiceDue
    terminal = (Paid, PaidUnmailed, Suspended, BillingFailed)

    def __init__(self, billing_url: str, mail_url: str,
                 http: httpx.Client | None = None) -> None:
        self.http = client(http)
        self.billing = BillingAPI(billing_url, self.http)
        self.mail = MailAPI(mail_url, self.http)

    @step(retry=SERVICE_RETRY)
    def compute_invoice(self, state: InvoiceDue, ctx: Context) -> InvoiceReady:
        lines = self.billing.usage(state.customer_id, state.period)
        return InvoiceReady(Invoice(state.customer_id, state.email, state.period, tuple(
            InvoiceLine(str(line["description"]), int(line["amount_cents"])) for line in lines)))

    def _charge(self, invoice: Invoice, declines: int,
                ctx: Context) -> Charged | Delayed[DunningDue] | SuspensionDue:
        try:
            charge_id = self.billing.charge(invoice.customer_id, invoice.amount_cents,
                                            invoice.period, key=ctx.idempotency_key)
        except CardDeclined as declined:
            if declines >= DUNNING_RETRIES:
                return SuspensionDue(invoice, declines + 1)
            ctx.log.info("card of %s declined; trying again in %s", invoice.customer_id,
                         DUNNING_DELAY)
            return later(DunningDue(invoice, declines + 1, declined.charge_id),
                         after=DUNNING_DELAY)
        return Charged(invoice, charge_id)

    @step(retry=SERVICE_RETRY)
    def charge(self, state: InvoiceReady,
               ctx: Context) -> Charged | Delayed[DunningDue] | SuspensionDue:
        return self._charge(state.invoice, 0, ctx)

    @step(retry=SERVICE_RETRY)
    def retry_charge(self, state: DunningDue,
                     ctx: Context) -> Charged | Delayed[DunningDue] | SuspensionDue:
        return self._charge(state.invoice, state.declines, ctx)

    @step(retry=SERVICE_RETRY)
    def email_invoice(self, state: Charged, ctx: Context) -> Paid:
        invoice = state.invoice
        message_id = self.mail.send(invoice.email, "invoice", {
            "customer": invoice.customer_id, "period": invoice.period,
            "amount_cents": invoice.amount_cents, "charge": state.charge_id,
            "lines": [attrs.asdict(line) for line in invoice.lines]}, key=ctx.idempotency_key)
        return Paid(invoice, state.charge_id, message_id)

    @email_invoice.on_error
    def invoice_unmailed(self, state: Charged, failure: Failure, ctx: Context) -> PaidUnmailed:
        return PaidUnmailed(state.invoice, state.charge_id, _brief(failure))

    @step(retry=SERVICE_RETRY)
    def suspend_account(self, state: SuspensionDue, ctx: Context) -> Suspended:
        self.billing.suspend(state.invoice.customer_id, key=ctx.idempotency_key)
        return Suspended(state.invoice, state.declines)

    # One route for four steps (stacked). `on_error` is annotated to take a plain function,
    # not another step's route, hence the ignores (statemachine's typing, not a misuse).
    @compute_invoice.on_error
    @charge.on_error
    @retry_charge.on_error
    @suspend_account.on_error
    def billing_failed(self, state: InvoiceDue | InvoiceReady | DunningDue | SuspensionDue,
                       failure: Failure, ctx: Context) -> BillingFailed:
        customer_id = state.customer_id if isinstance(state, InvoiceDue) \
            else state.invoice.customer_id
        period = state.period if isinstance(state, InvoiceDue) else state.invoice.period
        return BillingFailed(customer_id, period, type(state).__name__, _brief(failure))


# -- the run -------------------------------------------------------------------------------------


@attrs.frozen
class RunDue:
    """Bill `period`: fetch the page of customers after `cursor` (None: the first page)."""

    period: str
    cursor: str | None = None
    pages: int = 0
    customers: int = 0


@attrs.frozen
class PageStarted:
    """A page's invoices are started (queued under the cap); the next page is fetched at once."""

    period: str
    cursor: str | None  # the last customer of this page
    pages: int
    customers: int


@attrs.frozen
class AllPagesStarted:
    """Every customer has an invoice; the run waits for them all (dunning included)."""

    period: str
    pages: int
    customers: int


@attrs.frozen
class RunReported:
    """The run's report: the customers paid, declined (suspended) and failed, by id."""

    period: str
    paid: tuple[str, ...]
    declined: tuple[str, ...]
    failed: tuple[str, ...]
    unmailed: tuple[str, ...] = ()  # paid, but the invoice mail was not sent
    pages: int = 0


def report(period: str, pages: int, children: list[ChildResult]) -> RunReported:
    """The report of a run from its invoices' results. It reads each child's state name and
    stored data, not its loaded state, so a worker that runs only `BillingRun` reports the same;
    a child parked or cancelled (not done) is failed."""
    paid: list[str] = []
    declined: list[str] = []
    failed: list[str] = []
    unmailed: list[str] = []
    for child in children:
        customer = _customer_of(child)
        outcome = child.state_name if child.succeeded else "failed"
        if outcome in (state_name(Paid), state_name(PaidUnmailed)):
            paid.append(customer)
            if outcome == state_name(PaidUnmailed):
                unmailed.append(customer)
        elif outcome == state_name(Suspended):
            declined.append(customer)
        else:
            failed.append(customer)
    return RunReported(period, tuple(sorted(paid)), tuple(sorted(declined)),
                       tuple(sorted(failed)), tuple(sorted(unmailed)), pages)


def _customer_of(child: ChildResult) -> str:
    """The customer of an invoice, from its stored data, whatever its state: ``customer_id``
    (InvoiceDue, BillingFailed) or ``invoice.customer_id`` (every other state)."""
    data: Any = child.data if isinstance(child.data, dict) else {}
    if "customer_id" in data:
        return str(data["customer_id"])
    return str((data.get("invoice") or {}).get("customer_id", child.id))


class BillingRun(Machine):
    """One month's billing: page through the customers, one `CustomerInvoice` child each.

    Every page's invoices are started queued, and at most `MAX_RUNNING` of the run's invoices run
    at once, whichever page they came from (the cap counts all the run's children). The run does
    not wait for a page before fetching the next: an invoice in dunning for six days holds up no
    other customer. A page's children are started on the way into `PageStarted`, a state that
    waits for children (so they are queued under the cap), with a zero timeout that moves on to
    the next page right away; `AllPagesStarted` then waits for them all.
    """

    name = "billing_run"
    initial = RunDue
    terminal = (RunReported,)

    def __init__(self, billing_url: str, page_size: int = 100,
                 http: httpx.Client | None = None) -> None:
        self.billing = BillingAPI(billing_url, client(http))
        self.page_size = page_size

    @step(retry=SERVICE_RETRY)
    def fetch_page(self, state: RunDue, ctx: Context) -> PageStarted | AllPagesStarted:
        customers, has_more = self.billing.customers(after=state.cursor, limit=self.page_size)
        for customer in customers:
            ctx.start_child(CustomerInvoice, InvoiceDue(customer["id"], customer["email"],
                                                        state.period),
                            key=f"invoice:{state.period}:{customer['id']}")
        pages, count = state.pages + 1, state.customers + len(customers)
        if has_more and customers:
            return PageStarted(state.period, customers[-1]["id"], pages, count)
        return AllPagesStarted(state.period, pages, count)

    @on_timeout(after=0)
    def next_page(self, state: PageStarted, ctx: Context) -> RunDue:
        return RunDue(state.period, state.cursor, state.pages, state.customers)

    @on_children(max_running=MAX_RUNNING)
    def page_finished(self, state: PageStarted, children: list[ChildResult],
                      ctx: Context) -> RunDue:
        # Only when the page's invoices were all done before the timeout was looked at.
        return RunDue(state.period, state.cursor, state.pages, state.customers)

    @on_children(max_running=MAX_RUNNING)
    def collect(self, state: AllPagesStarted, children: list[ChildResult],
                ctx: Context) -> RunReported:
        return report(state.period, state.pages, children)
