"""Starting, claiming and committing workflows: the hot path."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import timedelta
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
    exists,
    insert,
    literal,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .._records import Change, ChildStart, ClaimedRow, Committed
from .._schema import JSONData, UTCDateTime, history, workflows
from .._schema import events as ev
from ..errors import DatabaseUnavailable, StoreError
from ._base import StatementGroup, _headline
from ._decode import decode_value

log = logging.getLogger("statemachine.store")

__all__ = ["WorkflowStatements"]

w = workflows
h = history


# What `_read_back` answers when the commit it looked for did not happen: send it again.
_RESEND: Any = object()


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
        if self._single(lambda conn: conn.execute(stmt, params).first()) is not None:
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
        self, *, owner: str, machines: Sequence[str], limit: int, lease: float
    ) -> list[ClaimedRow]:
        """Take up to `limit` due workflows of `machines` (ready and due, or running with an
        expired lease) and lease them to `owner` for `lease` seconds; attempt is counted up."""
        if limit <= 0 or not machines:
            return []
        token = uuid.uuid4().hex
        params = {"p_machines": list(machines), "p_limit": limit, "p_token": token,
                  "p_owner": owner, "p_lease": self._later_value(lease), **self._now_value()}
        stmts = self._statements.get("claim")
        if stmts is None:
            stmts = self._statements["claim"] = self._claim_statements()
        if self.is_sqlite:
            pick, lease_them = stmts

            def run_sqlite(conn: Connection) -> list[ClaimedRow]:
                rows = conn.execute(pick, params).all()
                if rows:
                    conn.execute(lease_them, {**params, "p_ids": [r.id for r in rows]})
                return [_claimed_sqlite(r, token) for r in rows]

            return self.transaction(run_sqlite)

        def claimed(r: Any) -> ClaimedRow:
            (wid, machine, state, data, version, entered, attempt, status, rec, parent, cancel,
             doubt) = r
            return ClaimedRow(id=wid, machine=machine, state=state, data=data, version=version,
                              entered_version=entered, attempt=attempt, lease_token=token,
                              previous_status=status, external_change=not rec, parent_id=parent,
                              cancel_requested=cancel, in_doubt=doubt)

        if self._db.fast_ok():
            return [claimed(r) for r in self._db.fast("claim", stmts, params, many=True)]
        return self._single(lambda conn: [claimed(r) for r in conn.execute(stmts, params)])

    def _claim_statements(self) -> Any:
        """The claim, built once: one UPDATE over a locked subquery on servers; a SELECT and an
        UPDATE (under SQLite's write lock) on SQLite."""
        now = self._now_param()
        recorded = exists().where(h.c.workflow_id == w.c.id, h.c.version == w.c.version)
        runnable = ("ready", "running", "waiting")
        if self.is_sqlite:
            of_machines: ColumnElement[bool] = w.c.machine.in_(
                bindparam("p_machines", expanding=True))
            is_runnable: ColumnElement[bool] = w.c.status.in_(runnable)
        else:  # arrays, not expanding INs: the SQL is the same whatever the lists (compiled once)
            of_machines = w.c.machine == any_(bindparam("p_machines", type_=ARRAY(Text())))
            is_runnable = w.c.status == any_(literal(list(runnable), ARRAY(Text())))
        due = and_(w.c.wake_at.is_not(None), w.c.wake_at <= now, is_runnable, of_machines)
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
            pick = (select(*columns, w.c.status, *extra).where(due).order_by(w.c.wake_at)
                    .limit(limit))
            lease_them = (update(w).where(w.c.id.in_(bindparam("p_ids", expanding=True)))
                          .values(**lease_values))
            return pick, lease_them
        picked = (select(w.c.id, w.c.status).where(due).order_by(w.c.wake_at).limit(limit)
                  .with_for_update(skip_locked=True).subquery("picked"))
        return (update(w).where(w.c.id == picked.c.id).values(**lease_values)
                .returning(*columns, picked.c.status, *extra))

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
        if self.is_sqlite or not change.simple:
            return self._db.attempt_transaction(lambda conn: self.commit_in(conn, change))
        shape = _shape(change)
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
        params = self._change_params(change)
        fast = self._db.fast_path
        if fast is not None and fast.usable() and not change.expect_status:
            # (an expanding IN needs SQLAlchemy)
            row = fast.execute(("commit", shape), stmt, params)
        else:
            row = self._db.attempt_single(lambda conn: conn.execute(stmt, params).first())
        return None if row is None else Committed(int(row[0]), row[1])

    def commit_in(self, conn: Connection, change: Change) -> Committed | None:
        """`commit` inside the caller's transaction."""
        c = change
        shape = _shape(c)
        stmts = self._statements.get(("commit_in", shape))
        if stmts is None:
            upd, hist = self._change_statements(shape)
            stmts = (upd.returning(w.c.version, w.c.cancel_requested),
                     insert(h).values(workflow_id=bindparam("p_id", type_=h.c.workflow_id.type),
                                      version=bindparam("h_version", type_=BigInteger()),
                                      **hist))
            self._statements[("commit_in", shape)] = stmts
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
        if c.children:
            self._insert_children(conn, c.workflow_id, c.children)
        if c.wake_parent is not None:
            self._wake(conn, [c.wake_parent])
        if c.cancel_children is not None:
            self._cancel_children(conn, c.workflow_id, c.cancel_children)
        return Committed(version, None if c.clear_cancel else row.cancel_requested)

    def _change_statements(self, shape: _Shape) -> tuple[Any, dict[str, Any]]:
        """The compare-and-set UPDATE and the history values for one shape of change, with a
        bind parameter for every value (built once per shape, then reused)."""
        (has_token, expect_status, keep_lease, wake, attempt_rule, new_state, clear_cancel,
         doubt, keep_data) = shape
        conds = [w.c.id == bindparam("p_id", type_=w.c.id.type),
                 w.c.version == bindparam("p_version", type_=BigInteger())]
        if has_token:
            conds.append(w.c.lease_token == bindparam("p_token", type_=Text()))
        if expect_status:
            conds.append(w.c.status.in_(bindparam("p_expect", expanding=True)))
        now = self._now_param()
        values: dict[str, Any] = dict(
            state=bindparam("p_state", type_=Text()), data=bindparam("p_data", type_=JSONData),
            status=bindparam("p_status", type_=Text()), version=w.c.version + 1,
            updated_at=now, last_error=bindparam("p_last_error", type_=Text()))
        if keep_data:  # the stored data did not decode: parked as it is, for a person to read
            del values["data"]
        if keep_lease:
            values.update(status="running", wake_at=self._later_param("p_wake"))
            if new_state:  # a new state starts its first attempt; otherwise the count goes on
                values["attempt"] = 1
        else:
            wake_at: Any = {"none": None, "at": bindparam("p_wake_at", type_=UTCDateTime()),
                             "after": self._later_param("p_wake")}[wake]
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
        if clear_cancel:
            values["cancel_requested"] = None
        if doubt:
            values["in_doubt"] = bindparam("p_in_doubt", type_=Text())
        hist = dict(
            kind=bindparam("h_kind", type_=Text()), from_state=bindparam("h_from", type_=Text()),
            to_state=bindparam("p_state", type_=Text()), data=bindparam("p_data", type_=JSONData),
            status=bindparam("h_status", type_=Text()), cause=bindparam("h_cause", type_=Text()),
            attempt=bindparam("h_attempt", type_=Integer()),
            error=bindparam("h_error", type_=Text()), worker=bindparam("h_worker", type_=Text()),
            started_at=bindparam("h_started", type_=UTCDateTime()), finished_at=now)
        return update(w).where(*conds).values(**values), hist

    def _change_params(self, c: Change) -> dict[str, Any]:
        """The values of `c` for the statement of its shape."""
        params: dict[str, Any] = dict(
            p_id=c.workflow_id, p_version=c.version, p_token=c.lease_token,
            p_expect=list(c.expect_status), p_state=c.to_state, p_data=c.data,
            p_status=c.status, p_last_error=self._redact(_headline(c.error)),
            p_wake_at=c.wake_at, p_in_doubt=self._redact(c.mark_in_doubt), h_kind=c.kind,
            h_from=c.from_state, h_status=c.status, h_cause=c.cause, h_attempt=c.attempt,
            h_error=self._redact(c.error),
            h_worker=c.worker, h_started=c.started_at)
        seconds = c.keep_lease if c.keep_lease is not None else c.wake_after
        params["p_wake"] = self._later_value(seconds or 0.0)
        params.update(self._now_value())
        return params

    def _insert_children(self, conn: Connection, parent: uuid.UUID,
                         children: Sequence[ChildStart]) -> None:
        now = self.now()
        for n, child in enumerate(children):
            # Start order is queue order: a microsecond apart, since they share a transaction.
            started = now + literal(timedelta(microseconds=n), Interval()) if self.server_clock \
                else literal(self.clock.now() + timedelta(microseconds=n), UTCDateTime())
            values = dict(
                id=child.id, machine=child.machine, state=child.state, data=child.data,
                status="ready", version=1, entered_version=1, attempt=0,
                wake_at=None if child.queued else now, key=child.key, parent_id=parent,
                created_at=started, updated_at=now)
            conn.execute(insert(w).values(**values))
            conn.execute(insert(h).values(
                workflow_id=child.id, version=1, kind="start", from_state=None,
                to_state=child.state, data=child.data, status="ready", attempt=0,
                cause=f"child of {parent}", finished_at=now))

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


def _shape(c: Change) -> _Shape:
    """The shape of `c`'s statement."""
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
        keep_data=c.data is None)


def _claimed_sqlite(r: Any, token: str) -> ClaimedRow:
    """A claimed SQLite row, its data decoded here: a value that does not decode (written by
    hand) becomes the row's `data_error`, for the engine to park it with, instead of failing the
    claim of every row."""
    data, data_error = decode_value("data", r.data, json_text=True)
    attempt, attempt_error = decode_value("attempt", r.attempt, integer=True)
    errors = [e for e in (data_error, attempt_error) if e]
    return ClaimedRow(id=r.id, machine=r.machine, state=r.state,
                      data=None if data_error else data, version=r.version,
                      entered_version=r.entered_version,
                      attempt=1 if attempt_error else attempt + 1, lease_token=token,
                      previous_status=r.status, external_change=not r.rec, parent_id=r.parent_id,
                      cancel_requested=r.cancel_requested, in_doubt=r.in_doubt,
                      data_error="; ".join(errors) or None)
