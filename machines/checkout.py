"""A checkout saga: reserve stock, charge the card, extend the subscription, confirm the order.

Each step does one thing, and each way that can go wrong is a state you can see in the database::

    CheckoutStarted
      |  reserve_stock ------------------------------> OutOfStock
      v
    StockReserved <---+  find_charge: it did not happen, charge again
      |  charge_card -+
      |  charge_card fails for good (declined) ---------------+
      v                                                       |
    Charged                                                   |
      |  extend_subscription fails for good ---> Refunding    |
      v                                            |  refund  |
    SubscriptionExtended                           v          v
      |  confirm (transactional)                  ReleasingStock
      v                                            |  release_stock
    Completed                                      v
                                    Refunded | PaymentDeclined | PaymentFailed

How each side effect is made safe:

- **Stock and subscription** calls send ``Idempotency-Key: ctx.idempotency_key``. A retried
  attempt sends the same key, so the service does the work once; the next step gets a new key.
- **The charge** is `at_most_once`: an attempt that may have charged (the worker died, the call
  timed out or got a 5xx) is never re-run blindly. `find_charge` asks the payment service whether
  a charge with that attempt's key exists, and either moves on with it or charges again.
- **The order row** is written by a transactional step through ``ctx.connection``: it commits in
  the same transaction as the state change, so there is never one without the other.
- **Compensations** are ordinary states: a subscription that cannot be extended is refunded and
  the stock released; a declined card releases the stock. They carry the `Failure` that sent the
  workflow there.

Nothing short-lived is kept in a state: the token for the subscription service is fetched by the
handler each time it runs, and the stock is looked at afresh by every attempt.

Run it: ``statemachine worker --app machines.checkout:from_env`` with ``CHECKOUT_PAYMENTS_URL``,
``CHECKOUT_STOCK_URL`` and ``CHECKOUT_SUBSCRIPTIONS_URL`` set.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
import httpx
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, insert

from statemachine import (
    Context,
    Failure,
    Machine,
    PermanentError,
    Rerun,
    RetryPolicy,
    rerun,
    step,
)

# -- the order, and the states it goes through ---------------------------------------------------


@attrs.frozen
class Order:
    order_id: str
    customer_id: str
    items: dict[str, int]  # sku -> quantity
    amount_cents: int
    card: str  # a card token from the payment service's checkout form
    months: int = 1  # subscription months bought


@attrs.frozen
class CheckoutStarted:
    order: Order


@attrs.frozen
class StockReserved:
    order: Order
    reservation_id: str


@attrs.frozen
class Charged:
    order: Order
    reservation_id: str
    charge_id: str


@attrs.frozen
class SubscriptionExtended:
    order: Order
    charge_id: str
    paid_months: int


@attrs.frozen
class Completed:
    order: Order
    charge_id: str


@attrs.frozen
class OutOfStock:
    order: Order
    missing: dict[str, int]  # sku -> how many short


@attrs.frozen
class Refunding:
    order: Order
    reservation_id: str
    charge_id: str
    failure: Failure  # why the subscription could not be extended


@attrs.frozen
class ReleasingStock:
    order: Order
    reservation_id: str
    failure: Failure
    refund_id: str | None = None


@attrs.frozen
class Refunded:
    order: Order
    refund_id: str
    failure: Failure


@attrs.frozen
class PaymentDeclined:
    order: Order
    failure: Failure


@attrs.frozen
class PaymentFailed:
    """The payment service kept failing: nothing was charged, the stock is released."""

    order: Order
    failure: Failure


# -- the orders table, written by the confirm step -----------------------------------------------

metadata = MetaData()
orders = Table(
    "orders", metadata,
    Column("order_id", String(64), primary_key=True),
    Column("customer_id", String(64), nullable=False),
    Column("amount_cents", Integer, nullable=False),
    Column("charge_id", String(64), nullable=False),
    Column("workflow_id", String(36), nullable=False),
    Column("confirmed_at", DateTime(timezone=True), nullable=False),
)

# -- the services --------------------------------------------------------------------------------


class ServiceError(Exception):
    """A service failed in a way worth retrying: 5xx, 429, or a token that expired in flight."""


class Rejected(PermanentError):
    """A service refused the request (4xx): retrying will not help."""


class CardDeclined(Rejected):
    """The payment service declined the card."""


def _reply(response: httpx.Response) -> Any:
    """The JSON body of a successful response; `ServiceError` or `Rejected` otherwise."""
    if response.is_success:
        return response.json()
    what = f"{response.request.method} {response.request.url.path}: {response.status_code}"
    if response.status_code >= 500 or response.status_code in (401, 429):
        raise ServiceError(f"{what} {response.text[:200]}")
    if response.status_code == 402:
        raise CardDeclined(f"{what} {response.text[:200]}")
    raise Rejected(f"{what} {response.text[:200]}")


@attrs.define
class StockAPI:
    url: str
    http: httpx.Client

    def shortfall(self, items: dict[str, int]) -> dict[str, int]:
        """What is missing for `items` right now (empty: everything is on the shelf)."""
        available = _reply(self.http.get(f"{self.url}/stock", params={"sku": list(items)}))
        return {sku: quantity - available["available"].get(sku, 0)
                for sku, quantity in items.items()
                if available["available"].get(sku, 0) < quantity}

    def reserve(self, order: Order, key: str) -> str | dict[str, int]:
        """A reservation id, or what is missing (sold out meanwhile)."""
        response = self.http.post(f"{self.url}/reservations", headers={"Idempotency-Key": key},
                                  json={"order_id": order.order_id, "items": order.items})
        if response.status_code == 409:
            missing: dict[str, int] = response.json()["missing"]
            return missing
        reservation_id: str = _reply(response)["id"]
        return reservation_id

    def release(self, reservation_id: str) -> None:
        _reply(self.http.post(f"{self.url}/reservations/{reservation_id}/release"))


@attrs.define
class PaymentsAPI:
    url: str
    http: httpx.Client

    def charge(self, order: Order, key: str) -> str:
        """Charge the order's card; the charge id. The same key never charges twice."""
        charge = _reply(self.http.post(
            f"{self.url}/charges", headers={"Idempotency-Key": key},
            json={"order_id": order.order_id, "amount": order.amount_cents,
                  "source": order.card}))
        charge_id: str = charge["id"]
        return charge_id

    def find_charge(self, key: str) -> dict[str, Any] | None:
        """The charge made by the request sent with idempotency `key`, if there was one."""
        found = _reply(self.http.get(f"{self.url}/charges", params={"idempotency_key": key}))
        return found["data"][0] if found["data"] else None

    def refund(self, charge_id: str, key: str) -> str:
        refund = _reply(self.http.post(f"{self.url}/refunds", headers={"Idempotency-Key": key},
                                       json={"charge": charge_id}))
        refund_id: str = refund["id"]
        return refund_id


@attrs.define
class SubscriptionsAPI:
    url: str
    http: httpx.Client
    client_id: str = "checkout"

    def token(self) -> str:
        """A fresh access token. It expires within minutes: never keep one in a state."""
        token: str = _reply(self.http.post(f"{self.url}/oauth/token",
                                           json={"client_id": self.client_id}))["access_token"]
        return token

    def extend(self, order: Order, token: str, key: str) -> int:
        """Add the order's months to the customer's subscription; the months now paid."""
        extended = _reply(self.http.post(
            f"{self.url}/subscriptions/{order.customer_id}/extend",
            headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key},
            json={"order_id": order.order_id, "months": order.months}))
        paid: int = extended["paid_months"]
        return paid


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
