"""Summaries of repeated measurements: medians for throughput, percentiles for latency."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["percentile", "spread", "summary"]


def summary(samples: Sequence[float]) -> dict[str, float | list[float]]:
    """Median, min, max and the samples themselves (rounded for the JSON file)."""
    return {
        "median": round(statistics.median(samples), 3),
        "min": round(min(samples), 3),
        "max": round(max(samples), 3),
        "samples": [round(s, 3) for s in samples],
    }


def spread(samples: Sequence[float]) -> float:
    """(max - min) / median: how noisy the repeats were, as a fraction."""
    med = statistics.median(samples)
    return (max(samples) - min(samples)) / med if med else math.inf


def percentile(samples: Sequence[float], p: float) -> float:
    """The `p`-th percentile (0-100) by linear interpolation between closest ranks."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
