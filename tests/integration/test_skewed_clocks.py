"""Order that does not depend on clocks, on every backend: two writers on one database, one of
them with its notion of "now" shifted by 400 ms (as two CockroachDB gateways, or two worker hosts,
may disagree).

- Events are consumed in the order they were sent, whichever writer recorded them
  (`sm_events.seq`, given by the recording statement), not in the order of their times.
- A rate limit never lets more than its count start in any real window: both writers measure the
  window on the database's clock, and the stamps of a key never go back.
- A deadline is decided on the database's clock: a worker whose own clock is 400 ms ahead does
  not run a timeout before its time.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import attrs
import pytest
from sqlalchemy import select

from statemachine import Client, Context, Limit, Machine, Store, Worker, step
from statemachine._clock import utcnow
from statemachine._definition import on_event, on_timeout
from statemachine._schema import history, limit_windows
from tests.integration.test_limits import most_surely_within
from tests.waits import wait_until

SKEW = timedelta(milliseconds=400)


class ShiftedClock:
    """The system clock, shifted by `offset`."""

    def __init__(self, offset: timedelta) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return utcnow() + self.offset


@pytest.fixture
def skewed(db_url: str) -> Iterator[Store]:
    """A second writer on the test's database whose "now" is 400 ms ahead."""
    store = Store(db_url, clock=ShiftedClock(SKEW))
    yield store
    store.dispose()


# -- events in send order ------------------------------------------------------------------------


@attrs.frozen
class Collecting:
    want: int
    seen: tuple[int, ...] = ()


@attrs.frozen
class Collected:
    seen: tuple[int, ...]


@attrs.frozen
class Note:
    """An event carrying its place in the sending order."""

    i: int


class Inbox(Machine):
    initial = Collecting
    terminal = (Collected,)

    @on_event
    def note(self, state: Collecting, event: Note, ctx: Context) -> Collecting | Collected:
        seen = (*state.seen, event.i)
        return Collected(seen) if len(seen) == state.want else Collecting(state.want, seen)


def test_events_from_two_writers_are_consumed_in_send_order(store: Store,
                                                            skewed: Store) -> None:
    here, there = Client(store, [Inbox]), Client(skewed, [Inbox])
    wid = here.start(Inbox, Collecting(12))
    # Alternate writers: with times as the order, the skewed writer's events would come first.
    for i in range(12):
        (there if i % 2 else here).send(wid, Note(i))
    with Worker(store, [Inbox()], concurrency=2, poll_interval=0.05):
        info = here.wait(wid, timeout=60)
    assert info.state == Collected(tuple(range(12)))


def test_each_event_is_numbered_by_the_statement_that_records_it(store: Store,
                                                                  skewed: Store) -> None:
    from statemachine._schema import events

    here, there = Client(store, [Inbox]), Client(skewed, [Inbox])
    wid = here.start(Inbox, Collecting(100))
    sent = [(there if i % 2 else here).send(wid, Note(i)) for i in range(6)]
    stmt = select(events.c.id, events.c.seq).where(events.c.workflow_id == wid)
    with store.connect() as conn:
        seqs = {r.id: r.seq for r in conn.execute(stmt)}
    assert [seqs[e] for e in sent] == [1, 2, 3, 4, 5, 6]


