"""Plain reads: workflows, their history, counts. Every row comes back as a `StoredRow`, decoded
one at a time, so a value written by hand that does not decode is shown, not fatal."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

from sqlalchemy import Connection, func, select

from .._schema import events as ev
from .._schema import history as h
from .._schema import workflows as w
from ._base import StatementGroup
from ._decode import StoredRow, readable_columns, stored_rows

__all__ = ["ReadStatements"]


class ReadStatements(StatementGroup):
    """get, list, scan, history, counts."""

    def _workflows(self) -> Any:
        return select(*readable_columns(w, self.is_sqlite))

    def _rows(self, stmt: Any, table: Any = w) -> list[StoredRow]:
        return self._single(partial(_decoded, stmt, table, self.is_sqlite))

    def get(self, workflow_id: uuid.UUID) -> StoredRow | None:
        """The workflow row, or None."""
        rows = self._rows(self._workflows().where(w.c.id == workflow_id))
        return rows[0] if rows else None

    def get_many(self, ids: Sequence[uuid.UUID]) -> list[StoredRow]:
        """The rows of these workflows (missing ones are left out)."""
        return self._rows(self._workflows().where(w.c.id.in_(ids)))

    def list_workflows(
        self,
        *,
        machine: str | None = None,
        status: str | None = None,
        state: str | None = None,
        limit: int = 100,
    ) -> list[StoredRow]:
        """Workflow rows, newest first, filtered by machine, status and state."""
        stmt = self._workflows().order_by(w.c.created_at.desc(), w.c.id).limit(limit)
        if machine:
            stmt = stmt.where(w.c.machine == machine)
        if status:
            stmt = stmt.where(w.c.status == status)
        if state:
            stmt = stmt.where(w.c.state == state)
        return self._rows(stmt)

    def scan(self, machines: Sequence[str], statuses: Sequence[str],
             batch: int = 500) -> Iterator[StoredRow]:
        """Every workflow row of `machines` in `statuses`, in batches (for checks over the whole
        table without holding a long transaction)."""
        after: uuid.UUID | None = None
        while True:
            stmt = (self._workflows().where(w.c.machine.in_(machines), w.c.status.in_(statuses))
                    .order_by(w.c.id).limit(batch))
            if after is not None:
                stmt = stmt.where(w.c.id > after)
            rows = self._rows(stmt)
            yield from rows
            if len(rows) < batch:
                return
            after = rows[-1].id

    def pending_events_of(self, machines: Sequence[str]) -> list[StoredRow]:
        """Pending events of workflows of `machines` (for checks)."""
        data = readable_columns(ev, self.is_sqlite)[list(ev.columns).index(ev.c.data)]
        stmt = (select(ev.c.id, ev.c.workflow_id, ev.c.type, data, w.c.machine)
                .join(w, w.c.id == ev.c.workflow_id)
                .where(ev.c.status == "pending", w.c.machine.in_(machines)))
        return self._rows(stmt, ev)

    def history(self, workflow_id: uuid.UUID) -> list[StoredRow]:
        """History rows of one workflow, oldest first."""
        stmt = (select(*readable_columns(h, self.is_sqlite))
                .where(h.c.workflow_id == workflow_id).order_by(h.c.version))
        return self._rows(stmt, h)

    def first_state(self, workflow_id: uuid.UUID, *,
                    conn: Connection | None = None) -> tuple[str, Any] | None:
        """The state name and data a workflow started with (its first history row), or None;
        in the caller's transaction when `conn` is given."""
        stmt = (select(*readable_columns(h, self.is_sqlite))
                .where(h.c.workflow_id == workflow_id, h.c.version == 1))
        rows = (_decoded(stmt, h, self.is_sqlite, conn) if conn is not None
                else self._rows(stmt, h))
        return (rows[0].to_state, rows[0].data) if rows else None

    def children_of(self, parent: uuid.UUID) -> list[StoredRow]:
        """The parent's child workflows, in the order they were started."""
        return self._rows(self._workflows().where(w.c.parent_id == parent)
                          .order_by(w.c.created_at, w.c.id))

    def due_counts(self, machines: Sequence[str]) -> dict[str, int]:
        """How many rows of each of `machines` are due now (what a claim could take: ready or
        waiting with wake_at in the past, or running with an expired lease)."""
        stmt = (select(w.c.machine, func.count())
                .where(w.c.machine.in_(machines),
                       w.c.status.in_(("ready", "running", "waiting")),
                       w.c.wake_at.is_not(None), w.c.wake_at <= self.now())
                .group_by(w.c.machine))
        return self._single(lambda c: {r[0]: int(r[1]) for r in c.execute(stmt)})

    def count_by_status(self, machine: str | None = None) -> dict[str, int]:
        """How many workflows are in each status."""
        stmt = select(w.c.status, func.count()).group_by(w.c.status)
        if machine:
            stmt = stmt.where(w.c.machine == machine)
        return self._single(lambda c: {r[0]: int(r[1]) for r in c.execute(stmt)})


def _decoded(stmt: Any, table: Any, is_sqlite: bool, conn: Connection) -> list[StoredRow]:
    return list(stored_rows(conn.execute(stmt), table, is_sqlite))
