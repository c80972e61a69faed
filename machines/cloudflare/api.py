"""A small client of the Cloudflare API (v4) for the machines: DNS records, Workers scripts and
routes. Every call names the real endpoint it sends; the base URL is configurable
(``https://api.cloudflare.com`` for real, the fake's URL in tests).

How an answer is read (the envelope ``{"success", "errors", "messages", "result"}``):
2xx with ``success`` is the result; 429 is `RetryAfter` (from ``Retry-After``; costs no attempt);
5xx, 408 and network errors are `CloudflareUnavailable` (retried with the step's backoff);
any other 4xx is `CloudflareRejected`, a `PermanentError` carrying Cloudflare's error codes.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import attrs
import httpx

from statemachine import PermanentError, RetryAfter

__all__ = ["DEFAULT_URL", "TIMEOUT", "CloudflareAPI", "CloudflareRejected",
           "CloudflareUnavailable", "DnsRecord", "Ensured"]

# What ensuring a record or a route took.
Ensured = Literal["created", "updated", "kept"]

DEFAULT_URL = "https://api.cloudflare.com"
# Connect fast or not at all; give the API a few seconds to answer.
TIMEOUT = httpx.Timeout(10.0, connect=3.0)


class CloudflareUnavailable(Exception):
    """The API failed in a way worth retrying (5xx, 408, a network error)."""


class CloudflareRejected(PermanentError):
    """The API refused the request (4xx): retrying will not help. `status` and `codes` (the
    envelope's error codes) say why."""

    def __init__(self, message: str, status: int, codes: tuple[int, ...]) -> None:
        super().__init__(message)
        self.status = status
        self.codes = codes

    def __reduce__(self) -> tuple[type[CloudflareRejected], tuple[str, int, tuple[int, ...]]]:
        return type(self), (str(self), self.status, self.codes)


@attrs.frozen
class DnsRecord:
    """A DNS record as Cloudflare returns it (the fields the machines use)."""

    id: str
    type: str
    name: str
    content: str
    ttl: int = 1
    proxied: bool = False

    @classmethod
    def of(cls, raw: dict[str, Any]) -> DnsRecord:
        return cls(id=raw["id"], type=raw["type"], name=raw["name"], content=raw["content"],
                   ttl=int(raw.get("ttl", 1)), proxied=bool(raw.get("proxied", False)))


@attrs.define
class CloudflareAPI:
    """The calls the machines make, with an API token (``Authorization: Bearer``)."""

    token: str
    url: str = DEFAULT_URL
    http: httpx.Client = attrs.field(factory=lambda: httpx.Client(timeout=TIMEOUT))

    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        what = f"{method} /client/v4{path}"
        try:
            response = self.http.request(method, f"{self.url}/client/v4{path}", headers=headers,
                                         **kwargs)
        except httpx.TransportError as e:  # timeouts, refused and dropped connections
            raise CloudflareUnavailable(f"{what}: {type(e).__name__}: {e}") from e
        return _result(what, response)

    # -- DNS records -------------------------------------------------------------------------

    def find_records(self, zone_id: str, type_: str, name: str) -> list[DnsRecord]:
        """``GET /zones/{zone_id}/dns_records?type=&name=``."""
        found = self._send("GET", f"/zones/{zone_id}/dns_records",
                           params={"type": type_, "name": name})
        return [DnsRecord.of(r) for r in found]

    def create_record(self, zone_id: str, type_: str, name: str, content: str, *,
                      ttl: int = 1, proxied: bool = False) -> DnsRecord:
        """``POST /zones/{zone_id}/dns_records``."""
        return DnsRecord.of(self._send("POST", f"/zones/{zone_id}/dns_records", json={
            "type": type_, "name": name, "content": content, "ttl": ttl, "proxied": proxied}))

    def update_record(self, zone_id: str, record_id: str, *, content: str, ttl: int = 1,
                      proxied: bool = False) -> DnsRecord:
        """``PATCH /zones/{zone_id}/dns_records/{record_id}``."""
        return DnsRecord.of(self._send("PATCH", f"/zones/{zone_id}/dns_records/{record_id}",
                                       json={"content": content, "ttl": ttl, "proxied": proxied}))

    def delete_record(self, zone_id: str, record_id: str) -> bool:
        """``DELETE /zones/{zone_id}/dns_records/{record_id}``; False if it was already gone
        (81044), so a repeated delete is not an error."""
        try:
            self._send("DELETE", f"/zones/{zone_id}/dns_records/{record_id}")
        except CloudflareRejected as e:
            if e.status == 404 or 81044 in e.codes:
                return False
            raise
        return True

    def ensure_record(self, zone_id: str, type_: str, name: str, content: str, *,
                      ttl: int = 1, proxied: bool = False,
                      replace: bool = True) -> tuple[DnsRecord, Ensured]:
        """The record `name` of `type_` with `content`: kept if it is there, updated if it has
        other content (when `replace`; TXT records are added beside others), created if
        missing. Returns the record and what was done: "kept", "updated" or "created". Safe to
        repeat: a create that happened on an attempt whose answer was lost is found by the
        lookup (and a racing duplicate is refused by Cloudflare with 81057, then found)."""
        existing = self.find_records(zone_id, type_, name)
        for record in existing:
            if record.content == content:
                if (record.ttl, record.proxied) == (ttl, proxied):
                    return record, "kept"
                return self.update_record(zone_id, record.id, content=content, ttl=ttl,
                                          proxied=proxied), "updated"
        if existing and replace:
            return self.update_record(zone_id, existing[0].id, content=content, ttl=ttl,
                                      proxied=proxied), "updated"
        try:
            return self.create_record(zone_id, type_, name, content, ttl=ttl,
                                      proxied=proxied), "created"
        except CloudflareRejected as e:
            if 81057 not in e.codes:
                raise
            again = [r for r in self.find_records(zone_id, type_, name) if r.content == content]
            if not again:
                raise
            return again[0], "kept"

    # -- Workers -----------------------------------------------------------------------------

    def upload_worker(self, account_id: str, script_name: str, source: str, *,
                      compatibility_date: str) -> str:
        """``PUT /accounts/{account_id}/workers/scripts/{script_name}`` (multipart: metadata +
        the ES module); the script's etag. Uploading the same script again replaces it."""
        metadata = {"main_module": "worker.js", "compatibility_date": compatibility_date}
        result = self._send(
            "PUT", f"/accounts/{account_id}/workers/scripts/{script_name}",
            files={"metadata": (None, json.dumps(metadata), "application/json"),
                   "worker.js": ("worker.js", source, "application/javascript+module")})
        etag: str = result["etag"]
        return etag

    def routes(self, zone_id: str) -> list[dict[str, Any]]:
        """``GET /zones/{zone_id}/workers/routes``."""
        found: list[dict[str, Any]] = self._send("GET", f"/zones/{zone_id}/workers/routes")
        return found

    def ensure_route(self, zone_id: str, pattern: str, script: str) -> tuple[str, Ensured]:
        """The route `pattern` -> `script`: kept, pointed at `script` (``PUT
        /zones/{zone_id}/workers/routes/{route_id}``) or created (``POST
        /zones/{zone_id}/workers/routes``). Returns (route id, "kept" | "updated" | "created")."""
        for existing in self.routes(zone_id):
            if existing["pattern"] == pattern:
                if existing.get("script") == script:
                    return existing["id"], "kept"
                self._send("PUT", f"/zones/{zone_id}/workers/routes/{existing['id']}",
                           json={"pattern": pattern, "script": script})
                return existing["id"], "updated"
        try:
            created = self._send("POST", f"/zones/{zone_id}/workers/routes",
                                 json={"pattern": pattern, "script": script})
        except CloudflareRejected as e:
            if 10020 not in e.codes:  # created meanwhile (a lost answer, or a race)
                raise
            return self.ensure_route(zone_id, pattern, script)
        return created["id"], "created"


def _result(what: str, response: httpx.Response) -> Any:
    """The envelope's result, or the error it describes."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    errors = body.get("errors") or [] if isinstance(body, dict) else []
    codes = tuple(int(e.get("code", 0)) for e in errors if isinstance(e, dict))
    detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors
                       if isinstance(e, dict)) or response.text[:200]
    status = response.status_code
    if status == 429:
        raise RetryAfter.from_header(response.headers.get("Retry-After"), default=5.0)
    if response.is_success and isinstance(body, dict) and body.get("success"):
        return body.get("result")
    message = f"{what}: {status} {detail}"
    if status >= 500 or status == 408 or response.is_success:
        raise CloudflareUnavailable(message)
    raise CloudflareRejected(message, status, codes)
