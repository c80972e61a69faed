"""``python -m bench.exploration``: what one `statemachine.testing.explore` example costs.

The demo order (5 states) explored by hypothesis for `--examples` examples of `--steps` rules
each (plus the workflow every example starts with), on SQLite (one migrated database for the
whole run, rows deleted between examples) or on PostgreSQL (``--pg-url``). Each example is
timed from the machine's creation to its teardown: hypothesis's own work, the engine's steps, and
the invariants checked after every rule. Prints the median, p90 and the total, wall clock and
this process's CPU time (on a busy machine the wall clock waits for a core; the CPU time does
not)."""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from machines.order import FakePaymentGateway, Order
from statemachine import Store
from statemachine.testing import FakeClock, explore


def measure(examples: int, steps: int, url: str | None = None) -> dict[str, Any]:
    """Run the exploration; per-example wall and CPU times in milliseconds, and the rules run."""
    def store() -> Store:
        made = Store(url, clock=FakeClock())
        made.migrate()
        return made

    exploring = explore(lambda: Order(FakePaymentGateway()), store=store if url else None)
    wall: list[float] = []
    cpu: list[float] = []
    rules: list[int] = []
    started: list[tuple[float, float]] = []

    class Timed(exploring):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            started.append((time.perf_counter(), time.process_time()))
            super().__init__()

        def teardown(self) -> None:
            super().teardown()
            w, c = started.pop()
            wall.append((time.perf_counter() - w) * 1000)
            cpu.append((time.process_time() - c) * 1000)
            rules.append(len(self.trace))

    try:
        run_state_machine_as_test(Timed, settings=settings(
            max_examples=examples, stateful_step_count=steps, deadline=None, database=None,
            phases=[Phase.generate], suppress_health_check=list(HealthCheck)))
    finally:
        Timed.close()
    wall, cpu = wall[1:], cpu[1:]  # the first example also creates and migrates the database
    return {
        "examples": len(wall), "rules_median": statistics.median(rules),
        "wall_median_ms": statistics.median(wall),
        "wall_p90_ms": statistics.quantiles(wall, n=10)[-1],
        "cpu_median_ms": statistics.median(cpu), "total_s": sum(wall) / 1000,
    }


@contextmanager
def _throwaway_database(server: str) -> Iterator[str]:
    """A database made on `server` for this run, dropped at the end."""
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    name = f"sm_bench_explore_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.exploration", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=200)
    p.add_argument("--steps", type=int, default=10, help="rules per example (at most)")
    p.add_argument("--pg-url", default=None, help="explore on this PostgreSQL server instead (a "
                   "database sm_bench_explore_<random> is made on it and dropped at the end)")
    args = p.parse_args(argv)
    # Crashes and failures are injected on purpose: their warnings are noise here. Restored after,
    # since main() also runs inside other processes (the suite's smoke test).
    logging.disable(logging.WARNING)
    try:
        if args.pg_url:
            with _throwaway_database(args.pg_url) as url:
                r = measure(args.examples, args.steps, url)
        else:
            r = measure(args.examples, args.steps)
    finally:
        logging.disable(logging.NOTSET)
    backend = "PostgreSQL" if args.pg_url else "SQLite"
    print(f"{backend}: {r['examples']} examples, median {r['rules_median']:g} rules each: "
          f"median {r['wall_median_ms']:.1f} ms (p90 {r['wall_p90_ms']:.1f} ms, CPU median "
          f"{r['cpu_median_ms']:.1f} ms); {r['total_s']:.1f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
