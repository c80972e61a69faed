"""The three services the checkout calls (stock, payments, subscriptions), over HTTP with httpx,
and the errors their answers become."""

from __future__ import annotations

from typing import Any

import attrs
import httpx

from machines.checkout.states import Order
from statemachine import PermanentError

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
