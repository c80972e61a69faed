"""An email drip (`Drip`): welcome, tip, last mail; `Unsubscribed` stops it, `Clicked` branches.
See docs/machines/drip.md.

Run it by hand::

    python -m machines.fakes mail
    export MAIL_API_URL=http://127.0.0.1:8702
    statemachine worker --app machines.drip:app
    statemachine start drip --data '{"contact": {"address": "ada@example.com"}}' \\
        --key drip:ada@example.com --app machines.drip:app
    statemachine send ID Clicked --data '{"link": "https://example.com/pricing"}' \\
        --app machines.drip:app
"""

from __future__ import annotations

import os

import httpx

from machines.drip.machine import (
    DOMAIN_RATE,
    LAST_AFTER,
    TIP_AFTER,
    AwaitingLast,
    AwaitingTip,
    Bounced,
    Clicked,
    Contact,
    Converted,
    Drip,
    DripFinished,
    LastDue,
    OfferDue,
    Stopped,
    TipDue,
    Unsubscribed,
    WelcomeDue,
)
from statemachine import Machine

__all__ = [
    "DOMAIN_RATE",
    "LAST_AFTER",
    "TIP_AFTER",
    "AwaitingLast",
    "AwaitingTip",
    "Bounced",
    "Clicked",
    "Contact",
    "Converted",
    "Drip",
    "DripFinished",
    "LastDue",
    "OfferDue",
    "Stopped",
    "TipDue",
    "Unsubscribed",
    "WelcomeDue",
    "app",
]


def app(http: httpx.Client | None = None) -> list[Machine]:
    """The drip, configured from ``MAIL_API_URL``: what ``--app machines.drip:app`` runs."""
    return [Drip(os.environ["MAIL_API_URL"], http=http)]
