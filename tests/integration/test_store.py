"""The store's contract on every backend: migrations build exactly the tables `schema.py` declares,
`migrate()` is idempotent, `Store.transaction` retries serialization failures with a fresh
transaction and wraps other errors, claims are exclusive until their lease expires, and `commit` is
a compare-and-set on (id, version, lease token)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, Index, create_engine, inspect, select, text
from sqlalchemy.exc import DBAPIError

from statemachine import Store, StoreError
from statemachine._migrate import migration_family, migration_files
from statemachine._schema import metadata, migrations_table
from statemachine._store import Change, Committed
from tests.conftest import POSTGRES_BACKENDS

# -- migrations ----------------------------------------------------------------------------------

# Reflected and declared types compiled for the backend, reduced to what matters to the data:
# lengths and spellings aside, a TIMESTAMP is not a TIMESTAMPTZ and JSON is not JSONB.
TYPE_FAMILIES = {
    "UUID": "uuid",
    "VARCHAR": "text",
    "CHARACTER VARYING": "text",
    "TEXT": "text",
    "JSON": "json",
    "JSONB": "jsonb",
    "INTEGER": "integer",
    "INT": "integer",
    "BIGINT": "bigint",
    "BOOLEAN": "boolean",
    "DATETIME": "timestamp",
    "TIMESTAMP": "timestamp",
    "TIMESTAMP WITHOUT TIME ZONE": "timestamp",
    "TIMESTAMP WITH TIME ZONE": "timestamptz",
}


def type_family(type_: Any, store: Store) -> str:
    compiled = re.sub(r"\(.*?\)", "", type_.compile(dialect=store.engine.dialect)).strip().upper()
    if compiled not in TYPE_FAMILIES:
        pytest.fail(f"no type family for {compiled!r}: add it to TYPE_FAMILIES")
    return TYPE_FAMILIES[compiled]


def predicate(where: Any) -> str | None:
    """A partial index's WHERE clause, spelled the same whichever way it was read (PostgreSQL
    gives it back with parentheses and casts: ``(status = 'pending'::text)``)."""
    if where is None:
        return None
    spelled = re.sub(r"::(?:character varying|[a-z_]+)", "", str(where).lower())
    return " ".join(spelled.replace("(", " ").replace(")", " ").split())


def declared_schema(store: Store) -> dict[str, Any]:
    """What `schema.metadata` says the backend's tables are."""
    family = "sqlite" if store.is_sqlite else "postgresql"
    tables = {}
    for table in metadata.sorted_tables:
        pk = table.primary_key
        tables[table.name] = {
            "columns": {c.name: (type_family(c.type, store), c.nullable) for c in table.columns},
            "primary_key": ([c.name for c in pk.columns], pk.name),
            "indexes": {
                idx.name: ([c.name for c in idx.columns], bool(idx.unique),
                           predicate(idx.dialect_options[family]["where"]))
                for idx in table.indexes if isinstance(idx, Index)
            },
        }
    return tables


def reflecting_engine(store: Store) -> Engine:
    """An engine whose inspector reads `store`'s tables: its own, except for the CockroachDB
    dialect on a PostgreSQL server (the `crdb-dialect` backend), whose reflection queries
    CockroachDB's catalog columns: there PostgreSQL's dialect reads the same schema."""
    if store.dialect == "cockroachdb" and migration_family(store) == "postgresql":
        return create_engine(store.engine.url.set(drivername="postgresql+psycopg"))
    return store.engine


def actual_schema(store: Store, declared: dict[str, Any]) -> dict[str, Any]:
    """The backend's `sm_` tables as SQLAlchemy's inspector reflects them."""
    family = "sqlite" if store.is_sqlite else "postgresql"
    engine = reflecting_engine(store)
    try:
        return _reflected(inspect(engine), family, declared, store)
    finally:
        if engine is not store.engine:
            engine.dispose()


