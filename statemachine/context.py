"""What a handler gets besides its state: who it is, which attempt, a fresh clock, a logger."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime

import attrs

from .clock import Clock

__all__ = ["Context"]


@attrs.define(slots=True)
class Context:
    """Passed to every handler as its last argument.

    `idempotency_key` is the same for every retry of this transition and different for the next
    one: pass it to APIs that deduplicate (an ``Idempotency-Key`` header). `now()` reads the clock
    each time it is called; nothing about time is replayed.
    """

    workflow_id: uuid.UUID
    machine: str
    state: str
    attempt: int
    version: int
    idempotency_key: str
    worker: str
    log: logging.LoggerAdapter[logging.Logger]
    _clock: Clock = attrs.field(alias="clock")
    _extend: Callable[[float], None] = attrs.field(alias="extend")

    def now(self) -> datetime:
        """The current time (aware UTC), read afresh."""
        return self._clock.now()

    def extend_lease(self, seconds: float) -> None:
        """Hold this workflow for `seconds` from now, for an action that will take long. (Leases
        are also renewed in the background while the worker process is alive.)"""
        self._extend(seconds)
