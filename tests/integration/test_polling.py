"""Polling steps (`@step(poll=Poll(...))`) on every backend, on a fake clock: a poll writes no
history row (the row keeps its version; only `polls`, `wake_at` and `updated_at` move, fenced by
the lease token), the interval backs off, the deadline takes the error route, `record=True`
writes one history row per poll, a cancel is not held back by a long interval, and a stale
lease cannot move a polled row."""

from __future__ import annotations

import re
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
from sqlalchemy import select, text

from statemachine import (
    Client,
    Context,
    Failure,
    Machine,
    Poll,
    PollAgain,
    Store,
    Worker,
    poll_again,
    step,
)
from statemachine._schema import history, workflows
from statemachine.testing import FakeClock
from tests.claims import ClaimLog
from tests.waits import wait_until

# Every test here runs for sync handlers on the thread worker and async ones on the async
# worker (see tests/async_handlers.py).
pytestmark = pytest.mark.usefixtures("handlers")

ROOT = Path(__file__).resolve().parents[2]
#: The query docs/how-to/waiting.md gives operators for workflows polling right now.
POLLING_NOW = next(
    b for b in re.findall(r"^```sql\n(.*?)^```", (ROOT / "docs/how-to/waiting.md").read_text(),
                          re.M | re.S) if "polls > 0" in b)

#: A worker that claims only when woken (by a start in-process, or the fake clock moving).
WOKEN_ONLY: dict[str, Any] = dict(concurrency=4, poll_interval=3600.0)
WAIT = 60.0

# What the polled "server" reports, per test tag: polls seen, and whether it has booted.
_LOCK = threading.Lock()
POLLS: dict[str, int] = {}
BOOTED: set[str] = set()


def _looked(tag: str) -> bool:
    with _LOCK:
        POLLS[tag] = POLLS.get(tag, 0) + 1
        return tag in BOOTED


@attrs.frozen
class Booting:
    tag: str


@attrs.frozen
class Booted:
    tag: str


@attrs.frozen
class NeverBooted:
    tag: str
    why: str


class PollsQuietly(Machine):
    name = "test_polls_quietly"
    initial = Booting
    terminal = (Booted, NeverBooted)

    @step(poll=Poll(every=5, max_every=40, deadline=timedelta(minutes=10), jitter=0))
    def wait_for_boot(self, state: Booting, ctx: Context) -> Booted | PollAgain:
        return Booted(state.tag) if _looked(state.tag) else poll_again()

    @wait_for_boot.on_error
    def give_up(self, state: Booting, failure: Failure, ctx: Context) -> NeverBooted:
        return NeverBooted(state.tag, failure.message)


class PollsLoudly(Machine):
    name = "test_polls_loudly"
    initial = Booting
    terminal = (Booted,)

    @step(poll=Poll(every=5, deadline=600, backoff=1, jitter=0, record=True))
    def wait_for_boot(self, state: Booting, ctx: Context) -> Booted | PollAgain:
        return Booted(state.tag) if _looked(state.tag) else poll_again()


class PollsThenParks(Machine):
    name = "test_polls_then_parks"
    initial = Booting
    terminal = (Booted,)

    @step(poll=Poll(every=5, deadline=20, backoff=1, jitter=0))
    def wait_for_boot(self, state: Booting, ctx: Context) -> Booted | PollAgain:
        return Booted(state.tag) if _looked(state.tag) else poll_again()


def row_of(store: Store, wid: uuid.UUID) -> Any:
    w = workflows
    with store.connect() as conn:
        return conn.execute(select(w.c.version, w.c.polls, w.c.status, w.c.wake_at,
                                   w.c.lease_token, w.c.attempt).where(w.c.id == wid)).one()


def history_kinds(store: Store, wid: uuid.UUID) -> list[str]:
    with store.connect() as conn:
        return list(conn.execute(select(history.c.kind).where(history.c.workflow_id == wid)
                                 .order_by(history.c.version)).scalars())


def polled(store: Store, wid: uuid.UUID, n: int) -> bool:
    r = row_of(store, wid)
    return r.polls == n and r.status == "ready"


@pytest.fixture
def clocked(db_url: str) -> Any:
    clock = FakeClock()
    store = Store(db_url, clock=clock)
    yield clock, store
    store.dispose()


def test_polls_write_no_history_and_back_off_until_the_condition_holds(clocked: Any) -> None:
    clock, store = clocked
    tag = uuid.uuid4().hex
    client = Client(store, [PollsQuietly])
    with Worker(store, [PollsQuietly], **WOKEN_ONLY):
        wid = client.start(PollsQuietly, Booting(tag))
        wait_until(lambda: polled(store, wid, 1), "the first poll")
        first = row_of(store, wid)
        assert (first.version, first.lease_token, first.attempt) == (1, None, 0)
        assert first.wake_at == clock.now() + timedelta(seconds=5)
        for n, interval in [(2, 10), (3, 20), (4, 40), (5, 40)]:  # backoff 2, up to max_every
            clock.set(row_of(store, wid).wake_at)
            wait_until(lambda n=n: polled(store, wid, n), f"poll {n}")
            assert row_of(store, wid).wake_at == clock.now() + timedelta(seconds=interval)
        assert row_of(store, wid).version == 1  # five polls, not one version or history row
        assert history_kinds(store, wid) == ["start"]
        with store.connect() as conn:  # what the operator's query in waiting.md shows
            seen = [r for r in conn.execute(text(POLLING_NOW)) if str(r.id) == str(wid)]
        assert [(r.state, r.polls) for r in seen] == [("Booting", 5)]
        assert seen[0].next_look is not None
        with _LOCK:
            BOOTED.add(tag)
        clock.set(row_of(store, wid).wake_at)
        info = client.wait(wid, timeout=WAIT)
    assert info.state == Booted(tag)
    assert history_kinds(store, wid) == ["start", "transition"]
    done = row_of(store, wid)
    assert (done.version, done.polls) == (2, 0)  # a new state resets the counter
    assert POLLS[tag] == 6


