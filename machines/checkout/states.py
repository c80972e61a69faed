"""The checkout's order, the states it goes through, and the orders table the confirm step
writes."""

from __future__ import annotations

import attrs
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table

from statemachine import Failure


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

