"""In-process fakes of the checkout's three services, behind an `httpx.MockTransport`: what
`tests/integration/test_exploration.py` gives `machines.checkout.Checkout` to explore it (an
example then costs no sockets and no threads). Same contract as the HTTP services in
`tests/services.py`: charges and reservations deduplicated by ``Idempotency-Key``, a lookup of
charges by key, a card token ``"declined"`` answered 402."""

from __future__ import annotations

import json
from typing import Any

import httpx

from machines.checkout import Checkout


class Services:
    """The payment, stock and subscription services' state."""

    def __init__(self, stock: int = 5) -> None:
        self.charges: dict[str, dict[str, Any]] = {}  # idempotency key -> charge
        self.refunds: dict[str, str] = {}  # idempotency key -> charge id
        self.stock = stock
        self.reservations: dict[str, dict[str, Any]] = {}  # key -> reservation
        self.released: set[str] = set()
        self.extended: dict[str, int] = {}  # key -> months

    def handle(self, request: httpx.Request) -> httpx.Response:
        path, key = request.url.path, request.headers.get("Idempotency-Key", "")
        body: Any = json.loads(request.content) if request.content else {}
        if path == "/charges" and request.method == "POST":
            if body["source"] == "declined":
                return httpx.Response(402, json={"error": "card_declined"})
            charge = self.charges.setdefault(key, {"id": f"ch_{len(self.charges) + 1}",
                                                   "status": "succeeded"})
            return httpx.Response(200, json=charge)
        if path == "/charges":
            found = self.charges.get(request.url.params["idempotency_key"])
            return httpx.Response(200, json={"data": [found] if found else []})
        if path == "/refunds":
            return httpx.Response(200, json={"id": self.refunds.setdefault(key, body["charge"])})
        if path == "/stock":
            return httpx.Response(200, json={"available": {
                sku: self.stock for sku in request.url.params.get_list("sku")}})
        if path == "/reservations":
            if any(n > self.stock for n in body["items"].values()):
                return httpx.Response(409, json={"missing": body["items"]})
            reservation = self.reservations.setdefault(key, {"id": f"r_{len(self.reservations)}"})
            return httpx.Response(200, json=reservation)
        if path.endswith("/release"):
            self.released.add(path.split("/")[2])
            return httpx.Response(200, json={})
        if path == "/oauth/token":
            return httpx.Response(200, json={"access_token": "fresh"})
        if path.endswith("/extend"):
            self.extended.setdefault(key, body["months"])
            return httpx.Response(200, json={"paid_months": sum(self.extended.values())})
        return httpx.Response(404, json={"error": path})


def checkout() -> Checkout:
    """A `Checkout` talking to fresh fakes (reachable as ``machine.services``)."""
    services = Services()
    http = httpx.Client(transport=httpx.MockTransport(services.handle))
    machine = Checkout(payments_url="http://payments", stock_url="http://stock",
                       subscriptions_url="http://subscriptions", http=http)
    machine.services = services  # type: ignore[attr-defined]
    return machine
