"""The CockroachDB migration set builds the schema `_schema.py` declares, with CockroachDB's layout
on top (hash-sharded indexes where keys are monotonic, the due index storing what the claim's scan
reads, row-level TTL on `purge_after`, cascading foreign keys), checked without a server.

No CockroachDB server can run here, so the DDL is read, not executed. No SQL parser we could use
knows CockroachDB's DDL extensions (``USING HASH``, ``STORING``, TTL storage parameters,
``ADD CONSTRAINT IF NOT EXISTS``): sqlglot and sqlparse would read them as opaque text, pglast
(PostgreSQL's own parser) rejects them. So `replay` is a small, strict reader of the house format
our migration files keep (one statement per ``;``, one column per line in CREATE TABLE): every
statement must match one of its shapes exactly, and any statement it cannot read fails the test
naming the statement, so nothing in a migration goes unchecked. The reader is tested on the
PostgreSQL set too, against the schema PostgreSQL really builds (`test_the_reader_agrees_with_
postgresql`), so a misreading shows up where it can be compared with a server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from click.testing import CliRunner
from sqlalchemy_cockroachdb.psycopg import CockroachDBDialect_psycopg

from statemachine import Store
from statemachine import _cli as cli_module
from statemachine._cli import cli
from statemachine._migrate import COCKROACH_GC_TTL_SECONDS, migration_files, migration_statements
from tests.conftest import POSTGRES_BACKENDS
from tests.integration.golden_sql import compile_for, drive, offline_store
from tests.integration.test_store import (
    TYPE_FAMILIES,
    actual_schema,
    declared_schema,
    predicate,
)

NAME = r"[a-z_][a-z0-9_]*"


@attrs.define
class Table:
    columns: dict[str, tuple[str, bool]] = attrs.field(factory=dict)
    primary_key: tuple[list[str], str | None] = ([], None)
    indexes: dict[str, tuple[list[str], bool, str | None]] = attrs.field(factory=dict)
    hashed: set[str] = attrs.field(factory=set)
    storing: dict[str, list[str]] = attrs.field(factory=dict)
    foreign_keys: dict[str, tuple[str, str, str, str]] = attrs.field(factory=dict)
    storage: dict[str, str] = attrs.field(factory=dict)


def _family(sql_type: str) -> str:
    spelled = re.sub(r"\(.*?\)", "", sql_type).strip().upper()
    spelled = {"TIMESTAMPTZ": "TIMESTAMP WITH TIME ZONE", "DATETIME": "DATETIME"}.get(spelled,
                                                                                    spelled)
    if spelled not in TYPE_FAMILIES:
        pytest.fail(f"the reader knows no type {sql_type!r}: add it to TYPE_FAMILIES")
    return TYPE_FAMILIES[spelled]


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",")]


def _create_table(statement: str, tables: dict[str, Table]) -> None:
    head, _, body = statement.partition("(")
    name = re.fullmatch(rf"CREATE TABLE IF NOT EXISTS ({NAME})\s*", head)
    if not name or not body.rstrip().endswith(")"):
        pytest.fail(f"the reader cannot read this migration statement (teach it): {statement}")
    table = tables.setdefault(name.group(1), Table())
    for line in body.rstrip()[:-1].splitlines():
        line = line.strip().rstrip(",")
        if not line:
            continue
        pk = re.fullmatch(rf"CONSTRAINT ({NAME}) PRIMARY KEY \(([^)]*)\)", line)
        if pk:
            table.primary_key = (_names(pk.group(2)), pk.group(1))
            continue
        column = re.fullmatch(
            rf"({NAME})\s+([A-Z]+(?:\(\d+\))?)\s+(NOT NULL|NULL)"
            r"(?:\s+DEFAULT\s+(?:'[^']*'|[a-z_]+\(\)|true|false|\d+))?(\s+PRIMARY KEY)?", line)
        if not column:
            pytest.fail(f"the reader cannot read this column of {name.group(1)}: {line!r}")
        col, sql_type, null, primary = column.groups()
        table.columns[col] = (_family(sql_type), null == "NULL")
        if primary:
            table.primary_key = ([col], None)


def _statement(statement: str, tables: dict[str, Table]) -> None:
    """Apply one migration statement to `tables`, or fail saying it cannot be read."""
    s = " ".join(statement.split())
    if s.startswith("CREATE TABLE"):
        _create_table(statement, tables)
        return
    add = re.fullmatch(rf"ALTER TABLE ({NAME}) ADD COLUMN (?:IF NOT EXISTS )?({NAME}) "
                       r"([A-Z]+) (NOT NULL|NULL)"
                       r"(?: DEFAULT (?:'[^']*'|[a-z_]+\(\)|true|false|\d+))?", s)
    if add:
        table, col, sql_type, null = add.groups()
        tables[table].columns[col] = (_family(sql_type), null == "NULL")
        return
    index = re.fullmatch(
        rf"CREATE (UNIQUE )?INDEX IF NOT EXISTS ({NAME}) ON ({NAME}) \(([^)]*)\)"
        r"( USING HASH)?(?: STORING \(([^)]*)\))?(?: WHERE (.+))?", s)
    if index:
        unique, name, table, cols, hashed, storing, where = index.groups()
        t = tables[table]
        t.indexes[name] = (_names(cols), bool(unique), predicate(where))
        t.hashed.discard(name)
        t.storing.pop(name, None)
        if hashed:
            t.hashed.add(name)
        if storing:
            t.storing[name] = _names(storing)
        return
    drop = re.fullmatch(rf"DROP INDEX IF EXISTS ({NAME})@({NAME})", s)
    if drop:
        table, name = drop.groups()
        tables[table].indexes.pop(name, None)
        tables[table].hashed.discard(name)
        tables[table].storing.pop(name, None)
        return
    fk = re.fullmatch(
        rf"ALTER TABLE ({NAME}) ADD CONSTRAINT IF NOT EXISTS ({NAME}) FOREIGN KEY \(({NAME})\) "
        rf"REFERENCES ({NAME}) \(({NAME})\) ON DELETE (CASCADE)(?: NOT VALID)?", s)
    if fk:
        table, name, col, target, target_col, action = fk.groups()
        tables[table].foreign_keys[name] = (col, target, target_col, action)
        return
    storage = re.fullmatch(rf"ALTER TABLE ({NAME}) SET \((.+)\)", s)
    if storage:
        for key, value in re.findall(r"(\w+) = '((?:[^']|'')*)'", storage.group(2)):
            tables[storage.group(1)].storage[key] = value.replace("''", "'")
        return
    pytest.fail(f"the reader cannot read this migration statement (teach it): {statement}")


def replay(family: str) -> dict[str, Table]:
    """The tables a family's migrations build, read from their DDL."""
    tables: dict[str, Table] = {}
    for _, path in migration_files(family):
        for statement in migration_statements(path.read_text()):
            _statement(statement, tables)
    return tables


