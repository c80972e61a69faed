"""The end-to-end tests run on `ACCEPTANCE_BACKENDS` (see tests/conftest.py for why)."""

from __future__ import annotations

import pytest

from tests.conftest import ACCEPTANCE_BACKENDS


@pytest.fixture(params=ACCEPTANCE_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend this test runs on."""
    return str(request.param)
