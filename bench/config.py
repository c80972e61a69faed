"""What a benchmark run measures and how big it is: one frozen `Config`, built by the CLI."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

__all__ = ["ALL_SECTIONS", "DEFAULT_PG_URL", "DEFAULT_SECTIONS", "Config", "Log"]

# A progress logger: the sections report what they are doing through it (to stderr).
Log = Callable[[str], None]

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

# In the order they run. `profile` needs py-spy and is only run when asked for.
ALL_SECTIONS = ("throughput", "grouping", "sql", "latency", "events", "scale", "memory", "sqlite",
                "async", "profile")
DEFAULT_SECTIONS = tuple(s for s in ALL_SECTIONS if s != "profile")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of a run. Defaults are the full benchmark; `smoke()` is the test-suite size."""

    pg_url: str = DEFAULT_PG_URL
    sections: tuple[str, ...] = DEFAULT_SECTIONS
    workflows: int = 2000
    workers: tuple[int, ...] = (4, 8)
    # statemachine's modes: threads, processes, grouped (threads with group commit on; skipped,
    # and reported as not available, while the Worker has no such option: see bench.grouping)
    modes: tuple[str, ...] = ("threads", "processes", "grouped")
    group_workers: tuple[int, ...] = (8, 32)
    sqlite_workers: tuple[int, ...] = (1, 4, 8)
    repeats: int = 3
    latency_runs: int = 200
    scale_finished: int = 1_000_000
    scale_sleeping: int = 100_000
    scale_workers: int = 4
    memory_transitions: int = 100_000
    memory_workers: int = 4
    sql_workflows: int = 500
    sql_workers: int = 4
    profile_workflows: int = 6000
    profile_workers: int = 4
    run_timeout: float = 300.0
    output: Path = Path("bench/results/latest.json")
    keep: bool = False
    smoke: bool = False
    quick: bool = False

    @classmethod
    def smoke_config(cls, **overrides: object) -> Config:
        """A configuration that exercises every section in a few seconds (no speed claims)."""
        small = dict(workflows=120, workers=(1, 2), group_workers=(2,), sqlite_workers=(1, 2),
                     repeats=1, latency_runs=10,
                     scale_finished=5000, scale_sleeping=500, scale_workers=2,
                     memory_transitions=300, memory_workers=2, sql_workflows=50, sql_workers=2,
                     profile_workflows=300, run_timeout=60.0, smoke=True)
        small.update(overrides)
        return dataclasses.replace(cls(), **small)  # type: ignore[arg-type]

    @classmethod
    def quick_config(cls, **overrides: object) -> Config:
        """A developer's loop (`make bench-quick`, under 2 minutes): the throughput ratios at 4
        and 8 workers on small runs, still medians of 3, latency on both backends, and SQLite
        at 4 threads; no scale, memory, sql, events or grouping sections."""
        quick = dict(sections=("throughput", "latency", "sqlite"), workflows=200,
                     workers=(4, 8), sqlite_workers=(4,), repeats=3, latency_runs=40,
                     run_timeout=60.0, quick=True)
        quick.update(overrides)
        return dataclasses.replace(cls(), **quick)  # type: ignore[arg-type]

    def wants(self, section: str) -> bool:
        """Whether `section` is part of this run."""
        return section in self.sections

    @property
    def transitions_per_workflow(self) -> int:
        """Transitions each benchmark workflow makes (the workload's shape)."""
        return 3
