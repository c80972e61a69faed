"""An event handler over several states (`@on_event` with a union), step states that accept
events, events no state accepts made visible, and typed child results with a parent that adds
children while it waits: on every backend.

The drip below is the shape the issue asks for: a welcome mail, a wait, a tip mail, a wait, a
last mail; `Unsubscribed` stops it in any of those states with one handler, and `Clicked` is
accepted only while it waits after the welcome mail.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
from sqlalchemy import select

from statemachine import Client, Context, Machine, Store, Worker, step
from statemachine._definition import ChildResult, on_children, on_event, on_timeout
from statemachine._schema import events
from statemachine.testing import FakeClock
from tests.waits import wait_until

# Every test here runs for sync handlers on the thread worker and async ones on the async
# worker (see tests/async_handlers.py).
pytestmark = pytest.mark.usefixtures("handlers")

FAST: dict[str, Any] = dict(concurrency=4, poll_interval=0.05)

# -- the drip ----------------------------------------------------------------------------------


@attrs.frozen
class Welcome:
    tag: str


@attrs.frozen
class AfterWelcome:
    tag: str


@attrs.frozen
class Tip:
    tag: str


@attrs.frozen
class AfterTip:
    tag: str


@attrs.frozen
class LastMail:
    tag: str


@attrs.frozen
class Finished:
    tag: str


@attrs.frozen
class Stopped:
    tag: str
    stopped_in: str


@attrs.frozen
class Engaged:
    tag: str


@attrs.frozen
class Unsubscribed:
    """An event: the reader unsubscribed."""


@attrs.frozen
class Clicked:
    """An event: the reader clicked the welcome mail's link."""


