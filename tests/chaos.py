"""The chaos run: four worker processes over a stream of workflows while everything goes wrong.

    python -m tests.chaos --duration 300          # what `make chaos` runs (about 6 minutes)
    python -m tests.chaos --duration 40 --stop-seconds 5 --restarts 1 --rate 10

On a throw-away PostgreSQL cluster (tests/pgcluster.py; never the shared server) at SERIALIZABLE,
4 workers run `tests.machines_for_tests:Effects` (three steps, each an effect recorded by
idempotency key outside the commit) while workflows keep being started, and meanwhile:

* a random worker is SIGKILLed every 1-3 s (and a new one started in its place);
* one worker is SIGSTOPped past its lease, then SIGCONTed;
* a trigger on ``sm_history`` raises 40001 on 5% of the engine's commits;
* PostgreSQL is restarted `restarts` times and stopped once for `stop_seconds`;
* every worker connection is ``pg_terminate_backend``ed once.

Then it checks: every workflow finished; history versions contiguous, no transition committed
twice; every committed transition's effect happened at least once (and counts the repeats); no
worker process alive but idle (each live worker commits work started after the last fault).
`run()` returns the figures; `tests/acceptance/test_chaos.py` runs a short one in the suite.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import psycopg
from sqlalchemy.engine import make_url

from statemachine import Client, Store
from tests.machines_for_tests import E1, EFFECT_SECONDS, EFFECTS_DSN, EFFECTS_TABLE, Effects
from tests.pgcluster import PgCluster
from tests.procs import WorkerProcesses
from tests.waits import wait_until

__all__ = ["Figures", "Verdict", "run", "verify"]

MACHINE = Effects.spec.name
APP = "tests.machines_for_tests:Effects"
LEASE = 2.0
# 40001 on 5% of the engine's writes to history (never on starts: a refused start_many would
# only be retried by the feeder), counted by a sequence (not rolled back with the transaction).
INJECT_40001 = [
    "CREATE SEQUENCE IF NOT EXISTS chaos_injected",
    """
    CREATE OR REPLACE FUNCTION chaos_inject() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.kind <> 'start' AND random() < 0.05 THEN
            PERFORM nextval('chaos_injected');
            RAISE EXCEPTION USING ERRCODE = '40001', MESSAGE = 'chaos: injected 40001';
        END IF;
        RETURN NEW;
    END $$""",
    "DROP TRIGGER IF EXISTS chaos_inject ON sm_history",
    """
    CREATE TRIGGER chaos_inject BEFORE INSERT ON sm_history
        FOR EACH ROW EXECUTE FUNCTION chaos_inject()""",
]


@attrs.define
class Verdict:
    """What the database says after a run."""

    workflows: int = 0
    finished: int = 0
    not_finished: list[str] = attrs.Factory(list)
    # Workflows whose history has a gap or a repeated version or transition.
    double_commits: list[str] = attrs.Factory(list)
    # Committed transitions without their effect.
    missing_effects: list[str] = attrs.Factory(list)
    transitions: int = 0
    # Effects that happened more than once (at-least-once), in total.
    repeats: int = 0

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing committed twice, no effect missing."""
        return (self.finished == self.workflows and not self.double_commits
                and not self.missing_effects)


