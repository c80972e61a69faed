"""The async worker's benchmark section (`python -m bench --only async`, bench/async_worker.py)
must not rot: a tiny run that completes and reports every figure. No assertion on speed."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from tests.acceptance.test_bench_smoke import run_bench


@pytest.mark.slow
def test_async_bench_smoke(pg_database: URL, tmp_path: Path) -> None:
    results, report = run_bench(tmp_path, "--pg-url",
                                pg_database.render_as_string(hide_password=False),
                                "--only", "async")
    assert results["errors"] == {}
    summary = results["async"]["summary"]
    for key in ("async_wall_s", "threads_wall_s", "async_peak_rss_mb", "threads_peak_rss_mb",
                "light_ratio"):
        assert summary[key] > 0, key
    assert [row["concurrency"] for row in summary["light"]] == [4, 16]
    assert all(row["sync_tps"] > 0 and row["async_tps"] > 0 for row in summary["light"])
    assert {r["driver"] for r in results["async"]["waiting"]} == {"async", "threads"}
    assert "## Async worker" in report
