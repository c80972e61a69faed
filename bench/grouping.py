"""Group commit: the Worker option lane `perf` adds (issue 15), and the section that measures it.

With grouping on, the commits that several handler threads have ready at the same time go to the
database in one statement. The bench turns it on and off through the Worker keyword
`GROUP_OPTION`; while the installed statemachine has no such keyword, every grouped figure is
reported as "not available" (never estimated).

The `grouping` section, in one run: at each of `Config.group_workers` (8 and 32) the same-plan
hand-written loop (processes), statemachine threads with grouping off and with it on, interleaved
per repeat; then start -> done latency of one workflow at a time on a 1-thread worker, grouping
off and on (the target: grouping must not make the lone commit slower).
"""

from __future__ import annotations

import inspect
from typing import Any

from statemachine import Worker

from .config import Config, Log

__all__ = ["GROUP_OPTION", "available", "group_option", "measure", "unavailable_reason"]

GROUP_OPTION = "group_commit"


def available() -> bool:
    """Whether the installed `Worker` takes the group commit keyword."""
    return GROUP_OPTION in inspect.signature(Worker).parameters


def unavailable_reason() -> str:
    """Why grouped figures are missing (for the report)."""
    return (f"not available: this statemachine's Worker has no `{GROUP_OPTION}` option "
            "(lane perf's group commit is not in this checkout)")


def group_option(group: bool | None) -> dict[str, Any]:
    """The Worker keyword arguments that set grouping to `group` (nothing for None). Asking for
    grouping where the Worker has no such option is an error, not a silent ungrouped run."""
    if group is None:
        return {}
    if not available():
        raise RuntimeError(unavailable_reason())
    return {GROUP_OPTION: group}


def measure(cfg: Config, url: str, log: Log) -> dict[str, Any]:
    """The grouping section (see the module docstring)."""
    if not available():
        log(f"grouping: {unavailable_reason()}")
        return {"available": False, "option": GROUP_OPTION, "reason": unavailable_reason()}
    from . import latency
    from .runner import engine_run_on_fresh_rows, ratios_of, summarise_runs, timed_same_plan

    runs: dict[tuple[str, str, int], list[Any]] = {}
    for rep in range(cfg.repeats):
        for workers in cfg.group_workers:
            for key, run in ((("same_plan", "processes", workers),
                              lambda w=workers: timed_same_plan(cfg, url, w)),
                             (("statemachine", "ungrouped", workers),
                              lambda w=workers: engine_run_on_fresh_rows(cfg, url, "ungrouped", w)),
                             (("statemachine", "grouped", workers),
                              lambda w=workers: engine_run_on_fresh_rows(cfg, url, "grouped", w))):
                res = run()
                runs.setdefault(key, []).append(res)
                log(f"grouping rep {rep + 1}/{cfg.repeats}: {key[0]} {key[1]}, {workers}: "
                    f"{res.transitions_per_s:,.0f} transitions/s")
    entries = [summarise_runs("postgresql", impl, mode, w, r)
               for (impl, mode, w), r in sorted(runs.items(), key=lambda kv: (kv[0][2], kv[0]))]
    ratios = ratios_of(runs, ("ungrouped", "grouped"), cfg.group_workers)
    lone = {name: latency.start_to_done(cfg, url, concurrency=1, group=group)
            for name, group in (("ungrouped", False), ("grouped", True))}
    log(f"grouping: 1-thread start->done p99 ungrouped {lone['ungrouped']['p99_ms']} ms, "
        f"grouped {lone['grouped']['p99_ms']} ms")
    return {"available": True, "option": GROUP_OPTION, "runs": entries,
            "ratio_to_same_plan": ratios["ratio_to_same_plan"],
            "cpu_ratio_to_same_plan": ratios["cpu_ratio_to_same_plan"],
            "one_thread_latency": lone}
