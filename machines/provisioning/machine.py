"""The provisioning machine: create, wait for boot (a polling step), health-check, register
DNS, ready; any failure after the create tears down what was created (see the package's
docstring for the story of each failure)."""

from __future__ import annotations

import os
from datetime import timedelta

import attrs
import httpx

from machines.cloudflare.api import CloudflareAPI, CloudflareRejected
from machines.provisioning.cloud import CloudAPI, CloudRejected
from machines.provisioning.states import (
    Booted,
    Booting,
    Healthy,
    ProvisioningFailed,
    Ready,
    ServerRequested,
    TearingDown,
)
from statemachine import (
    Context,
    Failure,
    Machine,
    PermanentError,
    Poll,
    PollAgain,
    RetryPolicy,
    on_cancel,
    poll_again,
    state_name,
    step,
)

__all__ = ["BOOT_POLL", "CLEANUP_RETRY", "HEALTH_RETRY", "SERVICE_RETRY", "Provisioning",
           "ServerGone", "from_env"]

# Transient API failures (5xx, timeouts) are retried quickly at first, then less often.
SERVICE_RETRY = RetryPolicy(max_attempts=5, initial_delay=1.0, max_delay=30.0)
# A booted server may take a little while to start its services.
HEALTH_RETRY = RetryPolicy(max_attempts=4, initial_delay=5.0, max_delay=30.0)
# Cleaning up must not give up easily: a server left behind costs money.
CLEANUP_RETRY = RetryPolicy(max_attempts=10, initial_delay=2.0, max_delay=300.0)
# Servers boot in 10-60 s; look every 5 s, then less often, for at most 10 minutes.
BOOT_POLL = Poll(every=5, max_every=30, deadline=timedelta(minutes=10))


class ServerGone(PermanentError):
    """The server disappeared while it was being provisioned (deleted by someone else)."""


def _brief(failure: Failure) -> Failure:
    """The failure as a state keeps it: type and message (the traceback is in sm_history)."""
    return attrs.evolve(failure, traceback="")


