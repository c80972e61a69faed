"""``python -m bench.exploration`` must not rot: a tiny run reports every figure (no assertion on
speed: that is measured by hand and written in docs/performance.md)."""

from __future__ import annotations

from bench.exploration import main, measure


def test_the_exploration_benchmark_measures_examples() -> None:
    result = measure(examples=6, steps=5)
    assert result["examples"] >= 5
    assert 0 < result["cpu_median_ms"]
    assert 0 < result["wall_median_ms"] <= result["wall_p90_ms"]
    assert 1 <= result["rules_median"] <= 6


def test_the_command_prints_its_report(capsys: object) -> None:
    assert main(["--examples", "4", "--steps", "3"]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert out.startswith("SQLite: ")
    assert "median" in out