def verify(dsn: str, ids: Sequence[uuid.UUID] | None = None) -> Verdict:
    """Check every workflow of the Effects machine (or only `ids`) as an operator's SQL would."""
    verdict = Verdict()
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT id, status FROM sm_workflows WHERE machine = %s",
                            (MACHINE,)).fetchall()
        history: dict[uuid.UUID, list[tuple[int, str, str | None, str]]] = defaultdict(list)
        for wid, version, kind, from_state, to_state in conn.execute(
                "SELECT h.workflow_id, h.version, h.kind, h.from_state, h.to_state "
                "FROM sm_history h JOIN sm_workflows w ON w.id = h.workflow_id "
                "WHERE w.machine = %s ORDER BY h.workflow_id, h.version", (MACHINE,)):
            history[wid].append((version, kind, from_state, to_state))
        effects = {(wid, step): count for wid, step, count in conn.execute(
            "SELECT workflow_id, step, count FROM effects")}
    wanted = set(ids) if ids is not None else None
    for wid, status in rows:
        if wanted is not None and wid not in wanted:
            continue
        verdict.workflows += 1
        if status == "done":
            verdict.finished += 1
        else:
            verdict.not_finished.append(f"{wid} ({status})")
        hist = history[wid]
        moves = Counter((f, t) for _, kind, f, t in hist if kind == "transition")
        if ([v for v, *_ in hist] != list(range(1, len(hist) + 1))
                or any(n > 1 for n in moves.values())):
            verdict.double_commits.append(str(wid))
        for from_state, _ in moves:
            verdict.transitions += 1
            if (wid, from_state) not in effects:
                verdict.missing_effects.append(f"{wid} {from_state}")
    verdict.repeats = sum(count - 1 for (wid, _), count in effects.items()
                          if wanted is None or wid in wanted)
    return verdict


@attrs.define
class Figures:
    """The figures of one chaos run (what docs/explanation/reliability.md reports)."""

    duration: float
    workflows: int = 0
    transitions: int = 0
    kills: int = 0
    sigstops: int = 0
    restarts: int = 0
    stops: int = 0
    stop_seconds: float = 0.0
    terminated_connections: int = 0
    injected_40001: int = 0
    lost: int = 0
    double_commits: int = 0
    missing_effects: int = 0
    repeats: int = 0
    # Seconds from the server accepting connections again to the next committed change.
    resume_seconds: list[float] = attrs.Factory(list)
    # Seconds from the last fault to every workflow finished.
    drain_seconds: float = 0.0
    # Workers that exited without being killed, or committed none of the last batch.
    idle_or_dead_workers: list[str] = attrs.Factory(list)
    verdict: Verdict = attrs.Factory(Verdict)

    @property
    def ok(self) -> bool:
        """Everything the run checks held."""
        return self.verdict.ok and not self.idle_or_dead_workers


def _serializable(url: str) -> str:
    return make_url(url).update_query_dict(
        {"options": "-cdefault_transaction_isolation=serializable"}).render_as_string(
            hide_password=False)


def _history_count(dsn: str) -> int | None:
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM sm_history").fetchone()
            return int(row[0]) if row else 0
    except psycopg.Error:
        return None


def measure_resume(dsn: str, into: list[float], timeout: float = 120.0) -> threading.Thread:
    """From now (the server just came back), time until history grows: the resume time."""
    t0 = time.monotonic()
    before = _history_count(dsn)

    def watch() -> None:
        while time.monotonic() - t0 < timeout:
            now = _history_count(dsn)
            if before is not None and now is not None and now > before:
                into.append(round(time.monotonic() - t0, 2))
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


class _Feeder:
    """Starts `rate` workflows a second (retrying through outages) until stopped."""

    def __init__(self, url: str, rate: float) -> None:
        self.url = url
        self.rate = rate
        self.ids: list[uuid.UUID] = []
        self.n = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        store = Store(self.url)
        client = Client(store, [Effects])
        owed = 0.0
        last = time.monotonic()
        while not self._stop.wait(0.25):
            now = time.monotonic()
            owed += (now - last) * self.rate
            last = now
            batch = int(owed)
            if not batch:
                continue
            try:
                self.ids += client.start_many(Effects, [E1(n=self.n + i) for i in range(batch)])
            except Exception:  # the database is down or the start was refused: try again later
                store.dispose()
                continue
            self.n += batch
            owed -= batch
        store.dispose()