def test_concurrent_senders_to_one_workflow_get_distinct_numbers(store: Store,
                                                                  skewed: Store) -> None:
    from statemachine._schema import events

    here, there = Client(store, [Inbox]), Client(skewed, [Inbox])
    wid = here.start(Inbox, Collecting(1000))
    errors: list[BaseException] = []

    def send(client: Client, start: int) -> None:
        try:
            for i in range(start, start + 15):
                client.send(wid, Note(i))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=send, args=(c, n * 100))
               for n, c in enumerate([here, there, here, there])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    with store.connect() as conn:
        rows = conn.execute(select(events.c.seq, events.c.data).where(
            events.c.workflow_id == wid).order_by(events.c.seq)).all()
    assert [r.seq for r in rows] == list(range(1, 61))
    # Each sender's own events keep its order.
    for n in range(4):
        mine = [r.data["i"] for r in rows if r.data["i"] // 100 == n]
        assert mine == sorted(mine)


# -- a rate limit under a skewed writer ----------------------------------------------------------

RATE = Limit(key="skewed-api", count=10, per=timedelta(seconds=1))


def test_a_rate_limit_holds_in_real_time_with_a_writer_400ms_ahead(store: Store,
                                                                   skewed: Store) -> None:
    key = f"skewed-{uuid.uuid4().hex[:8]}"
    count, window = RATE.window
    grants: list[tuple[str, float, float]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    stop = time.monotonic() + 3.0  # a load generator's duration, not a wait for a condition

    def hammer(name: str, writer: Store) -> None:
        try:
            while time.monotonic() < stop:
                began = time.monotonic()
                wait = writer.sql.take_start(key, count, window)
                ended = time.monotonic()
                if wait == 0.0:
                    with lock:
                        grants.append((name, began, ended))
                else:
                    time.sleep(min(wait, 0.02))  # a client backing off, as the worker does
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=hammer, args=(n, s))
               for n, s in [("here", store), ("skewed", skewed)] * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    brackets = [(lo, hi) for _, lo, hi in grants]
    assert most_surely_within(brackets, window) <= count, sorted(brackets)
    # Both writers were granted starts, over more than one window.
    assert {name for name, _, _ in grants} == {"here", "skewed"}
    assert len(grants) > count
    with store.connect() as conn:
        recent = conn.execute(select(limit_windows.c.recent)
                              .where(limit_windows.c.key == key)).scalar_one()
    assert all(a <= b for a, b in pairwise(recent)), recent  # stamps never go back


def test_a_stamp_is_never_earlier_than_the_newest_stored(store: Store) -> None:
    key = f"ahead-{uuid.uuid4().hex[:8]}"
    # A start stamped by a clock one minute ahead (a gateway far off, or a clock stepped back
    # since): the next start is stamped no earlier, so it counts in the same window.
    ahead = (utcnow() + timedelta(minutes=1)).timestamp()
    with store.engine.begin() as conn:
        conn.execute(limit_windows.insert().values(key=key, recent=[ahead],
                                                   updated_at=utcnow()))
    assert store.sql.take_start(key, 2, 1.0) == 0.0
    wait = store.sql.take_start(key, 2, 1.0)
    assert 0.9 < wait <= 1.0  # the window is full until the newest stamp plus one second
    with store.connect() as conn:
        recent = conn.execute(select(limit_windows.c.recent)
                              .where(limit_windows.c.key == key)).scalar_one()
    assert recent == [ahead, ahead]


# -- a deadline under a worker whose clock is ahead ----------------------------------------------


@attrs.frozen
class Begin:
    tag: str


@attrs.frozen
class Waiting:
    tag: str


@attrs.frozen
class TimedOut:
    tag: str


class Probe:
    """When, by the database's clock, each timeout handler ran."""

    def __init__(self, db: Store) -> None:
        self.db = db
        self.ran: dict[str, datetime] = {}

    def timed_out(self, tag: str) -> None:
        self.ran[tag] = self.db.current_time()


DEADLINE = 0.3


class ShortWait(Machine):
    initial = Begin
    terminal = (TimedOut,)

    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    @step
    def begin(self, state: Begin, ctx: Context) -> Waiting:
        return Waiting(state.tag)

    @on_timeout(after=DEADLINE)
    def expire(self, state: Waiting, ctx: Context) -> TimedOut:
        self.probe.timed_out(state.tag)
        return TimedOut(state.tag)


def test_a_worker_400ms_ahead_does_not_time_out_early(db_url: str) -> None:
    # The worker's own clock (what it stamps attempts with) is 400 ms ahead; the store's
    # statements, and the probe, keep the database's time.
    worker_store = Store(db_url)
    probe_store = Store(db_url)
    worker_store.clock = ShiftedClock(SKEW)
    try:
        probe = Probe(probe_store)
        client = Client(probe_store, [ShortWait])
        tags = [uuid.uuid4().hex[:8] for _ in range(4)]
        with Worker(worker_store, [ShortWait(probe)], concurrency=4, poll_interval=0.05):
            wids = {t: client.start(ShortWait, Begin(t)) for t in tags}
            for t, wid in wids.items():
                assert client.wait(wid, timeout=60).state == TimedOut(t)
        for t, wid in wids.items():
            entered = _entered_waiting(probe_store, wid)
            deadline = entered + timedelta(seconds=DEADLINE)
            assert probe.ran[t] >= deadline, (t, probe.ran[t], deadline)
    finally:
        worker_store.dispose()
        probe_store.dispose()


def _entered_waiting(store: Store, wid: uuid.UUID) -> datetime:
    stmt = select(history.c.finished_at).where(history.c.workflow_id == wid,
                                               history.c.to_state == "Waiting")
    with store.connect() as conn:
        found: Any = conn.execute(stmt).scalar_one()
    return found  # type: ignore[no-any-return]


def test_waiting_for_the_timeout_is_visible(db_url: str) -> None:
    """The same machine on an unskewed worker: the deadline is the entry time plus the delay
    (the check above is not passing for want of a timeout)."""
    store = Store(db_url)
    try:
        probe = Probe(store)
        client = Client(store, [ShortWait])
        with Worker(store, [ShortWait(probe)], concurrency=2, poll_interval=0.05):
            wid = client.start(ShortWait, Begin("plain"))
            wait_until(lambda: client.get(wid).finished, "the timeout")
        assert probe.ran["plain"] >= _entered_waiting(store, wid) + timedelta(seconds=DEADLINE)
    finally:
        store.dispose()


# -- events inserted by SQL, and events recorded before version 0006 ------------------------------


def test_events_inserted_by_sql_are_numbered_when_noticed(store: Store) -> None:
    from sqlalchemy import text

    from statemachine._schema import events

    client = Client(store, [Inbox])
    wid = client.start(Inbox, Collecting(100))
    first = client.send(wid, Note(0))
    later = datetime.now(UTC) + timedelta(seconds=1)
    with store.engine.begin() as conn:
        # Explicit, distinct times: two rows inserted in one millisecond would tie (SQLite's
        # default has millisecond resolution), and a tie has no order to keep.
        for i in (2, 1):
            conn.execute(text("INSERT INTO sm_events (workflow_id, type, data, created_at) "
                              "VALUES (:w, 'Note', :d, :t)"),
                         {"w": str(wid), "d": f'{{"i": {i}}}',
                          "t": later + timedelta(milliseconds=10 * i)})
    assert store.sql.notice_sql_events() == 2
    with store.connect() as conn:
        rows = conn.execute(select(events.c.id, events.c.seq, events.c.data).where(
            events.c.workflow_id == wid).order_by(events.c.seq)).all()
    assert [(r.seq, r.data["i"]) for r in rows] == [(1, 0), (2, 1), (3, 2)]
    assert rows[0].id == first


def test_events_recorded_before_version_0006_are_read_first_in_time_order(store: Store) -> None:
    from sqlalchemy import update

    from statemachine._schema import events

    client = Client(store, [Inbox])
    wid = client.start(Inbox, Collecting(4))
    old = [client.send(wid, Note(i)) for i in range(2)]
    with store.engine.begin() as conn:  # as an older version recorded them: no numbers
        conn.execute(update(events).where(events.c.id.in_(old)).values(seq=None))
    client.send(wid, Note(2))  # sent after the upgrade
    client.send(wid, Note(3))
    with Worker(store, [Inbox()], concurrency=2, poll_interval=0.05):
        info = client.wait(wid, timeout=60)
    assert info.state == Collected((0, 1, 2, 3))
