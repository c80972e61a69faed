"""Declarations checked at import: an event handler over a union of states, and `Limit` with a
window of any length (`count` per `per`) beside the `per_second` shorthand."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import attrs
import pytest

from statemachine import Context, InvalidDefinition, Limit, Machine, step
from statemachine._definition import on_event, on_timeout


@attrs.frozen
class Start:
    pass


@attrs.frozen
class Waiting:
    pass


@attrs.frozen
class Done:
    pass


@attrs.frozen
class Stopped:
    pass


@attrs.frozen
class Stop:
    """An event."""


@attrs.frozen
class Go:
    """An event."""


class Stoppable(Machine):
    initial = Start
    terminal = (Done, Stopped)

    @step
    def begin(self, state: Start, ctx: Context) -> Waiting:
        return Waiting()

    @on_event
    def go(self, state: Waiting, event: Go, ctx: Context) -> Done:
        return Done()

    @on_event
    def stop(self, state: Start | Waiting, event: Stop, ctx: Context) -> Stopped:
        return Stopped()


def test_a_union_gives_one_event_handler_to_each_state() -> None:
    spec = Stoppable.spec
    handler = spec.events[Start][Stop]
    assert spec.events[Waiting][Stop] is handler
    assert handler.sources == (Start, Waiting)
    assert set(spec.events[Waiting]) == {Go, Stop}
    # Start keeps its step: it is a step state that accepts an event, not a waiting state.
    assert not spec.is_waiting(Start)
    assert spec.is_waiting(Waiting)
    assert spec.interrupts(Start) == {Stop: handler}
    assert spec.interrupts(Waiting) == {}
    # Listed once, with an edge from each of its states.
    assert [h.name for h in spec.handlers()].count("stop") == 1
    assert [(s.__name__, t.__name__) for s, t, n in spec.edges() if n == "stop"] == [
        ("Start", "Stopped"), ("Waiting", "Stopped")]


def test_an_event_handler_for_object_is_refused() -> None:
    with pytest.raises(InvalidDefinition, match=r"handles `object`; name the states"):
        class Everywhere(Machine):
            initial = Start
            terminal = (Done,)

            @step
            def begin(self, state: Start, ctx: Context) -> Done:
                return Done()

            @on_event
            def stop(self, state: object, event: Stop, ctx: Context) -> Done:
                return Done()


def test_two_handlers_of_one_event_in_one_state_through_a_union_are_refused() -> None:
    with pytest.raises(InvalidDefinition, match=r"state Waiting has two handlers: 'go' and "
                                                r"'stop'"):
        class Twice(Machine):
            initial = Start
            terminal = (Done,)

            @step
            def begin(self, state: Start, ctx: Context) -> Waiting:
                return Waiting()

            @on_event
            def go(self, state: Waiting, event: Stop, ctx: Context) -> Done:
                return Done()

            @on_event
            def stop(self, state: Start | Waiting, event: Stop, ctx: Context) -> Done:
                return Done()


def test_a_step_with_a_timeout_still_clashes() -> None:
    with pytest.raises(InvalidDefinition, match=r"state Start has two handlers"):
        class Both(Machine):
            initial = Start
            terminal = (Done,)

            @step
            def begin(self, state: Start, ctx: Context) -> Done:
                return Done()

            @on_timeout(after=1)
            def late(self, state: Start, ctx: Context) -> Done:
                return Done()


def test_a_union_naming_a_non_state_is_refused() -> None:
    with pytest.raises(InvalidDefinition, match=r"event 'stop' handles .*int.* is not a state"):
        class Odd(Machine):
            initial = Start
            terminal = (Done,)

            @step
            def begin(self, state: Start, ctx: Context) -> Done:
                return Done()

            @on_event
            def stop(self, state: Start | int, event: Stop, ctx: Context) -> Done:
                return Done()


# -- Limit ------------------------------------------------------------------------------------


CLOUDFLARE = Limit(key="cloudflare", count=1200, per=timedelta(minutes=5))


def test_a_window_of_any_length() -> None:
    assert CLOUDFLARE.rated
    assert CLOUDFLARE.window == (1200, 300.0)
    assert Limit(key="k", count=1, per=timedelta(milliseconds=250)).window == (1, 0.25)


def test_per_second_stays_a_shorthand() -> None:
    assert Limit(key="k", per_second=10).window == (10, 1.0)
    assert Limit(key="k", per_second=0.5).window == (1, 2.0)
    assert not Limit(key="k", concurrency=3).rated


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, r"Limit needs concurrency=, per_second=, or count= with per="),
    ({"count": 10}, r"Limit\(count=...\) needs per= too"),
    ({"per": timedelta(seconds=1)}, r"Limit\(per=...\) needs count= too"),
    ({"per_second": 10, "count": 10, "per": timedelta(seconds=1)},
     r"per_second= or count= with per=, not both"),
    ({"per_second": 10, "count": 10}, r"not both"),
    ({"count": 0, "per": timedelta(seconds=1)}, r"Limit\(count=0\): must be a whole number"),
    ({"count": 2.5, "per": timedelta(seconds=1)}, r"Limit\(count=2.5\)"),
    ({"count": True, "per": timedelta(seconds=1)}, r"Limit\(count=True\)"),
    ({"count": 5, "per": 60}, r"Limit\(per=60\): must be a timedelta"),
    ({"count": 5, "per": timedelta(0)}, r"the window must be at least 1 ms"),
    ({"count": 5, "per": timedelta(seconds=-1)}, r"the window must be at least 1 ms"),
    ({"concurrency": 0}, r"Limit\(concurrency=0\)"),
    ({"concurrency": 1.5}, r"Limit\(concurrency=1.5\)"),
    ({"per_second": 0}, r"Limit\(per_second=0\): must be > 0"),
])
def test_bad_limits_say_what_is_wrong(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidDefinition, match=message):
        Limit(key="k", **kwargs)