def run(
    *,
    duration: float = 300.0,
    rate: float = 20.0,
    workers: int = 4,
    restarts: int = 2,
    stop_seconds: float = 30.0,
    log_dir: Path | None = None,
    effect_seconds: float = 0.005,
    say: Callable[[str], None] = print,
    seed: int | None = None,
) -> Figures:
    """One chaos run (see the module docstring); returns its figures."""
    rng = random.Random(seed)
    figures = Figures(duration=duration, stop_seconds=stop_seconds)
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="sm-chaos-logs-"))
    with PgCluster.create() as cluster:
        url = _serializable(cluster.url)
        store = Store(url)
        store.migrate()
        store.dispose()
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            conn.execute(EFFECTS_TABLE)
            for statement in INJECT_40001:
                conn.execute(statement)
        procs = WorkerProcesses(url, log_dir, env={EFFECTS_DSN: cluster.dsn,
                                                   EFFECT_SECONDS: str(effect_seconds)})
        with procs:
            try:
                _chaos(cluster, procs, url, rng, figures, duration=duration, rate=rate,
                       workers=workers, restarts=restarts, stop_seconds=stop_seconds, say=say)
            except BaseException:
                say(cluster.server_log())
                raise
    return figures


def _chaos(cluster: PgCluster, procs: WorkerProcesses, url: str, rng: random.Random,
           figures: Figures, *, duration: float, rate: float, workers: int, restarts: int,
           stop_seconds: float, say: Callable[[str], None]) -> None:
    generation: Counter[int] = Counter()
    killed: set[str] = set()
    slots: dict[int, str] = {}

    def spawn(slot: int) -> None:
        generation[slot] += 1
        name = f"w{slot}-{generation[slot]}"
        slots[slot] = name
        procs.spawn(name, APP, lease=LEASE, poll=0.05, grace=2.0, concurrency=4)

    for slot in range(workers):
        spawn(slot)
    procs.wait_ready(*slots.values())
    feeder = _Feeder(url, rate)
    feeder.start()

    # The faults, at fractions of the run; kills go on all the time (also while the database is
    # down: a worker started then must wait for it).
    plan: list[tuple[float, str]] = [(0.15, "sigstop")]
    plan += [(0.3 + 0.4 * i / max(1, restarts - 1), "restart") for i in range(restarts)]
    plan += [(0.5, "stop"), (0.85, "terminate")]
    plan.sort()
    t0 = time.monotonic()
    next_kill = t0 + rng.uniform(1, 3)
    resumes: list[threading.Thread] = []
    while time.monotonic() - t0 < duration:
        now = time.monotonic()
        if plan and now - t0 >= plan[0][0] * duration:
            _, what = plan.pop(0)
            say(f"{now - t0:6.1f}s  {what}")
            if what == "sigstop":
                slot = rng.randrange(workers)
                proc = procs.procs[slots[slot]]
                proc.send_signal(signal.SIGSTOP)
                time.sleep(LEASE + 2)  # past its lease: another worker takes its rows
                proc.send_signal(signal.SIGCONT)
                figures.sigstops += 1
            elif what == "restart":
                cluster.restart()
                figures.restarts += 1
                resumes.append(measure_resume(cluster.dsn, figures.resume_seconds))
            elif what == "stop":
                cluster.stop()
                stopped = time.monotonic()
                while time.monotonic() - stopped < stop_seconds:
                    if time.monotonic() >= next_kill:
                        next_kill = _kill_one(procs, slots, killed, spawn, rng, figures)
                    time.sleep(0.05)
                cluster.start()
                figures.stops += 1
                resumes.append(measure_resume(cluster.dsn, figures.resume_seconds))
            elif what == "terminate":
                figures.terminated_connections += cluster.terminate_backends()
        if time.monotonic() >= next_kill:
            next_kill = _kill_one(procs, slots, killed, spawn, rng, figures)
        time.sleep(0.05)
    last_fault = time.monotonic()
    feeder.stop()
    say(f"{last_fault - t0:6.1f}s  faults over; {feeder.n} workflows started; draining")
    for thread in resumes:
        thread.join(120)

    # Every worker still running must be serving: each commits some of a last batch. One the last
    # kill started may still be importing (on a loaded machine that outlasts the drain): wait
    # until each has started, or it is blamed for a batch it never had the chance to see.
    procs.wait_ready(*(name for name in procs.alive() if name not in killed), timeout=120)
    client_store = Store(url)
    last = Client(client_store, [Effects]).start_many(
        Effects, [E1(n=10_000_000 + i) for i in range(50 * workers)])
    every = [*feeder.ids, *last]

    def drained() -> bool:
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM sm_workflows WHERE machine = %s AND "
                               "status <> 'done'", (MACHINE,)).fetchone()
        return row is not None and row[0] == 0

    wait_until(drained, "every workflow to finish", timeout=max(120.0, duration))
    figures.drain_seconds = round(time.monotonic() - last_fault, 1)
    client_store.dispose()

    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        served = {r[0] for r in conn.execute(
            "SELECT DISTINCT worker FROM sm_history WHERE workflow_id = ANY(%s) AND worker "
            "IS NOT NULL", (last,))}
        injected = conn.execute("SELECT last_value, is_called FROM chaos_injected").fetchone()
    figures.injected_40001 = int(injected[0]) if injected and injected[1] else 0
    for name, proc in procs.procs.items():
        if name in killed:
            continue
        if proc.poll() is not None:
            figures.idle_or_dead_workers.append(f"{name} exited with {proc.returncode}")
        elif name not in served:
            figures.idle_or_dead_workers.append(f"{name} alive but committed none of the last "
                                                "batch")
    verdict = verify(cluster.dsn, every)
    figures.verdict = verdict
    figures.workflows = verdict.workflows
    figures.transitions = verdict.transitions
    figures.lost = verdict.workflows - verdict.finished
    figures.double_commits = len(verdict.double_commits)
    figures.missing_effects = len(verdict.missing_effects)
    figures.repeats = verdict.repeats


