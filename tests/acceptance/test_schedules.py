"""Cron schedules: one workflow per tick however many workers race for it, the missed-tick
policies after an outage, time zones across DST, and `statemachine schedules`.

Unit tests of `due_ticks` need no database. The rest run on every backend: in-process with a
`FakeClock` (the outage is a clock jump), and with three real worker processes on a schedule that
ticks every second (cronsim accepts a sixth field for seconds, so no test waits for a minute).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import create_engine, select

from statemachine import Client, InvalidDefinition, Schedule, Store
from statemachine._schedules import due_ticks, run_schedule
from statemachine._schema import history, workflows
from statemachine._schema import schedules as schedules_table
from statemachine.testing import FakeClock
from tests.apps_schedules import DAILY, EVERY_SECOND, SchedTicker, Tick
from tests.procs import ProcessGroup
from tests.waits import wait_until

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps_schedules:app"
T = TypeVar("T")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def every_minute(**kwargs: Any) -> Schedule:
    return Schedule(kwargs.pop("name", "m"), cron="* * * * *", machine=SchedTicker,
                    start=lambda t: Tick(at=t.isoformat(), by=0), **kwargs)


# -- 1. due_ticks, no database -------------------------------------------------------------------

LAST = utc(2030, 1, 1, 0, 0)
AFTER_OUTAGE = utc(2030, 1, 1, 0, 10, 30)  # ten ticks (00:01 .. 00:10) passed; 00:10 is 30 s late
MINUTES = [utc(2030, 1, 1, 0, m) for m in range(1, 11)]


def test_skip_after_an_outage_runs_no_missed_tick() -> None:
    ticks, newest = due_ticks(every_minute(missed="skip", grace=20), LAST, AFTER_OUTAGE)
    assert ticks == []
    assert newest == MINUTES[-1]  # the missed ticks are consumed all the same


def test_skip_still_runs_a_tick_at_most_grace_late() -> None:
    # 00:10 is 30 s late (within grace); 00:09 is 90 s late (skipped).
    ticks, newest = due_ticks(every_minute(missed="skip", grace=60), LAST, AFTER_OUTAGE)
    assert ticks == [MINUTES[-1]]
    assert newest == MINUTES[-1]
    # "At most grace late" includes exactly grace late.
    on_the_edge = due_ticks(every_minute(missed="skip", grace=30), LAST, AFTER_OUTAGE)
    assert on_the_edge == ([MINUTES[-1]], MINUTES[-1])


def test_latest_after_an_outage_runs_the_newest_tick_once() -> None:
    ticks, newest = due_ticks(every_minute(missed="latest", grace=1), LAST, AFTER_OUTAGE)
    assert ticks == [MINUTES[-1]]
    assert newest == MINUTES[-1]
    # From the new last tick nothing is due until the next one.
    assert due_ticks(every_minute(missed="latest"), newest, AFTER_OUTAGE) == ([], None)


def test_all_after_an_outage_runs_each_tick_up_to_max_catch_up() -> None:
    ticks, newest = due_ticks(every_minute(missed="all", grace=1), LAST, AFTER_OUTAGE)
    assert ticks == MINUTES
    assert newest == MINUTES[-1]
    bounded, newest = due_ticks(every_minute(missed="all", max_catch_up=3), LAST, AFTER_OUTAGE)
    assert bounded == MINUTES[-3:]  # the newest three; older ones are given up
    assert newest == MINUTES[-1]


@pytest.mark.parametrize("missed", ["skip", "latest", "all"])
def test_nothing_due_before_the_next_tick(missed: str) -> None:
    s = every_minute(missed=missed)
    assert due_ticks(s, LAST, LAST) == ([], None)
    assert due_ticks(s, LAST, utc(2030, 1, 1, 0, 0, 59)) == ([], None)
    assert due_ticks(s, LAST, utc(2030, 1, 1, 0, 1)) == ([MINUTES[0]], MINUTES[0])


def poll_through(schedule: Schedule, start: datetime, end: datetime,
                 every: timedelta = timedelta(minutes=5)) -> list[datetime]:
    """The ticks a worker polling every `every` from `start` to `end` would start."""
    started: list[datetime] = []
    last, now = start, start
    while now <= end:
        ticks, newest = due_ticks(schedule, last, now)
        started += ticks
        last = newest or last
        now += every
    return started


BERLIN_0230 = dict(cron="30 2 * * *", timezone="Europe/Berlin", machine=SchedTicker,
                   start=lambda t: Tick(at=t.isoformat(), by=0), grace=600.0)


def test_daily_0230_berlin_across_spring_forward() -> None:
    # 2024-03-31 02:00 CET jumps to 03:00 CEST: 02:30 does not exist that night. cronsim runs the
    # job at 03:00 CEST instead (as Vixie cron does), once; the other days run at 02:30 local.
    s = Schedule("berlin-spring", **BERLIN_0230)  # type: ignore[arg-type]
    started = poll_through(s, utc(2024, 3, 29, 12), utc(2024, 4, 1, 12))
    assert started == [utc(2024, 3, 30, 1, 30),  # 02:30 CET (UTC+1)
                       utc(2024, 3, 31, 1, 0),   # 03:00 CEST: the skipped 02:30, run at once
                       utc(2024, 4, 1, 0, 30)]   # 02:30 CEST (UTC+2)


def test_daily_0230_berlin_across_fall_back() -> None:
    # 2024-10-27 03:00 CEST goes back to 02:00 CET: 02:30 happens twice. cronsim runs the job
    # once, at the first 02:30 (CEST); a daily job must not run twice that day.
    s = Schedule("berlin-fall", **BERLIN_0230)  # type: ignore[arg-type]
    started = poll_through(s, utc(2024, 10, 25, 12), utc(2024, 10, 28, 12))
    assert started == [utc(2024, 10, 26, 0, 30),  # 02:30 CEST
                       utc(2024, 10, 27, 0, 30),  # the first 02:30, CEST; not again at 01:30Z
                       utc(2024, 10, 28, 1, 30)]  # 02:30 CET


def test_hourly_berlin_across_dst_keeps_real_hours() -> None:
    # An hourly job runs in both 02:xx hours when the clock goes back, and the 02:30 that does
    # not exist in spring is not made up (the jobs stay one real hour apart).
    s = Schedule("hourly", cron="30 * * * *", timezone="Europe/Berlin", machine=SchedTicker,
                 start=lambda t: Tick(at=t.isoformat(), by=0))
    assert s.ticks(utc(2024, 10, 27, 0), utc(2024, 10, 27, 3), limit=10) == [
        utc(2024, 10, 27, 0, 30), utc(2024, 10, 27, 1, 30), utc(2024, 10, 27, 2, 30)]
    assert s.ticks(utc(2024, 3, 31, 0), utc(2024, 3, 31, 3), limit=10) == [
        utc(2024, 3, 31, 0, 30), utc(2024, 3, 31, 1, 30), utc(2024, 3, 31, 2, 30)]


def test_first_run_inside_the_repeated_hour_starts_no_earlier_tick() -> None:
    # A schedule first seen at 02:10 CET on 2024-10-27 (01:10Z, the second pass of 02:xx) starts
    # from then: the day's 02:30 CEST (00:30Z) had passed before it, and the next tick is the
    # 28th. cronsim, asked for the ticks after 02:10 (fold=1), yields 02:30 fold=0 = 00:30Z,
    # which is *before* the start; the schedule must not take it for a new tick.
    first_seen = utc(2024, 10, 27, 1, 10)
    for missed in ("skip", "latest", "all"):
        s = Schedule(f"fold-{missed}", **{**BERLIN_0230, "missed": missed})  # type: ignore[arg-type]
        assert due_ticks(s, first_seen, first_seen) == ([], None), missed
        assert due_ticks(s, first_seen, utc(2024, 10, 27, 1, 20)) == ([], None), missed
        assert s.next_tick(first_seen) == utc(2024, 10, 28, 1, 30)
        assert all(t > first_seen for t in s.ticks(first_seen, utc(2024, 10, 30), limit=10))


def test_keys_are_utc_whatever_the_zone() -> None:
    s = every_minute(name="k")
    berlin = utc(2030, 1, 1, 0, 10).astimezone(ZoneInfo("Europe/Berlin"))
    assert s.key(berlin) == s.key(utc(2030, 1, 1, 0, 10)) == "schedule:k:2030-01-01T00:10:00+00:00"


@pytest.mark.parametrize("cron", ["61 * * * *", "* * *", "every day", "", "* * * * * * *"])
def test_bad_cron_is_a_definition_error(cron: str) -> None:
    with pytest.raises(InvalidDefinition, match=r"schedule 'bad'.*bad cron expression"):
        Schedule("bad", cron=cron, machine=SchedTicker, start=lambda t: Tick(at="", by=0))


@pytest.mark.parametrize("zone", ["Mars/Olympus", "", "../etc/passwd", "utc "])
def test_bad_zone_is_a_definition_error(zone: str) -> None:
    with pytest.raises(InvalidDefinition, match=r"schedule 'bad'.*unknown time zone"):
        Schedule("bad", cron="* * * * *", timezone=zone, machine=SchedTicker,
                 start=lambda t: Tick(at="", by=0))


def test_bad_missed_policy_is_a_definition_error() -> None:
    with pytest.raises(InvalidDefinition, match="missed must be skip, latest or all"):
        every_minute(name="bad", missed="sometimes")


def test_six_field_cron_ticks_every_second() -> None:
    s = EVERY_SECOND
    assert s.ticks(utc(2030, 1, 1), utc(2030, 1, 1, 0, 0, 3), limit=10) == [
        utc(2030, 1, 1, 0, 0, 1), utc(2030, 1, 1, 0, 0, 2), utc(2030, 1, 1, 0, 0, 3)]


# -- 3. missed-tick policies after an outage, through the store ----------------------------------


def keys_of(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        return sorted(k for (k,) in conn.execute(
            select(workflows.c.key).where(workflows.c.machine == SchedTicker.spec.name)))


@pytest.mark.parametrize(("missed", "expected"), [
    ("skip", []),
    ("latest", [5]),
    ("all", [1, 2, 3, 4, 5]),
])
def test_missed_ticks_after_an_outage(db_url: str, missed: str, expected: list[int]) -> None:
    clock = FakeClock(utc(2030, 1, 1, 0, 10))
    store = Store(db_url, clock=clock)
    try:
        s = Schedule(f"outage-{missed}", cron="0 * * * *", machine=SchedTicker, missed=missed,
                     grace=60.0, start=lambda t: Tick(at=t.isoformat(), by=0))  # type: ignore[arg-type]

        # First run: the schedule is recorded as of now; nothing is started.
        assert run_schedule(store, s) == []
        assert store.sql.schedule_ticks() == {s.name: utc(2030, 1, 1, 0, 10)}

        # Outage: five hourly ticks (01:00 .. 05:00) pass with no worker; it ends at 05:15, so
        # even the newest of them is more than `grace` late.
        clock.advance(hours=5, minutes=5)
        started = run_schedule(store, s)
        assert len(started) == len(expected)
        assert keys_of(store) == [s.key(utc(2030, 1, 1, h)) for h in expected]
        assert store.sql.schedule_ticks()[s.name] == utc(2030, 1, 1, 5)  # consumed, whatever ran
        assert run_schedule(store, s) == []  # and they stay consumed

        # Back to normal: the next tick starts exactly one workflow, whatever the policy.
        clock.set(utc(2030, 1, 1, 6))
        nxt = run_schedule(store, s)
        assert len(nxt) == 1
        info = Client(store, [SchedTicker]).get(nxt[0])
        assert info.key == s.key(utc(2030, 1, 1, 6))
        assert info.state == Tick(at=utc(2030, 1, 1, 6).isoformat(), by=0)
        assert run_schedule(store, s) == []
        assert len(keys_of(store)) == len(expected) + 1
    finally:
        store.dispose()


# -- 2a. eight threads race for the same ticks ---------------------------------------------------


def race(threads: int, fn: Callable[[], T]) -> list[T]:
    """Call `fn` in `threads` threads released at the same moment; their results."""
    barrier = threading.Barrier(threads)
    results: list[T] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            barrier.wait(10)
            value = fn()
            with lock:
                results.append(value)
        except BaseException as e:  # pragma: no cover - reported below
            with lock:
                errors.append(e)

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert not errors, errors
    assert len(results) == threads
    return results


def test_threads_racing_run_schedule_start_each_tick_once(db_url: str) -> None:
    clock = FakeClock(utc(2030, 1, 1))
    store = Store(db_url, clock=clock)
    try:
        s = every_minute(name="race", missed="all")
        assert run_schedule(store, s) == []
        total = 0
        for minutes in (1, 1, 3, 1, 2):
            clock.advance(minutes=minutes)
            results = race(8, lambda: run_schedule(store, s))
            started = [i for r in results for i in r]
            assert len(started) == len(set(started)) == minutes, results
            # The schedule's row lock makes one caller take all of the round's ticks.
            assert len([r for r in results if r]) == 1, results
            total += minutes
        keys = keys_of(store)
        assert len(keys) == len(set(keys)) == total == 8
        assert keys == [s.key(utc(2030, 1, 1, 0, m)) for m in range(1, 9)]
    finally:
        store.dispose()


# -- 2b. three worker processes, a tick every second ---------------------------------------------


class WorkerProcs(ProcessGroup):
    """`statemachine worker` subprocesses; killed on exit, output printed when the block failed."""

    def __init__(self, db_url: str, tmp_path: Path) -> None:
        self.db_url = db_url
        self.log_dir = tmp_path / "logs"
        self.log_dir.mkdir(exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != "STATEMACHINE_DATABASE_URL"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, "-m", "statemachine", "--db", self.db_url, "worker",
               "--app", APP, "--poll", "0.1", "--name", name, "--grace", "5"]
        with open(self.log_dir / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        return self.procs[name]

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def running(self, name: str) -> bool:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise AssertionError(f"worker {name} exited with {proc.returncode}:\n{self.log(name)}")
        return f"worker {name} running" in self.log(name)



@pytest.fixture
def reader(db_url: str) -> Iterator[Any]:
    """A plain engine for reading the database as an operator would (READ COMMITTED on
    PostgreSQL, so the reads cannot fail with serialization errors)."""
    engine = create_engine(db_url, isolation_level="AUTOCOMMIT" if db_url.startswith("sqlite")
                           else "READ COMMITTED")
    yield engine
    engine.dispose()


def ticked(reader: Any) -> list[Any]:
    prefix = f"schedule:{EVERY_SECOND.name}:"
    with reader.connect() as conn:
        return list(conn.execute(select(workflows).where(
            workflows.c.machine == SchedTicker.spec.name, workflows.c.key.startswith(prefix))))


@pytest.mark.slow
def test_three_worker_processes_start_each_second_exactly_once(
    db_url: str, reader: Any, tmp_path: Path,
) -> None:
    names = ("w1", "w2", "w3")
    with WorkerProcs(db_url, tmp_path) as workers:
        for name in names:
            workers.spawn(name)
        for name in names:
            wait_until(lambda n=name: workers.running(n), f"worker {name} to start")
        # Eight ticks after the first, each run to its end; each worker checks the schedule
        # every 0.1 s. A tick started in the moment before the stop may not have run yet.
        def eight_done() -> list[Any] | None:
            rows = ticked(reader)
            return rows if len(rows) >= 8 and all(r.status == "done" for r in rows) else None

        settled = wait_until(
            eight_done, "eight ticks, every one done",
            describe=lambda: Counter(r.status for r in ticked(reader)))
        for proc in workers.procs.values():
            proc.send_signal(signal.SIGTERM)
        for name, proc in workers.procs.items():
            assert proc.wait(15) == 0, workers.log(name)

        rows = ticked(reader)
        assert {r.id for r in settled} <= {r.id for r in rows}
        keys = Counter(r.key for r in rows)
        assert all(n == 1 for n in keys.values()), keys
        ticks = sorted(datetime.fromisoformat(r.data["at"]) for r in rows)
        assert [r.key for r in sorted(rows, key=lambda r: r.data["at"])] == [
            EVERY_SECOND.key(t) for t in ticks]
        # No tick skipped: one workflow for every second from the first to the last.
        assert [(b - a).total_seconds() for a, b in pairwise(ticks)] == [
            1.0] * (len(ticks) - 1), ticks
        with reader.connect() as conn:
            last = conn.execute(select(schedules_table.c.last_tick).where(
                schedules_table.c.name == EVERY_SECOND.name)).scalar_one()
        assert last.astimezone(UTC) == ticks[-1]  # nothing due was left behind at stop

        # More than one process won ticks (each logged its pid in the start state), all of
        # them our workers, and every tick's workflow ran to its end in one of them.
        pids = {p.pid for p in workers.procs.values()}
        starters = Counter(r.data["by"] for r in rows)
        assert set(starters) <= pids, (starters, pids)
        assert len(starters) >= 2, f"one process won every tick: {starters}"
        # A tick started just before the stop was given back ready, never left running.
        late = [r for r in rows if r.id not in {s.id for s in settled}]
        assert {r.status for r in late} <= {"done", "ready"}, Counter(r.status for r in late)
        with reader.connect() as conn:
            ran_by = {w for (w,) in conn.execute(select(history.c.worker).where(
                history.c.workflow_id.in_([r.id for r in rows]), history.c.kind == "transition"))}
        assert ran_by <= set(names), ran_by


# -- 4. statemachine schedules -------------------------------------------------------------------


def test_schedules_command_lists_next_run(db_url: str) -> None:
    store = Store(db_url)
    try:
        run_schedule(store, DAILY)  # records the daily schedule: it has a last tick now
        last = store.sql.schedule_ticks()[DAILY.name]
        assert last is not None
        before = DAILY.next_tick(store.current_time())
        env = {k: v for k, v in os.environ.items() if k != "STATEMACHINE_DATABASE_URL"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        ran_from = datetime.now(UTC)
        result = subprocess.run(
            [sys.executable, "-m", "statemachine", "--db", db_url, "schedules", "--app", APP,
             "--json"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
        ran_until = datetime.now(UTC)
        after = DAILY.next_tick(store.current_time())
    finally:
        store.dispose()
    assert result.returncode == 0, result.stderr
    by_name = {s["name"]: s for s in json.loads(result.stdout)["schedules"]}
    assert set(by_name) == {DAILY.name, EVERY_SECOND.name}

    def at(text: str) -> datetime:
        return datetime.fromisoformat(text)

    daily = by_name[DAILY.name]
    assert (daily["cron"], daily["timezone"], daily["machine"], daily["missed"]) == (
        "30 2 * * *", "Europe/Berlin", SchedTicker.spec.name, "latest"), daily
    assert at(daily["last_tick"]) == last.astimezone(UTC)
    assert at(daily["next_run"]) in (before, after), daily
    # 02:30 in Berlin is 00:30 or 01:30 UTC, depending on the season.
    assert before.strftime("%H:%M:%S") in ("00:30:00", "01:30:00")

    every = by_name[EVERY_SECOND.name]  # never run: no last tick, next run within a second
    assert (every["cron"], every["timezone"], every["machine"], every["missed"],
            every["last_tick"]) == ("* * * * * *", "UTC", SchedTicker.spec.name, "skip", None)
    nxt = at(every["next_run"])
    assert ran_from - timedelta(seconds=1) < nxt <= ran_until + timedelta(seconds=1), (
        nxt, ran_from, ran_until)
