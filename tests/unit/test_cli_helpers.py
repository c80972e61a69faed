"""The CLI's pure pieces: the field diff `history` prints, the times and ages filters take, the
paging cursor, and the column widths tables are fitted to."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from statemachine._cli_filters import parse_duration, parse_time
from statemachine._cli_inspect import field_changes
from statemachine._cli_output import _fit
from statemachine._store._filters import Cursor, WorkflowFilter
from statemachine.errors import InvalidArgument

NOW = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)


def test_field_changes_name_what_was_added_removed_and_changed() -> None:
    before = {"order_id": "A1", "amount": 5, "card": "4242"}
    after = {"order_id": "A1", "amount": 7, "charge_id": "ch_1"}
    assert field_changes(before, after) == [
        {"field": "amount", "change": "changed", "before": 5, "after": 7},
        {"field": "card", "change": "removed", "before": "4242", "after": None},
        {"field": "charge_id", "change": "added", "before": None, "after": "ch_1"},
    ]
    assert field_changes(before, dict(before)) == []
    # Data that is not an object (written by hand) is compared whole.
    assert field_changes([1], {"a": 1}) == [
        {"field": None, "change": "changed", "before": [1], "after": {"a": 1}}]


@pytest.mark.parametrize(("text", "expected"), [
    ("90s", timedelta(seconds=90)), ("30m", timedelta(minutes=30)), ("2h", timedelta(hours=2)),
    ("7d", timedelta(days=7)), ("1w", timedelta(weeks=1)), ("1.5h", timedelta(minutes=90))])
def test_ages(text: str, expected: timedelta) -> None:
    assert parse_duration(text, "--since") == expected
    assert parse_time(text, "--since", NOW) == NOW - expected


def test_times_are_utc_unless_they_say_otherwise() -> None:
    assert parse_time("2026-12-01", "--since", NOW) == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_time("2026-12-01T10:00+02:00", "--until", NOW) == datetime(
        2026, 12, 1, 8, tzinfo=UTC)
    with pytest.raises(InvalidArgument, match=r"--since yesterday: not a time \(e\.g\."):
        parse_time("yesterday", "--since", NOW)
    with pytest.raises(InvalidArgument, match="--overdue 5 minutes: not a duration"):
        parse_duration("5 minutes", "--overdue")


def test_a_cursor_survives_the_command_line_and_a_bad_one_is_named() -> None:
    cursor = Cursor(NOW, uuid.uuid4())
    assert Cursor.decode(cursor.encode()) == cursor
    with pytest.raises(InvalidArgument, match="--after nonsense: not a cursor"):
        Cursor.decode("nonsense")


def test_an_empty_filter_matches_everything_and_fields_narrow_it() -> None:
    everything = str(WorkflowFilter().where().compile())
    assert "status" not in everything
    narrowed = str(WorkflowFilter(statuses=("failed",), error="Gate").where().compile())
    assert "status IN" in narrowed
    assert "lower(sm_workflows.last_error) LIKE" in narrowed


@pytest.mark.parametrize("room", [40, 68, 120])
def test_columns_fit_the_line_and_the_last_takes_the_rest(room: int) -> None:
    natural = [8, 9, 14, 6, 19, 60]
    widths = _fit(natural, room)
    assert sum(widths) <= room
    assert all(w <= n for w, n in zip(widths, natural, strict=True))
    if sum(natural) <= room:
        assert widths == natural
