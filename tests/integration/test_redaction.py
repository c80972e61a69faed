"""Secrets stay out of the database and the logs: error text the store writes (`last_error`,
`sm_history.error`, event rejections) and the engine's log records pass through `redact`, with
the user's own rules from ``Store(redact=...)`` on top."""

from __future__ import annotations

import logging
import re
from typing import Any

import attrs
import pytest
from sqlalchemy import select

from statemachine import Client, Context, Machine, RetryPolicy, Store, Worker, step
from statemachine._redact import MASK, Redactor, redact
from statemachine._schema import events, history, workflows
from statemachine.testing import FakeClock
from tests.waits import wait_until

FAST = dict(poll_interval=0.05, min_poll_interval=0.01)


@pytest.mark.parametrize(("raw", "expected"), [
    ("Authorization: Bearer abc.def", "Authorization: Bearer [redacted]"),
    ("authorization=Basic dXNlcjpwYXNz", "authorization=Basic [redacted]"),
    ("Proxy-Authorization: Digest x=1", "Proxy-Authorization: Digest [redacted]"),
    ("Cookie: sid=1; theme=dark", "Cookie: [redacted]"),
    ("Set-Cookie: sid=1; Path=/; HttpOnly", "Set-Cookie: [redacted]"),
    ("GET /v1?api_key=s3cr3t&page=2", "GET /v1?api_key=[redacted]&page=2"),
    ("apikey: xyz", "apikey: [redacted]"),
    ("token=t0k3n", "token=[redacted]"),
    ("access_token=aaa refresh_token=bbb", "access_token=[redacted] refresh_token=[redacted]"),
    ("password=hunter2 user=bob", "password=[redacted] user=bob"),
    ("passwd: hunter2", "passwd: [redacted]"),
    ("secret=shh", "secret=[redacted]"),
    ('{"client_secret": "zzz", "id": 7}', '{"client_secret": "[redacted]", "id": 7}'),
    ("{'password': 'hunter2'}", "{'password': '[redacted]'}"),
    ('{"Authorization": "Bearer abc"}', '{"Authorization": "[redacted]"}'),
    ("retrying with bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", "retrying with bearer [redacted]"),
    ("postgresql://bob:pw@db:5432/app", "postgresql://bob:[redacted]@db:5432/app"),
    ("the token expired; password reset needed", "the token expired; password reset needed"),
    ("503 Service Unavailable", "503 Service Unavailable"),
])
def test_redact_masks_credentials_and_keeps_the_rest(raw: str, expected: str) -> None:
    assert redact(raw) == expected
    assert redact(expected) == expected  # applying it again changes nothing


def test_user_rules_add_to_the_defaults() -> None:
    by_pattern = Redactor([r"card=(\d+)", re.compile(r"ssn \d{3}-\d{2}-\d{4}")])
    assert by_pattern("card=4111 ok; ssn 123-45-6789; token=x") == (
        f"card={MASK} ok; {MASK}; token={MASK}")
    by_function = Redactor(lambda text: text.replace("tenant-42", "tenant-?"))
    assert by_function("tenant-42: Authorization: Bearer q") == (
        f"tenant-?: Authorization: Bearer {MASK}")


@attrs.frozen
class Calling:
    n: int


@attrs.frozen
class Called:
    n: int


class LeakyApi(Machine):
    name = "redaction_leaky"
    initial = Calling
    terminal = (Called,)

    @step(retry=RetryPolicy(max_attempts=2, initial_delay=1.0, jitter=0.0))
    def call_api(self, state: Calling, ctx: Context) -> Called:
        ctx.log.warning("calling the API with %s", "Authorization: Bearer abc.def")
        raise RuntimeError("401 from api.example.com; sent headers "
                           "{'Authorization': 'Bearer abc.def'}, Authorization: Bearer abc.def, "
                           "card=4111222233334444")


def stored_text(store: Store) -> str:
    """Every value of every row of the workflow, history and event tables, as text."""
    with store.connect() as conn:
        rows = [*conn.execute(select(workflows)), *conn.execute(select(history)),
                *conn.execute(select(events))]
    return "\n".join(repr(tuple(r)) for r in rows)


def test_a_handler_error_with_a_bearer_token_leaves_no_token_in_the_database_or_logs(
        db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    store = Store(db_url, clock=clock, redact=[r"card=(\d+)"])
    caplog.set_level(logging.DEBUG, logger="statemachine")
    try:
        client = Client(store, [LeakyApi])
        with Worker(store, [LeakyApi], **FAST):
            wid = client.start(LeakyApi, Calling(1))
            wait_until(lambda: client.get(wid).attempt >= 1 and client.get(wid).last_error,
                       "the first attempt to fail")
            clock.advance(seconds=5)
            info = client.wait(wid, timeout=60)
        assert info.status == "failed"
        kinds = [h.kind for h in client.history(wid)]
        assert "failed_attempt" in kinds
        assert "parked" in kinds
        text = stored_text(store)
    finally:
        store.dispose()

    assert "Bearer [redacted]" in text  # the error is stored, its credential is not
    assert "abc.def" not in text
    assert "4111222233334444" not in text  # the store's own rule
    assert info.last_error is not None
    assert "abc.def" not in info.last_error
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "calling the API with Authorization: Bearer [redacted]" in logged
    assert "abc.def" not in logged
    assert "4111222233334444" not in logged


def test_an_event_rejection_reason_is_redacted(store: Store) -> None:
    wid, _ = store.sql.insert_workflow(machine="redaction_m", state="Waiting", data={})
    event_id = store.sql.insert_event(wid, "Reply", {"x": 1})
    store.sql.reject_event(event_id, "data.token: expected int, got 'token=abc.def'")
    with store.connect() as conn:
        error: Any = conn.execute(select(events.c.error).where(events.c.id == event_id)).scalar()
    assert "abc.def" not in error
    assert "token=[redacted]" in error
