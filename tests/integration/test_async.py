"""Async handlers and the async worker, on every backend (issue 14), beyond the engine tests that
run for both kinds of handler (`handlers` fixture): at-most-once cut off by a shutdown and
reconciled, async tasks cancelled only past the grace, the async context, sync and async
handlers in one machine on both workers, `AsyncClient`'s every call, and the worker command's
choice of driver. Machines live at module level so the command can import them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import attrs
import pytest

from statemachine import (
    AsyncClient,
    AsyncWorker,
    Client,
    Context,
    InvalidArgument,
    Machine,
    PermanentError,
    Rerun,
    RetryPolicy,
    Store,
    Worker,
    on_event,
    rerun,
    step,
)
from statemachine._async_worker import has_async_handlers
from tests.waits import wait_until

FAST = dict(poll_interval=0.05, min_poll_interval=0.01)
ROOT = Path(__file__).resolve().parents[2]


# -- at most once, cut off by a shutdown past the grace ------------------------------------------


@attrs.frozen
class Owed:
    amount: int


@attrs.frozen
class Paid:
    amount: int


class Transfer(Machine):
    name = "async_transfer"
    initial = Owed
    terminal = (Paid,)

    def __init__(self) -> None:
        self.sent = 0
        self.hold = threading.Event()  # the bank's answer never comes while not set

    @step(at_most_once=True)
    def pay(self, state: Owed, ctx: Context) -> Paid:
        self.sent += 1
        self.hold.wait(60)
        return Paid(state.amount)

    @pay.reconcile
    def check(self, state: Owed, ctx: Context) -> Paid | Rerun:
        return Paid(state.amount) if self.sent else rerun()


@pytest.mark.usefixtures("handlers")
def test_an_at_most_once_step_cut_off_by_shutdown_is_reconciled_not_rerun(store: Store) -> None:
    transfer = Transfer()
    client = Client(store, [Transfer])
    wid = client.start(Transfer, Owed(5))
    first = Worker(store, [transfer], lease=1.0, **FAST)
    first.start()
    try:
        wait_until(lambda: transfer.sent == 1, "the transfer to be sent")
        first.stop(grace=0.1)
        assert first.abandoned == 1
        # Not given back: the unfinished attempt must be reconciled, not run again.
        assert client.get(wid).lease_owner == first.name
        with Worker(store, [transfer], lease=1.0, **FAST):
            info = client.wait(wid, timeout=60)
    finally:
        transfer.hold.set()
        # The abandoned attempt ends (its commit refused) before the store goes away.
        wait_until(lambda: not first._futures, "the abandoned handler's thread to end")
    assert (info.status, info.state) == ("done", Paid(5))
    assert transfer.sent == 1
    assert [h.kind for h in client.history(wid)] == ["start", "in_doubt", "reconciled"]


# -- async tasks at shutdown ---------------------------------------------------------------------


@attrs.frozen
class Calling:
    n: int


@attrs.frozen
class Called:
    n: int


class Waiting(Machine):
    name = "async_waiting"
    initial = Calling
    terminal = (Called,)

    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0
        self.seconds = 3600.0

    @step
    async def call(self, state: Calling, ctx: Context) -> Called:
        self.started += 1
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return Called(state.n)


def test_a_stop_waits_the_grace_then_cancels_async_handlers_and_gives_them_back(
        store: Store) -> None:
    machine = Waiting()
    client = Client(store, [Waiting])
    ids = client.start_many(Waiting, [Calling(i) for i in range(3)])

    async def scenario() -> int:
        worker = AsyncWorker(store, [machine], concurrency=10, **FAST)
        await worker.start()
        await asyncio.to_thread(wait_until, lambda: machine.started == 3, "three calls")
        assert machine.cancelled == 0
        await worker.stop(grace=0.3)
        await worker.stop()  # a second stop does nothing more
        return worker.abandoned

    assert asyncio.run(scenario()) == 3
    assert machine.cancelled == 3
    for wid in ids:
        info = client.get(wid)
        assert (info.status, info.lease_owner, info.state_name) == ("ready", None, "Calling")


def test_handlers_that_finish_within_the_grace_commit(store: Store) -> None:
    machine = Waiting()
    machine.seconds = 0.5
    client = Client(store, [Waiting])
    ids = client.start_many(Waiting, [Calling(i) for i in range(5)])

    async def scenario() -> None:
        worker = AsyncWorker(store, [machine], concurrency=10, **FAST)
        await worker.start()
        await asyncio.to_thread(wait_until, lambda: machine.started == 5, "five calls")
        await worker.stop(grace=30)
        assert worker.abandoned == 0

    asyncio.run(scenario())
    assert machine.cancelled == 0
    assert {client.get(w).status for w in ids} == {"done"}


# -- the context from async code -----------------------------------------------------------------


@attrs.frozen
class Long:
    pass


@attrs.frozen
class Stopped:
    why: str


class LongCall(Machine):
    name = "async_long_call"
    initial = Long
    terminal = (Stopped,)

    def __init__(self) -> None:
        self.extended = threading.Event()
        self.asked = threading.Event()  # the test has asked to cancel

    @step
    async def wait_for_cancel(self, state: Long, ctx: Context) -> Stopped:
        await ctx.extend_lease_async(600)
        self.extended.set()
        while (why := await ctx.cancel_requested_async()) is None:
            await asyncio.sleep(0.02)
        assert ctx.now().tzinfo is not None
        return Stopped(why)


def test_extend_lease_and_cancel_requested_from_async_code(store: Store) -> None:
    machine = LongCall()
    client = Client(store, [LongCall])
    wid = client.start(LongCall, Long())

    async def scenario() -> None:
        async with AsyncWorker(store, [machine], lease=2.0, **FAST):
            await asyncio.to_thread(machine.extended.wait, 60)
            info = client.get(wid)
            assert info.wake_at is not None
            held = info.wake_at - store.clock.now()
            assert held > timedelta(seconds=300)  # 600 s asked, not the 2 s lease
            await asyncio.to_thread(client.cancel, wid, reason="no longer needed")
            await asyncio.to_thread(wait_until, lambda: client.get(wid).finished, "the end")

    asyncio.run(scenario())
    info = client.get(wid)
    assert info.status in ("done", "cancelled")
    assert any("no longer needed" in (h.cause or "") or h.to_state == "Stopped"
               for h in client.history(wid))


# -- sync and async handlers in one machine, on both workers -------------------------------------


@attrs.frozen
class One:
    n: int


@attrs.frozen
class Two:
    n: int


@attrs.frozen
class Three:
    n: int


@attrs.frozen
class Four:
    n: int


class Mixed(Machine):
    name = "async_mixed"
    initial = One
    terminal = (Four,)

    @step
    async def first(self, state: One, ctx: Context) -> Two:
        await asyncio.sleep(0)
        return Two(state.n + 1)

    @step
    def second(self, state: Two, ctx: Context) -> Three:
        return Three(state.n + 1)

    @step
    async def third(self, state: Three, ctx: Context) -> Four:
        return Four(state.n + 1)


def test_the_thread_worker_runs_async_handlers_too(store: Store) -> None:
    client = Client(store, [Mixed])
    ids = client.start_many(Mixed, [One(i) for i in range(10)])
    with Worker(store, [Mixed], concurrency=4, **FAST):
        infos = [client.wait(w, timeout=60) for w in ids]
    assert [i.state for i in infos] == [Four(i + 3) for i in range(10)]


@pytest.mark.parametrize("group_commit", [False, True], ids=["single", "grouped"])
def test_the_async_worker_runs_mixed_handlers(store: Store, group_commit: bool) -> None:
    client = Client(store, [Mixed])
    ids = client.start_many(Mixed, [One(i) for i in range(50)])

    async def scenario() -> int:
        async with AsyncWorker(store, [Mixed], concurrency=20, threads=2,
                               group_commit=group_commit, **FAST) as worker:
            for w in ids:
                await AsyncClient(store, [Mixed]).wait(w, timeout=60)
            return worker.transitions

    assert asyncio.run(scenario()) == 150
    assert {client.get(w).state for w in ids} == {Four(i + 3) for i in range(50)}
    assert [h.to_state for h in client.history(ids[0])] == ["One", "Two", "Three", "Four"]


def test_the_cli_chooses_the_async_driver_by_the_handlers() -> None:
    assert has_async_handlers([Mixed])
    assert has_async_handlers([Transfer()]) is False


def test_bad_async_worker_options_are_refused(store: Store) -> None:
    with pytest.raises(InvalidArgument, match="concurrency and threads must be at least 1"):
        AsyncWorker(store, [Mixed], threads=0)


# -- AsyncClient ---------------------------------------------------------------------------------


@attrs.frozen
class Placed:
    sku: str


@attrs.frozen
class AwaitingApproval:
    sku: str


@attrs.frozen
class Approve:
    by: str


@attrs.frozen
class Shipped:
    sku: str
    by: str


class OutOfStock(PermanentError):
    pass


class Order(Machine):
    name = "async_order"
    initial = Placed
    terminal = (Shipped,)

    def __init__(self) -> None:
        self.out_of_stock: set[str] = set()

    @step(retry=RetryPolicy(max_attempts=1))
    async def reserve(self, state: Placed, ctx: Context) -> AwaitingApproval:
        if state.sku in self.out_of_stock:
            raise OutOfStock(state.sku)
        return AwaitingApproval(state.sku)

    @on_event
    async def approved(self, state: AwaitingApproval, event: Approve,
                       ctx: Context) -> Shipped:
        return Shipped(state.sku, event.by)


@pytest.fixture
def order() -> Order:
    return Order()


@pytest.fixture
def running(store: Store, order: Order) -> Iterator[None]:
    """An async worker on its own loop, for the client's scenario on another (as a web app
    and a worker service would be)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    worker = AsyncWorker(store, [order], concurrency=10, **FAST)
    asyncio.run_coroutine_threadsafe(worker.start(), loop).result()
    yield
    asyncio.run_coroutine_threadsafe(worker.stop(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@pytest.mark.usefixtures("running")
def test_async_client_calls(store: Store, order: Order) -> None:
    async def scenario() -> None:
        client = AsyncClient(store, [Order])
        wid = await client.start(Order, Placed("tea"), key="o-1")
        assert await client.start(Order, Placed("tea"), key="o-1") == wid
        await asyncio.to_thread(wait_until, lambda: client.sync.get(wid).status == "waiting",
                                "the order to wait for approval")
        await client.send(wid, Approve("ana"))
        done = await client.wait(wid, timeout=60)
        assert (done.status, done.state) == ("done", Shipped("tea", "ana"))
        assert [h.to_state for h in await client.history(wid)][-1] == "Shipped"

        order.out_of_stock.add("gold")
        parked, other = await client.start_many(Order, [Placed("gold"), Placed("gold")])
        await asyncio.to_thread(wait_until, lambda: client.sync.get(parked).status == "failed",
                                "the out-of-stock order to park")
        order.out_of_stock.clear()
        await client.retry(parked, reason="restocked")
        await asyncio.to_thread(wait_until, lambda: client.sync.get(other).status == "failed",
                                "the other to park")
        await client.force(other, AwaitingApproval("gold"), reason="reserved by hand")
        await client.cancel(other, reason="changed my mind")
        assert (await client.wait(other, timeout=60)).status == "cancelled"
        await asyncio.to_thread(wait_until, lambda: client.sync.get(parked).status == "waiting",
                                "the retried order to wait")
        listed = await client.list(machine="async_order")
        assert {i.id for i in listed} == {wid, parked, other}
        assert (await client.get(parked)).state == AwaitingApproval("gold")

        third = await client.start(Order, Placed("gold"))
        order.out_of_stock.add("gold")  # (the worker may already have reserved it)
        await asyncio.to_thread(wait_until, lambda: client.sync.get(third).status in
                                ("failed", "waiting"), "the third order to settle")
        if (await client.get(third)).status == "failed":
            await client.resolve(third, to=AwaitingApproval("gold"), reason="found one")
        assert (await client.get(third)).state == AwaitingApproval("gold")
        await client.close()

    asyncio.run(scenario())


def test_async_wait_is_woken_by_the_worker_in_process(store: Store, order: Order) -> None:
    """Reading the row again only every hour, the wait can end within the test's timeout only
    by the in-process wake-up."""

    async def scenario() -> str:
        async with AsyncWorker(store, [order], concurrency=10, **FAST):
            client = AsyncClient(store, [Order])
            wid = await client.start(Order, Placed("tea"))
            await asyncio.to_thread(wait_until, lambda: client.sync.get(wid).status ==
                                    "waiting", "the order to wait for approval")
            await client.send(wid, Approve("bo"))
            return (await client.wait(wid, timeout=7200, poll=3600)).status

    assert asyncio.run(scenario()) == "done"


def test_async_client_names_a_workflow_that_does_not_exist(store: Store) -> None:
    from statemachine import WorkflowNotFound

    missing = uuid.uuid4()

    async def scenario() -> None:
        with pytest.raises(WorkflowNotFound, match=str(missing)):
            await AsyncClient(store, [Order]).get(missing)

    asyncio.run(scenario())


# -- the command picks the driver ----------------------------------------------------------------


@pytest.mark.parametrize(("driver", "said"), [("auto", "async worker"), ("async", "async worker"),
                                              ("threads", "worker")])
def test_the_worker_command_picks_the_driver(db_url: str, store: Store, tmp_path: Path,
                                             driver: str, said: str) -> None:
    client = Client(store, [Mixed])
    wid = client.start(Mixed, One(1))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "statemachine", "--db", db_url, "worker", "--app",
             "tests.integration.test_async:Mixed", "--driver", driver, "--poll", "0.05"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            assert client.wait(wid, timeout=60).state == Four(4)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    first = log.read_text().splitlines()[0]
    assert first.startswith(f"{said} "), first


def test_the_test_harness_runs_async_handlers(db_url: str) -> None:
    from statemachine.testing import FakeClock, Harness

    store = Store(db_url, clock=FakeClock())
    try:
        with Harness([Mixed], store=store) as h:
            wid = h.start(One(0))
            h.run_until_idle()
            assert h.state(wid) == Four(3)
    finally:
        store.dispose()


def test_a_handler_cancelled_before_its_first_step_still_ends_its_run(store: Store) -> None:
    """Past the grace, a handler's task may be cancelled before it ever ran (created on the
    loop, its first step not yet taken): its body never runs, so the run is ended for it."""
    from statemachine._async_worker import _Run
    from statemachine._runner import HandlerCall

    entered = []

    async def handler() -> None:
        entered.append(True)

    async def scenario() -> None:
        worker = AsyncWorker(store, [Waiting()], concurrency=1, **FAST)
        await worker.start()
        try:
            run = _Run(SimpleNamespace(id=uuid.uuid4()))  # type: ignore[arg-type]  # only its id is read
            worker._start_call(run, HandlerCall(handler, (), True))
            assert run.task is not None
            worker._cancel([run])  # in the same loop callback: the task has not started
            await asyncio.wait([asyncio.wrap_future(run.done)], timeout=30)
        finally:
            await worker.stop()
        assert run.done.cancelled()
        assert run.task is None
        assert entered == []

    asyncio.run(scenario())

