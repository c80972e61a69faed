"""The three traps of log replay (DESIGN.md section 1), each sprung with a worker SIGKILLed at the
worst moment and a new one started after the world changed. Replay engines re-run a handler
against a log of what it saw before the crash; here a handler always runs fresh, and only what a
state class declares survives the crash. Each test runs on every backend.

1. Stale cached values: a short-lived token fetched before the crash has expired by the restart;
   the handler fetches a fresh one (no token is in any state), and the call succeeds first time.
2. Time in the past: a handler computes a delay from the clock; after the restart it reads the
   clock again, so the delay is the real time left, not the stale one.
3. Stale checks: the stock was there before the crash and sold out while the worker was dead;
   the check runs again and the checkout takes the out-of-stock path.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from machines.checkout import Checkout, CheckoutStarted, Order
from statemachine import Client, Store
from statemachine._schema import history, workflows
from tests.checkout_apps import PaymentReminder, ReminderPlanned
from tests.services import (
    Shop,
    Workers,
    operator_db_fixture,  # noqa: F401  (the `db` fixture)
    shop_fixture,  # noqa: F401  (the `shop` fixture)
)
from tests.waits import wait_until

pytestmark = pytest.mark.slow


def row_of(db: Engine, wid: uuid.UUID) -> Any:
    with db.connect() as conn:
        return conn.execute(select(workflows).where(workflows.c.id == wid)).one()


def history_of(db: Engine, wid: uuid.UUID) -> list[Any]:
    with db.connect() as conn:
        return list(conn.execute(
            select(history).where(history.c.workflow_id == wid).order_by(history.c.version)))


def done(db: Engine, wid: uuid.UUID) -> Any:
    def check() -> Any:
        r = row_of(db, wid)
        assert r.status in ("ready", "running", "waiting", "done"), (r.status, r.last_error)
        return r if r.status == "done" else None

    return wait_until(check, f"workflow {wid} to finish")


def start_checkout(store: Store, o: Order) -> uuid.UUID:
    return Client(store, [Checkout]).start(Checkout, CheckoutStarted(o))


# -- 1. stale cached values ----------------------------------------------------------------------


def test_expired_token_is_not_reused_after_a_crash(
    db_url: str, store: Store, db: Engine, shop: Shop, tmp_path: Path,
) -> None:
    shop.subscriptions.token_lifetime = 60.0
    shop.stock.set_stock("tee", 5)
    wid = start_checkout(store, Order("A1", "cus_1", {"tee": 1}, 1500, "tok_visa"))
    with Workers(db_url, tmp_path, shop) as workers:
        # Killed holding a fresh token, before using it.
        workers.spawn("w1", "checkout", pause="after POST /oauth/token")
        workers.wait_paused("w1")
        workers.kill("w1")
        [first] = shop.subscriptions.tokens
        shop.subscriptions.jump(61.0)  # the first token has expired by the service's clock

        workers.spawn("w2", "checkout")
        final = done(db, wid)

    assert final.state == "Completed"
    # w2 fetched a second token and the extension was accepted with it, at the first try: the
    # service never saw the expired token (it would have answered 401).
    assert [t["jti"] for t in shop.subscriptions.tokens] == [1, 2]
    assert [c["jti"] for c in shop.subscriptions.accepted] == [2]
    assert shop.subscriptions.rejected == []
    extend = shop.subscriptions.received("POST /subscriptions/*")
    assert [r.status for r in extend] == [200]
    assert extend[0].headers["authorization"] == f"Bearer {shop.subscriptions.tokens[1]['token']}"
    assert extend[0].received_at > first["exp"]
    hist = history_of(db, wid)
    assert [h.kind for h in hist if h.from_state == "Charged"] == ["transition"]  # no retry
    # Nothing token-like was ever written to the workflow's rows.
    stored = json.dumps([row_of(db, wid).data, *[h.data for h in hist]])
    for token in shop.subscriptions.tokens:
        assert token["token"] not in stored
        assert token["token"].split(".")[0] not in stored  # not even the JWT header


# -- 2. time in the past -------------------------------------------------------------------------


def test_delay_is_computed_from_the_clock_after_a_crash(
    db_url: str, store: Store, db: Engine, shop: Shop, tmp_path: Path,
) -> None:
    notes = shop.notifications
    with Workers(db_url, tmp_path, shop) as workers:
        workers.spawn("w1", "reminder", pause="after POST /reminders")
        workers.wait_ready("w1")
        due = datetime.now(UTC) + timedelta(seconds=3)
        wid = Client(store, [PaymentReminder]).start(PaymentReminder, ReminderPlanned("A1", due))
        # Killed after reading the clock and announcing "in 3 s", before committing the timer.
        workers.wait_paused("w1")
        workers.kill("w1")
        workers.spawn("w2", "reminder")
        final = done(db, wid)

    assert final.state == "Reminded"
    due_ts = due.timestamp()
    before, after = notes.scheduled
    # Each request went out after its handler read the clock: it can only say "fires at due or
    # later" (by the request's latency), never earlier.
    assert 0.0 < before["in_seconds"] <= 3.0
    assert before["fires_at"] >= due_ts - 0.01, (before, due_ts)
    # After the restart the handler read the clock again: the delay it computed is the time
    # really left until due, shorter by the time the worker was dead; a replayed delay would be
    # the stale one (`before`'s), and the reminder would go out `dead` seconds late. (The
    # tolerance, half the dead time, absorbs the two requests' latencies on a loaded machine.)
    dead = after["received_at"] - before["received_at"]
    assert dead > 0.9  # at least the lease
    assert before["in_seconds"] - after["in_seconds"] == pytest.approx(dead, abs=dead / 2)
    assert after["fires_at"] >= due_ts - 0.01, (after, due_ts)
    assert after["fires_at"] - due_ts < dead / 2, (after, due_ts)
    assert final.data["delay"] == pytest.approx(after["in_seconds"], abs=0.05)
    # And the reminder went out on time (not before its due time; not `dead` seconds late).
    [sent] = notes.sent
    assert due_ts - 0.05 <= sent["received_at"] < due_ts + dead / 2, (sent, due_ts)


# -- 3. stale checks -----------------------------------------------------------------------------


def test_stock_check_runs_again_after_a_crash_and_takes_the_out_of_stock_path(
    db_url: str, store: Store, db: Engine, shop: Shop, tmp_path: Path,
) -> None:
    shop.stock.set_stock("tee", 5)
    wid = start_checkout(store, Order("A1", "cus_1", {"tee": 2}, 4200, "tok_visa"))
    with Workers(db_url, tmp_path, shop) as workers:
        # Killed right after the check said "5 in stock", before reserving.
        workers.spawn("w1", "checkout", pause="after GET /stock")
        workers.wait_paused("w1")
        workers.kill("w1")
        shop.stock.set_stock("tee", 1)  # sold while the worker was dead

        workers.spawn("w2", "checkout")
        final = done(db, wid)

    assert final.state == "OutOfStock"
    assert final.data["missing"] == {"tee": 1}
    checks = shop.stock.received("GET /stock")
    assert len(checks) == 2  # looked again after the restart
    assert shop.stock.received("POST /reservations") == []
    assert shop.stock.available("tee") == 1
    assert shop.payments.received() == []  # nothing charged
    assert [(h.kind, h.from_state, h.to_state, h.worker) for h in history_of(db, wid)] == [
        ("start", None, "CheckoutStarted", None),
        ("transition", "CheckoutStarted", "OutOfStock", "w2"),
    ]
