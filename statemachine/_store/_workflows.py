"""Starting, claiming and committing workflows: the hot path."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, NamedTuple

from sqlalchemy import (
    ARRAY,
    BigInteger,
    ColumnElement,
    Connection,
    Integer,
    Interval,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    column,
    exists,
    func,
    insert,
    literal,
    literal_column,
    null,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import UnaryExpression

from .._records import Change, ChildStart, ClaimedRow, Committed
from .._schema import PURGEABLE_STATUSES, JSONData, UTCDateTime, history, workflows
from .._schema import events as ev
from ..errors import DatabaseUnavailable, StoreError
from ._base import StatementGroup, _headline
from ._decode import decode_value
from ._fast import Send, sqlalchemy_send

log = logging.getLogger("statemachine.store")

__all__ = ["CLAIM_BYTES", "WorkflowStatements"]

# A claim's result stays under this many bytes (CockroachDB retries a statement by itself only
# while its results fit its 16 KiB buffer, `sql.defaults.results_buffer.size`).
CLAIM_BYTES = 16 * 1024
# What a claimed row carries besides its data and names (ids, versions, flags), in bytes: an
# overestimate, so the cap holds.
_ROW_BYTES = 160

w = workflows
h = history


# What `_read_back` answers when the commit it looked for did not happen: send it again.
_RESEND: Any = object()


class CancelPending(Exception):
    """Rolls back a fast SQLite commit that found a cancel request to record."""


class WorkflowStatements(StatementGroup):
    """Start, claim, renew, release, commit."""

    # -- starting ----------------------------------------------------------------------------

    def insert_workflow(
        self,
        *,
        machine: str,
        state: str,
        data: Any,
        key: str | None = None,
        parent_id: uuid.UUID | None = None,
        wake_after: float = 0.0,
    ) -> tuple[uuid.UUID, bool]:
        """Insert a new workflow and its first history row; returns (id, created). With a `key`
        already used for this machine, returns the existing workflow's id and ``created=False``.
        One statement on servers (both inserts in a CTE). The id is made here, so a start
        repeated after a lost connection finds the row it wrote instead of a second one."""
        if self.is_sqlite:
            return self.transaction(lambda conn: self.insert_workflow_in(
                conn, machine=machine, state=state, data=data, key=key, parent_id=parent_id,
                wake_after=wake_after))
        stmt = self._statements.get("start")
        if stmt is None:
            stmt = self._statements["start"] = self._start_statement()
        new_id = uuid.uuid4()
        params = {"p_id": new_id, "p_machine": machine, "p_state": state, "p_data": data,
                  "p_key": key, "p_parent": parent_id, "p_wake": self._later_value(wake_after),
                  "h_cause": f"key={key}" if key else None, **self._now_value()}
        if self._db.fast_ok():  # compiled once: SQLAlchemy cannot cache this statement
            # (an application's threads start workflows: none keeps a connection for it)
            inserted = self._db.fast(("start",), stmt, params, hold=False)
        else:
            inserted = self._single(lambda conn: conn.execute(stmt, params).first())
        if inserted is not None:
            return new_id, True
        # Nothing inserted: this very start already went through (its answer was lost with a
        # connection), or another start took the key.
        mine = select(w.c.id).where(w.c.id == new_id)
        if self._single(lambda conn: conn.execute(mine).first()) is not None:
            return new_id, True
        existing = select(w.c.id).where(w.c.machine == machine, w.c.key == key)
        found = self._single(lambda conn: conn.execute(existing).scalar_one_or_none())
        if found is None:
            raise StoreError(f"could not start a {machine} workflow: its insert conflicted with "
                             f"no row this store can find", sqlstate="23505")
        return found, False

    def _start_statement(self) -> Any:
        now = self._now_param()
        new = pg_insert(w).values(
            id=bindparam("p_id", type_=w.c.id.type), machine=bindparam("p_machine", type_=Text()),
            state=bindparam("p_state", type_=Text()), data=bindparam("p_data", type_=JSONData),
            status="ready", version=1, entered_version=1, attempt=0,
            wake_at=self._later_param("p_wake"), key=bindparam("p_key", type_=Text()),
            parent_id=bindparam("p_parent", type_=w.c.parent_id.type), created_at=now,
            updated_at=now,
        ).on_conflict_do_nothing().returning(w.c.id, w.c.state, w.c.data).cte("new")
        first = insert(h).from_select(
            ["workflow_id", "version", "kind", "to_state", "data", "status", "attempt", "cause",
             "finished_at"],
            select(new.c.id, literal(1, BigInteger()), literal("start", Text()), new.c.state,
                   new.c.data, literal("ready", Text()), literal(0, Integer()),
                   bindparam("h_cause", type_=Text()), now),
        ).returning(h.c.workflow_id).cte("first")
        return select(first.c.workflow_id)

    def insert_workflow_in(
        self, conn: Connection, *, machine: str, state: str, data: Any, key: str | None = None,
        parent_id: uuid.UUID | None = None, wake_after: float = 0.0, cause: str | None = None,
    ) -> tuple[uuid.UUID, bool]:
        """`insert_workflow` inside the caller's transaction."""
        new_id = uuid.uuid4()
        now = self.now()
        values = dict(
            id=new_id, machine=machine, state=state, data=data, status="ready", version=1,
            entered_version=1, attempt=0, wake_at=self.later(wake_after), key=key,
            parent_id=parent_id, created_at=now, updated_at=now,
        )
        if key is None:
            conn.execute(insert(w).values(**values))
        else:
            ins = (pg_insert(w) if not self.is_sqlite else sqlite_insert(w)).values(**values)
            ins = ins.on_conflict_do_nothing(
                index_elements=[w.c.machine, w.c.key], index_where=w.c.key.is_not(None))
            if conn.execute(ins.returning(w.c.id)).first() is None:
                existing = conn.execute(
                    select(w.c.id).where(w.c.machine == machine, w.c.key == key)).scalar_one()
                return existing, False
        conn.execute(insert(h).values(
            workflow_id=new_id, version=1, kind="start", from_state=None, to_state=state,
            data=data, status="ready", attempt=0, finished_at=now,
            cause=cause or (f"key={key}" if key else None)))
        return new_id, True

    def insert_workflows(self, machine: str, rows: Sequence[tuple[str, Any]]) -> list[uuid.UUID]:
        """Start many workflows of one machine in one transaction (no keys); returns their ids."""
        ids = [uuid.uuid4() for _ in rows]

        def run(conn: Connection) -> list[uuid.UUID]:
            # Repeated after a connection lost during its COMMIT: the rows may be there already.
            if conn.execute(select(w.c.id).where(w.c.id == ids[0])).first() is not None:
                return ids
            now = self.current_time() if self.server_clock else self.clock.now()
            conn.execute(insert(w), [
                dict(id=i, machine=machine, state=s, data=d, status="ready", version=1,
                     entered_version=1, attempt=0, wake_at=now, key=None, parent_id=None,
                     created_at=now, updated_at=now)
                for i, (s, d) in zip(ids, rows, strict=True)])
            conn.execute(insert(h), [
                dict(workflow_id=i, version=1, kind="start", from_state=None, to_state=s, data=d,
                     status="ready", attempt=0, finished_at=now)
                for i, (s, d) in zip(ids, rows, strict=True)])
            return ids

        return self.transaction(run)

    # -- claiming ----------------------------------------------------------------------------

    def claim(
        self, *, owner: str, machines: Sequence[str], limit: int, lease: float,
        since: datetime | None = None, max_bytes: int = CLAIM_BYTES,
    ) -> list[ClaimedRow]:
        """Take up to `limit` due workflows of `machines` (ready and due, or running with an
        expired lease) and lease them to `owner` for `lease` seconds; attempt is counted up.

        `since`: scan the due index from this time only (``wake_at >= since``), the low-water
        mark a worker keeps so the claim does not walk the dead index entries left below it
        (see `statemachine._claimmark`); None scans the whole due range (a full sweep).
        `max_bytes`: the batch stops before the rows' data and names pass this many bytes
        (the first row is always taken), so a claim's result stays under CockroachDB's 16 KiB
        automatic-retry buffer. Each row's `due_at` is its `wake_at` before the claim."""
        if limit <= 0 or not machines:
            return []
        token = uuid.uuid4().hex
        params: dict[str, Any] = {
            "p_machines": list(machines), "p_limit": limit, "p_token": token, "p_owner": owner,
            "p_lease": self._later_value(lease), "p_bytes": max_bytes, **self._now_value()}
        bounded = since is not None
        if bounded:
            params["p_since"] = since
        key = ("claim", bounded)
        stmts = self._statements.get(key)
        if stmts is None:
            stmts = self._statements[key] = self._claim_statements(bounded)
        if self.is_sqlite:
            pick, lease_them = stmts
            params["p_machines"] = json.dumps(params["p_machines"])

            def pick_and_lease(send: Send) -> list[Any]:
                picked = send((key, "pick"), pick, params, many=True, decode=True)
                rows = _within_bytes(picked, max_bytes)
                if rows:
                    send((key, "lease"), lease_them, {**params, "p_ids": _id_list(rows)})
                return rows

            fast = self._db.fast_path
            if fast is not None and fast.usable():
                picked = self._db.run(lambda: fast.transaction(pick_and_lease))
            else:
                picked = self.transaction(lambda conn: pick_and_lease(sqlalchemy_send(conn)))
            return [_claimed_sqlite(r, token) for r in picked]

        def claimed(r: Any) -> ClaimedRow:
            (wid, machine, state, data, version, entered, attempt, status, due_at, rec, parent,
             cancel, doubt) = r
            return ClaimedRow(id=wid, machine=machine, state=state, data=data, version=version,
                              entered_version=entered, attempt=attempt, lease_token=token,
                              previous_status=status, external_change=not rec, parent_id=parent,
                              cancel_requested=cancel, in_doubt=doubt,
                              due_at=_aware(due_at))

        if self._db.fast_ok():
            return [claimed(r) for r in self._db.fast(key, stmts, params, many=True)]
        return self._single(lambda conn: [claimed(r) for r in conn.execute(stmts, params)])

    def _claim_statements(self, bounded: bool) -> Any:
        """The claim, built once per kind (bounded below by ``p_since`` or not): one UPDATE over
        a locked, size-capped subquery on servers; a SELECT and an UPDATE (under SQLite's write
        lock) on SQLite, which caps the batch in Python."""
        now = self._now_param()
        recorded = exists().where(h.c.workflow_id == w.c.id, h.c.version == w.c.version)
        runnable = ("ready", "running", "waiting")
        if self.is_sqlite:
            # Lists as JSON text, not expanding INs: the SQL is the same whatever the lists, so
            # the fast path sends it as compiled once. Machine and status are filters, not index
            # keys: given them, SQLite's planner looked rows up by (machine, status) and sorted
            # every due row to return the first few (440 µs a claim with 3,000 due, growing with
            # the backlog), where the due index read in order stops at the limit (8 µs).
            of_machines: ColumnElement[bool] = _not_indexed(w.c.machine).in_(
                _json_list("p_machines"))
            is_runnable: ColumnElement[bool] = _not_indexed(w.c.status).in_(
                [literal_column(f"'{s}'") for s in runnable])
        else:  # arrays, not expanding INs: the SQL is the same whatever the lists (compiled once)
            of_machines = w.c.machine == any_(bindparam("p_machines", type_=ARRAY(Text())))
            is_runnable = w.c.status == any_(literal(list(runnable), ARRAY(Text())))
        due = and_(w.c.wake_at.is_not(None), w.c.wake_at <= now, is_runnable, of_machines)
        if bounded:  # the range scan starts at the mark: the index entries below are not read
            due = and_(w.c.wake_at >= bindparam("p_since", type_=UTCDateTime()), due)
        lease_values = dict(
            status="running", lease_token=bindparam("p_token", type_=Text()),
            lease_owner=bindparam("p_owner", type_=Text()), wake_at=self._later_param("p_lease"),
            attempt=w.c.attempt + 1, updated_at=now)
        # SQLite checks no JSON: its rows' data is read as text and decoded row by row.
        data = type_coerce(w.c.data, Text()).label("data") if self.is_sqlite else w.c.data
        columns = (w.c.id, w.c.machine, w.c.state, data, w.c.version, w.c.entered_version,
                   w.c.attempt)
        extra = (recorded.label("rec"), w.c.parent_id, w.c.cancel_requested, w.c.in_doubt)
        limit = bindparam("p_limit", type_=Integer())
        if self.is_sqlite:
            # (as text: a time written by hand must not fail the claim of every row)
            due_at = type_coerce(w.c.wake_at, Text()).label("due_at")
            pick = (select(*columns, w.c.status, due_at, *extra).where(due)
                    .order_by(w.c.wake_at).limit(limit))
            lease_them = update(w).where(w.c.id.in_(_json_list("p_ids"))).values(**lease_values)
            return pick, lease_them
        # What a row adds to the result: its data as text, its names, and the fixed columns.
        size = (func.octet_length(cast(w.c.data, Text())) + func.octet_length(w.c.state)
                + func.octet_length(w.c.machine) + _ROW_BYTES)
        locked = (select(w.c.id, w.c.status, w.c.wake_at.label("due_at"), size.label("size"))
                  .where(due).order_by(w.c.wake_at).limit(limit)
                  .with_for_update(skip_locked=True).subquery("locked"))
        picked = select(
            locked.c.id, locked.c.status, locked.c.due_at, locked.c.size,
            func.sum(locked.c.size).over(order_by=(locked.c.due_at, locked.c.id)).label("upto"),
        ).subquery("picked")
        fits = or_(picked.c.upto <= bindparam("p_bytes", type_=Integer()),
                   picked.c.upto == picked.c.size)  # the first row, whatever its size
        return (update(w).where(w.c.id == picked.c.id, fits).values(**lease_values)
                .returning(*columns, picked.c.status, picked.c.due_at, *extra))

    def renew_leases(self, ids: Sequence[uuid.UUID], token: str, lease: float) -> set[uuid.UUID]:
        """Push the lease expiry of rows this worker still holds; returns the ids still held."""
        if not ids:
            return set()
        stmt = (update(w).where(w.c.id.in_(ids), w.c.lease_token == token, w.c.status == "running")
                .values(wake_at=self.later(lease)).returning(w.c.id))
        return self._single(lambda c: {r.id for r in c.execute(stmt)})

    def release(self, ids: Sequence[uuid.UUID], token: str) -> int:
        """Give rows back (shutdown): due at once, for any worker; attempt not counted."""
        if not ids:
            return 0
        stmt = (update(w).where(w.c.id.in_(ids), w.c.lease_token == token, w.c.status == "running")
                .values(status="ready", wake_at=self.now(), lease_token=None, lease_owner=None,
                        attempt=w.c.attempt - 1, updated_at=self.now())
                .returning(w.c.id))
        return self._single(lambda c: len(c.execute(stmt).all()))

    def poll_again(self, row: ClaimedRow, after: float) -> bool:
        """A polling step's condition did not hold yet: due again in `after` seconds, lease
        given back, `polls` counted up, attempt back to 0 (each poll has its own retries). No
        history row and no new version: the compare-and-set on (id, version, lease_token) fences
        it as it fences a commit. False when the row no longer matches (lease lost, or changed
        by an operator). A cancel requested meanwhile makes the row due at once."""
        now = self.now()
        stmt = (update(w).where(w.c.id == row.id, w.c.version == row.version,
                                w.c.lease_token == row.lease_token, w.c.status == "running")
                .values(status="ready", lease_token=None, lease_owner=None, attempt=0,
                        polls=w.c.polls + 1, updated_at=now,
                        wake_at=case((w.c.cancel_requested.is_not(None), now),
                                     else_=self.later(after)))
                .returning(w.c.id))
        return self._single(lambda c: c.execute(stmt).first()) is not None

    # -- writing changes -------------------------------------------------------------------------

    def commit(self, change: Change, *, retry_for: float = 0.0) -> Committed | None:
        """Compare-and-set the row and append its history row atomically; returns the new
        version and a cancellation request that arrived meanwhile, or None when the row no
        longer matches (lease lost, or changed by an operator). A plain change is one statement
        on servers; one with events, children or a parent is one transaction.

        When the outcome is unknown (CockroachDB's 40003, or the connection lost under the
        write) the history row it would have written is read back: there, the commit happened;
        not there, it is sent again on a fresh connection (the compare-and-set decides), so a
        handler's result is kept whenever it can be.

        `retry_for`: under heavy contention, keep trying past the usual retries for this many
        seconds (a worker passes part of its lease: the handler has acted, and giving up means
        running it again after the lease expires)."""
        for _ in range(self._db.max_retries + 1):
            done = self._db.run(lambda: self._send_commit(change), reconnect=False,
                                settle=lambda: self._read_back(change), retry_for=retry_for)
            if done is not _RESEND:
                return done  # type: ignore[no-any-return]
            log.info("workflow %s: commit at version %d did not happen; sending it again",
                     change.workflow_id, change.version)
        raise DatabaseUnavailable(
            f"workflow {change.workflow_id}: the commit's outcome stayed unknown after "
            f"{self._db.max_retries + 1} tries", sqlstate="40003",
            workflow_id=change.workflow_id, state=change.from_state)

    def _read_back(self, change: Change) -> Any:
        """After a commit whose outcome is unknown: it happened if the history row it would
        have written is there, with this worker and kind (a `Committed`); `_RESEND` if not."""
        stmt = select(h.c.kind, h.c.worker).where(
            h.c.workflow_id == change.workflow_id, h.c.version == change.version + 1)
        row = self._single(lambda conn: conn.execute(stmt).first())
        if row is not None and row.kind == change.kind and row.worker == change.worker:
            return Committed(change.version + 1, None)
        return _RESEND

    def _send_commit(self, change: Change) -> Committed | None:
        """One attempt at `commit` (no retry): the retry loop classifies what it raises."""
        # A finishing change that would record a cancel request as superseded is sent as one
        # statement fenced on "no cancel request pending"; only when that fence (or the lease)
        # fails does it take the transaction that records the request (see `commit_in`).
        guarded = change.supersede_cancel and not change.clear_cancel and change.simple_but_cancel
        if self.is_sqlite and (change.simple or guarded) and not change.expect_status \
                and self._db.fast_ok():
            done = self._commit_sqlite_fast(change)
            if done is not _RESEND:
                return done  # type: ignore[no-any-return]
        if self.is_sqlite or not (change.simple or guarded):
            return self._db.attempt_transaction(lambda conn: self.commit_in(conn, change))
        shape = _shape(change, no_cancel=guarded)
        stmt = self._commit_statement(shape)
        params = self._change_params(change)
        fast = self._db.fast_path
        if fast is not None and fast.usable() and not change.expect_status:
            # (an expanding IN needs SQLAlchemy)
            row = fast.execute(("commit", shape), stmt, params)
        else:
            row = self._db.attempt_single(lambda conn: conn.execute(stmt, params).first())
        if row is None and guarded:
            return self._db.attempt_transaction(lambda conn: self.commit_in(conn, change))
        return None if row is None else Committed(int(row[0]), row[1])

    def _commit_statement(self, shape: _Shape) -> Any:
        """A plain change's one statement on servers (built once per shape): the
        compare-and-set and its history row; it returns the new version and the cancel request
        pending, or no row."""
        stmt = self._statements.get(("commit", shape))
        if stmt is None:
            upd, hist = self._change_statements(shape)
            u = upd.returning(w.c.id, w.c.version, w.c.cancel_requested).cte("u")
            i = insert(h).from_select(
                ["workflow_id", "version", *hist], select(u.c.id, u.c.version, *hist.values()),
            ).returning(h.c.version).cte("i")
            stmt = select(u.c.version, u.c.cancel_requested).select_from(
                u.join(i, i.c.version == u.c.version))
            self._statements[("commit", shape)] = stmt
        return stmt

    def _commit_sqlite_fast(self, change: Change) -> Any:
        """`commit_in`'s two statements in one transaction on the fast path (SQLite); `_RESEND`
        when a cancel request is pending (nothing is written: the caller takes `commit_in`,
        which records it)."""
        assert self._db.fast_path is not None
        try:
            return self._db.fast_path.transaction(partial(self._send_plain_commit, change))
        except CancelPending:
            return _RESEND

    def _send_plain_commit(self, change: Change, send: Send) -> Committed | None:
        """A simple change's compare-and-set and history row, sent inside a fast transaction;
        raises `CancelPending` (to roll it back) when a cancel request waits to be recorded."""
        shape = _shape(change)
        update_row, insert_history = self._commit_in_statements(shape)
        params = self._change_params(change)
        row = send(("commit_in", shape), update_row, params)
        if row is None:
            return None
        if row[1] is not None:
            raise CancelPending
        send(("commit_in_history", shape), insert_history, {**params, "h_version": row[0]})
        return Committed(int(row[0]), None)

    def _commit_in_statements(self, shape: _Shape) -> tuple[Any, Any]:
        """The compare-and-set UPDATE (returning the new version and any cancel request) and the
        history INSERT of one shape of change, built once."""
        stmts = self._statements.get(("commit_in", shape))
        if stmts is None:
            upd, hist = self._change_statements(shape)
            stmts = (upd.returning(w.c.version, w.c.cancel_requested),
                     insert(h).values(workflow_id=bindparam("p_id", type_=h.c.workflow_id.type),
                                      version=bindparam("h_version", type_=BigInteger()),
                                      **hist))
            self._statements[("commit_in", shape)] = stmts
        return stmts

    def commit_in(self, conn: Connection, change: Change) -> Committed | None:
        """`commit` inside the caller's transaction."""
        c = change
        stmts = self._commit_in_statements(_shape(c))
        params = self._change_params(c)
        row = conn.execute(stmts[0], params).first()
        if row is None:
            return None
        version = int(row.version)
        conn.execute(stmts[1], {**params, "h_version": version})
        if c.consume_event is not None:
            consumed = conn.execute(
                update(ev).where(ev.c.id == c.consume_event, ev.c.status == "pending")
                .values(status="consumed", consumed_at=self.now(), consumed_version=version)
                .returning(ev.c.id)).first()
            if consumed is None:
                # Rolls back. Another transaction won the race for the event: a conflict, as a
                # serialization failure is (the workflow runs again; nothing is parked for it).
                raise StoreError(f"event {c.consume_event} was consumed twice", sqlstate="40001",
                                 workflow_id=c.workflow_id, state=c.from_state)
        if c.close_inbox:
            self._close_inbox(conn, c)
        if c.children:
            self._insert_children(conn, c.workflow_id, c.children)
        if c.wake_parent is not None:
            self._wake(conn, [c.wake_parent])
        if c.cancel_children is not None:
            self._cancel_children(conn, c.workflow_id, c.cancel_children)
        if c.supersede_cancel and not c.clear_cancel and row.cancel_requested is not None:
            # Asked for while the handler ran, and the workflow finished first: say so in the
            # same transaction (a crash cannot leave the request without a history row).
            note = Change.cancel_superseded(c, version, row.cancel_requested, worker=c.worker)
            recorded = self.commit_in(conn, note)
            if recorded is None:  # the row is ours in this transaction: it cannot have moved
                raise StoreError(f"workflow {c.workflow_id}: changed within its own commit",
                                 workflow_id=c.workflow_id, state=c.to_state)
            return Committed(recorded.version, None)
        return Committed(version, None if c.clear_cancel else row.cancel_requested)

    def _close_inbox(self, conn: Connection, c: Change) -> None:
        """Reject the events still pending for a workflow that ends with `c` (see
        `Change.close_inbox`)."""
        reason = (f"workflow ended {c.status} in state {c.to_state} before any state accepted "
                  "this event")
        conn.execute(update(ev).where(ev.c.workflow_id == c.workflow_id, ev.c.status == "pending")
                     .values(status="rejected", error=reason, consumed_at=self.now(),
                             noticed=True))

    def _change_statements(self, shape: _Shape, val: _Value | None = None
                           ) -> tuple[Any, dict[str, Any]]:
        """The compare-and-set UPDATE and the history values for one shape of change, with a
        bind parameter for every value (built once per shape, then reused). `val(name, type)`
        gives the SQL of each value instead (the grouped commit reads them from its rows)."""
        val = val or _bind

        def later(name: str) -> Any:
            if self.server_clock:
                return func.now() + val(name, Interval())
            return val(name, UTCDateTime())

        (has_token, expect_status, keep_lease, wake, attempt_rule, new_state, clear_cancel,
         doubt, keep_data, count_poll, finishes, no_cancel) = shape
        conds = [w.c.id == val("p_id", w.c.id.type),
                 w.c.version == val("p_version", BigInteger())]
        if no_cancel:
            conds.append(w.c.cancel_requested.is_(None))
        if has_token:
            conds.append(w.c.lease_token == val("p_token", Text()))
        if expect_status:
            conds.append(w.c.status.in_(bindparam("p_expect", expanding=True)))
        now = self._now_param()
        values: dict[str, Any] = dict(
            state=val("p_state", Text()), data=val("p_data", JSONData),
            status=val("p_status", Text()), version=w.c.version + 1,
            updated_at=now, last_error=val("p_last_error", Text()))
        if keep_data:  # the stored data did not decode: parked as it is, for a person to read
            del values["data"]
        if keep_lease:
            # The lease is pushed only when less than half of it is left: `wake_at` is the due
            # index's key, and leaving it as it is keeps a sticky transition off the index (on
            # PostgreSQL the update can then be HOT). The heartbeat renews a held lease before
            # half of it has passed, so what is left never falls below half a lease.
            values.update(status="running", wake_at=case(
                (w.c.wake_at >= later("p_keep"), w.c.wake_at),
                else_=later("p_wake")))
            if new_state:  # a new state starts its first attempt; otherwise the count goes on
                values["attempt"] = 1
        else:
            wake_at: Any = {"none": None, "at": val("p_wake_at", UTCDateTime()),
                             "after": later("p_wake")}[wake]
            if wake_at is not None and not clear_cancel:
                # A cancel asked for while the handler ran is carried out now, not after a timer.
                wake_at = case((w.c.cancel_requested.is_not(None), now), else_=wake_at)
            values.update(lease_token=None, lease_owner=None, wake_at=wake_at)
            if attempt_rule == "reset":
                values["attempt"] = 0
            elif attempt_rule == "uncount":
                values["attempt"] = w.c.attempt - 1
        if new_state:
            values["entered_version"] = w.c.version + 1
            values["polls"] = 0
        elif count_poll:
            values["polls"] = w.c.polls + 1
        if clear_cancel:
            values["cancel_requested"] = None
        if doubt:
            values["in_doubt"] = val("p_in_doubt", Text())
        # Retention counts from the moment a workflow finished for good (see _schema.py).
        values["purge_after"] = now if finishes else None
        hist = dict(
            kind=val("h_kind", Text()), from_state=val("h_from", Text()),
            to_state=val("p_state", Text()), data=val("p_data", JSONData),
            status=val("h_status", Text()), cause=val("h_cause", Text()),
            attempt=val("h_attempt", Integer()),
            error=val("h_error", Text()), worker=val("h_worker", Text()),
            started_at=val("h_started", UTCDateTime()), finished_at=now)
        return update(w).where(*conds).values(**values), hist

    def _change_params(self, c: Change) -> dict[str, Any]:
        """The values of `c` for the statement of its shape."""
        error, doubt = c.error, c.mark_in_doubt
        seconds = (c.keep_lease if c.keep_lease is not None else c.wake_after) or 0.0
        later = self._later_value
        params: dict[str, Any] = {
            "p_id": c.workflow_id, "p_version": c.version, "p_token": c.lease_token,
            "p_expect": list(c.expect_status), "p_state": c.to_state, "p_data": c.data,
            "p_status": c.status,
            "p_last_error": None if error is None else self._redact(_headline(error)),
            "p_wake_at": c.wake_at,
            "p_in_doubt": None if doubt is None else self._redact(doubt), "h_kind": c.kind,
            "h_from": c.from_state, "h_status": c.status, "h_cause": c.cause,
            "h_attempt": c.attempt, "h_error": None if error is None else self._redact(error),
            "h_worker": c.worker, "h_started": c.started_at,
            "p_wake": later(seconds), "p_keep": later(seconds / 2)}
        if not self.server_clock:
            params.update(self._now_value())
        return params

    def _insert_children(self, conn: Connection, parent: uuid.UUID,
                         children: Sequence[ChildStart]) -> None:
        """Insert the children of one transition and their first history rows: two statements
        whatever their number (on servers each an INSERT ... SELECT over one JSON array of the
        children; on SQLite one prepared statement run for each row, in process). Start order is
        queue order: the n-th child's `created_at` is n microseconds after the first's."""
        if not children:
            return
        if self.is_sqlite:
            self._insert_children_sqlite(conn, parent, children)
            return
        stmts = self._statements.get("children")
        if stmts is None:
            stmts = self._statements["children"] = self._children_statements()
        params = {"p_parent": parent, "p_cause": f"child of {parent}", **self._now_value(),
                  "p_children": [
                      {"id": str(c.id), "machine": c.machine, "state": c.state, "data": c.data,
                       "key": c.key, "queued": c.queued, "n": n}
                      for n, c in enumerate(children)]}
        conn.execute(stmts[0], params)
        conn.execute(stmts[1], params)

    def _children_statements(self) -> tuple[Any, Any]:
        """The two children statements on servers, built once."""
        now = self._now_param()
        kids = func.jsonb_array_elements(bindparam("p_children", type_=JSONB())).table_valued(
            column("value", JSONB())).alias("c")
        v = kids.c.value
        # `->`, not a subscript (which PostgreSQL spells `value['data']` since 14 only)
        data = v.op("->", return_type=JSONB())(literal("data", Text()))
        child_id = cast(v["id"].astext, w.c.id.type)
        queued = v["queued"].astext == "true"
        offset = type_coerce(cast(v["n"].astext, Integer()), Interval()) * literal(
            timedelta(microseconds=1), Interval())
        rows = select(
            child_id, v["machine"].astext, v["state"].astext, data, literal("ready", Text()),
            literal(1, BigInteger()), literal(1, BigInteger()), literal(0, Integer()),
            case((queued, null()), else_=now), v["key"].astext,
            bindparam("p_parent", type_=w.c.parent_id.type), now + offset, now,
        ).select_from(kids)
        workflows_in = insert(w).from_select(
            ["id", "machine", "state", "data", "status", "version", "entered_version", "attempt",
             "wake_at", "key", "parent_id", "created_at", "updated_at"], rows)
        first = select(
            child_id, literal(1, BigInteger()), literal("start", Text()), v["state"].astext,
            data, literal("ready", Text()), literal(0, Integer()),
            bindparam("p_cause", type_=Text()), now,
        ).select_from(kids)
        history_in = insert(h).from_select(
            ["workflow_id", "version", "kind", "to_state", "data", "status", "attempt", "cause",
             "finished_at"], first)
        return workflows_in, history_in

    def _insert_children_sqlite(self, conn: Connection, parent: uuid.UUID,
                                children: Sequence[ChildStart]) -> None:
        now = self.clock.now()
        conn.execute(insert(w), [
            dict(id=c.id, machine=c.machine, state=c.state, data=c.data, status="ready",
                 version=1, entered_version=1, attempt=0, wake_at=None if c.queued else now,
                 key=c.key, parent_id=parent, created_at=now + timedelta(microseconds=n),
                 updated_at=now)
            for n, c in enumerate(children)])
        conn.execute(insert(h), [
            dict(workflow_id=c.id, version=1, kind="start", from_state=None, to_state=c.state,
                 data=c.data, status="ready", attempt=0, cause=f"child of {parent}",
                 error=None, worker=None, started_at=None, finished_at=now)
            for c in children])

    def _wake(self, conn: Connection, ids: Sequence[uuid.UUID]) -> None:
        """Make waiting workflows due now. Touching the row even when it is not waiting takes its
        lock, so a worker settling it concurrently sees the news (see `settle_waiting`)."""
        conn.execute(update(w).where(w.c.id.in_(ids)).values(
            wake_at=case((w.c.status == "waiting", self.now()), else_=w.c.wake_at)))

    def _cancel_children(self, conn: Connection, parent: uuid.UUID, reason: str) -> None:
        conn.execute(update(w).where(
            w.c.parent_id == parent, w.c.status.in_(("ready", "running", "waiting")),
            w.c.cancel_requested.is_(None),
        ).values(cancel_requested=reason, wake_at=case(
            (w.c.status.in_(("ready", "waiting")), self.now()), else_=w.c.wake_at)))


