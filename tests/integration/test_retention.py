"""Retention (issue 10, item 3): a workflow that finishes for good (done, cancelled) gets
`purge_after`; `purge` (and `statemachine purge --older-than`, and a worker's `purge_older_than`)
deletes such workflows once they are older than the age asked, with their children and the
history and events of them all, in small batches, while workers go on; parked workflows, young
ones and trees with a member still running are kept."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import attrs
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from statemachine import (
    ChildResult,
    Client,
    Context,
    Machine,
    RetryPolicy,
    Store,
    Worker,
    on_children,
    on_event,
    step,
)
from statemachine._cli import cli
from statemachine._retention import parse_age, purge
from statemachine._schema import events, history, workflows
from statemachine.errors import InvalidArgument
from statemachine.testing import FakeClock
from tests.waits import wait_until

WAIT = 60.0


@attrs.frozen
class Job:
    n: int
    fail: bool = False


@attrs.frozen
class JobDone:
    n: int


class RetChild(Machine):
    name = "ret_child"
    initial = Job
    terminal = (JobDone,)

    @step(retry=RetryPolicy(max_attempts=1))
    def work(self, state: Job, ctx: Context) -> JobDone:
        if state.fail:
            raise RuntimeError("broken on purpose")  # parked: status failed
        return JobDone(state.n)


@attrs.frozen
class FanOut:
    children: int
    hold: bool = False  # the last child waits for an event (so the tree is not finished)


@attrs.frozen
class Collecting:
    children: int


@attrs.frozen
class CollectingFirst:
    children: int


@attrs.frozen
class Collected:
    statuses: tuple[str, ...]


@attrs.frozen
class Ping:
    n: int


@attrs.frozen
class Waiting:
    n: int


@attrs.frozen
class Pinged:
    n: int


class RetWaiter(Machine):
    name = "ret_waiter"
    initial = Waiting
    terminal = (Pinged,)

    @on_event
    def pinged(self, state: Waiting, event: Ping, ctx: Context) -> Pinged:
        return Pinged(event.n)


class RetParent(Machine):
    name = "ret_parent"
    initial = FanOut
    terminal = (Collected,)

    @step
    def fan_out(self, state: FanOut, ctx: Context) -> Collecting | CollectingFirst:
        for n in range(state.children):
            if state.hold and n == state.children - 1:
                ctx.start_child(RetWaiter, Waiting(n))
            else:
                ctx.start_child(RetChild, Job(n))
        return CollectingFirst(state.children) if state.hold else Collecting(state.children)

    @on_children()
    def collected(self, state: Collecting, children: list[ChildResult],
                  ctx: Context) -> Collected:
        return Collected(tuple(c.status for c in children))

    @on_children(wait_for="first")
    def first_collected(self, state: CollectingFirst, children: list[ChildResult],
                        ctx: Context) -> Collected:
        return Collected(tuple(c.status for c in children))


MACHINES = [RetChild, RetParent, RetWaiter]


def count(store: Store, table: object, ids: list[uuid.UUID]) -> int:
    column = workflows.c.id if table is workflows else table.c.workflow_id  # type: ignore[attr-defined]
    stmt = select(func.count()).select_from(table).where(column.in_(ids))  # type: ignore[arg-type]
    # (through the store's retries: at SERIALIZABLE a read beside busy workers may be refused)
    return int(store.transaction(lambda conn: conn.execute(stmt).scalar_one()))


def purge_after(store: Store, wid: uuid.UUID) -> object:
    stmt = select(workflows.c.purge_after).where(workflows.c.id == wid)
    return store.transaction(lambda conn: conn.execute(stmt).scalar_one())


def tree(store: Store, root: uuid.UUID) -> list[uuid.UUID]:
    stmt = select(workflows.c.id).where(workflows.c.parent_id == root)
    return [root, *store.transaction(lambda conn: list(conn.execute(stmt).scalars()))]


def test_finishing_for_good_sets_purge_after_and_nothing_else_does(
        faked: Store, clock: FakeClock) -> None:
    client = Client(faked, MACHINES)
    done = client.start(RetChild, Job(1))
    parked = client.start(RetChild, Job(2, fail=True))
    waiting = client.start(RetWaiter, Waiting(3))
    cancelled = client.start(RetWaiter, Waiting(4))
    with Worker(faked, MACHINES, poll_interval=0.05):
        assert client.wait(done, timeout=WAIT).status == "done"
        finished_at = clock.now()
        assert client.wait(parked, timeout=WAIT).status == "failed"
        wait_until(lambda: client.get(waiting).status == "waiting", "the waiter to wait")
        client.cancel(cancelled)
        assert client.wait(cancelled, timeout=WAIT).status == "cancelled"
    assert purge_after(faked, done) == finished_at
    assert purge_after(faked, cancelled) == finished_at
    assert purge_after(faked, parked) is None  # it waits for a person
    assert purge_after(faked, waiting) is None
    client.retry(parked)  # a parked workflow can still be retried: it is all there
    assert client.get(parked).status == "ready"


def test_purge_deletes_old_finished_trees_whole_and_keeps_the_rest(
        faked: Store, clock: FakeClock) -> None:
    client = Client(faked, MACHINES)
    with Worker(faked, MACHINES, poll_interval=0.05):
        families = [client.start(RetParent, FanOut(3)) for _ in range(3)]
        single = client.start(RetWaiter, Waiting(0))
        wait_until(lambda: client.get(single).status == "waiting", "the waiter to wait")
        client.send(single, Ping(7))  # an event, consumed: deleted with its workflow
        held = client.start(RetParent, FanOut(2, hold=True))  # its waiting child keeps it
        parked = client.start(RetChild, Job(9, fail=True))
        for wid in [*families, single, held]:
            assert client.wait(wid, timeout=WAIT).status == "done"
        assert client.wait(parked, timeout=WAIT).status == "failed"
        clock.advance(days=20)
        young = client.start(RetChild, Job(5))
        assert client.wait(young, timeout=WAIT).status == "done"
    old = [i for f in families for i in tree(faked, f)] + [single]
    assert len(old) == 3 * 4 + 1
    assert count(faked, events, [single]) == 1
    history_rows = count(faked, history, old)
    kept = [*tree(faked, held), parked, young]

    clock.advance(days=11)  # the old ones finished 31 days ago, `young` 11 days ago
    seen = []
    totals = purge(faked, timedelta(days=30), batch_size=2, progress=lambda t: seen.append(
        (t.workflows, t.batches)))
    assert (totals.workflows, totals.history, totals.events) == (len(old), history_rows, 1)
    assert totals.kept == 1  # `held`: its child still waits
    assert seen[0][1] == 1
    assert seen[-1] == (len(old), totals.batches)
    assert totals.batches >= 3  # 5 top-level workflows past the age, 2 per batch
    for table in (workflows, history, events):
        assert count(faked, table, old) == 0
    assert count(faked, workflows, kept) == len(kept)
    assert count(faked, history, kept) > 0
    assert purge(faked, timedelta(days=30)).workflows == 0  # nothing left to do
    assert purge(faked, timedelta(days=5)).workflows == 1  # now `young` is old enough


def test_bad_ages_and_batches_are_refused_naming_the_problem(faked: Store) -> None:
    assert parse_age("30d") == timedelta(days=30)
    assert parse_age("12h") == timedelta(hours=12)
    assert parse_age("1.5w") == timedelta(weeks=1.5)
    with pytest.raises(InvalidArgument, match="'30 days' is not an age: write a number"):
        parse_age("30 days")
    with pytest.raises(InvalidArgument, match="batch_size must be positive"):
        purge(faked, timedelta(days=1), batch_size=0)


def test_the_purge_command_reports_progress_and_totals(db_url: str) -> None:
    store = Store(db_url)
    try:
        client = Client(store, MACHINES)
        ids = [client.start(RetChild, Job(n)) for n in range(5)]
        with Worker(store, MACHINES, poll_interval=0.05):
            for wid in ids:
                assert client.wait(wid, timeout=WAIT).status == "done"
    finally:
        store.dispose()
    runner = CliRunner()
    kept = runner.invoke(cli, ["--db", db_url, "purge", "--older-than", "30d"])
    assert kept.exit_code == 0, kept.output
    assert kept.stdout.strip() == "purged 0 workflows (0 history rows, 0 events) in 0 batches"
    gone = runner.invoke(cli, ["--db", db_url, "purge", "--older-than", "0s", "--batch-size",
                               "2"])
    assert gone.exit_code == 0, gone.output
    assert gone.stdout.strip().startswith("purged 5 workflows (")
    assert gone.stdout.strip().endswith("in 3 batches")
    bad = runner.invoke(cli, ["--db", db_url, "purge", "--older-than", "soon"])
    assert bad.exit_code == 2
    assert "'soon' is not an age" in bad.output


@pytest.mark.timeout(300)  # two workers and a starter on a shared, busy machine
def test_a_worker_purges_continuously_while_others_run_under_load(
        faked: Store, clock: FakeClock) -> None:
    """Old trees go in small batches while two workers (one of them purging) run new
    workflows: every new workflow finishes with its history whole, nothing new is deleted."""
    client = Client(faked, MACHINES)
    with Worker(faked, MACHINES, poll_interval=0.05, concurrency=4):
        old = [client.start(RetParent, FanOut(2)) for _ in range(20)]
        for wid in old:
            assert client.wait(wid, timeout=WAIT).status == "done"
    old_ids = [i for root in old for i in tree(faked, root)]
    assert len(old_ids) == 60
    clock.advance(days=31)

    new: list[uuid.UUID] = []
    stop = threading.Event()

    def keep_starting() -> None:
        while not stop.is_set() and len(new) < 60:
            new.append(client.start(RetParent, FanOut(2)))
            stop.wait(0.01)

    purger = Worker(faked, MACHINES, poll_interval=0.05, purge_older_than=timedelta(days=30),
                    purge_interval=0.2, purge_batch_size=3)
    with Worker(faked, MACHINES, poll_interval=0.05, concurrency=4), purger:
        starter = threading.Thread(target=keep_starting)
        starter.start()
        try:
            wait_until(lambda: count(faked, workflows, old_ids) == 0, "the old trees to go",
                       timeout=WAIT * 2)
        finally:
            stop.set()
            starter.join()
        finished = [client.wait(wid, timeout=WAIT) for wid in new]
        health = purger.health()
        during = len(new)
    assert during >= 5, "too few workflows were started during the purge"
    assert {f.status for f in finished} == {"done"}
    assert count(faked, history, old_ids) == 0
    new_ids = [i for root in new for i in tree(faked, root)]
    assert len(new_ids) == 3 * len(new)
    # Each new workflow kept all its history: start, and its transitions.
    assert count(faked, history, new_ids) >= 2 * len(new_ids)
    assert health.serving
    assert health.threads["sm-purger"]
