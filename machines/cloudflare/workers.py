"""(b) Deploy a Worker script and route a URL pattern to it.

    DeployRequested --upload_script--> ScriptUploaded --route_to_script--> WorkerDeployed
    (either step refused, or out of retries) --> DeployFailed

Both steps are safe to repeat: an upload replaces the script with the same content (same etag),
and the route is ensured (found, pointed at the script, or created). A route that cannot be set
leaves the uploaded script in place, unrouted (it serves nothing): `DeployFailed` says so.

Endpoints: ``PUT /client/v4/accounts/{account_id}/workers/scripts/{script_name}`` (multipart:
``metadata`` with ``main_module``, and the module),
``GET /client/v4/zones/{zone_id}/workers/routes``, then
``PUT /client/v4/zones/{zone_id}/workers/routes/{route_id}`` or
``POST /client/v4/zones/{zone_id}/workers/routes``.
"""

from __future__ import annotations

import os

import attrs

from machines.cloudflare.api import CloudflareAPI, Ensured
from machines.cloudflare.limits import CLOUDFLARE_API, CLOUDFLARE_RETRY
from statemachine import Context, Failure, Machine, step

__all__ = ["DeployFailed", "DeployRequested", "DeployWorker", "ScriptUploaded", "WorkerDeployed",
           "from_env"]


@attrs.frozen
class DeployRequested:
    """The script to deploy (an ES module's source) and the route pattern to serve it on."""

    account_id: str
    zone_id: str
    script_name: str
    source: str
    pattern: str  # "shop.example.com/api/*"
    compatibility_date: str = "2024-09-23"


@attrs.frozen
class ScriptUploaded:
    """The script is live (unrouted, unless an earlier deploy routed it)."""

    request: DeployRequested
    etag: str


@attrs.frozen
class WorkerDeployed:
    """The script is live and `pattern` routes to it."""

    request: DeployRequested
    etag: str
    route_id: str
    route_action: Ensured


@attrs.frozen
class DeployFailed:
    """A step was refused or ran out of retries; `uploaded` says whether the script went up."""

    request: DeployRequested
    failed_in: str
    error: str
    uploaded: bool


class DeployWorker(Machine):
    """A Worker script uploaded and routed."""

    name = "cloudflare_worker"
    initial = DeployRequested
    terminal = (WorkerDeployed, DeployFailed)

    def __init__(self, *, api: CloudflareAPI) -> None:
        self.api = api

    @step(retry=CLOUDFLARE_RETRY, limit=CLOUDFLARE_API)
    def upload_script(self, state: DeployRequested, ctx: Context) -> ScriptUploaded:
        etag = self.api.upload_worker(state.account_id, state.script_name, state.source,
                                      compatibility_date=state.compatibility_date)
        return ScriptUploaded(state, etag)

    @step(retry=CLOUDFLARE_RETRY, limit=CLOUDFLARE_API)
    def route_to_script(self, state: ScriptUploaded, ctx: Context) -> WorkerDeployed:
        request = state.request
        route_id, action = self.api.ensure_route(request.zone_id, request.pattern,
                                                 request.script_name)
        return WorkerDeployed(request, state.etag, route_id, action)

    @upload_script.on_error
    def upload_failed(self, state: DeployRequested, failure: Failure,
                      ctx: Context) -> DeployFailed:
        return DeployFailed(state, "DeployRequested", str(failure), uploaded=False)

    @route_to_script.on_error
    def route_failed(self, state: ScriptUploaded, failure: Failure,
                     ctx: Context) -> DeployFailed:
        return DeployFailed(state.request, "ScriptUploaded", str(failure), uploaded=True)


def from_env() -> DeployWorker:
    """``--app machines.cloudflare.workers:from_env``: ``CLOUDFLARE_API_TOKEN`` and
    ``CLOUDFLARE_API_URL`` (default the real API)."""
    return DeployWorker(api=CloudflareAPI(
        os.environ["CLOUDFLARE_API_TOKEN"],
        os.environ.get("CLOUDFLARE_API_URL", "https://api.cloudflare.com")))
