"""The end-to-end tests run on `ACCEPTANCE_BACKENDS` (see tests/conftest.py for why)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from machines.fakes.cloudflare import CloudflareService
from tests.conftest import ACCEPTANCE_BACKENDS


@pytest.fixture(params=ACCEPTANCE_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend this test runs on."""
    return str(request.param)


@pytest.fixture
def cloudflare() -> Iterator[CloudflareService]:
    """The fake Cloudflare API (machines/fakes/cloudflare.py), serving for this test."""
    with CloudflareService() as service:
        yield service
