"""Rate limits and schedules."""

from __future__ import annotations

from ._base import StoreBase


class LimitStatements(StoreBase):
    """Concurrency slots, token buckets, schedule ticks."""
