"""Reading rows whose values an operator may have written by hand.

SQLite checks neither JSON nor column types: a row can hold ``data`` that is not JSON, or text in
``attempt``. Such a value must not fail the whole read (a claim of fifty rows, a listing): on
SQLite the JSON columns are read as text and decoded here one row at a time, integer columns
checked, and what does not decode is kept raw with the reason in ``data_error``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sqlalchemy import ColumnElement, Table, Text, type_coerce
from sqlalchemy.sql.sqltypes import JSON, Integer

__all__ = ["StoredRow", "decode_value", "readable_columns", "stored_rows"]


class StoredRow:
    """A row read by the store: its columns as attributes (``row.state``, ``row.data``), and
    `data_error`, None unless a value could not be decoded. Then that column holds the raw
    value as stored (``row.data`` the text that is not JSON) and `data_error` says which column
    and why, e.g. ``column data: not valid JSON: Expecting value at 1:1``."""

    __slots__ = ("_values", "data_error")

    def __init__(self, values: dict[str, Any], data_error: str | None = None) -> None:
        self._values = values
        self.data_error = data_error

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def _mapping(self) -> Mapping[str, Any]:
        return self._values

    def _asdict(self) -> dict[str, Any]:
        return dict(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StoredRow):
            return (self._values, self.data_error) == (other._values, other.data_error)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        error = f", data_error={self.data_error!r}" if self.data_error else ""
        return f"StoredRow({self._values!r}{error})"


def readable_columns(table: Table, is_sqlite: bool) -> list[ColumnElement[Any]]:
    """The columns of `table` to select: on SQLite its JSON columns as text, decoded by
    `stored_rows` (elsewhere the server has checked them)."""
    if not is_sqlite:
        return list(table.columns)
    return [type_coerce(c, Text()).label(c.name) if isinstance(c.type, JSON) else c
            for c in table.columns]


def decode_value(column: str, value: Any, *, json_text: bool = False,
                 integer: bool = False) -> tuple[Any, str | None]:
    """(decoded value, None), or (the raw value, why it does not decode)."""
    if json_text and isinstance(value, str | bytes):
        try:
            return json.loads(value), None
        except ValueError as e:
            return value, f"column {column}: not valid JSON: {e}"
    if integer and value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        return value, f"column {column}: not an integer: {value!r}"
    return value, None


def stored_rows(rows: Iterable[Any], table: Table, is_sqlite: bool) -> Iterator[StoredRow]:
    """`rows` (selected with `readable_columns`) as `StoredRow`s, decoded one by one."""
    json_columns = {c.name for c in table.columns if isinstance(c.type, JSON)}
    int_columns = {c.name for c in table.columns if isinstance(c.type, Integer)}
    for row in rows:
        values = dict(row._mapping)
        if not is_sqlite:
            yield StoredRow(values)
            continue
        errors = []
        for name, value in values.items():
            decoded, error = decode_value(name, value, json_text=name in json_columns,
                                          integer=name in int_columns)
            values[name] = decoded
            if error:
                errors.append(error)
        yield StoredRow(values, "; ".join(errors) or None)
