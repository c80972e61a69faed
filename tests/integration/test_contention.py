"""Contention that outlasts the store's usual retries while a worker holds a row.

A commit of a handler's result and the settling of a waiting workflow both keep retrying
serialization failures for as long as the lease (the heartbeat renews it meanwhile): giving up
would leave the row held, run by nobody, until the lease expires. PostgreSQL backends only: the
failures are raised by a PL/pgSQL trigger, genuine 40001s from the statement itself."""

from __future__ import annotations

import attrs
import pytest
from sqlalchemy import text

from statemachine import Client, Context, Machine, Store, Worker, step
from statemachine._definition import on_event
from tests.conftest import POSTGRES_BACKENDS
from tests.waits import wait_until

pytestmark = pytest.mark.parametrize("backend", POSTGRES_BACKENDS, indirect=True)

RETRIES = 2  # the store's usual retries in this test
REFUSED = RETRIES + 6  # refusals of the settle: more than the usual retries allow


@attrs.frozen
class Begin:
    n: int


@attrs.frozen
class Parked:
    n: int


@attrs.frozen
class Go:
    pass


@attrs.frozen
class Finished:
    n: int


class WaitsForGo(Machine):
    initial = Begin
    terminal = (Finished,)

    @step
    def begin(self, state: Begin, ctx: Context) -> Parked:
        return Parked(state.n)

    @on_event
    def go(self, state: Parked, event: Go, ctx: Context) -> Finished:
        return Finished(state.n)


# A sequence, not a counter table: nextval() survives the refused statement's rollback.
REFUSE_SETTLES = [
    "CREATE SEQUENCE sm_test_settle_calls",
    f"""
    CREATE FUNCTION sm_test_refuse_settle() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF OLD.status = 'running' AND NEW.status = 'waiting' THEN
            IF nextval('sm_test_settle_calls') <= {REFUSED} THEN
                RAISE EXCEPTION USING ERRCODE = '40001', MESSAGE = 'injected';
            END IF;
        END IF;
        RETURN NEW;
    END $$""",
    """
    CREATE TRIGGER sm_test_refuse_settle BEFORE UPDATE ON sm_workflows
        FOR EACH ROW EXECUTE FUNCTION sm_test_refuse_settle()""",
]


def test_settling_a_waiting_workflow_outlasts_the_usual_retries(db_url: str) -> None:
    store = Store(db_url, max_retries=RETRIES)
    try:
        with store.connect() as conn:
            for statement in REFUSE_SETTLES:
                conn.execute(text(statement))
            conn.commit()
        client = Client(store, [WaitsForGo])
        # An hour's lease: were the settle given up, the row would stay held past the test.
        with Worker(store, [WaitsForGo()], poll_interval=0.05, lease=3600):
            wid = client.start(WaitsForGo, Begin(1))
            wait_until(lambda: client.get(wid).status == "waiting", "the workflow to settle")
            client.send(wid, Go())
            info = client.wait(wid, timeout=60)
        assert info.state == Finished(1)
        with store.connect() as conn:
            calls = conn.execute(text("SELECT last_value FROM sm_test_settle_calls")).scalar_one()
        assert calls == REFUSED + 1  # refused every time but the last, which settled it
    finally:
        store.dispose()
