"""Connections that heal: after every connection of a store's pools is terminated by the server
(what a failover, a proxy restart or a node drain does), the store's calls go on succeeding on
fresh connections; a commit whose connection dies under it is settled by reading back, and sent
again when it did not happen, so the handler's result is kept."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from statemachine import Store
from statemachine._store import Change, ClaimedRow, Committed
from statemachine.errors import DatabaseUnavailable
from tests.conftest import PG_ADMIN_URL, POSTGRES_BACKENDS

pytestmark = pytest.mark.parametrize("backend", POSTGRES_BACKENDS, indirect=True)


@pytest.fixture
def app_name() -> str:
    """The `application_name` of this test's store connections (to find and kill them)."""
    return f"sm-heal-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def named_url(db_url: str, app_name: str) -> str:
    url = make_url(db_url).update_query_dict({"application_name": app_name})
    return url.render_as_string(hide_password=False)


def terminate(app_name: str) -> int:
    """Terminate every server process of `app_name`'s connections; returns how many."""
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            return len(conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = :name AND pid <> pg_backend_pid()"),
                {"name": app_name}).all())
    finally:
        engine.dispose()


@pytest.fixture(params=["pre-ping", "no-pre-ping"])
def healing_store(request: pytest.FixtureRequest, named_url: str) -> Iterator[Store]:
    """A store as made by default (its pools ping what they hand out), and one whose pools do
    not, so that broken connections reach the store's own retry loop."""
    store = Store(named_url, pool_size=3)
    if request.param == "no-pre-ping":
        for engine in store.engines:
            assert hasattr(engine.pool, "_pre_ping"), "SQLAlchemy renamed the pre-ping flag"
            engine.pool._pre_ping = False
    yield store
    store.dispose()


def finish(row: ClaimedRow, **changes: Any) -> Change:
    return Change(workflow_id=row.id, version=row.version, lease_token=row.lease_token,
                  kind="transition", from_state=row.state, to_state="Done", data={"ok": 1},
                  status="done", attempt=row.attempt, wake_after=None, worker="w1", **changes)


def test_twenty_mixed_calls_succeed_after_every_connection_is_terminated(
        healing_store: Store, app_name: str, backend: str) -> None:
    store, sql = healing_store, healing_store.sql
    waiting, _ = sql.insert_workflow(machine="heal_m", state="Start", data={"n": 0},
                                     wake_after=3600)
    for n in range(4):
        sql.insert_workflow(machine="heal_m", state="Start", data={"n": n + 1})
    rows = sql.claim(owner="w1", machines=["heal_m"], limit=2, lease=30)
    assert len(rows) == 2
    # Fill both pools with connections (transactions and autocommit statements).
    store.transaction(lambda c: c.execute(text("SELECT 1")).scalar())
    sql.get(rows[0].id)

    assert terminate(app_name) >= 2
    held: list[ClaimedRow] = []
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("get", lambda: sql.get(rows[0].id)),
        ("renew_leases", lambda: sql.renew_leases([r.id for r in rows], rows[0].lease_token, 30)),
        ("commit", lambda: sql.commit(finish(rows[0]))),
        ("claim", lambda: held.extend(sql.claim(owner="w2", machines=["heal_m"], limit=1,
                                                lease=30))),
        ("start with a key", lambda: sql.insert_workflow(machine="heal_m", state="Start",
                                                         data={}, key="k1")),
        ("start again with the key", lambda: sql.insert_workflow(
            machine="heal_m", state="Start", data={}, key="k1")),
        ("start", lambda: sql.insert_workflow(machine="heal_m", state="Start", data={})),
        ("event", lambda: sql.insert_event(waiting, "Ping", {"x": 1})),
        ("pending events", lambda: sql.pending_events(waiting)),
        ("list", lambda: sql.list_workflows(machine="heal_m")),
        ("history", lambda: sql.history(rows[0].id)),
        ("count", lambda: sql.count_by_status("heal_m")),
        ("time", store.current_time),
        ("transaction", lambda: store.transaction(lambda c: c.execute(text("SELECT 1")))),
        ("cancel requested", lambda: sql.cancel_requested(waiting)),
        ("entered at", lambda: sql.entered_at(waiting, 1)),
        ("get many", lambda: sql.get_many([waiting, rows[1].id])),
        ("release", lambda: sql.release([rows[1].id], rows[1].lease_token)),
        ("defer", lambda: sql.defer(held[0], 60)),
        ("claim again", lambda: sql.claim(owner="w3", machines=["heal_m"], limit=5, lease=30)),
    ]
    assert len(calls) == 20
    results = {}
    for what, call in calls:
        try:
            results[what] = call()
        except Exception as e:
            pytest.fail(f"{what} failed after the connections were terminated: {e!r}")
    assert results["commit"] == Committed(2, None)
    assert results["start with a key"][1] is True
    assert results["start again with the key"] == (results["start with a key"][0], False)
    assert [e.type for e in results["pending events"]] == ["Ping"]
    assert results["release"] == 1
    assert results["defer"] is True
    assert sql.get(rows[0].id).status == "done"


