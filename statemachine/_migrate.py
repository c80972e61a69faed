"""Applying `migrations/*.sql` in order, recording each applied version in `sm_migrations`.

Migrations are plain SQL files, one folder per family: `sqlite/`, `postgresql/` and
`cockroachdb/` (hash-sharded indexes, row-level TTL). The family is the dialect's, checked against
the server: the CockroachDB dialect talking to a PostgreSQL server (how the test suite exercises
that dialect without a CockroachDB) uses `postgresql/`. They ship inside the wheel as
`statemachine/migrations`; in a source checkout they are read from the top-level `migrations/`
folder. Every family has the same numbered files, so a version means the same tables everywhere.

Safe to run from every process at once, and again after an interruption at any point:

* every statement is idempotent (``CREATE ... IF NOT EXISTS``, ``ADD COLUMN IF NOT EXISTS``;
  SQLite has no ``ADD COLUMN IF NOT EXISTS``, so there the column is looked up first);
* each DDL statement runs in a transaction of its own, never mixed with DML (CockroachDB does not
  run DDL atomically with other statements);
* two processes creating the same object at the same moment can make PostgreSQL report a
  duplicate (``IF NOT EXISTS`` checks before it takes its lock): the statement is run again,
  and then finds the object;
* the version row is recorded last, with ``ON CONFLICT DO NOTHING``: whoever records it first
  wins, nobody fails.
"""

from __future__ import annotations

import itertools
import re
import time
from functools import partial
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.schema import CreateTable

from ._schema import migrations_table
from .errors import StoreError

if TYPE_CHECKING:
    from ._store import Store

__all__ = ["COCKROACH_GC_TTL_SECONDS", "apply_migrations", "cockroach_advice", "migration_family",
           "migration_files", "migration_statements", "migrations_dir"]

_VERSION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migrations_dir() -> Path:
    """The folder of migration files for this installation."""
    packaged = resources.files("statemachine") / "migrations"
    if packaged.is_dir():
        return Path(str(packaged))
    source = Path(__file__).resolve().parent.parent / "migrations"
    if source.is_dir():
        return source
    raise StoreError("statemachine's migrations folder is missing from this installation")


FAMILIES = ("sqlite", "postgresql", "cockroachdb")

# Deleted index keys of the queue table are scanned until garbage collection (4 hours by default):
# CockroachDB's guidance for queue-shaped tables is a short gc.ttlseconds.
COCKROACH_GC_TTL_SECONDS = 600


def cockroach_advice() -> str:
    """What `statemachine migrate` prints on CockroachDB: the zone configuration it recommends
    and does not apply itself (changing one needs the ZONECONFIG privilege, which the
    application's user should not need)."""
    return (f"recommended for the queue table (once, by a user with the ZONECONFIG privilege): "
            f"ALTER TABLE sm_workflows CONFIGURE ZONE USING gc.ttlseconds = "
            f"{COCKROACH_GC_TTL_SECONDS};")


def migration_family(store: Store) -> str:
    """The migration folder for `store`: its dialect's, except that the CockroachDB dialect on a
    PostgreSQL server (the test suite's `crdb-dialect` backend) takes `postgresql/`."""
    from ._database import is_cockroach_version

    if store.is_sqlite:
        return "sqlite"
    if store.dialect != "cockroachdb":
        return "postgresql"
    version = store.transaction(lambda conn: str(conn.execute(text("SELECT version()")).scalar()))
    return "cockroachdb" if is_cockroach_version(version) else "postgresql"


def migration_files(family: str) -> list[tuple[str, Path]]:
    """(version, file) for a family (`sqlite`, `postgresql`, `cockroachdb`), in the order they
    apply."""
    if family not in FAMILIES:
        raise ValueError(f"no migration family {family!r} (expected one of {FAMILIES})")
    files = []
    for path in sorted((migrations_dir() / family).iterdir()):
        match = _VERSION.match(path.name)
        if match:
            files.append((match.group(1), path))
    return files


def migration_statements(sql: str) -> list[str]:
    """The statements of a migration file, in order."""
    # Our migration files keep to one statement per ';'-terminated chunk and no ';' in literals.
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


# What a concurrent migrator creating the same object can make a statement fail with:
# unique_violation (PostgreSQL's catalog), duplicate_table, duplicate_object, duplicate_column.
_DUPLICATE_SQLSTATES = frozenset({"23505", "42P07", "42710", "42701"})
_ADD_COLUMN = re.compile(r"^ALTER\s+TABLE\s+(\w+)\s+ADD\s+COLUMN\s+(?!IF\s)(\w+)", re.I)


def apply_migrations(store: Store) -> list[str]:
    """Apply every migration not yet recorded; returns the versions this call recorded."""
    _run_ddl(store, str(CreateTable(migrations_table, if_not_exists=True)
                        .compile(dialect=store.engine.dialect)))
    done = store.transaction(
        lambda conn: set(conn.execute(select(migrations_table.c.version)).scalars()))
    recorded: list[str] = []
    for version, path in migration_files(migration_family(store)):
        if version in done:
            continue
        for statement in migration_statements(path.read_text()):
            _run_ddl(store, statement)
        if store.transaction(partial(_record, store, version)):
            recorded.append(version)
    return recorded


def _record(store: Store, version: str, conn: Connection) -> bool:
    upsert = sqlite_insert if store.is_sqlite else pg_insert
    inserted = conn.execute(
        upsert(migrations_table).values(version=version, applied_at=store.clock.now())
        .on_conflict_do_nothing(index_elements=[migrations_table.c.version])
        .returning(migrations_table.c.version)).first()
    return inserted is not None


def _run_ddl(store: Store, statement: str) -> None:
    """One DDL statement in a transaction of its own, made idempotent where the dialect cannot
    say so itself, and run again when a concurrent migrator created the same object."""
    add_column = _ADD_COLUMN.match(statement) if store.is_sqlite else None

    def run(conn: Connection) -> None:
        if add_column is not None:
            table, column = add_column.groups()
            if column in {c["name"] for c in inspect(conn).get_columns(table)}:
                return
        conn.execute(text(statement))

    for tries in itertools.count(1):
        try:
            store.transaction(run)
            return
        except StoreError as e:
            duplicate = e.sqlstate in _DUPLICATE_SQLSTATES or (
                store.is_sqlite and re.search(r"already exists|duplicate column", str(e)))
            if not duplicate or tries >= 5:
                raise StoreError(f"migration statement failed: {e}\n{statement}",
                                 sqlstate=e.sqlstate) from e
            time.sleep(0.05 * tries)
