"""Group commit (``Worker(group_commit=True)``), on every backend: the commits ready in several
handler threads go in one statement (one transaction on SQLite), each row still fenced by its own
version and lease token; a lost row loses alone; a finishing change with a cancel request pending
still records it as superseded; a group that fails commits each change alone; a transactional step
keeps its own transaction."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import attrs
from sqlalchemy import Column, Integer, MetaData, Table, Text, event, func, insert, select, text

from statemachine import Client, Context, Machine, RetryPolicy, Store, Worker, step
from statemachine._group_commit import GroupCommit
from statemachine._schema import history, workflows
from statemachine._store import Change, ClaimedRow, Committed
from statemachine.errors import StoreError
from tests.waits import wait_until

FAST = dict(poll_interval=0.05, min_poll_interval=0.01)


def claimed(store: Store, n: int, machine: str = "grouped") -> list[ClaimedRow]:
    """`n` fresh workflows of `machine`, claimed by worker w1."""
    for i in range(n):
        store.sql.insert_workflow(machine=machine, state="A", data={"i": i})
    rows = store.sql.claim(owner="w1", machines=[machine], limit=n, lease=30)
    assert len(rows) == n
    return sorted(rows, key=lambda r: r.data["i"])


def to_b(row: ClaimedRow, *, keep_lease: float | None = 30.0) -> Change:
    return Change.transition(row, "B", {"i": row.data["i"], "b": True}, terminal=False,
                             worker="w1", started_at=row.due_at or _now(), keep_lease=keep_lease)


def finish(row: ClaimedRow) -> Change:
    change = Change.transition(row, "Done", {"i": row.data["i"]}, terminal=True, worker="w1",
                               started_at=row.due_at or _now())
    return attrs.evolve(change, supersede_cancel=True)  # as the engine makes a finishing one


def _now() -> datetime:
    return datetime.now(UTC)


def kinds(store: Store, wid: uuid.UUID) -> list[str]:
    with store.connect() as conn:
        return list(conn.execute(select(history.c.kind).where(history.c.workflow_id == wid)
                                 .order_by(history.c.version)).scalars())


def row_of(store: Store, wid: uuid.UUID) -> Any:
    with store.connect() as conn:
        return conn.execute(select(workflows).where(workflows.c.id == wid)).one()


class Sent:
    """Counts what the store sends: statements, and (SQLite) transactions committed."""

    def __init__(self, store: Store) -> None:
        self.statements: list[str] = []
        self.commits = 0
        self.engines = store.sql._db.engines

    def __enter__(self) -> Sent:
        for e in self.engines:
            event.listen(e, "before_cursor_execute", self._statement)
            event.listen(e, "commit", self._commit)
        return self

    def __exit__(self, *exc: object) -> None:
        for e in self.engines:
            event.remove(e, "before_cursor_execute", self._statement)
            event.remove(e, "commit", self._commit)

    def _statement(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement)

    def _commit(self, conn: Any) -> None:
        self.commits += 1


def test_ready_commits_go_in_one_statement_each_row_fenced(store: Store) -> None:
    rows = claimed(store, 4)
    with Sent(store) as sent:
        outcomes = store.sql.commit_group([to_b(r) for r in rows])
    assert outcomes == [Committed(r.version + 1, None) for r in rows]
    if store.is_sqlite:
        assert sent.commits == 1  # one transaction: one write lock, one sync
    else:
        assert len(sent.statements) == 1
    for r in rows:
        stored = row_of(store, r.id)
        assert (stored.state, stored.data, stored.version, stored.lease_token) == (
            "B", {"i": r.data["i"], "b": True}, r.version + 1, r.lease_token)
        assert kinds(store, r.id) == ["start", "transition"]


def test_a_lost_row_loses_alone(store: Store) -> None:
    rows = claimed(store, 4)
    # Row 1's lease went to another worker; row 2 was changed by an operator (its version moved).
    store.sql.release([rows[1].id], rows[1].lease_token)
    [taken] = store.sql.claim(owner="w2", machines=["grouped"], limit=1, lease=30)
    assert taken.id == rows[1].id
    with store.connect() as conn:
        conn.execute(workflows.update().where(workflows.c.id == rows[2].id)
                     .values(version=workflows.c.version + 1))
        conn.commit()
    outcomes = store.sql.commit_group([to_b(r) for r in rows])
    assert outcomes == [Committed(rows[0].version + 1, None), None, None,
                        Committed(rows[3].version + 1, None)]
    assert row_of(store, rows[1].id).lease_token == taken.lease_token  # w2's, untouched
    assert row_of(store, rows[1].id).state == "A"
    assert row_of(store, rows[2].id).state == "A"
    assert kinds(store, rows[1].id) == kinds(store, rows[2].id) == ["start"]
    assert row_of(store, rows[0].id).state == row_of(store, rows[3].id).state == "B"


def test_two_changes_of_one_workflow_in_a_group_commit_at_most_one(store: Store) -> None:
    # Two threads that both think they hold the row (the first's lease expired and the second
    # claimed it): the compare-and-set lets one change in, never both.
    rows = claimed(store, 2)
    stale = to_b(rows[0])
    store.sql.release([rows[0].id], rows[0].lease_token)
    [again] = store.sql.claim(owner="w1", machines=["grouped"], limit=1, lease=30)
    outcomes = store.sql.commit_group([stale, to_b(rows[1]), to_b(again)])
    assert outcomes == [None, Committed(rows[1].version + 1, None),
                        Committed(again.version + 1, None)]
    assert kinds(store, rows[0].id) == ["start", "transition"]
    assert row_of(store, rows[0].id).lease_token == again.lease_token


def test_a_cancel_pending_at_a_grouped_finish_is_recorded_as_superseded(store: Store) -> None:
    rows = claimed(store, 3)
    with store.connect() as conn:
        conn.execute(workflows.update().where(workflows.c.id == rows[1].id)
                     .values(cancel_requested="operator: stop it"))
        conn.commit()
    outcomes = store.sql.commit_group([finish(r) for r in rows])
    assert outcomes[0] == Committed(rows[0].version + 1, None)
    assert outcomes[2] == Committed(rows[2].version + 1, None)
    assert outcomes[1] == Committed(rows[1].version + 2, None)
    assert kinds(store, rows[1].id) == ["start", "transition", "cancel_superseded"]
    assert row_of(store, rows[1].id).cancel_requested is None
    assert kinds(store, rows[0].id) == kinds(store, rows[2].id) == ["start", "transition"]
    assert {row_of(store, r.id).status for r in rows} == {"done"}


def install_refusal(store: Store, wid: uuid.UUID) -> None:
    """A trigger that refuses the history row of `wid`'s transition (an error the server
    answers, not one to retry), as a bad value in one row would."""
    with store.connect() as conn:
        if store.is_sqlite:
            conn.execute(text(f"""
                CREATE TRIGGER sm_test_refuse BEFORE INSERT ON sm_history
                WHEN NEW.workflow_id = '{wid}' AND NEW.kind = 'transition'
                BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"""))
        else:
            conn.execute(text(f"""
                CREATE FUNCTION sm_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF NEW.workflow_id = '{wid}' AND NEW.kind = 'transition' THEN
                        RAISE EXCEPTION USING ERRCODE = '23514', MESSAGE = 'refused by the test';
                    END IF;
                    RETURN NEW;
                END $$"""))
            conn.execute(text("""
                CREATE TRIGGER sm_test_refuse BEFORE INSERT ON sm_history
                FOR EACH ROW EXECUTE FUNCTION sm_test_refuse()"""))
        conn.commit()


def test_a_group_that_fails_commits_each_change_alone(store: Store) -> None:
    rows = claimed(store, 4)
    install_refusal(store, rows[2].id)
    outcomes = store.sql.commit_group([to_b(r) for r in rows])
    assert isinstance(outcomes[2], StoreError)
    assert "refused by the test" in str(outcomes[2])
    assert [outcomes[i] for i in (0, 1, 3)] == [Committed(rows[i].version + 1, None)
                                               for i in (0, 1, 3)]
    assert row_of(store, rows[2].id).state == "A"
    assert kinds(store, rows[2].id) == ["start"]
    assert [row_of(store, rows[i].id).state for i in (0, 1, 3)] == ["B"] * 3


def test_commits_queued_while_a_group_is_on_its_way_go_as_the_next_group(store: Store) -> None:
    rows = claimed(store, 4)
    first_sent = threading.Event()
    release = threading.Event()
    groups: list[int] = []

    def send_group(changes: Sequence[Change], retry_for: float) -> list[Any]:
        groups.append(len(changes))
        if len(groups) == 1:
            first_sent.set()
            assert release.wait(30)
        return store.sql.commit_group(changes, retry_for=retry_for)

    group = GroupCommit(lambda c, r: store.sql.commit(c, retry_for=r), send_group, senders=1)
    results: dict[uuid.UUID, Committed | None] = {}

    def commit(row: ClaimedRow) -> None:
        results[row.id] = group.commit(to_b(row))

    threads = [threading.Thread(target=commit, args=(rows[0],))]
    threads[0].start()
    assert first_sent.wait(30)
    for r in rows[1:]:
        t = threading.Thread(target=commit, args=(r,))
        threads.append(t)
        t.start()
    wait_until(lambda: len(group._queue) == 3, what="three commits queued behind the first")
    release.set()
    for t in threads:
        t.join(30)
    assert groups == [1, 3]  # the lone first went at once; the three queued went together
    assert results == {r.id: Committed(r.version + 1, None) for r in rows}
    assert {row_of(store, r.id).state for r in rows} == {"B"}


# -- a worker with group commit --------------------------------------------------------------

side = Table("sm_test_group_side", MetaData(), Column("workflow_id", Text), Column("n", Integer))


@attrs.frozen
class Fresh:
    n: int


@attrs.frozen
class Written:
    n: int


@attrs.frozen
class Over:
    n: int


class Busy(Machine):
    """Two plain steps around a transactional one, which writes a side row and fails its first
    attempt after writing (so that write must roll back with it)."""

    name = "busy_grouped"
    initial = Fresh
    terminal = (Over,)

    @step(transactional=True, retry=RetryPolicy(max_attempts=3, initial_delay=0.0, jitter=0.0))
    def write(self, state: Fresh, ctx: Context) -> Written:
        ctx.connection.execute(insert(side).values(workflow_id=str(ctx.workflow_id), n=state.n))
        if ctx.attempt == 1:
            raise RuntimeError("fails after writing: the write rolls back")
        return Written(state.n)

    @step
    def end(self, state: Written, ctx: Context) -> Over:
        return Over(state.n)


def test_a_worker_with_group_commit_keeps_every_guarantee(store: Store) -> None:
    side.create(store.engine)
    client = Client(store, [Busy])
    ids = [client.start(Busy, Fresh(n)) for n in range(24)]
    with Worker(store, [Busy()], concurrency=8, group_commit=True, **FAST) as worker:
        wait_until(lambda: all(client.get(i).status == "done" for i in ids),
                   what="every workflow done")
        group = worker.runner.group
        assert group is not None
        assert group.grouped > 0
    with store.connect() as conn:
        written = conn.execute(select(side.c.workflow_id, func.count()).group_by(
            side.c.workflow_id)).all()
    # The transactional step's write committed once per workflow: the failed attempt's rolled back.
    assert sorted(w for w, _ in written) == sorted(str(i) for i in ids)
    assert {c for _, c in written} == {1}
    for i in ids:
        assert kinds(store, i) == ["start", "failed_attempt", "transition", "transition"]
