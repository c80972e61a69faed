"""Errors for people: what the `statemachine` command prints when a command fails.

Every failure becomes one ``error: ...`` line that says what was wrong and what to do: a URL that
is not one, a database statemachine does not run on or whose driver is missing, a server that
cannot be reached, a database or SQLite file that does not exist, a schema not migrated yet.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from .errors import InvalidArgument, StateMachineError

__all__ = ["check_url", "describe", "sqlite_file"]

SUPPORTED = ("sqlite", "postgresql", "cockroachdb")
EXAMPLES = "sqlite:///path/to/file.db or postgresql+psycopg://user@host:5432/dbname"
# What a driver module is called, for the drivers statemachine is used with.
_DRIVER_MODULES = {"psycopg": "psycopg", "psycopg2": "psycopg2", "asyncpg": "asyncpg",
                   "pysqlite": "sqlite3", "pg8000": "pg8000"}


def _shown(url: URL | str) -> str:
    if isinstance(url, str):
        return url
    return url.render_as_string(hide_password=True)


def check_url(text: str) -> URL:
    """`text` parsed as a database URL statemachine can use; `InvalidArgument` saying why not."""
    try:
        url = make_url(text)
    except ArgumentError:
        raise InvalidArgument(f"--db {text}: not a database URL (expected e.g. {EXAMPLES})") \
            from None
    backend = url.get_backend_name()
    if backend == "postgres":
        backend = "postgresql"
    if backend not in SUPPORTED:
        raise InvalidArgument(f"--db {_shown(url)}: statemachine does not run on {backend!r} "
                              f"(it runs on {', '.join(SUPPORTED)}; e.g. {EXAMPLES})")
    if backend == "cockroachdb" and importlib.util.find_spec("sqlalchemy_cockroachdb") is None:
        raise InvalidArgument(f"--db {_shown(url)}: the CockroachDB dialect is not installed "
                              "(pip install 'statemachine[cockroachdb]')")
    driver = url.get_driver_name()
    module = _DRIVER_MODULES.get(driver, driver)
    if driver and backend != "sqlite" and importlib.util.find_spec(module) is None:
        raise InvalidArgument(f"--db {_shown(url)}: the driver {driver!r} is not installed "
                              f"(statemachine ships psycopg: use {backend}+psycopg://...)")
    return url


def sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite URL (resolved), or None for other databases."""
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).expanduser().resolve()


def _texts(error: BaseException) -> list[str]:
    """The messages of `error` and its causes, outermost first."""
    found: list[str] = []
    seen: BaseException | None = error
    for _ in range(10):
        if seen is None:
            break
        orig = getattr(seen, "orig", None)
        found.append(str(orig if orig is not None else seen))
        seen = seen.__cause__ or seen.__context__
    return found


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else text


def describe(error: BaseException, db: str) -> str:
    """One line (without ``error:``) telling a person what went wrong and what to do."""
    if isinstance(error, NoSuchModuleError | ArgumentError):
        try:
            check_url(db)
        except InvalidArgument as e:
            return str(e)
        return f"--db {db}: {_first_line(str(error))}"
    if isinstance(error, ModuleNotFoundError):
        return (f"--db {db}: a module the database driver needs is not installed "
                f"({error})")
    texts = "\n".join(_texts(error))
    try:
        where = _shown(make_url(db))
    except ArgumentError:
        where = db
    missing_db = re.search(r'database "([^"]+)" does not exist', texts)
    if missing_db:
        name = missing_db.group(1)
        return (f"database {name!r} does not exist (at {where}): create it first "
                f"(createdb {name}, or CREATE DATABASE \"{name}\")")
    if re.search(r"no such table: sm_|relation \"sm_\w+\" does not exist", texts):
        return (f"the database at {where} has no statemachine tables: run "
                "`statemachine migrate`")
    if re.search(r"no such column|column \"?[\w.]+\"? does not exist|has no column", texts):
        return (f"the statemachine tables at {where} are out of date: run "
                "`statemachine migrate`")
    unreachable = re.search(r"connection refused|could not translate host name|"
                            r"timeout expired|no route to host|server closed the connection|"
                            r"could not connect|connection failed|Name or service not known|"
                            r"the database system is (starting up|shutting down)",
                            texts, re.IGNORECASE)
    if unreachable:
        return (f"cannot reach the database at {where}: {_reason(texts)} "
                "(is the server running and the URL right?)")
    if "unable to open database file" in texts:
        return f"cannot open the SQLite database of {where} (does its directory exist?)"
    if isinstance(error, StateMachineError | ValueError | OSError | LookupError):
        return _first_line(str(error)) or type(error).__name__
    return (f"unexpected {type(error).__name__}: {_first_line(str(error))} "
            "(run with --debug for the traceback)")


def _reason(texts: str) -> str:
    """The driver's own reason for a failed connection, shortened to one clause."""
    for line in texts.splitlines():
        line = line.strip()
        match = re.search(r"(Connection refused|timeout expired|could not translate host name"
                          r"[^\n]*|Name or service not known|"
                          r"the database system is \w+ \w+)", line, re.IGNORECASE)
        if match:
            return match.group(1)
    return _first_line(texts)
