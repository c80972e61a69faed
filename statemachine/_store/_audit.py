"""The audit queries behind `statemachine check`, `list` and `show`, and the worker's report of
rows it can never claim.

They read `sm_workflows` without decoding anything through the engine's column types (no JSON,
UUID or timestamp processing), so one row an operator filled with nonsense cannot make them fail:
each problem is found by SQL (``json_valid(data)`` on SQLite, ``jsonb_typeof`` on PostgreSQL,
``typeof`` of the integer columns on SQLite) and reported grouped, with a count and an example id.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import attrs
from sqlalchemy import (
    ColumnElement,
    Connection,
    Text,
    and_,
    cast,
    exists,
    func,
    not_,
    or_,
    select,
    true,
    type_coerce,
)
from sqlalchemy.types import NullType

from .._schema import FINISHED_STATUSES, STATUSES, workflows
from ._decode import decode_value

if TYPE_CHECKING:
    from . import Store

__all__ = ["Problem", "RawRow", "as_uuid", "problems", "raw_rows", "row_problems", "scan_raw",
           "unclaimable"]

w = workflows
# Integer columns SQLite would hold text in without complaint.
_INTEGER_COLUMNS = ("version", "entered_version", "attempt")


@attrs.frozen
class Problem:
    """`count` rows share one problem (`kind`, with `detail`: the status, machine or column);
    `example` is the id of one of them, as stored."""

    kind: str
    detail: str
    count: int
    example: str

    def describe(self) -> str:
        """One line for a person: what, how many, and an id to look at."""
        what = f"{self.kind} {self.detail}" if self.detail else self.kind
        rows = "1 workflow" if self.count == 1 else f"{self.count} workflows"
        return f"{what}: {rows} (e.g. {self.example})"


def _group(store: Store, kind: str, detail: ColumnElement[Any] | str,
           where: ColumnElement[bool]) -> list[Problem]:
    """The rows matching `where`, grouped by `detail` (a column, or a fixed text)."""
    example = func.min(cast(w.c.id, Text))
    if isinstance(detail, str):
        stmt = select(func.count(), example).where(where)
        count, first = store.transaction(lambda conn: conn.execute(stmt).one())
        return [Problem(kind, detail, int(count), str(first))] if count else []
    grouped = select(cast(detail, Text), func.count(), example).where(where).group_by(detail)
    return [Problem(kind, repr(value) if value is not None else "NULL", int(count), str(first))
            for value, count, first in store.transaction(
                lambda conn: conn.execute(grouped).all())]


def unclaimable(store: Store, machines: Sequence[str] | None = None) -> list[Problem]:
    """Rows no worker will ever claim: a status that is not one of the six, or ``ready`` with no
    ``wake_at`` that is not a child queued behind its live parent's ``max_running`` (the parent
    lets it go when a sibling finishes). Only of `machines`, when given (a worker reports its
    own)."""
    scope: ColumnElement[bool] = w.c.machine.in_(machines) if machines is not None else true()
    parent = workflows.alias("parent")
    queued_by_live_parent = exists().where(
        parent.c.id == w.c.parent_id, parent.c.status.not_in(FINISHED_STATUSES))
    return [
        *_group(store, "unknown status", w.c.status, and_(scope, w.c.status.not_in(STATUSES))),
        *_group(store, "ready without wake_at", "",
                and_(scope, w.c.status == "ready", w.c.wake_at.is_(None),
                     not_(queued_by_live_parent))),
    ]


def problems(store: Store, known_machines: Sequence[str]) -> list[Problem]:
    """Every problem SQL can see in the rows that are not finished (done, failed, cancelled):
    the `unclaimable` ones, machines not in `known_machines`, data that is not a JSON object (or
    not JSON at all, on SQLite), and text in integer columns (SQLite)."""
    live = w.c.status.not_in(FINISHED_STATUSES)
    found = [*unclaimable(store),
             *_group(store, "unknown machine", w.c.machine,
                     and_(live, w.c.machine.not_in(known_machines)))]
    if store.is_sqlite:
        valid = func.json_valid(w.c.data) == 1
        found += _group(store, "data is not valid JSON", "", and_(live, not_(valid)))
        found += _group(store, "data is not a JSON object, but", func.json_type(w.c.data),
                        and_(live, valid, func.json_type(w.c.data) != "object"))
        for column in _INTEGER_COLUMNS:
            col = w.c[column]
            found += _group(store, f"{column} is not an integer, but", func.typeof(col),
                            and_(live, func.typeof(col) != "integer"))
    else:
        kind = func.jsonb_typeof(w.c.data)
        found += _group(store, "data is not a JSON object, but", kind,
                        and_(live, or_(kind.is_(None), kind != "object")))
    return found


@attrs.frozen
class RawRow:
    """A workflow row as the driver returned it (nothing decoded by the engine's types); `data`
    is the parsed JSON when it parses, else the stored text; `problems` says what is wrong."""

    id: str
    machine: str
    state: str
    status: str
    version: object
    attempt: object
    wake_at: object
    key: str | None
    parent_id: str | None
    lease_owner: str | None
    last_error: str | None
    created_at: object
    updated_at: object
    data: object
    problems: tuple[str, ...]


_RAW_COLUMNS = ("id", "machine", "state", "status", "version", "attempt", "wake_at", "key",
                "parent_id", "lease_owner", "last_error", "created_at", "updated_at", "data")


def raw_rows(store: Store, *, workflow_id: str | None = None, machine: str | None = None,
             status: str | None = None, state: str | None = None,
             limit: int = 100) -> list[RawRow]:
    """Workflow rows, newest first, filtered like `list`, each with its problems."""
    stmt = (select(*[type_coerce(w.c[name], NullType()).label(name) for name in _RAW_COLUMNS])
            .order_by(cast(w.c.created_at, Text).desc(), cast(w.c.id, Text)).limit(limit))
    if workflow_id is not None:
        stmt = stmt.where(cast(w.c.id, Text) == workflow_id)
    if machine:
        stmt = stmt.where(w.c.machine == machine)
    if status:
        stmt = stmt.where(w.c.status == status)
    if state:
        stmt = stmt.where(w.c.state == state)
    return [_raw(r) for r in store.transaction(lambda conn: conn.execute(stmt).all())]


def scan_raw(store: Store, machines: Sequence[str], *, include_finished: bool = False,
             batch: int = 500) -> Iterator[RawRow]:
    """Every row of `machines` that is not finished (or every one, with `include_finished`), as
    `raw_rows` reads them, in batches by id (no long transaction, however large the table)."""
    after: str | None = None
    columns = [type_coerce(w.c[name], NullType()).label(name) for name in _RAW_COLUMNS]
    while True:
        stmt = (select(*columns).where(w.c.machine.in_(machines))
                .order_by(cast(w.c.id, Text)).limit(batch))
        if not include_finished:
            stmt = stmt.where(w.c.status.not_in(FINISHED_STATUSES))
        if after is not None:
            stmt = stmt.where(cast(w.c.id, Text) > after)
        rows = store.transaction(partial(_all, stmt))
        for r in rows:
            yield _raw(r)
        if len(rows) < batch:
            return
        after = str(rows[-1].id)


def _all(stmt: Any, conn: Connection) -> Sequence[Any]:
    return conn.execute(stmt).all()


def _raw(r: Any) -> RawRow:
    data, data_error = decode_value("data", r.data, json_text=True)
    found = row_problems(str(r.status), r.wake_at, {c: getattr(r, c) for c in
                                                    ("version", "attempt")},
                         child=r.parent_id is not None)
    if data_error is not None:
        found.append(data_error)
    elif not isinstance(data, dict):
        found.append(f"column data: a JSON {_json_kind(data)}, not an object")
    return RawRow(
        id=str(r.id), machine=str(r.machine), state=str(r.state), status=str(r.status),
        version=r.version, attempt=r.attempt, wake_at=r.wake_at, key=r.key,
        parent_id=None if r.parent_id is None else str(r.parent_id), lease_owner=r.lease_owner,
        last_error=r.last_error, created_at=r.created_at, updated_at=r.updated_at, data=data,
        problems=tuple(found))


def row_problems(status: str, wake_at: object, integers: dict[str, object], *,
                 child: bool = False) -> list[str]:
    """What stops a row with these values from being claimed or read. A `child` that is ready
    without ``wake_at`` is queued behind its parent's ``max_running``: not a problem here."""
    found = []
    if status not in STATUSES:
        found.append(f"unknown status {status!r} (not one of {', '.join(STATUSES)})")
    elif status == "ready" and wake_at is None and not child:
        found.append("ready without wake_at: no worker will claim it")
    for name, value in integers.items():
        _, error = decode_value(name, value, integer=True)
        if error is not None or value is None:
            found.append(error or f"column {name}: not an integer: None")
    return found


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def as_uuid(value: str) -> uuid.UUID | None:
    """`value` as a UUID, or None when it is not one."""
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
