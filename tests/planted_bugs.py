"""Machines with one planted defect each, for `tests/integration/test_exploration.py`: the
toolkit must find each defect and shrink it to a small counter-example.

1. `Quoting`: a handler returns a state its annotation does not declare, on a rare input.
2. `Trip`: a compensation (a refund) that is not keyed by the idempotency key, so a crash after
   its effect runs it twice.
3. `Collector`: a waiting state whose event handler drops an event (a negative value).
4. `Transfer`: a step whose effect is not keyed by the idempotency key, so a crash after the
   effect doubles it.
5. `Reminders`: a timer computed from a time stored in the state (stale), not from ``ctx.now()``.

Each machine's fake of the outside world records what happened, and the invariant that catches
the defect is a function of the `Exploration` (it sees the fakes and the workflows).
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from datetime import datetime, timedelta

import attrs

from statemachine import Context, Delayed, Failure, Machine, later, on_cancel, on_event, step
from statemachine import on_timeout as on_timeout_
from statemachine.testing import Exploration

# -- 1. an undeclared state on a rare input -------------------------------------------------------


@attrs.frozen
class QuoteRequested:
    amount: int


@attrs.frozen
class Priced:
    amount: int
    price: int


@attrs.frozen
class Approved:
    price: int


@attrs.frozen
class Declined:
    reason: str


class Quoting(Machine):
    name = "quoting"
    initial = QuoteRequested
    terminal = (Approved, Declined)

    @step
    def price(self, state: QuoteRequested, ctx: Context) -> Priced:
        if state.amount > 10_000:  # the planted defect: Declined is not in the annotation
            return Declined("too large")  # type: ignore[return-value]
        return Priced(state.amount, price=state.amount * 2)

    @step
    def approve(self, state: Priced, ctx: Context) -> Approved | Declined:
        return Approved(state.price) if state.price >= 0 else Declined("negative")


# -- 2. a compensation that runs twice after a crash ----------------------------------------------


class Bank:
    """A payment provider's fake: payments by key (deduplicated), refunds (not)."""

    def __init__(self) -> None:
        self.payments: dict[str, str] = {}
        self.refunds: Counter[str] = Counter()  # trip id -> refunds made

    def pay(self, trip: str, key: str) -> str:
        return self.payments.setdefault(key, trip)

    def refund(self, trip: str) -> None:
        self.refunds[trip] += 1


@attrs.frozen
class TripBooked:
    trip: str


@attrs.frozen
class TripPaid:
    trip: str


@attrs.frozen
class Refunding:
    trip: str


@attrs.frozen
class TripDone:
    trip: str


@attrs.frozen
class TripRefunded:
    trip: str


class Trip(Machine):
    name = "trip"
    initial = TripBooked
    terminal = (TripDone, TripRefunded)

    def __init__(self, bank: Bank | None = None) -> None:
        self.bank = bank or Bank()

    @step
    def pay(self, state: TripBooked, ctx: Context) -> TripPaid:
        self.bank.pay(state.trip, ctx.idempotency_key)
        return TripPaid(state.trip)

    @pay.on_error
    def undo(self, state: TripBooked, failure: Failure, ctx: Context) -> Refunding:
        return Refunding(state.trip)

    @step
    def finish(self, state: TripPaid, ctx: Context) -> TripDone:
        return TripDone(state.trip)

    @on_cancel
    def cancelled(self, state: TripBooked | TripPaid, ctx: Context) -> Refunding:
        return Refunding(state.trip)

    @step
    def refund(self, state: Refunding, ctx: Context) -> TripRefunded:
        self.bank.refund(state.trip)  # the planted defect: no idempotency key
        return TripRefunded(state.trip)


def refunded_at_most_once(ex: Exploration) -> None:
    bank = ex.machine.bank  # type: ignore[attr-defined]
    twice = {trip: n for trip, n in bank.refunds.items() if n > 1}
    assert not twice, f"refunded more than once: {twice}"


# -- 3. a waiting state that drops an event --------------------------------------------------------


