"""bench/fleet.py at a small size, on PostgreSQL (the 100,000-transition run is in
docs/performance.md)."""

from __future__ import annotations

import pytest

from bench.fleet import measure


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_the_fleet_benchmark_keeps_the_pool_row_the_same_size(db_url: str) -> None:
    """The pool's row is the same size after 400 transitions as before them."""
    result = measure(db_url, transitions=400, window=100, batch=100, count_pages=False)
    assert result["transitions"] >= 400
    assert result["after"]["row_bytes"] == result["before"]["row_bytes"], (
        result["before"], result["after"])
    assert result["after"]["history_rows"] >= result["before"]["history_rows"] + 400
    assert result["after"]["children"] > result["before"]["children"]
    assert result["own_ms_first"] > 0
