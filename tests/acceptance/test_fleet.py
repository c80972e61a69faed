"""The dynamic fleet (`machines.fleet`) end to end: a real worker, the fake cloud, FakeClock for the
resync timer, every backend. Nothing is created or deleted twice."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from machines.fakes.cloud import CloudService
from machines.fleet import (
    IN_FLIGHT_DEADLINE,
    RESYNC,
    Drain,
    Fleet,
    PoolDrained,
    PoolReconciling,
    PoolSpec,
    PoolWatching,
    ProvisionServer,
    ScaleTo,
    ServerCrashed,
    TeardownServer,
)
from statemachine import Client, Store, Worker
from statemachine.testing import FakeClock
from tests.procs import WorkerProcesses
from tests.waits import wait_until

# SQLite and PostgreSQL (read committed): the third backend of the suite, PostgreSQL at
# SERIALIZABLE, adds nothing these machines would notice and a third of the time.
pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)

# The tests move the fake clock while handlers run (retries' backoff, resyncs): a lease of an
# hour keeps a slow handler on a busy machine from losing its lease to fake time.
FAST: dict[str, Any] = dict(concurrency=8, poll_interval=0.05, lease=3600)
MACHINES = [Fleet, ProvisionServer, TeardownServer]


@pytest.fixture(name="cloud")
def cloud_fixture() -> Iterator[CloudService]:
    with CloudService() as cloud:
        yield cloud


@pytest.fixture(name="clock")
def clock_fixture() -> FakeClock:
    return FakeClock(datetime(2030, 5, 1, 12, 0, tzinfo=UTC))



def workers_for(cloud: CloudService) -> list[Any]:
    return [Fleet(cloud.url), ProvisionServer(cloud.url), TeardownServer(cloud.url)]


def watching(client: Client, wid: Any) -> PoolSpec | None:
    info = client.get(wid)
    return info.state.spec if isinstance(info.state, PoolWatching) and \
        info.status == "waiting" else None


def settle(client: Client, clock: FakeClock, cloud: CloudService, wid: Any,
           size: int) -> PoolSpec:
    """Wait for the cloud to hold `size` running servers of the pool and nothing in flight to
    remain in the cloud, then let one resync show it to the pool."""
    def held() -> bool:
        # Retries wait on the fake clock (CLOUD_RETRY backs off from 0.2 s): move it a little.
        # At most ~75 s over the whole wait: a resync or two (harmless), never an in-flight
        # deadline (10 min).
        clock.advance(seconds=0.25)
        return (len(cloud.pool("web", status=None)) == size
                and cloud.pool("web") == cloud.pool("web", status=None)
                and watching(client, wid) is not None)

    wait_until(held, f"the cloud to hold {size} servers", interval=0.2)
    seen = client.get(wid).version
    clock.advance(RESYNC)
    return wait_until(lambda: client.get(wid).version > seen and watching(client, wid),
                      "the resync")


def no_double_effects(cloud: CloudService) -> None:
    assert set(cloud.creates_per_key.values()) <= {1}
    assert len(set(cloud.created)) == len(cloud.created)
    assert len(set(cloud.deleted)) == len(cloud.deleted)


def test_the_pool_follows_its_target_replaces_crashed_servers_and_drains(
    faked: Store, clock: FakeClock, cloud: CloudService
) -> None:
    client = Client(faked, MACHINES)
    with Worker(faked, workers_for(cloud), **FAST):
        wid = client.start(Fleet, PoolReconciling(PoolSpec("web", 3)), key="pool:web")
        spec = settle(client, clock, cloud, wid, 3)
        assert spec.servers == ("web-000001", "web-000002", "web-000003")
        assert (spec.creating, spec.deleting) == ((), ())
        client.send(wid, ScaleTo(5))
        spec = settle(client, clock, cloud, wid, 5)
        assert len(spec.servers) == 5
        client.send(wid, ScaleTo(2))
        spec = settle(client, clock, cloud, wid, 2)
        assert spec.servers == ("web-000001", "web-000002")  # the newest went first
        cloud.crash("web-000001")
        client.send(wid, ServerCrashed("web-000001"))
        spec = settle(client, clock, cloud, wid, 2)
        assert spec.servers == ("web-000002", "web-000006")
        client.send(wid, Drain())
        wait_until(lambda: cloud.pool("web", status=None) == [], "every server deleted")
        clock.advance(RESYNC)  # the next listing finds the pool empty: it ends
        info = wait_until(lambda: (lambda i: i if i.finished else None)(client.get(wid)),
                          "the drain", timeout=60)
    assert info.state == PoolDrained("web", 6)
    assert cloud.pool("web", status=None) == []
    assert sorted(cloud.deleted[:3]) == ["web-000003", "web-000004", "web-000005"]  # ScaleTo(2)
    assert cloud.deleted[3] == "web-000001"  # crashed
    assert sorted(cloud.deleted[4:]) == ["web-000002", "web-000006"]  # Drain
    no_double_effects(cloud)


def test_a_crash_nobody_reported_is_found_by_the_resync(
    faked: Store, clock: FakeClock, cloud: CloudService
) -> None:
    client = Client(faked, MACHINES)
    with Worker(faked, workers_for(cloud), **FAST):
        wid = client.start(Fleet, PoolReconciling(PoolSpec("web", 2)))
        settle(client, clock, cloud, wid, 2)
        cloud.crash("web-000002")
        clock.advance(RESYNC)  # no event: the next listing shows the crash
        spec = settle(client, clock, cloud, wid, 2)
    assert spec.servers == ("web-000001", "web-000003")
    assert cloud.deleted == ["web-000002"]
    no_double_effects(cloud)


def test_servers_still_starting_are_waited_for_not_replaced(
    faked: Store, clock: FakeClock, cloud: CloudService
) -> None:
    cloud.boot_listings = 2  # "starting" in the first two listings that show them
    client = Client(faked, MACHINES)
    with Worker(faked, workers_for(cloud), **FAST):
        wid = client.start(Fleet, PoolReconciling(PoolSpec("web", 2)))
        wait_until(lambda: len(cloud.pool("web", status=None)) == 2 and watching(client, wid),
                   "two servers created")
        for _ in range(3):  # resyncs while they start: nothing deleted, nothing added
            seen = client.get(wid).version
            clock.advance(RESYNC)
            wait_until(lambda seen=seen: client.get(wid).version > seen  # type: ignore[misc]
                       and watching(client, wid), "a resync")
    spec = watching(client, wid)
    assert spec is not None
    assert spec.servers == ("web-000001", "web-000002")
    assert (sorted(cloud.created), cloud.deleted) == (["web-000001", "web-000002"], [])


def test_failures_are_retried_or_replaced(faked: Store, clock: FakeClock,
                                          cloud: CloudService) -> None:
    cloud.fail_next(2, "GET /servers", status=503)  # the listing: retried
    cloud.fail_next(1, "POST /servers", status=500, after_effect=True,  # created, answer lost
                    where=lambda r: r.body["name"] == "web-000001")
    cloud.fail_next(1, "POST /servers", status=422,  # refused for good: CreateFailed
                    where=lambda r: r.body["name"] == "web-000002")
    client = Client(faked, MACHINES)
    with Worker(faked, workers_for(cloud), **FAST):
        wid = client.start(Fleet, PoolReconciling(PoolSpec("web", 2)))
        def up_and_refused() -> bool:
            clock.advance(seconds=1)  # the retries' backoff passes (well short of a resync)
            return len(cloud.pool("web")) == 1 and watching(client, wid) is not None and any(
                i.state_name == "CreateFailed" for i in client.list(machine="fleet_provision"))

        wait_until(up_and_refused, "one server up, one refused", interval=0.2)
        failed = wait_until(lambda: [i for i in client.list(machine="fleet_provision")
                                     if i.state_name == "CreateFailed"], "the failed create")
        assert "422" in failed[0].data["failure"]["message"]
        clock.advance(RESYNC)  # in flight, not yet past its deadline: nothing new
        wait_until(lambda: client.get(wid).version >= 5, "a resync")
        assert len(cloud.created) == 1
        clock.advance(IN_FLIGHT_DEADLINE)  # given up on: a new name replaces it
        spec = settle(client, clock, cloud, wid, 2)
    assert spec.servers == ("web-000001", "web-000003")
    no_double_effects(cloud)


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["after POST /servers", "after GET /servers"])
def test_a_worker_killed_at_the_worst_moment_creates_nothing_twice(
    db_url: str, tmp_path: Path, cloud: CloudService, moment: str
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {"CLOUD_API_URL": cloud.url, "JOBS_KILL": moment, "JOBS_MARKS": str(marks)}
    store = Store(db_url)
    client = Client(store, MACHINES)
    try:
        with WorkerProcesses(db_url, tmp_path / "logs", env=env) as workers:
            workers.spawn("w1", "tests.jobs_apps:fleet")
            wid = client.start(Fleet, PoolReconciling(PoolSpec("web", 3)))
            wait_until(lambda: (marks / "killed").exists()
                       and workers.procs["w1"].poll() is not None, "w1 to die " + moment)
            workers.spawn("w2", "tests.jobs_apps:fleet")
            wait_until(lambda: len(cloud.pool("web")) == 3 and watching(client, wid),
                       "three servers")
            wait_until(lambda: all(i.finished for i in client.list(machine="fleet_provision")),
                       "the provisioning children to finish")
        assert cloud.pool("web") == ["web-000001", "web-000002", "web-000003"]
        assert len(client.list(machine="fleet_provision")) == 3
        no_double_effects(cloud)
    finally:
        store.dispose()

