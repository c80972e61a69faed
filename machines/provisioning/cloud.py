"""A small client of a cloud API that creates servers, shaped like the Hetzner Cloud API (v1):
every method names the real endpoint it calls; the base URL is configurable
(``https://api.hetzner.cloud`` for real, the fake's URL in tests).

How an answer is read: 2xx is the result; 429 is `RetryAfter` (``Retry-After``, or Hetzner's
``RateLimit-Reset`` epoch seconds; costs no attempt); 5xx, 408 and network errors are
`CloudUnavailable` (retried with the step's backoff); any other 4xx is `CloudRejected`, a
`PermanentError` with the API's error code.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import httpx

from statemachine import PermanentError, RetryAfter

__all__ = ["DEFAULT_URL", "CloudAPI", "CloudRejected", "CloudUnavailable"]

DEFAULT_URL = "https://api.hetzner.cloud"
TIMEOUT = httpx.Timeout(10.0, connect=3.0)


class CloudUnavailable(Exception):
    """The cloud API failed in a way worth retrying (5xx, 408, a network error)."""


class CloudRejected(PermanentError):
    """The cloud API refused the request (4xx); `code` is its error code (``uniqueness_error``,
    ``invalid_input``, ``not_found``, ...)."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def __reduce__(self) -> tuple[type[CloudRejected], tuple[str, int, str]]:
        return type(self), (str(self), self.status, self.code)


@attrs.define
class CloudAPI:
    """The calls the provisioning machine makes, with an API token (``Authorization:
    Bearer``)."""

    token: str
    url: str = DEFAULT_URL
    http: httpx.Client = attrs.field(factory=lambda: httpx.Client(timeout=TIMEOUT))

    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        what = f"{method} {path}"
        try:
            response = self.http.request(method, f"{self.url}{path}",
                                         headers={"Authorization": f"Bearer {self.token}"},
                                         **kwargs)
        except httpx.TransportError as e:
            raise CloudUnavailable(f"{what}: {type(e).__name__}: {e}") from e
        return _result(what, response)

    def create_server(self, *, name: str, server_type: str, image: str, location: str,
                      labels: dict[str, str]) -> dict[str, Any]:
        """``POST /v1/servers``: the new server. A name already used is `CloudRejected` with
        code ``uniqueness_error`` (the API's own idempotency: names are unique per project)."""
        created = self._send("POST", "/v1/servers", json={
            "name": name, "server_type": server_type, "image": image, "location": location,
            "labels": labels, "start_after_create": True})
        server: dict[str, Any] = created["server"]
        return server

    def find_server(self, name: str) -> dict[str, Any] | None:
        """``GET /v1/servers?name=``: the server of that name, if there is one."""
        found = self._send("GET", "/v1/servers", params={"name": name})["servers"]
        return found[0] if found else None

    def get_server(self, server_id: int) -> dict[str, Any] | None:
        """``GET /v1/servers/{id}``: the server, or None if it does not exist (any more)."""
        try:
            server: dict[str, Any] = self._send("GET", f"/v1/servers/{server_id}")["server"]
        except CloudRejected as e:
            if e.status == 404:
                return None
            raise
        return server

    def delete_server(self, server_id: int) -> bool:
        """``DELETE /v1/servers/{id}``; False if it was already gone (404), so a repeated
        delete is not an error."""
        try:
            self._send("DELETE", f"/v1/servers/{server_id}")
        except CloudRejected as e:
            if e.status == 404:
                return False
            raise
        return True

    def check_health(self, url: str) -> str | None:
        """``GET url`` of the server itself: None when it answers 2xx, else what it said."""
        try:
            response = self.http.get(url)
        except httpx.TransportError as e:
            return f"GET {url}: {type(e).__name__}: {e}"
        if response.is_success:
            return None
        return f"GET {url}: {response.status_code} {response.text[:200]}"


def _result(what: str, response: httpx.Response) -> Any:
    status = response.status_code
    if status == 429:
        reset = response.headers.get("RateLimit-Reset")
        if reset and reset.isdigit() and not response.headers.get("Retry-After"):
            raise RetryAfter(max(1.0, int(reset) - time.time()), f"RateLimit-Reset: {reset}")
        raise RetryAfter.from_header(response.headers.get("Retry-After"), default=5.0)
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.is_success:
        return body
    error = body.get("error") if isinstance(body, dict) else None
    code = str(error.get("code", "")) if isinstance(error, dict) else ""
    message = f"{what}: {status} {code}: " + (
        str(error.get("message", "")) if isinstance(error, dict) else response.text[:200])
    if status >= 500 or status == 408:
        raise CloudUnavailable(message)
    raise CloudRejected(message, status, code)
