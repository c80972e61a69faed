"""`Harness`: the engine run one step at a time, in this thread, on a real database.

It claims with the worker's claim statement, hands each row to the worker's `Runner` (the same
decisions from `_decide`, the same SQL from the store), and moves a `FakeClock` instead of
waiting. Through the runner's one hook it makes a step crash at a chosen point (a
`BaseException` that stops the attempt as a dying process would: nothing more is written, the
lease is left to expire) or makes the handler fail (transient, permanent, `RetryAfter`).
"""

from __future__ import annotations

import enum
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import attrs
from sqlalchemy import func, select

from .. import _schema as schema
from .._actions import RunErrorRoute, RunHandler
from .._client import Client, HistoryEntry, WorkflowInfo
from .._context import Context
from .._definition import Machine
from .._limits import RetryAfter
from .._records import Change, ClaimedRow
from .._runner import HookPoint, Loaded, Runner, loaded_machines
from .._store import Store
from ..errors import InvalidArgument, LeaseLost, PermanentError
from ._clock import FakeClock

__all__ = ["Crash", "CrashPoint", "Failing", "Harness", "InjectedFailure",
           "InjectedPermanentFailure", "Run", "Step"]

Failing = Literal["transient", "permanent", "retry_after"]
FAILURES: tuple[Failing, ...] = ("transient", "permanent", "retry_after")


class CrashPoint(enum.Enum):
    """Where in a transition a step crashes."""

    #: The row is claimed and the attempt counted; the handler has not run.
    BEFORE_HANDLER = "before_handler"
    #: A (plain) handler returned, its effects done; the next state is not committed.
    AFTER_EFFECT = "after_effect"
    #: A transactional handler wrote through ``ctx.connection``; its transaction rolls back.
    IN_TRANSACTION = "in_transaction"
    #: An at-most-once handler took effect and the process died before recording it.
    DURING_AT_MOST_ONCE = "during_at_most_once"
    #: After whichever handler runs returned: the one of the three above that it has.
    AFTER_HANDLER = "after_handler"


class Crash(BaseException):
    """The simulated death of the worker process in the middle of a step. A `BaseException`, so
    no handler's ``except Exception`` and no engine code catches it."""


class InjectedFailure(Exception):
    """A transient failure injected by the harness (retried per the handler's policy)."""


class InjectedPermanentFailure(PermanentError):
    """A permanent failure injected by the harness (the error route, or a park)."""


@attrs.frozen
class Step:
    """What one `Harness.step` did. `workflow_id` is None when nothing was due."""

    workflow_id: uuid.UUID | None
    state: str | None = None
    crashed: CrashPoint | None = None
    failed: Failing | None = None

    @property
    def ran(self) -> bool:
        """Whether a workflow was claimed."""
        return self.workflow_id is not None


@attrs.frozen
class Run:
    """What `Harness.run_until_idle` did: steps taken, whether it stopped because nothing was
    left to do (rather than at a bound), and the time on the clock then."""

    steps: int
    idle: bool
    now: datetime


@attrs.frozen
class _Plan:
    crash: CrashPoint | None
    fail: Failing | None
    retry_after: float


def _point_of(run: RunHandler | RunErrorRoute) -> CrashPoint:
    """The crash point "after the handler returned" is, for this handler."""
    if isinstance(run, RunHandler) and run.handler.at_most_once:
        return CrashPoint.DURING_AT_MOST_ONCE
    if isinstance(run, RunHandler) and run.handler.transactional:
        return CrashPoint.IN_TRANSACTION
    return CrashPoint.AFTER_EFFECT


