"""The one way tests wait for a condition: poll it with a generous deadline.

Tests never assert how long something took (a wall-clock bound belongs in ``bench/``); they wait
for what they expect, and the deadline only stops a test that would otherwise hang. It is scaled
by ``STATEMACHINE_TEST_WAIT_SCALE`` (default 1) for very slow machines.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: The default deadline, generous on purpose: a busy machine must not fail a correct test.
DEFAULT_TIMEOUT = 60.0
SCALE = float(os.environ.get("STATEMACHINE_TEST_WAIT_SCALE") or 1.0)


def wait_until(
    condition: Callable[[], T],
    what: str,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.02,
    describe: Callable[[], object] | None = None,
) -> T:
    """Poll `condition` until it returns something truthy, and return that value.

    Fails after `timeout` seconds (times `SCALE`) with an error naming `what` was awaited and what
    `describe` (or the condition) last saw."""
    deadline = time.monotonic() + timeout * SCALE
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            seen = describe() if describe is not None else value
            raise AssertionError(
                f"timed out after {timeout * SCALE:g}s waiting for {what} (last seen: {seen!r})")
        time.sleep(interval)