_Value = Callable[[str, Any], Any]


def _bind(name: str, type_: Any) -> Any:
    """A change's value as a bind parameter of its own (one row's commit)."""
    return bindparam(name, type_=type_)


class _Shape(NamedTuple):
    """What distinguishes the SQL of one change from another's (the values aside)."""

    has_token: bool
    expect_status: bool
    keep_lease: bool
    wake: str  # "lease", "at", "after" or "none"
    attempt_rule: str  # "reset", "uncount" or "keep"
    new_state: bool
    clear_cancel: bool
    doubt: bool  # the statement sets in_doubt (to a mark, or NULL to clear it)
    # `data` None: leave the row's data as stored (a row whose data does not decode is parked
    # without losing it; its history row records JSON null).
    keep_data: bool
    count_poll: bool = False
    finishes: bool = False  # the change ends the workflow for good (done, cancelled): purge_after
    # Fenced on no cancel request pending (a finishing change's one-statement commit).
    no_cancel: bool = False


def _shape(c: Change, *, no_cancel: bool = False) -> _Shape:
    """The shape of `c`'s statement (`no_cancel`: fenced on no cancel request pending)."""
    if c.keep_lease is not None:
        wake = "lease"
    else:
        wake = "at" if c.wake_at is not None else ("none" if c.wake_after is None else "after")
    if c.new_state or c.reset_attempts:
        attempt_rule = "reset"
    else:
        attempt_rule = "uncount" if c.uncount_attempt else "keep"
    return _Shape(
        has_token=c.lease_token is not None, expect_status=bool(c.expect_status),
        keep_lease=c.keep_lease is not None, wake=wake, attempt_rule=attempt_rule,
        new_state=c.new_state, clear_cancel=c.clear_cancel,
        doubt=c.mark_in_doubt is not None or c.clear_in_doubt or c.new_state,
        keep_data=c.data is None, count_poll=c.count_poll,
        finishes=c.status in PURGEABLE_STATUSES, no_cancel=no_cancel)


