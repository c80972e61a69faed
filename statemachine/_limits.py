"""Concurrency and rate limits per key, and the `RetryAfter` signal for HTTP 429.

    STRIPE = Limit(key=lambda s: f"stripe:{s.account}", concurrency=4, per_second=10)
    CLOUDFLARE = Limit(key="cloudflare", per=timedelta(minutes=5), count=1200)

    @step(limit=STRIPE)
    def charge(self, state: Due, ctx: Context) -> Charged: ...

A transition over its limit is put back in the database until a slot or a token is free: it
holds no worker thread while it waits, and the wait does not count as an attempt.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from .errors import InvalidDefinition

__all__ = ["Limit", "RetryAfter"]


@attrs.frozen
class Limit:
    """At most `concurrency` handlers at once, and at most `count` handler starts in any window
    of length `per`, for all workflows sharing a key.

    The rate is exact over a sliding window: ``count=1200, per=timedelta(minutes=5)`` never lets
    1,201 start within any five minutes. ``per_second=r`` is a shorthand: ``per_second=10`` is
    ``count=10, per=timedelta(seconds=1)``, and a rate below one (``per_second=0.5``) is one start
    per ``1 / r`` seconds. `key` is a string, or a function of the state (one limit per customer
    account, say). Give a rate either as `per_second` or as `count` with `per`, not both."""

    key: str | Callable[[Any], str]
    concurrency: int | None = None
    per_second: float | None = None
    count: int | None = attrs.field(default=None, kw_only=True)
    per: timedelta | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        rate = self.per_second is not None
        window = self.count is not None or self.per is not None
        if self.concurrency is None and not rate and not window:
            raise InvalidDefinition(
                "Limit needs concurrency=, per_second=, or count= with per= (or a cap and a rate)")
        if self.concurrency is not None and (
                isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int)
                or self.concurrency < 1):
            raise InvalidDefinition(
                f"Limit(concurrency={self.concurrency!r}): must be a whole number >= 1")
        if rate and window:
            raise InvalidDefinition(
                "Limit takes per_second= or count= with per=, not both (per_second=r is "
                "count=r, per=timedelta(seconds=1))")
        if rate:
            assert self.per_second is not None
            if isinstance(self.per_second, bool) or not self.per_second > 0:
                raise InvalidDefinition(f"Limit(per_second={self.per_second!r}): must be > 0")
        if window:
            self._check_window()

    def _check_window(self) -> None:
        if self.count is None or self.per is None:
            given, missing = ("count", "per") if self.per is None else ("per", "count")
            raise InvalidDefinition(
                f"Limit({given}=...) needs {missing}= too: at most `count` starts per window "
                "`per`, e.g. Limit(key, count=1200, per=timedelta(minutes=5))")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise InvalidDefinition(f"Limit(count={self.count!r}): must be a whole number >= 1")
        if not isinstance(self.per, timedelta):
            raise InvalidDefinition(
                f"Limit(per={self.per!r}): must be a timedelta, e.g. timedelta(minutes=5)")
        if self.per.total_seconds() < 0.001:
            raise InvalidDefinition(f"Limit(per={self.per!r}): the window must be at least 1 ms")

    def key_for(self, state: object) -> str:
        """The limit's key for a workflow in `state`."""
        return self.key if isinstance(self.key, str) else str(self.key(state))

    @property
    def rated(self) -> bool:
        """Whether the limit caps starts per window (`per_second`, or `count` per `per`)."""
        return self.per_second is not None or self.count is not None

    @property
    def window(self) -> tuple[int, float]:
        """(starts, seconds): the rate as a count per sliding window (of at least one second
        for `per_second`)."""
        if self.count is not None and self.per is not None:
            return self.count, self.per.total_seconds()
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
