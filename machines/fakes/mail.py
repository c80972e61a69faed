"""A fake transactional mail API (in the manner of Postmark, SendGrid or Mailgun).

``POST /messages`` with ``Idempotency-Key`` and ``{"to", "template", "subject", "data"}`` sends a
mail and answers 202 ``{"id": ...}``. The same key sends nothing more: it answers the first
answer again. Addresses in `rejected` are refused with 422 ``address_rejected`` (a bounce list).
``GET /messages?to=ADDRESS`` lists what was sent.

Tests read `sent` (every mail really sent, in order) and `sends_per_key`.
"""

from __future__ import annotations

import itertools
from typing import Any

from machines.fakes.server import FakeService, Reply, Request, error, route

__all__ = ["FAKE", "MailService"]


class MailService(FakeService):
    """Mails, deduplicated by ``Idempotency-Key``."""

    name = "mail"
    env_var = "MAIL_API_URL"
    default_port = 8702

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sent: list[dict[str, Any]] = []
        self.sends_per_key: dict[str, int] = {}
        self.rejected: set[str] = set()
        self._answers: dict[str, Reply] = {}
        self._ids = itertools.count(1)

    @route("POST /messages")
    def send(self, request: Request) -> Reply:
        key = request.idempotency_key
        if not key:
            return error(400, "idempotency_key_required")
        if key in self._answers:
            return self._answers[key]
        body = request.body
        missing = [f for f in ("to", "template") if not body.get(f)]
        if missing:
            return error(400, "missing_fields", fields=missing)
        if body["to"] in self.rejected:
            answer = error(422, "address_rejected", to=body["to"])
        else:
            message = {"id": f"msg_{next(self._ids):05d}", "to": body["to"],
                       "template": body["template"], "subject": body.get("subject", ""),
                       "data": body.get("data", {}), "key": key, "at": request.received_at}
            self.sent.append(message)
            self.sends_per_key[key] = self.sends_per_key.get(key, 0) + 1
            answer = 202, {"id": message["id"]}
        self._answers[key] = answer
        return answer

    @route("GET /messages")
    def list_messages(self, request: Request) -> Reply:
        to = request.arg("to")
        return 200, {"data": [m for m in self.sent if to in (None, m["to"])]}

    # -- what tests read ---------------------------------------------------------------------

    def to(self, address: str) -> list[str]:
        """The templates sent to `address`, in order."""
        with self.lock:
            return [m["template"] for m in self.sent if m["to"] == address]

    def snapshot(self) -> dict[str, Any]:
        return {"sent": len(self.sent),
                "last": [f"{m['template']} -> {m['to']}" for m in self.sent[-10:]]}


FAKE = MailService
