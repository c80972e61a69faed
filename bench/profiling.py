"""Where statemachine's time goes: py-spy profiles of one worker process running the benchmark
workload (threads mode, 4 handler threads by default). Only run when asked for (``--only profile``
or ``--profile``); needs py-spy (``pip install py-spy``: a measuring tool, not a dependency of the
project).

Two recordings, each of a fresh run of `profile_workflows` workflows, attached once the worker
process has imported everything (so start-up does not count):

* ``gil``: ``py-spy --gil`` samples only the thread holding the GIL, i.e. where the process's
  Python CPU goes (waits do not show; "other" collects stacks py-spy read only partly, as
  non-blocking sampling does now and then). Summarised by component (the innermost frame's library),
  by statemachine function and by SQLAlchemy/psycopg function (inclusive), and by self time.
* ``wall``: ``py-spy --idle`` samples every thread, waiting or not: for each thread role, the
  share of time spent in psycopg (mostly waiting for PostgreSQL), in other Python code, or idle.

The raw collapsed stacks are kept next to the JSON results (``profile-<workers>w-<kind>.txt``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from statemachine import Store

from .config import Config, Log
from .database import checkpoint, reset_statemachine
from .engine import run_threads_mode
from .workload import start_workflows

__all__ = ["COMPONENTS", "analyse_gil", "analyse_wall", "find_py_spy", "measure"]

# (component, pattern on the frame's file): the innermost frame that matches names the component
# a sample's CPU time is charged to ("self time by component").
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("psycopg (driver: send, receive, adapt)", r"psycopg"),
    ("SQLAlchemy sql (build statements, cache keys, compile)", r"sqlalchemy/sql/"),
    ("SQLAlchemy engine (execute, cursor, results)", r"sqlalchemy/engine/"),
    ("SQLAlchemy pool (checkout, reset, return)", r"sqlalchemy/pool/"),
    ("SQLAlchemy other", r"sqlalchemy/"),
    ("cattrs (serde)", r"cattrs/"),
    ("attrs", r"/attrs?/"),
    ("statemachine", r"statemachine/"),
    ("logging", r"logging/"),
    ("uuid", r"uuid\.py"),
    ("json", r"json/"),
    ("threads and executor", r"threading\.py|concurrent/futures|queue\.py"),
)
# Thread roles, by a function only that thread runs (py-spy names methods Class.method).
ROLES = (("handler threads", "_run_safely"), ("claimer thread", "_claim_loop"),
         ("heartbeat thread", "_heartbeat"), ("executor threads, idle", "_worker"))
IDLE_LEAVES = ("wait", "_worker", "get", "sleep", "select", "poll")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")

Stacks = list[tuple[list[tuple[str, str]], int]]


def find_py_spy() -> str | None:
    """The py-spy executable: next to this Python (a venv), or on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def _parse(raw: str) -> Stacks:
    stacks = []
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for part in stack.split(";"):
            m = _FRAME.match(part.strip())
            frames.append((m["func"], m["file"]) if m else (part, ""))
        stacks.append((frames, int(count)))
    return stacks


