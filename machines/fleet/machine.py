"""A dynamic fleet: one long-lived workflow per server pool keeps the pool at its target size.

::

    PoolWatching --ScaleTo / ServerCrashed / Drain, or every RESYNC--> PoolReconciling
    PoolReconciling --reconcile--> PoolWatching | PoolDrained

    ProvisionServer:  CreateDue --create_server--> ServerCreated      (or CreateFailed)
    TeardownServer:   DeleteDue --delete_server--> ServerDeleted      (or DeleteFailed)

`reconcile` is level-triggered, as a Kubernetes controller is: it lists the pool's servers from
the cloud (the source of truth), compares with the target and with the work in flight, and starts
a `ProvisionServer` child per missing server and a `TeardownServer` child per server too many,
crashed, or not the pool's. It never waits for its children (`@on_children` would count every
child the pool ever started, and a pool lives for months): what they did shows up in the next
listing. Work in flight is kept in the state with the time it started; a child that has not shown
its effect within `IN_FLIGHT_DEADLINE` is forgotten, and the next listings put things right (a
server created late is one too many, and is torn down).

Nothing is created or deleted twice: children are written with the transition that decided them
(a reconcile killed halfway starts none), each under a key naming the server (`create:NAME`,
`delete:NAME:VERSION`), and each child sends its transition's idempotency key to the cloud.

The state holds the target, the servers and the work in flight, never the history: its row is the
same size after 100,000 transitions as after ten (bench/fleet.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import attrs
import httpx

from machines._http import Rejected, client, reply
from statemachine import (
    Context,
    Failure,
    Machine,
    RetryPolicy,
    on_event,
    on_timeout,
    step,
)

__all__ = [
    "IN_FLIGHT_DEADLINE",
    "RESYNC",
    "CreateDue",
    "CreateFailed",
    "DeleteDue",
    "DeleteFailed",
    "Drain",
    "Fleet",
    "InFlight",
    "PoolDrained",
    "PoolReconciling",
    "PoolSpec",
    "PoolWatching",
    "ProvisionServer",
    "ScaleTo",
    "ServerCrashed",
    "ServerCreated",
    "ServerDeleted",
    "TeardownServer",
]

# Statuses of a server that will not come back: deleted and replaced.
DEAD = frozenset({"crashed", "failed", "error", "off", "stopped"})
RESYNC = timedelta(minutes=1)  # a watching pool looks at the cloud at least this often
IN_FLIGHT_DEADLINE = timedelta(minutes=10)  # a child's effect should show by then
CLOUD_RETRY = RetryPolicy(max_attempts=8, initial_delay=0.2, max_delay=60.0)


# -- the children --------------------------------------------------------------------------------


@attrs.frozen
class CreateDue:
    pool: str
    name: str


@attrs.frozen
class ServerCreated:
    pool: str
    name: str


@attrs.frozen
class CreateFailed:
    pool: str
    name: str
    failure: Failure


@attrs.frozen
class DeleteDue:
    pool: str
    name: str


@attrs.frozen
class ServerDeleted:
    pool: str
    name: str
    already_gone: bool = False


@attrs.frozen
class DeleteFailed:
    pool: str
    name: str
    failure: Failure


def _brief(failure: Failure) -> Failure:
    return attrs.evolve(failure, traceback="")


class ProvisionServer(Machine):
    """Create one server of a pool (the provisioning of machines.provisioning would go here)."""

    name = "fleet_provision"
    initial = CreateDue
    terminal = (ServerCreated, CreateFailed)

    def __init__(self, cloud_url: str, http: httpx.Client | None = None) -> None:
        self.url = cloud_url
        self.http = client(http)

    @step(retry=CLOUD_RETRY)
    def create_server(self, state: CreateDue, ctx: Context) -> ServerCreated:
        reply(self.http.post(f"{self.url}/servers",
                             headers={"Idempotency-Key": ctx.idempotency_key},
                             json={"name": state.name, "pool": state.pool}))
        return ServerCreated(state.pool, state.name)

    @create_server.on_error
    def create_failed(self, state: CreateDue, failure: Failure, ctx: Context) -> CreateFailed:
        return CreateFailed(state.pool, state.name, _brief(failure))


class TeardownServer(Machine):
    """Delete one server (a server already gone is deleted)."""

    name = "fleet_teardown"
    initial = DeleteDue
    terminal = (ServerDeleted, DeleteFailed)

    def __init__(self, cloud_url: str, http: httpx.Client | None = None) -> None:
        self.url = cloud_url
        self.http = client(http)

    @step(retry=CLOUD_RETRY)
    def delete_server(self, state: DeleteDue, ctx: Context) -> ServerDeleted:
        try:
            reply(self.http.delete(f"{self.url}/servers/{state.name}",
                                   headers={"Idempotency-Key": ctx.idempotency_key}))
        except Rejected as e:
            if e.status != 404:
                raise
            return ServerDeleted(state.pool, state.name, already_gone=True)
        return ServerDeleted(state.pool, state.name)

    @delete_server.on_error
    def delete_failed(self, state: DeleteDue, failure: Failure, ctx: Context) -> DeleteFailed:
        return DeleteFailed(state.pool, state.name, _brief(failure))


# -- the pool ------------------------------------------------------------------------------------


@attrs.frozen
class InFlight:
    """A server being created or deleted by a child, since `since`."""

    name: str
    since: datetime


@attrs.frozen
class PoolSpec:
    """What the pool is and what it knows: bounded by the pool's size, not by its age."""

    pool: str
    target: int
    servers: tuple[str, ...] = ()  # running, as last listed
    creating: tuple[InFlight, ...] = ()
    deleting: tuple[InFlight, ...] = ()
    crashed: tuple[str, ...] = ()  # reported by ServerCrashed, to replace at the next reconcile
    serial: int = 0  # names are POOL-SERIAL, never reused
    draining: bool = False


