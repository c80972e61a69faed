"""The certificate machine (machines/cloudflare/certificate.py) against a fake ACME-style CA and
the fake Cloudflare API, both real HTTP servers on 127.0.0.1: issued by DNS-01 with no history
row per poll, renewed from its daily schedule 30 days before expiry, and every failure path
(the CA refuses the record, never validates, a lost finalize answer, a 429, Cloudflare refusing
the record), on a real in-process worker with a fake clock; and a worker SIGKILLed right after
the challenge record was created."""

from __future__ import annotations

import stat
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from machines.cloudflare.acme import AcmeClient, CertificateFiles
from machines.cloudflare.api import CloudflareAPI
from machines.cloudflare.certificate import (
    CertificateFailed,
    CertificateIssued,
    CertificateNotDue,
    CertificateRequested,
    IssueCertificate,
    renewal_schedule,
)
from machines.fakes.acme import AcmeService
from machines.fakes.cloudflare import CloudflareService
from statemachine import Client, HistoryEntry, Store, Worker, WorkflowInfo
from statemachine.testing import FakeClock
from tests.fake_time import run_to_end
from tests.procs import WorkerProcesses
from tests.waits import wait_until

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

ZONE = "023e105f4ecef8ad9ca31a8372d0c353"
DOMAIN = "shop.example.com"
FAST: dict[str, Any] = dict(concurrency=4, poll_interval=0.05)





def txt_of(cloudflare: CloudflareService) -> Any:
    return lambda name: [r["content"] for r in cloudflare.find(ZONE, "TXT", name)]


@pytest.fixture
def ca(cloudflare: CloudflareService, clock: FakeClock) -> Iterator[AcmeService]:
    with AcmeService(resolve_txt=txt_of(cloudflare), now=clock.now, validate_after=2,
                     issue_after=2) as service:
        yield service


def machine(ca: AcmeService, cloudflare: CloudflareService, directory: Path, *,
            cf_token: str = "test-token") -> IssueCertificate:
    return IssueCertificate(acme=AcmeClient(ca.url + "/directory"),
                            dns=CloudflareAPI(cf_token, cloudflare.url),
                            files=CertificateFiles(directory))


def issue(store: Store, clock: FakeClock, m: IssueCertificate,
          request: CertificateRequested | None = None) -> tuple[WorkflowInfo, list[HistoryEntry]]:
    client = Client(store, [IssueCertificate])
    with Worker(store, [m], **FAST):
        wid = client.start(IssueCertificate, request or CertificateRequested(DOMAIN, ZONE))
        info = run_to_end(client, clock, wid)
    return info, client.history(wid)


def txt_records(cloudflare: CloudflareService) -> list[dict[str, Any]]:
    return cloudflare.find(ZONE, "TXT", f"_acme-challenge.{DOMAIN}")


@BOTH
def test_a_certificate_is_issued_by_dns_01_and_the_challenge_removed(
    faked: Store, clock: FakeClock, ca: AcmeService, cloudflare: CloudflareService,
    tmp_path: Path
) -> None:
    info, steps = issue(faked, clock, machine(ca, cloudflare, tmp_path))
    assert isinstance(info.state, CertificateIssued)
    cert = x509.load_pem_x509_certificate((tmp_path / f"{DOMAIN}.pem").read_bytes())
    assert cert.not_valid_after_utc == datetime.fromisoformat(info.state.not_after)
    assert cert.not_valid_after_utc - clock.now() == pytest.approx(timedelta(days=90),
                                                                   abs=timedelta(minutes=2))
    assert cert.subject.rfc4514_string() == f"CN={DOMAIN}"
    assert stat.S_IMODE((tmp_path / f"{DOMAIN}.key").stat().st_mode) == 0o600
    # The challenge record was published (the CA found it), then removed.
    assert ca.authzs["2"]["status"] == "valid"
    assert (cloudflare.created, cloudflare.deleted, txt_records(cloudflare)) == (1, 1, [])
    kinds = [h.kind for h in steps]
    assert "polled" not in kinds
    assert [h.to_state for h in steps] == [
        "CertificateRequested", "Ordering", "OrderPlaced", "ChallengePublished",
        "ChallengeAnswered", "Validated", "Finalizing", "CertificateReady", "Installed",
        "CertificateIssued"]
    assert len(ca.received("POST /acme/authz/*")) == 1 + 2  # publish, then two polls


