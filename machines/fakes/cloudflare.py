"""A fake of the Cloudflare API (v4): DNS records, Workers scripts and Workers routes.

It follows the real API where the machines touch it: the paths under ``/client/v4``, the JSON
envelope (``{"success", "errors": [{"code", "message"}], "messages", "result"}``, plus
``result_info`` on lists), the status codes, the error codes the clients look at (81057 "record
already exists", 81044 "record does not exist", 10020 "route pattern exists", 10000
authentication error, 971 rate limited) and ``429`` with ``Retry-After``. A Worker script is
uploaded as the real API takes it: ``multipart/form-data`` with a ``metadata`` part naming the
``main_module``. Inject a rate limit with ``fail_next(1, "POST /client/v4/*", status=429,
headers={"Retry-After": "3"}, body=RATE_LIMITED)``.

Not modelled: zones and accounts themselves (any id is accepted), pagination beyond one page,
record types' content validation beyond A/AAAA/TXT/CNAME.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import weakref
from typing import Any, ClassVar

from machines.fakes.server import FakeService, Reply, Request, route

__all__ = ["FAKE", "RATE_LIMITED", "CloudflareService", "envelope", "failure"]

API = "/client/v4"
TYPES = ("A", "AAAA", "CNAME", "TXT")
RATE_LIMITED = {"success": False, "errors": [
    {"code": 971, "message": "Please wait and consider throttling your request speed"}],
    "messages": [], "result": None}


def envelope(result: Any, status: int = 200, **extra: Any) -> Reply:
    """A successful reply in Cloudflare's envelope."""
    return status, {"success": True, "errors": [], "messages": [], "result": result, **extra}


def failure(status: int, code: int, message: str) -> Reply:
    """A failed reply in Cloudflare's envelope."""
    return status, {"success": False, "errors": [{"code": code, "message": message}],
                    "messages": [], "result": None}


