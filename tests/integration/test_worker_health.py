"""A worker never stops serving while its process lives: `Worker.health()` says how it is doing,
and a loop thread that dies anyway is restarted, or, when it keeps dying, `run()` raises instead of
leaving a live worker that does nothing. (Outages with real processes: tests/acceptance/
test_outages.py.)"""

from __future__ import annotations

import sys
import threading
from typing import Any

import attrs
import pytest

from statemachine import Client, Context, Machine, Store, Worker, step
from tests.machines_for_tests import P1, Bulk
from tests.waits import wait_until


class ThreadKiller(BaseException):
    """Not an Exception: gets past every loop's own error handling and kills the thread."""


def _claims_that_die(store: Store, monkeypatch: pytest.MonkeyPatch, times: int) -> None:
    real = store.sql.claim
    calls = {"n": 0}

    def claim(**kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= times:
            raise ThreadKiller("simulated bug in the claimer")
        return real(**kwargs)

    monkeypatch.setattr(store.sql, "claim", claim)


def test_health_of_a_serving_worker(store: Store) -> None:
    client = Client(store, [Bulk])
    with Worker(store, [Bulk()], poll_interval=0.05) as worker:
        wid = client.start(Bulk, P1(n=1))
        client.wait(wid, timeout=30)
        # The row is done as soon as the last commit lands; the worker counts it just after.
        health = wait_until(lambda: (h := worker.health()).transitions == 3 and h,
                            "the worker to count three transitions",
                            describe=lambda: worker.health().transitions)
    assert health.serving
    assert health.database_reachable
    assert health.unreachable_since is None
    assert health.last_claim_at is not None
    assert health.consecutive_failures == 0
    assert health.threads == {"sm-claimer": True, "sm-heartbeat": True, "sm-sweeper": True}
    assert not worker.health().serving  # stopped


def test_a_claimer_thread_that_dies_is_restarted(store: Store,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _claims_that_die(store, monkeypatch, times=1)
    worker = Worker(store, [Bulk()], poll_interval=0.05)
    runner = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
    runner.start()
    try:
        wait_until(lambda: worker.health().thread_restarts == 1, "the claimer to be restarted")
        wid = Client(store, [Bulk]).start(Bulk, P1(n=2))
        assert Client(store, [Bulk]).wait(wid, timeout=30).status == "done"
        health = worker.health()
        assert health.serving
        assert "ThreadKiller" in (health.last_error or "")
    finally:
        worker.stop()
        runner.join(30)


def test_run_raises_when_a_thread_keeps_dying(store: Store,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _claims_that_die(store, monkeypatch, times=1000)
    worker = Worker(store, [Bulk()], poll_interval=0.05)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            worker.run(install_signal_handlers=False)
        except ThreadKiller as e:
            raised.append(e)

    runner = threading.Thread(target=run)
    runner.start()
    runner.join(60)
    assert not runner.is_alive(), "run() kept going with a claimer that cannot live"
    assert raised, "run() returned instead of raising"
    assert not worker.health().serving


@attrs.frozen
class Exiting:
    n: int


@attrs.frozen
class Exited:
    attempt: int


class ExitsOnce(Machine):
    """The first attempt's handler calls sys.exit(), as a badly behaved library might."""

    name = "health_exits_once"
    initial = Exiting
    terminal = (Exited,)

    @step
    def leave(self, state: Exiting, ctx: Context) -> Exited:
        if ctx.attempt == 1:
            sys.exit(3)
        return Exited(attempt=ctx.attempt)


def test_a_handler_that_raises_systemexit_does_not_stop_the_worker(
    store: Store, caplog: pytest.LogCaptureFixture,
) -> None:
    client = Client(store, [ExitsOnce])
    with Worker(store, [ExitsOnce()], poll_interval=0.05, lease=0.5) as worker:
        wid = client.start(ExitsOnce, Exiting(n=1))
        info = client.wait(wid, timeout=30)
        assert worker.health().serving
    assert info.state == Exited(attempt=2)  # taken up again once the lease ran out
    assert any("handler thread was stopped by SystemExit" in r.getMessage()
               for r in caplog.records)


def test_a_failing_claim_is_logged_once_retried_with_backoff_and_recovers(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    real = store.sql.claim
    calls = {"n": 0}

    def claim(**kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= 5:
            raise ValueError("simulated claim failure")
        return real(**kwargs)

    monkeypatch.setattr(store.sql, "claim", claim)
    client = Client(store, [Bulk])
    wid = client.start(Bulk, P1(n=3))
    with Worker(store, [Bulk()], poll_interval=0.05) as worker:
        assert client.wait(wid, timeout=30).status == "done"
        health = worker.health()
    messages = [r.getMessage() for r in caplog.records if r.name == "statemachine.worker"]
    failed = [m for m in messages if "claimer failed, retrying in" in m]
    assert len(failed) == 1, messages  # once, not once per retry
    assert [m for m in messages if "claimer works again after 5 failures" in m], messages
    assert calls["n"] > 5
    assert (health.consecutive_failures, health.database_reachable) == (0, True)
    assert health.last_error == "ValueError: simulated claim failure"
