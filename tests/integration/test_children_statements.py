"""Children started by one transition cost at most two statements whatever their number: 1,000
children, counted with a `before_cursor_execute` listener on every engine of the store, on every
backend; each child is written with its parent, key, first history row and start order, and under
`max_running` all but the running few wait queued."""

from __future__ import annotations

import threading
from typing import Any

import attrs
import pytest
from sqlalchemy import event, func, select

from statemachine import ChildResult, Client, Context, Machine, Store, Worker, on_children, step
from statemachine._schema import history, workflows
from tests.waits import wait_until

CHILDREN = 1000


@attrs.frozen
class Job:
    n: int


@attrs.frozen
class JobDone:
    n: int


class ManyChild(Machine):
    initial = Job
    terminal = (JobDone,)

    @step
    def run_job(self, state: Job, ctx: Context) -> JobDone:
        return JobDone(state.n)


@attrs.frozen
class FanOut:
    children: int
    capped: bool = False


@attrs.frozen
class WaitAll:
    pass


@attrs.frozen
class WaitCapped:
    pass


@attrs.frozen
class Collected:
    count: int


class ManyParent(Machine):
    initial = FanOut
    terminal = (Collected,)

    @step
    def fan_out(self, state: FanOut, ctx: Context) -> WaitAll | WaitCapped:
        for n in range(state.children):
            ctx.start_child(ManyChild, Job(n), key=f"job-{ctx.workflow_id}-{n}")
        return WaitCapped() if state.capped else WaitAll()

    @on_children()
    def all_done(self, state: WaitAll, children: list[ChildResult],
                 ctx: Context) -> Collected:
        return Collected(len(children))

    @on_children(max_running=10)
    def capped_done(self, state: WaitCapped, children: list[ChildResult],
                    ctx: Context) -> Collected:
        return Collected(len(children))


class Statements:
    """Every statement sent through the store's engines while `recording` is set."""

    def __init__(self, store: Store) -> None:
        self.sent: list[tuple[str, str]] = []  # (statement, its parameters as text)
        self.recording = threading.Event()
        self._lock = threading.Lock()
        for engine in store.engines:
            event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                executemany: bool) -> None:
        if self.recording.is_set():
            with self._lock:
                self.sent.append((statement, str(parameters)))


@pytest.mark.parametrize("capped", [False, True])
def test_a_thousand_children_take_two_statements(store: Store, capped: bool) -> None:
    client = Client(store, [ManyParent, ManyChild])
    counted = Statements(store)
    parent = client.start(ManyParent, FanOut(CHILDREN, capped=capped))
    counted.recording.set()
    # Only the parent's machine is served: the children stay as their parent's commit left them.
    with Worker(store, [ManyParent], concurrency=1, poll_interval=0.05):
        wait_until(lambda: client.get(parent).status == "waiting", "the parent to wait")
    counted.recording.clear()

    w, h = workflows, history
    with store.connect() as conn:
        rows = conn.execute(select(w.c.id, w.c.key, w.c.parent_id, w.c.status, w.c.wake_at,
                                   w.c.data, w.c.machine, w.c.state)
                            .where(w.c.parent_id == parent)
                            .order_by(w.c.created_at, w.c.id)).all()
        firsts = conn.execute(select(func.count()).select_from(h).where(
            h.c.workflow_id.in_([r.id for r in rows]), h.c.version == 1,
            h.c.kind == "start")).scalar_one()
    assert len(rows) == CHILDREN
    # The statements that wrote them: one for their rows (nothing else inserts workflows while
    # the parent runs) and one for their first history rows (the other is the parent's own).
    inserts = [s for s, _ in counted.sent if "INSERT INTO sm_workflows" in s]
    assert len(inserts) == 1, inserts
    history_inserts = [s for s, _ in counted.sent if "INSERT INTO sm_history" in s]
    assert len(history_inserts) == 2, history_inserts
    # Everything the worker sent meanwhile (polls and sweeps included) is far from 2 a child.
    assert len(counted.sent) < 100, [s for s, _ in counted.sent]
    assert firsts == CHILDREN
    # Start order is kept (created_at), with every key, the data and the machine's first state.
    assert [r.data["n"] for r in rows] == list(range(CHILDREN))
    assert [r.key for r in rows] == [f"job-{parent}-{n}" for n in range(CHILDREN)]
    assert {(r.machine, r.state, r.status) for r in rows} == {("ManyChild", "Job", "ready")}
    due = [r for r in rows if r.wake_at is not None]
    # Under max_running=10 all are queued (no wake-up) and the parent lets ten go.
    assert len(due) == (10 if capped else CHILDREN)
    if capped:
        assert [r.data["n"] for r in due] == list(range(10))