def as_compared(tables: dict[str, Table]) -> dict[str, Any]:
    """`tables` in the shape `declared_schema` gives."""
    return {name: {"columns": t.columns, "primary_key": t.primary_key, "indexes": t.indexes}
            for name, t in tables.items()}


@pytest.fixture(scope="module")
def cockroach() -> Iterator[Store]:
    store = offline_store("cockroachdb")
    yield store
    store.dispose()


@pytest.fixture(scope="module")
def crdb_tables() -> dict[str, Table]:
    return replay("cockroachdb")


def test_the_cockroachdb_migrations_build_the_declared_schema(
        cockroach: Store, crdb_tables: dict[str, Table]) -> None:
    declared = declared_schema(cockroach)
    declared.pop("sm_migrations")  # made by the migrator itself, not by a migration file
    found = as_compared(crdb_tables)
    assert sorted(found) == sorted(declared), "tables differ"
    for name in declared:
        assert found[name] == declared[name], f"table {name} differs from schema.py"


@pytest.mark.parametrize("backend", POSTGRES_BACKENDS, indirect=True)
def test_the_reader_agrees_with_postgresql(store: Store) -> None:
    """What the reader makes of the PostgreSQL set is what PostgreSQL builds from it."""
    declared = declared_schema(store)
    real = actual_schema(store, declared)
    real.pop("sm_migrations")
    assert as_compared(replay("postgresql")) == real


def test_the_reader_refuses_what_it_cannot_read() -> None:
    with pytest.raises(pytest.fail.Exception, match="cannot read this migration statement"):
        _statement("ALTER TABLE sm_workflows RENAME COLUMN key TO start_key", {})
    with pytest.raises(pytest.fail.Exception, match="cannot read this column"):
        _statement("CREATE TABLE IF NOT EXISTS t (\n    id UUID NOT NULL REFERENCES x (id)\n)",
                   {})


