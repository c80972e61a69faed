"""The provisioning machine (machines/provisioning/) against fake cloud and Cloudflare APIs that
are real HTTP servers on 127.0.0.1: the happy path and every failure path on a real in-process
worker with a fake clock, on SQLite and PostgreSQL; and a worker SIGKILLed at the worst moments
(right after the create, right after the delete), with real worker processes: nothing is created
or deleted twice."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from machines.cloudflare.api import CloudflareAPI
from machines.fakes.cloudflare import RATE_LIMITED, CloudflareService
from machines.fakes.hcloud import HcloudService
from machines.provisioning import (
    Provisioning,
    ProvisioningFailed,
    Ready,
    ServerRequested,
    ServerSpec,
)
from machines.provisioning.cloud import CloudAPI
from statemachine import Client, Store, Worker
from statemachine._schema import history, workflows
from statemachine.testing import FakeClock
from tests.fake_time import run_to_end
from tests.procs import WorkerProcesses
from tests.waits import wait_until

ZONE = "023e105f4ecef8ad9ca31a8372d0c353"
DOMAIN = "example.test"
FAST: dict[str, Any] = dict(concurrency=4, poll_interval=0.05)

# The happy paths (and a SIGKILL test) run on SQLite and PostgreSQL; the failure paths, which
# exercise the machine rather than the store, on SQLite (the engine's own rules for polling,
# retries and error routes run on every backend in tests/integration).
BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@pytest.fixture
def cloud() -> Iterator[HcloudService]:
    with HcloudService(boot_after=3) as service:
        yield service



def machine(cloud: HcloudService, cloudflare: CloudflareService, *,
            cf_token: str = "test-token") -> Provisioning:
    return Provisioning(cloud=CloudAPI(cloud.token, cloud.url),
                        dns=CloudflareAPI(cf_token, cloudflare.url), zone_id=ZONE,
                        domain=DOMAIN, health_url=cloud.url + "/_health/{name}")




def provision(store: Store, clock: FakeClock, m: Provisioning, name: str = "web-1") -> Any:
    client = Client(store, [Provisioning])
    with Worker(store, [m], **FAST):
        wid = client.start(Provisioning, ServerRequested(ServerSpec(name)))
        info = run_to_end(client, clock, wid)
    return info, client.history(wid)


def records(cloudflare: CloudflareService) -> list[tuple[str, str]]:
    return sorted((r["name"], r["content"]) for r in cloudflare.records.get(ZONE, {}).values())


@BOTH
def test_a_server_is_created_booted_checked_and_named(
    faked: Store, clock: FakeClock, cloud: HcloudService, cloudflare: CloudflareService
) -> None:
    info, steps = provision(faked, clock, machine(cloud, cloudflare))
    assert isinstance(info.state, Ready)
    assert (info.state.hostname, info.state.ip) == ("web-1.example.test", "203.0.113.2")
    assert (cloud.created, cloud.deleted) == (1, 0)
    assert records(cloudflare) == [("web-1.example.test", "203.0.113.2")]
    # Three looks at the server (starting, starting, running), and no history row for a poll.
    assert len(cloud.received("GET /v1/servers/*")) == 3
    assert [h.kind for h in steps] == ["start"] + ["transition"] * 4
    assert [h.to_state for h in steps] == ["ServerRequested", "Booting", "Booted", "Healthy",
                                           "Ready"]
    created = cloud.received("POST /v1/servers")[0]
    assert created.body["labels"] == {"workflow": str(info.id)}


@SQLITE
def test_polls_show_in_the_row_while_the_server_boots(
    faked: Store, clock: FakeClock, cloud: HcloudService, cloudflare: CloudflareService
) -> None:
    cloud.boot_after = 100
    client = Client(faked, [Provisioning])
    with Worker(faked, [machine(cloud, cloudflare)], **FAST):
        wid = client.start(Provisioning, ServerRequested(ServerSpec("web-1")))
        wait_until(lambda: polls(faked, wid) == 1, "the first poll")
        for n in (2, 3):
            clock.set(client.get(wid).wake_at)  # type: ignore[arg-type]
            wait_until(lambda n=n: polls(faked, wid) == n, f"poll {n}")
        row = client.get(wid)
        assert (row.state_name, row.status, row.version) == ("Booting", "ready", 2)
    assert len(client.history(wid)) == 2  # start and create: three polls wrote nothing


def polls(store: Store, wid: uuid.UUID) -> int:
    with store.connect() as conn:
        return int(conn.execute(select(workflows.c.polls).where(workflows.c.id == wid))
                   .scalar_one())


@BOTH
def test_a_server_that_never_boots_is_deleted_at_the_deadline(
    faked: Store, clock: FakeClock, cloud: HcloudService, cloudflare: CloudflareService
) -> None:
    cloud.boot_after = None
    start = clock.now()
    info, steps = provision(faked, clock, machine(cloud, cloudflare))
    assert isinstance(info.state, ProvisioningFailed)
    assert (info.state.failed_in, info.state.failure.type) == ("Booting", "PollDeadline")
    assert info.state.cleaned_up == ["server 1001 (web-1) deleted"]
    assert (cloud.created, cloud.deleted, records(cloudflare)) == (1, 1, [])
    assert (clock.now() - start).total_seconds() == pytest.approx(600, abs=1)
    looks = len(cloud.received("GET /v1/servers/*"))
    assert 20 < looks < 40  # 5 s, backing off to 30 s, over 10 minutes: not 120 looks
    assert [h.kind for h in steps] == ["start", "transition", "error_route", "transition"]


@SQLITE
def test_a_create_the_api_refuses_cleans_up_nothing(
    faked: Store, clock: FakeClock, cloud: HcloudService, cloudflare: CloudflareService
) -> None:
    client = Client(faked, [Provisioning])
    with Worker(faked, [machine(cloud, cloudflare)], **FAST):
        wid = client.start(Provisioning, ServerRequested(ServerSpec("web-1",
                                                                    server_type="unknown-9")))
        info = run_to_end(client, clock, wid)
    assert isinstance(info.state, ProvisioningFailed)
    assert info.state.failed_in == "ServerRequested"
    assert "invalid_input" in info.state.failure.message
    assert (info.state.cleaned_up, cloud.created) == ([], 0)


@SQLITE
def test_a_name_taken_by_someone_else_is_refused_and_their_server_left_alone(
    faked: Store, clock: FakeClock, cloud: HcloudService, cloudflare: CloudflareService
) -> None:
    theirs = CloudAPI(cloud.token, cloud.url).create_server(
        name="web-1", server_type="cx22", image="debian-12", location="nbg1",
        labels={"team": "other"})
    info, _ = provision(faked, clock, machine(cloud, cloudflare))
    assert isinstance(info.state, ProvisioningFailed)
    assert "was not created by this workflow" in info.state.failure.message
    assert info.state.cleaned_up == []
    assert list(cloud.servers) == [theirs["id"]]
    assert cloud.deleted == 0


@SQLITE
def test_a_create_whose_answer_was_lost_makes_one_server(
    faked: Store, clock: FakeClock, cloud: HcloudService, cloudflare: CloudflareService
) -> None:
    cloud.fail_next(1, "POST /v1/servers", status=503, after_effect=True)
    info, _ = provision(faked, clock, machine(cloud, cloudflare))
    assert isinstance(info.state, Ready)
    assert len(cloud.received("POST /v1/servers")) == 2  # retried: 409, found by name
    assert (cloud.created, cloud.deleted) == (1, 0)


@SQLITE
def test_an_unhealthy_server_is_deleted_after_its_retries(
    faked: Store, clock: FakeClock, cloud: HcloudService, cloudflare: CloudflareService
) -> None:
    cloud.unhealthy.add("web-1")
    info, steps = provision(faked, clock, machine(cloud, cloudflare))
    assert isinstance(info.state, ProvisioningFailed)
    assert info.state.failed_in == "Booted"
    assert "health check failed" in info.state.failure.message
    assert len(cloud.received("GET /_health/web-1")) == 4  # HEALTH_RETRY's attempts
    assert info.state.cleaned_up == ["server 1001 (web-1) deleted"]
    assert [h.kind for h in steps].count("failed_attempt") == 3


@SQLITE
def test_a_dns_refusal_deletes_the_server(
    faked: Store, clock: FakeClock, cloud: HcloudService, cloudflare: CloudflareService
) -> None:
    info, _ = provision(faked, clock, machine(cloud, cloudflare, cf_token="revoked"))
    assert isinstance(info.state, ProvisioningFailed)
    assert info.state.failed_in == "Healthy"
    assert "10000: Authentication error" in info.state.failure.message
    refused, deleted = info.state.cleaned_up  # the cleanup is refused too, and says so
    assert refused.startswith("DNS cleanup of web-1.example.test refused")
    assert deleted == "server 1001 (web-1) deleted"
    assert (cloud.created, cloud.deleted, records(cloudflare)) == (1, 1, [])


@SQLITE
def test_a_dns_record_made_before_a_failure_is_deleted_with_the_server(
    faked: Store, clock: FakeClock, cloud: HcloudService, cloudflare: CloudflareService
) -> None:
    # The record is created, and every answer after that is lost: the DNS step fails for good.
    cloudflare.fail_next(1, "POST /client/v4/zones/*/dns_records", status=400,
                         after_effect=True)
    info, _ = provision(faked, clock, machine(cloud, cloudflare))
    assert isinstance(info.state, ProvisioningFailed)
    assert info.state.failed_in == "Healthy"
    assert info.state.cleaned_up == ["DNS record web-1.example.test -> 203.0.113.2 deleted",
                                     "server 1001 (web-1) deleted"]
    assert (cloudflare.created, cloudflare.deleted, records(cloudflare)) == (1, 1, [])


@SQLITE
def test_dns_rate_limits_and_lost_answers_do_not_duplicate_the_record(
    faked: Store, clock: FakeClock, cloud: HcloudService, cloudflare: CloudflareService
) -> None:
    cloudflare.fail_next(1, "GET /client/v4/zones/*/dns_records", status=429,
                         headers={"Retry-After": "7"}, body=RATE_LIMITED)
    cloudflare.fail_next(1, "POST /client/v4/zones/*/dns_records", status=502,
                         after_effect=True)
    info, steps = provision(faked, clock, machine(cloud, cloudflare))
    assert isinstance(info.state, Ready)
    assert (cloudflare.created, records(cloudflare)) == (1, [("web-1.example.test",
                                                               "203.0.113.2")])
    kinds = [h.kind for h in steps]
    assert kinds.count("rescheduled") == 1
    assert kinds.count("failed_attempt") == 1


@SQLITE
def test_a_server_deleted_while_booting_is_reported_gone(
    faked: Store, clock: FakeClock, cloud: HcloudService, cloudflare: CloudflareService
) -> None:
    cloud.boot_after = 100
    client = Client(faked, [Provisioning])
    with Worker(faked, [machine(cloud, cloudflare)], **FAST):
        wid = client.start(Provisioning, ServerRequested(ServerSpec("web-1")))
        wait_until(lambda: polls(faked, wid) == 1, "the first poll")
        CloudAPI(cloud.token, cloud.url).delete_server(1001)
        info = run_to_end(client, clock, wid)
    assert isinstance(info.state, ProvisioningFailed)
    assert (info.state.failed_in, info.state.failure.type) == ("Booting", "ServerGone")
    assert info.state.cleaned_up == ["server 1001 (web-1) was already gone"]
    assert cloud.deleted == 1  # by the test, not twice


@SQLITE
def test_a_cancel_while_booting_tears_the_server_down(
    faked: Store, clock: FakeClock, cloud: HcloudService, cloudflare: CloudflareService
) -> None:
    cloud.boot_after = 100
    client = Client(faked, [Provisioning])
    with Worker(faked, [machine(cloud, cloudflare)], **FAST):
        wid = client.start(Provisioning, ServerRequested(ServerSpec("web-1")))
        wait_until(lambda: polls(faked, wid) == 1, "the first poll")
        client.cancel(wid, reason="not needed after all")
        info = run_to_end(client, clock, wid)
    assert isinstance(info.state, ProvisioningFailed)
    assert (info.state.failed_in, info.state.failure.type) == ("Booting", "Cancelled")
    assert "not needed after all" in info.state.failure.message
    assert info.state.cleaned_up == ["server 1001 (web-1) deleted"]
    assert (cloud.created, cloud.deleted) == (1, 1)


# -- SIGKILL at the worst moments, with real worker processes ------------------------------------


def worker_env(cloud: HcloudService, cloudflare: CloudflareService) -> dict[str, str]:
    return {"PROVISIONING_CLOUD_URL": cloud.url, "PROVISIONING_CLOUD_TOKEN": cloud.token,
            "CLOUDFLARE_API_URL": cloudflare.url, "CLOUDFLARE_API_TOKEN": cloudflare.token,
            "PROVISIONING_ZONE_ID": ZONE, "PROVISIONING_DOMAIN": DOMAIN,
            "PROVISIONING_HEALTH_URL": cloud.url + "/_health/{name}"}


def kinds_of(store: Store, wid: uuid.UUID) -> list[str]:
    with store.connect() as conn:
        return list(conn.execute(select(history.c.kind).where(history.c.workflow_id == wid)
                                 .order_by(history.c.version)).scalars())


@pytest.mark.slow
@BOTH
def test_a_worker_killed_right_after_the_create_makes_one_server(
    store: Store, db_url: str, tmp_path: Path, cloudflare: CloudflareService
) -> None:
    with HcloudService(boot_after=1) as cloud, \
            WorkerProcesses(db_url, tmp_path, env=worker_env(cloud, cloudflare)) as workers:
        # The create happens; its answer is held back, and the worker dies waiting for it.
        cloud.fail_next(1, "POST /v1/servers", status=None, delay=60)
        client = Client(store, [Provisioning])
        wid = client.start(Provisioning, ServerRequested(ServerSpec("web-1")))
        workers.spawn("w1", "machines.provisioning:from_env")
        wait_until(lambda: cloud.created == 1, "the server to be created")
        workers.procs["w1"].kill()
        workers.procs["w1"].wait(10)
        workers.spawn("w2", "machines.provisioning:from_env")
        info = client.wait(wid, timeout=60)
    assert isinstance(info.state, Ready)
    assert (cloud.created, cloud.deleted) == (1, 0)
    assert len(cloud.received("POST /v1/servers")) == 2
    assert records(cloudflare) == [("web-1.example.test", info.state.ip)]


@pytest.mark.slow
@SQLITE
def test_a_worker_killed_right_after_the_delete_deletes_once(
    store: Store, db_url: str, tmp_path: Path, cloudflare: CloudflareService
) -> None:
    # The DNS API refuses the token: the DNS step fails for good, and the server is deleted.
    with HcloudService(boot_after=1) as cloud, WorkerProcesses(
            db_url, tmp_path, env={**worker_env(cloud, cloudflare),
                                   "CLOUDFLARE_API_TOKEN": "revoked"}) as workers:
        cloud.fail_next(1, "DELETE /v1/servers/*", status=None, delay=60)
        client = Client(store, [Provisioning])
        wid = client.start(Provisioning, ServerRequested(ServerSpec("web-1")))
        workers.spawn("w1", "machines.provisioning:from_env")
        wait_until(lambda: cloud.deleted == 1, "the server to be deleted", timeout=120)
        workers.procs["w1"].kill()
        workers.procs["w1"].wait(10)
        workers.spawn("w2", "machines.provisioning:from_env")
        info = client.wait(wid, timeout=60)
    assert isinstance(info.state, ProvisioningFailed)
    assert (cloud.created, cloud.deleted) == (1, 1)
    assert info.state.cleaned_up[-1] == "server 1001 (web-1) was already gone"
    assert len(cloud.received("DELETE /v1/servers/*")) == 2
