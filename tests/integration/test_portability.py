"""Staying portable to CockroachDB without a CockroachDB server (see COCKROACHDB.md).

1. Every statement the store builds, and all DDL, compiles for PostgreSQL and for the CockroachDB
   dialect. The methods of ``store.sql`` are driven through a stand-in connection that records
   statements instead of running them (tests/integration/golden_sql.py), so no server is needed;
   arguments are made from the methods' type hints, so a method added is checked without touching
   this file.
2. A SQL lint (tests/sqllint.py): CockroachDB's unsupported list, clock_timestamp(), ADD COLUMN
   without IF NOT EXISTS, DDL with DML, a table modified twice in one statement. It runs over
   every statement the library sends in the whole suite, on every backend (installed by
   tests/conftest.py), failing the test that sent a bad one; here it is tested, and run over
   the migrations and over what a full workflow sends (start, worker, failures and retries,
   park and retry, cancel, force by API and by SQL), recording what it saw to prove it saw the
   claim and the compare-and-set.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from sqlalchemy import event, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.sql import ClauseElement
from sqlalchemy_cockroachdb.psycopg import CockroachDBDialect_psycopg

from statemachine import Client, Context, Machine, RetryPolicy, Store, Worker, step
from statemachine._migrate import migration_files
from statemachine._schema import metadata
from tests import sqllint
from tests.integration.golden_sql import (
    FixedClock,
    compile_for,
    drive,
    offline_store,
    statement_methods,
)
from tests.integration.test_engine import force_by_sql
from tests.sqllint import KNOWN, lint

# CockroachDB is checked against PostgreSQL's compiler and its own (SQLite: see golden_sql).
DIALECTS: dict[str, Dialect] = {
    "postgresql": postgresql.psycopg.dialect(),
    "cockroachdb": CockroachDBDialect_psycopg(),
}

# -- the lint ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("sql", "problem"), [
    ("SELECT pg_advisory_xact_lock(42)", "advisory locks"),
    ("SELECT pg_try_advisory_lock(1)", "advisory locks"),
    ("LISTEN sm_work", "LISTEN/NOTIFY"),
    ("NOTIFY sm_work, 'x'", "LISTEN/NOTIFY"),
    ("SELECT pg_notify('sm_work', 'x')", "LISTEN/NOTIFY"),
    ("LOCK TABLE sm_workflows IN EXCLUSIVE MODE", "LOCK TABLE"),
    ("CREATE TABLE t (id BIGSERIAL PRIMARY KEY)", "SERIAL"),
    ("INSERT INTO t VALUES (nextval('t_seq'))", "SERIAL"),
    ("CREATE TEMP TABLE scratch (n int)", "temporary tables"),
    ("CREATE TEMPORARY TABLE scratch (n int)", "temporary tables"),
    ("CREATE TRIGGER t BEFORE INSERT ON sm_history FOR EACH ROW EXECUTE FUNCTION f()", "triggers"),
    ("CREATE OR REPLACE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql",
     "stored procedures"),
    ("DELETE FROM sm_history WHERE ctid = '(0,1)'", "ctid/xmin"),
    ("SELECT xmin FROM sm_workflows", "ctid/xmin"),
    ("CREATE INDEX i ON sm_workflows USING gin (data jsonb_path_ops)", "jsonb_path_ops"),
    ("CREATE TABLE t (r tsrange, EXCLUDE USING gist (r WITH &&))", "exclusion constraints"),
    ("CREATE TABLE t (id int REFERENCES u DEFERRABLE INITIALLY DEFERRED)", "deferrable"),
    ("CREATE EXTENSION pgcrypto", "extensions"),
    ("VACUUM sm_workflows", "VACUUM/CLUSTER"),
    ("CREATE TABLE t2 () INHERITS (t)", "table inheritance"),
    ("SELECT id FROM sm_events ORDER BY clock_timestamp()", "clock_timestamp()"),
    ("SELECT count(*) FROM sm_limit_windows WHERE updated_at > clock_timestamp() - "
     "interval '1 second'", "clock_timestamp()"),
    ("UPDATE sm_events SET created_at = clock_timestamp() WHERE id = %(id)s",
     "clock_timestamp()"),
    ("ALTER TABLE sm_workflows ADD COLUMN purge_after TIMESTAMPTZ NULL",
     "ADD COLUMN without IF NOT EXISTS"),
    ("CREATE INDEX i ON sm_workflows (state); UPDATE sm_workflows SET state = 'x'",
     "DDL and DML in one statement"),
    ("WITH a AS (UPDATE sm_workflows SET version = 2 WHERE id = 1 RETURNING id) "
     "UPDATE sm_workflows SET version = 3 WHERE id IN (SELECT id FROM a)",
     "modifies sm_workflows twice"),
    ("WITH a AS (DELETE FROM sm_history WHERE workflow_id = 1 RETURNING 1) "
     "INSERT INTO sm_history SELECT * FROM x", "modifies sm_history twice"),
])
def test_lint_flags_what_cockroachdb_lacks(sql: str, problem: str) -> None:
    found = lint(sql)
    assert len(found) == 1, found
    assert found[0].startswith(problem)


@pytest.mark.parametrize("sql", [
    "UPDATE sm_workflows SET status='running', lease_token=%(t)s WHERE sm_workflows.id IN "
    "(SELECT id FROM sm_workflows WHERE wake_at <= now() LIMIT 10 FOR UPDATE SKIP LOCKED)",
    "SELECT noticed, listen_at, notify_count, sequence_no, locked FROM sm_events",
    "CREATE INDEX sm_workflows_due ON sm_workflows (wake_at) WHERE wake_at IS NOT NULL",
    "ALTER TABLE sm_workflows ADD COLUMN IF NOT EXISTS purge_after TIMESTAMPTZ NULL",
    # One modification per table: the start (two tables) and an upsert (DO UPDATE is not a
    # second statement); a locking read is not a modification.
    "WITH new AS (INSERT INTO sm_workflows (id) VALUES (1) ON CONFLICT DO NOTHING RETURNING id) "
    "INSERT INTO sm_history (workflow_id) SELECT id FROM new",
    "INSERT INTO sm_limit_windows (key) VALUES ('k') ON CONFLICT (key) DO UPDATE SET key = 'k'",
    "UPDATE sm_workflows SET status = 'running' FROM (SELECT id FROM sm_workflows "
    "FOR UPDATE SKIP LOCKED) AS picked WHERE sm_workflows.id = picked.id",
    "SELECT 'a;b; CREATE TABLE x' AS text_not_ddl",
])
def test_lint_passes_portable_sql(sql: str) -> None:
    assert lint(sql) == []


def test_sqlite_statements_are_held_to_the_shape_rules_only() -> None:
    """SQLite's own SQL never reaches CockroachDB (and SQLite has no ADD COLUMN IF NOT
    EXISTS); one statement modifying a table twice is still refused."""
    assert lint("ALTER TABLE sm_workflows ADD COLUMN purge_after DATETIME NULL", "sqlite") == []
    assert lint("WITH a AS (DELETE FROM t RETURNING 1) DELETE FROM t", "sqlite") == [
        "modifies t twice in one statement (CockroachDB refuses that by default)"]


def test_known_violations_are_named_and_only_they_pass() -> None:
    """The library's remaining uses of clock_timestamp() (the rate-limit stamp, read after the
    row lock; a column default only plain-SQL inserts take) pass as known, each with its reason;
    the same function anywhere else does not, including the event order issue 10 removed."""
    known = "SELECT clock_timestamp() AS clock_timestamp_1"
    assert lint(known) == []
    assert all(why for _, _, why in KNOWN)
    assert lint("SELECT clock_timestamp() AS t FROM sm_history") != []
    assert lint("INSERT INTO sm_events (id, created_at) VALUES (%(id)s, clock_timestamp())") != []


def test_the_session_lint_sees_what_the_library_sends_not_the_tests_scaffolding(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through SQLAlchemy and through the psycopg fast path alike: a rule matching the claim
    catches the claim the library sends; the same SQL sent by the test itself is not linted."""
    claim = re.compile(r"SKIP LOCKED|attempt=\(sm_workflows\.attempt \+|advisory")
    monkeypatch.setattr(sqllint, "lint", lambda sql, dialect="postgresql": (
        ["TEST RULE"] if claim.search(sql) else []))
    sqllint.collected()
    client = Client(store, [Publishing])
    client.start(Publishing, Drafted("linted"))
    store.sql.claim(owner="t", machines=["portability_publishing"], limit=1, lease=30)
    with store.connect() as conn:  # the test's own SQL: scaffolding, not linted
        conn.execute(text("SELECT pg_advisory_lock(1)" if not store.is_sqlite else "SELECT 1"))
        conn.rollback()
    found = sqllint.collected()
    assert any(f.startswith("TEST RULE") and "sm_workflows" in f for f in found), found
    assert not any("advisory" in f for f in found)
    assert store._db.fast_ok(), "the lint turned the fast path off"


