"""What the checkout tests' worker processes run: ``--app tests.checkout_apps:NAME``.

The factories build machines from the environment (the service URLs in ``CHECKOUT_*_URL``) and,
when ``CHECKOUT_PAUSE`` is set, stop at one point of one handler so that the test can SIGKILL the
worker there. The pause point is outside the machine's code (an httpx event hook, or a SQLAlchemy
cursor event), so the machines run exactly as in production:

- ``after POST /charges``: the charge request was answered (the card is charged), the handler has
  not returned, nothing is committed.
- ``before POST /charges``: the handler is about to send the request.
- ``sql INSERT INTO orders``: inside a transactional handler, after its write, before the commit.

On reaching it, the worker writes ``$CHECKOUT_MARKS/paused`` ("PID where") and waits until the
test kills it or creates ``$CHECKOUT_MARKS/resume``.

Also here: two variants of the checkout's charge step (at-least-once; at-most-once without a
reconcile handler), and `PaymentReminder`, the clock-reading scenario.
"""

from __future__ import annotations

import fnmatch
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import httpx
from sqlalchemy import Engine, event

from machines.checkout import (
    SERVICE_RETRY,
    Charged,
    Checkout,
    CheckoutSaga,
    ReleasingStock,
    StockReserved,
    from_env,
)
from statemachine import Context, Delayed, Failure, Machine, later, step

# -- pause points --------------------------------------------------------------------------------


_paused: list[str] = []  # once per process (the CLI may call a factory twice)


def _pause(where: str) -> None:
    if _paused:
        return
    _paused.append(where)
    marks = Path(os.environ["CHECKOUT_MARKS"])
    tmp = marks / f"paused.{os.getpid()}"
    tmp.write_text(f"{os.getpid()} {where}")
    tmp.rename(marks / "paused")  # atomically: the test never reads half of it
    deadline = time.monotonic() + 120
    while not (marks / "resume").exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def _http() -> httpx.Client:
    """An httpx client that pauses where ``CHECKOUT_PAUSE`` says (``before|after METHOD /path``,
    fnmatch on the path), once per process."""
    pause = os.environ.get("CHECKOUT_PAUSE", "")
    when, _, route = pause.partition(" ")

    def check(phase: str, request: httpx.Request) -> None:
        if when == phase and fnmatch.fnmatchcase(f"{request.method} {request.url.path}", route):
            _pause(pause)

    def on_request(request: httpx.Request) -> None:
        check("before", request)

    def on_response(response: httpx.Response) -> None:
        check("after", response.request)

    return httpx.Client(timeout=10.0,
                        event_hooks={"request": [on_request], "response": [on_response]})


_sql_hooks: dict[str, Any] = {}


def _install_sql_pause() -> None:
    pause = os.environ.get("CHECKOUT_PAUSE", "")
    if not pause.startswith("sql ") or _sql_hooks:
        return
    prefix = pause.removeprefix("sql ").upper()

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(prefix):
            _pause(pause)

    _sql_hooks[prefix] = after
    event.listen(Engine, "after_cursor_execute", after)


# -- variants of the charge step -----------------------------------------------------------------


class CheckoutAtLeastOnce(CheckoutSaga):
    """The charge as a plain step: re-run after a crash, made safe by the idempotency key."""

    name = "checkout_at_least_once"

    @step(retry=SERVICE_RETRY)
    def charge_card(self, state: StockReserved, ctx: Context) -> Charged:
        charge_id = self.payments.charge(state.order, key=ctx.idempotency_key)
        return Charged(state.order, state.reservation_id, charge_id)

    @charge_card.on_error
    def charge_refused(self, state: StockReserved, failure: Failure,
                       ctx: Context) -> ReleasingStock:
        return self.release_after_failed_charge(state, failure, ctx)


class CheckoutInDoubt(CheckoutSaga):
    """An at-most-once charge without a reconcile handler: a doubtful attempt waits for a human."""

    name = "checkout_in_doubt"

    @step(at_most_once=True, retry=SERVICE_RETRY)
    def charge_card(self, state: StockReserved, ctx: Context) -> Charged:
        charge_id = self.payments.charge(state.order, key=ctx.idempotency_key)
        return Charged(state.order, state.reservation_id, charge_id)

    @charge_card.on_error
    def charge_refused(self, state: StockReserved, failure: Failure,
                       ctx: Context) -> ReleasingStock:
        return self.release_after_failed_charge(state, failure, ctx)


# -- the clock-reading scenario ------------------------------------------------------------------


@attrs.frozen
class ReminderPlanned:
    order_id: str
    due_at: datetime


@attrs.frozen
class ReminderDue:
    order_id: str
    due_at: datetime
    delay: float  # what `plan` computed: seconds from its clock reading until due_at


@attrs.frozen
class Reminded:
    order_id: str
    delay: float


class PaymentReminder(Machine):
    """Remind the customer at `due_at`: say when (in seconds from now), sleep, send."""

    name = "payment_reminder"
    initial = ReminderPlanned
    terminal = (Reminded,)

    def __init__(self, notifications_url: str, http: httpx.Client) -> None:
        self.url = notifications_url
        self.http = http

    @step(retry=SERVICE_RETRY)
    def plan(self, state: ReminderPlanned, ctx: Context) -> Delayed[ReminderDue]:
        delay = max(0.0, (state.due_at - ctx.now()).total_seconds())  # the clock, read now
        self.http.post(f"{self.url}/reminders", json={
            "order_id": state.order_id, "in_seconds": delay}).raise_for_status()
        return later(ReminderDue(state.order_id, state.due_at, delay), after=delay)

    @step(retry=SERVICE_RETRY)
    def send(self, state: ReminderDue, ctx: Context) -> Reminded:
        self.http.post(f"{self.url}/reminders/send",
                       json={"order_id": state.order_id}).raise_for_status()
        return Reminded(state.order_id, state.delay)


# -- the factories ``--app`` calls ---------------------------------------------------------------

def _checkout(machine: type[CheckoutSaga]) -> CheckoutSaga:
    _install_sql_pause()
    return from_env(machine, http=_http())


def checkout() -> CheckoutSaga:
    return _checkout(Checkout)


def at_least_once() -> CheckoutSaga:
    return _checkout(CheckoutAtLeastOnce)


def in_doubt() -> CheckoutSaga:
    return _checkout(CheckoutInDoubt)


def reminder() -> PaymentReminder:
    return PaymentReminder(os.environ["CHECKOUT_NOTIFICATIONS_URL"], _http())
