"""Workers ride out database outages: a PostgreSQL restart, a stop, a worker started while the
database is down. Real worker processes on a throw-away cluster (tests/pgcluster.py), never the
shared server.

The stop lasts ``STATEMACHINE_TEST_OUTAGE_SECONDS`` (default 8 s, to keep the suite short; the
issue's full 30 s stop runs in `make chaos`). Tests do not bound how fast claiming resumes (that is
a benchmark); they wait for progress and print the resume time they saw.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from statemachine import Client, Store
from tests.chaos import APP, measure_resume, verify
from tests.conftest import IN_CI
from tests.machines_for_tests import E1, EFFECT_SECONDS, EFFECTS_DSN, EFFECTS_TABLE, Effects
from tests.pgcluster import PgCluster, available
from tests.procs import WorkerProcesses
from tests.waits import wait_until

pytestmark = pytest.mark.slow

OUTAGE_SECONDS = float(os.environ.get("STATEMACHINE_TEST_OUTAGE_SECONDS") or 8.0)


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    """A fresh PostgreSQL cluster of this test's own, migrated, with the effects table."""
    why = available()
    if why is not None:
        if IN_CI:
            pytest.fail(f"cannot make a PostgreSQL cluster: {why}")
        pytest.skip(why)
    with PgCluster.create() as made:
        store = Store(made.url)
        store.migrate()
        store.dispose()
        with psycopg.connect(made.dsn, autocommit=True) as conn:
            conn.execute(EFFECTS_TABLE)
        yield made


def _workers(cluster: PgCluster, tmp_path: Path, url: str | None = None) -> WorkerProcesses:
    return WorkerProcesses(url or cluster.url, tmp_path / "logs",
                           env={EFFECTS_DSN: cluster.dsn, EFFECT_SECONDS: "0.02"})


def _done(cluster: PgCluster) -> int:
    try:
        with psycopg.connect(cluster.dsn, autocommit=True, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM sm_workflows WHERE status = 'done'"
                               ).fetchone()
    except psycopg.OperationalError:
        return -1
    return int(row[0]) if row else 0


def _start(cluster: PgCluster, n: int) -> list[uuid.UUID]:
    store = Store(cluster.url)
    ids = Client(store, [Effects]).start_many(Effects, [E1(n=i) for i in range(n)])
    store.dispose()
    return ids


def _serializable(url: str) -> str:
    return url + "?options=-cdefault_transaction_isolation%3Dserializable"


@pytest.mark.parametrize("outage", ["restart", "stop"])
def test_workers_keep_serving_through_a_postgresql_outage(
    cluster: PgCluster, tmp_path: Path, outage: str,
) -> None:
    # The stop runs at SERIALIZABLE (as CockroachDB), the restart at READ COMMITTED.
    url = _serializable(cluster.url) if outage == "stop" else cluster.url
    ids = _start(cluster, 240)
    names = ["o1", "o2"]
    with _workers(cluster, tmp_path, url) as workers:
        for name in names:
            workers.spawn(name, APP, lease=2.0, concurrency=2)
        workers.wait_ready(*names)
        wait_until(lambda: _done(cluster) >= 20, "some workflows to finish before the outage")

        if outage == "restart":
            cluster.restart()
        else:
            cluster.stop()
            time.sleep(OUTAGE_SECONDS)  # the outage itself: nothing to wait for
            for name in names:
                assert workers.procs[name].poll() is None, f"worker {name} exited while down"
            cluster.start()
        before = _done(cluster)
        resumed: list[float] = []
        measure_resume(cluster.dsn, resumed).join(120)
        assert resumed, "no change was committed after the database came back"
        print(f"{outage}: claiming resumed {resumed[0]:.2f} s after the server accepted "
              "connections again")
        assert before < len(ids), "the outage came after all the work: it tested nothing"

        wait_until(lambda: _done(cluster) == len(ids), "every workflow to finish", timeout=120,
                   describe=lambda: _done(cluster))
        for name in names:
            assert workers.procs[name].poll() is None, f"worker {name} died"
            log = workers.log(name)
            # The outage is told either by the store (a call retried on a fresh connection rode
            # it out) or, when it outlasted those retries, by the worker, which then also says
            # when the database came back.
            assert "connection lost (" in log or "database unreachable (" in log, log
            if "database unreachable (" in log:
                assert "database is back after" in log, log
            assert "Traceback" not in log, log

    verdict = verify(cluster.dsn, ids)
    assert verdict.ok, verdict
    assert (verdict.workflows, verdict.transitions) == (len(ids), 3 * len(ids))
    print(f"{outage}: {verdict.repeats} effects repeated")


def test_a_worker_started_while_the_database_is_down_waits_then_serves(
    cluster: PgCluster, tmp_path: Path,
) -> None:
    ids = _start(cluster, 20)
    cluster.stop()
    with _workers(cluster, tmp_path) as workers:
        worker = workers.spawn("late", APP, lease=2.0)
        wait_until(lambda: "database unreachable (" in workers.log("late"),
                   "the worker to say the database is unreachable")
        assert worker.poll() is None
        assert "retrying in" in workers.log("late")
        cluster.start()
        wait_until(lambda: _done(cluster) == len(ids), "the waiting worker to finish the work",
                   timeout=120)
        assert worker.poll() is None
        wait_until(lambda: "database is back after" in workers.log("late"),
                   "the worker to say the database is back (its log is written from a queue)")
    assert verify(cluster.dsn, ids).ok


def test_exit_if_unreachable_makes_the_worker_exit_1_after_the_deadline(
    cluster: PgCluster, tmp_path: Path,
) -> None:
    cluster.stop()
    with _workers(cluster, tmp_path) as workers:
        worker = workers.spawn("impatient", APP, extra=["--exit-if-unreachable", "2"])
        code = worker.wait(60)
        log = workers.log("impatient")
    assert code == 1, log
    assert "database unreachable (" in log
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, log
    assert "unreachable for" in errors[0]
    assert "Traceback" not in log
