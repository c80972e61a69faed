"""Test backends: every test that takes `store` (or `db_url`) runs on SQLite, on PostgreSQL, and on
PostgreSQL at SERIALIZABLE (as CockroachDB runs). Each test gets a fresh SQLite file or a fresh
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

settings.register_profile("fast", max_examples=30, deadline=None)
settings.register_profile("thorough", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("thorough" if os.environ.get("CI")
                                                               else "fast"))

PG_ADMIN_URL = os.environ.get("STATEMACHINE_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
IN_CI = bool(os.environ.get("CI"))
BACKENDS = ["sqlite", "postgres", "postgres-serializable"]
# For tests of PostgreSQL-only mechanisms (PL/pgSQL fault injection):
# @pytest.mark.parametrize("backend", POSTGRES_BACKENDS, indirect=True)
POSTGRES_BACKENDS = ["postgres", "postgres-serializable"]


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


def _pg_schema_url(database: URL, serializable: bool) -> tuple[URL, str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(database, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    options = f"-csearch_path={schema}"
    if serializable:
        options += " -cdefault_transaction_isolation=serializable"
    return database.update_query_dict({"options": options}), schema


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
        Store(url).migrate()
        yield url
        return
    database = request.getfixturevalue("pg_database")
    url, schema = _pg_schema_url(database, serializable=backend == "postgres-serializable")
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