class CloudflareService(FakeService):
    """DNS records per zone, Worker scripts per account, Worker routes per zone."""

    name = "cloudflare"
    env_var = "CLOUDFLARE_API_URL"
    default_port = 8710
    # Every instance of this process: the fake CA, run by hand beside it
    # (``python -m machines.fakes cloudflare acme``), resolves TXT records through them.
    live: ClassVar[weakref.WeakSet[CloudflareService]] = weakref.WeakSet()

    def __init__(self, *, token: str = "test-token",  # noqa: S107  # a fake's, not a secret
                 port: int = 0, host: str = "127.0.0.1") -> None:
        super().__init__(port=port, host=host)
        self.token = token
        self._ids = (f"{n:032x}" for n in itertools.count(1))
        self.records: dict[str, dict[str, dict[str, Any]]] = {}  # zone -> id -> record
        self.scripts: dict[str, dict[str, dict[str, Any]]] = {}  # account -> name -> script
        self.routes: dict[str, dict[str, dict[str, Any]]] = {}  # zone -> id -> route
        self.created = 0  # DNS records ever created
        self.deleted = 0  # DNS records ever deleted
        self.uploads = 0  # Worker script uploads
        CloudflareService.live.add(self)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"records": self.records, "routes": self.routes,
                    "scripts": {a: sorted(s) for a, s in self.scripts.items()}}

    def find(self, zone_id: str, type_: str, name: str) -> list[dict[str, Any]]:
        """The records of `zone_id` with this type and name (what the CA fake resolves)."""
        with self.lock:
            return [dict(r) for r in self.records.get(zone_id, {}).values()
                    if r["type"] == type_ and r["name"] == name]

    def txt(self, name: str) -> list[str]:
        """The contents of the TXT records named `name`, in any zone (a resolver's view)."""
        with self.lock:
            return [r["content"] for zone in self.records.values() for r in zone.values()
                    if r["type"] == "TXT" and r["name"] == name]

    @classmethod
    def resolve_txt(cls, name: str) -> list[str]:
        """`txt` over every live instance of this process."""
        return [value for service in list(cls.live) for value in service.txt(name)]

    def _refused(self, request: Request) -> Reply | None:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return failure(403, 10000, "Authentication error")
        return None

    # -- DNS records -------------------------------------------------------------------------

    @route(f"GET {API}/zones/{{zone_id}}/dns_records")
    def list_records(self, request: Request, zone_id: str) -> Reply:
        refused = self._refused(request)
        if refused:
            return refused
        found = [r for r in self.records.get(zone_id, {}).values()
                 if all(request.arg(k) in (None, r[k]) for k in ("type", "name", "content"))]
        return envelope(found, result_info={"page": 1, "per_page": 100, "count": len(found),
                                            "total_count": len(found)})

    @route(f"POST {API}/zones/{{zone_id}}/dns_records")
    def create_record(self, request: Request, zone_id: str) -> Reply:
        refused = self._refused(request)
        if refused:
            return refused
        body = request.body if isinstance(request.body, dict) else {}
        problem = _bad_record(body)
        if problem:
            return failure(400, 9005, problem)
        zone = self.records.setdefault(zone_id, {})
        if any(r["type"] == body["type"] and r["name"] == body["name"]
               and r["content"] == body["content"] for r in zone.values()):
            return failure(400, 81057, "Record already exists.")
        record = {"id": next(self._ids), "zone_id": zone_id, "type": body["type"],
                  "name": body["name"], "content": body["content"],
                  "ttl": int(body.get("ttl", 1)), "proxied": bool(body.get("proxied", False))}
        zone[record["id"]] = record
        self.created += 1
        return envelope(record)

    @route(f"PATCH {API}/zones/{{zone_id}}/dns_records/{{record_id}}")
    def update_record(self, request: Request, zone_id: str, record_id: str) -> Reply:
        refused = self._refused(request)
        if refused:
            return refused
        record = self.records.get(zone_id, {}).get(record_id)
        if record is None:
            return failure(404, 81044, "Record does not exist.")
        body = request.body if isinstance(request.body, dict) else {}
        changed = {**record, **{k: body[k] for k in ("content", "ttl", "proxied") if k in body}}
        problem = _bad_record(changed)
        if problem:
            return failure(400, 9005, problem)
        record.update(changed)
        return envelope(record)

    @route(f"DELETE {API}/zones/{{zone_id}}/dns_records/{{record_id}}")
    def delete_record(self, request: Request, zone_id: str, record_id: str) -> Reply:
        refused = self._refused(request)
        if refused:
            return refused
        if self.records.get(zone_id, {}).pop(record_id, None) is None:
            return failure(404, 81044, "Record does not exist.")
        self.deleted += 1
        return envelope({"id": record_id})

    # -- Workers -----------------------------------------------------------------------------

    @route(f"PUT {API}/accounts/{{account_id}}/workers/scripts/{{script_name}}")
    def upload_script(self, request: Request, account_id: str, script_name: str) -> Reply:
        refused = self._refused(request)
        if refused:
            return refused
        parts = _multipart(request)
        if parts is None or "metadata" not in parts:
            return failure(400, 10021, "Expected multipart/form-data with a metadata part")
        try:
            metadata = json.loads(parts["metadata"])
        except json.JSONDecodeError:
            return failure(400, 10021, "metadata is not JSON")
        main = metadata.get("main_module")
        if not main or main not in parts:
            return failure(400, 10021, f"main_module {main!r} is not one of the parts")
        scripts = self.scripts.setdefault(account_id, {})
        etag = f"{abs(hash(parts[main])):x}"
        script = {"id": script_name, "etag": etag, "main_module": main,
                  "content": parts[main], "compatibility_date":
                  metadata.get("compatibility_date")}
        scripts[script_name] = script
        self.uploads += 1
        return envelope({k: script[k] for k in ("id", "etag", "compatibility_date")})

    @route(f"GET {API}/zones/{{zone_id}}/workers/routes")
    def list_routes(self, request: Request, zone_id: str) -> Reply:
        refused = self._refused(request)
        if refused:
            return refused
        return envelope(list(self.routes.get(zone_id, {}).values()))

    @route(f"POST {API}/zones/{{zone_id}}/workers/routes")
    def create_route(self, request: Request, zone_id: str) -> Reply:
        refused = self._refused(request)
        if refused:
            return refused
        body = request.body if isinstance(request.body, dict) else {}
        if not body.get("pattern"):
            return failure(400, 10022, "pattern is required")
        routes = self.routes.setdefault(zone_id, {})
        if any(r["pattern"] == body["pattern"] for r in routes.values()):
            return failure(409, 10020, "A route with the same pattern already exists")
        if body.get("script") and not any(body["script"] in s for s in self.scripts.values()):
            return failure(400, 10007, f"script {body['script']!r} not found")
        new = {"id": next(self._ids), "pattern": body["pattern"], "script": body.get("script")}
        routes[new["id"]] = new
        return envelope({"id": new["id"]})

    @route(f"PUT {API}/zones/{{zone_id}}/workers/routes/{{route_id}}")
    def update_route(self, request: Request, zone_id: str, route_id: str) -> Reply:
        refused = self._refused(request)
        if refused:
            return refused
        existing = self.routes.get(zone_id, {}).get(route_id)
        if existing is None:
            return failure(404, 10009, "Route not found")
        body = request.body if isinstance(request.body, dict) else {}
        existing.update({k: body[k] for k in ("pattern", "script") if k in body})
        return envelope(existing)


def _bad_record(body: dict[str, Any]) -> str | None:
    for field in ("type", "name", "content"):
        if not isinstance(body.get(field), str) or not body[field]:
            return f"DNS record: {field} is required"
    if body["type"] not in TYPES:
        return f"DNS record: type {body['type']!r} is not supported here"
    return None


def _multipart(request: Request) -> dict[str, str] | None:
    """The parts of a multipart/form-data body, by name (the base decodes JSON only, so the raw
    text is in ``_invalid_json``)."""
    content_type = request.headers.get("content-type", "")
    raw = request.body.get("_invalid_json") if isinstance(request.body, dict) else None
    if not content_type.startswith("multipart/form-data") or raw is None:
        return None
    message = email.parser.Parser(policy=email.policy.HTTP).parsestr(
        f"Content-Type: {content_type}\r\n\r\n{raw}")
    parts: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            parts[name] = payload.decode() if isinstance(payload, bytes) else str(payload)
    return parts


FAKE = CloudflareService
