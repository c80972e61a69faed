"""(c) A certificate by DNS-01: order it from an ACME-style CA, publish the challenge as a TXT
record at Cloudflare, poll until the CA has validated it (with a deadline), finalize with a CSR,
poll until issued, download and install it, and remove the challenge record; renewed from a
daily schedule once it expires within 30 days::

    CertificateRequested --check_expiry--> CertificateNotDue          (more than 30 days left)
        | (due, missing, or force)
        v
    Ordering --place_order--> OrderPlaced --publish_challenge--> ChallengePublished
        --answer_challenge--> ChallengeAnswered --wait_for_validation (polls)--> Validated
        --finalize_order--> Finalizing --wait_for_certificate (polls)--> CertificateReady
        --install_certificate--> Installed --remove_challenge--> CertificateIssued
    (any step from place_order to install_certificate fails for good)
        --abandon--> Abandoning --clean_up--> CertificateFailed
    (cancelled once ordered) --cancelled--> Abandoning (Installed, Abandoning: carry on)

Endpoints: the CA's directory, ``newOrder``, the authorization, the challenge, ``finalize``, the
order and the certificate (`machines.cloudflare.acme.AcmeClient`); Cloudflare's ``GET`` / ``POST
/client/v4/zones/{zone_id}/dns_records`` (the TXT record, ensured) and ``DELETE
/client/v4/zones/{zone_id}/dns_records/{id}`` (`machines.cloudflare.api.CloudflareAPI`).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import attrs

from machines.cloudflare.acme import AcmeClient, AcmeRejected, CertificateFiles
from machines.cloudflare.api import CloudflareAPI, CloudflareRejected
from machines.cloudflare.limits import CLOUDFLARE_API, CLOUDFLARE_RETRY
from statemachine import (
    Context,
    Failure,
    Machine,
    PermanentError,
    Poll,
    PollAgain,
    RetryPolicy,
    Schedule,
    on_cancel,
    poll_again,
    state_name,
    step,
)

__all__ = [
    "RENEW_BEFORE",
    "Abandoning",
    "CertificateFailed",
    "CertificateIssued",
    "CertificateNotDue",
    "CertificateReady",
    "CertificateRequested",
    "ChallengeAnswered",
    "ChallengeFailed",
    "ChallengePublished",
    "Finalizing",
    "Installed",
    "IssueCertificate",
    "Order",
    "OrderPlaced",
    "Ordering",
    "Validated",
    "from_env",
    "renewal_schedule",
]

RENEW_BEFORE = timedelta(days=30)
CA_RETRY = RetryPolicy(max_attempts=5, initial_delay=2.0, max_delay=60.0)
# A CA checks a DNS-01 record in seconds to minutes; give it ten.
VALIDATION_POLL = Poll(every=2, max_every=30, deadline=timedelta(minutes=10))
ISSUE_POLL = Poll(every=1, max_every=15, deadline=timedelta(minutes=5))


class ChallengeFailed(PermanentError):
    """The CA looked at the TXT record and did not accept it (or the order became invalid)."""


@attrs.frozen
class Order:
    """An order at the CA, and the TXT record that answers its challenge (once published)."""

    domain: str
    zone_id: str
    url: str
    authorization_url: str
    finalize_url: str
    challenge_url: str = ""
    txt_value: str = ""

    @property
    def txt_name(self) -> str:
        return f"_acme-challenge.{self.domain}"


@attrs.frozen
class CertificateRequested:
    """Make sure `domain` has a certificate valid for more than 30 days (`force`: renew now)."""

    domain: str
    zone_id: str
    force: bool = False


@attrs.frozen
class CertificateNotDue:
    """The certificate in place is good for more than 30 more days; nothing was ordered."""

    domain: str
    not_after: str


@attrs.frozen
class Ordering:
    domain: str
    zone_id: str


@attrs.frozen
class OrderPlaced:
    order: Order


@attrs.frozen
class ChallengePublished:
    order: Order


@attrs.frozen
class ChallengeAnswered:
    order: Order


@attrs.frozen
class Validated:
    order: Order


@attrs.frozen
class Finalizing:
    order: Order


@attrs.frozen
class CertificateReady:
    order: Order
    certificate_url: str


@attrs.frozen
class Installed:
    """The new certificate and its key are in place; the challenge record is still there."""

    order: Order
    path: str
    not_after: str
    serial: str


@attrs.frozen
class CertificateIssued:
    """Done: the certificate at `path` is valid until `not_after`."""

    domain: str
    path: str
    not_after: str
    serial: str


@attrs.frozen
class Abandoning:
    """A step failed for good: remove the challenge record if one was published."""

    domain: str
    zone_id: str
    txt_value: str
    failed_in: str
    failure: Failure


@attrs.frozen
class CertificateFailed:
    """Done, unsuccessfully: what failed, and what was cleaned up. A certificate already in
    place (a renewal that failed) stays in place."""

    domain: str
    failed_in: str
    failure: Failure
    cleaned_up: list[str]


Ordered = OrderPlaced | ChallengePublished | ChallengeAnswered | Validated | Finalizing \
    | CertificateReady


class IssueCertificate(Machine):
    """One certificate for one domain, issued or renewed."""

    name = "cloudflare_certificate"
    initial = CertificateRequested
    terminal = (CertificateIssued, CertificateNotDue, CertificateFailed)

    def __init__(self, *, acme: AcmeClient, dns: CloudflareAPI, files: CertificateFiles) -> None:
        self.acme = acme
        self.dns = dns
        self.files = files

    @step
    def check_expiry(self, state: CertificateRequested,
                     ctx: Context) -> CertificateNotDue | Ordering:
        current = self.files.current(state.domain)
        if current is not None and not state.force \
                and current.not_after - ctx.now() > RENEW_BEFORE:
            return CertificateNotDue(state.domain, current.not_after.isoformat())
        return Ordering(state.domain, state.zone_id)

    @step(retry=CA_RETRY)
    def place_order(self, state: Ordering, ctx: Context) -> OrderPlaced:
        # A repeated attempt orders again: an order that nobody follows up expires at the CA.
        url, order = self.acme.new_order(state.domain)
        return OrderPlaced(Order(state.domain, state.zone_id, url, order["authorizations"][0],
                                 order["finalize"]))

    @step(retry=CLOUDFLARE_RETRY, limit=CLOUDFLARE_API)
    def publish_challenge(self, state: OrderPlaced, ctx: Context) -> ChallengePublished:
        order = state.order
        challenge_url, value = self.acme.dns_challenge(
            self.acme.authorization(order.authorization_url))
        # TXT records are added beside others: two orders (a renewal beside a manual issue) do
        # not remove each other's answers.
        self.dns.ensure_record(order.zone_id, "TXT", order.txt_name, value, ttl=60,
                               replace=False)
        return ChallengePublished(attrs.evolve(order, challenge_url=challenge_url,
                                               txt_value=value))

    @step(retry=CA_RETRY)
    def answer_challenge(self, state: ChallengePublished, ctx: Context) -> ChallengeAnswered:
        self.acme.answer(state.order.challenge_url)
        return ChallengeAnswered(state.order)

    @step(poll=VALIDATION_POLL, retry=CA_RETRY)
    def wait_for_validation(self, state: ChallengeAnswered,
                            ctx: Context) -> Validated | PollAgain:
        authorization = self.acme.authorization(state.order.authorization_url)
        if authorization["status"] == "valid":
            return Validated(state.order)
        if authorization["status"] == "invalid":
            errors = [c.get("error", {}).get("detail", "") for c in authorization["challenges"]]
            raise ChallengeFailed(f"the CA refused the challenge: {'; '.join(errors)}")
        return poll_again()

    @step(retry=CA_RETRY)
    def finalize_order(self, state: Validated, ctx: Context) -> Finalizing:
        order = state.order
        try:
            self.acme.finalize(order.finalize_url, self.files.csr(order.domain, order.url))
        except AcmeRejected as e:
            # Finalized by an attempt whose answer was lost: the order has moved on.
            if e.kind != "orderNotReady" or self.acme.order(order.url)["status"] not in (
                    "processing", "valid"):
                raise
        return Finalizing(order)

    @step(poll=ISSUE_POLL, retry=CA_RETRY)
    def wait_for_certificate(self, state: Finalizing,
                             ctx: Context) -> CertificateReady | PollAgain:
        found = self.acme.order(state.order.url)
        if found["status"] == "valid":
            return CertificateReady(state.order, found["certificate"])
        if found["status"] == "invalid":
            raise ChallengeFailed(f"the CA marked order {state.order.url} invalid")
        return poll_again()

    @step(retry=CA_RETRY)
    def install_certificate(self, state: CertificateReady, ctx: Context) -> Installed:
        order = state.order
        stored = self.files.install(order.domain, order.url,
                                    self.acme.download(state.certificate_url))
        return Installed(order, stored.path, stored.not_after.isoformat(), stored.serial)

    @step(retry=CLOUDFLARE_RETRY, limit=CLOUDFLARE_API)
    def remove_challenge(self, state: Installed, ctx: Context) -> CertificateIssued:
        order = state.order
        self._delete_txt(order.zone_id, order.txt_name, order.txt_value)
        return CertificateIssued(order.domain, state.path, state.not_after, state.serial)

    @place_order.on_error
    @publish_challenge.on_error
    @answer_challenge.on_error
    @wait_for_validation.on_error
    @finalize_order.on_error
    @wait_for_certificate.on_error
    @install_certificate.on_error
    def abandon(self, state: Ordering | Ordered, failure: Failure, ctx: Context) -> Abandoning:
        failure = attrs.evolve(failure, traceback="")
        if isinstance(state, Ordering):
            return Abandoning(state.domain, state.zone_id, "", state_name(Ordering), failure)
        order = state.order
        # publish_challenge may have created the record before failing: look it up by name.
        return Abandoning(order.domain, order.zone_id, order.txt_value or "*",
                          state_name(type(state)), failure)

    @on_cancel
    def cancelled(self, state: Ordered | Installed | Abandoning,
                  ctx: Context) -> Abandoning | Installed:
        """A cancel once ordered removes the challenge record it may have published (a
        `publish_challenge` whose commit was lost published it with no value in the state:
        looked up by name). Installed and Abandoning carry on: their next step removes it. A
        cancel in CertificateRequested or Ordering just ends: nothing was published."""
        if isinstance(state, Installed | Abandoning):
            return state
        failure = Failure(type="Cancelled", message=ctx.cancel_requested or "cancelled",
                          attempt=0, permanent=True)
        order = state.order
        return Abandoning(order.domain, order.zone_id, order.txt_value or "*",
                          state_name(type(state)), failure)

    @step(retry=CLOUDFLARE_RETRY, limit=CLOUDFLARE_API)
    def clean_up(self, state: Abandoning, ctx: Context) -> CertificateFailed:
        cleaned: list[str] = []
        if state.txt_value:
            name = f"_acme-challenge.{state.domain}"
            try:
                cleaned = self._delete_txt(state.zone_id, name, state.txt_value)
            except CloudflareRejected as e:
                cleaned = [f"removing TXT {name} was refused ({e}); remove it by hand"]
        return CertificateFailed(state.domain, state.failed_in, state.failure, cleaned)

    def _delete_txt(self, zone_id: str, name: str, value: str) -> list[str]:
        """Delete the TXT record `name` with `value` ("*": any challenge value of ours is
        unknown, so every one under that name); what was deleted."""
        done = []
        for record in self.dns.find_records(zone_id, "TXT", name):
            if value in ("*", record.content) and self.dns.delete_record(zone_id, record.id):
                done.append(f"TXT record {name} {record.content!r} deleted")
        return done


def renewal_schedule(domain: str, zone_id: str, *, cron: str = "0 4 * * *",
                     timezone: str = "UTC") -> Schedule:
    """Every day (at 04:00 by default) a `CertificateRequested` for `domain`: it ends at once in
    `CertificateNotDue` while the certificate has more than 30 days left, and renews it
    otherwise. A day missed while no worker ran is made up once (``missed="latest"``)."""
    return Schedule(f"certificate-renewal:{domain}", cron=cron, timezone=timezone,
                    machine=IssueCertificate, missed="latest",
                    start=lambda tick: CertificateRequested(domain, zone_id))


def from_env() -> list[IssueCertificate | Schedule]:
    """``--app machines.cloudflare.certificate:from_env``: the machine and one renewal schedule
    per domain of ``CERT_DOMAINS`` (``example.com=ZONE_ID,other.org=ZONE_ID``), with
    ``ACME_DIRECTORY_URL`` (or ``ACME_URL``, the directory being ``ACME_URL/directory``, as
    the fake CA prints it), ``CERT_DIR``, ``CLOUDFLARE_API_TOKEN`` and ``CLOUDFLARE_API_URL``
    (default the real API)."""
    env = os.environ
    directory = env.get("ACME_DIRECTORY_URL") or env["ACME_URL"] + "/directory"
    machine = IssueCertificate(
        acme=AcmeClient(directory),
        dns=CloudflareAPI(env["CLOUDFLARE_API_TOKEN"],
                          env.get("CLOUDFLARE_API_URL", "https://api.cloudflare.com")),
        files=CertificateFiles(Path(env["CERT_DIR"])))
    schedules: list[IssueCertificate | Schedule] = []
    for item in filter(None, env.get("CERT_DOMAINS", "").split(",")):
        domain, _, zone = item.partition("=")
        schedules.append(renewal_schedule(domain.strip(), zone.strip()))
    return [machine, *schedules]
