"""The two services a billing run calls: the billing API (customers, usage, charges) and the
mail API. Thin: one method per endpoint, answers read by `machines._http.reply`."""

from __future__ import annotations

from typing import Any

import attrs
import httpx

from machines._http import reply

__all__ = ["BillingAPI", "CardDeclined", "MailAPI"]


class CardDeclined(Exception):
    """The bank declined the charge (HTTP 402): dunning, not a failure of the step."""

    def __init__(self, charge_id: str) -> None:
        super().__init__(f"charge {charge_id} declined")
        self.charge_id = charge_id


@attrs.define
class BillingAPI:
    url: str
    http: httpx.Client

    def customers(self, *, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """One page of active customers after the cursor `after`, and whether more follow."""
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["starting_after"] = after
        page = reply(self.http.get(f"{self.url}/customers", params=params))
        return list(page["data"]), bool(page["has_more"])

    def usage(self, customer_id: str, period: str) -> list[dict[str, Any]]:
        """The invoice lines of `customer_id` for `period` (``YYYY-MM``)."""
        found = reply(self.http.get(f"{self.url}/customers/{customer_id}/usage",
                                    params={"period": period}))
        return list(found["lines"])

    def charge(self, customer_id: str, amount_cents: int, period: str, key: str) -> str:
        """Charge the customer's card; the charge id. The same `key` never charges twice.
        Raises `CardDeclined` when the bank says no."""
        response = self.http.post(f"{self.url}/charges", headers={"Idempotency-Key": key},
                                  json={"customer": customer_id, "amount_cents": amount_cents,
                                        "period": period})
        if response.status_code == 402:
            raise CardDeclined(str(response.json().get("charge", "")))
        charge_id: str = reply(response)["id"]
        return charge_id

    def suspend(self, customer_id: str, key: str) -> None:
        """Suspend the customer's account (suspending twice suspends once)."""
        reply(self.http.post(f"{self.url}/customers/{customer_id}/suspend",
                             headers={"Idempotency-Key": key}))


@attrs.define
class MailAPI:
    url: str
    http: httpx.Client

    def send(self, to: str, template: str, data: dict[str, Any], key: str) -> str:
        """Send one mail; its id. The same `key` never sends twice."""
        sent = reply(self.http.post(f"{self.url}/messages", headers={"Idempotency-Key": key},
                                    json={"to": to, "template": template, "data": data}))
        message_id: str = sent["id"]
        return message_id

