"""The Cloudflare API's rate limit, shared by every Cloudflare machine's steps."""

from __future__ import annotations

from datetime import timedelta

from statemachine import Limit, RetryPolicy

__all__ = ["CLOUDFLARE_API", "CLOUDFLARE_RETRY"]

# Cloudflare allows 1,200 requests per 5 minutes per user; a step makes at most a few, so a
# window of 1,200 step starts per 5 minutes stays under it. A 429 that gets through anyway (other
# clients on the same token) is a `RetryAfter` (see `machines.cloudflare.api`).
CLOUDFLARE_API = Limit(key="cloudflare-api", count=1200, per=timedelta(minutes=5))
# Transient failures (5xx, timeouts) are retried quickly at first, then less often.
CLOUDFLARE_RETRY = RetryPolicy(max_attempts=5, initial_delay=1.0, max_delay=60.0)
