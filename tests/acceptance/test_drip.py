"""The email drip (`machines.drip`) end to end: a real worker, the fake mail API, FakeClock for the
days between mails, every backend. No mail is sent twice: the fake counts sends per key."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from machines.drip import (
    DOMAIN_RATE,
    AwaitingLast,
    AwaitingTip,
    Bounced,
    Clicked,
    Contact,
    Converted,
    Drip,
    DripFinished,
    Stopped,
    Unsubscribed,
    WelcomeDue,
)
from machines.fakes.mail import MailService
from statemachine import Client, Store, Worker
from statemachine.testing import FakeClock
from tests.procs import WorkerProcesses
from tests.waits import wait_until

# SQLite and PostgreSQL (read committed): the third backend of the suite, PostgreSQL at
# SERIALIZABLE, adds nothing these machines would notice and a third of the time.
pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)

FAST: dict[str, Any] = dict(concurrency=8, poll_interval=0.05)


@pytest.fixture(name="mail")
def mail_fixture() -> Iterator[MailService]:
    with MailService() as mail:
        yield mail


@pytest.fixture(name="clock")
def clock_fixture() -> FakeClock:
    return FakeClock(datetime(2030, 3, 1, 9, 0, tzinfo=UTC))



def sent_once(mail: MailService) -> None:
    assert set(mail.sends_per_key.values()) <= {1}
    assert len({m["key"] for m in mail.sent}) == len(mail.sent)


def waiting_in(client: Client, wid: Any, state: type) -> bool:
    info = client.get(wid)
    return isinstance(info.state, state) and info.status == "waiting"


def test_the_drip_sends_three_mails_days_apart(faked: Store, clock: FakeClock,
                                               mail: MailService) -> None:
    client = Client(faked, [Drip])
    with Worker(faked, [Drip(mail.url)], **FAST):
        wid = client.start(Drip, WelcomeDue(Contact("ada@example.com", "Ada")))
        wait_until(lambda: waiting_in(client, wid, AwaitingTip), "the welcome")
        assert mail.to("ada@example.com") == ["welcome"]
        assert client.get(wid).wake_at == clock.now() + timedelta(days=2)
        clock.advance(days=2)
        wait_until(lambda: waiting_in(client, wid, AwaitingLast), "the tip")
        assert mail.to("ada@example.com") == ["welcome", "tip"]
        clock.advance(days=3)
        info = client.wait(wid, timeout=60)
    assert info.state == DripFinished(Contact("ada@example.com", "Ada"))
    assert mail.to("ada@example.com") == ["welcome", "tip", "last"]
    assert mail.sent[0]["data"] == {"name": "Ada"}
    sent_once(mail)


def test_a_click_branches(faked: Store, clock: FakeClock, mail: MailService) -> None:
    client = Client(faked, [Drip])
    with Worker(faked, [Drip(mail.url)], **FAST):
        wid = client.start(Drip, WelcomeDue(Contact("bo@example.com")))
        wait_until(lambda: waiting_in(client, wid, AwaitingTip), "the welcome")
        client.send(wid, Clicked("https://example.com/pricing"))
        wait_until(lambda: waiting_in(client, wid, AwaitingLast), "the offer")
        assert mail.to("bo@example.com") == ["welcome", "offer"]  # no tip
        assert mail.sent[-1]["data"]["link"] == "https://example.com/pricing"
        client.send(wid, Clicked("https://example.com/buy"))
        info = client.wait(wid, timeout=60)
    assert info.state == Converted(Contact("bo@example.com"), "https://example.com/buy")
    assert mail.to("bo@example.com") == ["welcome", "offer"]  # no last mail


@pytest.mark.parametrize("days", [0, 2])
def test_unsubscribed_stops_it(faked: Store, clock: FakeClock, mail: MailService,
                               days: int) -> None:
    client = Client(faked, [Drip])
    with Worker(faked, [Drip(mail.url)], **FAST):
        wid = client.start(Drip, WelcomeDue(Contact("cy@example.com")))
        wait_until(lambda: waiting_in(client, wid, AwaitingTip), "the welcome")
        if days:
            clock.advance(days=days)
            wait_until(lambda: waiting_in(client, wid, AwaitingLast), "the tip")
        client.send(wid, Unsubscribed())
        info = client.wait(wid, timeout=60)
        clock.advance(days=10)  # nothing is left to come due
    expected = "AwaitingLast" if days else "AwaitingTip"
    assert info.state == Stopped(Contact("cy@example.com"), expected)
    assert mail.to("cy@example.com") == (["welcome", "tip"] if days else ["welcome"])


def test_unsubscribed_before_a_mail_goes_out_stops_it_unsent(
    faked: Store, clock: FakeClock, mail: MailService
) -> None:
    """Sent while the welcome is due (before any worker ran it): the welcome is never sent."""
    client = Client(faked, [Drip])
    wid = client.start(Drip, WelcomeDue(Contact("dee@example.com")))
    client.send(wid, Unsubscribed())
    with Worker(faked, [Drip(mail.url)], **FAST):
        info = client.wait(wid, timeout=60)
    assert info.state == Stopped(Contact("dee@example.com"), "WelcomeDue")
    assert mail.to("dee@example.com") == []


def test_unsubscribed_while_the_tip_is_due_stops_it(
    faked: Store, clock: FakeClock, mail: MailService
) -> None:
    client = Client(faked, [Drip])
    mail.fail_next(1, "POST /messages", status=503, where=lambda r: r.body["template"] == "tip")
    with Worker(faked, [Drip(mail.url)], **FAST):
        wid = client.start(Drip, WelcomeDue(Contact("dan@example.com")))
        wait_until(lambda: waiting_in(client, wid, AwaitingTip), "the welcome")
        clock.advance(days=2)
        # The tip's first try failed (503); it waits for its retry when the reader unsubscribes.
        # (Ready, not just attempt 1: the running try has attempt 1 too, and a clock moved
        # while it runs would put its retry past the move.)
        wait_until(lambda: (i := client.get(wid)).state_name == "TipDue" and i.attempt == 1
                   and i.status == "ready", "the tip's failed first try",
                   describe=lambda: client.get(wid))
        client.send(wid, Unsubscribed())
        clock.advance(seconds=60)
        info = client.wait(wid, timeout=60)
    assert info.state == Stopped(Contact("dan@example.com"), "TipDue")
    assert mail.to("dan@example.com") == ["welcome"]


def test_transient_failures_resend_without_sending_twice(
    store: Store, mail: MailService
) -> None:
    mail.fail_next(2, "POST /messages", status=503, after_effect=True)  # sent, answer lost
    mail.fail_next(1, "POST /messages", status=None, delay=1.0)  # slower than the timeout...
    mail.fail_next(1, "POST /messages", status=429, headers={"Retry-After": "0"})
    client = Client(store, [Drip])
    with Worker(store, [Drip(mail.url, http=httpx.Client(timeout=0.5))], **FAST):
        wid = client.start(Drip, WelcomeDue(Contact("eve@example.com")))
        wait_until(lambda: waiting_in(client, wid, AwaitingTip), "the welcome")
    assert mail.to("eve@example.com") == ["welcome"]
    assert len(mail.received("POST /messages")) >= 5  # more if the machine is slow to answer
    assert len({r.idempotency_key for r in mail.received("POST /messages")}) == 1
    kinds = [h.kind for h in client.history(wid)]
    assert kinds.count("rescheduled") == 1  # the 429 cost no attempt
    sent_once(mail)


def test_a_bounced_address_ends_the_drip(store: Store, mail: MailService) -> None:
    mail.rejected.add("nobody@example.com")
    client = Client(store, [Drip])
    with Worker(store, [Drip(mail.url)], **FAST):
        wid = client.start(Drip, WelcomeDue(Contact("nobody@example.com")))
        info = client.wait(wid, timeout=60)
    assert isinstance(info.state, Bounced)
    assert "address_rejected" in info.state.failure.message
    assert len(mail.received("POST /messages")) == 1  # a 422 is not retried
    assert mail.sent == []


def test_sends_are_limited_per_domain(faked: Store, clock: FakeClock,
                                      mail: MailService) -> None:
    """`DOMAIN_RATE` mails a minute to one domain; another domain is not held up."""
    client = Client(faked, [Drip])
    rate = DOMAIN_RATE.count
    assert rate is not None
    crowd = [f"u{n}@example.com" for n in range(rate + 2)]
    with Worker(faked, [Drip(mail.url)], **FAST):
        ids = [client.start(Drip, WelcomeDue(Contact(a))) for a in crowd]
        solo = client.start(Drip, WelcomeDue(Contact("solo@other.org")))
        wait_until(lambda: waiting_in(client, solo, AwaitingTip), "other.org's welcome")

        def welcomed() -> int:
            return sum(1 for a in crowd if mail.to(a))

        def deferred() -> bool:
            held = [client.get(i) for i in ids if client.get(i).state_name == "WelcomeDue"]
            return len(held) == 2 and all(
                h.status == "ready" and h.wake_at and h.wake_at > clock.now() for h in held)

        wait_until(deferred, "two to wait for the domain's rate, in the database", timeout=90)
        assert welcomed() == rate  # the clock has not moved
        clock.advance(seconds=61)  # the window has passed (a deferred start has ~10 ms jitter)
        wait_until(lambda: welcomed() == rate + 2, "the other two, a minute later")
    sent_once(mail)


@pytest.mark.slow
def test_a_worker_killed_after_the_mail_api_answered_sends_nothing_twice(
    db_url: str, tmp_path: Path, mail: MailService
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {"MAIL_API_URL": mail.url, "JOBS_KILL": "after POST /messages",
           "JOBS_MARKS": str(marks)}
    store = Store(db_url)
    client = Client(store, [Drip])
    try:
        with WorkerProcesses(db_url, tmp_path / "logs", env=env) as workers:
            workers.spawn("w1", "tests.jobs_apps:drip")
            wid = client.start(Drip, WelcomeDue(Contact("fay@example.com")))
            wait_until(lambda: (marks / "killed").exists()
                       and workers.procs["w1"].poll() is not None, "w1 to die after the send")
            assert mail.to("fay@example.com") == ["welcome"]
            assert client.get(wid).state_name == "WelcomeDue"  # nothing committed
            workers.spawn("w2", "tests.jobs_apps:drip")
            wait_until(lambda: waiting_in(client, wid, AwaitingTip), "the welcome, again")
        assert mail.to("fay@example.com") == ["welcome"]
        assert len(mail.received("POST /messages")) == 2  # sent again, deduplicated
        sent_once(mail)
    finally:
        store.dispose()
