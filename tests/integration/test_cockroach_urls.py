"""CockroachDB URLs and sessions (issue 10, item 6): ``cockroachdb://`` means the psycopg driver; a
``postgresql://`` URL whose server is CockroachDB fails at once with one error naming the URL to
write; an isolation level asked for on a CockroachDB URL is set on every new connection and read
back. No CockroachDB server runs here: the detection is tested on CockroachDB's version strings,
and end to end against a PostgreSQL whose ``version()`` is made to answer like CockroachDB's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from statemachine import InvalidArgument, Store
from statemachine._database import (
    check_isolation,
    check_server,
    is_cockroach_version,
    make_engine,
)

# What `SELECT version()` answers, in the shape CockroachDB's builds give it.
COCKROACH_VERSIONS = [
    "CockroachDB CCL v24.1.5 (x86_64-pc-linux-gnu, built 2024/09/12 16:26:30, go1.22.5)",
    "CockroachDB CCL v23.2.0 (aarch64-unknown-linux-gnu, built 2024/01/16 19:42:57, go1.21.5)",
    "CockroachDB OSS v22.2.19 (x86_64-pc-linux-gnu, built 2024/02/12 17:56:26, go1.19.13)",
]
POSTGRES_VERSIONS = [
    "PostgreSQL 15.8 (Debian 15.8-0+deb12u1) on x86_64-pc-linux-gnu, compiled by gcc 12.2.0",
    "PostgreSQL 16.4 on aarch64-apple-darwin23.4.0, compiled by Apple clang version 15.0.0",
]


@pytest.mark.parametrize("version", COCKROACH_VERSIONS)
def test_a_postgresql_url_at_cockroachdb_says_which_url_to_write(version: str) -> None:
    assert is_cockroach_version(version)
    url = make_url("postgresql+psycopg://app:s3cret@db.example:26257/app?sslmode=require")
    with pytest.raises(InvalidArgument) as raised:
        check_server(url, version)
    message = str(raised.value)
    assert "reaches a CockroachDB server" in message
    assert "write cockroachdb+psycopg://app:***@db.example:26257/app?sslmode=require instead" \
        in message
    assert "s3cret" not in message
    assert "\n" not in message


@pytest.mark.parametrize("version", POSTGRES_VERSIONS)
def test_postgresql_and_the_cockroachdb_dialect_on_postgresql_pass(version: str) -> None:
    assert not is_cockroach_version(version)
    check_server(make_url("postgresql+psycopg://app@db/app"), version)
    # The test suite's crdb-dialect backend: the CockroachDB dialect against PostgreSQL.
    check_server(make_url("cockroachdb+psycopg://app@db/app"), version)
    for version in COCKROACH_VERSIONS:
        check_server(make_url("cockroachdb+psycopg://app@db/app"), version)


def test_cockroachdb_urls_mean_the_psycopg_driver() -> None:
    engine = make_engine("cockroachdb://root@127.0.0.1:1/defaultdb", None, 1)
    try:
        assert (engine.dialect.name, engine.dialect.driver) == ("cockroachdb", "psycopg")
    finally:
        engine.dispose()


def test_an_isolation_level_the_server_does_not_run_is_an_error() -> None:
    check_isolation("SERIALIZABLE", "serializable")
    check_isolation("read_committed", "read committed")
    with pytest.raises(InvalidArgument, match=r"'READ COMMITTED' was asked for, but the server "
                                              r"runs 'SERIALIZABLE'.*read_committed_isolation"):
        check_isolation("READ COMMITTED", "serializable")


def test_an_unknown_isolation_level_is_refused_naming_the_choices() -> None:
    with pytest.raises(InvalidArgument, match="isolation_level 'SNAPSHOT': expected one of "
                                              "READ COMMITTED, REPEATABLE READ, SERIALIZABLE"):
        make_engine("cockroachdb+psycopg://root@127.0.0.1:1/defaultdb", "SNAPSHOT", 1)


# -- end to end, against PostgreSQL --------------------------------------------------------------


@pytest.fixture
def fake_cockroach(pg_database: URL) -> Iterator[URL]:
    """A URL of the test PostgreSQL whose ``SELECT version()`` answers like CockroachDB's: a
    schema ahead of pg_catalog on the search path holds a function `version`."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_database, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        conn.execute(text(f"CREATE FUNCTION \"{schema}\".version() RETURNS text LANGUAGE sql AS "
                          f"$$ SELECT '{COCKROACH_VERSIONS[0]}'::text $$"))
    try:
        yield pg_database.update_query_dict({"options": f"-csearch_path={schema},pg_catalog"})
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_a_store_on_a_postgresql_url_at_cockroachdb_fails_with_the_url_to_write(
        fake_cockroach: URL) -> None:
    store = Store(fake_cockroach.render_as_string(hide_password=False))
    try:
        with pytest.raises(InvalidArgument, match=r"reaches a CockroachDB server \(CockroachDB "
                                                  r"CCL v24\.1\.5\): write cockroachdb\+psycopg"):
            store.migrate()
    finally:
        store.dispose()


@pytest.mark.parametrize("level", ["SERIALIZABLE", "READ COMMITTED"])
def test_the_isolation_level_is_set_on_every_cockroachdb_connection(
        pg_database: URL, level: str) -> None:
    url = pg_database.set(drivername="cockroachdb+psycopg").render_as_string(hide_password=False)
    store = Store(url, isolation_level=level)
    try:
        for engine in store.engines:
            with engine.connect() as conn:
                shown = conn.execute(text("SHOW default_transaction_isolation")).scalar()
                assert str(shown).upper() == level
        assert store.transaction(lambda c: c.execute(text("SHOW transaction_isolation"))
                                 .scalar()).upper() == level
    finally:
        store.dispose()