@attrs.frozen
class PoolWatching:
    spec: PoolSpec


@attrs.frozen
class PoolReconciling:
    spec: PoolSpec


@attrs.frozen
class PoolDrained:
    pool: str
    serial: int


@attrs.frozen
class ScaleTo:
    """Keep `size` servers in the pool."""

    size: int


@attrs.frozen
class ServerCrashed:
    """A health check found `name` dead: replace it."""

    name: str


@attrs.frozen
class Drain:
    """Delete every server and end the pool."""


class Fleet(Machine):
    """One server pool, for as long as it lives."""

    name = "fleet"
    initial = PoolReconciling
    terminal = (PoolDrained,)

    def __init__(self, cloud_url: str, http: httpx.Client | None = None) -> None:
        self.url = cloud_url
        self.http = client(http)

    @on_event
    def scale(self, state: PoolWatching, event: ScaleTo, ctx: Context) -> PoolReconciling:
        if event.size < 0:
            ctx.log.warning("ScaleTo(%d) ignored: a pool cannot be smaller than empty",
                            event.size)
            return PoolReconciling(state.spec)
        return PoolReconciling(attrs.evolve(state.spec, target=event.size))

    @on_event
    def server_crashed(self, state: PoolWatching, event: ServerCrashed,
                       ctx: Context) -> PoolReconciling:
        crashed = tuple(sorted({*state.spec.crashed, event.name}))
        return PoolReconciling(attrs.evolve(state.spec, crashed=crashed))

    @on_event
    def drain(self, state: PoolWatching, event: Drain, ctx: Context) -> PoolReconciling:
        return PoolReconciling(attrs.evolve(state.spec, target=0, draining=True))

    @on_timeout(after=RESYNC)
    def resync(self, state: PoolWatching, ctx: Context) -> PoolReconciling:
        return PoolReconciling(state.spec)

    @step(retry=CLOUD_RETRY)
    def reconcile(self, state: PoolReconciling, ctx: Context) -> PoolWatching | PoolDrained:
        spec, now = state.spec, ctx.now()
        listed = reply(self.http.get(f"{self.url}/servers", params={"pool": spec.pool}))["data"]
        status = {s["name"]: s["status"] for s in listed}
        # Work in flight: done once the listing shows it, forgotten after the deadline.
        creating = [j for j in spec.creating if j.name not in status
                    and now - j.since < IN_FLIGHT_DEADLINE]
        deleting = [j for j in spec.deleting if j.name in status
                    and now - j.since < IN_FLIGHT_DEADLINE]
        being_deleted = {j.name for j in deleting}
        healthy = sorted(n for n, s in status.items() if s == "running"
                         and n not in spec.crashed and n not in being_deleted)
        # Dead (or reported crashed): delete, once (not while a delete is in flight). Any other
        # status (starting, rebooting...) is a server on its way up: it counts, and stays.
        doomed = sorted(n for n, s in status.items() if (s in DEAD or n in spec.crashed)
                        and n not in being_deleted)
        coming = sum(1 for n, s in status.items() if s != "running" and s not in DEAD
                     and n not in spec.crashed and n not in being_deleted)
        keep = healthy
        surplus = len(healthy) + coming + len(creating) - spec.target
        if surplus > 0:  # the newest go first: the old ones are warm
            cut = max(0, len(healthy) - surplus)
            keep, extra = healthy[:cut], healthy[cut:]
            doomed += extra
        serial = spec.serial
        for name in doomed:
            ctx.start_child(TeardownServer, DeleteDue(spec.pool, name),
                            key=f"delete:{name}:{ctx.version}")
            deleting.append(InFlight(name, now))
        for _ in range(max(0, spec.target - len(keep) - coming - len(creating))):
            serial += 1
            name = f"{spec.pool}-{serial:06d}"
            ctx.start_child(ProvisionServer, CreateDue(spec.pool, name), key=f"create:{name}")
            creating.append(InFlight(name, now))
        if spec.draining and not status and not creating:
            return PoolDrained(spec.pool, serial)
        return PoolWatching(PoolSpec(spec.pool, spec.target, tuple(keep), tuple(creating),
                                     tuple(deleting), (), serial, spec.draining))