def _aware(value: datetime | None) -> datetime | None:
    """A time read from a raw driver row as an aware UTC datetime."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json_list(name: str) -> Any:
    """``SELECT value FROM json_each(:name)``: the items of a JSON array parameter (SQLite)."""
    return select(column("value")).select_from(func.json_each(bindparam(name, type_=Text())))


def _id_list(rows: Sequence[Any]) -> str:
    """The ids of `rows` as a JSON array of SQLite's stored (dashed text) form."""
    return json.dumps([str(r[0]) for r in rows])


def _within_bytes(rows: Sequence[Any], max_bytes: int) -> list[Any]:
    """The first of `rows` (SQLite's picked rows) whose data and names fit in `max_bytes`, the
    way the server claim caps its batch; the first row is always taken."""
    kept: list[Any] = []
    total = 0
    for r in rows:  # (id, machine, state, data, ...): the pick's columns
        total += len(str(r[3]).encode()) + len(r[2].encode()) + len(r[1].encode()) + _ROW_BYTES
        if kept and total > max_bytes:
            break
        kept.append(r)
    return kept


def _not_indexed(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """``+column``: the same value, but SQLite's planner no longer uses the term to pick an index
    (its documented way to steer a plan; a no-op everywhere else in SQL)."""
    return UnaryExpression(column, operator=operators.custom_op("+"), type_=column.type)


def _claimed_sqlite(r: Any, token: str) -> ClaimedRow:
    """A claimed SQLite row (the pick's columns, in order), its data decoded here: a value that
    does not decode (written by hand) becomes the row's `data_error`, for the engine to park it
    with, instead of failing the claim of every row."""
    (wid, machine, state, raw_data, version, entered, raw_attempt, status, due_at, rec, parent,
     cancel, doubt) = r
    data, data_error = decode_value("data", raw_data, json_text=True)
    attempt, attempt_error = decode_value("attempt", raw_attempt, integer=True)
    errors = [e for e in (data_error, attempt_error) if e]
    return ClaimedRow(id=wid, machine=machine, state=state,
                      data=None if data_error else data, version=version,
                      entered_version=entered,
                      attempt=1 if attempt_error else attempt + 1, lease_token=token,
                      previous_status=status, external_change=not rec, parent_id=parent,
                      cancel_requested=cancel, in_doubt=doubt,
                      data_error="; ".join(errors) or None, due_at=_aware(_sqlite_time(due_at)))


def _sqlite_time(value: Any) -> datetime | None:
    """A SQLite time column read as text (None for a value that is not a time)."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:  # written by hand: the mark falls back to a full sweep's
        return None
