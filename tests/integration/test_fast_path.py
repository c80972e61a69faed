"""The psycopg fast path sends exactly what SQLAlchemy would send, and keeps a healthy connection
through an error the server answered (a 40001 is not a broken connection).

The first test is the guard named in `statemachine/_store/_fast.py`: the fast path converts
parameters with SQLAlchemy's public type APIs (``compiled.binds``, ``dialect_impl``,
``bind_processor``); if SQLAlchemy ever converts differently, the SQL or the values sent differ
from what SQLAlchemy's own execution sends, and this test fails loudly.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from psycopg.types.json import Jsonb
from sqlalchemy import event, text
from sqlalchemy.engine import make_url

from statemachine import Store
from statemachine._store import Change, Committed
from statemachine._store._fast import FastPath, sql_literal
from statemachine._store._grouped import GroupStatements
from statemachine.errors import StoreError
from tests.conftest import POSTGRES_BACKENDS
from tests.integration.test_group_commit import (
    claimed,
    finish,
    install_refusal,
    kinds,
    row_of,
    to_b,
)

pytestmark = pytest.mark.parametrize("backend", POSTGRES_BACKENDS, indirect=True)


def comparable(values: dict[str, Any]) -> dict[str, Any]:
    """Driver parameters with JSON wrappers opened (a Jsonb compares by identity)."""
    return {k: (v.obj, type(v)) if isinstance(v, Jsonb) else v for k, v in values.items()}


def finishing(row: Any) -> Change:
    return Change(workflow_id=row.id, version=row.version, lease_token=row.lease_token,
                  kind="transition", from_state=row.state, to_state="Done",
                  data={"ok": True, "when": "now"}, status="done", attempt=row.attempt,
                  wake_after=None, worker="w1", error="Authorization: Bearer zzz")


def test_fast_path_sends_what_sqlalchemy_sends(
        store: Store, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    prepared: list[tuple[Any, dict[str, Any], tuple[str, dict[str, Any]]]] = []
    real_execute = FastPath.execute

    def spy(self: FastPath, key: Any, stmt: Any, params: dict[str, Any], **kw: Any) -> Any:
        sql, values = self.prepare(key, stmt, params)
        plan = self.plan(key, stmt)
        # What is sent: the same SQL with $n parameters, the n-th name's value as $n.
        named = plan.positional.replace("%", "%%")
        for n in range(len(plan.names), 0, -1):  # $12 before $1
            named = named.replace(f"${n}", f"%({plan.names[n - 1]})s")
        # and the constants written in as literals (checked against SQLAlchemy's values below)
        expected = sql
        for name, literal in plan.inlined.items():
            expected = expected.replace(f"%({name})s", literal.replace("%", "%%"))
        assert named == expected
        assert list(comparable(dict(enumerate(plan.sequence(params)))).values()) == \
            [comparable(values)[n] for n in plan.names]
        prepared.append((stmt, dict(params), (sql, values), plan))
        return real_execute(self, key, stmt, params, **kw)

    monkeypatch.setattr(FastPath, "execute", spy)
    assert store.sql._db.fast_ok()
    store.sql.insert_workflow(machine="fast_m", state="Start", data={"n": 1})
    [row] = store.sql.claim(owner="w1", machines=["fast_m"], limit=5, lease=30)
    assert store.sql.commit(finishing(row)) == Committed(2, None)
    assert len(prepared) == 3, "the start, the claim and the commit did not take the fast path"

    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        sent.append((statement, parameters))

    engine = store.sql._db.autocommit
    event.listen(engine, "before_cursor_execute", capture)
    try:
        for stmt, params, (sql, values), plan in prepared:
            sent.clear()
            with engine.connect() as conn:
                trans = conn.begin()
                conn.execute(stmt, params)
                trans.rollback()
            [(sa_sql, sa_values)] = [s for s in sent if s[0] == sql] or sent[-1:]
            assert sa_sql == sql
            inlined = {k: v for k, v in sa_values.items() if k in plan.inlined}
            assert inlined, "no constant was written into the SQL"
            assert {k: sql_literal(v) for k, v in inlined.items()} == \
                {k: plan.inlined[k] for k in inlined}
            sent_as_parameters = {k: v for k, v in sa_values.items() if k not in inlined}
            assert comparable(sent_as_parameters) == comparable(values)
    finally:
        event.remove(engine, "before_cursor_execute", capture)


INJECTED = 2
INJECT_40001 = [
    "CREATE SEQUENCE sm_test_fast_calls",
    f"""
    CREATE FUNCTION sm_test_fast_inject() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.kind = 'transition' AND nextval('sm_test_fast_calls') <= {INJECTED} THEN
            RAISE EXCEPTION USING ERRCODE = '40001', MESSAGE = 'restart transaction: injected';
        END IF;
        RETURN NEW;
    END $$""",
    """
    CREATE TRIGGER sm_test_fast_inject BEFORE INSERT ON sm_history
        FOR EACH ROW EXECUTE FUNCTION sm_test_fast_inject()""",
]


def backend_pids(store: Store, application_name: str) -> set[int]:
    with store.connect() as conn:
        return set(conn.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE application_name = :name"),
            {"name": application_name}).scalars())


def test_a_serialization_failure_keeps_the_fast_path_connection(
        db_url: str, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"sm-fast-{uuid.uuid4().hex[:8]}"
    url = make_url(db_url).update_query_dict({"application_name": name})
    store = Store(url.render_as_string(hide_password=False), pool_size=1)
    used: list[int] = []
    real_connection = FastPath._connection

    def spy(self: FastPath, hold: bool = True) -> Any:
        held = real_connection(self, hold)
        used.append(held.raw.driver_connection.info.backend_pid)  # type: ignore[union-attr]
        return held

    try:
        with store.connect() as conn:
            for statement in INJECT_40001:
                conn.execute(text(statement))
            conn.commit()
        store.sql.insert_workflow(machine="fast_m", state="Start", data={})
        [row] = store.sql.claim(owner="w1", machines=["fast_m"], limit=1, lease=30)
        before = backend_pids(store, name)
        monkeypatch.setattr(FastPath, "_connection", spy)
        assert store.sql.commit(finishing(row)) == Committed(2, None)
        with store.connect() as conn:
            calls = conn.execute(text("SELECT last_value FROM sm_test_fast_calls")).scalar_one()
        assert calls == INJECTED + 1  # refused twice, then committed: all on the fast path
        assert len(used) == INJECTED + 1
        # Every attempt ran on the same server process: the connection was never discarded.
        assert len(set(used)) == 1
        assert backend_pids(store, name) == before
    finally:
        store.dispose()


def test_a_thread_that_starts_workflows_keeps_no_connection(store: Store, backend: str) -> None:
    """An application's threads call `Client.start`: each borrows a pooled connection for the
    statement and gives it back, where a worker's threads keep theirs."""
    fast = store.sql._db.fast_path
    assert fast is not None
    started: list[uuid.UUID] = []
    caller = threading.Thread(target=lambda: started.append(
        store.sql.insert_workflow(machine="fast_m", state="Start", data={"n": 1})[0]))
    caller.start()
    caller.join()
    assert len(started) == 1
    assert caller.ident not in fast._held
    with store.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sm_workflows WHERE id = :id"),
                            {"id": started[0]}).scalar() == 1
    store.sql.claim(owner="w1", machines=["fast_m"], limit=1, lease=30)
    assert threading.get_ident() in fast._held  # a claiming (worker) thread keeps one


