"""Real worker processes, real signals, a real database (each test runs on every backend).

Workers are started the way operators start them (``python -m statemachine --db URL worker --app
tests.machines_for_tests:X``), killed with SIGKILL or stopped with SIGTERM, and the database is
then read directly, as an operator's SQL client would, to check the guarantees of DESIGN.md
section 3: commits exactly once per version, crashed work comes back after the lease, leases are
renewed while a handler runs, and a stopping worker gives its work back at once.

Each worker's output goes to ``<tmp_path>/logs/<name>.log`` and is printed when a test fails.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine, create_engine, func, select

from statemachine import Client, Store
from statemachine._schema import history, workflows
from tests.machines_for_tests import (
    BLOCK_FILE,
    H1,
    L1,
    P1,
    S1,
    Begin,
    Bulk,
    Crashy,
    Holding,
    LongStep,
    SlowSteps,
    marker_runs,
)
from tests.procs import WorkerProcesses
from tests.waits import wait_until

pytestmark = pytest.mark.slow

T = TypeVar("T")

# Where worker processes load machines from; the `handlers` fixture makes it asyncified ones.
APP_MODULE = "tests.machines_for_tests"


class Workers(WorkerProcesses):
    """Worker processes on the test machines (`tests.machines_for_tests`), logging under
    ``<tmp_path>/logs``; on exit any still running are killed and, when the block failed, every
    worker's output is printed."""

    def __init__(self, db_url: str, tmp_path: Path) -> None:
        super().__init__(db_url, tmp_path / "logs")

    def spawn(self, name: str, machine: str, *, lease: float = 1.0, poll: float = 0.05,
              grace: float = 5.0, concurrency: int = 4) -> subprocess.Popen[bytes]:
        return super().spawn(name, f"{APP_MODULE}:{machine}", lease=lease,
                             poll=poll, grace=grace, concurrency=concurrency)


@pytest.fixture
def db(db_url: str) -> Iterator[Engine]:
    """A plain engine on the test database for reading it as an operator would, with none of the
    engine's own settings: autocommit on SQLite (the checks take no write lock) and READ COMMITTED
    on PostgreSQL (a SERIALIZABLE read can itself fail with a serialization error)."""
    level = "AUTOCOMMIT" if db_url.startswith("sqlite") else "READ COMMITTED"
    engine = create_engine(db_url, isolation_level=level)
    yield engine
    engine.dispose()


def row_of(db: Engine, wid: uuid.UUID) -> Any:
    with db.connect() as conn:
        return conn.execute(select(workflows).where(workflows.c.id == wid)).one()


def rows_of(db: Engine, machine: str) -> dict[uuid.UUID, Any]:
    with db.connect() as conn:
        return {r.id: r for r in conn.execute(
            select(workflows).where(workflows.c.machine == machine))}


def history_of(db: Engine, wid: uuid.UUID) -> list[Any]:
    with db.connect() as conn:
        return list(conn.execute(
            select(history).where(history.c.workflow_id == wid).order_by(history.c.version)))


def histories(db: Engine, machine: str) -> dict[uuid.UUID, list[Any]]:
    ids = select(workflows.c.id).where(workflows.c.machine == machine)
    out: dict[uuid.UUID, list[Any]] = defaultdict(list)
    with db.connect() as conn:
        for r in conn.execute(select(history).where(history.c.workflow_id.in_(ids))
                              .order_by(history.c.workflow_id, history.c.version)):
            out[r.workflow_id].append(r)
    return out


def count_status(db: Engine, machine: str, status: str) -> int:
    with db.connect() as conn:
        return int(conn.execute(
            select(func.count()).select_from(workflows)
            .where(workflows.c.machine == machine, workflows.c.status == status)).scalar_one())


def assert_committed_once(hist: list[Any]) -> None:
    """Versions 1..n without gaps or repeats, and no transition committed twice."""
    versions = [h.version for h in hist]
    assert versions == list(range(1, len(hist) + 1)), versions
    moves = Counter((h.from_state, h.to_state) for h in hist if h.kind == "transition")
    assert all(n == 1 for n in moves.values()), moves


# -- 1. crash recovery ---------------------------------------------------------------------------