@SQLITE
def test_the_schedule_renews_30_days_before_expiry(
    faked: Store, clock: FakeClock, ca: AcmeService, cloudflare: CloudflareService,
    tmp_path: Path
) -> None:
    schedule = renewal_schedule(DOMAIN, ZONE)
    client = Client(faked, [IssueCertificate])
    seen: list[uuid.UUID] = []

    def next_run() -> WorkflowInfo:
        """Move to the schedule's next tick and run the workflow it starts."""
        clock.set(schedule.next_tick(clock.now()))
        found = wait_until(lambda: [i for i in client.list(machine=IssueCertificate.name)
                                    if i.id not in seen], "the tick's workflow")
        seen.append(found[0].id)
        return run_to_end(client, clock, found[0].id)

    with Worker(faked, [machine(ca, cloudflare, tmp_path)], schedules=[schedule], **FAST):
        wait_until(lambda: faked.sql.schedule_ticks(), "the schedule to be registered")
        first = next_run()  # no certificate yet: issued
        assert isinstance(first.state, CertificateIssued)
        expires = datetime.fromisoformat(first.state.not_after)
        clock.set(expires - timedelta(days=30, hours=1))
        assert isinstance(next_run().state, CertificateNotDue)  # 30 days and seconds left
        renewed = next_run()  # the next day's check: 29 days left
    assert isinstance(renewed.state, CertificateIssued)
    assert renewed.state.serial != first.state.serial
    assert datetime.fromisoformat(renewed.state.not_after) > expires
    assert len(ca.issued) == 2


@SQLITE
def test_a_challenge_the_ca_refuses_ends_failed_with_the_record_removed(
    faked: Store, clock: FakeClock, ca: AcmeService, cloudflare: CloudflareService,
    tmp_path: Path
) -> None:
    ca.resolve_txt = lambda name: ["not-the-answer"]
    info, _ = issue(faked, clock, machine(ca, cloudflare, tmp_path))
    assert isinstance(info.state, CertificateFailed)
    assert (info.state.failed_in, info.state.failure.type) == ("ChallengeAnswered",
                                                               "ChallengeFailed")
    assert "incorrectResponse" not in info.state.failure.message  # the detail, not the type
    assert "expected" in info.state.failure.message
    [cleaned] = info.state.cleaned_up
    assert cleaned.startswith(f"TXT record _acme-challenge.{DOMAIN}")
    assert txt_records(cloudflare) == []
    assert not (tmp_path / f"{DOMAIN}.pem").exists()


@SQLITE
def test_a_challenge_never_validated_gives_up_at_the_deadline(
    faked: Store, clock: FakeClock, ca: AcmeService, cloudflare: CloudflareService,
    tmp_path: Path
) -> None:
    ca.validate_after = 10_000
    start = clock.now()
    info, steps = issue(faked, clock, machine(ca, cloudflare, tmp_path))
    assert isinstance(info.state, CertificateFailed)
    assert info.state.failure.type == "PollDeadline"
    assert timedelta(minutes=10) <= clock.now() - start < timedelta(minutes=11)
    assert txt_records(cloudflare) == []
    assert len(steps) == 7  # start, 4 transitions, the error route, the cleanup: no poll rows


