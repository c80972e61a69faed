"""SQLite's fast path: the claim and a plain commit run on the thread's sqlite3 connection, in
one ``BEGIN IMMEDIATE`` transaction each, and answer exactly what the SQLAlchemy path answers
(typed columns included); a commit that finds a cancel request pending writes nothing itself and
leaves it to the transaction that records the request as superseded."""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any

import attrs
import pytest
from sqlalchemy import text, update

from statemachine import Store
from statemachine._schema import workflows
from statemachine._store import Change, Committed
from statemachine._store._fast import FastPath

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


def finishing(row: Any, *, supersede_cancel: bool = False) -> Change:
    return Change(workflow_id=row.id, version=row.version, lease_token=row.lease_token,
                  kind="transition", from_state=row.state, to_state="Done",
                  data={"ok": True}, status="done", attempt=row.attempt, wake_after=None,
                  worker="w1", supersede_cancel=supersede_cancel)


def claim_one(store: Store, machine: str) -> Any:
    [row] = store.sql.claim(owner="w1", machines=[machine, "another_machine"], limit=5, lease=30)
    return row


def test_claims_and_commits_take_the_fast_path_and_answer_as_sqlalchemy_does(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    transactions: list[object] = []
    real = FastPath.transaction

    def spy(self: FastPath, body: Any, **kw: Any) -> Any:
        transactions.append(body)
        return real(self, body, **kw)

    monkeypatch.setattr(FastPath, "transaction", spy)
    fast_id, _ = store.sql.insert_workflow(machine="fast_m", state="Start", data={"n": 1})
    fast = claim_one(store, "fast_m")
    assert store.sql.commit(finishing(fast)) == Committed(2, None)
    assert len(transactions) == 2, "the claim and the commit did not take the fast path"

    monkeypatch.setattr(FastPath, "usable", lambda self: False)
    slow_id, _ = store.sql.insert_workflow(machine="slow_m", state="Start", data={"n": 1})
    slow = claim_one(store, "slow_m")
    assert len(transactions) == 2
    assert (fast.id, slow.id) == (fast_id, slow_id)
    assert isinstance(fast.id, uuid.UUID)
    assert fast.due_at is not None
    assert fast.due_at.utcoffset() is not None
    ignore = ("id", "machine", "lease_token", "due_at")
    assert attrs.asdict(fast, filter=lambda a, _: a.name not in ignore) == \
        attrs.asdict(slow, filter=lambda a, _: a.name not in ignore)
    assert store.sql.commit(finishing(slow)) == Committed(2, None)
    assert [h.kind for h in store.sql.history(fast_id)] == \
        [h.kind for h in store.sql.history(slow_id)] == ["start", "transition"]


def test_a_commit_finding_a_cancel_request_leaves_it_to_the_recording_transaction(
        store: Store) -> None:
    wid, _ = store.sql.insert_workflow(machine="fast_m", state="Start", data={"n": 1})
    row = claim_one(store, "fast_m")
    with store.engine.begin() as conn:  # asked for while the handler ran
        conn.execute(update(workflows).where(workflows.c.id == wid)
                     .values(cancel_requested="operator: stop"))
    done = store.sql.commit(finishing(row, supersede_cancel=True))
    assert done is not None
    history = store.sql.history(wid)
    assert [h.kind for h in history] == ["start", "transition", "cancel_superseded"]
    assert done.version == history[-1].version
    assert store.sql.cancel_requested(wid) is None


def test_a_commit_that_lost_its_lease_writes_nothing(store: Store) -> None:
    wid, _ = store.sql.insert_workflow(machine="fast_m", state="Start", data={"n": 1})
    row = claim_one(store, "fast_m")
    assert store.sql.commit(finishing(attrs.evolve(row, lease_token="not-mine"))) is None
    assert [h.kind for h in store.sql.history(wid)] == ["start"]
    assert store.sql.commit(finishing(row)) == Committed(2, None)


def test_a_transaction_whose_commit_fails_is_rolled_back_and_its_connection_kept_usable(
        store: Store) -> None:
    """SQLite leaves a transaction open when its COMMIT fails (here: a deferred foreign key);
    the fast path rolls it back, so the thread's next transaction starts cleanly."""
    fast = store.sql._db.fast_path
    assert fast is not None
    with store.engine.begin() as conn:
        conn.execute(text("CREATE TABLE t_parent (id INTEGER PRIMARY KEY)"))
        conn.execute(text("CREATE TABLE t_child (pid INTEGER REFERENCES t_parent (id) "
                          "DEFERRABLE INITIALLY DEFERRED)"))
    fast.execute(("t", "fk"), text("PRAGMA foreign_keys = ON"), {})  # on this thread's connection
    orphan = text("INSERT INTO t_child (pid) VALUES (7)")
    with pytest.raises(sqlite3.IntegrityError):
        fast.transaction(lambda send: send(("t", "orphan"), orphan, {}))
    count = text("SELECT count(*) FROM t_child")
    assert fast.transaction(lambda send: send(("t", "count"), count, {})) == (0,)
