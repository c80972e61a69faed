"""States are checked against their classes before anything is written (on every backend):
`Client.start`, `Client.force`, ``ctx.start_child`` and a handler's returned state with a field of
the wrong type are refused where the mistake is made, not one step later; JSON given by a caller
with fields its class does not have is refused too."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from sqlalchemy import func, select

from statemachine import (
    ChildResult,
    Client,
    Context,
    DataError,
    Failure,
    InvalidArgument,
    Machine,
    Store,
    Worker,
    on_children,
    on_event,
    step,
)
from statemachine._schema import events, history, workflows

FAST: dict[str, Any] = dict(poll_interval=0.05, min_poll_interval=0.01)


@attrs.frozen
class Count:
    n: int
    route: str = "ok"


@attrs.frozen
class Counted:
    n: int


@attrs.frozen
class Spoiled:
    why: str


@attrs.frozen
class Parenting:
    pass


@attrs.frozen
class Raised:
    pass


class Counter(Machine):
    name = "types_counter"
    initial = Count
    terminal = (Counted, Spoiled)

    @step
    def count(self, state: Count, ctx: Context) -> Counted:
        if state.route == "mistyped":
            return Counted(n="not-an-int")  # type: ignore[arg-type]
        return Counted(n=state.n + 1)

    @count.on_error
    def spoil(self, state: Count, failure: Failure, ctx: Context) -> Spoiled:
        return Spoiled(why=failure.message)


class Parent(Machine):
    name = "types_parent"
    initial = Count
    terminal = (Raised,)

    @step
    def spawn(self, state: Count, ctx: Context) -> Parenting:
        ctx.start_child(Counter, Count(n="seven"))  # type: ignore[arg-type]
        return Parenting()

    @on_children()
    def done(self, state: Parenting, children: list[ChildResult], ctx: Context) -> Raised:
        return Raised()


@attrs.frozen
class Ping:
    n: int


class Waiter(Machine):
    name = "types_waiter"
    initial = Parenting
    terminal = (Raised,)

    @on_event
    def pinged(self, state: Parenting, event: Ping, ctx: Context) -> Raised:
        return Raised()


def counts(store: Store) -> tuple[int, int]:
    with store.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(workflows)).scalar_one()
        hist = conn.execute(select(func.count()).select_from(history)).scalar_one()
    return int(rows), int(hist)


def test_start_with_a_mistyped_field_writes_nothing(store: Store) -> None:
    client = Client(store, [Counter])
    with pytest.raises(DataError) as info:
        client.start(Counter, Count(n="not-an-int"))  # type: ignore[arg-type]
    assert "expected int, got 'not-an-int' @ data.n" in str(info.value)
    assert "types_counter" in str(info.value)
    assert counts(store) == (0, 0)


def test_force_with_a_mistyped_field_or_a_foreign_state_changes_nothing(store: Store) -> None:
    client = Client(store, [Counter])
    wid = client.start(Counter, Count(n=1))
    before = client.get(wid)
    with pytest.raises(DataError, match=r"expected int, got 'x' @ data\.n"):
        client.force(wid, Counted(n="x"))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="Raised is not a state of machine types_counter"):
        client.force(wid, Raised())
    after = client.get(wid)
    assert (after.version, after.state) == (before.version, before.state)


def test_a_handler_returning_a_mistyped_state_fails_for_good_naming_itself(store: Store) -> None:
    client = Client(store, [Counter])
    with Worker(store, [Counter()], **FAST):
        info = client.wait(client.start(Counter, Count(n=1, route="mistyped")), timeout=30)
    # Nothing of the bad result was stored: the error route ran instead.
    assert info.state == Spoiled(why=info.state.why)  # type: ignore[union-attr]
    assert isinstance(info.state, Spoiled)
    for part in ("'count'", "expected int, got 'not-an-int' @ data.n"):
        assert part in info.state.why, f"{part!r} not in {info.state.why!r}"
    assert [h.kind for h in client.history(info.id)] == ["start", "error_route"]


def test_a_child_with_a_mistyped_field_is_refused_in_the_parents_handler(store: Store) -> None:
    client = Client(store, [Parent, Counter])
    with Worker(store, [Parent(), Counter()], **FAST):
        info = client.wait(client.start(Parent, Count(n=1)), timeout=30)
    assert info.status == "failed"  # parked: a DataError is not retried; no error route
    assert info.last_error is not None
    assert "expected int, got 'seven' @ data.n" in info.last_error
    assert [h.kind for h in client.history(info.id)] == ["start", "parked"]
    assert counts(store)[0] == 1  # no child was written


def test_json_given_with_an_unknown_field_is_refused(store: Store) -> None:
    codec = Client(store, [Counter]).codec_for("types_counter")
    with pytest.raises(DataError, match="Extra fields in constructor for Count: colour"):
        codec.load("Count", {"n": 1, "colour": "red"})


def test_an_event_given_as_json_with_an_unknown_field_is_refused(store: Store) -> None:
    client = Client(store, [Waiter])
    wid = client.start(Waiter, Parenting())
    with pytest.raises(DataError, match="Extra fields in constructor for Ping: colour"):
        client.send_data(wid, "Ping", {"n": 1, "colour": "red"})
    with pytest.raises(DataError, match=r"expected int, got 'one' @ data\.n"):
        client.send_data(wid, "Ping", {"n": "one"})
    with store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 0
