"""Nothing silent, on every backend (issue 12, item 1): a cancel request always leaves a history
row; a parked workflow is cancelled through its cancel route, or the cancel is refused naming
the route unless the compensation is skipped; a start key reused with different data is an
error naming the workflow that has it; an `async def` transactional step and a generator
handler are refused at import. Also through
the real `statemachine` command (subprocesses).

Machines live at module level so the CLI can import them
(``--app tests.integration.test_honest_cancels:Rental``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from sqlalchemy import update

from statemachine import (
    Client,
    Context,
    InvalidDefinition,
    InvalidOperation,
    Machine,
    PermanentError,
    Store,
    Worker,
    on_cancel,
    on_event,
    step,
)
from statemachine._schema import workflows
from tests.waits import wait_until

ROOT = Path(__file__).resolve().parents[2]
FAST: dict[str, Any] = dict(concurrency=4, poll_interval=0.05)
WAIT = 60.0
REASON = "ops: bob (ticket 7)"

# A handler of a "gated" tag waits here until the test has asked for the cancel.
ENTERED: dict[str, threading.Event] = {}
COMPENSATED: dict[str, list[str]] = {}


@attrs.frozen
class Renting:
    tag: str
    mode: str  # "finish": finishes despite a cancel; "fail": fails for good; "wait"


@attrs.frozen
class Rented:
    tag: str


@attrs.frozen
class Returning:
    tag: str


@attrs.frozen
class Returned:
    tag: str


@attrs.frozen
class Bring:
    pass


class Rental(Machine):
    """Rent something; cancelling gives it back (the compensation)."""

    initial = Renting
    terminal = (Returned,)

    @step
    def rent(self, state: Renting, ctx: Context) -> Rented | Returned:
        if state.mode == "fail":
            raise PermanentError("the shop is closed")
        if state.mode == "finish":
            ENTERED[state.tag].set()
            wait_until(lambda: ctx.cancel_requested, "the cancel request to reach the handler",
                       timeout=WAIT)
            return Returned(state.tag)  # finished anyway: the cancel is superseded
        return Rented(state.tag)

    @on_event
    def bring_back(self, state: Rented, event: Bring, ctx: Context) -> Returned:
        return Returned(state.tag)

    @on_cancel
    def give_back(self, state: Renting | Rented, ctx: Context) -> Returning:
        COMPENSATED.setdefault(state.tag, []).append(type(state).__name__)
        return Returning(state.tag)

    @step
    def returning(self, state: Returning, ctx: Context) -> Returned:
        return Returned(state.tag)


def _tag() -> str:
    tag = uuid.uuid4().hex
    ENTERED[tag] = threading.Event()
    return tag


def _parked(client: Client, wid: uuid.UUID) -> bool:
    return client.get(wid).status == "failed"


# -- a cancel request always leaves a history row ------------------------------------------------


def test_a_cancel_the_workflow_outran_is_recorded_as_superseded(store: Store) -> None:
    client = Client(store, [Rental])
    tag = _tag()
    with Worker(store, [Rental], **FAST):
        wid = client.start(Rental, Renting(tag, "finish"))
        assert ENTERED[tag].wait(WAIT)
        assert client.cancel(wid, reason=REASON) == "requested"
        info = client.wait(wid, timeout=WAIT)
    assert (info.status, info.state_name) == ("done", "Returned")
    # Written in the transaction that finished the workflow: there as soon as it is done.
    *_, finish, last = client.history(wid)
    assert (finish.kind, finish.to_state, last.version) == ("transition", "Returned",
                                                            finish.version + 1)
    assert (last.kind, last.status, last.from_state, last.to_state) == (
        "cancel_superseded", "done", "Returned", "Returned")
    assert client.get(wid).version == last.version
    assert REASON in (last.cause or "")
    assert "finished first (done)" in (last.cause or "")
    assert store.sql.cancel_requested(wid) is None
    assert COMPENSATED.get(tag) is None
    with pytest.raises(InvalidOperation, match="done"):
        client.cancel(wid, reason="again")


def test_cancelling_a_parked_workflow_runs_its_cancel_route(store: Store) -> None:
    client = Client(store, [Rental])
    tag = _tag()
    with Worker(store, [Rental], **FAST):
        wid = client.start(Rental, Renting(tag, "fail"))
        wait_until(lambda: _parked(client, wid), "the workflow to park")
        assert client.cancel(wid, reason=REASON) == "requested"
        info = client.wait(wid, timeout=WAIT)
        wait_until(lambda: client.get(wid).state_name == "Returned", "the compensation")
    assert (info.status, client.get(wid).state_name) == ("done", "Returned")
    assert COMPENSATED[tag] == ["Renting"]
    cancels = [h for h in client.history(wid) if h.kind == "cancel"]
    assert [(h.from_state, h.to_state, h.cause) for h in cancels] == [
        ("Renting", "Returning", REASON)]


def _break_data(store: Store, wid: uuid.UUID) -> None:
    with store.engine.begin() as conn:
        conn.execute(update(workflows).where(workflows.c.id == wid)
                     .values(data={"tag": 5}))  # `mode` missing: the state does not load


def test_a_parked_workflow_whose_route_cannot_run_is_refused_unless_skipped(
    store: Store,
) -> None:
    client = Client(store, [Rental])
    tag = _tag()
    with Worker(store, [Rental], **FAST):
        wid = client.start(Rental, Renting(tag, "fail"))
        wait_until(lambda: _parked(client, wid), "the workflow to park")
    _break_data(store, wid)
    with pytest.raises(InvalidOperation, match="cancel route 'give_back'") as refused:
        client.cancel(wid, reason=REASON)
    assert "skip_compensation" in str(refused.value)
    assert refused.value.workflow_id == wid
    assert client.get(wid).status == "failed"  # nothing happened
    assert client.cancel(wid, reason=REASON, skip_compensation=True) == "cancelled"
    assert client.get(wid).status == "cancelled"
    last = client.history(wid)[-1]
    assert (last.kind, last.status) == ("cancel", "cancelled")
    assert last.cause == f"{REASON} (compensation 'give_back' skipped)"
    assert COMPENSATED.get(tag) is None


def test_a_worker_parks_a_cancel_whose_route_cannot_run_and_says_so(store: Store) -> None:
    """A request that reached the row without the client's check (a process that does not know
    the machine, or SQL) leaves the decision to a worker, which parks (naming the route)
    instead of skipping the compensation silently."""
    tag = _tag()
    client = Client(store, [Rental])
    wid = client.start(Rental, Renting(tag, "wait"))
    _break_data(store, wid)
    assert store.sql.request_cancel(wid, REASON, direct=False) == "requested"
    with Worker(store, [Rental], **FAST):
        wait_until(lambda: _parked(client, wid), "the workflow to park")
    last = client.history(wid)[-1]
    assert last.kind == "parked"
    assert "cancel route 'give_back' cannot run" in (last.error or "")
    assert REASON in (last.error or "")
    assert store.sql.cancel_requested(wid) is None
    # Skipping the compensation ends it.
    assert client.cancel(wid, reason=REASON, skip_compensation=True) == "cancelled"


def test_skipping_the_compensation_of_a_running_handler_is_refused(store: Store) -> None:
    client = Client(store, [Rental])
    tag = _tag()
    with Worker(store, [Rental], **FAST):
        wid = client.start(Rental, Renting(tag, "finish"))
        assert ENTERED[tag].wait(WAIT)
        with pytest.raises(InvalidOperation, match="is running now"):
            client.cancel(wid, skip_compensation=True)
        client.cancel(wid, reason=REASON)  # let the handler finish
        client.wait(wid, timeout=WAIT)


# -- start keys ----------------------------------------------------------------------------------


def test_a_start_key_reused_with_different_data_names_the_workflow_that_has_it(
    store: Store,
) -> None:
    client = Client(store, [Rental])
    first = client.start(Rental, Renting("a", "wait"), key="K")
    assert client.start(Rental, Renting("a", "wait"), key="K") == first  # as before
    with pytest.raises(InvalidOperation, match=str(first)) as clash:
        client.start(Rental, Renting("b", "wait"), key="K")
    assert clash.value.workflow_id == first
    assert "start key 'K'" in str(clash.value)
    assert len(client.list(machine=Rental.spec.name)) == 1


def test_start_many_with_keys_is_idempotent_and_refuses_a_clash_as_a_whole(store: Store) -> None:
    client = Client(store, [Rental])
    ids = client.start_many(Rental, [Renting("a", "wait"), Renting("b", "wait")],
                            keys=["ka", None])
    again = client.start_many(Rental, [Renting("a", "wait")], keys=["ka"])
    assert again == ids[:1]
    with pytest.raises(InvalidOperation, match=str(ids[0])):
        client.start_many(Rental, [Renting("c", "wait"), Renting("x", "wait")],
                          keys=["kc", "ka"])
    assert len(client.list(machine=Rental.spec.name)) == 2  # "kc" rolled back with the clash
    with pytest.raises(ValueError, match="2 states but 1 keys"):
        client.start_many(Rental, [Renting("d", "wait"), Renting("e", "wait")], keys=["kd"])


# -- async handlers ------------------------------------------------------------------------------


def test_an_async_transactional_step_is_refused_at_import() -> None:
    with pytest.raises(InvalidDefinition, match="'hurry' is transactional and declared `async"):

        class Hurried(Machine):
            initial = Renting
            terminal = (Returned,)

            @step(transactional=True)
            async def hurry(self, state: Renting, ctx: Context) -> Returned:
                return Returned(state.tag)


def test_an_async_generator_cancel_route_is_refused_at_import() -> None:
    with pytest.raises(InvalidDefinition, match="'undo' is a generator"):

        class Undone(Machine):
            initial = Renting
            terminal = (Returned,)

            @step
            async def rent(self, state: Renting, ctx: Context) -> Returned:
                return Returned(state.tag)

            @on_cancel
            async def undo(self, state: Renting, ctx: Context) -> AsyncIterator[Returned]:
                yield Returned(state.tag)


# -- the same through the command ----------------------------------------------------------------

APP = "tests.integration.test_honest_cancels:Rental"


def _cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "STATEMACHINE_DATABASE_URL"}
    env["PYTHONPATH"] = str(ROOT)
    script = Path(sys.executable).with_name("statemachine")
    return subprocess.run([str(script), "--db", db_url, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_cli_refuses_a_reused_key_and_skips_compensation_only_when_told(
    store: Store, db_url: str,
) -> None:
    first = _cli(db_url, "start", "Rental", "--app", APP, "--key", "K",
                 "--data", '{"tag": "a", "mode": "fail"}')
    assert first.returncode == 0, first.stderr
    wid = uuid.UUID(first.stdout.strip())
    same = _cli(db_url, "start", "Rental", "--app", APP, "--key", "K",
                "--data", '{"tag": "a", "mode": "fail"}')
    assert (same.returncode, same.stdout.strip()) == (0, str(wid))
    clash = _cli(db_url, "start", "Rental", "--app", APP, "--key", "K",
                 "--data", '{"tag": "b", "mode": "fail"}')
    assert clash.returncode == 1, clash
    assert str(wid) in clash.stderr
    assert len(clash.stderr.strip().splitlines()) == 1, clash.stderr

    client = Client(store, [Rental])
    with Worker(store, [Rental], **FAST):
        wait_until(lambda: _parked(client, wid), "the workflow to park")
    _break_data(store, wid)
    refused = _cli(db_url, "cancel", str(wid), "--app", APP, "--reason", REASON)
    assert refused.returncode == 1, refused
    assert "give_back" in refused.stderr
    assert "--skip-compensation" in refused.stderr
    assert client.get(wid).status == "failed"
    done = _cli(db_url, "cancel", str(wid), "--app", APP, "--reason", REASON,
                "--skip-compensation", "--actor", "alice")
    assert done.returncode == 0, done.stderr
    assert "cancelled" in done.stdout
    assert client.history(wid)[-1].cause == (
        f"{REASON} (by alice) (compensation 'give_back' skipped)")