def test_monotonic_keys_lead_no_plain_index(crdb_tables: dict[str, Table]) -> None:
    """An index led by a time that grows with the clock is a moving hot spot on CockroachDB:
    every such index is hash-sharded (primary keys are random UUIDs or lead with one)."""
    monotonic = {"wake_at", "created_at", "updated_at", "purge_after", "finished_at",
                 "started_at", "consumed_at", "expires_at", "last_tick", "applied_at"}
    seen = []
    for name, table in crdb_tables.items():
        assert table.primary_key[0][0] not in monotonic, name
        for index, (columns, _, _) in table.indexes.items():
            if columns[0] in monotonic:
                seen.append(index)
                assert index in table.hashed, f"{name}.{index} leads with {columns[0]}"
    assert sorted(seen) == ["sm_events_unnoticed", "sm_workflows_due", "sm_workflows_purge"]


def test_the_due_index_covers_what_the_claim_scans(
        cockroach: Store, crdb_tables: dict[str, Table]) -> None:
    """The claim's scan (its locked subquery) reads only columns the due index holds, so it
    never joins back to the table; the claim's UPDATE then writes those rows by primary key."""
    dialect = CockroachDBDialect_psycopg()
    statements, errors = drive(cockroach, "claim")
    assert statements, errors
    sql = compile_for(statements[0], dialect)
    scan = re.search(r"\(SELECT (.*?) FOR UPDATE SKIP LOCKED\)", sql, re.S)
    assert scan, sql
    read = set(re.findall(r"\bsm_workflows\.(\w+)", scan.group(1)))
    assert {"wake_at", "status", "machine"} <= read  # (what the claim filters and orders on)
    due = crdb_tables["sm_workflows"]
    columns, _, where = due.indexes["sm_workflows_due"]
    held = {*columns, *due.storing.get("sm_workflows_due", []), *crdb_tables[
        "sm_workflows"].primary_key[0]}
    assert read <= held, f"add {sorted(read - held)} to the due index's STORING"
    assert where == "wake_at is not null"
    assert "sm_workflows_due" in due.hashed


def test_finished_workflows_expire_by_row_level_ttl_with_their_history_events_and_children(
        crdb_tables: dict[str, Table]) -> None:
    storage = crdb_tables["sm_workflows"].storage
    assert re.fullmatch(r"purge_after \+ INTERVAL '\d+ days'",
                        storage["ttl_expiration_expression"]), storage
    assert crdb_tables["sm_workflows"].columns["purge_after"] == ("timestamptz", True)
    cascades = {(t, *fk) for t, table in crdb_tables.items()
                for fk in table.foreign_keys.values()}
    assert cascades == {
        ("sm_history", "workflow_id", "sm_workflows", "id", "CASCADE"),
        ("sm_events", "workflow_id", "sm_workflows", "id", "CASCADE"),
        ("sm_workflows", "parent_id", "sm_workflows", "id", "CASCADE"),
    }
    # A cascade finds the rows to delete through an index led by the referencing column.
    for table, column, *_ in cascades:
        leads = [cols[0] for cols, _, where in crdb_tables[table].indexes.values()
                 if where is None or column in (where or "")]
        assert column in leads or crdb_tables[table].primary_key[0][0] == column, (table, column)



def test_migrate_prints_the_recommended_gc_ttl_on_cockroachdb_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`statemachine migrate` prints the zone configuration it recommends (and does not apply:
    it needs the ZONECONFIG privilege) when the database is CockroachDB, and only then."""
    db = f"sqlite:///{tmp_path / 'sm.db'}"
    runner = CliRunner()
    plain = runner.invoke(cli, ["--db", db, "migrate"])
    assert plain.exit_code == 0, plain.output
    assert "gc.ttlseconds" not in plain.output
    monkeypatch.setattr(cli_module, "migration_family", lambda store: "cockroachdb")
    advised = runner.invoke(cli, ["--db", db, "migrate"])
    assert advised.exit_code == 0, advised.output
    assert advised.stdout.splitlines() == [
        "schema is up to date",
        "recommended for the queue table (once, by a user with the ZONECONFIG privilege): "
        f"ALTER TABLE sm_workflows CONFIGURE ZONE USING gc.ttlseconds = "
        f"{COCKROACH_GC_TTL_SECONDS};"]
    assert COCKROACH_GC_TTL_SECONDS == 600
