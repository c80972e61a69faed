"""CockroachDB may answer a COMMIT with SQLSTATE 40003 (result unknown). The store then reads back
whether its compare-and-set happened instead of guessing (COCKROACHDB.md)."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from sqlalchemy.exc import OperationalError

from statemachine import Client, Context, Machine, Store, step
from statemachine._store import Change, Committed
from statemachine.errors import StoreError


@attrs.frozen
class AmbStart:
    n: int


@attrs.frozen
class AmbDone:
    n: int


class Ambiguous(Machine):
    initial = AmbStart
    terminal = (AmbDone,)

    @step
    def finish(self, state: AmbStart, ctx: Context) -> AmbDone:
        return AmbDone(state.n)


class _Orig(Exception):
    sqlstate = "40003"


def _ambiguous_error() -> StoreError:
    error = StoreError("database error: result is ambiguous")
    error.__cause__ = OperationalError("COMMIT", {}, _Orig("result is ambiguous"))
    return error


def _claimed_change(store: Store) -> Change:
    client = Client(store, [Ambiguous])
    wid = client.start(Ambiguous, AmbStart(1))
    (row,) = store.sql.claim(owner="t", machines=["Ambiguous"], limit=1, lease=30)
    assert row.id == wid
    return Change(workflow_id=row.id, version=row.version, lease_token=row.lease_token,
                  kind="transition", from_state="AmbStart", to_state="AmbDone",
                  data={"n": 1}, status="done", attempt=row.attempt, worker="t")


def test_ambiguous_commit_that_happened_is_reported_committed(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    change = _claimed_change(store)
    real_commit = store._commit

    def commit_then_lose_the_answer(c: Change) -> Committed | None:
        real_commit(c)
        raise _ambiguous_error()

    monkeypatch.setattr(store, "_commit", commit_then_lose_the_answer)
    assert store.sql.commit(change) == Committed(change.version + 1, None)
    assert [r.version for r in store.sql.history(change.workflow_id)] == [1, 2]


def test_ambiguous_commit_that_did_not_happen_is_reported_lost(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    change = _claimed_change(store)

    def lose_it(c: Change) -> Any:
        raise _ambiguous_error()

    monkeypatch.setattr(store, "_commit", lose_it)
    assert store.sql.commit(change) is None
    assert store.sql.get(change.workflow_id).version == 1


def test_other_store_errors_still_raise(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    change = _claimed_change(store)

    def fail(c: Change) -> Any:
        raise StoreError("database error: something else")

    monkeypatch.setattr(store, "_commit", fail)
    with pytest.raises(StoreError, match="something else"):
        store.sql.commit(change)