@pytest.mark.usefixtures("handlers")  # sync handlers, and async ones on the async worker
def test_sigkill_mid_handler_is_taken_over_after_the_lease(
    db_url: str, store: Store, db: Engine, tmp_path: Path,
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    (marks / BLOCK_FILE).touch()
    wid = Client(store, [Crashy]).start(Crashy, Begin(dir=str(marks)))

    with Workers(db_url, tmp_path) as workers:
        first = workers.spawn("w1", "Crashy", lease=1.0)
        wait_until(lambda: marker_runs(marks, "work"), "w1 to enter the `work` handler", timeout=60)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert first.returncode == -signal.SIGKILL

        # Killed in the middle of `work`: its lease is still on the row, nothing gave it back.
        orphan = row_of(db, wid)
        assert (orphan.state, orphan.status, orphan.lease_owner, orphan.attempt, orphan.version) \
            == ("Working", "running", "w1", 1, 2)
        lease_expiry = orphan.wake_at

        (marks / BLOCK_FILE).unlink()
        workers.spawn("w2", "Crashy", lease=1.0)
        final = wait_until(lambda: (r := row_of(db, wid)).status == "done" and r,
                           "w2 to finish the workflow", timeout=60)

    assert final.state == "Finished"
    assert final.data["work_attempt"] == 2  # the handler saw the abandoned attempt counted
    assert final.lease_token is None

    hist = history_of(db, wid)
    assert_committed_once(hist)
    assert [(h.kind, h.from_state, h.to_state, h.worker, h.attempt) for h in hist] == [
        ("start", None, "Begin", None, 0),
        ("transition", "Begin", "Working", "w1", 1),    # committed before the kill: not redone
        ("transition", "Working", "Wrapped", "w2", 2),  # attempt 2: attempt 1 died with w1
        ("transition", "Wrapped", "Finished", "w2", 1),
    ]
    # w2 took the workflow over only once w1's lease had expired, not before.
    assert hist[2].started_at >= lease_expiry

    # Handler runs, from the marker files: `work` ran twice (killed once), the others once.
    pid1, pid2 = first.pid, workers.procs["w2"].pid
    assert marker_runs(marks, "prepare") == [(1, pid1)]
    assert marker_runs(marks, "work") == [(1, pid1), (2, pid2)]
    assert marker_runs(marks, "wrap") == [(1, pid2)]


# -- 2. many workers, many workflows -------------------------------------------------------------

BULK_WORKFLOWS = 1000
BULK_WORKERS = 4


def test_four_workers_commit_every_transition_exactly_once(
    db_url: str, store: Store, db: Engine, tmp_path: Path, backend: str,
) -> None:
    names = [f"c{i}" for i in range(BULK_WORKERS)]
    with Workers(db_url, tmp_path) as workers:
        for name in names:
            workers.spawn(name, "Bulk", lease=10.0, poll=0.05, concurrency=4)
        workers.wait_ready(*names)

        started = time.monotonic()
        ids = Client(store, [Bulk]).start_many(Bulk, [P1(n=i) for i in range(BULK_WORKFLOWS)])
        wait_until(lambda: count_status(db, "proc_bulk", "done") == BULK_WORKFLOWS,
                   f"{BULK_WORKFLOWS} workflows to finish", timeout=90, interval=0.2)
        elapsed = time.monotonic() - started
        for name, proc in workers.procs.items():
            assert proc.poll() is None, f"worker {name} died"
        print(f"{backend}: {BULK_WORKFLOWS} workflows x 3 transitions in {elapsed:.1f}s")

        rows = rows_of(db, "proc_bulk")
        assert set(rows) == set(ids)
        for r in rows.values():
            assert (r.state, r.status, r.version, r.lease_token, r.data) \
                == ("P4", "done", 4, None, {"n": r.data["n"]})

        hists = histories(db, "proc_bulk")
        assert set(hists) == set(ids)
        per_worker: Counter[str] = Counter()
        for wid, hist in hists.items():
            assert_committed_once(hist)
            assert [(h.kind, h.from_state, h.to_state) for h in hist] == [
                ("start", None, "P1"), ("transition", "P1", "P2"),
                ("transition", "P2", "P3"), ("transition", "P3", "P4")], wid
            per_worker.update(h.worker for h in hist if h.kind == "transition")
        print(f"{backend}: transitions per worker: {dict(per_worker)}")
        assert sum(per_worker.values()) == 3 * BULK_WORKFLOWS
        # Every worker process took part (the work is shared, not serialized on one of them).
        assert set(per_worker) == set(names), per_worker


# -- 3. graceful shutdown ------------------------------------------------------------------------


@pytest.mark.usefixtures("handlers")  # sync handlers, and async ones on the async worker
def test_sigterm_finishes_in_flight_handlers_and_gives_back_the_rest(
    db_url: str, store: Store, db: Engine, tmp_path: Path,
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    ids = Client(store, [SlowSteps]).start_many(SlowSteps, [S1(dir=str(marks))] * 6)
    grace = 5.0

    with Workers(db_url, tmp_path) as workers:
        # A long lease: a row this worker kept would stay `running` long after the test looks.
        worker = workers.spawn("g1", "SlowSteps", lease=60.0, grace=grace, concurrency=2)
        wait_until(lambda: len(marker_runs(marks, "first")) == 2,
                   "g1 to start two 1-second handlers", timeout=60)
        assert not marker_runs(marks, "firstend")
        worker.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        worker.wait(grace + 10)
        took = time.monotonic() - sent
        assert worker.returncode == 0
        assert took < grace, f"g1 took {took:.1f}s to stop (grace {grace}s)"

        # Right after exit: the two in-flight handlers finished and their transitions were
        # committed once; nothing else was started; every row is ready with no lease on it.
        in_flight = {uuid.UUID(p.read_text().split()[0]) for p in marks.glob("first-*")}
        assert len(in_flight) == 2
        assert len(marker_runs(marks, "firstend")) == 2
        assert not marker_runs(marks, "second")  # no sticky continuation while stopping
        rows = rows_of(db, "proc_slow_steps")
        for wid in ids:
            r = rows[wid]
            assert (r.status, r.lease_token, r.lease_owner) == ("ready", None, None), r
            hist = history_of(db, wid)
            assert_committed_once(hist)
            if wid in in_flight:
                assert (r.state, r.version, r.attempt) == ("S2", 2, 0)
                assert [(h.kind, h.from_state, h.to_state, h.worker) for h in hist] == [
                    ("start", None, "S1", None), ("transition", "S1", "S2", "g1")]
            else:
                assert (r.state, r.version, r.attempt) == ("S1", 1, 0)
                assert [h.kind for h in hist] == ["start"]

        # ... so another worker picks all of it up at once, without waiting for any lease.
        workers.spawn("g2", "SlowSteps", lease=60.0, concurrency=6)
        wait_until(lambda: count_status(db, "proc_slow_steps", "done") == 6,
                   "g2 to finish every workflow", timeout=60)

    for wid in ids:
        hist = history_of(db, wid)
        assert_committed_once(hist)
        assert [(h.from_state, h.to_state) for h in hist] == [
            (None, "S1"), ("S1", "S2"), ("S2", "S3")]
    assert len(marker_runs(marks, "first")) == 6  # the two finished by g1 were not run again
    assert len(marker_runs(marks, "second")) == 6


# -- 4. lease renewal ----------------------------------------------------------------------------


@pytest.mark.usefixtures("handlers")  # sync handlers, and async ones on the async worker
def test_heartbeat_keeps_a_long_handler_from_being_taken_over(
    db_url: str, store: Store, db: Engine, tmp_path: Path,
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    with Workers(db_url, tmp_path) as workers:
        # A 2 s lease: a 3 s handler outlives it unless the heartbeat renews it, and a worker
        # process starved of CPU for a second on a busy machine still renews in time.
        for name in ("r1", "r2"):
            workers.spawn(name, "LongStep", lease=2.0, poll=0.05, concurrency=2)
        workers.wait_ready("r1", "r2")

        wid = Client(store, [LongStep]).start(LongStep, L1(dir=str(marks)))
        seen: list[Any] = []

        def finished() -> Any:
            r = row_of(db, wid)
            if r.status == "running":
                seen.append(r)
            return r.status == "done" and r

        final = wait_until(finished, "the 3-second handler to finish", timeout=60, interval=0.1)

    runs = marker_runs(marks, "long")
    assert len(runs) == 1, f"the handler ran {len(runs)} times: {runs}"
    assert final.data["attempt"] == 1
    hist = history_of(db, wid)
    assert_committed_once(hist)
    assert [(h.kind, h.attempt) for h in hist] == [("start", 0), ("transition", 1)]
    # One holder all along, and its lease was pushed forward while the handler ran.
    assert {(r.lease_owner, r.lease_token, r.attempt) for r in seen} \
        == {(hist[1].worker, seen[0].lease_token, 1)}
    assert (seen[-1].wake_at - seen[0].wake_at).total_seconds() > 1.0


# -- 5. shutdown when a handler outlives the grace -----------------------------------------------


def _stop_holding_worker(
    workers: Workers, db: Engine, marks: Path, wid: uuid.UUID, *, grace: float, signals: int,
) -> float:
    """Start a worker on a `hold` handler that does not return, send it `signals` SIGTERMs, and
    return how long it took to exit; the workflow must then be given back untouched."""
    worker = workers.spawn("g1", "Holding", lease=60.0, grace=grace, concurrency=1)
    wait_until(lambda: marker_runs(marks, "hold"), "g1 to enter the `hold` handler", timeout=60)
    for n in range(signals):
        if n:
            time.sleep(0.2)
        worker.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    try:
        worker.wait(20)
    except subprocess.TimeoutExpired:
        pass  # reported below
    took = time.monotonic() - sent
    assert worker.returncode == 0, f"g1 still running {took:.1f}s after SIGTERM, or failed"

    # Given back at once: ready, no lease, the interrupted attempt not counted (lease 60 s, so a
    # row left `running` would stay stuck long after this).
    r = row_of(db, wid)
    assert (r.state, r.status, r.lease_token, r.version, r.attempt) == ("H1", "ready", None, 1, 0)
    return took


def _finish_elsewhere(workers: Workers, db: Engine, marks: Path, wid: uuid.UUID) -> None:
    """Another worker runs the step again from scratch and commits it exactly once."""
    (marks / BLOCK_FILE).unlink()
    workers.spawn("next", "Holding", lease=1.0)
    final = wait_until(lambda: (r := row_of(db, wid)).status == "done" and r,
                       "another worker to finish the workflow", timeout=60)
    hist = history_of(db, wid)
    assert_committed_once(hist)
    assert [(h.kind, h.worker, h.attempt) for h in hist] == [
        ("start", None, 0), ("transition", "next", 1)]
    assert final.data["attempt"] == 1
    # Sorted on both sides: pids wrap, so the later process may have the smaller one.
    assert marker_runs(marks, "hold") == sorted([
        (1, workers.procs["g1"].pid), (1, workers.procs["next"].pid)])


def _holding_workflow(store: Store, tmp_path: Path) -> tuple[uuid.UUID, Path]:
    marks = tmp_path / "marks"
    marks.mkdir()
    (marks / BLOCK_FILE).touch()
    return Client(store, [Holding]).start(Holding, H1(dir=str(marks))), marks


@pytest.mark.usefixtures("handlers")  # sync handlers, and async ones on the async worker
def test_sigterm_past_the_grace_gives_the_workflow_back_and_exits(
    db_url: str, store: Store, db: Engine, tmp_path: Path,
) -> None:
    wid, marks = _holding_workflow(store, tmp_path)
    grace = 0.5
    with Workers(db_url, tmp_path) as workers:
        took = _stop_holding_worker(workers, db, marks, wid, grace=grace, signals=1)
        # The grace is how long a handler may hold up the exit: the process must not wait for a
        # handler that outlives it (a hung HTTP call would keep the worker alive for ever).
        assert took < grace + 5, f"g1 took {took:.1f}s to exit (grace {grace}s)"
        _finish_elsewhere(workers, db, marks, wid)


@pytest.mark.usefixtures("handlers")  # sync handlers, and async ones on the async worker
def test_second_sigterm_gives_work_back_at_once(
    db_url: str, store: Store, db: Engine, tmp_path: Path,
) -> None:
    wid, marks = _holding_workflow(store, tmp_path)
    with Workers(db_url, tmp_path) as workers:
        # A long grace: only the second signal ("stop now", see Worker.run) makes it exit early.
        took = _stop_holding_worker(workers, db, marks, wid, grace=60.0, signals=2)
        assert took < 5, f"g1 took {took:.1f}s to exit after the second SIGTERM"
        _finish_elsewhere(workers, db, marks, wid)
