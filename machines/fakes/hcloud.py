"""A fake cloud API that creates servers, shaped like the Hetzner Cloud API (v1).

What the provisioning machine calls, as the real API has it: ``POST /v1/servers`` (201
``{"server": {...}, "action": {...}}``; a name already taken is 409 ``uniqueness_error``),
``GET /v1/servers?name=`` (``{"servers": [...], "meta": {...}}``), ``GET /v1/servers/{id}``,
``DELETE /v1/servers/{id}`` (404 ``not_found`` once gone), errors as ``{"error": {"code",
"message"}}``, ``Authorization: Bearer``. A server's status goes ``initializing`` -> ``starting``
-> ``running`` as it is looked at (`boot_after` GETs, so a test on a fake clock decides when it
has booted; ``None``: it never boots).

Not Hetzner's: ``GET /_health/{name}`` answers for the server itself (a real server serves its own
health endpoint; the machine's health URL template points here in tests), 200 unless the name is
in `unhealthy`.
"""

from __future__ import annotations

import itertools
from typing import Any

from machines.fakes.server import FakeService, Reply, Request, route

__all__ = ["FAKE", "HcloudService"]


def _error(status: int, code: str, message: str) -> Reply:
    return status, {"error": {"code": code, "message": message, "details": {}}}


class HcloudService(FakeService):
    """Servers by id; `created` and `deleted` count what really happened."""

    name = "hcloud"
    env_var = "PROVISIONING_CLOUD_URL"
    default_port = 8720

    def __init__(self, *, token: str = "cloud-token",  # noqa: S107  # a fake's, not a secret
                 boot_after: int | None = 2,
                 port: int = 0, host: str = "127.0.0.1") -> None:
        super().__init__(port=port, host=host)
        self.token = token
        self.boot_after = boot_after
        self.unhealthy: set[str] = set()
        self.servers: dict[int, dict[str, Any]] = {}
        self.looks: dict[int, int] = {}
        self.created = 0
        self.deleted = 0
        self._ids = itertools.count(1001)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"servers": list(self.servers.values()), "created": self.created,
                    "deleted": self.deleted}

    def _refused(self, request: Request) -> Reply | None:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _error(401, "unauthorized", "unable to authenticate")
        return None

    @route("POST /v1/servers")
    def create(self, request: Request) -> Reply:
        refused = self._refused(request)
        if refused:
            return refused
        body = request.body if isinstance(request.body, dict) else {}
        for field in ("name", "server_type", "image"):
            if not isinstance(body.get(field), str) or not body[field]:
                return _error(422, "invalid_input", f"invalid input in field '{field}'")
        if body["server_type"].startswith("unknown"):
            return _error(422, "invalid_input", f"server_type {body['server_type']!r} not found")
        if any(s["name"] == body["name"] for s in self.servers.values()):
            return _error(409, "uniqueness_error", "server name is already used")
        server_id = next(self._ids)
        n = server_id - 1000
        server = {"id": server_id, "name": body["name"], "status": "initializing",
                  "server_type": {"name": body["server_type"]}, "image": {"name": body["image"]},
                  "labels": dict(body.get("labels") or {}),
                  "public_net": {"ipv4": {"ip": f"203.0.113.{n % 250 + 1}"}}}
        self.servers[server_id] = server
        self.looks[server_id] = 0
        self.created += 1
        return 201, {"server": server, "action": {"id": server_id * 10, "command":
                                                  "create_server", "status": "running"}}

    @route("GET /v1/servers")
    def list_servers(self, request: Request) -> Reply:
        refused = self._refused(request)
        if refused:
            return refused
        name = request.arg("name")
        found = [s for s in self.servers.values() if name is None or s["name"] == name]
        return 200, {"servers": found, "meta": {"pagination": {"page": 1, "per_page": 25,
                                                               "total_entries": len(found)}}}

    @route("GET /v1/servers/{server_id}")
    def get(self, request: Request, server_id: str) -> Reply:
        refused = self._refused(request)
        if refused:
            return refused
        server = self.servers.get(int(server_id)) if server_id.isdigit() else None
        if server is None:
            return _error(404, "not_found", f"server with ID '{server_id}' not found")
        self.looks[server["id"]] += 1
        looks = self.looks[server["id"]]
        if self.boot_after is not None and looks >= self.boot_after:
            server["status"] = "running"
        elif looks >= 1:
            server["status"] = "starting"
        return 200, {"server": server}

    @route("DELETE /v1/servers/{server_id}")
    def delete(self, request: Request, server_id: str) -> Reply:
        refused = self._refused(request)
        if refused:
            return refused
        server = self.servers.pop(int(server_id), None) if server_id.isdigit() else None
        if server is None:
            return _error(404, "not_found", f"server with ID '{server_id}' not found")
        self.deleted += 1
        return 200, {"action": {"id": server["id"] * 10 + 1, "command": "delete_server",
                                "status": "running"}}

    @route("GET /_health/{name}")
    def health(self, request: Request, name: str) -> Reply:
        if name in self.unhealthy:
            return 503, {"status": "unhealthy"}
        return 200, {"status": "ok"}


FAKE = HcloudService