def _kill_one(procs: WorkerProcesses, slots: dict[int, str], killed: set[str],
              spawn: Callable[[int], None], rng: random.Random, figures: Figures) -> float:
    """SIGKILL a random worker and start another in its place; returns when to kill next."""
    slot = rng.choice(sorted(slots))
    name = slots[slot]
    proc = procs.procs[name]
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)  # a stopped one too
        proc.kill()
        proc.wait(10)
        killed.add(name)
        figures.kills += 1
    spawn(slot)
    return time.monotonic() + rng.uniform(1, 3)


def _report(figures: Figures) -> dict[str, Any]:
    out = attrs.asdict(figures, filter=lambda a, _: a.name != "verdict")
    out["ok"] = figures.ok
    verdict = figures.verdict
    out["examples"] = {"not_finished": verdict.not_finished[:5],
                       "double_commits": verdict.double_commits[:5],
                       "missing_effects": verdict.missing_effects[:5]}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tests.chaos`: one run; prints its figures as JSON; exit 1 if a check failed."""
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=300.0,
                        help="seconds of faults (default 300)")
    parser.add_argument("--rate", type=float, default=20.0,
                        help="workflows started per second meanwhile (default 20)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--restarts", type=int, default=2, help="PostgreSQL restarts")
    parser.add_argument("--stop-seconds", type=float, default=30.0,
                        help="how long PostgreSQL is stopped once (default 30)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--logs", type=Path, default=None, help="where worker logs go")
    args = parser.parse_args(argv)
    figures = run(duration=args.duration, rate=args.rate, workers=args.workers,
                  restarts=args.restarts, stop_seconds=args.stop_seconds, seed=args.seed,
                  log_dir=args.logs, say=lambda s: print(s, file=sys.stderr, flush=True))
    print(json.dumps(_report(figures), indent=2))
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())
