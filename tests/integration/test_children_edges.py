"""Edges of waiting found while documenting it: every way a child finishes wakes its parent;
children still queued when the parent moves on are not stranded; a database refusal parks with its
reason; looking for news in a waiting state does not use up a handler's attempts."""

from __future__ import annotations

import attrs
import pytest

from statemachine import (
    ChildResult,
    Client,
    Context,
    Machine,
    RetryPolicy,
    Store,
    Worker,
    WorkflowInfo,
    on_children,
    on_event,
    step,
)
from tests.claims import ClaimLog
from tests.waits import wait_until

# Every test here runs for sync handlers on the thread worker and async ones on the async
# worker (see tests/async_handlers.py).
pytestmark = pytest.mark.usefixtures("handlers")


@attrs.frozen
class EdgeJob:
    n: int
    fail: bool = False


@attrs.frozen
class EdgeJobDone:
    n: int


class EdgeChild(Machine):
    initial = EdgeJob
    terminal = (EdgeJobDone,)

    @step(at_most_once=True)
    def run_job(self, state: EdgeJob, ctx: Context) -> EdgeJobDone:
        if state.fail:
            raise TimeoutError("no answer")  # at most once, no reconcile: parked in doubt
        return EdgeJobDone(state.n)


@attrs.frozen
class EdgeFanOut:
    jobs: int
    fail_first: bool = False
    wait_first: bool = False
    key: str | None = None


@attrs.frozen
class EdgeWaitAll:
    jobs: int


@attrs.frozen
class EdgeWaitFirst:
    jobs: int


@attrs.frozen
class EdgeCollected:
    statuses: tuple[str, ...]


class EdgeParent(Machine):
    initial = EdgeFanOut
    terminal = (EdgeCollected,)

    @step
    def fan_out(self, state: EdgeFanOut, ctx: Context) -> EdgeWaitAll | EdgeWaitFirst:
        for n in range(state.jobs):
            ctx.start_child(EdgeChild, EdgeJob(n, fail=state.fail_first and n == 0),
                            key=state.key)
        return EdgeWaitFirst(state.jobs) if state.wait_first else EdgeWaitAll(state.jobs)

    @on_children(max_running=1)
    def all_done(self, state: EdgeWaitAll, children: list[ChildResult],
                 ctx: Context) -> EdgeCollected:
        return EdgeCollected(tuple(c.status for c in children))

    @on_children(wait_for="first", max_running=1)
    def first_done(self, state: EdgeWaitFirst, children: list[ChildResult],
                   ctx: Context) -> EdgeCollected:
        return EdgeCollected(tuple(c.status for c in children))


def _run(store: Store, start: EdgeFanOut) -> tuple[Client, object]:
    client = Client(store, [EdgeParent, EdgeChild])
    wid = client.start(EdgeParent, start)
    return client, wid


def test_a_child_parked_in_doubt_wakes_its_parent(store: Store) -> None:
    client, wid = _run(store, EdgeFanOut(jobs=2, fail_first=True))
    with Worker(store, [EdgeParent, EdgeChild], poll_interval=0.05):
        info = client.wait(wid, timeout=60)  # type: ignore[arg-type]
    assert info.state == EdgeCollected(("failed", "done"))


def test_children_still_queued_when_the_parent_moves_on_run_anyway(store: Store) -> None:
    client, wid = _run(store, EdgeFanOut(jobs=3, wait_first=True))
    with Worker(store, [EdgeParent, EdgeChild], poll_interval=0.05):
        info = client.wait(wid, timeout=60)  # type: ignore[arg-type]
        # The finished ones when the handler ran: the first, and any let go after it that
        # finished before the parent's handler read them (each becomes due as the one before
        # it ends, as the parent does).
        assert isinstance(info.state, EdgeCollected)
        assert info.state.statuses in {("done",) * n for n in (1, 2, 3)}, info.state

        def children_done() -> list[WorkflowInfo]:
            children = [w for w in client.list(machine="EdgeChild") if w.parent_id == wid]
            return children if len(children) == 3 and all(
                c.status == "done" for c in children) else []

        children = wait_until(children_done, "the queued children to run")
    assert sorted(c.status for c in children) == ["done"] * 3


def test_a_child_key_already_used_parks_the_parent_with_the_reason(store: Store) -> None:
    client, wid = _run(store, EdgeFanOut(jobs=2, key="same-key"))
    with Worker(store, [EdgeParent, EdgeChild], poll_interval=0.05):
        info = client.wait(wid, timeout=60)  # type: ignore[arg-type]
    assert info.status == "failed"
    assert info.state_name == "EdgeFanOut"
    assert info.last_error is not None
    assert "refused" in info.last_error
    assert "WorkerLost" not in info.last_error
    assert client.list(machine="EdgeChild") == []  # nothing half-started


@attrs.frozen
class Listening:
    n: int


@attrs.frozen
class Later:
    n: int


@attrs.frozen
class Heard:
    n: int


@attrs.frozen
class Go:
    pass


@attrs.frozen
class NotYet:
    pass


FLAKY: dict[str, int] = {}


class Patient(Machine):
    initial = Listening
    terminal = (Heard,)

    @on_event(retry=RetryPolicy(max_attempts=2, initial_delay=0.05))
    def go(self, state: Listening, event: Go, ctx: Context) -> Later:
        FLAKY[str(ctx.workflow_id)] = FLAKY.get(str(ctx.workflow_id), 0) + 1
        if FLAKY[str(ctx.workflow_id)] == 1:
            raise ConnectionError("first try fails")
        return Later(state.n)

    @on_event
    def finally_heard(self, state: Later, event: NotYet, ctx: Context) -> Heard:
        return Heard(state.n)


def test_wake_ups_without_news_do_not_use_up_attempts(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = Client(store, [Patient])
    claims = ClaimLog(store, monkeypatch)
    wid = client.start(Patient, Listening(1))
    with Worker(store, [Patient], poll_interval=0.05):
        wait_until(lambda: client.get(wid).status == "waiting", "the workflow to wait")
        for _ in range(5):  # events for a later state: each wakes the workflow for nothing
            mark = claims.mark()
            client.send(wid, NotYet())
            claims.wait_claimed(mark, wid)
            wait_until(lambda: client.get(wid).status == "waiting", "it to wait again")
        client.send(wid, Go())  # fails once, retried within its 2 attempts
        info = client.wait(wid, timeout=60)
    assert info.state == Heard(1)
    assert FLAKY[str(wid)] == 2
