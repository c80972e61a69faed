"""Machines run by real worker processes in `test_processes.py`.

Worker subprocesses import them as ``tests.machines_for_tests:SomeMachine``, so they live at module
level. Handlers that the tests watch leave marker files in the directory named by their state
(``state.dir``): one file per handler run, named ``<step>-<attempt>-<pid>-<random>``, created before
the handler does anything else. The tests count runs by counting files, which works the same on
every backend and survives SIGKILL (a file is on disk as soon as it is created).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import attrs

from statemachine import Context, Machine, RetryPolicy, step

__all__ = [
    "BLOCK_FILE",
    "Bulk",
    "Crashy",
    "Effects",
    "Holding",
    "LongStep",
    "Renamed",
    "SlowSteps",
    "marker_runs",
]

# While this file exists in a workflow's `dir`, Crashy's `work` and Holding's `hold` keep running
# (so the test can stop the worker in the middle of them); the test deletes it to let them finish.
BLOCK_FILE = "block"


def _mark(directory: str, step_name: str, ctx: Context) -> Path:
    path = Path(directory) / f"{step_name}-{ctx.attempt}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.write_text(f"{ctx.workflow_id} {ctx.worker}\n")
    return path


def marker_runs(directory: Path, step_name: str) -> list[tuple[int, int]]:
    """(attempt, pid) of every run of `step_name` that left a marker in `directory`, sorted."""
    runs = []
    for p in directory.glob(f"{step_name}-*"):
        _, attempt, pid, _ = p.name.split("-")
        runs.append((int(attempt), int(pid)))
    return sorted(runs)


# -- crash recovery: Begin -> Working -> Wrapped -> Finished -------------------------------------


@attrs.frozen
class Begin:
    dir: str


@attrs.frozen
class Working:
    dir: str


@attrs.frozen
class Wrapped:
    dir: str
    work_attempt: int


@attrs.frozen
class Finished:
    dir: str
    work_attempt: int


class Crashy(Machine):
    """`work` blocks while the block file exists (up to a minute): a worker can be killed in it."""

    name = "proc_crashy"
    initial = Begin
    terminal = (Finished,)

    @step
    def prepare(self, state: Begin, ctx: Context) -> Working:
        _mark(state.dir, "prepare", ctx)
        return Working(dir=state.dir)

    @step
    def work(self, state: Working, ctx: Context) -> Wrapped:
        _mark(state.dir, "work", ctx)
        block = Path(state.dir) / BLOCK_FILE
        deadline = time.monotonic() + 60
        while block.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return Wrapped(dir=state.dir, work_attempt=ctx.attempt)

    @step
    def wrap(self, state: Wrapped, ctx: Context) -> Finished:
        _mark(state.dir, "wrap", ctx)
        return Finished(dir=state.dir, work_attempt=state.work_attempt)


# -- throughput: three quick transitions P1 -> P2 -> P3 -> P4 -------------------------------------


@attrs.frozen
class P1:
    n: int


@attrs.frozen
class P2:
    n: int


@attrs.frozen
class P3:
    n: int


@attrs.frozen
class P4:
    n: int


class Bulk(Machine):
    """Three trivial steps: measures the engine, not the handlers."""

    name = "proc_bulk"
    initial = P1
    terminal = (P4,)

    @step
    def one(self, state: P1, ctx: Context) -> P2:
        return P2(n=state.n)

    @step
    def two(self, state: P2, ctx: Context) -> P3:
        return P3(n=state.n)

    @step
    def three(self, state: P3, ctx: Context) -> P4:
        return P4(n=state.n)


# -- graceful shutdown: two 1-second steps S1 -> S2 -> S3 -----------------------------------------

SLOW_STEP_SECONDS = 1.0


@attrs.frozen
class S1:
    dir: str


@attrs.frozen
class S2:
    dir: str


@attrs.frozen
class S3:
    dir: str


class SlowSteps(Machine):
    """Each step leaves a marker, takes a second, then leaves a `<step>_end` marker."""

    name = "proc_slow_steps"
    initial = S1
    terminal = (S3,)

    @step
    def first(self, state: S1, ctx: Context) -> S2:
        _mark(state.dir, "first", ctx)
        time.sleep(SLOW_STEP_SECONDS)
        _mark(state.dir, "firstend", ctx)
        return S2(dir=state.dir)

    @step
    def second(self, state: S2, ctx: Context) -> S3:
        _mark(state.dir, "second", ctx)
        time.sleep(SLOW_STEP_SECONDS)
        _mark(state.dir, "secondend", ctx)
        return S3(dir=state.dir)


# -- lease renewal: one step that outlives the lease L1 -> L2 -------------------------------------

LONG_STEP_SECONDS = 3.0


@attrs.frozen
class L1:
    dir: str


@attrs.frozen
class L2:
    dir: str
    attempt: int


class LongStep(Machine):
    """One step that runs for `LONG_STEP_SECONDS`, longer than the 2 s lease the test gives."""

    name = "proc_long_step"
    initial = L1
    terminal = (L2,)

    @step
    def long(self, state: L1, ctx: Context) -> L2:
        _mark(state.dir, "long", ctx)
        time.sleep(LONG_STEP_SECONDS)
        return L2(dir=state.dir, attempt=ctx.attempt)


# -- shutdown past the grace: one step that runs until the test lets it go H1 -> H2 ---------------


@attrs.frozen
class H1:
    dir: str


@attrs.frozen
class H2:
    dir: str
    attempt: int


class Holding(Machine):
    """`hold` runs while the block file exists in `dir` (up to a minute), like a hung HTTP call."""

    name = "proc_holding"
    initial = H1
    terminal = (H2,)

    @step
    def hold(self, state: H1, ctx: Context) -> H2:
        _mark(state.dir, "hold", ctx)
        block = Path(state.dir) / BLOCK_FILE
        deadline = time.monotonic() + 60
        while block.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return H2(dir=state.dir, attempt=ctx.attempt)


# -- outages and chaos: three steps, each making an effect recorded by idempotency key ------------
#
# E1 -> E2 -> E3 -> E4. Each handler first records its effect in the `effects` table of the
# database named by EFFECTS_DSN (a libpq string), outside the engine's commit, keyed by
# `ctx.idempotency_key`: a repeat of the same transition bumps `count` instead of adding a row. So
# after a run, every committed transition must have its effect (at least once), and the counts
# above 1 are the repeats at-least-once delivery allowed.

EFFECTS_DSN = "SM_TEST_EFFECTS_DSN"
EFFECT_SECONDS = "SM_TEST_EFFECT_SECONDS"
EFFECTS_TABLE = """CREATE TABLE IF NOT EXISTS effects (
    key text PRIMARY KEY, workflow_id uuid NOT NULL, step text NOT NULL, count int NOT NULL)"""


@attrs.frozen
class E1:
    n: int


@attrs.frozen
class E2:
    n: int


@attrs.frozen
class E3:
    n: int


@attrs.frozen
class E4:
    n: int


def _effect(step_name: str, ctx: Context) -> None:
    import psycopg  # only the workers that run Effects need it

    with psycopg.connect(os.environ[EFFECTS_DSN], connect_timeout=5, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO effects (key, workflow_id, step, count) VALUES (%s, %s, %s, 1) "
            "ON CONFLICT (key) DO UPDATE SET count = effects.count + 1",
            (ctx.idempotency_key, ctx.workflow_id, step_name))
    time.sleep(float(os.environ.get(EFFECT_SECONDS) or 0.0))


# An outage makes effects and commits fail for a while: retry (briefly) for as long as it lasts.
_OUTAGE_RETRY = RetryPolicy(max_attempts=10_000, initial_delay=0.05, max_delay=1.0)


class Effects(Machine):
    """Three steps, each an effect recorded by idempotency key (see above)."""

    name = "proc_effects"
    initial = E1
    terminal = (E4,)

    @step(retry=_OUTAGE_RETRY)
    def first(self, state: E1, ctx: Context) -> E2:
        _effect("E1", ctx)
        return E2(n=state.n)

    @step(retry=_OUTAGE_RETRY)
    def second(self, state: E2, ctx: Context) -> E3:
        _effect("E2", ctx)
        return E3(n=state.n)

    @step(retry=_OUTAGE_RETRY)
    def third(self, state: E3, ctx: Context) -> E4:
        _effect("E3", ctx)
        return E4(n=state.n)


# -- a state stored under another name than its class's: `statemachine start` must use it -------


@attrs.frozen
class Fresh:
    __state_name__ = "Original"
    n: int


@attrs.frozen
class Settled:
    n: int


class Renamed(Machine):
    """One step from a state stored as ``Original`` (its class is called `Fresh`)."""

    name = "proc_renamed"
    initial = Fresh
    terminal = (Settled,)

    @step
    def settle(self, state: Fresh, ctx: Context) -> Settled:
        return Settled(n=state.n)
