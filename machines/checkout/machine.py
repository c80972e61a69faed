"""The checkout saga itself: its steps, compensations and the charge's reconcile handler (see the
package's docstring for the story)."""

from __future__ import annotations

import os

import attrs
import httpx
from sqlalchemy import insert

from machines.checkout.api import CardDeclined, PaymentsAPI, StockAPI, SubscriptionsAPI
from machines.checkout.states import (
    Charged,
    CheckoutStarted,
    Completed,
    OutOfStock,
    PaymentDeclined,
    PaymentFailed,
    Refunded,
    Refunding,
    ReleasingStock,
    StockReserved,
    SubscriptionExtended,
    orders,
)
from statemachine import (
    Context,
    Failure,
    Machine,
    Rerun,
    RetryPolicy,
    rerun,
    step,
)

# -- the machine ---------------------------------------------------------------------------------

# Transient failures (5xx, timeouts) are retried quickly at first, then less often.
SERVICE_RETRY = RetryPolicy(max_attempts=5, initial_delay=0.2, max_delay=10.0)


def _brief(failure: Failure) -> Failure:
    """The failure as a state keeps it: type and message (the traceback is in sm_history)."""
    return attrs.evolve(failure, traceback="")


class CheckoutSaga(Machine, abstract=True):
    """Every step of the checkout except the charge, which `Checkout` declares (tests declare
    variants of it on this same base)."""

    initial = CheckoutStarted
    terminal = (Completed, OutOfStock, Refunded, PaymentDeclined, PaymentFailed)

    def __init__(self, *, payments_url: str, stock_url: str, subscriptions_url: str,
                 http: httpx.Client | None = None) -> None:
        self.http = http or httpx.Client(timeout=10.0)
        self.payments = PaymentsAPI(payments_url, self.http)
        self.stock = StockAPI(stock_url, self.http)
        self.subscriptions = SubscriptionsAPI(subscriptions_url, self.http)

    @step(retry=SERVICE_RETRY)
    def reserve_stock(self, state: CheckoutStarted, ctx: Context) -> StockReserved | OutOfStock:
        # Looked at now, on every attempt: a check made before a crash says nothing about today.
        missing = self.stock.shortfall(state.order.items)
        if missing:
            return OutOfStock(state.order, missing)
        reserved = self.stock.reserve(state.order, key=ctx.idempotency_key)
        if isinstance(reserved, dict):  # sold out between the look and the reservation
            return OutOfStock(state.order, reserved)
        return StockReserved(state.order, reservation_id=reserved)

    @step(retry=SERVICE_RETRY)
    def extend_subscription(self, state: Charged, ctx: Context) -> SubscriptionExtended:
        token = self.subscriptions.token()  # fresh on every attempt, never stored
        paid = self.subscriptions.extend(state.order, token=token, key=ctx.idempotency_key)
        return SubscriptionExtended(state.order, state.charge_id, paid_months=paid)

    @extend_subscription.on_error
    def refund_charge(self, state: Charged, failure: Failure, ctx: Context) -> Refunding:
        return Refunding(state.order, state.reservation_id, state.charge_id, _brief(failure))

    @step(transactional=True)
    def confirm(self, state: SubscriptionExtended, ctx: Context) -> Completed:
        # Commits with the move to Completed, or not at all. No HTTP in here.
        ctx.connection.execute(insert(orders).values(
            order_id=state.order.order_id, customer_id=state.order.customer_id,
            amount_cents=state.order.amount_cents, charge_id=state.charge_id,
            workflow_id=str(ctx.workflow_id), confirmed_at=ctx.now()))
        return Completed(state.order, state.charge_id)

    @step(retry=RetryPolicy(max_attempts=8, initial_delay=0.5, max_delay=60.0))
    def refund(self, state: Refunding, ctx: Context) -> ReleasingStock:
        refund_id = self.payments.refund(state.charge_id, key=ctx.idempotency_key)
        return ReleasingStock(state.order, state.reservation_id, state.failure, refund_id)

    @step(retry=RetryPolicy(max_attempts=8, initial_delay=0.5, max_delay=60.0))
    def release_stock(self, state: ReleasingStock,
                      ctx: Context) -> Refunded | PaymentDeclined | PaymentFailed:
        self.stock.release(state.reservation_id)  # releasing twice gives nothing back twice
        if state.refund_id is not None:
            return Refunded(state.order, state.refund_id, state.failure)
        if state.failure.type == CardDeclined.__name__:
            return PaymentDeclined(state.order, state.failure)
        return PaymentFailed(state.order, state.failure)

    def release_after_failed_charge(self, state: StockReserved, failure: Failure,
                                    ctx: Context) -> ReleasingStock:
        """What the charge step's error route does (declined, or another 4xx)."""
        return ReleasingStock(state.order, state.reservation_id, _brief(failure))


class Checkout(CheckoutSaga):
    """The checkout as it runs in production: an at-most-once charge with a reconcile step."""

    name = "checkout"

    @step(at_most_once=True, retry=SERVICE_RETRY)
    def charge_card(self, state: StockReserved, ctx: Context) -> Charged:
        charge_id = self.payments.charge(state.order, key=ctx.idempotency_key)
        return Charged(state.order, state.reservation_id, charge_id)

    @charge_card.reconcile
    def find_charge(self, state: StockReserved, ctx: Context
                    ) -> Charged | ReleasingStock | Rerun:
        # Runs instead of charge_card after an attempt that may have charged. Same transition,
        # so ctx.idempotency_key is the key that attempt sent.
        charge = self.payments.find_charge(ctx.idempotency_key)
        if charge is not None and charge["status"] == "succeeded":
            return Charged(state.order, state.reservation_id, charge["id"])
        if charge is not None:  # it was declined, and the answer got lost
            return ReleasingStock(state.order, state.reservation_id, Failure(
                type=CardDeclined.__name__, message=f"charge {charge['id']} failed",
                attempt=ctx.attempt, permanent=True))
        # It did not happen: charge again with the SAME key, after the step's retry backoff. Were
        # that attempt still in flight somewhere (a frozen worker), the service would dedupe it.
        # With no attempts left the step fails for good: its error route releases the stock.
        return rerun()

    @charge_card.on_error
    def charge_refused(self, state: StockReserved, failure: Failure,
                       ctx: Context) -> ReleasingStock:
        return self.release_after_failed_charge(state, failure, ctx)


def from_env(machine: type[CheckoutSaga] = Checkout,
             http: httpx.Client | None = None) -> CheckoutSaga:
    """The checkout configured from ``CHECKOUT_*_URL``: what ``--app machines.checkout:from_env``
    gives a worker."""
    return machine(payments_url=os.environ["CHECKOUT_PAYMENTS_URL"],
                   stock_url=os.environ["CHECKOUT_STOCK_URL"],
                   subscriptions_url=os.environ["CHECKOUT_SUBSCRIPTIONS_URL"], http=http)

