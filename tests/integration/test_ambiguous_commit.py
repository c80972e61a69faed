"""CockroachDB may answer a COMMIT with SQLSTATE 40003 (result unknown). The store then reads back
whether its compare-and-set happened instead of guessing (COCKROACHDB.md): it did, the commit is
reported; it did not, the commit is sent again, so the handler's result is kept."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from statemachine import Client, Context, Machine, Store, step
from statemachine._store import Change, Committed
from statemachine.errors import DatabaseUnavailable, StoreError


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


def _ambiguous_error() -> OperationalError:
    """What the driver raises when CockroachDB cannot tell whether a COMMIT happened."""
    return OperationalError("COMMIT", {}, _Orig("result is ambiguous"))


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
    real_send = store.sql._send_commit
    sent = 0

    def commit_then_lose_the_answer(c: Change) -> Committed | None:
        nonlocal sent
        sent += 1
        real_send(c)
        raise _ambiguous_error()

    monkeypatch.setattr(store.sql, "_send_commit", commit_then_lose_the_answer)
    assert store.sql.commit(change) == Committed(change.version + 1, None)
    assert sent == 1  # read back, not sent again
    assert [r.version for r in store.sql.history(change.workflow_id)] == [1, 2]


def test_ambiguous_commit_that_did_not_happen_is_sent_again(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    change = _claimed_change(store)
    real_send = store.sql._send_commit
    sent = 0

    def lose_the_first(c: Change) -> Committed | None:
        nonlocal sent
        sent += 1
        if sent == 1:
            raise _ambiguous_error()
        return real_send(c)

    monkeypatch.setattr(store.sql, "_send_commit", lose_the_first)
    # The read-back finds no history row: the handler's result is kept by sending it again.
    done = store.sql.commit(change)
    assert done is not None
    assert done.version == change.version + 1
    assert sent == 2
    row = store.sql.get(change.workflow_id)
    assert (row.version, row.state, row.status) == (2, "AmbDone", "done")


def test_ambiguous_commit_whose_lease_is_gone_is_reported_lost(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    change = _claimed_change(store)
    real_send = store.sql._send_commit

    def lose_it(c: Change) -> Any:
        raise _ambiguous_error()

    monkeypatch.setattr(store.sql, "_send_commit", lose_it)
    with pytest.raises(DatabaseUnavailable, match="outcome stayed unknown") as err:
        store.sql.commit(change)
    assert err.value.sqlstate == "40003"
    # Another holder took the row meanwhile: sent again, the compare-and-set refuses it.
    monkeypatch.setattr(store.sql, "_send_commit", real_send)
    stolen = attrs.evolve(change, lease_token="someone-else")
    assert store.sql.commit(stolen) is None
    assert store.sql.get(change.workflow_id).version == 1


def test_other_store_errors_still_raise(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    change = _claimed_change(store)

    def fail(c: Change) -> Any:
        raise ProgrammingError("UPDATE", {}, Exception("something else"))

    monkeypatch.setattr(store.sql, "_send_commit", fail)
    with pytest.raises(StoreError, match="something else") as err:
        store.sql.commit(change)
    assert not isinstance(err.value, DatabaseUnavailable)
