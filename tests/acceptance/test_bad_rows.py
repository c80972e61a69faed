"""Whatever an operator writes into a row, the worker goes on serving the others, and the row is
either parked with a `last_error` that says what is wrong, or (when no worker could ever claim it)
reported, by the worker's log and by `statemachine check`; `list` and `show` print it instead of
failing. One bad row per test, three healthy workflows beside it, on every backend.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator

import attrs
import pytest
import sqlalchemy
from sqlalchemy import Engine, create_engine, text

from statemachine import Client, Store, Worker
from statemachine._cli import _run
from statemachine._store._audit import unclaimable
from tests.machines_for_tests import P1, Bulk
from tests.waits import wait_until

APP = "tests.machines_for_tests:Bulk"


@attrs.frozen
class Case:
    """How to break the row (SQL SET clause), and what must come of it."""

    set_sql: str
    # "parked": the worker parks it with `last_error` containing `error`; "reported": no worker
    # can claim it, the worker logs it; "ignored": another worker's machine, left alone.
    outcome: str
    error: str
    # What `statemachine check` must say about it.
    check: str
    sqlite_only: bool = False


CASES = {
    "unknown state": Case("state = 'Nope'", "parked", "Nope", "does not load"),
    "another machine's state": Case("state = 'Begin'", "parked", "Begin", "does not load"),
    "missing field": Case("data = '{}'", "parked", "data.n", "does not load"),
    "mistyped field": Case("""data = '{"n": "seven"}'""", "parked", "data.n", "does not load"),
    "non-object JSON": Case("data = '[1, 2]'", "parked", "JSON object",
                            "data is not a JSON object"),
    "invalid JSON": Case("data = 'not json'", "parked", "JSON", "data is not valid JSON",
                         sqlite_only=True),
    "text in attempt": Case("attempt = 'abc'", "parked", "attempt",
                            "attempt is not an integer", sqlite_only=True),
    "garbage status": Case("status = 'bogus'", "reported", "", "unknown status 'bogus'"),
    "ready without wake_at": Case("wake_at = NULL", "reported", "", "ready without wake_at"),
    "unknown machine": Case("machine = 'nope'", "ignored", "", "unknown machine 'nope'"),
}
def _params() -> list[object]:
    return [pytest.param(name, id=name) for name in CASES]


@pytest.fixture
def db(db_url: str) -> Iterator[Engine]:
    """A plain engine for reading as an operator does (READ COMMITTED: a SERIALIZABLE read could
    itself fail with a serialization error)."""
    engine = create_engine(db_url, isolation_level="AUTOCOMMIT" if db_url.startswith("sqlite")
                           else "READ COMMITTED")
    yield engine
    engine.dispose()


def _status(db: Engine, wid: uuid.UUID) -> tuple[str, str | None, str]:
    with db.connect() as conn:
        row = conn.execute(text("SELECT status, last_error, machine FROM sm_workflows "
                                "WHERE id = :id"), {"id": str(wid)}).one()
    return str(row[0]), row[1], str(row[2])


def _cli(capsys: pytest.CaptureFixture[str], db_url: str, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = _run(["--db", db_url, *args])
    except SystemExit as e:  # `check` exits 1 itself when it finds problems
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("case_name", _params())
def test_a_bad_row_is_parked_or_reported_and_the_others_finish(
    store: Store, db: Engine, db_url: str, backend: str, case_name: str,
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
) -> None:
    case = CASES[case_name]
    client = Client(store, [Bulk])
    bad = client.start(Bulk, P1(n=0))
    healthy = [client.start(Bulk, P1(n=i)) for i in (1, 2, 3)]
    breaking = text(f"UPDATE sm_workflows SET {case.set_sql}, version = version + 1 "
                    "WHERE id = :id")
    if case.sqlite_only and backend != "sqlite":
        # PostgreSQL's column types (jsonb, integer) refuse the value: no row can hold it.
        with store.connect() as conn, pytest.raises(sqlalchemy.exc.DataError):
            conn.execute(breaking, {"id": str(bad)})
        with Worker(store, [Bulk()], poll_interval=0.05):
            for wid in [bad, *healthy]:
                wait_until(lambda wid=wid: _status(db, wid)[0] == "done",
                           f"workflow {wid} to finish")
        return
    with store.connect() as conn:
        conn.execute(breaking, {"id": str(bad)})
        conn.commit()

    # Before any worker: check reports it (exit 1), list and show print it.
    code, out = _cli(capsys, db_url, "check", "--app", APP)
    assert (code, case.check in out, str(bad) in out) == (1, True, True), out
    code, out = _cli(capsys, db_url, "list", "--json")
    assert code == 0, out
    assert str(bad) in {w["id"] for w in json.loads(out)["workflows"]}
    code, out = _cli(capsys, db_url, "show", str(bad), "--json")
    assert code == 0, out
    assert json.loads(out)["id"] == str(bad)

    caplog.set_level(logging.WARNING, logger="statemachine")
    with Worker(store, [Bulk()], poll_interval=0.05, audit_interval=0.2) as worker:
        for wid in healthy:
            # Three trivial steps: 30 s is generous.
            wait_until(lambda wid=wid: _status(db, wid)[0] == "done",
                       f"healthy workflow {wid} to finish", timeout=30)
        if case.outcome == "parked":
            status, error = wait_until(
                lambda: (s := _status(db, bad))[0] == "failed" and s[:2],
                "the bad row to be parked", timeout=30)
            assert error is not None
            assert case.error in error
        elif case.outcome == "reported":
            wait_until(lambda: any("can never be claimed" in r.getMessage() and str(bad) in
                                   r.getMessage() for r in caplog.records),
                       "the worker to report the row it cannot claim")
        health = worker.health()
    # Serving all along, and no round of any loop failed because of the row.
    assert health.serving, health
    assert health.consecutive_failures == 0, health
    if case.outcome != "parked":
        status, _, machine = _status(db, bad)
        assert status == ("bogus" if case_name == "garbage status" else "ready")
        assert machine == ("nope" if case.outcome == "ignored" else "proc_bulk")
    # The worker never failed a round because of the row (it parked it or left it alone).
    assert not [r for r in caplog.records if "failed, retrying" in r.getMessage()]


def test_an_extra_field_in_a_stored_row_is_dropped_and_the_workflow_goes_on(
    store: Store, db: Engine,
) -> None:
    """A stored field the state class no longer declares (a field removed in a deploy, or one
    an operator added) is dropped on load, as the upgrading guide promises: the workflow goes
    on, and the next state written has no trace of it."""
    client = Client(store, [Bulk])
    wid = client.start(Bulk, P1(n=5))
    with store.connect() as conn:
        conn.execute(text("""UPDATE sm_workflows SET data = '{"n": 5, "surplus": 1}',
                             version = version + 1 WHERE id = :id"""), {"id": str(wid)})
        conn.commit()
    with Worker(store, [Bulk()], poll_interval=0.05):
        wait_until(lambda: _status(db, wid)[0] == "done", "the workflow to finish")
    assert "surplus" not in json.dumps(client.get(wid).data)


def test_children_queued_behind_a_live_parent_are_not_reported_as_unclaimable(
    store: Store, db: Engine,
) -> None:
    # A child ready without wake_at is queued behind its parent's max_running: the parent lets
    # it go when a sibling finishes. Only once the parent has finished can nothing let it go.
    client = Client(store, [Bulk])
    live, finished, queued, orphaned = (client.start(Bulk, P1(n=i)) for i in range(4))
    with db.begin() as conn:
        conn.execute(text("UPDATE sm_workflows SET status = 'done', wake_at = NULL "
                          "WHERE id = :id"), {"id": str(finished)})
        for child, parent in ((queued, live), (orphaned, finished)):
            conn.execute(text("UPDATE sm_workflows SET parent_id = :parent, wake_at = NULL "
                              "WHERE id = :id"), {"id": str(child), "parent": str(parent)})
    found = unclaimable(store)
    assert [(p.kind, p.count, p.example) for p in found] == [
        ("ready without wake_at", 1, str(orphaned))], found
