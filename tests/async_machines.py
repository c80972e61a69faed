"""The machines of `tests.machines_for_tests` with ``async def`` handlers (see
`tests.async_handlers.asyncified`), for worker processes: ``--app tests.async_machines:Crashy``
runs the async worker (the CLI's driver is chosen by the handlers)."""

from __future__ import annotations

from typing import Any

from tests import machines_for_tests
from tests.async_handlers import asyncified


def __getattr__(name: str) -> Any:
    found = getattr(machines_for_tests, name)
    return asyncified(found) if isinstance(found, type) and hasattr(found, "spec") else found
