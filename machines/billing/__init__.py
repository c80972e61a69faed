"""Monthly billing in batches: `BillingRun` (one per month, started by `monthly_schedule`) and
`CustomerInvoice` (one per customer). See docs/machines/billing.md.

Run it by hand::

    python -m machines.fakes billing mail          # prints the export lines below
    export BILLING_API_URL=http://127.0.0.1:8701 MAIL_API_URL=http://127.0.0.1:8702
    statemachine worker --app machines.billing:app
    statemachine start billing_run --data '{"period": "2030-01"}' --key billing:2030-01 \\
        --app machines.billing:app
"""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import httpx

from machines._http import client
from machines.billing.machine import (
    DUNNING_DELAY,
    DUNNING_RETRIES,
    MAX_RUNNING,
    AllPagesStarted,
    BillingFailed,
    BillingRun,
    Charged,
    CustomerInvoice,
    DunningDue,
    Invoice,
    InvoiceDue,
    InvoiceLine,
    InvoiceReady,
    PageStarted,
    Paid,
    PaidUnmailed,
    RunDue,
    RunReported,
    Suspended,
    SuspensionDue,
)
from statemachine import Client, Machine, Schedule

__all__ = [
    "DUNNING_DELAY",
    "DUNNING_RETRIES",
    "MAX_RUNNING",
    "AllPagesStarted",
    "BillingFailed",
    "BillingRun",
    "Charged",
    "CustomerInvoice",
    "DunningDue",
    "Invoice",
    "InvoiceDue",
    "InvoiceLine",
    "InvoiceReady",
    "PageStarted",
    "Paid",
    "PaidUnmailed",
    "RunDue",
    "RunReported",
    "Suspended",
    "SuspensionDue",
    "app",
    "billed_period",
    "monthly_schedule",
    "run_key",
    "start_run",
]

SCHEDULE_NAME = "monthly-billing"
CRON = "0 3 1 * *"  # 03:00 on the 1st


def billed_period(tick: datetime, timezone: str) -> str:
    """The month a tick bills: the run on the 1st bills the month that just ended."""
    first = tick.astimezone(ZoneInfo(timezone)).date()
    previous = date(first.year - (first.month == 1), (first.month - 2) % 12 + 1, 1)
    return f"{previous:%Y-%m}"


def monthly_schedule(timezone: str = "UTC") -> Schedule:
    """Start one `BillingRun` at 03:00 on the 1st in `timezone`, for the month before. A tick
    missed while no worker ran is run late, once (``missed="latest"``)."""
    return Schedule(SCHEDULE_NAME, cron=CRON, timezone=timezone, machine=BillingRun,
                    start=lambda tick: RunDue(billed_period(tick, timezone)), missed="latest")


def run_key(period: str, timezone: str = "UTC") -> str:
    """The start key of the run for `period`: the key the schedule's tick for it uses, so a run
    started by hand and the scheduled one are one and the same, and a month runs once."""
    year, month = (int(p) for p in period.split("-"))
    tick = datetime(year + (month == 12), month % 12 + 1, 1, 3, 0, tzinfo=ZoneInfo(timezone))
    return monthly_schedule(timezone).key(tick.astimezone(UTC))


def start_run(client: Client, period: str, timezone: str = "UTC") -> object:
    """Start the run for `period` by hand (say, after a month the workers missed): returns its
    id; a month that already has a run starts nothing and returns that run's id."""
    return client.start(BillingRun, RunDue(period), key=run_key(period, timezone))


def app(http: httpx.Client | None = None) -> list[Machine | Schedule]:
    """The machines and the schedule, configured from the environment: what
    ``--app machines.billing:app`` gives a worker. ``BILLING_API_URL`` and ``MAIL_API_URL`` are
    the services, ``BILLING_TIMEZONE`` (default UTC) the schedule's zone, ``BILLING_PAGE_SIZE``
    (default 100) the customers fetched per page."""
    http = client(http)
    timezone = os.environ.get("BILLING_TIMEZONE", "UTC")
    return [BillingRun(os.environ["BILLING_API_URL"],
                       page_size=int(os.environ.get("BILLING_PAGE_SIZE", "100")), http=http),
            CustomerInvoice(os.environ["BILLING_API_URL"], os.environ["MAIL_API_URL"], http=http),
            monthly_schedule(timezone)]