def test_past_the_deadline_the_error_route_runs(
    clocked: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, store = clocked
    tag = uuid.uuid4().hex
    client = Client(store, [PollsQuietly])
    claims = ClaimLog(store, monkeypatch)
    with Worker(store, [PollsQuietly], **WOKEN_ONLY):
        wid = client.start(PollsQuietly, Booting(tag))
        wait_until(lambda: polled(store, wid, 1), "the first poll")
        started = clock.now()
        mark = claims.mark()
        clock.advance(seconds=4)
        assert wid not in claims.claims_since(mark)  # not due before its interval
        n = 1
        while client.get(wid).status == "ready":
            clock.set(row_of(store, wid).wake_at)
            n += 1
            wait_until(lambda n=n: polled(store, wid, n) or client.get(wid).status == "done",
                       f"poll {n}")
        info = client.wait(wid, timeout=WAIT)
    assert isinstance(info.state, NeverBooted)
    assert "did not hold within 0:10:00" in info.state.why
    assert clock.now() == started + timedelta(minutes=10)  # the last poll was at the deadline
    assert history_kinds(store, wid) == ["start", "error_route"]


def test_record_true_writes_one_history_row_per_poll(clocked: Any) -> None:
    clock, store = clocked
    tag = uuid.uuid4().hex
    client = Client(store, [PollsLoudly])
    with Worker(store, [PollsLoudly], **WOKEN_ONLY):
        wid = client.start(PollsLoudly, Booting(tag))
        for n in (1, 2, 3):
            wait_until(lambda n=n: polled(store, wid, n), f"poll {n}")
            assert row_of(store, wid).wake_at == clock.now() + timedelta(seconds=5)
            if n < 3:
                clock.advance(seconds=5)
        with _LOCK:
            BOOTED.add(tag)
        clock.advance(seconds=5)
        client.wait(wid, timeout=WAIT)
    assert history_kinds(store, wid) == ["start", "polled", "polled", "polled", "transition"]
    entries = client.history(wid)
    assert {e.to_state for e in entries[1:4]} == {"Booting"}


def test_a_cancel_is_not_held_back_by_the_poll_interval(clocked: Any) -> None:
    _clock, store = clocked
    tag = uuid.uuid4().hex
    client = Client(store, [PollsQuietly])
    with Worker(store, [PollsQuietly], **WOKEN_ONLY):
        wid = client.start(PollsQuietly, Booting(tag))
        wait_until(lambda: polled(store, wid, 1), "the first poll")
        client.cancel(wid, reason="not needed")
        info = client.wait(wid, timeout=WAIT)
    assert info.status == "cancelled"


def test_a_poll_with_a_stale_lease_moves_nothing(clocked: Any) -> None:
    _clock, store = clocked
    client = Client(store, [PollsQuietly])
    wid = client.start(PollsQuietly, Booting("stale"))
    [row] = store.sql.claim(owner="w1", machines=[PollsQuietly.name], limit=1, lease=30)
    before = row_of(store, wid)
    assert not store.sql.poll_again(attrs.evolve(row, lease_token="someone-else"), 5)
    assert not store.sql.poll_again(attrs.evolve(row, version=row.version + 1), 5)
    assert row_of(store, wid) == before
    assert store.sql.poll_again(row, 5)
    assert not store.sql.poll_again(row, 5)  # the lease was given back with the poll
    after = row_of(store, wid)
    assert (after.version, after.polls, after.status, after.lease_token) == (1, 1, "ready", None)


def test_a_poll_parked_at_its_deadline_gets_a_fresh_deadline_when_retried(clocked: Any) -> None:
    clock, store = clocked
    tag = uuid.uuid4().hex
    client = Client(store, [PollsThenParks])
    with Worker(store, [PollsThenParks], **WOKEN_ONLY):
        wid = client.start(PollsThenParks, Booting(tag))
        for n in range(1, 5):  # at 0, 5, 10, 15 s
            wait_until(lambda n=n: polled(store, wid, n), f"poll {n}")
            clock.advance(seconds=5)
        parked = wait_until(lambda: (i := client.get(wid)).status == "failed" and i,
                            "the deadline to park it")
        assert "PollDeadline" in (parked.last_error or "")
        assert POLLS[tag] == 5  # the last look was at the deadline
        clock.advance(minutes=30)
        client.retry(wid)
        # Not parked again at once: its deadline runs from the retry.
        wait_until(lambda: row_of(store, wid).status == "ready"
                   and row_of(store, wid).wake_at == clock.now() + timedelta(seconds=5),
                   "a poll after the retry")
        with _LOCK:
            BOOTED.add(tag)
        clock.advance(seconds=5)
        info = client.wait(wid, timeout=WAIT)
    assert info.state == Booted(tag)
    assert history_kinds(store, wid) == ["start", "parked", "retry", "transition"]
