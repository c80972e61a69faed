"""A fake cloud compute API: servers in pools.

- ``POST /servers`` with ``Idempotency-Key`` and ``{"name", "pool"}``: 201 and the server, status
  ``running`` (or ``starting`` for the next `boot_listings` listings of it); the same key creates
  nothing more. A name already taken is a 409.
- ``GET /servers?pool=P``: the pool's servers, ``{"data": [{"name", "pool", "status"}]}``.
- ``DELETE /servers/{name}``: 200, or 404 ``no_such_server`` when it is gone (already deleted).

`crash(name)` turns a server's status to ``crashed`` (what a health check would notice). Tests read
`created` and `deleted` (names, in order) and `creates_per_key`.
"""

from __future__ import annotations

from typing import Any

from machines.fakes.server import FakeService, Reply, Request, error, route

__all__ = ["FAKE", "CloudService"]


class CloudService(FakeService):
    """Servers by name, created once per idempotency key."""

    name = "cloud"
    env_var = "CLOUD_API_URL"
    default_port = 8703

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.servers: dict[str, dict[str, Any]] = {}
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.creates_per_key: dict[str, int] = {}
        self._answers: dict[str, Reply] = {}
        self.boot_listings = 0  # a new server is "starting" for this many listings of its pool
        self._booting: dict[str, int] = {}

    def crash(self, name: str) -> None:
        with self.lock:
            self.servers[name]["status"] = "crashed"

    def pool(self, pool: str, status: str | None = "running") -> list[str]:
        """Names of the servers of `pool` (in `status`, or all), sorted."""
        with self.lock:
            return sorted(n for n, s in self.servers.items() if s["pool"] == pool
                          and status in (None, s["status"]))

    def snapshot(self) -> dict[str, Any]:
        return {"servers": {n: s["status"] for n, s in sorted(self.servers.items())},
                "created": len(self.created), "deleted": len(self.deleted)}

    @route("POST /servers")
    def create(self, request: Request) -> Reply:
        key = request.idempotency_key
        if not key:
            return error(400, "idempotency_key_required")
        if key in self._answers:
            return self._answers[key]
        name, pool = request.body.get("name"), request.body.get("pool")
        if not name or not pool:
            return error(400, "missing_fields", fields=["name", "pool"])
        if name in self.servers:
            answer = error(409, "name_taken", name=name)
        else:
            server = {"name": name, "pool": pool,
                      "status": "starting" if self.boot_listings else "running"}
            if self.boot_listings:
                self._booting[name] = self.boot_listings
            self.servers[name] = server
            self.created.append(name)
            self.creates_per_key[key] = self.creates_per_key.get(key, 0) + 1
            answer = 201, dict(server)
        self._answers[key] = answer
        return answer

    @route("GET /servers")
    def list_servers(self, request: Request) -> Reply:
        pool = request.arg("pool")
        listed = [dict(s) for s in self.servers.values() if pool in (None, s["pool"])]
        for server in listed:  # booting servers come up as they are looked at
            left = self._booting.get(server["name"])
            if left is not None:
                self._booting[server["name"]] = left - 1
                if left <= 1:
                    del self._booting[server["name"]]
                    self.servers[server["name"]]["status"] = "running"
        return 200, {"data": listed}

    @route("DELETE /servers/{name}")
    def delete(self, request: Request, name: str) -> Reply:
        server = self.servers.pop(name, None)
        if server is None:
            return error(404, "no_such_server", name=name)
        self.deleted.append(name)
        return 200, {"name": name, "status": "deleted"}


FAKE = CloudService