@SQLITE
def test_a_finalize_whose_answer_was_lost_uses_the_same_key(
    faked: Store, clock: FakeClock, ca: AcmeService, cloudflare: CloudflareService,
    tmp_path: Path
) -> None:
    ca.fail_next(1, "POST /acme/order/*/finalize", status=500, after_effect=True)
    info, steps = issue(faked, clock, machine(ca, cloudflare, tmp_path))
    assert isinstance(info.state, CertificateIssued)
    assert len(ca.received("POST /acme/order/*/finalize")) == 2
    assert [h.kind for h in steps].count("failed_attempt") == 1
    assert len(list(tmp_path.glob(f"{DOMAIN}.*.key"))) == 1  # one key for the one order


@SQLITE
def test_a_rate_limited_ca_is_waited_for(
    faked: Store, clock: FakeClock, ca: AcmeService, cloudflare: CloudflareService,
    tmp_path: Path
) -> None:
    ca.fail_next(1, "POST /acme/new-order", status=429, headers={"Retry-After": "120"},
                 body={"type": "urn:ietf:params:acme:error:rateLimited", "detail": "slow down"})
    info, steps = issue(faked, clock, machine(ca, cloudflare, tmp_path))
    assert isinstance(info.state, CertificateIssued)
    assert [h.kind for h in steps].count("rescheduled") == 1


@SQLITE
def test_a_refused_challenge_record_fails_and_says_what_is_left(
    faked: Store, clock: FakeClock, ca: AcmeService, cloudflare: CloudflareService,
    tmp_path: Path
) -> None:
    info, _ = issue(faked, clock, machine(ca, cloudflare, tmp_path, cf_token="revoked"))
    assert isinstance(info.state, CertificateFailed)
    assert info.state.failed_in == "OrderPlaced"
    [left] = info.state.cleaned_up
    assert "refused" in left
    assert "remove it by hand" in left


@SQLITE
def test_a_certificate_with_time_left_is_not_renewed_unless_forced(
    faked: Store, clock: FakeClock, ca: AcmeService, cloudflare: CloudflareService,
    tmp_path: Path
) -> None:
    m = machine(ca, cloudflare, tmp_path)
    issue(faked, clock, m)
    again, steps = issue(faked, clock, m)
    assert isinstance(again.state, CertificateNotDue)
    assert len(steps) == 2
    forced, _ = issue(faked, clock, m, CertificateRequested(DOMAIN, ZONE, force=True))
    assert isinstance(forced.state, CertificateIssued)
    assert len(ca.issued) == 2


# -- SIGKILL right after the challenge record was created ----------------------------------------


@pytest.mark.slow
@SQLITE
def test_a_worker_killed_after_publishing_the_challenge_publishes_it_once(
    store: Store, db_url: str, tmp_path: Path, cloudflare: CloudflareService
) -> None:
    with AcmeService(resolve_txt=txt_of(cloudflare)) as ca, WorkerProcesses(
            db_url, tmp_path / "logs", env={
                "ACME_DIRECTORY_URL": ca.url + "/directory", "CERT_DIR": str(tmp_path / "certs"),
                "CLOUDFLARE_API_URL": cloudflare.url,
                "CLOUDFLARE_API_TOKEN": cloudflare.token}) as workers:
        cloudflare.fail_next(1, "POST /client/v4/zones/*/dns_records", status=None, delay=60)
        client = Client(store, [IssueCertificate])
        wid = client.start(IssueCertificate, CertificateRequested(DOMAIN, ZONE))
        workers.spawn("w1", "machines.cloudflare.certificate:from_env")
        wait_until(lambda: cloudflare.created == 1, "the challenge record to be created")
        workers.procs["w1"].kill()
        workers.procs["w1"].wait(10)
        workers.spawn("w2", "machines.cloudflare.certificate:from_env")
        info = client.wait(wid, timeout=90)
    assert isinstance(info.state, CertificateIssued)
    assert (cloudflare.created, cloudflare.deleted) == (1, 1)
    assert len(ca.issued) == 1
