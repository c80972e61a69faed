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

from bench import grouping
from bench.report import problems

ROOT = Path(__file__).resolve().parents[2]
MODES = {"threads", "processes"}


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
    sections = "throughput,grouping,sql,latency,events,scale,memory"
    results, report = run_bench(tmp_path, "--pg-url",
                                pg_database.render_as_string(hide_password=False),
                                "--only", sections)
    assert problems(results) == []
    assert set(sections.split(",")) <= set(results)
    assert results["errors"] == {}
    modes = MODES | ({"grouped"} if grouping.available() else set())
    throughput = results["throughput"]
    for table in ("ratio_to_reference", "ratio_to_same_plan", "cpu_ratio_to_same_plan"):
        assert set(throughput[table]) == modes, table
        assert all(r > 0 for by_workers in throughput[table].values()
                   for r in by_workers.values())
    assert {(r["impl"], r["mode"]) for r in throughput["runs"]} == {
        ("reference", "processes"), ("same_plan", "processes"),
        *(("statemachine", m) for m in modes)}
    # The same-plan loop sends statemachine's plan: one claim per workflow, one commit per step.
    plan = results["sql"]["same_plan"]
    assert plan["statements_per_transition"] < 1.5
    assert plan["server"]["tup_inserted_per_transition"] >= 1.0
    assert results["grouping"]["available"] is grouping.available()
    # The smoke run has 1 and 2 workers: the 4-and-8-worker targets are not judged, and said so.
    targets = {t["target"]: t for t in results["targets"]}
    same_plan = targets["statemachine threads, 4 and 8 workers: ≥ 1.0x the same-plan loop"]
    assert same_plan["met"] is None
    assert same_plan["result"] == "not measured in this run"
    if not grouping.available():
        assert "## Group commit" in report
        assert "not available" in report
    assert "sm_workflows_due" in results["scale"]["claim_plan_loaded"]["indexes"]
    assert "skipped" in results["events"] or results["events"]["send_to_handler"]["p50_ms"] > 0
    assert results["meta"]["duration_s"] > 0
    for heading in ("## Headline", "## Throughput on PostgreSQL", "## Latency", "## Scale",
                    "## Memory"):
        assert heading in report


@pytest.mark.slow
def test_claimdecay_smoke(pg_database: URL, tmp_path: Path) -> None:
    """`python -m bench.claimdecay --smoke`: the claim benchmark completes, times claims in the
    workers and both claims in the probe, and reports the plans (no claim on speed)."""
    out = tmp_path / "claimdecay.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.claimdecay", "--smoke", "--output", str(out),
         "--pg-url", pg_database.render_as_string(hide_password=False)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"claimdecay failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    results = json.loads(out.read_text())["results"]
    assert results["transitions"] == 1000
    assert results["claims"] > 0
    # Autovacuum was off, so the dead index entries stay (n_dead_tup itself is not checked: the
    # server reports it late, and page pruning may bring it back to 0).
    assert "autovacuum_enabled=false" in results["table_after"]["table_options"]
    assert results["table_after"]["autovacuum_runs"] == 0
    assert "sm_workflows_due" in results["plans"]["new_end"]
    assert "wake_at >=" in results["plans"]["new_end"]
    assert "wake_at >=" not in results["plans"]["old_end"]
    assert "## " in proc.stdout or "# Claim under dead index entries" in proc.stdout


@pytest.mark.slow
def test_bench_smoke_sqlite(tmp_path: Path) -> None:
    results, report = run_bench(tmp_path, "--only", "sqlite")
    assert problems(results) == []
    assert "postgres" not in results["meta"]
    runs = results["sqlite"]["runs"]
    modes = MODES | ({"grouped"} if grouping.available() else set())
    assert {(r["mode"], r["workers"]) for r in runs} == {(m, w) for m in modes for w in (1, 2)}
    assert all(r["transitions_per_s"]["median"] > 0 for r in runs)
    assert results["sqlite"]["latency"]["start_to_done"]["p99_ms"] > 0
    assert "## SQLite" in report
    assert "| SQLite | start → terminal state committed" in report


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


def test_splice_replaces_only_the_generated_part_of_the_doc() -> None:
    from bench.splice import BEGIN, END, splice

    doc = f"# Performance\n\nintro\n\n{BEGIN}\nold figures\n{END}\n\n## What each figure means\n"
    report = "# statemachine benchmark\n\nRun on commit abc.\n\n## Targets (issue 15)\n\n| a |\n"
    out = splice(doc, report)
    assert "old figures" not in out
    assert "# statemachine benchmark" not in out
    assert "### Targets (issue 15)" in out
    assert out.startswith("# Performance\n\nintro\n\n" + BEGIN)
    assert out.endswith(f"{END}\n\n## What each figure means\n")
    assert splice(out, report) == out  # splicing the same report again changes nothing
    with pytest.raises(ValueError, match="markers"):
        splice("# Performance\n", report)
