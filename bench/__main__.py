"""``python -m bench``: run the benchmark, print a Markdown report, write the JSON results.

Examples::

    python -m bench                                 # everything (~10-15 min on 2 cores)
    python -m bench --no-scale --repeats 1          # quicker
    python -m bench --only throughput,latency -n 5000 --workers 4
    python -m bench --only profile                  # py-spy profile at 4 workers
    python -m bench --quick                         # a developer's loop, under 2 minutes
    python -m bench --smoke --output /tmp/x.json    # what the test suite runs (seconds)
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from .config import ALL_SECTIONS, DEFAULT_PG_URL, DEFAULT_SECTIONS, Config
from .report import problems, render, write_json
from .runner import run
from .targets import targets


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive numbers")
    return values


def _names(allowed: tuple[str, ...]) -> type:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(x.strip() for x in text.split(",") if x.strip())
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(allowed)}")
        return names

    return parse  # type: ignore[return-value]


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pg-url", default=os.environ.get("STATEMACHINE_BENCH_POSTGRES_URL",
                                                      DEFAULT_PG_URL),
                   help="PostgreSQL server to use (a database sm_bench_<random> is created on it "
                        "and dropped at the end; env STATEMACHINE_BENCH_POSTGRES_URL). "
                        f"Default: {DEFAULT_PG_URL}")
    p.add_argument("-n", "--workflows", type=int, help="workflows per timed run (default 2000)")
    p.add_argument("--workers", type=_ints, help="worker counts, e.g. 1,4,8 (the default)")
    p.add_argument("--modes", type=_names(("threads", "processes", "grouped")),
                   help="statemachine worker modes: threads,processes,grouped (all by default; "
                        "grouped = threads with group commit on, where the Worker has it)")
    p.add_argument("--repeats", type=int, help="runs per figure; medians are quoted (default 3)")
    p.add_argument("--only", type=_names(ALL_SECTIONS),
                   help=f"sections to run, from: {', '.join(ALL_SECTIONS)} "
                        f"(default: all but profile)")
    p.add_argument("--no-scale", action="store_true",
                   help="skip the scale section (it loads 1.1M rows: the slowest part)")
    p.add_argument("--profile", action="store_true",
                   help="add the py-spy profile section (needs `pip install py-spy`)")
    p.add_argument("--latency-runs", type=int, help="workflows timed one by one (default 200)")
    p.add_argument("--scale-finished", type=int, help="finished rows loaded (default 1,000,000)")
    p.add_argument("--scale-sleeping", type=int, help="sleeping rows loaded (default 100,000)")
    p.add_argument("--memory-transitions", type=int,
                   help="transitions before the last memory reading (default 100,000)")
    p.add_argument("--timeout", type=float, dest="run_timeout",
                   help="seconds one timed run may take before it counts as failed (default 300)")
    p.add_argument("--output", type=Path, help="JSON results file "
                   "(default bench/results/latest.json; a .md report is written next to it)")
    p.add_argument("--keep", action="store_true", help="keep the bench database at the end")
    p.add_argument("--group-workers", type=_ints, dest="group_workers",
                   help="handler threads for the grouping section (default 8,32)")
    p.add_argument("--sqlite-workers", type=_ints, dest="sqlite_workers",
                   help="worker counts for the SQLite section (default 1,4,8)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes for every section: checks the harness works, not speed")
    p.add_argument("--quick", action="store_true",
                   help="a developer's loop under 2 minutes (`make bench-quick`): throughput "
                        "ratios at 4 and 8 workers, latency, SQLite at 4; medians of 3")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    """The `Config` the command line asks for: the full run or the smoke one, then overrides."""
    if args.smoke and args.quick:
        raise SystemExit("python -m bench: --smoke and --quick do not go together")
    base = (Config.smoke_config() if args.smoke else Config.quick_config() if args.quick
            else Config())
    sections = args.only or base.sections
    if args.no_scale:
        sections = tuple(s for s in sections if s != "scale")
    if args.profile and "profile" not in sections:
        sections = (*sections, "profile")
    overrides = {k: v for k, v in vars(args).items()
                 if v is not None and k in {f.name for f in dataclasses.fields(Config)}
                 and k not in ("smoke", "keep", "quick")}
    return dataclasses.replace(base, **overrides, sections=sections, keep=args.keep,
                               smoke=args.smoke, quick=args.quick)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Run, report, and return the exit status: 1 if a section failed or a figure is missing."""
    # SIGTERM stops the run like Ctrl-C does: the bench database is still dropped.
    signal.signal(signal.SIGTERM, _interrupt)
    cfg = config_from_args(parser().parse_args(argv))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    order = [s for s in (*DEFAULT_SECTIONS, "profile") if s in cfg.sections]
    cfg = dataclasses.replace(cfg, sections=tuple(order))
    results = run(cfg)
    results["targets"] = targets(results)
    write_json(results, cfg.output)
    markdown = render(results)
    cfg.output.with_suffix(".md").write_text(markdown)
    sys.stdout.write(markdown)
    issues = problems(results)
    for issue in issues:
        print(f"bench: {issue}", file=sys.stderr)
    print(f"bench: results in {cfg.output} and {cfg.output.with_suffix('.md')}", file=sys.stderr)
    return 1 if issues else 0


if __name__ == "__main__":
    sys.exit(main())
