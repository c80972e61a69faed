"""An email drip: a welcome mail, two days later a tip, three days later a last mail.

::

    WelcomeDue --send_welcome--> AwaitingTip --(2 days)--> TipDue --send_tip--> AwaitingLast
                                   |  Clicked                                      |
                                   v                                               |  (3 days)
                                 OfferDue --send_offer--> AwaitingLast             v
                                                           |  Clicked            LastDue
                                                           v                       | send_last
                                                         Converted                 v
                                                                               DripFinished
    Unsubscribed, in any state before the end: Stopped.  A send refused for good: Bounced.

Every mail is sent with its transition's idempotency key, and the mail API deduplicates by key:
a send retried after a timeout, a 5xx or a killed worker sends nothing twice. Sends share one
`Limit` per recipient domain (`DOMAIN_RATE`), across all drips and workers.
"""

from __future__ import annotations

from datetime import timedelta

import attrs
import httpx

from machines._http import client
from machines.billing.api import MailAPI
from statemachine import (
    Context,
    Failure,
    Limit,
    Machine,
    RetryPolicy,
    on_event,
    on_timeout,
    step,
)

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
]

TIP_AFTER = timedelta(days=2)
LAST_AFTER = timedelta(days=3)

# Receiving domains throttle senders: at most 20 mails a minute to any one domain, from every
# drip and worker (a sliding window, kept in the database).
DOMAIN_RATE = Limit(key=lambda state: f"mail-domain:{state.contact.domain}", count=20,
                    per=timedelta(minutes=1))

# Transient failures (5xx, timeouts) are retried with the same key: the mail API sends once.
SEND_RETRY = RetryPolicy(max_attempts=6, initial_delay=0.2, max_delay=60.0)


@attrs.frozen
class Contact:
    address: str
    name: str = ""

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower()


# -- states --------------------------------------------------------------------------------------


@attrs.frozen
class WelcomeDue:
    contact: Contact


@attrs.frozen
class AwaitingTip:
    contact: Contact


@attrs.frozen
class TipDue:
    contact: Contact


@attrs.frozen
class OfferDue:
    contact: Contact
    link: str  # what they clicked


@attrs.frozen
class AwaitingLast:
    contact: Contact


@attrs.frozen
class LastDue:
    contact: Contact


@attrs.frozen
class DripFinished:
    contact: Contact


@attrs.frozen
class Converted:
    """They clicked after the second mail: no more mails."""

    contact: Contact
    link: str


@attrs.frozen
class Stopped:
    """They unsubscribed: `during` is the state the drip was in."""

    contact: Contact
    during: str


@attrs.frozen
class Bounced:
    """The mail API refused the address for good."""

    contact: Contact
    failure: Failure


# -- events --------------------------------------------------------------------------------------


@attrs.frozen
class Unsubscribed:
    """The recipient unsubscribed (the link in every mail's footer)."""


@attrs.frozen
class Clicked:
    """The recipient clicked a link in a mail."""

    link: str


# -- the machine ---------------------------------------------------------------------------------


class Drip(Machine):
    """One recipient's drip campaign."""

    name = "drip"
    initial = WelcomeDue
    terminal = (DripFinished, Converted, Stopped, Bounced)

    def __init__(self, mail_url: str, http: httpx.Client | None = None) -> None:
        self.mail = MailAPI(mail_url, client(http))

    def _send(self, contact: Contact, template: str, ctx: Context, **data: str) -> None:
        self.mail.send(contact.address, template, {"name": contact.name, **data},
                       key=ctx.idempotency_key)

    @step(limit=DOMAIN_RATE, retry=SEND_RETRY)
    def send_welcome(self, state: WelcomeDue, ctx: Context) -> AwaitingTip:
        self._send(state.contact, "welcome", ctx)
        return AwaitingTip(state.contact)

    @step(limit=DOMAIN_RATE, retry=SEND_RETRY)
    def send_tip(self, state: TipDue, ctx: Context) -> AwaitingLast:
        self._send(state.contact, "tip", ctx)
        return AwaitingLast(state.contact)

    @step(limit=DOMAIN_RATE, retry=SEND_RETRY)
    def send_offer(self, state: OfferDue, ctx: Context) -> AwaitingLast:
        self._send(state.contact, "offer", ctx, link=state.link)
        return AwaitingLast(state.contact)

    @step(limit=DOMAIN_RATE, retry=SEND_RETRY)
    def send_last(self, state: LastDue, ctx: Context) -> DripFinished:
        self._send(state.contact, "last", ctx)
        return DripFinished(state.contact)

    # One route for the four sends (stacked); see machines.billing on the ignores.
    @send_welcome.on_error
    @send_tip.on_error
    @send_offer.on_error
    @send_last.on_error
    def bounced(self, state: WelcomeDue | TipDue | OfferDue | LastDue, failure: Failure,
                ctx: Context) -> Bounced:
        return Bounced(state.contact, attrs.evolve(failure, traceback=""))

    @on_timeout(after=TIP_AFTER)
    def tip_due(self, state: AwaitingTip, ctx: Context) -> TipDue:
        return TipDue(state.contact)

    @on_event
    def clicked_welcome(self, state: AwaitingTip, event: Clicked, ctx: Context) -> OfferDue:
        return OfferDue(state.contact, event.link)

    @on_timeout(after=LAST_AFTER)
    def last_due(self, state: AwaitingLast, ctx: Context) -> LastDue:
        return LastDue(state.contact)

    @on_event
    def clicked_later(self, state: AwaitingLast, event: Clicked, ctx: Context) -> Converted:
        return Converted(state.contact, event.link)

    @on_event
    def unsubscribe(self, state: WelcomeDue | AwaitingTip | TipDue | OfferDue | AwaitingLast
                    | LastDue, event: Unsubscribed, ctx: Context) -> Stopped:
        # In a step state, an Unsubscribed pending when the send is about to run is handled
        # instead of the send: that mail never goes out.
        return Stopped(state.contact, type(state).__name__)
