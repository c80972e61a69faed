"""The contract against a real CockroachDB cluster, when one is given (issue 10, item 7).

Set ``STATEMACHINE_TEST_COCKROACH_URL`` (e.g. ``cockroachdb+psycopg://root@127.0.0.1:26257/
defaultdb?sslmode=disable``) to run it: each test gets a database of its own on that cluster. It
checks what no PostgreSQL can: the CockroachDB migration set applied under
``autocommit_before_ddl`` builds the declared schema with its CockroachDB layout; the claim's plan
has no full scan; and workflows run to the end, with their retries, while the cluster injects
retry errors into transactions (``inject_retry_errors_enabled``). Without the variable the module
is skipped as a whole, with one line saying how to enable it: the only skip the suite allows, and
CI does not fail for it (no CockroachDB server can be installed on our machines).

Never run against a real cluster so far: see docs/how-to/postgresql-and-cockroachdb.md.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta

import attrs
import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import URL, make_url

from statemachine import Client, Context, Machine, RetryPolicy, Store, Worker, step
from statemachine._migrate import migration_family, migration_files
from statemachine._schema import metadata

COCKROACH_URL = os.environ.get("STATEMACHINE_TEST_COCKROACH_URL")
if not COCKROACH_URL:
    pytest.skip("no CockroachDB cluster: set STATEMACHINE_TEST_COCKROACH_URL="
                "cockroachdb+psycopg://root@HOST:26257/defaultdb?sslmode=disable to run the "
                "contract against one", allow_module_level=True)


def _with_options(url: URL, **settings: str) -> URL:
    options = " ".join(f"-c{k}={v}" for k, v in settings.items())
    current = str(url.query.get("options", ""))
    return url.update_query_dict({"options": f"{current} {options}".strip()})


@pytest.fixture
def cluster_database() -> Iterator[URL]:
    """A database of this test's own on the cluster (dropped at the end)."""
    admin_url = make_url(str(COCKROACH_URL))
    if admin_url.drivername == "cockroachdb":
        admin_url = admin_url.set(drivername="cockroachdb+psycopg")
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"sm_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield admin_url.set(database=name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} CASCADE"))
        admin.dispose()


@pytest.fixture
def cluster_store(cluster_database: URL) -> Iterator[Store]:
    """A migrated store on the cluster; the migrations ran with autocommit_before_ddl on."""
    url = _with_options(cluster_database, autocommit_before_ddl="on")
    store = Store(url.render_as_string(hide_password=False))
    store.migrate()
    yield store
    store.dispose()


def test_the_cockroachdb_migration_set_builds_the_declared_schema(cluster_store: Store) -> None:
    assert migration_family(cluster_store) == "cockroachdb"
    assert cluster_store.migrate() == []  # recorded, idempotent
    versions = [v for v, _ in migration_files("cockroachdb")]
    with cluster_store.connect() as conn:
        recorded = list(conn.execute(text("SELECT version FROM sm_migrations ORDER BY 1"))
                        .scalars())
        create = str(conn.execute(text("SELECT create_statement FROM [SHOW CREATE TABLE "
                                       "sm_workflows]")).scalar())
    assert recorded == versions
    assert "ttl_expiration_expression" in create, create
    assert "purge_after" in create, create
    assert re.search(r"INDEX sm_workflows_due .*USING HASH", create), create
    insp = inspect(cluster_store.engine)
    for table in metadata.sorted_tables:
        columns = {c["name"] for c in insp.get_columns(table.name)}
        assert {c.name for c in table.columns} <= columns, table.name
        indexes = {i["name"] for i in insp.get_indexes(table.name)}
        assert {i.name for i in table.indexes} <= indexes, table.name


def test_the_claim_plan_has_no_full_scan(cluster_store: Store) -> None:
    from tests.integration.golden_sql import compile_for, drive

    statements, _ = drive(cluster_store, "claim")
    sql = compile_for(statements[0], cluster_store.engine.dialect)
    params = {"p_machines": ["cluster_m"], "p_limit": 10, "p_token": "t", "p_owner": "o",
              "p_lease": timedelta(seconds=30), "param_1": ["ready", "running", "waiting"],
              "status": "running", "attempt_1": 1}
    with cluster_store.connect() as conn:
        plan = "\n".join(str(r[0]) for r in conn.exec_driver_sql(f"EXPLAIN {sql}", params))
    assert "FULL SCAN" not in plan.upper(), plan
    assert "sm_workflows_due" in plan, plan


@attrs.frozen
class Begun:
    n: int


@attrs.frozen
class Middle:
    n: int


@attrs.frozen
class Ended:
    n: int


class ClusterFlow(Machine):
    name = "cluster_flow"
    initial = Begun
    terminal = (Ended,)

    @step(retry=RetryPolicy(max_attempts=3, initial_delay=0.05))
    def first(self, state: Begun, ctx: Context) -> Middle:
        if ctx.attempt == 1 and state.n % 3 == 0:
            raise RuntimeError("fails once")
        return Middle(state.n)

    @step
    def second(self, state: Middle, ctx: Context) -> Ended:
        return Ended(state.n)


def test_workflows_finish_while_the_cluster_injects_retry_errors(cluster_database: URL) -> None:
    migrator = Store(cluster_database.render_as_string(hide_password=False))
    migrator.migrate()
    migrator.dispose()
    url = _with_options(cluster_database, inject_retry_errors_enabled="true")
    store = Store(url.render_as_string(hide_password=False))
    try:
        client = Client(store, [ClusterFlow])
        ids = [client.start(ClusterFlow, Begun(n)) for n in range(12)]
        with Worker(store, [ClusterFlow], poll_interval=0.1):
            finished = [client.wait(i, timeout=120) for i in ids]
        assert {f.status for f in finished} == {"done"}
        assert [f.state for f in finished] == [Ended(n) for n in range(12)]
        for i in ids:
            versions = [h.version for h in client.history(i)]
            assert versions == sorted(set(versions))  # nothing committed twice
        assert {h.kind for h in client.history(ids[0])} >= {"failed_attempt", "transition"}
    finally:
        store.dispose()
