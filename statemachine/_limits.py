"""Concurrency and rate limits per key, and the `RetryAfter` signal for HTTP 429.

    STRIPE = Limit(key=lambda s: f"stripe:{s.account}", concurrency=4, per_second=10)

    @step(limit=STRIPE)
    def charge(self, state: Due, ctx: Context) -> Charged: ...

A transition over its limit is put back in the database until a slot or a token is free: it
holds no worker thread while it waits, and the wait does not count as an attempt.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import attrs

from .errors import InvalidDefinition

__all__ = ["Limit", "RetryAfter"]


@attrs.frozen
class Limit:
    """At most `concurrency` handlers at once and `per_second` handler starts per second, for
    all workflows sharing a key. The rate is exact over a sliding window: ``per_second=10`` never
    lets 11 start within one second; ``per_second=0.5`` allows one start per two seconds. `key`
    is a string, or a function of the state (one limit per customer account, say)."""

    key: str | Callable[[Any], str]
    concurrency: int | None = None
    per_second: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.concurrency is None and self.per_second is None:
            raise InvalidDefinition("Limit needs concurrency= or per_second= (or both)")
        if self.concurrency is not None and self.concurrency < 1:
            raise InvalidDefinition(f"Limit(concurrency={self.concurrency}): must be >= 1")
        if self.per_second is not None and self.per_second <= 0:
            raise InvalidDefinition(f"Limit(per_second={self.per_second}): must be > 0")

    def key_for(self, state: object) -> str:
        """The limit's key for a workflow in `state`."""
        return self.key if isinstance(self.key, str) else str(self.key(state))

    @property
    def window(self) -> tuple[int, float]:
        """(starts, seconds): the rate as a count per sliding window of at least one second."""
        assert self.per_second is not None
        seconds = max(1.0, 1.0 / self.per_second)
        return max(1, round(self.per_second * seconds)), seconds


class RetryAfter(Exception):
    """Raise in a handler to run the transition again after `seconds`, without counting a failed
    attempt (an HTTP 429 or 503 with ``Retry-After``). Recorded in history as `rescheduled`."""

    def __init__(self, seconds: float, message: str = "") -> None:
        self.seconds = max(0.0, float(seconds))
        super().__init__(message or f"retry after {self.seconds:g}s")

    def __reduce__(self) -> tuple[type[RetryAfter], tuple[float, str]]:
        # Rebuilt from (seconds, message): the default would pass the message as `seconds`.
        return type(self), (self.seconds, str(self))

    @classmethod
    def from_header(cls, value: str | None, default: float = 1.0,
                    now: datetime | None = None) -> RetryAfter:
        """From a ``Retry-After`` header: delay seconds or an HTTP date (`default` if absent or
        unreadable)."""
        if not value:
            return cls(default)
        value = value.strip()
        if value.isascii() and value.isdigit():  # not "²": str.isdigit takes it, float not
            return cls(float(value), f"Retry-After: {value}")
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return cls(default, f"unreadable Retry-After: {value!r}")
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)  # HTTP dates are GMT, with or without a zone
        now = now or datetime.now(UTC)
        return cls((when - now).total_seconds(), f"Retry-After: {value}")
