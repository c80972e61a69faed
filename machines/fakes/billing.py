"""A fake billing API (in the manner of Stripe's): customers, their usage, charges, suspension.

- ``GET /customers?limit=N&starting_after=ID``: active customers in the order they were created
  (ids grow), ``{"data": [...], "has_more": bool}``: cursor paging, so a customer created while a
  run pages is listed once, after the others.
- ``POST /customers`` with ``{"email", "plan_cents"}``: a new customer (to play with by hand).
- ``GET /customers/{id}/usage?period=YYYY-MM``: ``{"lines": [{"description", "amount_cents"}]}``.
- ``POST /charges`` with ``Idempotency-Key`` and ``{"customer", "amount_cents", "period"}``: 201
  and the charge, or 402 ``card_declined``; the same key charges nothing more and answers the first
  answer again. `decline(customer, times)` makes a card decline its next `times` charges.
- ``POST /customers/{id}/suspend`` with ``Idempotency-Key``: the account is suspended.

Tests read `charges` (every charge attempt that reached the bank, by id), `charges_per_key`,
`paid(customer, period)` and `suspended`.
"""

from __future__ import annotations

import itertools
from typing import Any

from machines.fakes.server import FakeService, Reply, Request, error, route

__all__ = ["FAKE", "BillingService"]


class BillingService(FakeService):
    """Customers and charges, deduplicated by ``Idempotency-Key``."""

    name = "billing"
    env_var = "BILLING_API_URL"
    default_port = 8701

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.customers: dict[str, dict[str, Any]] = {}
        self.usage: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.charges_per_key: dict[str, int] = {}
        self.suspended: list[str] = []
        self._declines: dict[str, int] = {}
        self._answers: dict[tuple[str, str], Reply] = {}
        self._customer_ids = itertools.count(1)
        self._charge_ids = itertools.count(1)

    # -- set up by the test (or by hand) -----------------------------------------------------

    def add_customer(self, email: str, *, plan_cents: int = 1500,
                     usage: list[tuple[str, int]] | None = None) -> str:
        """A new active customer; its usage lines for any period are the plan plus `usage`."""
        with self.lock:
            customer_id = f"cus_{next(self._customer_ids):05d}"
            self.customers[customer_id] = {"id": customer_id, "email": email,
                                           "plan_cents": plan_cents, "status": "active",
                                           "extra": list(usage or [])}
            return customer_id

    def decline(self, customer_id: str, times: int = 1_000_000) -> None:
        """Decline the next `times` charges of `customer_id` (always, by default)."""
        with self.lock:
            self._declines[customer_id] = times

    def paid(self, customer_id: str | None = None,
             period: str | None = None) -> list[dict[str, Any]]:
        """The charges that took money, for a customer and period (or all)."""
        with self.lock:
            return [c for c in self.charges.values() if c["status"] == "succeeded"
                    and customer_id in (None, c["customer"]) and period in (None, c["period"])]

    def snapshot(self) -> dict[str, Any]:
        return {"customers": len(self.customers), "charges": len(self.charges),
                "paid": len(self.paid()), "suspended": self.suspended}

    # -- the API -----------------------------------------------------------------------------

    @route("GET /customers")
    def list_customers(self, request: Request) -> Reply:
        try:
            limit = int(request.arg("limit", "10") or 10)
        except ValueError:
            return error(400, "bad_limit")
        after = request.arg("starting_after")
        active = [c for c in self.customers.values() if c["status"] == "active"]
        ids = sorted(c["id"] for c in active)
        start = 0 if after is None else next((n for n, i in enumerate(ids) if i > after),
                                             len(ids))
        page = ids[start:start + limit]
        return 200, {"data": [{"id": i, "email": self.customers[i]["email"]} for i in page],
                     "has_more": start + limit < len(ids)}

    @route("POST /customers")
    def create_customer(self, request: Request) -> Reply:
        body = request.body if isinstance(request.body, dict) else {}
        if not body.get("email"):
            return error(400, "email_required")
        try:
            plan = int(body.get("plan_cents", 1500))
        except (TypeError, ValueError):
            return error(400, "bad_plan_cents")
        customer_id = self.add_customer(str(body["email"]), plan_cents=plan)
        return 201, {"id": customer_id, "email": body["email"]}

    @route("GET /customers/{customer_id}/usage")
    def get_usage(self, request: Request, customer_id: str) -> Reply:
        customer = self.customers.get(customer_id)
        if customer is None:
            return error(404, "no_such_customer", customer=customer_id)
        period = request.arg("period")
        if not period:
            return error(400, "period_required")
        lines = [{"description": "plan", "amount_cents": customer["plan_cents"]}]
        lines += [{"description": d, "amount_cents": a} for d, a in customer["extra"]]
        return 200, {"customer": customer_id, "period": period, "lines": lines}

    @route("POST /charges")
    def charge(self, request: Request) -> Reply:
        key = request.idempotency_key
        if not key:
            return error(400, "idempotency_key_required")
        if ("charge", key) in self._answers:
            return self._answers[("charge", key)]
        body = request.body
        customer = self.customers.get(body.get("customer", ""))
        if customer is None:
            return error(404, "no_such_customer", customer=body.get("customer"))
        declined = self._declines.get(customer["id"], 0) > 0
        if declined:
            self._declines[customer["id"]] -= 1
        charge = {"id": f"ch_{next(self._charge_ids):05d}", "customer": customer["id"],
                  "amount_cents": int(body["amount_cents"]), "period": body.get("period"),
                  "status": "failed" if declined else "succeeded", "key": key}
        self.charges[charge["id"]] = charge
        self.charges_per_key[key] = self.charges_per_key.get(key, 0) + 1
        answer: Reply = (error(402, "card_declined", charge=charge["id"]) if declined
                         else (201, charge))
        self._answers[("charge", key)] = answer
        return answer

    @route("POST /customers/{customer_id}/suspend")
    def suspend(self, request: Request, customer_id: str) -> Reply:
        customer = self.customers.get(customer_id)
        if customer is None:
            return error(404, "no_such_customer", customer=customer_id)
        if customer["status"] != "suspended":  # suspending twice suspends once
            customer["status"] = "suspended"
            self.suspended.append(customer_id)
        return 200, {"id": customer_id, "status": "suspended"}


FAKE = BillingService
