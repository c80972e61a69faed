"""Every statement the engine sends, compiled for SQLite, PostgreSQL and CockroachDB, as golden
files under docs/reference/sql/ (one per dialect): a reader sees the SQL, a reviewer sees every
change to it. `tests/integration/test_golden_sql.py` regenerates them in memory and diffs.

The statements are found by driving each method of ``store.sql`` with example arguments made
from its type hints, against a stand-in connection that records statements instead of running
them (answering with no row, then with one row, so both branches build their SQL): no server is
needed, and a statement method added later is covered without touching this file.

Regenerate the files after changing a statement::

    python -m tests.integration.golden_sql --write
"""

from __future__ import annotations

import inspect
import itertools
import sys
import types
import typing
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy_cockroachdb.psycopg import CockroachDBDialect_psycopg

from statemachine import Store
from statemachine._store import Change
from statemachine._store._statements import Statements

__all__ = ["DIALECTS", "GOLDEN_DIR", "NOT_SQL", "REGENERATE", "compile_for", "drive",
           "golden_files", "offline_store", "statement_methods"]

DIALECTS: dict[str, Dialect] = {
    "sqlite": sqlite.dialect(),
    "postgresql": postgresql.psycopg.dialect(),
    "cockroachdb": CockroachDBDialect_psycopg(),
}
GOLDEN_DIR = Path(__file__).resolve().parents[2] / "docs" / "reference" / "sql"
REGENERATE = "python -m tests.integration.golden_sql --write"

class Unbuildable(Exception):
    """No example value for this type."""


WHEN = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
SOME_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")
OTHER_ID = uuid.UUID("00000000-0000-4000-8000-000000000002")


class FixedClock:
    def now(self) -> datetime:
        return WHEN


class FakeRow:
    """A row whose every column is 1: enough for the store's code to carry on past a read."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return 1

    def __getitem__(self, index: Any) -> Any:
        return 1

    def __iter__(self) -> Iterator[Any]:
        return iter((1, 1, 1))


class FakeResult:
    """What the stand-in connection returns: no rows, or one `FakeRow`."""

    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows
        self.rowcount = len(rows)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)

    def all(self) -> list[Any]:
        return list(self.rows)

    fetchall = all

    def first(self) -> Any:
        return self.rows[0] if self.rows else None

    one_or_none = fetchone = first

    def one(self) -> Any:
        return self.rows[0] if self.rows else FakeRow()

    def scalar(self) -> Any:
        return 1 if self.rows else None

    scalar_one_or_none = scalar

    def scalar_one(self) -> Any:
        return 1

    def scalars(self) -> FakeResult:
        return FakeResult([1 for _ in self.rows])


class RecordingConnection:
    """Stands in for a `Connection`: records each statement and answers with `FakeResult`s."""

    def __init__(self, rows: bool) -> None:
        self.rows = rows
        self.statements: list[ClauseElement | str] = []

    def execute(self, statement: Any, parameters: Any = None, **_: Any) -> FakeResult:
        self.statements.append(statement)
        return FakeResult([FakeRow()] if self.rows else [])

    def exec_driver_sql(self, statement: str, parameters: Any = None, **_: Any) -> FakeResult:
        return self.execute(statement)

    @contextmanager
    def begin(self) -> Iterator[RecordingConnection]:
        yield self

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass


def examples(tp: Any, conn: RecordingConnection) -> list[Any]:
    """Example values of type `tp`, the richest first (set, non-empty, true), so that calls with
    each of them take the store's different branches."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is type(None) or tp is None:
        return [None]
    if origin in (typing.Union, types.UnionType):
        out = [v for a in args if a is not type(None) for v in examples(a, conn)]
        return out + ([None] if type(None) in args else [])
    if origin is typing.Literal:
        return list(args)
    if tp is Any or tp is object:
        return [{"amount": 1}]
    if tp is bool:
        return [True, False]
    if tp in (int, float, str, uuid.UUID, datetime, timedelta):
        return [{int: 1, float: 0.5, str: "x", uuid.UUID: SOME_ID, datetime: WHEN,
                 timedelta: timedelta(seconds=1)}[tp]]
    if tp is Connection:
        return [conn]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return [(examples(args[0], conn)[0],), ()]
        return [tuple(examples(a, conn)[0] for a in args)]
    if origin in (list, set, frozenset, Sequence, typing.Sequence):
        if args and args[0] is Change:
            # Changes of two workflows, of the sticky shape: what a grouped commit sends.
            sticky = examples(Change, conn)[2]
            return [[sticky, attrs.evolve(sticky, workflow_id=OTHER_ID)]]
        return [[examples(args[0], conn)[0]]] if args else [[1]]
    if origin in (dict, Mapping) or tp is dict:
        return [{"k": 1}]
    if origin is Callable:
        return [lambda *a, **k: False]
    if isinstance(tp, type) and attrs.has(tp):
        return attrs_examples(tp, conn)
    raise Unbuildable(f"no example value for {tp!r}")