class Provisioning(Machine):
    """One server, from request to ready (or to torn down)."""

    name = "provisioning"
    initial = ServerRequested
    terminal = (Ready, ProvisioningFailed)

    def __init__(self, *, cloud: CloudAPI, dns: CloudflareAPI, zone_id: str, domain: str,
                 health_url: str = "http://{ip}/healthz") -> None:
        self.cloud = cloud
        self.dns = dns
        self.zone_id = zone_id
        self.domain = domain
        # Where the server answers its health check: {ip} and {name} are filled in.
        self.health_url = health_url

    def hostname(self, state: ServerRequested | Booting | Booted | Healthy | TearingDown) -> str:
        return f"{state.spec.name}.{self.domain}"

    @step(retry=SERVICE_RETRY)
    def create_server(self, state: ServerRequested, ctx: Context) -> Booting:
        spec, labels = state.spec, {"workflow": str(ctx.workflow_id)}
        try:
            server = self.cloud.create_server(name=spec.name, server_type=spec.server_type,
                                              image=spec.image, location=spec.location,
                                              labels=labels)
        except CloudRejected as e:
            if e.code != "uniqueness_error":
                raise
            # Names are unique: an earlier attempt of ours (its answer lost, its worker killed)
            # created it, or somebody else owns that name.
            found = self.cloud.find_server(spec.name)
            if found is None or found.get("labels", {}).get("workflow") != labels["workflow"]:
                raise CloudRejected(f"a server named {spec.name!r} exists and was not created "
                                    "by this workflow", e.status, e.code) from e
            server = found
        return Booting(spec, server["id"], server["public_net"]["ipv4"]["ip"])

    @step(poll=BOOT_POLL, retry=SERVICE_RETRY)
    def wait_for_boot(self, state: Booting, ctx: Context) -> Booted | PollAgain:
        server = self.cloud.get_server(state.server_id)
        if server is None:
            raise ServerGone(f"server {state.server_id} no longer exists")
        if server["status"] != "running":
            return poll_again()
        return Booted(state.spec, state.server_id, state.ip)

    @step(retry=HEALTH_RETRY)
    def check_health(self, state: Booted, ctx: Context) -> Healthy:
        url = self.health_url.format(ip=state.ip, name=state.spec.name)
        problem = self.cloud.check_health(url)
        if problem is not None:
            raise ConnectionError(f"health check failed: {problem}")  # retried (HEALTH_RETRY)
        return Healthy(state.spec, state.server_id, state.ip)

    @step(retry=SERVICE_RETRY)
    def register_dns(self, state: Healthy, ctx: Context) -> Ready:
        record, _ = self.dns.ensure_record(self.zone_id, "A", self.hostname(state), state.ip,
                                           ttl=300)
        return Ready(state.spec, state.server_id, state.ip, record.name, record.id)

    @create_server.on_error
    @wait_for_boot.on_error
    @check_health.on_error
    @register_dns.on_error
    def tear_down(self, state: ServerRequested | Booting | Booted | Healthy, failure: Failure,
                  ctx: Context) -> TearingDown:
        if isinstance(state, ServerRequested):
            return TearingDown(state.spec, None, None, state_name(type(state)), _brief(failure))
        return TearingDown(state.spec, state.server_id, state.ip, state_name(type(state)),
                           _brief(failure))

    @on_cancel
    def cancelled(self, state: ServerRequested | Booting | Booted | Healthy | TearingDown,
                  ctx: Context) -> TearingDown:
        """A cancel tears down what exists. In ServerRequested too: a create whose answer was
        lost (or whose worker died before committing `Booting`) did create the server, so
        `destroy` looks it up by name and workflow label. A cancel while tearing down goes on
        tearing down (ending `cancelled` there would leave the server behind)."""
        if isinstance(state, TearingDown):
            return state
        failure = Failure(type="Cancelled", message=ctx.cancel_requested or "cancelled",
                          attempt=0, permanent=True)
        if isinstance(state, ServerRequested):
            return TearingDown(state.spec, None, None, state_name(ServerRequested), failure)
        return TearingDown(state.spec, state.server_id, state.ip, state_name(type(state)),
                           failure)

    @step(retry=CLEANUP_RETRY)
    def destroy(self, state: TearingDown, ctx: Context) -> ProvisioningFailed:
        """Delete the DNS record (if the DNS step ran and a record points at the server), then
        the server. Each delete is safe to repeat: what is already gone is reported, not an
        error. A DNS API that refuses the cleanup does not keep the server alive: it is
        reported, for a person to check the name by hand."""
        cleaned: list[str] = []
        server_id, ip = state.server_id, state.ip
        if server_id is None:  # the create failed: was the server created anyway?
            found = self.cloud.find_server(state.spec.name)
            if found is not None and found.get("labels", {}).get("workflow") == str(
                    ctx.workflow_id):
                server_id, ip = found["id"], found["public_net"]["ipv4"]["ip"]
        if ip is not None and state.failed_in == state_name(Healthy):
            cleaned.extend(self._delete_records(self.hostname(state), ip))
        if server_id is not None:
            if self.cloud.delete_server(server_id):
                cleaned.append(f"server {server_id} ({state.spec.name}) deleted")
            else:
                cleaned.append(f"server {server_id} ({state.spec.name}) was already gone")
        return ProvisioningFailed(state.spec, state.failed_in, state.failure, cleaned)

    def _delete_records(self, hostname: str, ip: str) -> list[str]:
        try:
            done = []
            for record in self.dns.find_records(self.zone_id, "A", hostname):
                if record.content == ip and self.dns.delete_record(self.zone_id, record.id):
                    done.append(f"DNS record {record.name} -> {ip} deleted")
            return done
        except CloudflareRejected as e:
            return [f"DNS cleanup of {hostname} refused ({e}); check it by hand"]


def from_env(http: httpx.Client | None = None) -> Provisioning:
    """The machine configured from the environment: what ``--app
    machines.provisioning:from_env`` gives a worker. ``PROVISIONING_CLOUD_URL`` (default the
    Hetzner Cloud API), ``PROVISIONING_CLOUD_TOKEN``, ``CLOUDFLARE_API_URL`` (default the
    Cloudflare API), ``CLOUDFLARE_API_TOKEN``, ``PROVISIONING_ZONE_ID``, ``PROVISIONING_DOMAIN``,
    and ``PROVISIONING_HEALTH_URL`` (a template with {ip} and {name})."""
    env = os.environ
    kwargs = {} if http is None else {"http": http}
    cloud = CloudAPI(env["PROVISIONING_CLOUD_TOKEN"],
                     env.get("PROVISIONING_CLOUD_URL", "https://api.hetzner.cloud"), **kwargs)
    dns = CloudflareAPI(env["CLOUDFLARE_API_TOKEN"],
                        env.get("CLOUDFLARE_API_URL", "https://api.cloudflare.com"), **kwargs)
    return Provisioning(cloud=cloud, dns=dns, zone_id=env["PROVISIONING_ZONE_ID"],
                        domain=env["PROVISIONING_DOMAIN"],
                        health_url=env.get("PROVISIONING_HEALTH_URL", "http://{ip}/healthz"))
