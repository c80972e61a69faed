"""The test harness runs the real engine step by step; its crash points and its fake clock behave
the same on every backend (SQLite, PostgreSQL, PostgreSQL at SERIALIZABLE)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import attrs
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select

from statemachine import Context, Delayed, Machine, Rerun, Store, later, rerun, step
from statemachine import _schema as schema
from statemachine.testing import (
    CrashPoint,
    EngineInvariants,
    FakeClock,
    Harness,
    InvariantViolated,
)
from tests.planted_bugs import Collecting, Collector

metadata = MetaData()
ledger = Table("ledger", metadata, Column("id", Integer, primary_key=True, autoincrement=True),
               Column("workflow_id", String(36), nullable=False))


class Bank:
    """Sends money deduplicated by key; pays (at most once) with no key at all."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}  # key -> calls
        self.paid = 0

    def send(self, key: str) -> None:
        self.sent[key] = self.sent.get(key, 0) + 1


@attrs.frozen
class Requested:
    amount: int


@attrs.frozen
class Sent:
    amount: int


@attrs.frozen
class Recorded:
    amount: int


@attrs.frozen
class Paid:
    amount: int


@attrs.frozen
class Clearing:
    amount: int


@attrs.frozen
class Settled:
    amount: int


class Payout(Machine):
    name = "payout"
    initial = Requested
    terminal = (Settled,)

    def __init__(self, bank: Bank) -> None:
        self.bank = bank

    @step
    def send(self, state: Requested, ctx: Context) -> Sent:
        self.bank.send(ctx.idempotency_key)
        return Sent(state.amount)

    @step(transactional=True)
    def record(self, state: Sent, ctx: Context) -> Recorded:
        ctx.connection.execute(insert(ledger).values(workflow_id=str(ctx.workflow_id)))
        return Recorded(state.amount)

    @step(at_most_once=True)
    def pay(self, state: Recorded, ctx: Context) -> Paid:
        self.bank.paid += 1
        return Paid(state.amount)

    @pay.reconcile
    def check_paid(self, state: Recorded, ctx: Context) -> Paid | Rerun:
        return Paid(state.amount) if self.bank.paid else rerun()

    @step
    def clear(self, state: Paid, ctx: Context) -> Delayed[Clearing]:
        return later(Clearing(state.amount), after=timedelta(days=2))

    @step
    def settle(self, state: Clearing, ctx: Context) -> Settled:
        return Settled(state.amount)


@pytest.fixture
def bank() -> Bank:
    return Bank()


@pytest.fixture
def harness(db_url: str, bank: Bank) -> Iterator[Harness]:
    store = Store(db_url, clock=FakeClock())
    metadata.create_all(store.engine)
    with Harness([Payout(bank)], store=store) as h:
        yield h
    store.dispose()


def ledger_rows(h: Harness) -> int:
    with h.store.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(ledger)).scalar_one())


def kinds(h: Harness, wid: object) -> list[str]:
    return [e.kind for e in h.history(wid)]  # type: ignore[arg-type]


def test_a_workflow_runs_to_its_end_and_the_clock_jumps_to_its_timer(harness: Harness,
                                                                      bank: Bank) -> None:
    before = harness.clock.now()
    wid = harness.start(Requested(5))
    run = harness.run_until_idle()
    assert run.idle
    assert run.steps == 5
    assert harness.state(wid) == Settled(5)
    assert run.now - before == timedelta(days=2)  # slept on its timer, no real waiting
    assert (len(bank.sent), bank.paid, ledger_rows(harness)) == (1, 1, 1)
    EngineInvariants(harness).check()


def test_a_crash_before_the_handler_runs_it_again_after_the_lease(harness: Harness,
                                                                  bank: Bank) -> None:
    wid = harness.start(Requested(5))
    before = harness.clock.now()
    crashed = harness.step(crash=CrashPoint.BEFORE_HANDLER)
    assert crashed.crashed is CrashPoint.BEFORE_HANDLER
    assert bank.sent == {}
    assert harness.get(wid).status == "running"
    assert harness.clock.now() - before == timedelta(seconds=harness.lease)
    taken = harness.step()
    assert taken.workflow_id == wid
    assert taken.crashed is None
    assert list(bank.sent.values()) == [1]
    assert harness.get(wid).lease_owner != "harness-1"  # another worker took it over


