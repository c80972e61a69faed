"""How the machines of `machines.billing`, `machines.drip` and `machines.fleet` read an answer.

One rule for every service they call: 2xx is the result; 429 (and 503 with ``Retry-After``) is
"not now", a `RetryAfter` that costs no attempt; other 5xx, 408 and network errors are transient
(`ServiceError`, retried with the step's backoff, the same idempotency key each time); any other
4xx is `Rejected`, a `PermanentError` that goes to the step's error route at once.
"""

from __future__ import annotations

from typing import Any

import httpx

from statemachine import PermanentError, RetryAfter

__all__ = ["TIMEOUT", "Rejected", "ServiceError", "client", "reply"]

# Connect fast or not at all; give the service a few seconds to answer.
TIMEOUT = httpx.Timeout(10.0, connect=3.0)


class ServiceError(Exception):
    """A service failed in a way worth retrying (5xx, 408)."""


class Rejected(PermanentError):
    """A service refused the request (4xx): retrying will not help. `status` and `code` (the
    body's ``error`` field) say why."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def __reduce__(self) -> tuple[type[Rejected], tuple[str, int, str]]:
        return type(self), (str(self), self.status, self.code)


def client(http: httpx.Client | None = None) -> httpx.Client:
    """`http`, or a new client with the machines' timeouts."""
    return http if http is not None else httpx.Client(timeout=TIMEOUT)


def reply(response: httpx.Response) -> Any:
    """The JSON body of a successful `response`; raises `RetryAfter`, `ServiceError` or
    `Rejected` otherwise (see the module's docstring)."""
    if response.is_success:
        return response.json() if response.content else None
    what = f"{response.request.method} {response.request.url.path}: {response.status_code}"
    retry_after = response.headers.get("Retry-After")
    if response.status_code == 429 or (response.status_code == 503 and retry_after):
        raise RetryAfter.from_header(retry_after, default=5.0)
    if response.status_code >= 500 or response.status_code == 408:
        raise ServiceError(f"{what} {response.text[:200]}")
    try:
        code = str(response.json().get("error", ""))
    except (ValueError, AttributeError):
        code = ""
    raise Rejected(f"{what} {response.text[:200]}", response.status_code, code)