def _short(func: str, file: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{func} ({file})"


def _role(frames: list[tuple[str, str]]) -> str:
    names = {f.rsplit(".", 1)[-1] for f, _ in frames}
    return next((role for role, marker in ROLES if marker in names), "other")


def _share(counter: Counter[str], total: int, n: int | None = None) -> dict[str, float]:
    return {k: round(100 * v / (total or 1), 1) for k, v in counter.most_common(n)}


def analyse_gil(raw: str, top: int = 15) -> dict[str, Any]:
    """Summaries of a ``--gil`` recording (py-spy raw: ``frame;frame;... count``, outermost
    first): share of samples by thread role, by component (innermost matching frame), inclusive
    share of each statemachine and SQLAlchemy/psycopg function, and top functions by self time."""
    stacks = _parse(raw)
    total = sum(c for _, c in stacks)
    roles: Counter[str] = Counter()
    components: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for frames, count in stacks:
        roles[_role(frames)] += count
        component = "other (stdlib, interpreter)"
        for _func, file in reversed(frames):
            match = next((name for name, pat in COMPONENTS if re.search(pat, file)), None)
            if match:
                component = match
                break
        components[component] += count
        for key in {_short(f, p) for f, p in frames if re.search(r"statemachine/", p)}:
            inclusive[key] += count
        for key in {_short(f, p) for f, p in frames if re.search(r"sqlalchemy/|psycopg", p)}:
            libraries[key] += count
        leaves[_short(*frames[-1])] += count
    return {"samples": total, "by_thread_pct": _share(roles, total),
            "by_component_pct": _share(components, total),
            "statemachine_inclusive_pct": _share(inclusive, total, top),
            "libraries_inclusive_pct": _share(libraries, total, top),
            "top_self_pct": _share(leaves, total, top)}


def analyse_wall(raw: str) -> dict[str, Any]:
    """Summaries of an ``--idle`` recording: for each thread role, the share of its samples whose
    innermost frame is in psycopg (sending, waiting for the answer, then for the GIL), idle (waiting
    for work: a lock, a queue, a sleep), or other Python code (running, or waiting for the GIL)."""
    stacks = _parse(raw)
    by_role: dict[str, Counter[str]] = {}
    for frames, count in stacks:
        func, file = frames[-1]
        if re.search(r"psycopg", file):
            activity = "in psycopg (waiting for PostgreSQL, or for the GIL after it)"
        elif re.search(r"threading\.py|queue\.py|concurrent/futures", file) or \
                func.rsplit(".", 1)[-1] in IDLE_LEAVES:
            activity = "idle (waiting for work, a lock or a timer)"
        else:
            activity = "other Python (running, or waiting for the GIL)"
        by_role.setdefault(_role(frames), Counter())[activity] += count
    return {"samples": sum(c for _, c in stacks),
            "by_thread_activity_pct": {role: _share(c, sum(c.values()))
                                       for role, c in sorted(by_role.items())}}


def _record(exe: str, flags: list[str], cfg: Config, url: str, out: Path,
            rate: int) -> dict[str, Any]:
    """One fresh run of the workload in a child process, with py-spy attached once it is ready;
    returns the child's throughput figures (under the profiler)."""
    reset_statemachine(url)
    store = Store(url)
    try:
        start_workflows(store, cfg.profile_workflows)
    finally:
        store.dispose()
    checkpoint(url)
    target = subprocess.Popen(
        [sys.executable, "-m", "bench.profiling", url, str(cfg.profile_workers),
         str(cfg.profile_workflows), str(cfg.run_timeout)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert target.stdin is not None
    assert target.stdout is not None
    spy: subprocess.Popen[str] | None = None
    try:
        if target.stdout.readline().strip() != "READY":
            raise RuntimeError("the profiled worker did not start")
        spy = subprocess.Popen([exe, "record", *flags, "--rate", str(rate), "--format", "raw",
                                "--output", str(out), "--pid", str(target.pid)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)  # let py-spy attach before the work starts
        target.stdin.write("go\n")
        target.stdin.flush()
        stdout, _ = target.communicate(timeout=cfg.run_timeout + 60)
        _, spy_err = spy.communicate(timeout=60)
    finally:
        for proc in (target, spy):
            if proc is not None and proc.poll() is None:
                proc.kill()
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if target.returncode != 0 or not lines or not out.exists():
        raise RuntimeError(f"profiled run failed ({target.returncode}); py-spy: {spy_err[-2000:]}")
    return dict(json.loads(lines[-1]))


def measure(cfg: Config, url: str, log: Log) -> dict[str, Any]:
    """Profile one threads-mode worker through `cfg.profile_workflows` workflows, twice."""
    exe = find_py_spy()
    if exe is None:
        return {"skipped": "py-spy is not installed (pip install py-spy into the venv)"}
    base = cfg.output.parent / f"profile-{cfg.profile_workers}w"
    base.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"workers": cfg.profile_workers, "workflows": cfg.profile_workflows}
    # The GIL is held a fraction of the time: sample it faster to get enough samples.
    for kind, flags, rate in (("gil", ["--gil", "--nonblocking"], 500),
                              ("wall", ["--idle", "--nonblocking"], 200)):
        out = base.with_name(f"{base.name}-{kind}.txt")
        log(f"profile ({kind}): py-spy record {' '.join(flags)}, "
            f"{cfg.profile_workflows:,} workflows")
        run = _record(exe, flags, cfg, url, out, rate)
        analysis = analyse_gil(out.read_text()) if kind == "gil" else analyse_wall(out.read_text())
        results[kind] = {"raw_stacks": str(out), "run_under_profiler": run, **analysis}
    return results


def _main(argv: list[str]) -> None:
    """The profiled child: report ready (imports done), wait for "go", run, print the figures."""
    url, workers, workflows, timeout = argv[0], int(argv[1]), int(argv[2]), float(argv[3])
    print("READY", flush=True)
    sys.stdin.readline()
    result = run_threads_mode(url, workers, workflows, timeout)
    print(json.dumps({"transitions_per_s": round(result.transitions_per_s, 1),
                      "cpu_us_per_transition": round(result.cpu_us_per_transition, 1),
                      "elapsed_s": round(result.elapsed_s, 3)}), flush=True)


if __name__ == "__main__":
    _main(sys.argv[1:])