@attrs.frozen
class Item:
    value: int


@attrs.frozen
class Collecting:
    items: tuple[int, ...] = ()


@attrs.frozen
class Collected:
    items: tuple[int, ...]


class Collector(Machine):
    name = "collector"
    initial = Collecting
    terminal = (Collected,)

    @on_event
    def add(self, state: Collecting, event: Item, ctx: Context) -> Collecting | Collected:
        if event.value < 0:  # the planted defect: a negative value is dropped
            return state
        items = (*state.items, event.value)
        return Collected(items) if len(items) >= 3 else Collecting(items)

    @on_timeout_(after=timedelta(days=1))
    def close(self, state: Collecting, ctx: Context) -> Collected:
        return Collected(state.items)


def every_consumed_item_is_kept(ex: Exploration) -> None:
    for wid in ex.workflows:
        consumed = sum(1 for kind, status in ex.harness.events(wid)
                       if kind == "Item" and status == "consumed")
        state = ex.harness.state(wid)
        kept = len(state.items) if isinstance(state, Collecting | Collected) else consumed
        assert kept == consumed, f"workflow {wid}: {consumed} items consumed, {kept} kept"


# -- 4. an effect not keyed by the idempotency key ------------------------------------------------


class Payments:
    """A money-transfer API's fake: deduplicates by the key it is given."""

    def __init__(self) -> None:
        self.transfers: dict[str, str] = {}  # key -> account

    def send(self, account: str, key: str) -> None:
        self.transfers.setdefault(key, account)


@attrs.frozen
class TransferRequested:
    account: str


@attrs.frozen
class TransferSent:
    account: str


class Transfer(Machine):
    name = "transfer"
    initial = TransferRequested
    terminal = (TransferSent,)

    def __init__(self, payments: Payments | None = None) -> None:
        self.payments = payments or Payments()

    @step
    def send(self, state: TransferRequested, ctx: Context) -> TransferSent:
        self.payments.send(state.account, key=uuid.uuid4().hex)  # the planted defect
        return TransferSent(state.account)


def one_transfer_per_workflow(ex: Exploration) -> None:
    sent = len(ex.machine.payments.transfers)  # type: ignore[attr-defined]
    assert sent <= len(ex.workflows), f"{sent} transfers for {len(ex.workflows)} workflows"


# -- 5. a timer from a stale clock value ----------------------------------------------------------


class Mailer:
    """An e-mail API's fake: when each reminder went out."""

    def __init__(self) -> None:
        self.sent: dict[str, list[datetime]] = {}

    def send(self, user: str, at: datetime) -> None:
        self.sent.setdefault(user, []).append(at)


@attrs.frozen
class Enrolled:
    user: str


@attrs.frozen
class Reminding:
    user: str
    since: datetime
    sent: int = 0


@attrs.frozen
class Reminded:
    user: str


EVERY = timedelta(hours=1)


class Reminders(Machine):
    name = "reminders"
    initial = Enrolled
    terminal = (Reminded,)

    def __init__(self, mailer: Mailer | None = None) -> None:
        self.mailer = mailer or Mailer()

    @step
    def enrol(self, state: Enrolled, ctx: Context) -> Delayed[Reminding]:
        return later(Reminding(state.user, since=ctx.now()), after=EVERY)

    @step
    def remind(self, state: Reminding, ctx: Context) -> Delayed[Reminding] | Reminded:
        self.mailer.send(str(ctx.workflow_id), ctx.now())
        if state.sent + 1 >= 3:
            return Reminded(state.user)
        # The planted defect: the next reminder is an hour after a time kept in the state,
        # which is an hour old by now (it should be ctx.now() + EVERY).
        return later(attrs.evolve(state, sent=state.sent + 1), at=state.since + EVERY)


def reminders_an_hour_apart(ex: Exploration) -> None:
    for wid, times in ex.machine.mailer.sent.items():  # type: ignore[attr-defined]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(g >= EVERY for g in gaps), f"workflow {wid}: reminders {gaps} apart"
