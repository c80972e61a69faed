"""The benchmark (`make bench`) must not rot: a reduced run of every section, on the test
PostgreSQL server and on SQLite, that only checks the harness completes and reports every figure
(present and positive). No assertion is made on speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL

from bench.report import problems

ROOT = Path(__file__).resolve().parents[2]


def run_bench(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    """Run ``python -m bench --smoke ARGS`` in a subprocess; returns its JSON results and the
    Markdown report it printed."""
    out = tmp_path / "results" / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--output", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert out.with_suffix(".md").read_text() == proc.stdout
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.slow
def test_bench_smoke_postgres(pg_database: URL, tmp_path: Path) -> None:
    sections = "throughput,sql,latency,events,scale,memory"
    results, report = run_bench(tmp_path, "--pg-url",
                                pg_database.render_as_string(hide_password=False),
                                "--only", sections)
    assert problems(results) == []
    assert set(sections.split(",")) <= set(results)
    assert results["errors"] == {}
    ratios = results["throughput"]["ratio_to_reference"]
    assert set(ratios) == {"threads", "processes"}
    assert all(r > 0 for by_workers in ratios.values() for r in by_workers.values())
    assert {(r["impl"], r["mode"]) for r in results["throughput"]["runs"]} == {
        ("reference", "processes"), ("statemachine", "threads"), ("statemachine", "processes")}
    assert "sm_workflows_due" in results["scale"]["claim_plan_loaded"]["indexes"]
    assert "skipped" in results["events"] or results["events"]["send_to_handler"]["p50_ms"] > 0
    assert results["meta"]["duration_s"] > 0
    for heading in ("## Headline", "## Throughput on PostgreSQL", "## Latency", "## Scale",
                    "## Memory"):
        assert heading in report


@pytest.mark.slow
def test_bench_smoke_sqlite(tmp_path: Path) -> None:
    results, report = run_bench(tmp_path, "--only", "sqlite")
    assert problems(results) == []
    assert "postgres" not in results["meta"]
    runs = results["sqlite"]["runs"]
    assert {(r["mode"], r["workers"]) for r in runs} == {
        (m, w) for m in ("threads", "processes") for w in (1, 2)}
    assert all(r["transitions_per_s"]["median"] > 0 for r in runs)
    assert "## SQLite" in report


def test_problems_flags_missing_and_non_positive_figures() -> None:
    results: dict[str, Any] = {
        "meta": {"config": {"sections": ["latency", "memory"], "memory_transitions": 10}},
        "errors": {},
        "latency": {"start_to_done": {"p50_ms": 0.0}},
    }
    found = problems(results)
    assert "section memory is missing" in found
    assert any(p.startswith("latency.start_to_done.p50_ms is 0.0") for p in found)
    assert any(p.startswith("latency.start_to_wait.p50_ms is None") for p in found)


def test_profile_summaries_of_py_spy_stacks() -> None:
    from bench.profiling import analyse_gil, analyse_wall

    handler = ("Thread.run (threading.py:1);Worker._run_safely (statemachine/runtime.py:2);"
               "Connection.execute (sqlalchemy/engine/base.py:3)")
    raw = "\n".join([
        f"{handler};Cursor.execute (psycopg/cursor.py:4) 3",
        f"{handler};HasCacheKey._gen_cache_key (sqlalchemy/sql/cache_key.py:5) 1",
        "Thread.run (threading.py:1);Worker._claim_loop (statemachine/runtime.py:6);"
        "Event.wait (threading.py:7) 4",
    ])
    gil = analyse_gil(raw)
    assert gil["samples"] == 8
    assert gil["by_thread_pct"] == {"handler threads": 50.0, "claimer thread": 50.0}
    assert gil["by_component_pct"]["psycopg (driver: send, receive, adapt)"] == 37.5
    assert gil["statemachine_inclusive_pct"]["Worker._run_safely (statemachine/runtime.py)"] == 50.0
    wall = analyse_wall(raw)["by_thread_activity_pct"]
    assert wall["claimer thread"] == {"idle (waiting for work, a lock or a timer)": 100.0}
    assert sum(wall["handler threads"].values()) == 100.0
