"""Finding workflows by what an operator knows about them: the reads behind `statemachine list`
and the bulk commands (`retry`, `cancel`, `force`, `resolve` with filters).

A `WorkflowFilter` becomes one WHERE clause, so filtering, counting and paging happen in the
database, however large the table. Pages are keyset-paged (newest first, by ``created_at`` then
``id``): a cursor is the last row's ``(created_at, id)``, so a page never repeats or skips a row
because rows were added meanwhile. An id prefix becomes a range of the primary key.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import attrs
from sqlalchemy import ColumnElement, and_, func, or_, select, true, type_coerce
from sqlalchemy.types import NullType

from .._schema import events, workflows
from ..errors import InvalidArgument, WorkflowNotFound
from ._audit import _RAW_COLUMNS, RawRow, _raw
from ._decode import StoredRow, readable_columns, stored_rows

if TYPE_CHECKING:
    from . import Store

__all__ = [
    "Cursor",
    "WorkflowFilter",
    "count_matching",
    "distinct_values",
    "event_rows",
    "find_ids",
    "page",
    "resolve_id",
    "selected_rows",
]

w = workflows
TimeField = Literal["created", "updated"]


@attrs.frozen
class WorkflowFilter:
    """Which workflows: every field given narrows the set (an empty tuple or None: any).
    `since`/`until` bound `created_at` or `updated_at` (`time_field`), `since` inclusive;
    `error` is a case-insensitive substring of `last_error`."""

    statuses: tuple[str, ...] = ()
    machines: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    parent: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None
    time_field: TimeField = "updated"
    error: str | None = None
    ids: tuple[uuid.UUID, ...] = ()
    # What a bulk command adds so that what it did no longer matches (a rerun skips it).
    exclude_states: tuple[str, ...] = ()
    exclude_cancel_requested: bool = False

    def where(self) -> ColumnElement[bool]:
        """The filter as one SQL condition on `sm_workflows`."""
        conds: list[ColumnElement[bool]] = []
        if self.statuses:
            conds.append(w.c.status.in_(self.statuses))
        if self.machines:
            conds.append(w.c.machine.in_(self.machines))
        if self.states:
            conds.append(w.c.state.in_(self.states))
        if self.keys:
            conds.append(w.c.key.in_(self.keys))
        if self.parent is not None:
            conds.append(w.c.parent_id == self.parent)
        column = w.c.created_at if self.time_field == "created" else w.c.updated_at
        if self.since is not None:
            conds.append(column >= self.since)
        if self.until is not None:
            conds.append(column < self.until)
        if self.error:
            conds.append(func.lower(w.c.last_error).contains(self.error.lower(), autoescape=True))
        if self.ids:
            conds.append(w.c.id.in_(self.ids))
        if self.exclude_states:
            conds.append(w.c.state.not_in(self.exclude_states))
        if self.exclude_cancel_requested:
            conds.append(w.c.cancel_requested.is_(None))
        return and_(true(), *conds)


@attrs.frozen
class Cursor:
    """Where a page ended: the last row's creation time and id (newest-first order)."""

    created_at: datetime
    id: uuid.UUID

    def encode(self) -> str:
        """The cursor as text, for ``--after``."""
        return f"{self.created_at.isoformat()}/{self.id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """A cursor printed by `encode`; `InvalidArgument` if `text` is not one."""
        when, _, wid = text.rpartition("/")
        try:
            created = datetime.fromisoformat(when)
            return cls(created if created.tzinfo else created.replace(tzinfo=UTC), uuid.UUID(wid))
        except ValueError:
            raise InvalidArgument(f"--after {text}: not a cursor (copy the one a page printed "
                                  "after `next page:`)") from None


def _raw_select() -> Any:
    return select(*[type_coerce(w.c[name], NullType()).label(name) for name in _RAW_COLUMNS])


def page(store: Store, flt: WorkflowFilter, *, limit: int,
         after: Cursor | None = None) -> tuple[list[RawRow], Cursor | None]:
    """One page of matching rows, newest first, each with its problems (as `list` shows them,
    nothing decoded by the engine's types), and the cursor of the next page (None: last page)."""
    stmt = _raw_select().where(flt.where())
    if after is not None:
        stmt = stmt.where(or_(w.c.created_at < after.created_at,
                              and_(w.c.created_at == after.created_at, w.c.id < after.id)))
    stmt = stmt.order_by(w.c.created_at.desc(), w.c.id.desc()).limit(limit + 1)
    found = store.transaction(lambda conn: conn.execute(stmt).all())
    rows = [_raw(r) for r in found[:limit]]
    if len(found) <= limit or not rows:
        return rows, None
    last = found[limit - 1]
    return rows, Cursor(_as_time(last.created_at), uuid.UUID(str(last.id)))


def _as_time(value: object) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def count_matching(store: Store, flt: WorkflowFilter) -> int:
    """How many workflows match."""
    stmt = select(func.count()).select_from(w).where(flt.where())
    return int(store.transaction(lambda conn: conn.execute(stmt).scalar_one()))


def selected_rows(store: Store, flt: WorkflowFilter, *, batch: int,
                  after: uuid.UUID | None = None) -> list[StoredRow]:
    """The next `batch` matching rows by id (ascending, after `after`), decoded as the engine
    reads them: what a bulk command changes, one batch at a time."""
    stmt = select(*readable_columns(w, store.is_sqlite)).where(flt.where())
    if after is not None:
        stmt = stmt.where(w.c.id > after)
    stmt = stmt.order_by(w.c.id).limit(batch)
    return store.transaction(lambda conn: list(stored_rows(conn.execute(stmt), w,
                                                           store.is_sqlite)))


def find_ids(store: Store, flt: WorkflowFilter, *, limit: int) -> list[uuid.UUID]:
    """Ids of up to `limit` matching workflows, newest first."""
    stmt = (select(w.c.id).where(flt.where())
            .order_by(w.c.created_at.desc(), w.c.id.desc()).limit(limit))
    return list(store.transaction(lambda conn: conn.execute(stmt).scalars().all()))


def distinct_values(store: Store, column: str,
                    machines: Sequence[str] = ()) -> list[str]:
    """The values `sm_workflows.<column>` holds (of `machines`, when given), sorted."""
    col = w.c[column]
    stmt = select(col).distinct()
    if machines:
        stmt = stmt.where(w.c.machine.in_(machines))
    return sorted(str(v) for v in store.transaction(lambda conn: conn.execute(stmt).scalars()))


_PREFIX = re.compile(r"^[0-9a-f-]{1,36}$")


def resolve_id(store: Store, text: str) -> uuid.UUID:
    """The workflow whose id is `text` or starts with it (as the demo prints ids: ``1e0f5b8a``).
    `WorkflowNotFound` when none does; `InvalidArgument` naming the candidates when several do.
    The prefix becomes a range of the primary key, so the lookup uses its index."""
    value = text.strip().lower()
    try:
        return uuid.UUID(value)
    except ValueError:
        pass
    digits = value.replace("-", "")
    if not _PREFIX.match(value) or not digits or len(digits) > 32:
        raise WorkflowNotFound(f"{text!r} is not a workflow id (a UUID, or the start of one)")
    low, high = uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))
    stmt = (select(w.c.id).where(w.c.id >= low, w.c.id <= high).order_by(w.c.id).limit(6))
    found = list(store.transaction(lambda conn: conn.execute(stmt).scalars().all()))
    if not found:
        raise WorkflowNotFound(f"no workflow id starts with {text!r}")
    if len(found) > 1:
        shown = ", ".join(str(f) for f in found[:5]) + (", ..." if len(found) > 5 else "")
        many = "more than 5" if len(found) > 5 else str(len(found))
        raise InvalidArgument(f"{text!r} is ambiguous: {many} workflow ids start with it "
                              f"({shown}); give more of the id")
    return uuid.UUID(str(found[0]))


def event_rows(store: Store, workflow_id: uuid.UUID) -> list[StoredRow]:
    """Every event sent to the workflow, oldest first."""
    ev = events
    stmt = (select(*readable_columns(ev, store.is_sqlite)).where(ev.c.workflow_id == workflow_id)
            .order_by(ev.c.created_at, ev.c.id))
    return store.transaction(lambda conn: list(stored_rows(conn.execute(stmt), ev,
                                                           store.is_sqlite)))
