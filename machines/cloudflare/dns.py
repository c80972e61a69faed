"""(a) Ensure a DNS record: create it, update it, or find it already right; idempotent.

    RecordRequested --ensure_record--> RecordEnsured (created | updated | kept)
                    (refused, or out of retries) --> RecordFailed

Endpoints (see `machines.cloudflare.api.CloudflareAPI.ensure_record`):
``GET /client/v4/zones/{zone_id}/dns_records?type=&name=``, then ``PATCH
/client/v4/zones/{zone_id}/dns_records/{id}`` or ``POST /client/v4/zones/{zone_id}/dns_records``.
"""

from __future__ import annotations

import os

import attrs

from machines.cloudflare.api import CloudflareAPI, Ensured
from machines.cloudflare.limits import CLOUDFLARE_API, CLOUDFLARE_RETRY
from statemachine import Context, Failure, Machine, step

__all__ = ["EnsureDnsRecord", "RecordEnsured", "RecordFailed", "RecordRequested", "from_env"]


@attrs.frozen
class RecordRequested:
    """The record wanted: `name` (fully qualified) of `type` with `content`."""

    zone_id: str
    type: str
    name: str
    content: str
    ttl: int = 1  # 1: automatic
    proxied: bool = False


@attrs.frozen
class RecordEnsured:
    """The record is as wanted; `action` says what it took."""

    request: RecordRequested
    record_id: str
    action: Ensured


@attrs.frozen
class RecordFailed:
    """Cloudflare refused (a bad token, a bad record) or stayed unavailable."""

    request: RecordRequested
    error: str


class EnsureDnsRecord(Machine):
    """One DNS record made right, as many times as it is asked."""

    name = "cloudflare_dns"
    initial = RecordRequested
    terminal = (RecordEnsured, RecordFailed)

    def __init__(self, *, api: CloudflareAPI) -> None:
        self.api = api

    @step(retry=CLOUDFLARE_RETRY, limit=CLOUDFLARE_API)
    def ensure_record(self, state: RecordRequested, ctx: Context) -> RecordEnsured:
        record, action = self.api.ensure_record(
            state.zone_id, state.type, state.name, state.content, ttl=state.ttl,
            proxied=state.proxied, replace=state.type != "TXT")
        return RecordEnsured(state, record.id, action)

    @ensure_record.on_error
    def record_failed(self, state: RecordRequested, failure: Failure,
                      ctx: Context) -> RecordFailed:
        return RecordFailed(state, str(failure))


def from_env() -> EnsureDnsRecord:
    """``--app machines.cloudflare.dns:from_env``: ``CLOUDFLARE_API_TOKEN`` and
    ``CLOUDFLARE_API_URL`` (default the real API)."""
    return EnsureDnsRecord(api=CloudflareAPI(
        os.environ["CLOUDFLARE_API_TOKEN"],
        os.environ.get("CLOUDFLARE_API_URL", "https://api.cloudflare.com")))
