"""The grouped commit: several workflows' changes committed in one round trip and one
transaction, each row still fenced by its own version and lease token.

On servers a group is one statement per shape of change, all of them pipelined behind one Sync
(psycopg's pipeline mode: one round trip, one transaction, one WAL flush); a shape of one change
takes the plain commit's statement. The changes of one shape go as one statement: the rows'
values travel as one JSON array (``jsonb_array_elements``, as the children insert does: the
same SQL whatever the number of rows, and no arrays of JSON, which CockroachDB lacks), an
``UPDATE ... FROM`` compare-and-sets every row on its own ``(id, version, lease_token)``, and
the history insert takes the rows that matched. A row that does not match is left out alone:
its change reads as lost (None), the others commit. A finishing change fenced on "no cancel
request pending" that does not match goes on to `commit` by itself, which records a pending
request as superseded. On SQLite a group is one transaction of each change's statements.

When a group fails (an outage, a serialization failure past the retries, an error one
row's values caused), none of it happened or its outcome is unknown: each change is then
read back (its history row there: committed) and otherwise committed alone, with the usual
retries, so one bad row cannot fail the others and no result is lost to the grouping.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from uuid import UUID

from sqlalchemy import (
    ARRAY,
    Connection,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    column,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB

from .._records import Change, Committed
from .._schema import JSONData, history, workflows
from ..errors import StoreError
from ._fast import Send
from ._workflows import _RESEND, CancelPending, WorkflowStatements, _Shape, _shape

__all__ = ["GroupStatements", "groupable"]

log = logging.getLogger("statemachine.store")

w = workflows
h = history

# What one grouped commit gives back for a change: what `commit` would have returned, or the
# error it would have raised.
Outcome = Committed | None | StoreError


def groupable(change: Change) -> bool:
    """Whether `change` may be committed in a group: a row update and its history row (a
    finishing one too, fenced on no cancel request pending)."""
    return not change.expect_status and (change.simple or change.simple_but_cancel)


class GroupStatements(WorkflowStatements):
    """`commit_group`."""

    def commit_group(self, changes: Sequence[Change], *, retry_for: float = 0.0
                     ) -> list[Outcome]:
        """Commit `changes` (each `groupable`) together; for each, what `commit` would return
        for it alone, or the `StoreError` it would raise. A second change of one workflow (two
        threads that both think they hold it: one lease expired) is committed alone, after."""
        seen: set[UUID] = set()
        distinct: list[int] = []
        again: list[int] = []
        for n, c in enumerate(changes):
            (again if c.workflow_id in seen else distinct).append(n)
            seen.add(c.workflow_id)
        if again:
            out: list[Outcome] = [None] * len(changes)
            for n, o in zip(distinct, self.commit_group([changes[n] for n in distinct],
                                                        retry_for=retry_for), strict=True):
                out[n] = o
            for n in again:
                out[n] = self._alone(changes[n], retry_for)
            return out
        if len(changes) == 1:
            return [self._alone(changes[0], retry_for)]
        if self.is_sqlite:
            return self._group_sqlite(changes, retry_for)
        by_shape: dict[_Shape, list[Change]] = {}
        for c in changes:
            guarded = c.supersede_cancel and not c.clear_cancel
            by_shape.setdefault(_shape(c, no_cancel=guarded), []).append(c)
        try:
            # The usual retries only: a group still contended after them goes one by one,
            # each change then retrying for `retry_for` on its own.
            matched = self._db.run(partial(self._send_group, by_shape), reconnect=False)
        except StoreError as e:
            log.info("grouped commit of %d changes failed (%s): committing them one by one",
                     len(changes), e)
            return [self._settle_alone(c, retry_for) for c in changes]
        outcomes: dict[UUID, Outcome] = {}
        for shape, group in by_shape.items():
            for c in group:
                done: Outcome = matched.get(c.workflow_id)
                if done is None and shape.no_cancel:
                    done = self._alone(c, retry_for)  # a cancel pending, or lost: see `commit`
                outcomes[c.workflow_id] = done
        return [outcomes[c.workflow_id] for c in changes]

    # -- one by one ----------------------------------------------------------------------------

    def _alone(self, change: Change, retry_for: float) -> Outcome:
        try:
            return self.commit(change, retry_for=retry_for)
        except StoreError as e:
            return e

    def _settle_alone(self, change: Change, retry_for: float) -> Outcome:
        """After a grouped commit that failed: committed if its history row is there, else sent
        alone."""
        try:
            found = self._read_back(change)
        except StoreError as e:
            return e
        return self._alone(change, retry_for) if found is _RESEND else found

    # -- SQLite: one transaction ---------------------------------------------------------------

    def _group_sqlite(self, changes: Sequence[Change], retry_for: float) -> list[Outcome]:
        """SQLite has one writer: the changes go in one transaction (one write lock, one sync),
        each its own compare-and-set; a row that does not match writes nothing."""

        def run(conn: Connection) -> list[Outcome]:
            return [self.commit_in(conn, c) for c in changes]

        def run_fast(send: Send) -> list[Outcome]:
            return [self._send_plain_commit(c, send) for c in changes]

        fast = self._db.fast_path
        try:
            if fast is not None and fast.usable():
                try:
                    return self._db.run(lambda: fast.transaction(run_fast))
                except CancelPending:
                    pass  # rolled back: the transaction below records the request
            return self._db.run(lambda: self._db.attempt_transaction(run))
        except StoreError as e:
            log.info("grouped commit of %d changes failed (%s): committing them one by one",
                     len(changes), e)
            return [self._settle_alone(c, retry_for) for c in changes]

    # -- servers: one round trip ---------------------------------------------------------------

    def _send_group(self, by_shape: dict[_Shape, list[Change]]) -> dict[UUID, Committed]:
        """One attempt: the rows that matched, with what they committed. Each shape of change
        is one statement (the plain commit's for a shape of one change), and all of them go in
        one round trip and one transaction."""
        items: list[tuple[Any, Any, dict[str, Any]]] = []
        for shape, group in by_shape.items():
            if len(group) == 1:
                items.append((("commit", shape), self._commit_statement(shape),
                              self._change_params(group[0])))
                continue
            key = ("commit_group", shape)
            stmt = self._statements.get(key)
            if stmt is None:
                stmt = self._statements[key] = self._group_statement(shape)
            items.append((key, stmt, {"g_rows": [self._group_row(c) for c in group],
                                      "g_ids": [c.workflow_id for c in group],
                                      **self._now_value()}))
        fast = self._db.fast_path
        results: Sequence[Sequence[Any]]
        if fast is not None and fast.usable():
            results = (fast.execute_all(items) if len(items) > 1
                       else [fast.execute(*items[0], many=True)])
        else:
            results = self._db.attempt_transaction(
                lambda conn: [conn.execute(stmt, params).all() for _, stmt, params in items])
        matched: dict[UUID, Committed] = {}
        for group, rows in zip(by_shape.values(), results, strict=True):
            if len(group) == 1:
                if rows:
                    matched[group[0].workflow_id] = Committed(int(rows[0][0]), rows[0][1])
                continue
            for r in rows:
                matched[UUID(str(r[0]))] = Committed(int(r[1]), r[2])
        return matched

    def _group_row(self, c: Change) -> dict[str, Any]:
        """One change's values as JSON (read back by name in the statement)."""
        params = self._change_params(c)
        params.pop("p_expect", None)
        params.pop("p_now", None)
        return {k: _json_value(v) for k, v in params.items()}

    def _group_statement(self, shape: _Shape) -> Any:
        rows = func.jsonb_array_elements(bindparam("g_rows", type_=JSONB())).table_valued(
            column("value", JSONB())).alias("g")
        value = rows.c.value

        def val(name: str, type_: Any) -> Any:
            if type_ is JSONData:
                return value.op("->", return_type=JSONB())(literal(name, Text()))
            text = value[name].astext
            return text if isinstance(type_, Text) else cast(text, type_)

        upd, hist = self._change_statements(shape, val)
        # The ids again as an array: the planner then finds the rows by the primary key instead
        # of hashing the whole table against the JSON rows (it cannot see how few they are).
        # Read through a scalar subquery, so that PostgreSQL's planner sees no constant array
        # in a custom plan either: it then keeps the statement's generic plan instead of
        # planning it again on every call (about half a millisecond of server CPU per group).
        ids = ARRAY(w.c.id.type)
        upd = upd.where(w.c.id == any_(cast(
            select(bindparam("g_ids", type_=ids)).scalar_subquery(), ids)))
        u = upd.returning(w.c.id, w.c.version, w.c.cancel_requested).cte("u")
        i = insert(h).from_select(
            ["workflow_id", "version", *hist],
            select(u.c.id, u.c.version, *hist.values()).select_from(
                u.join(rows, val("p_id", w.c.id.type) == u.c.id)),
        ).returning(h.c.workflow_id, h.c.version).cte("i")
        return select(u.c.id, u.c.version, u.c.cancel_requested).select_from(
            u.join(i, and_(i.c.workflow_id == u.c.id, i.c.version == u.c.version)))


def _json_value(value: Any) -> Any:
    """A change's parameter as the JSON the grouped statement casts back."""
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return f"{value.total_seconds()} seconds"
    return value