def attrs_examples(cls: type, conn: RecordingConnection) -> list[Any]:
    """An instance with every field set, and one with only the required fields."""
    hints = typing.get_type_hints(cls)
    fields = attrs.fields(cls)
    full = cls(**{f.alias: examples(hints[f.name], conn)[0] for f in fields})
    required = cls(**{f.alias: examples(hints[f.name], conn)[0] for f in fields
                      if f.default is attrs.NOTHING})
    out = [full, required]
    if cls is Change:
        # The row's next wake-up is decided by these three, in this order of precedence.
        out += [attrs.evolve(required, keep_lease=1.0), attrs.evolve(required, wake_after=1.0),
                attrs.evolve(required, wake_at=WHEN),
                # Data None: the row's data is kept as stored (parking a row that did not decode).
                attrs.evolve(required, data=None)]
    return out


# Statement methods that run no SQL of their own.
NOT_SQL = {"subscribe", "unsubscribe", "notify", "transaction", "now", "later", "watch",
           "unwatch", "finished"}


def statement_methods() -> list[str]:
    """The public methods of ``store.sql`` that build SQL, sorted."""
    return sorted(n for n, f in inspect.getmembers(Statements, inspect.isfunction)
                  if not n.startswith("_") and n not in NOT_SQL)


@contextmanager
def _patched(obj: Any, **values: Any) -> Iterator[None]:
    saved = {k: obj.__dict__[k] for k in values if k in obj.__dict__}
    for k, v in values.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k in values:
            if k in saved:
                setattr(obj, k, saved[k])
            else:
                delattr(obj, k)


def drive(store: Store, name: str) -> tuple[list[ClauseElement | str], list[str]]:
    """Call ``store.sql.<name>`` with example arguments, against connections that return no
    rows and one row; returns the statements it built and the errors it stopped at."""
    method = getattr(store.sql, name)
    hints = typing.get_type_hints(getattr(Statements, name))
    params = [p for p in inspect.signature(method).parameters.values()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    statements: list[ClauseElement | str] = []
    errors: list[str] = []
    db = store.sql._db
    for rows in (False, True):
        conn = RecordingConnection(rows)

        def run(fn: Callable[[Any], Any], conn: RecordingConnection = conn) -> Any:
            return fn(conn)

        # The psycopg fast path runs these same statements, compiled: record them here instead.
        with _patched(db, attempt_single=run, attempt_transaction=run, fast_path=None):
            try:
                choices = {p.name: examples(hints[p.name], conn) for p in params}
            except Unbuildable as e:
                return [], [str(e)]
            for i in range(max([len(c) for c in choices.values()], default=1)):
                kwargs = {k: c[i % len(c)] for k, c in choices.items()}
                try:
                    result = method(**kwargs)
                    if isinstance(result, Iterator):  # a generator builds its SQL when drawn
                        list(itertools.islice(result, 3))
                except Exception as e:
                    errors.append(f"{type(e).__name__}: {e}")
        statements += conn.statements
    return statements, errors


def compile_for(statement: ClauseElement | str, dialect: Dialect) -> str:
    """`statement` as the SQL text `dialect` sends."""
    if isinstance(statement, str):
        return statement
    return str(statement.compile(dialect=dialect))


def offline_store(dialect: str, *, clock: Any = None) -> Store:
    """A store that never connects (nothing listens on port 1; SQLite files are opened only
    when used), on the server's clock unless `clock` is given."""
    url = {"sqlite": "sqlite:///never-opened-golden-sql.db",
           "postgresql": "postgresql+psycopg://postgres@127.0.0.1:1/postgres",
           "cockroachdb": "cockroachdb+psycopg://root@127.0.0.1:1/defaultdb"}[dialect]
    return Store(url, clock=clock if clock is not None or dialect != "sqlite" else FixedClock())


def golden_files() -> dict[str, str]:
    """The text of each golden file (by file name), generated now."""
    out: dict[str, str] = {}
    for dialect_name, dialect in DIALECTS.items():
        store = offline_store(dialect_name)
        lines = [f"-- Every statement statemachine's engine sends to {dialect_name}, by the",
                 "-- method of store.sql that sends it (statements numbered in the order it",
                 "-- builds them; values are bind parameters). Generated: do not edit; run",
                 f"--     {REGENERATE}", ""]
        try:
            for name in statement_methods():
                seen: list[str] = []
                statements, _ = drive(store, name)
                for statement in statements:
                    sql = compile_for(statement, dialect).strip()
                    if sql not in seen:
                        seen.append(sql)
                for n, sql in enumerate(seen, 1):
                    lines += [f"-- name: {name}#{n}", sql.rstrip() + ";", ""]
        finally:
            store.dispose()
        out[f"{dialect_name}.sql"] = "\n".join(lines).rstrip() + "\n"
    return out


def main(argv: list[str]) -> int:
    """``--write``: regenerate the golden files; without it, report which differ."""
    files = golden_files()
    differ = [n for n, text in files.items()
              if not (GOLDEN_DIR / n).is_file() or (GOLDEN_DIR / n).read_text() != text]
    if "--write" in argv:
        GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (GOLDEN_DIR / name).write_text(text)
        print(f"wrote {', '.join(sorted(files))} in {GOLDEN_DIR}")
        return 0
    for name in differ:
        print(f"{GOLDEN_DIR / name} differs from the statements the store builds")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
