"""Test backends: every test that takes `store` (or `db_url`) runs on SQLite, on PostgreSQL, on
PostgreSQL at SERIALIZABLE (as CockroachDB runs), and through the CockroachDB dialect
(``cockroachdb+psycopg://``, psycopg's `CrdbConnection`, our CockroachDB-gated code) against the
same PostgreSQL at SERIALIZABLE (`crdb-dialect`: no CockroachDB server can be installed here; a real
cluster is tested by tests/integration/test_cockroach_cluster.py when
``STATEMACHINE_TEST_COCKROACH_URL`` is set). Each test gets a fresh SQLite file or a fresh
PostgreSQL schema inside a database made for this test session, so no run sees another's rows.

PostgreSQL is found at ``STATEMACHINE_TEST_POSTGRES_URL`` (default: postgres@127.0.0.1:5432).
When it cannot be reached, its tests are skipped locally, and fail when ``CI`` is set: CI never
skips them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from statemachine import Store
from statemachine.testing import FakeClock
from tests import sqllint

settings.register_profile("fast", max_examples=30, deadline=None)
settings.register_profile("thorough", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("thorough" if os.environ.get("CI")
                                                               else "fast"))

# Every statement the library sends in this process is linted for CockroachDB (tests/sqllint.py).
sqllint.install()

PG_ADMIN_URL = os.environ.get("STATEMACHINE_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
IN_CI = bool(os.environ.get("CI"))
BACKENDS = ["sqlite", "postgres", "postgres-serializable", "crdb-dialect"]
# The end-to-end tests (tests/acceptance: processes, the CLI, whole machines) run on three: at
# that level postgres-serializable differs from crdb-dialect only by the dialect, which the
# latter adds, so a fourth run would repeat the third. The engine's own tests run on all four.
ACCEPTANCE_BACKENDS = ["sqlite", "postgres", "crdb-dialect"]
# For tests of PostgreSQL-only mechanisms (PL/pgSQL fault injection):
# @pytest.mark.parametrize("backend", POSTGRES_BACKENDS, indirect=True)
POSTGRES_BACKENDS = ["postgres", "postgres-serializable", "crdb-dialect"]
# The backends at SERIALIZABLE (CockroachDB's default, and what the crdb-dialect backend runs at).
SERIALIZABLE_BACKENDS = ("postgres-serializable", "crdb-dialect")


@pytest.fixture(autouse=True)
def sql_lint() -> Iterator[None]:
    """Fail the test during which the library sent SQL that CockroachDB cannot run (well)."""
    sqllint.collected()  # (what threads left over from an earlier test sent is not this test's)
    yield
    found = sqllint.collected()
    if found:
        pytest.fail("the library sent SQL that CockroachDB cannot run (well); see "
                    "tests/sqllint.py:\n" + "\n".join(dict.fromkeys(found)), pytrace=False)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[URL]:
    """A database created for this test session (dropped at the end)."""
    admin = make_url(PG_ADMIN_URL)
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as e:
        engine.dispose()
        message = f"PostgreSQL unreachable at {admin.render_as_string()}: {e}"
        if IN_CI:
            pytest.fail(f"{message} (CI must run the PostgreSQL tests)", pytrace=False)
        pytest.skip(message)
    name = f"sm_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.set(database=name)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def _pg_schema_url(database: URL, serializable: bool, *,
                   cockroach_dialect: bool = False) -> tuple[URL, str]:
    """A fresh schema in `database` and the URL whose connections use it; `cockroach_dialect`:
    the URL goes through the CockroachDB dialect (``cockroachdb+psycopg://``)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(database, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    options = f"-csearch_path={schema}"
    if serializable:
        options += " -cdefault_transaction_isolation=serializable"
    url = database.update_query_dict({"options": options})
    if cockroach_dialect:
        url = url.set(drivername="cockroachdb+psycopg")
    return url, schema


def backend_schema_url(database: URL, backend: str) -> tuple[URL, str]:
    """`_pg_schema_url` for one of the PostgreSQL-served backends."""
    return _pg_schema_url(database, serializable=backend in SERIALIZABLE_BACKENDS,
                          cockroach_dialect=backend == "crdb-dialect")


def _drop_schema(database: URL, schema: str) -> None:
    engine = create_engine(database, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend this test runs on."""
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, migrated database URL (usable from subprocesses too)."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'sm.db'}"
        with Store(url) as store:
            store.migrate()
        yield url
        return
    database = request.getfixturevalue("pg_database")
    url, schema = backend_schema_url(database, backend)
    store = Store(url.render_as_string(hide_password=False))
    store.migrate()
    store.dispose()
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        _drop_schema(database, schema)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A `Store` on a fresh, migrated database of the test's backend."""
    s = Store(db_url)
    yield s
    s.dispose()


@pytest.fixture
def clock() -> FakeClock:
    """The test's time (a module that needs another start overrides this fixture)."""
    return FakeClock()


@pytest.fixture
def faked(db_url: str, clock: FakeClock) -> Iterator[Store]:
    """A store on the test's database whose time is `clock`."""
    store = Store(db_url, clock=clock)
    yield store
    store.dispose()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The async variants of the engine tests (`handlers`) run on SQLite and PostgreSQL, not on
    the two SERIALIZABLE backends: the async driver changes how a handler is called and
    awaited, not one statement the engine sends, and the sync variants cover those statements
    at SERIALIZABLE. Deselected (counted as such in the summary), not skipped."""
    kept, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("handlers") == "async" and params.get("backend") in SERIALIZABLE_BACKENDS:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(params=["sync", "async"])
def handlers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which handlers the test's workers run: its machines as written on the thread `Worker`,
    or the same machines with ``async def`` handlers on an `AsyncWorker` (see
    `tests/async_handlers.py`): the module's `Worker` is swapped for the latter, and its
    `APP_MODULE` (the module worker processes load machines from) for one of asyncified
    machines. Use it with
    ``pytestmark = pytest.mark.usefixtures("handlers")`` or as a test's argument."""
    if request.param == "async":
        from tests.async_handlers import AsyncHandlersWorker

        if hasattr(request.module, "Worker"):
            monkeypatch.setattr(request.module, "Worker", AsyncHandlersWorker)
        if hasattr(request.module, "APP_MODULE"):  # worker processes: `--app MODULE:Machine`
            monkeypatch.setattr(request.module, "APP_MODULE", "tests.async_machines")
    return str(request.param)