class Mailbox:
    """What the drip sent, per tag, and gates that hold a mail step until the test opens them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: dict[str, list[str]] = {}
        self.gates: dict[tuple[str, str], threading.Event] = {}
        self.entered: dict[tuple[str, str], threading.Event] = {}

    def hold(self, tag: str, mail: str) -> tuple[threading.Event, threading.Event]:
        """Make `mail` of `tag` wait for the returned gate; the other event is set on entry."""
        with self.lock:
            gate = self.gates[(tag, mail)] = threading.Event()
            entered = self.entered[(tag, mail)] = threading.Event()
        return gate, entered

    def send(self, tag: str, mail: str) -> None:
        with self.lock:
            gate = self.gates.get((tag, mail))
            entered = self.entered.get((tag, mail))
        if entered is not None:
            entered.set()
        if gate is not None:
            assert gate.wait(timeout=60), f"gate {tag}/{mail} never opened"
        with self.lock:
            self.sent.setdefault(tag, []).append(mail)

    def of(self, tag: str) -> list[str]:
        with self.lock:
            return list(self.sent.get(tag, []))


MAILBOX = Mailbox()
WAIT = timedelta(days=2)


class Drip(Machine):
    initial = Welcome
    terminal = (Finished, Stopped, Engaged)

    def __init__(self, mailbox: Mailbox = MAILBOX) -> None:
        self.mailbox = mailbox

    @step
    def send_welcome(self, state: Welcome, ctx: Context) -> AfterWelcome:
        self.mailbox.send(state.tag, "welcome")
        return AfterWelcome(state.tag)

    @on_timeout(after=WAIT)
    def welcome_waited(self, state: AfterWelcome, ctx: Context) -> Tip:
        return Tip(state.tag)

    @on_event
    def clicked(self, state: AfterWelcome, event: Clicked, ctx: Context) -> Engaged:
        return Engaged(state.tag)

    @step
    def send_tip(self, state: Tip, ctx: Context) -> AfterTip:
        self.mailbox.send(state.tag, "tip")
        return AfterTip(state.tag)

    @on_timeout(after=WAIT)
    def tip_waited(self, state: AfterTip, ctx: Context) -> LastMail:
        return LastMail(state.tag)

    @step
    def send_last(self, state: LastMail, ctx: Context) -> Finished:
        self.mailbox.send(state.tag, "last")
        return Finished(state.tag)

    @on_event
    def unsubscribe(self, state: Welcome | AfterWelcome | Tip | AfterTip | LastMail,
                    event: Unsubscribed, ctx: Context) -> Stopped:
        return Stopped(state.tag, type(state).__name__)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2030, 3, 1, 9, 0, tzinfo=UTC))



def tag() -> str:
    return uuid.uuid4().hex[:10]


def in_state(client: Client, wid: uuid.UUID, state: str, status: str) -> bool:
    info = client.get(wid)
    return info.state_name == state and info.status == status


def event_rows(store: Store, wid: uuid.UUID) -> list[tuple[str, str, str | None]]:
    stmt = (select(events.c.type, events.c.status, events.c.error)
            .where(events.c.workflow_id == wid).order_by(events.c.created_at))
    with store.connect() as conn:
        return [(r.type, r.status, r.error) for r in conn.execute(stmt)]


def test_one_handler_stops_the_drip_in_a_waiting_state(faked: Store, clock: FakeClock) -> None:
    t = tag()
    client = Client(faked, [Drip])
    with Worker(faked, [Drip()], **FAST):
        wid = client.start(Drip, Welcome(t))
        wait_until(lambda: in_state(client, wid, "AfterWelcome", "waiting"), "the first wait")
        clock.advance(WAIT)
        wait_until(lambda: in_state(client, wid, "AfterTip", "waiting"), "the second wait")
        client.send(wid, Unsubscribed())
        info = client.wait(wid, timeout=60)
    assert info.state == Stopped(t, "AfterTip")
    assert MAILBOX.of(t) == ["welcome", "tip"]
    assert [(h.kind, h.to_state) for h in client.history(wid)][-1] == ("transition", "Stopped")
    assert event_rows(faked, wid) == [("Unsubscribed", "consumed", None)]


def test_an_event_pending_in_a_step_state_is_handled_instead_of_the_step(faked: Store) -> None:
    t = tag()
    client = Client(faked, [Drip])
    wid = client.start(Drip, Welcome(t))  # no worker yet: the welcome step has not started
    client.send(wid, Unsubscribed())
    with Worker(faked, [Drip()], **FAST):
        info = client.wait(wid, timeout=60)
    assert info.state == Stopped(t, "Welcome")
    assert MAILBOX.of(t) == []  # the step never ran
    history = client.history(wid)
    assert [(h.kind, h.from_state, h.to_state) for h in history] == [
        ("start", None, "Welcome"), ("transition", "Welcome", "Stopped")]
    assert history[-1].cause is not None
    assert history[-1].cause.startswith("event Unsubscribed")


def test_an_event_sent_while_a_step_runs_waits_for_its_commit(faked: Store) -> None:
    t = tag()
    gate, entered = MAILBOX.hold(t, "welcome")
    client = Client(faked, [Drip])
    with Worker(faked, [Drip()], **FAST):
        wid = client.start(Drip, Welcome(t))
        assert entered.wait(timeout=60), "the welcome step never started"
        client.send(wid, Unsubscribed())
        gate.set()
        info = client.wait(wid, timeout=60)
    # The step ran to its end and committed; the event then went to the state it moved to.
    assert MAILBOX.of(t) == ["welcome"]
    assert info.state == Stopped(t, "AfterWelcome")
    assert [(h.from_state, h.to_state) for h in client.history(wid)][1:] == [
        ("Welcome", "AfterWelcome"), ("AfterWelcome", "Stopped")]


def test_events_left_when_the_workflow_ends_are_rejected_with_the_reason(
        faked: Store, clock: FakeClock) -> None:
    t = tag()
    gate, entered = MAILBOX.hold(t, "last")
    client = Client(faked, [Drip])
    with Worker(faked, [Drip()], **FAST):
        wid = client.start(Drip, Welcome(t))
        for state in ("AfterWelcome", "AfterTip"):
            wait_until(lambda s=state: in_state(client, wid, s, "waiting"), f"{state} to wait")
            clock.advance(WAIT)
        assert entered.wait(timeout=60), "the last mail never started"
        # Clicked is accepted only after the welcome mail: no state left accepts it.
        client.send(wid, Clicked())
        gate.set()
        info = client.wait(wid, timeout=60)
    assert info.state == Finished(t)
    ((kind, status, error),) = event_rows(faked, wid)
    assert (kind, status) == ("Clicked", "rejected")
    assert error == ("workflow ended done in state Finished before any state accepted this "
                     "event")


def test_a_cancelled_workflows_pending_events_are_rejected(faked: Store) -> None:
    t = tag()
    client = Client(faked, [Drip])
    wid = client.start(Drip, Welcome(t))
    client.send(wid, Clicked())  # buffered for AfterWelcome, which it never reaches
    assert client.cancel(wid, reason="test: closed") == "cancelled"
    assert event_rows(faked, wid) == [
        ("Clicked", "rejected",
         "workflow ended cancelled in state Welcome before any state accepted this event")]


# -- a parent adding children while it waits, typed child results ------------------------------


@attrs.frozen
class Boot:
    tag: str
    name: str


@attrs.frozen
class Booted:
    name: str
    address: str


@attrs.frozen
class ServerFailed:
    name: str


@attrs.frozen
class Finish:
    """An event to a server child: finish (`ok` false: fail)."""

    ok: bool = True


@attrs.frozen
class Growing:
    tag: str
    target: int


@attrs.frozen
class Grown:
    tag: str
    addresses: tuple[str, ...]
    failed: tuple[str, ...]


@attrs.frozen
class ScaleTo:
    """An event to the fleet: have `size` servers."""

    size: int


class Server(Machine):
    initial = Boot
    terminal = (Booted, ServerFailed)

    @on_event
    def finish(self, state: Boot, event: Finish, ctx: Context) -> Booted | ServerFailed:
        if not event.ok:
            return ServerFailed(state.name)
        return Booted(state.name, f"10.0.0.{state.name.rsplit('-', 1)[1]}")


@attrs.frozen
class FleetRequested:
    tag: str
    size: int


class Fleet(Machine):
    """Starts `size` servers, and more on `ScaleTo` while it waits for them."""

    initial = FleetRequested
    terminal = (Grown,)

    @step
    def start_servers(self, state: FleetRequested, ctx: Context) -> Growing:
        for i in range(state.size):
            ctx.start_child(Server, Boot(state.tag, f"{state.tag}-{i}"))
        return Growing(state.tag, state.size)

    @on_event
    def scale(self, state: Growing, event: ScaleTo, ctx: Context) -> Growing:
        for i in range(state.target, event.size):
            ctx.start_child(Server, Boot(state.tag, f"{state.tag}-{i}"))
        return Growing(state.tag, max(state.target, event.size))

    @on_children()
    def all_up(self, state: Growing, children: list[ChildResult], ctx: Context) -> Grown:
        booted = [c.state_as(Booted) for c in children]
        failed = [c.state_as(ServerFailed) for c in children]
        return Grown(state.tag, tuple(b.address for b in booted if b is not None),
                     tuple(f.name for f in failed if f is not None))


def test_a_parent_adds_children_while_it_waits_and_gets_typed_results(store: Store) -> None:
    t = tag()
    client = Client(store, [Fleet, Server])
    with Worker(store, [Fleet(), Server()], **FAST):
        wid = client.start(Fleet, FleetRequested(t, 2))
        wait_until(lambda: in_state(client, wid, "Growing", "waiting"), "the fleet to wait")
        first = [c.id for c in client.list(machine="Server") if c.data.get("tag") == t]
        assert len(first) == 2
        client.send(wid, ScaleTo(4))
        wait_until(lambda: len([c for c in client.list(machine="Server")
                                if c.data.get("tag") == t]) == 4, "two more servers")
        servers = sorted((c for c in client.list(machine="Server") if c.data.get("tag") == t),
                         key=lambda c: c.data["name"])
        # Finishing the first two does not end the wait: the two added later still run.
        client.send(servers[0].id, Finish())
        client.send(servers[1].id, Finish(ok=False))
        wait_until(lambda: all(client.get(s.id).finished for s in servers[:2]), "two servers")
        # (Woken by each, it goes back to waiting: the final result below has all four.)
        wait_until(lambda: in_state(client, wid, "Growing", "waiting"), "the fleet to wait on")
        for s in servers[2:]:
            client.send(s.id, Finish())
        info = client.wait(wid, timeout=60)
    assert info.state == Grown(t, ("10.0.0.0", "10.0.0.2", "10.0.0.3"), (f"{t}-1",))


def test_child_result_state_as_is_typed_and_none_when_not_that_class() -> None:
    result = ChildResult(id=uuid.uuid4(), machine="Server", status="done", state_name="Booted",
                         data={"name": "a-0", "address": "10.0.0.0"},
                         state=Booted("a-0", "10.0.0.0"), last_error=None)
    assert result.state_as(Booted) == Booted("a-0", "10.0.0.0")
    assert result.state_as(ServerFailed) is None
    unknown = attrs.evolve(result, state=None)
    assert unknown.state_as(Booted) is None
