"""Applying `migrations/*.sql` in order, recording each applied version in `sm_migrations`.

Migrations are plain SQL files, one folder per dialect family (`postgresql/` also serves
CockroachDB). They ship inside the wheel as `statemachine/migrations`; in a source checkout they are
read from the top-level `migrations/` folder.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, insert, select, text

from ._schema import migrations_table
from .errors import StoreError

if TYPE_CHECKING:
    from ._store._base import StoreBase as Store

__all__ = ["apply_migrations", "migration_files", "migrations_dir"]

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


def migration_files(dialect: str) -> list[tuple[str, Path]]:
    """(version, file) for `dialect`, in the order they apply."""
    family = "sqlite" if dialect == "sqlite" else "postgresql"
    files = []
    for path in sorted((migrations_dir() / family).iterdir()):
        match = _VERSION.match(path.name)
        if match:
            files.append((match.group(1), path))
    return files


def _statements(sql: str) -> list[str]:
    # Our migration files keep to one statement per ';'-terminated chunk and no ';' in literals.
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def apply_migrations(store: Store) -> list[str]:
    """Apply every migration not yet recorded; returns the versions applied now."""
    migrations_table.create(store.engine, checkfirst=True)

    def applied(conn: Connection) -> set[str]:
        return set(conn.execute(select(migrations_table.c.version)).scalars())

    done = store.transaction(applied)
    new: list[str] = []
    for version, path in migration_files(store.dialect):
        if version in done:
            continue

        def run(conn: Connection, version: str = version, path: Path = path) -> bool:
            # Re-check inside the transaction: another process may be migrating at the same time.
            if version in applied(conn):
                return False
            for statement in _statements(path.read_text()):
                conn.execute(text(statement))
            conn.execute(insert(migrations_table).values(version=version,
                                                         applied_at=store.clock.now()))
            return True

        if store.transaction(run):
            new.append(version)
    return new