def test_a_group_of_several_shapes_goes_in_one_round_trip_and_one_transaction(
        store: Store, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = claimed(store, 5)
    # Three shapes: two sticky steps, two finishes (fenced on no cancel pending), and a step
    # that gives its lease back (a shape of one change: the plain commit's statement).
    changes = [to_b(rows[0]), to_b(rows[1]), finish(rows[2]), finish(rows[3]),
               to_b(rows[4], keep_lease=None)]
    round_trips: list[int] = []
    real = FastPath.execute_all

    def spy(self: FastPath, items: Any) -> Any:
        round_trips.append(len(items))
        return real(self, items)

    monkeypatch.setattr(FastPath, "execute_all", spy)
    outcomes = store.sql.commit_group(changes)
    assert round_trips == [3]
    assert outcomes == [Committed(r.version + 1, None) for r in rows]
    assert [row_of(store, r.id).status for r in rows] == [
        "running", "running", "done", "done", "ready"]
    assert all(kinds(store, r.id) == ["start", "transition"] for r in rows)


def test_a_group_whose_last_statement_fails_wrote_nothing_before_each_goes_alone(
        store: Store, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = claimed(store, 4)
    install_refusal(store, rows[3].id)  # in the second statement of the round trip
    states_when_settling: list[list[str]] = []
    real = GroupStatements._settle_alone

    def spy(self: GroupStatements, change: Change, retry_for: float) -> Any:
        if not states_when_settling:
            states_when_settling.append([row_of(store, r.id).state for r in rows])
        return real(self, change, retry_for)

    monkeypatch.setattr(GroupStatements, "_settle_alone", spy)
    outcomes = store.sql.commit_group([to_b(rows[0]), to_b(rows[1]), finish(rows[2]),
                                       finish(rows[3])])
    # The sticky steps' statement ran first, in the same transaction: rolled back with it.
    assert states_when_settling == [["A", "A", "A", "A"]]
    assert outcomes[:3] == [Committed(r.version + 1, None) for r in rows[:3]]
    assert isinstance(outcomes[3], StoreError)
    assert [row_of(store, r.id).state for r in rows] == ["B", "B", "Done", "A"]
