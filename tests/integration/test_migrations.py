"""Migrations are safe from every process at once, and re-runnable after an interruption at any
statement: four `statemachine migrate` processes started together all succeed, and for each
migration and each of its statements, a database where the migration stopped right after that
statement is completed by `migrate` into exactly the schema `_schema.py` declares."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select, text

from statemachine import Store
from statemachine._migrate import migration_family, migration_files, migration_statements
from statemachine._schema import migrations_table
from tests.conftest import _drop_schema, backend_schema_url
from tests.integration.test_store import assert_schema_matches

STATEMACHINE = Path(sys.executable).parent / "statemachine"


@contextmanager
def empty_database(backend: str, tmp_path: Path, request: pytest.FixtureRequest,
                   name: str = "empty") -> Iterator[str]:
    """The URL of a database with no tables at all."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / f'{name}.db'}"
        return
    database = request.getfixturevalue("pg_database")
    url, schema = backend_schema_url(database, backend)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        _drop_schema(database, schema)


def recorded_versions(store: Store) -> list[str]:
    with store.connect() as conn:
        return list(conn.execute(select(migrations_table.c.version)
                                 .order_by(migrations_table.c.version)).scalars())


def test_four_concurrent_migrate_processes_all_succeed(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    with empty_database(backend, tmp_path, request) as url:
        procs = [subprocess.Popen([str(STATEMACHINE), "--db", url, "migrate"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for _ in range(4)]
        outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, "\n".join(outputs)
        store = Store(url)
        try:
            versions = [v for v, _ in migration_files(migration_family(store))]
            assert recorded_versions(store) == versions  # each version recorded once
            assert_schema_matches(store)
            # Between them, the processes recorded every version exactly once.
            said = re.findall(r"\d{4}", " ".join(o for o in outputs if "applied" in o))
            assert sorted(said) == versions
        finally:
            store.dispose()


def interruption_points(dialect: str) -> list[tuple[int, int]]:
    """(migration index, statement index) after which a migration can be interrupted."""
    return [(m, k) for m, (_, path) in enumerate(migration_files(dialect))
            for k in range(len(migration_statements(path.read_text())))]


def test_a_migration_interrupted_after_any_statement_is_completed_by_migrate(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    dialect = "sqlite" if backend == "sqlite" else "postgresql"
    files = migration_files(dialect)
    points = interruption_points(dialect)
    assert len(points) >= 10, "fewer statements than the migrations hold"
    for m, k in points:
        with empty_database(backend, tmp_path, request, name=f"cut_{m}_{k}") as url:
            store = Store(url)
            try:
                with store.connect() as conn:
                    # Every earlier migration completed (and recorded) ...
                    migrations_table.create(conn)
                    for version, path in files[:m]:
                        for statement in migration_statements(path.read_text()):
                            conn.execute(text(statement))
                        conn.execute(migrations_table.insert().values(
                            version=version, applied_at=store.clock.now()))
                    # ... and this one stopped right after its statement k.
                    for statement in migration_statements(files[m][1].read_text())[:k + 1]:
                        conn.execute(text(statement))
                    conn.commit()
                applied = store.migrate()
                assert applied == [v for v, _ in files[m:]], f"cut after {files[m][0]}[{k}]"
                assert recorded_versions(store) == [v for v, _ in files]
                assert_schema_matches(store)
                assert store.migrate() == []
            finally:
                store.dispose()


@pytest.mark.parametrize("family", ["sqlite", "postgresql", "cockroachdb"])
def test_every_migration_statement_is_idempotent_ddl(family: str) -> None:
    for version, path in migration_files(family):
        for statement in migration_statements(path.read_text()):
            head = " ".join(statement.split()[:8]).upper()
            assert re.match(r"(CREATE (UNIQUE )?(TABLE|INDEX)|ALTER TABLE|DROP INDEX)", head), (
                f"{version}: only DDL belongs in a migration: {statement}")
            if head.startswith(("CREATE", "DROP")):
                assert re.match(r"(CREATE (UNIQUE )?(TABLE|INDEX)|DROP INDEX) IF (NOT )?EXISTS",
                                head), f"{version}: {statement}"
            elif " SET (" in statement:  # CockroachDB storage parameters: setting them is
                assert family == "cockroachdb", statement  # idempotent by itself
            elif family == "sqlite":  # SQLite cannot say it: the migrator looks the column up
                assert "ADD COLUMN" in head, f"{version}: {statement}"
            else:
                assert re.search(r"ADD (COLUMN|CONSTRAINT) IF NOT EXISTS", head), (
                    f"{version}: {statement}")


def test_every_family_has_the_same_versions() -> None:
    """A version means the same tables everywhere: every family has every numbered file."""
    versions = {family: [v for v, _ in migration_files(family)]
                for family in ("sqlite", "postgresql", "cockroachdb")}
    assert versions["sqlite"] == versions["postgresql"] == versions["cockroachdb"], versions
