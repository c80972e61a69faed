"""`statemachine.testing.explore` over the drip and the billing invoice, against their HTTP fakes:
random steps, injected failures, crashes before and after handlers, events and clock jumps, and
still no workflow sends a mail twice or pays twice."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from machines.billing import CustomerInvoice, InvoiceDue
from machines.drip import Contact, Drip, WelcomeDue
from machines.fakes.billing import BillingService
from machines.fakes.mail import MailService
from statemachine.testing import Exploration, explore

EXPLORE = settings(max_examples=15, stateful_step_count=12, deadline=None, database=None,
                   suppress_health_check=list(HealthCheck))


@pytest.fixture(name="mail", scope="module")
def mail_fixture() -> Iterator[MailService]:
    with MailService() as mail:
        yield mail


@pytest.fixture(name="bank", scope="module")
def bank_fixture() -> Iterator[BillingService]:
    with BillingService() as bank:
        yield bank


def _by_workflow(keys: list[str]) -> dict[str, list[str]]:
    """Idempotency keys (``WORKFLOW:VERSION``) grouped by workflow id."""
    found: dict[str, list[str]] = {}
    for key in keys:
        found.setdefault(key.partition(":")[0], []).append(key)
    return found


def test_no_drip_sends_a_mail_twice(mail: MailService) -> None:
    def fresh() -> Drip:
        with mail.lock:
            mail.sent.clear()
            mail.sends_per_key.clear()
            mail._answers.clear()
        return Drip(mail.url)

    def each_template_once_per_drip(run: Exploration) -> None:
        with mail.lock:
            sent = [(m["key"].partition(":")[0], m["template"]) for m in mail.sent]
        assert len(sent) == len(set(sent)), f"a drip sent a template twice: {sent}"

    exploring = explore(fresh, initial=st.builds(
        lambda n: WelcomeDue(Contact(f"u{n}@example.com")), st.integers(0, 5)),
        invariants=[each_template_once_per_drip], force=False)
    try:
        run_state_machine_as_test(exploring, settings=EXPLORE)
    finally:
        exploring.close()


def test_no_invoice_pays_twice(bank: BillingService) -> None:
    customers = [bank.add_customer(f"c{n}@example.com") for n in range(3)]

    def fresh() -> CustomerInvoice:
        with bank.lock:
            bank.charges.clear()
            bank.charges_per_key.clear()
            bank._answers.clear()
        return CustomerInvoice(bank.url, bank.url)  # the mail API: unreachable paths 404

    def one_payment_per_invoice(run: Exploration) -> None:
        with bank.lock:
            keys = [c["key"] for c in bank.charges.values() if c["status"] == "succeeded"]
        paid: dict[str, Any] = _by_workflow(keys)
        assert all(len(k) == 1 for k in paid.values()), f"an invoice paid twice: {paid}"

    exploring = explore(fresh, initial=st.builds(
        lambda c: InvoiceDue(c, f"{c}@example.com", "2030-01"), st.sampled_from(customers)),
        invariants=[one_payment_per_invoice], force=False)
    try:
        run_state_machine_as_test(exploring, settings=EXPLORE)
    finally:
        exploring.close()
