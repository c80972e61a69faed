"""A value written by hand that does not decode never fails a claim or a read (SQLite checks
neither JSON nor column types): the row comes back with the raw value and a `data_error` naming
the column and the problem, and the healthy rows beside it come back as usual."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from statemachine import Store
from statemachine._store import Change

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def corrupt(store: Store, sql: str, workflow_id: uuid.UUID) -> None:
    with store.connect() as conn:
        conn.execute(text(sql), {"id": str(workflow_id)})
        conn.commit()


@pytest.fixture
def rows(store: Store) -> dict[str, uuid.UUID]:
    """Two healthy workflows, one whose data is not JSON, one whose attempt is text."""
    ids = {name: store.sql.insert_workflow(machine="bad_m", state="Start",
                                           data={"name": name})[0]
           for name in ("healthy1", "bad_json", "bad_attempt", "healthy2")}
    corrupt(store, "UPDATE sm_workflows SET data = '{not json' WHERE id = :id", ids["bad_json"])
    corrupt(store, "UPDATE sm_workflows SET attempt = 'abc' WHERE id = :id", ids["bad_attempt"])
    return ids


def test_claim_returns_every_row_with_the_undecodable_ones_marked(
        store: Store, backend: str, rows: dict[str, uuid.UUID]) -> None:
    claimed = {r.id: r for r in store.sql.claim(owner="w", machines=["bad_m"], limit=10,
                                                 lease=30)}
    assert set(claimed) == set(rows.values())
    for name in ("healthy1", "healthy2"):
        row = claimed[rows[name]]
        assert (row.data, row.data_error, row.attempt) == ({"name": name}, None, 1)
    bad_json = claimed[rows["bad_json"]]
    assert bad_json.data is None
    assert bad_json.data_error is not None
    assert bad_json.data_error.startswith("column data: not valid JSON: ")
    bad_attempt = claimed[rows["bad_attempt"]]
    assert bad_attempt.data == {"name": "bad_attempt"}
    assert bad_attempt.data_error == "column attempt: not an integer: 'abc'"


def test_reads_show_the_raw_value_and_the_reason(
        store: Store, backend: str, rows: dict[str, uuid.UUID]) -> None:
    bad = store.sql.get(rows["bad_json"])
    assert bad is not None
    assert bad.data == "{not json"  # the text as stored, for a person to read
    assert bad.data_error is not None
    assert bad.data_error.startswith("column data: not valid JSON: ")
    healthy = store.sql.get(rows["healthy1"])
    assert healthy is not None
    assert (healthy.data, healthy.data_error) == ({"name": "healthy1"}, None)

    listed = {r.id: r for r in store.sql.list_workflows(machine="bad_m")}
    assert set(listed) == set(rows.values())
    assert listed[rows["bad_attempt"]].attempt == "abc"
    assert listed[rows["bad_attempt"]].data_error == "column attempt: not an integer: 'abc'"
    scanned = list(store.sql.scan(["bad_m"], ["ready"], batch=2))
    assert {r.id for r in scanned} == set(rows.values())
    assert [h.kind for h in store.sql.history(rows["bad_json"])] == ["start"]
    assert len(store.sql.get_many(list(rows.values()))) == 4


def test_an_event_whose_data_is_not_json_comes_back_marked(
        store: Store, backend: str, rows: dict[str, uuid.UUID]) -> None:
    wid = rows["healthy1"]
    good = store.sql.insert_event(wid, "Ping", {"n": 1})
    with store.connect() as conn:
        conn.execute(text("INSERT INTO sm_events (workflow_id, type, data) "
                          "VALUES (:id, 'Ping', '[oops')"), {"id": str(wid)})
        conn.commit()
    # (SQLite's default created_at has milliseconds only: the order of the two may vary.)
    events = {e.id == good: e for e in store.sql.pending_events(wid)}
    assert len(events) == 2
    assert (events[True].data, events[True].data_error) == ({"n": 1}, None)
    assert events[False].data == "[oops"
    assert events[False].data_error is not None
    assert events[False].data_error.startswith("column data: not valid JSON: ")


def test_a_row_that_does_not_decode_is_parked_with_its_data_kept(
        store: Store, backend: str, rows: dict[str, uuid.UUID]) -> None:
    claimed = {r.id: r for r in store.sql.claim(owner="w", machines=["bad_m"], limit=10,
                                                 lease=30)}
    row = claimed[rows["bad_json"]]
    assert row.data_error is not None
    reason = f"workflow {row.id}: {row.data_error}"
    done = store.sql.commit(Change(
        workflow_id=row.id, version=row.version, lease_token=row.lease_token, kind="parked",
        from_state=row.state, to_state=row.state, data=None, status="failed",
        attempt=row.attempt, new_state=False, error=reason, worker="w"))
    assert done is not None
    parked = store.sql.get(row.id)
    assert parked is not None
    assert (parked.status, parked.last_error) == ("failed", reason)
    assert parked.data == "{not json"  # kept as stored, for a person to read and fix
    assert [h.kind for h in store.sql.history(row.id)] == ["start", "parked"]
