"""The Cloudflare machines (machines/cloudflare/) against the fake Cloudflare API, a real HTTP
server on 127.0.0.1 that follows the real API's paths, envelopes, status codes and 429s: (a) a
DNS record ensured, (b) a Worker uploaded and routed; every failure path on a real in-process
worker with a fake clock, on SQLite and PostgreSQL, and a worker SIGKILLed right after a record
(a route) was created: it is not created twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from machines.cloudflare.api import CloudflareAPI
from machines.cloudflare.dns import EnsureDnsRecord, RecordEnsured, RecordFailed, RecordRequested
from machines.cloudflare.workers import (
    DeployFailed,
    DeployRequested,
    DeployWorker,
    WorkerDeployed,
)
from machines.fakes.cloudflare import RATE_LIMITED, CloudflareService
from statemachine import Client, HistoryEntry, Machine, Store, Worker, WorkflowInfo
from statemachine.testing import FakeClock
from tests.fake_time import run_to_end
from tests.procs import WorkerProcesses
from tests.waits import wait_until

# The happy paths (and a SIGKILL test) run on SQLite and PostgreSQL; the failure paths, which
# exercise the machine rather than the store, on SQLite (the engine's own rules for polling,
# retries and error routes run on every backend in tests/integration).
BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

ZONE = "023e105f4ecef8ad9ca31a8372d0c353"
ACCOUNT = "01a7362d577a6c3019a474fd6f485823"
FAST: dict[str, Any] = dict(concurrency=4, poll_interval=0.05)
SCRIPT = "export default { fetch() { return new Response('hello'); } };"





def run(store: Store, clock: FakeClock, machine: Machine,
        *states: object) -> list[tuple[WorkflowInfo, list[HistoryEntry]]]:
    """Run one workflow per state, one after the other, to its end."""
    client = Client(store, [type(machine)])
    done = []
    with Worker(store, [machine], **FAST):
        for state in states:
            wid = client.start(type(machine), state)
            done.append((run_to_end(client, clock, wid), client.history(wid)))
    return done


def dns(cloudflare: CloudflareService, token: str = "test-token") -> EnsureDnsRecord:
    return EnsureDnsRecord(api=CloudflareAPI(token, cloudflare.url))


def wanted(content: str = "203.0.113.7", name: str = "app.example.com",
           type_: str = "A") -> RecordRequested:
    return RecordRequested(ZONE, type_, name, content, ttl=300)


def records(cloudflare: CloudflareService) -> list[tuple[str, str, str]]:
    return sorted((r["type"], r["name"], r["content"])
                  for r in cloudflare.records.get(ZONE, {}).values())


# -- (a) a DNS record --------------------------------------------------------------------------


@BOTH
def test_a_record_is_created_then_kept_then_updated(
    faked: Store, clock: FakeClock, cloudflare: CloudflareService
) -> None:
    (first, _), (again, _), (moved, _) = run(faked, clock, dns(cloudflare), wanted(), wanted(),
                                             wanted("203.0.113.8"))
    assert [i.state.action for i in (first, again, moved)] == [  # type: ignore[union-attr]
        "created", "kept", "updated"]
    assert records(cloudflare) == [("A", "app.example.com", "203.0.113.8")]
    assert cloudflare.created == 1
    request = cloudflare.received("POST /client/v4/zones/*/dns_records")[0]
    assert request.headers["authorization"] == "Bearer test-token"
    assert request.body == {"type": "A", "name": "app.example.com", "content": "203.0.113.7",
                            "ttl": 300, "proxied": False}


@SQLITE
def test_txt_records_are_added_beside_each_other(
    faked: Store, clock: FakeClock, cloudflare: CloudflareService
) -> None:
    name = "_acme-challenge.example.com"
    run(faked, clock, dns(cloudflare), wanted("token-1", name, "TXT"),
        wanted("token-2", name, "TXT"))
    assert records(cloudflare) == [("TXT", name, "token-1"), ("TXT", name, "token-2")]


@SQLITE
def test_a_429_waits_as_long_as_retry_after_says_without_costing_an_attempt(
    faked: Store, clock: FakeClock, cloudflare: CloudflareService
) -> None:
    cloudflare.fail_next(2, "GET /client/v4/zones/*/dns_records", status=429,
                         headers={"Retry-After": "30"}, body=RATE_LIMITED)
    start = clock.now()
    [(info, steps)] = run(faked, clock, dns(cloudflare), wanted())
    assert isinstance(info.state, RecordEnsured)
    assert [h.kind for h in steps] == ["start", "rescheduled", "rescheduled", "transition"]
    assert (clock.now() - start).total_seconds() == 60
    assert steps[-1].attempt == 1  # the two 429s did not count


@SQLITE
def test_an_answer_lost_after_the_create_does_not_create_twice(
    faked: Store, clock: FakeClock, cloudflare: CloudflareService
) -> None:
    cloudflare.fail_next(1, "POST /client/v4/zones/*/dns_records", status=502,
                         after_effect=True)
    [(info, steps)] = run(faked, clock, dns(cloudflare), wanted())
    assert isinstance(info.state, RecordEnsured)
    assert info.state.action == "kept"  # found by the retry's lookup
    assert cloudflare.created == 1
    assert [h.kind for h in steps] == ["start", "failed_attempt", "transition"]


@SQLITE
def test_a_refused_token_fails_at_once_saying_why(
    faked: Store, clock: FakeClock, cloudflare: CloudflareService
) -> None:
    [(info, steps)] = run(faked, clock, dns(cloudflare, token="revoked"), wanted())
    assert isinstance(info.state, RecordFailed)
    assert "403 10000: Authentication error" in info.state.error
    assert [h.kind for h in steps] == ["start", "error_route"]  # permanent: no retries


@SQLITE
def test_an_api_that_stays_down_fails_after_the_retries(
    faked: Store, clock: FakeClock, cloudflare: CloudflareService
) -> None:
    cloudflare.fail_next(5, "GET /client/v4/zones/*/dns_records", status=503)
    [(info, steps)] = run(faked, clock, dns(cloudflare), wanted())
    assert isinstance(info.state, RecordFailed)
    assert "CloudflareUnavailable" in info.state.error
    assert [h.kind for h in steps].count("failed_attempt") == 4
    assert records(cloudflare) == []


# -- (b) a Worker and its route ----------------------------------------------------------------


def deploy(cloudflare: CloudflareService, token: str = "test-token") -> DeployWorker:
    return DeployWorker(api=CloudflareAPI(token, cloudflare.url))


def worker(source: str = SCRIPT, pattern: str = "shop.example.com/api/*") -> DeployRequested:
    return DeployRequested(ACCOUNT, ZONE, "shop-api", source, pattern)


@BOTH
def test_a_worker_is_uploaded_and_routed_and_redeployed(
    faked: Store, clock: FakeClock, cloudflare: CloudflareService
) -> None:
    (first, _), (second, _) = run(faked, clock, deploy(cloudflare), worker(),
                                  worker(SCRIPT.replace("hello", "hello again")))
    assert isinstance(first.state, WorkerDeployed)
    assert isinstance(second.state, WorkerDeployed)
    assert (first.state.route_action, second.state.route_action) == ("created", "kept")
    assert first.state.etag != second.state.etag
    script = cloudflare.scripts[ACCOUNT]["shop-api"]
    assert (script["main_module"], script["content"]) == ("worker.js",
                                                          SCRIPT.replace("hello", "hello again"))
    assert [(r["pattern"], r["script"]) for r in cloudflare.routes[ZONE].values()] == [
        ("shop.example.com/api/*", "shop-api")]


@SQLITE
def test_a_route_pointing_elsewhere_is_pointed_at_the_script(
    faked: Store, clock: FakeClock, cloudflare: CloudflareService
) -> None:
    cloudflare.routes[ZONE] = {"r1": {"id": "r1", "pattern": "shop.example.com/api/*",
                                      "script": "old-api"}}
    [(info, _)] = run(faked, clock, deploy(cloudflare), worker())
    assert isinstance(info.state, WorkerDeployed)
    assert (info.state.route_id, info.state.route_action) == ("r1", "updated")
    assert cloudflare.routes[ZONE]["r1"]["script"] == "shop-api"


@SQLITE
def test_a_route_created_with_its_answer_lost_is_found_not_duplicated(
    faked: Store, clock: FakeClock, cloudflare: CloudflareService
) -> None:
    cloudflare.fail_next(1, "POST /client/v4/zones/*/workers/routes", status=None, drop=True,
                         after_effect=True)
    [(info, steps)] = run(faked, clock, deploy(cloudflare), worker())
    assert isinstance(info.state, WorkerDeployed)
    assert info.state.route_action == "kept"
    assert len(cloudflare.routes[ZONE]) == 1
    assert [h.kind for h in steps] == ["start", "transition", "failed_attempt", "transition"]


@SQLITE
def test_an_upload_refused_fails_with_nothing_uploaded(
    faked: Store, clock: FakeClock, cloudflare: CloudflareService
) -> None:
    [(info, _)] = run(faked, clock, deploy(cloudflare, token="revoked"), worker())
    assert isinstance(info.state, DeployFailed)
    assert (info.state.failed_in, info.state.uploaded) == ("DeployRequested", False)
    assert cloudflare.scripts == {}


@SQLITE
def test_a_route_refused_fails_saying_the_script_is_up_unrouted(
    faked: Store, clock: FakeClock, cloudflare: CloudflareService
) -> None:
    [(info, _)] = run(faked, clock, deploy(cloudflare), worker(pattern=""))
    assert isinstance(info.state, DeployFailed)
    assert (info.state.failed_in, info.state.uploaded) == ("ScriptUploaded", True)
    assert "10022: pattern is required" in info.state.error
    assert "shop-api" in cloudflare.scripts[ACCOUNT]


# -- SIGKILL right after the create --------------------------------------------------------------


@pytest.mark.slow
@SQLITE
def test_a_worker_killed_right_after_creating_the_record_does_not_create_it_again(
    store: Store, db_url: str, tmp_path: Path, cloudflare: CloudflareService
) -> None:
    env = {"CLOUDFLARE_API_URL": cloudflare.url, "CLOUDFLARE_API_TOKEN": cloudflare.token}
    with WorkerProcesses(db_url, tmp_path, env=env) as workers:
        cloudflare.fail_next(1, "POST /client/v4/zones/*/dns_records", status=None, delay=60)
        client = Client(store, [EnsureDnsRecord])
        wid = client.start(EnsureDnsRecord, wanted())
        workers.spawn("w1", "machines.cloudflare.dns:from_env")
        wait_until(lambda: cloudflare.created == 1, "the record to be created")
        workers.procs["w1"].kill()
        workers.procs["w1"].wait(10)
        workers.spawn("w2", "machines.cloudflare.dns:from_env")
        info = client.wait(wid, timeout=60)
    assert isinstance(info.state, RecordEnsured)
    assert info.state.action == "kept"
    assert cloudflare.created == 1
    assert records(cloudflare) == [("A", "app.example.com", "203.0.113.7")]


@pytest.mark.slow
@SQLITE
def test_a_worker_killed_right_after_creating_the_route_does_not_create_it_again(
    store: Store, db_url: str, tmp_path: Path, cloudflare: CloudflareService
) -> None:
    env = {"CLOUDFLARE_API_URL": cloudflare.url, "CLOUDFLARE_API_TOKEN": cloudflare.token}
    with WorkerProcesses(db_url, tmp_path, env=env) as workers:
        cloudflare.fail_next(1, "POST /client/v4/zones/*/workers/routes", status=None, delay=60)
        client = Client(store, [DeployWorker])
        wid = client.start(DeployWorker, worker())
        workers.spawn("w1", "machines.cloudflare.workers:from_env")
        wait_until(lambda: len(cloudflare.routes.get(ZONE, {})) == 1, "the route to be created")
        workers.procs["w1"].kill()
        workers.procs["w1"].wait(10)
        workers.spawn("w2", "machines.cloudflare.workers:from_env")
        info = client.wait(wid, timeout=60)
    assert isinstance(info.state, WorkerDeployed)
    assert info.state.route_action == "kept"
    assert len(cloudflare.routes[ZONE]) == 1
    assert cloudflare.uploads == 1  # the upload had committed before the kill