KILL_ONCE = [
    "CREATE SEQUENCE sm_test_kill_calls",
    """
    CREATE FUNCTION sm_test_kill() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.kind = 'transition' AND nextval('sm_test_kill_calls') = 1 THEN
            PERFORM pg_terminate_backend(pg_backend_pid());
            PERFORM pg_sleep(30);  -- interrupted at once: the server process is going away
        END IF;
        RETURN NEW;
    END $$""",
    """
    CREATE TRIGGER sm_test_kill BEFORE INSERT ON sm_history
        FOR EACH ROW EXECUTE FUNCTION sm_test_kill()""",
]


@pytest.mark.parametrize("shape", ["one statement", "transaction"])
def test_a_commit_whose_connection_dies_mid_way_is_read_back_and_sent_again(
        named_url: str, backend: str, shape: str) -> None:
    store = Store(named_url)
    try:
        with store.connect() as conn:
            for statement in KILL_ONCE:
                conn.execute(text(statement))
            conn.commit()
        wid, _ = store.sql.insert_workflow(machine="heal_m", state="Start", data={})
        [row] = store.sql.claim(owner="w1", machines=["heal_m"], limit=1, lease=30)
        change = finish(row)
        if shape == "transaction":  # consuming an event makes the commit a transaction
            event_id = store.sql.insert_event(wid, "Ping", {})
            change = finish(row, consume_event=event_id)
        assert store.sql.commit(change) == Committed(2, None)
        with store.connect() as conn:
            kills = conn.execute(text("SELECT last_value FROM sm_test_kill_calls")).scalar_one()
        assert kills == 2  # killed under the first send; the second went through
        assert [(h.version, h.kind) for h in store.sql.history(wid)] == [
            (1, "start"), (2, "transition")]
        assert store.sql.get(wid).status == "done"
    finally:
        store.dispose()


def broken_connection_error(url: str, app_name: str) -> OperationalError:
    """A genuine driver error of a connection the server terminated."""
    dsn = make_url(url).set(drivername="postgresql").update_query_dict(
        {"application_name": f"{app_name}-victim"})
    conn = psycopg.connect(dsn.render_as_string(hide_password=False), autocommit=True)
    try:
        assert terminate(f"{app_name}-victim") == 1
        try:
            conn.execute("SELECT 1")
        except psycopg.Error as e:
            return OperationalError("SELECT 1", {}, e)
        raise AssertionError("the terminated connection still answered")
    finally:
        conn.close()


def test_a_commit_that_happened_before_its_connection_died_is_reported_committed(
        named_url: str, app_name: str, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(named_url)
    try:
        wid, _ = store.sql.insert_workflow(machine="heal_m", state="Start", data={})
        [row] = store.sql.claim(owner="w1", machines=["heal_m"], limit=1, lease=30)
        lost = broken_connection_error(named_url, app_name)
        real_send = store.sql._send_commit
        sent = 0

        def commit_then_lose_the_connection(c: Change) -> Committed | None:
            nonlocal sent
            sent += 1
            real_send(c)
            raise lost

        monkeypatch.setattr(store.sql, "_send_commit", commit_then_lose_the_connection)
        assert store.sql.commit(finish(row)) == Committed(2, None)
        assert sent == 1
        assert [h.version for h in store.sql.history(wid)] == [1, 2]
    finally:
        store.dispose()


def test_a_user_transaction_lost_during_its_commit_raises_database_unavailable(
        named_url: str, app_name: str, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(named_url)
    try:
        lost = broken_connection_error(named_url, app_name)

        def lose_the_commit(self: Any) -> None:
            raise lost

        from sqlalchemy.engine import RootTransaction

        monkeypatch.setattr(RootTransaction, "commit", lose_the_commit)
        calls = 0

        def work(conn: Any) -> None:
            nonlocal calls
            calls += 1

        with pytest.raises(DatabaseUnavailable) as err:
            store.transaction(work)
        assert calls == 1  # not run again: it may have committed
        assert err.value.sqlstate == "57P01"
    finally:
        store.dispose()


def server_connections(app_name: str) -> int:
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
                {"name": app_name}).scalar_one())
    finally:
        engine.dispose()


def test_a_store_dropped_without_dispose_closes_its_connections(
        named_url: str, app_name: str) -> None:
    """Closed when the store is collected, not left to the garbage collector one by one: an
    unclosed psycopg connection warns (an error in this suite) in whatever runs then."""
    import gc
    import warnings

    store = Store(named_url, pool_size=3)
    store.sql.insert_workflow(machine="m", state="Start", data={})
    store.sql.claim(owner="w1", machines=["m"], limit=1, lease=30)  # the fast path's too
    assert server_connections(app_name) >= 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        del store
        gc.collect()
    assert server_connections(app_name) == 0
