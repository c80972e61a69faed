"""The fast path's one-call bind processors for statemachine's types on SQLite write exactly the
text SQLAlchemy writes: SQLite compares times as text, so one character of difference would put
a row's wake-up before or after where SQLAlchemy's own statements see it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite

from statemachine._schema import TextUUID, UTCDateTime
from statemachine.errors import InvalidArgument

DIALECT = sqlite.dialect()
offsets = st.integers(min_value=-23 * 60, max_value=23 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes)))
# (hypothesis takes naive bounds; the values it draws are aware)
aware = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31),  # noqa: DTZ001
                     timezones=st.one_of(st.just(UTC), offsets))


def _sqlalchemy(type_: Any, value: Any) -> Any:
    process = type_.dialect_impl(DIALECT).bind_processor(DIALECT)
    return process(value) if process else value


@given(aware)
def test_a_time_is_written_as_sqlalchemy_writes_it(value: datetime) -> None:
    assert UTCDateTime.sqlite_text(value) == _sqlalchemy(UTCDateTime(), value)


@given(st.datetimes())
def test_a_naive_time_is_refused_by_both(value: datetime) -> None:
    with pytest.raises(InvalidArgument, match="naive datetime"):
        UTCDateTime.sqlite_text(value)
    with pytest.raises(InvalidArgument, match="naive datetime"):
        _sqlalchemy(UTCDateTime(), value)


@given(st.uuids(), st.sampled_from([lambda u: u, str, lambda u: u.hex, lambda u: str(u).upper()]))
def test_a_uuid_is_written_as_sqlalchemy_writes_it(value: uuid.UUID, form: Any) -> None:
    given_as = form(value)
    assert TextUUID.sqlite_text(given_as) == _sqlalchemy(TextUUID(), given_as) == str(value)


class _OtherIsoformat(datetime):
    """A datetime subclass whose isoformat takes no arguments (as some libraries' do)."""

    def isoformat(self) -> str:  # type: ignore[override]
        return "not the storage format"


def test_a_datetime_subclass_is_written_as_sqlalchemy_writes_it() -> None:
    value = _OtherIsoformat(2026, 12, 8, 1, 2, 3, 0, tzinfo=UTC)
    assert UTCDateTime.sqlite_text(value) == _sqlalchemy(UTCDateTime(), value) == \
        "2026-12-08 01:02:03.000000"


def test_none_stays_none() -> None:
    assert UTCDateTime.sqlite_text(None) is None is _sqlalchemy(UTCDateTime(), None)
    assert TextUUID.sqlite_text(None) is None is _sqlalchemy(TextUUID(), None)