# -- compiling every statement the store builds, without a server -----------------------------


@pytest.fixture(scope="module")
def offline_stores() -> Iterator[list[Store]]:
    """Stores that never connect: CockroachDB on its own clock, PostgreSQL on a fixed clock
    (times become parameters instead of ``now()``)."""
    stores = [offline_store("cockroachdb"), offline_store("postgresql", clock=FixedClock())]
    yield stores
    for s in stores:
        s.dispose()


def test_every_store_statement_compiles_for_postgresql_and_cockroachdb(
    offline_stores: list[Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled: dict[str, list[str]] = {name: [] for name in statement_methods()}
    stuck: dict[str, list[str]] = {}
    problems: list[str] = []
    for store in offline_stores:
        for name in statement_methods():
            statements, errors = drive(store, name)
            stuck.setdefault(name, []).extend(errors)
            for statement in statements:
                for dialect_name, dialect in DIALECTS.items():
                    try:
                        sql = compile_for(statement, dialect)
                    except Exception as e:
                        problems.append(f"sql.{name} does not compile for {dialect_name}: {e}")
                        continue
                    compiled.setdefault(name, []).append(sql)
                    problems += [f"sql.{name} uses {p} ({dialect_name}): {sql}"
                                 for p in lint(sql)]
    problems += [f"sql.{name} built no statement (errors: {stuck[name]}); if it runs no SQL, "
                 "add it to NOT_SQL" for name, sqls in compiled.items() if not sqls]
    assert problems == []
    # The statements that matter most were among those compiled.
    assert any("FOR UPDATE SKIP LOCKED" in s for s in compiled["claim"])
    assert any(re.search(r"WITH u AS \s*\(UPDATE sm_workflows", s) for s in compiled["commit"])
    assert any(is_compare_and_set(s) for s in compiled["commit_in"])


def test_ddl_compiles_for_postgresql_and_cockroachdb() -> None:
    seen_partial = False
    for table in metadata.sorted_tables:
        for dialect_name, dialect in DIALECTS.items():
            ddl = [str(CreateTable(table).compile(dialect=dialect))]
            ddl += [str(CreateIndex(i).compile(dialect=dialect)) for i in table.indexes]
            for sql in ddl:
                assert lint(sql) == [], f"{table.name} ({dialect_name}): {sql}"
                seen_partial = seen_partial or "WHERE wake_at IS NOT NULL" in sql
    assert seen_partial, "the partial due index was not compiled"


@pytest.mark.parametrize("family", ["postgresql", "cockroachdb"])
def test_server_migrations_pass_the_lint(family: str) -> None:
    files = migration_files(family)
    assert files
    for version, path in files:
        text = "\n".join(ln for ln in path.read_text().splitlines()
                         if not ln.strip().startswith("--"))
        for statement in filter(str.strip, text.split(";")):
            assert lint(statement) == [], f"migration {version} ({path.name}): {statement}"


# -- the lint, on what a full workflow really sends ----------------------------------------------


def is_compare_and_set(sql: str) -> bool:
    """An UPDATE of sm_workflows conditioned on id, version and lease token."""
    pattern = (r"UPDATE sm_workflows SET .*WHERE .*sm_workflows\.id = .*"
               r"sm_workflows\.version = .*sm_workflows\.lease_token = ")
    return re.search(pattern, sql, re.S) is not None


def is_claim(sql: str) -> bool:
    """The statement that leases due rows: it counts an attempt up."""
    return re.search(r"UPDATE sm_workflows SET .*attempt=\(sm_workflows\.attempt \+", sql,
                     re.S) is not None


@attrs.frozen
class Drafted:
    text: str
    # How many times the step fails before it works; -1: until the test fixes it.
    failures: int = 0


@attrs.frozen
class Edited:
    text: str


@attrs.frozen
class Published:
    text: str


class Publishing(Machine):
    name = "portability_publishing"
    initial = Drafted
    terminal = (Published,)

    def __init__(self) -> None:
        self.broken = True

    @step(retry=RetryPolicy(max_attempts=2, initial_delay=0.02, jitter=0.0))
    def edit(self, state: Drafted, ctx: Context) -> Edited:
        if state.failures < 0 and self.broken:
            raise RuntimeError("editor unavailable")
        if ctx.attempt <= state.failures:
            raise RuntimeError("try again")
        return Edited(state.text.title())

    @step
    def publish(self, state: Edited, ctx: Context) -> Published:
        return Published(state.text)


def test_a_full_workflow_sends_only_portable_sql(store: Store) -> None:
    sent: list[str] = []
    built: list[ClauseElement] = []
    lock = threading.Lock()

    def on_cursor(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        with lock:
            sent.append(statement)

    def on_execute(conn: Any, clause: Any, *args: Any) -> None:
        if isinstance(clause, ClauseElement):
            with lock:
                built.append(clause)

    for engine in store.engines:
        event.listen(engine, "before_cursor_execute", on_cursor)
        event.listen(engine, "before_execute", on_execute)
    machine = Publishing()
    client = Client(store, [Publishing])
    try:
        cancelled = client.start(Publishing, Drafted("never"))
        client.cancel(cancelled)
        by_sql = client.start(Publishing, Drafted("by sql"))
        force_by_sql(store, by_sql, "Edited", {"text": "Forced By Sql"})
        by_api = client.start(Publishing, Drafted("by api"))
        client.force(by_api, Edited("Forced By Api"))
        with Worker(store, [machine], poll_interval=0.05, min_poll_interval=0.01):
            flaky = client.start(Publishing, Drafted("flaky", failures=1), key="flaky")
            parked = client.start(Publishing, Drafted("parked", failures=-1))
            assert client.wait(parked, timeout=10).status == "failed"
            machine.broken = False
            client.retry(parked)
            finished = [client.wait(w, timeout=10) for w in (flaky, parked, by_sql, by_api)]
    finally:
        for engine in store.engines:
            event.remove(engine, "before_cursor_execute", on_cursor)
            event.remove(engine, "before_execute", on_execute)

    assert [f.status for f in finished] == ["done"] * 4
    assert client.get(cancelled).status == "cancelled"
    kinds = {h.kind for w in (flaky, parked, by_sql) for h in client.history(w)}
    assert {"failed_attempt", "parked", "retry", "external_change"} <= kinds

    problems = [f"{p}: {s}" for s in sent for p in lint(s)]
    assert problems == []
    # The lint saw the statements that matter: the claim and the compare-and-set.
    claims = [s for s in sent if is_claim(s)]
    assert claims, "the lint never saw a claim"
    if not store.is_sqlite:
        assert all("FOR UPDATE SKIP LOCKED" in s for s in claims)
    assert any(is_compare_and_set(s) for s in sent), "the lint never saw a compare-and-set"

    # And everything the store built for PostgreSQL compiles for CockroachDB as well (SQLite has
    # dialect-specific statements of its own).
    crdb = DIALECTS["cockroachdb"]
    assert built
    for clause in [] if store.is_sqlite else built:
        sql = compile_for(clause, crdb)
        assert lint(sql) == [], sql
