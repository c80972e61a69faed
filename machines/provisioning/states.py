"""The server being provisioned and the states it goes through."""

from __future__ import annotations

import attrs

from statemachine import Failure


@attrs.frozen
class ServerSpec:
    """What to create. `name` is unique in the cloud project (the create's idempotency) and is
    the server's DNS label (``<name>.<domain>``)."""

    name: str
    server_type: str = "cx22"
    image: str = "ubuntu-24.04"
    location: str = "fsn1"


@attrs.frozen
class ServerRequested:
    """Nothing exists yet."""

    spec: ServerSpec


@attrs.frozen
class Booting:
    """The server exists (it may be billed from now on); it has not booted yet."""

    spec: ServerSpec
    server_id: int
    ip: str


@attrs.frozen
class Booted:
    """The cloud says the server runs; its own health endpoint has not answered yet."""

    spec: ServerSpec
    server_id: int
    ip: str


@attrs.frozen
class Healthy:
    """The server answers its health check; no DNS record points at it yet."""

    spec: ServerSpec
    server_id: int
    ip: str


@attrs.frozen
class Ready:
    """Done: the server runs, is healthy, and `hostname` resolves to it."""

    spec: ServerSpec
    server_id: int
    ip: str
    hostname: str
    dns_record_id: str


@attrs.frozen
class TearingDown:
    """A step failed for good after (maybe) creating something: destroy it. `failed_in` is the
    state whose step failed; `server_id` is None when the create itself failed (the server is
    then looked up by name, in case it was created anyway)."""

    spec: ServerSpec
    server_id: int | None
    ip: str | None
    failed_in: str
    failure: Failure


@attrs.frozen
class ProvisioningFailed:
    """Done, unsuccessfully: what failed, and what was cleaned up (each item one sentence)."""

    spec: ServerSpec
    failed_in: str
    failure: Failure
    cleaned_up: list[str]
