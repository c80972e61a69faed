"""Retention: deleting finished workflows with their history, events and children, one small
batch per transaction, while workers run (the reaper of PostgreSQL and SQLite; on CockroachDB
row-level TTL does the same by itself, see migrations/cockroachdb/0005_retention.sql)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, and_, bindparam, delete, or_, select

from .._schema import PURGEABLE_STATUSES, events, history, workflows
from ._base import StatementGroup

__all__ = ["PurgeBatch", "PurgeStatements"]

w = workflows
# Ids per IN list (SQLite allows 32766 variables; PostgreSQL 65535 parameters).
_CHUNK = 500


class PurgeBatch(NamedTuple):
    """What one batch did. `after`: where the next batch goes on from (the purge_after and id of
    the last workflow looked at); None when there was nothing left to look at. `kept`: workflows
    past their retention kept because a child of theirs still runs (or is parked)."""

    workflows: int
    history: int
    events: int
    kept: int
    after: tuple[datetime, uuid.UUID] | None


class PurgeStatements(StatementGroup):
    """The reaper's statements."""

    def purge_batch(self, older_than: float, batch_size: int,
                    after: tuple[datetime, uuid.UUID] | None = None) -> PurgeBatch:
        """Delete up to `batch_size` finished top-level workflows whose `purge_after` is more
        than `older_than` seconds ago (by the database's clock), each with its children (and
        theirs), and the history and events of them all, in one transaction. A tree with a
        member that is not finished for good (running, waiting, parked) is kept whole. Starts
        after `after` (what the previous batch returned), so kept trees are not looked at again
        by the same purge."""
        cutoff = self.later(-older_than)

        def run(conn: Connection) -> PurgeBatch:
            due = and_(w.c.purge_after.is_not(None), w.c.purge_after < cutoff,
                       w.c.parent_id.is_(None))
            if after is not None:
                due = and_(due, or_(w.c.purge_after > after[0],
                                    and_(w.c.purge_after == after[0], w.c.id > after[1])))
            roots = conn.execute(select(w.c.id, w.c.purge_after).where(due)
                                 .order_by(w.c.purge_after, w.c.id).limit(batch_size)).all()
            if not roots:
                return PurgeBatch(0, 0, 0, 0, None)
            trees = self._trees(conn, [r.id for r in roots])
            gone = [i for members in trees.values()
                    if all(status in PURGEABLE_STATUSES for status in members.values())
                    for i in members]
            counts = self._delete(conn, gone)
            kept = sum(1 for members in trees.values()
                       if not all(s in PURGEABLE_STATUSES for s in members.values()))
            return PurgeBatch(*counts, kept=kept, after=(roots[-1].purge_after, roots[-1].id))

        return self.transaction(run)

    def _trees(self, conn: Connection, roots: Sequence[uuid.UUID]
               ) -> dict[uuid.UUID, dict[uuid.UUID, str]]:
        """For each root, the status of every member of its tree (itself included), the rows
        locked (on servers) so that none changes before they are deleted."""
        trees: dict[uuid.UUID, dict[uuid.UUID, str]] = {r: {} for r in roots}
        root_of = {r: r for r in roots}
        level = list(roots)
        by_id = True
        while level:
            found: list[Any] = []
            for chunk in _chunks(level):
                column = w.c.id if by_id else w.c.parent_id
                stmt = select(w.c.id, w.c.parent_id, w.c.status).where(
                    column.in_(bindparam("p_ids", expanding=True)))
                if not self.is_sqlite:  # (SQLite: BEGIN IMMEDIATE holds the one write lock)
                    stmt = stmt.with_for_update()
                found += conn.execute(stmt, {"p_ids": chunk}).all()
            level = []
            for row in found:
                root = root_of[row.id] if by_id else root_of[row.parent_id]
                if row.id in trees[root]:
                    continue  # (a cycle written by hand)
                root_of[row.id] = root
                trees[root][row.id] = row.status
                level.append(row.id)
            by_id = False
        return trees

    def _delete(self, conn: Connection, ids: Sequence[uuid.UUID]) -> tuple[int, int, int]:
        counts = [0, 0, 0]
        ids_param: Any = bindparam("p_ids", expanding=True)
        for chunk in _chunks(ids):
            counts[2] += conn.execute(delete(events).where(events.c.workflow_id.in_(ids_param)),
                                      {"p_ids": chunk}).rowcount
            counts[1] += conn.execute(delete(history).where(history.c.workflow_id.in_(ids_param)),
                                      {"p_ids": chunk}).rowcount
            counts[0] += len(conn.execute(
                delete(w).where(w.c.id.in_(ids_param), w.c.status.in_(PURGEABLE_STATUSES))
                .returning(w.c.id), {"p_ids": chunk}).all())
        return counts[0], counts[1], counts[2]


def _chunks(ids: Sequence[uuid.UUID]) -> list[list[uuid.UUID]]:
    return [list(ids[i:i + _CHUNK]) for i in range(0, len(ids), _CHUNK)]
