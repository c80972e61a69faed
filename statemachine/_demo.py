"""An order that is charged, shipped and confirmed: the demo machine (`statemachine demo`).

It ships inside the package, so `statemachine demo` works wherever statemachine is installed; the
repository's ``machines/order.py`` re-exports it (``--app machines.order:Order``).

The payment and shipping "services" are in-process fakes with the failure modes of real ones: the
payment gateway fails transiently once per order, and declines cards marked as such. They dedupe
by idempotency key, as real payment APIs do, so a retried charge never charges twice.
"""

from __future__ import annotations

import threading
from datetime import datetime

import attrs

from statemachine import Context, Failure, Machine, PermanentError, RetryPolicy, step

__all__ = [
    "CardDeclined",
    "Charged",
    "Confirmed",
    "FakePaymentGateway",
    "GatewayUnavailable",
    "Order",
    "OrderPlaced",
    "PaymentFailed",
    "Shipped",
]


@attrs.frozen
class OrderPlaced:
    order_id: str
    amount_cents: int
    card: str = "4242"


@attrs.frozen
class Charged:
    order_id: str
    charge_id: str


@attrs.frozen
class Shipped:
    order_id: str
    tracking: str
    shipped_at: datetime


@attrs.frozen
class Confirmed:
    order_id: str
    tracking: str


@attrs.frozen
class PaymentFailed:
    order_id: str
    reason: str


class GatewayUnavailable(Exception):
    """A transient payment gateway error (HTTP 503)."""


class CardDeclined(PermanentError):
    """The card was declined: retrying will not help."""


class FakePaymentGateway:
    """Charges by idempotency key; fails the first call for each order, declines card '0000'."""

    def __init__(self, flaky: bool = True) -> None:
        self.flaky = flaky
        self.charges: dict[str, str] = {}  # idempotency key -> charge id
        self._failed_once: set[str] = set()
        self._lock = threading.Lock()

    def charge(self, order_id: str, amount_cents: int, card: str, idempotency_key: str) -> str:
        with self._lock:
            if self.flaky and order_id not in self._failed_once:
                self._failed_once.add(order_id)
                raise GatewayUnavailable("payment gateway returned 503")
            if card == "0000":
                raise CardDeclined(f"card ending {card} declined")
            return self.charges.setdefault(idempotency_key, f"ch_{len(self.charges) + 1:05d}")


class Order(Machine):
    """Charge the card, ship, confirm; a declined card ends in PaymentFailed."""

    name = "order"
    initial = OrderPlaced
    terminal = (Confirmed, PaymentFailed)

    def __init__(self, gateway: FakePaymentGateway | None = None) -> None:
        self.gateway = gateway or FakePaymentGateway()

    @step(retry=RetryPolicy(max_attempts=5, initial_delay=0.2, max_delay=2.0))
    def charge_card(self, state: OrderPlaced, ctx: Context) -> Charged:
        charge_id = self.gateway.charge(state.order_id, state.amount_cents, state.card,
                                        idempotency_key=ctx.idempotency_key)
        return Charged(order_id=state.order_id, charge_id=charge_id)

    @charge_card.on_error
    def payment_failed(self, state: OrderPlaced, failure: Failure, ctx: Context) -> PaymentFailed:
        return PaymentFailed(order_id=state.order_id, reason=str(failure))

    @step
    def ship(self, state: Charged, ctx: Context) -> Shipped:
        return Shipped(order_id=state.order_id, tracking=f"TRK-{state.order_id}",
                       shipped_at=ctx.now())

    @step
    def confirm(self, state: Shipped, ctx: Context) -> Confirmed:
        return Confirmed(order_id=state.order_id, tracking=state.tracking)