def test_a_crash_after_the_effect_repeats_it_with_the_same_key(harness: Harness,
                                                               bank: Bank) -> None:
    wid = harness.start(Requested(5))
    assert harness.step(crash=CrashPoint.AFTER_EFFECT).crashed is CrashPoint.AFTER_EFFECT
    assert harness.state(wid) == Requested(5)  # the effect happened, the commit did not
    harness.step()
    assert harness.state(wid) == Sent(5)
    assert list(bank.sent.values()) == [2]  # the same key twice: the service dedupes it


def test_a_crash_inside_a_transactional_step_rolls_its_writes_back(harness: Harness) -> None:
    wid = harness.start(Requested(5))
    harness.step()
    assert harness.step(crash=CrashPoint.IN_TRANSACTION).crashed is CrashPoint.IN_TRANSACTION
    assert ledger_rows(harness) == 0
    assert harness.state(wid) == Sent(5)
    harness.step()
    assert ledger_rows(harness) == 1
    assert harness.state(wid) == Recorded(5)


def test_a_crash_during_an_at_most_once_step_is_reconciled_not_rerun(harness: Harness,
                                                                     bank: Bank) -> None:
    wid = harness.start(Requested(5))
    harness.step()
    harness.step()
    crashed = harness.step(crash=CrashPoint.DURING_AT_MOST_ONCE)
    assert crashed.crashed is CrashPoint.DURING_AT_MOST_ONCE
    assert bank.paid == 1
    harness.run_until_idle()
    assert bank.paid == 1
    assert harness.state(wid) == Settled(5)
    assert kinds(harness, wid)[3:] == ["in_doubt", "reconciled", "transition", "transition"]
    EngineInvariants(harness).check()


def test_a_crash_point_the_handler_does_not_have_does_not_fire(harness: Harness) -> None:
    harness.start(Requested(5))
    assert harness.step(crash=CrashPoint.IN_TRANSACTION).crashed is None  # `send` is plain
    assert harness.step(crash=CrashPoint.AFTER_HANDLER).crashed is CrashPoint.IN_TRANSACTION


def test_injected_failures_follow_the_retry_policy(harness: Harness) -> None:
    wid = harness.start(Requested(5))
    assert harness.step(fail="transient").failed == "transient"
    assert harness.get(wid).status == "ready"
    assert "InjectedFailure" in str(
        harness.get(wid).last_error)
    assert harness.step().ran is False  # backing off
    harness.advance(seconds=5)
    assert harness.step(fail="retry_after", retry_after=60).ran  # after the backoff
    assert harness.next_wake_up() == harness.clock.now() + timedelta(seconds=60)
    assert harness.step(fail="permanent").ran is False  # not due for a minute
    harness.advance(minutes=1)
    assert harness.step(fail="permanent").failed == "permanent"
    assert harness.get(wid).status == "failed"  # no error route: parked
    assert kinds(harness, wid) == ["start", "failed_attempt", "rescheduled", "parked"]


def test_run_until_idle_stops_at_its_bounds(harness: Harness) -> None:
    harness.start(Requested(5))
    assert harness.run_until_idle(max_steps=2).steps == 2
    run = harness.run_until_idle(max_time=timedelta(days=1))
    assert not run.idle
    assert run.steps == 2
    assert harness.run_until_idle().idle


def test_reset_empties_the_database_for_the_next_example(harness: Harness, bank: Bank) -> None:
    harness.start(Requested(5))
    harness.run_until_idle()
    harness.reset(machines=[Payout(Bank())])
    assert harness.workflows() == []
    assert harness.next_wake_up() is None
    wid = harness.start(Requested(7))
    harness.run_until_idle()
    assert harness.state(wid) == Settled(7)
    assert bank.paid == 1  # the fresh machine's bank paid the second time


def test_an_event_left_pending_while_its_workflow_sleeps_is_reported_lost(db_url: str) -> None:
    store = Store(db_url, clock=FakeClock())
    with Harness([Collector()], store=store) as h:
        wid = h.start(Collecting())
        h.step()  # now waiting for an Item, or its deadline in a day
        checks = EngineInvariants(h)
        checks.check()
        with store.connect() as conn:  # an event written past the engine: nothing wakes it
            conn.execute(insert(schema.events).values(
                id=uuid.uuid4(), workflow_id=wid, type="Item", data={"value": 1},
                status="pending", noticed=True, created_at=h.clock.now()))
            conn.commit()
        h.writes += 1
        with pytest.raises(InvariantViolated, match="accepts Item, with such an event pending"):
            checks.check()
    store.dispose()