def _reflected(insp: Any, family: str, declared: dict[str, Any], store: Store) -> dict[str, Any]:
    tables = {}
    for name in sorted(t for t in insp.get_table_names() if t.startswith("sm_")):
        pk = insp.get_pk_constraint(name)
        # Compare a primary key's name only where schema.py gives one; else the backend names it.
        pk_name = pk["name"] if declared.get(name, {}).get("primary_key", (0, None))[1] else None
        tables[name] = {
            "columns": {c["name"]: (type_family(c["type"], store), c["nullable"])
                        for c in insp.get_columns(name)},
            "primary_key": (pk["constrained_columns"], pk_name),
            "indexes": {
                i["name"]: (i["column_names"], bool(i["unique"]),
                            predicate(i.get("dialect_options", {}).get(f"{family}_where")))
                for i in insp.get_indexes(name)
            },
        }
    return tables


def assert_schema_matches(store: Store) -> None:
    declared = declared_schema(store)
    actual = actual_schema(store, declared)
    assert sorted(actual) == sorted(declared), "tables differ"
    for name in declared:
        assert actual[name] == declared[name], f"table {name} differs from schema.py"


def test_migrations_build_the_declared_schema(store: Store) -> None:
    assert_schema_matches(store)


def test_migrate_is_idempotent_and_records_versions(store: Store) -> None:
    versions = [v for v, _ in migration_files(migration_family(store))]
    assert versions, "no migration files found"
    assert store.migrate() == []  # the fixture migrated already

    metadata.drop_all(store.engine)
    assert store.migrate() == versions
    assert store.migrate() == []
    with store.connect() as conn:
        rows = conn.execute(select(migrations_table).order_by(migrations_table.c.version)).all()
    assert [r.version for r in rows] == versions
    assert all(r.applied_at is not None for r in rows)
    assert_schema_matches(store)


# -- Store.transaction ---------------------------------------------------------------------------


def raise_sqlstate(conn: Connection, code: str) -> None:
    """Make the server raise a genuine error with SQLSTATE `code` inside this transaction."""
    conn.execute(text(
        "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '" + code + "', "
        "MESSAGE = 'restart transaction: injected'; END $$"))


@pytest.fixture
def probe(store: Store) -> Callable[[], list[int]]:
    """A scratch table `sm_test_probe(n)`; returns a function that reads its values."""
    with store.connect() as conn:
        conn.execute(text("CREATE TABLE sm_test_probe (n INTEGER NOT NULL)"))
        conn.commit()

    def values() -> list[int]:
        with store.connect() as conn:
            return list(conn.execute(text("SELECT n FROM sm_test_probe ORDER BY n")).scalars())

    return values


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS, indirect=True)  # a PL/pgSQL DO block
@pytest.mark.parametrize("code", ["40001", "40P01"])
def test_transaction_retries_serialization_failures(
    store: Store, backend: str, probe: Callable[[], list[int]], code: str
) -> None:
    calls = 0

    def work(conn: Connection) -> str:
        nonlocal calls
        calls += 1
        conn.execute(text("INSERT INTO sm_test_probe (n) VALUES (:n)"), {"n": calls})
        if calls <= 2:
            raise_sqlstate(conn, code)
        return "committed"

    assert store.transaction(work) == "committed"
    assert calls == 3
    # Each attempt ran in a fresh transaction: the failed ones left nothing behind.
    assert probe() == [3]


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS, indirect=True)  # a PL/pgSQL DO block
def test_transaction_gives_up_after_max_retries(
    db_url: str, backend: str, probe: Callable[[], list[int]]
) -> None:
    store = Store(db_url, max_retries=2)
    calls = 0

    def work(conn: Connection) -> None:
        nonlocal calls
        calls += 1
        raise_sqlstate(conn, "40001")

    try:
        with pytest.raises(StoreError, match="restart transaction: injected") as err:
            store.transaction(work)
    finally:
        store.dispose()
    assert calls == 3
    assert isinstance(err.value.__cause__, DBAPIError)
    assert getattr(err.value.__cause__.orig, "sqlstate", None) == "40001"