class Harness:
    """Workflows of `machines` run by the real engine, one step at a time, on `store` (default: a
    fresh SQLite file in a temporary directory, removed by `close`) with a `FakeClock`.

    ``with Harness([Order(gateway)]) as h: wid = h.start(OrderPlaced(...)); h.run_until_idle()``
    """

    def __init__(
        self,
        machines: Iterable[Machine | type[Machine]],
        *,
        store: Store | None = None,
        lease: float = 30.0,
    ) -> None:
        """`store` must have been made with a `FakeClock` (``Store(url, clock=FakeClock())``) and
        migrated; the harness never closes a store it was given. `lease`: seconds a step's
        claim holds a workflow (a crashed step's workflow comes back after it)."""
        self._tmp: Path | None = None
        if store is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="statemachine-harness-"))
            store = Store(f"sqlite:///{self._tmp / 'harness.db'}", clock=FakeClock())
            store.migrate()
        if not isinstance(store.clock, FakeClock):
            raise InvalidArgument("Harness(store=...): the store needs a FakeClock "
                                  "(Store(url, clock=FakeClock()))")
        self.store = store
        self.clock: FakeClock = store.clock
        self.lease = lease
        self.machines: dict[str, Loaded] = loaded_machines(machines, "a harness")
        self.client = Client(store, [m.machine for m in self.machines.values()])
        self._names = list(self.machines)
        self._generation = 0
        self._plan: _Plan | None = None
        self._used: tuple[CrashPoint | None, Failing | None] = (None, None)
        self._handler_of: dict[uuid.UUID, str] = {}
        #: Every committed change, in order, as (change, new version, handler name or None).
        self.changes: list[tuple[Change, int, str | None]] = []
        #: Each at-most-once handler call as (workflow id, handler name, idempotency key).
        self.at_most_once_calls: list[tuple[uuid.UUID, str, str]] = []
        #: Counts the calls that may have written to the database (claims, starts, sends...):
        #: a check of the database can be skipped while it stays the same.
        self.writes = 0
        self.runner = self._new_runner()

    # -- the engine --------------------------------------------------------------------------

    def _new_runner(self) -> Runner:
        """A runner as a (new) worker process has: after a crash, another worker takes over."""
        self._generation += 1
        runner = Runner(self.store, self.machines, worker=f"harness-{self._generation}",
                        lease=self.lease, sticky=lambda: False, extend_lease=self._extend,
                        on_change=self._on_change)
        runner.hook = self._hook
        return runner

    def _extend(self, row: ClaimedRow, seconds: float) -> None:
        if row.id not in self.store.sql.renew_leases([row.id], row.lease_token, seconds):
            raise LeaseLost(f"workflow {row.id}: the lease on version {row.version} was lost",
                            workflow_id=row.id, state=row.state, version=row.version)

    def _on_change(self, change: Change, version: int) -> None:
        self.changes.append((change, version, self._handler_of.pop(change.workflow_id, None)))

    def _hook(self, point: HookPoint, row: ClaimedRow, run: RunHandler | RunErrorRoute,
              ctx: Context) -> None:
        if isinstance(run, RunErrorRoute):
            assert run.handler.error_route is not None
            name = run.handler.error_route.name
        else:
            name = run.handler.name
        if point == "before_handler":
            self._handler_of[row.id] = name
            if isinstance(run, RunHandler) and run.handler.at_most_once:
                self.at_most_once_calls.append((row.id, name, ctx.idempotency_key))
        plan = self._plan
        if plan is None:
            return
        if point == "before_handler" and plan.crash is CrashPoint.BEFORE_HANDLER:
            self._fire(CrashPoint.BEFORE_HANDLER)
        if point == "after_handler" and plan.crash in (_point_of(run), CrashPoint.AFTER_HANDLER):
            self._fire(_point_of(run))
        if point == "before_handler" and plan.fail is not None:
            self._plan, self._used = None, (None, plan.fail)
            if plan.fail == "transient":
                raise InjectedFailure(f"injected transient failure of {name}")
            if plan.fail == "permanent":
                raise InjectedPermanentFailure(f"injected permanent failure of {name}")
            raise RetryAfter(plan.retry_after, f"injected RetryAfter({plan.retry_after:g}) "
                             f"of {name}")

    def _fire(self, point: CrashPoint) -> None:
        self._plan, self._used = None, (point, None)
        raise Crash(f"crash {point.value}")

    def step(self, *, crash: CrashPoint | None = None, fail: Failing | None = None,
             retry_after: float = 5.0) -> Step:
        """Claim the next due workflow (as a worker's claimer does) and run one transition of
        it. With `crash`, the step dies at that point if the handler that runs has it; the clock
        then moves on by the lease, so that the workflow is due again and the next step takes
        it over as a new worker would (an at-most-once step is then in doubt). With `fail`, the
        handler raises instead of running
        (``"transient"``, ``"permanent"``, or ``"retry_after"`` seconds)."""
        if crash is not None and fail is not None:
            raise InvalidArgument("step() takes crash= or fail=, not both")
        if fail is not None and fail not in FAILURES:
            raise InvalidArgument(f"step(fail={fail!r}): one of {', '.join(FAILURES)}")
        rows = self.store.sql.claim(owner=self.runner.worker, machines=self._names, limit=1,
                                    lease=self.lease)
        if not rows:
            return Step(None)
        self.writes += 1
        row = rows[0]
        self._plan = _Plan(crash, fail, retry_after) if crash or fail else None
        self._used = (None, None)
        try:
            self.runner.step(row)
        except Crash:
            # The process died: its lease runs out before another worker can take the row.
            self._handler_of.pop(row.id, None)
            self.runner = self._new_runner()
            self.clock.advance(seconds=self.lease)
        finally:
            self._plan = None
        return Step(row.id, row.state, *self._used)

    def next_wake_up(self) -> datetime | None:
        """The earliest time a workflow of these machines comes due (a timer, a deadline, a
        retry's backoff, a lease to expire), or None when none will by itself."""
        w = schema.workflows
        with self.store.connect() as conn:
            when: datetime | None = conn.execute(
                select(func.min(w.c.wake_at)).where(
                    w.c.machine.in_(self._names), w.c.status.in_(("ready", "running", "waiting")),
                    w.c.wake_at.is_not(None))).scalar()
        return when

    def run_until_idle(self, *, max_steps: int = 1000,
                       max_time: timedelta = timedelta(days=400)) -> Run:
        """Run every due step; when none is due, jump the clock to the next wake-up and go on,
        until no workflow will come due by itself, or `max_steps` steps were taken, or the
        next wake-up is more than `max_time` after the clock's time when called."""
        until = self.clock.now() + max_time
        steps = 0
        while steps < max_steps:
            if self.step().ran:
                steps += 1
                continue
            when = self.next_wake_up()
            if when is None:
                return Run(steps, True, self.clock.now())
            if when > until:
                return Run(steps, False, self.clock.now())
            if when > self.clock.now():
                self.clock.set(when)
        return Run(steps, False, self.clock.now())

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        """Move the clock forward (``advance(hours=2)``); nothing runs until `step` or
        `run_until_idle`."""
        return self.clock.advance(delta, **kwargs)

    # -- what a client does ------------------------------------------------------------------

    def machine_of(self, state: object) -> Loaded:
        """The machine (of this harness) that starts in `state`'s class."""
        found = [m for m in self.machines.values() if m.spec.initial is type(state)]
        if not found:
            raise InvalidArgument(f"no machine of this harness starts in "
                                  f"{type(state).__name__}")
        return found[0]

    def start(self, state: object, *, key: str | None = None) -> uuid.UUID:
        """Start a workflow of the machine whose initial state is `state`'s class."""
        self.writes += 1
        return self.client.start(self.machine_of(state).machine, state, key=key)

    def send(self, workflow_id: uuid.UUID, event: object) -> uuid.UUID:
        """Send `event` (see `Client.send`)."""
        self.writes += 1
        return self.client.send(workflow_id, event)

    def cancel(self, workflow_id: uuid.UUID, *, reason: str = "cancelled by a test") -> str:
        """Cancel (see `Client.cancel`)."""
        self.writes += 1
        return self.client.cancel(workflow_id, reason=reason)

    def force(self, workflow_id: uuid.UUID, state: object, *, reason: str = "forced") -> int:
        """Force a state (see `Client.force`)."""
        self.writes += 1
        return self.client.force(workflow_id, state, reason=reason)

    def retry(self, workflow_id: uuid.UUID) -> int:
        """Resume a parked workflow (see `Client.retry`)."""
        self.writes += 1
        return self.client.retry(workflow_id)

    def get(self, workflow_id: uuid.UUID) -> WorkflowInfo:
        """The workflow as stored now."""
        return self.client.get(workflow_id)

    def state(self, workflow_id: uuid.UUID) -> object:
        """The workflow's current state object."""
        return self.client.get(workflow_id).state

    def history(self, workflow_id: uuid.UUID) -> list[HistoryEntry]:
        """The workflow's history rows, oldest first."""
        return self.client.history(workflow_id)

    def events(self, workflow_id: uuid.UUID) -> list[tuple[str, str]]:
        """The events sent to the workflow, in order, as (type, status): status is ``pending``,
        ``consumed`` or ``rejected``."""
        ev = schema.events
        with self.store.connect() as conn:
            rows = conn.execute(select(ev.c.type, ev.c.status).where(
                ev.c.workflow_id == workflow_id).order_by(ev.c.created_at)).all()
        return [(r.type, r.status) for r in rows]

    def workflows(self) -> list[WorkflowInfo]:
        """Every workflow of these machines."""
        out: list[WorkflowInfo] = []
        for name in self._names:
            out.extend(self.client.list(machine=name, limit=100_000))
        return out

    # -- between examples --------------------------------------------------------------------

    def reset(self, machines: Iterable[Machine] | None = None) -> None:
        """Delete every workflow, history row, event and limit slot, so the next test (or
        hypothesis example) starts from an empty, migrated database, much faster than a new
        one. The clock keeps its time (it never goes back). `machines`: fresh instances (with
        fresh fakes) of the harness's machines to run from now on."""
        for m in machines or ():
            spec = type(m).spec
            if spec.name not in self.machines:
                raise InvalidArgument(f"reset(): machine {spec.name} is not one of this harness's")
            self.machines[spec.name] = attrs.evolve(self.machines[spec.name], machine=m)
        with self.store.connect() as conn:
            for table in (schema.events, schema.history, schema.limit_slots,
                          schema.limit_windows, schema.workflows):
                conn.execute(table.delete())
            conn.commit()
        self.changes.clear()
        self.at_most_once_calls.clear()
        self.writes += 1
        self._handler_of.clear()
        self.runner = self._new_runner()

    def close(self) -> None:
        """Close the store the harness made (and remove its file); a given store stays open."""
        if self._tmp is not None:
            self.store.dispose()
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
