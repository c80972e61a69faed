"""One classifier for every driver error, tried on errors the real databases raise: what it says
decides whether the store retries, reconnects, reads back, or raises, and the `StoreError` raised
carries the SQLSTATE (`DatabaseUnavailable` for a lost or refused connection)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from statemachine import Store
from statemachine._store._faults import Fault, classify, refused_by_data, store_error
from statemachine.errors import DatabaseUnavailable, InvalidArgument, StoreError
from tests.conftest import POSTGRES_BACKENDS


def driver_error(store: Store, sql: str, params: dict[str, Any] | None = None) -> DBAPIError:
    """The SQLAlchemy error `sql` raises on this store's database."""
    with store.connect() as conn:
        try:
            conn.execute(text(sql), params or {})
        except DBAPIError as e:
            return e
    raise AssertionError(f"{sql} did not fail")


@pytest.fixture
def probe(store: Store) -> Store:
    with store.connect() as conn:
        conn.execute(text("CREATE TABLE sm_test_probe (n INTEGER PRIMARY KEY, v INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO sm_test_probe VALUES (1, 1)"))
        conn.commit()
    return store


def test_refusals_by_the_data_and_other_errors(probe: Store, backend: str) -> None:
    duplicate = driver_error(probe, "INSERT INTO sm_test_probe VALUES (1, 2)")
    assert classify(duplicate) is Fault.REFUSED
    assert refused_by_data(duplicate)
    raised = store_error(duplicate)
    assert type(raised) is StoreError
    assert raised.sqlstate == ("23000" if backend == "sqlite" else "23505")
    assert refused_by_data(raised)

    missing = driver_error(probe, "SELECT * FROM sm_no_such_table")
    assert classify(missing) is Fault.OTHER
    assert not refused_by_data(missing)
    if backend != "sqlite":
        assert store_error(missing).sqlstate == "42P01"
        bad_number = driver_error(probe, "SELECT CAST('x' AS INTEGER)")
        assert classify(bad_number) is Fault.REFUSED  # class 22: data exception
        assert store_error(bad_number).sqlstate == "22P02"


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS, indirect=True)  # a PL/pgSQL DO block
@pytest.mark.parametrize(("code", "fault"), [
    ("40001", Fault.RETRY), ("40P01", Fault.RETRY), ("40003", Fault.AMBIGUOUS),
    ("57P01", Fault.CONNECTION), ("08006", Fault.CONNECTION), ("23514", Fault.REFUSED),
    ("42501", Fault.OTHER),
])
def test_sqlstates_raised_by_the_server(store: Store, backend: str, code: str,
                                        fault: Fault) -> None:
    error = driver_error(store, "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '" + code + "', "
                                "MESSAGE = 'injected'; END $$")
    assert classify(error) is fault
    raised = store_error(error)
    assert raised.sqlstate == code
    assert isinstance(raised, DatabaseUnavailable) == (fault is Fault.CONNECTION)


def test_sqlite_busy_is_retried(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    engine = create_engine(url, connect_args={"timeout": 0})
    with engine.connect() as holder:
        holder.exec_driver_sql("CREATE TABLE t (n INTEGER)")
        holder.commit()
        holder.exec_driver_sql("BEGIN IMMEDIATE")
        with engine.connect() as other:
            try:
                other.exec_driver_sql("INSERT INTO t VALUES (1)")
            except DBAPIError as e:
                busy = e
            else:
                raise AssertionError("no lock error")
        holder.rollback()
    engine.dispose()
    assert classify(busy) is Fault.RETRY


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS, indirect=True)
def test_an_unreachable_server_raises_database_unavailable(backend: str) -> None:
    store = Store("postgresql+psycopg://postgres@127.0.0.1:1/postgres?connect_timeout=2",
                  max_retries=1)
    try:
        with pytest.raises(DatabaseUnavailable) as err:
            store.sql.get(uuid.uuid4())
    finally:
        store.dispose()
    assert err.value.sqlstate is not None
    assert err.value.sqlstate.startswith("08")
    assert classify(err.value.__cause__) is Fault.CONNECTION  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS, indirect=True)
def test_pool_connections_are_replaced_after_pool_recycle(db_url: str, backend: str) -> None:
    name = f"sm-recycle-{uuid.uuid4().hex[:8]}"
    url = make_url(db_url).update_query_dict({"application_name": name})
    store = Store(url.render_as_string(hide_password=False), pool_size=1, pool_recycle=0.05)

    def pid(conn: Connection) -> int:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())

    try:
        first = store.transaction(pid)
        stop = threading.Event()
        stop.wait(0.2)  # older than pool_recycle (+10%)
        assert store.transaction(pid) != first
    finally:
        store.dispose()


@pytest.mark.parametrize("recycle", [0, -5.0])
def test_pool_recycle_must_be_positive(recycle: float) -> None:
    with pytest.raises(InvalidArgument, match="pool_recycle"):
        Store("postgresql+psycopg://postgres@127.0.0.1:1/postgres", pool_recycle=recycle)


def test_an_in_memory_sqlite_database_is_refused() -> None:
    make: Callable[[], Store] = lambda: Store("sqlite://")  # noqa: E731
    with pytest.raises(InvalidArgument, match="SQLite file"):
        make()