def test_non_retryable_error_surfaces_as_store_error(
    store: Store, backend: str, probe: Callable[[], list[int]]
) -> None:
    calls = 0

    def work(conn: Connection) -> None:
        nonlocal calls
        calls += 1
        conn.execute(text("INSERT INTO sm_test_probe (n) VALUES (1)"))
        conn.execute(text("SELECT * FROM sm_no_such_table"))

    with pytest.raises(StoreError, match="sm_no_such_table") as err:
        store.transaction(work)
    assert calls == 1
    cause = err.value.__cause__
    assert isinstance(cause, DBAPIError)
    if backend != "sqlite":
        assert getattr(cause.orig, "sqlstate", None) == "42P01"
    assert probe() == []


def test_error_raised_by_the_function_rolls_back_and_propagates(
    store: Store, probe: Callable[[], list[int]]
) -> None:
    def work(conn: Connection) -> None:
        conn.execute(text("INSERT INTO sm_test_probe (n) VALUES (1)"))
        raise ValueError("changed my mind")

    with pytest.raises(ValueError, match="changed my mind"):
        store.transaction(work)
    assert probe() == []


# -- claims and compare-and-set ------------------------------------------------------------------


def finish(row: Any, *, version: int | None = None, token: str | None = None) -> Change:
    return Change(
        workflow_id=row.id, version=row.version if version is None else version,
        lease_token=row.lease_token if token is None else token, kind="transition",
        from_state=row.state, to_state="Done", data={"ok": True}, status="done",
        attempt=row.attempt, wake_after=None)


def test_commit_is_a_compare_and_set(store: Store) -> None:
    wid, created = store.sql.insert_workflow(machine="store_m", state="Start", data={"n": 1})
    assert created
    [row] = store.sql.claim(owner="w1", machines=["store_m"], limit=10, lease=30)
    assert (row.id, row.version, row.attempt, row.external_change) == (wid, 1, 1, False)

    assert store.sql.commit(finish(row, version=row.version + 1)) is None
    assert store.sql.commit(finish(row, token="not-the-lease")) is None
    after = store.sql.get(wid)
    assert (after.status, after.state, after.version) == ("running", "Start", 1)
    assert [h.version for h in store.sql.history(wid)] == [1]

    assert store.sql.commit(finish(row)) == Committed(2, None)
    after = store.sql.get(wid)
    assert (after.status, after.state, after.data, after.version) == (
        "done", "Done", {"ok": True}, 2)
    assert after.lease_token is None
    assert after.wake_at is None
    kinds = [(h.version, h.kind) for h in store.sql.history(wid)]
    assert kinds == [(1, "start"), (2, "transition")]
    # The same change cannot commit twice.
    assert store.sql.commit(finish(row)) is None


def test_claim_is_exclusive_until_the_lease_expires(store: Store) -> None:
    wid, _ = store.sql.insert_workflow(machine="store_m", state="Start", data={})
    [first] = store.sql.claim(owner="w1", machines=["store_m"], limit=10, lease=0.3)
    assert first.previous_status == "ready"
    assert store.sql.claim(owner="w2", machines=["store_m"], limit=10, lease=0.3) == []
    assert store.sql.claim(owner="w2", machines=["other"], limit=10, lease=0.3) == []

    time.sleep(0.4)
    [second] = store.sql.claim(owner="w2", machines=["store_m"], limit=10, lease=30)
    assert second.id == wid
    assert second.previous_status == "running"  # the first holder was abandoned
    assert second.attempt == 2
    assert second.lease_token != first.lease_token
    assert store.sql.get(wid).lease_owner == "w2"
    # The worker that lost its lease cannot commit any more; the new holder can.
    assert store.sql.commit(finish(first)) is None
    assert store.sql.commit(finish(second)) == Committed(2, None)
