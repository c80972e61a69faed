"""``python -m bench.claimdecay``: does the claim slow down as dead index entries pile up?

Every claim and commit moves a row's `wake_at`, the key of the due index, and leaves the old index
entry behind until vacuum (PostgreSQL) or `gc.ttlseconds` (CockroachDB). A claim that scans
``wake_at <= now()`` from the start of the index walks all of them. This benchmark reproduces that
on PostgreSQL with autovacuum off on ``sm_workflows``: `--live` workflows (default 1,000) loop
through `--transitions` transitions in all (default 300,000) under worker processes that claim
every transition (``sticky=False``: the claim is on the path of each one), and it measures

* the claims the workers make (the library's claim: bounded by the worker's low-water mark,
  with a full sweep every `full_sweep_interval`), timed around ``store.sql.claim``;
* every second, in this process, the same claim two ways under ``EXPLAIN (ANALYZE, BUFFERS)`` in
  a transaction rolled back (nothing stays claimed): the previous claim, unbounded (the library's
  claim before the low-water mark, as it was sent), and the bounded claim from the workers'
  current mark. Both see the same table at the same moment.

"Start" is the claims made while the first 2-10 % of the transitions committed, "end" the last
10 %; the target is the bounded claim's median at the end within 1.5x of its median at the start.
The report (Markdown on stdout, JSON next to ``--output``) includes both plans at the end.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import attrs
import psycopg

from statemachine import Context, Machine, Store, Worker, step

from .config import DEFAULT_PG_URL
from .database import BenchDatabase, capture_claim_sql, connect, libpq_dsn, server_info
from .stats import percentile
from .sysinfo import git_revision, load_average, machine, software

__all__ = ["LOOP_MACHINE", "Loop", "main", "measure"]

LOOP_MACHINE = "bench_loop"
TARGET_RATIO = 1.5

# The library's claim as it was before the low-water mark and the byte cap (from
# docs/reference/sql/postgresql.sql at 22edbe3), for the probe of the "old" claim.
OLD_CLAIM = (
    "UPDATE sm_workflows SET status='running', attempt=(sm_workflows.attempt + 1), "
    "wake_at=(now() + %(p_lease)s), lease_token=%(p_token)s, lease_owner=%(p_owner)s, "
    "updated_at=now() FROM (SELECT sm_workflows.id AS id, sm_workflows.status AS status "
    "FROM sm_workflows WHERE sm_workflows.wake_at IS NOT NULL AND sm_workflows.wake_at <= now() "
    "AND sm_workflows.status = ANY (%(runnable)s::TEXT[]) "
    "AND sm_workflows.machine = ANY (%(p_machines)s::TEXT[]) ORDER BY sm_workflows.wake_at "
    "LIMIT %(p_limit)s FOR UPDATE SKIP LOCKED) AS picked WHERE sm_workflows.id = picked.id "
    "RETURNING sm_workflows.id, sm_workflows.machine, sm_workflows.state, sm_workflows.data, "
    "sm_workflows.version, sm_workflows.entered_version, sm_workflows.attempt, picked.status, "
    "EXISTS (SELECT * FROM sm_history WHERE sm_history.workflow_id = sm_workflows.id "
    "AND sm_history.version = sm_workflows.version) AS rec, sm_workflows.parent_id, "
    "sm_workflows.cancel_requested, sm_workflows.in_doubt")


@attrs.frozen
class Spin:
    """The one working state: `left` transitions to go."""

    n: int
    left: int


@attrs.frozen
class Stopped:
    """Terminal."""

    n: int


class Loop(Machine):
    """Spin -> Spin -> ... -> Stopped: trivial handlers, so the claim and commit are the work."""

    name = LOOP_MACHINE
    initial = Spin
    terminal = (Stopped,)

    @step
    def spin(self, state: Spin, ctx: Context) -> Spin | Stopped:
        if state.left <= 1:
            return Stopped(state.n)
        return Spin(state.n, state.left - 1)


# -- worker processes ----------------------------------------------------------------------------


def _child(url: str, concurrency: int, counter: Synchronized[int], mark: Synchronized[float],
           stop: Any, out: str, errors: Any) -> None:
    """One worker process: run the loop machine, time every claim, publish the claim mark."""
    try:
        store = Store(url)
        samples: list[tuple[int, float, int, int]] = []  # (transitions, ms, bounded, rows)
        claim = store.sql.claim

        def timed(**kwargs: Any) -> Any:
            t0 = time.perf_counter()
            rows = claim(**kwargs)
            ms = (time.perf_counter() - t0) * 1000
            samples.append((counter.value, ms, int(kwargs.get("since") is not None), len(rows)))
            return rows

        store.sql.claim = timed  # type: ignore[method-assign]

        def committed(_change: Any, _version: int) -> None:
            with counter.get_lock():
                counter.value += 1

        worker = Worker(store, [Loop()], concurrency=concurrency, sticky=False,
                        on_change=committed)
        worker.start()
        while not stop.wait(0.2):
            current = worker.claim_mark.mark
            mark.value = current.timestamp() if current is not None else 0.0
        worker.stop(grace=5)
        Path(out).write_text(json.dumps({"samples": samples, "sweeps": worker.claim_mark.sweeps}))
        store.dispose()
    except BaseException:
        errors.put(traceback.format_exc())
        raise


# -- probes --------------------------------------------------------------------------------------


def _explain(conn: psycopg.Connection[Any], statement: str, params: Any) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of `statement` in a transaction rolled back."""
    try:
        rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement,
                            params).fetchall()
    finally:
        conn.rollback()
    plan = rows[0][0][0]
    return {"ms": float(plan["Execution Time"]), "buffers": _buffers(plan["Plan"]),
            "rows": int(plan["Plan"].get("Actual Rows", 0))}


def _buffers(node: dict[str, Any]) -> int:
    return int(node.get("Shared Hit Blocks", 0)) + int(node.get("Shared Read Blocks", 0))


def _plan_text(conn: psycopg.Connection[Any], statement: str, params: Any) -> str:
    try:
        rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, params).fetchall()
    finally:
        conn.rollback()
    return "\n".join(str(r[0]) for r in rows)


def _table_stats(url: str) -> dict[str, Any]:
    with connect(url) as conn:
        dead, live, autovacuums = conn.execute(
            "SELECT n_dead_tup, n_live_tup, autovacuum_count FROM pg_stat_user_tables "
            "WHERE relname = 'sm_workflows'").fetchone() or (0, 0, 0)
        options = conn.execute(
            "SELECT coalesce(reloptions, '{}') FROM pg_class "
            "WHERE relname = 'sm_workflows'").fetchone()[0]  # type: ignore[index]
        due_size = conn.execute(
            "SELECT pg_relation_size('sm_workflows_due')").fetchone()[0]  # type: ignore[index]
        table_size = conn.execute(
            "SELECT pg_relation_size('sm_workflows')").fetchone()[0]  # type: ignore[index]
    return {"dead_tuples": int(dead), "live_tuples": int(live),
            "autovacuum_runs": int(autovacuums), "table_options": list(options),
            "due_index_bytes": int(due_size), "table_bytes": int(table_size)}


# -- the run -------------------------------------------------------------------------------------


def measure(pg_url: str, *, live: int, transitions: int, processes: int, concurrency: int,
            timeout: float, log: Any) -> dict[str, Any]:
    """Run the benchmark on a database of its own; returns the results (JSON-ready)."""
    db = BenchDatabase(pg_url)
    try:
        return _measure(db.url, live=live, transitions=transitions, processes=processes,
                        concurrency=concurrency, timeout=timeout, log=log)
    finally:
        db.drop()


def _measure(url: str, *, live: int, transitions: int, processes: int, concurrency: int,
             timeout: float, log: Any) -> dict[str, Any]:
    each = max(1, transitions // live)
    total = each * live
    with connect(url) as conn:
        conn.execute("ALTER TABLE sm_workflows SET (autovacuum_enabled = false, "
                     "toast.autovacuum_enabled = false)")
    store = Store(url)
    store.sql.insert_workflows(LOOP_MACHINE, [("Spin", {"n": i, "left": each})
                                              for i in range(live)])
    store.dispose()
    with connect(url) as conn:
        conn.execute("ANALYZE sm_workflows")
    # The library's claim, bounded (its `p_since` replaced by the workers' mark at each probe).
    new_sql, new_params = capture_claim_sql(url, concurrency, since=datetime.now(UTC),
                                            machine=LOOP_MACHINE)
    old_params = {"p_lease": "30 seconds", "p_token": "probe", "p_owner": "probe",
                  "runnable": ["ready", "running", "waiting"], "p_machines": [LOOP_MACHINE],
                  "p_limit": concurrency}
    before = _table_stats(url)

    ctx = multiprocessing.get_context("spawn")
    counter: Synchronized[int] = ctx.Value("q", 0)
    marks: list[Synchronized[float]] = [ctx.Value("d", 0.0) for _ in range(processes)]
    stop = ctx.Event()
    errors = ctx.Queue()
    tmp = Path(tempfile.mkdtemp(prefix="sm_claimdecay_"))
    outs = [str(tmp / f"worker-{i}.json") for i in range(processes)]
    children = [ctx.Process(target=_child, args=(url, concurrency, counter, marks[i], stop,
                                                 outs[i], errors), daemon=True)
                for i in range(processes)]
    probes: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for c in children:
        c.start()
    last_log = t0
    plans: dict[str, str] = {}
    try:
        with psycopg.connect(libpq_dsn(url)) as conn:
            while counter.value < total:
                if time.monotonic() - t0 > timeout:
                    raise RuntimeError(f"timed out after {timeout:.0f}s at {counter.value:,} of "
                                       f"{total:,} transitions")
                if not errors.empty():
                    raise RuntimeError("a worker process failed:\n" + errors.get())
                since = [m.value for m in marks if m.value > 0]
                done = counter.value
                if since and done < total * 0.98:
                    params = {**new_params, "p_since": datetime.fromtimestamp(min(since), UTC)}
                    old = _explain(conn, OLD_CLAIM, old_params)
                    new = _explain(conn, new_sql, params)
                    probes.append({"transitions": done, "old": old, "new": new})
                    if done > total * 0.9 and "old_end" not in plans:
                        plans["old_end"] = _plan_text(conn, OLD_CLAIM, old_params)
                        plans["new_end"] = _plan_text(conn, new_sql, params)
                    if "old_start" not in plans and done > total * 0.02:
                        plans["old_start"] = _plan_text(conn, OLD_CLAIM, old_params)
                        plans["new_start"] = _plan_text(conn, new_sql, params)
                if time.monotonic() - last_log > 15:
                    last_log = time.monotonic()
                    rate = done / (last_log - t0)
                    log(f"{done:,}/{total:,} transitions ({rate:,.0f}/s); probe old "
                        f"{probes[-1]['old']['ms'] if probes else 0:.2f} ms, new "
                        f"{probes[-1]['new']['ms'] if probes else 0:.2f} ms")
                time.sleep(1.0)
            elapsed = time.monotonic() - t0
            if "new_end" not in plans:  # a short run (--smoke): the plans as the run ended
                since = [m.value for m in marks if m.value > 0] or [time.time()]
                params = {**new_params, "p_since": datetime.fromtimestamp(min(since), UTC)}
                plans["old_end"] = _plan_text(conn, OLD_CLAIM, old_params)
                plans["new_end"] = _plan_text(conn, new_sql, params)
        after = _table_stats(url)
    finally:
        stop.set()
        for c in children:
            c.join(60)
    if not errors.empty():
        raise RuntimeError("a worker process failed:\n" + errors.get())
    samples: list[tuple[int, float, int, int]] = []
    sweeps = 0
    for out in outs:
        data = json.loads(Path(out).read_text())
        samples.extend(tuple(s) for s in data["samples"])
        sweeps += data["sweeps"]
    return _results(samples, probes, total=total, live=live, each=each, elapsed=elapsed,
                    processes=processes, concurrency=concurrency, sweeps=sweeps, before=before,
                    after=after, plans=plans)


def _window(total: int, phase: str) -> tuple[float, float]:
    return (total * 0.02, total * 0.10) if phase == "start" else (total * 0.90, total + 1)


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "median": None, "p90": None}
    return {"n": len(values), "median": round(statistics.median(values), 3),
            "p90": round(percentile(values, 90), 3)}


def _results(samples: list[tuple[int, float, int, int]], probes: list[dict[str, Any]], *,
             total: int, live: int, each: int, elapsed: float, processes: int,
             concurrency: int, sweeps: int, before: dict[str, Any], after: dict[str, Any],
             plans: dict[str, str]) -> dict[str, Any]:
    phases: dict[str, Any] = {}
    for phase in ("start", "end"):
        lo, hi = _window(total, phase)
        in_phase = [s for s in samples if lo <= s[0] < hi]
        probe_phase = [p for p in probes if lo <= p["transitions"] < hi]
        phases[phase] = {
            "worker_bounded_ms": _stats([s[1] for s in in_phase if s[2]]),
            "worker_sweep_ms": _stats([s[1] for s in in_phase if not s[2]]),
            "probe_old_ms": _stats([p["old"]["ms"] for p in probe_phase]),
            "probe_new_ms": _stats([p["new"]["ms"] for p in probe_phase]),
            "probe_old_buffers": _stats([p["old"]["buffers"] for p in probe_phase]),
            "probe_new_buffers": _stats([p["new"]["buffers"] for p in probe_phase]),
        }

    def ratio(key: str) -> float | None:
        a, b = phases["start"][key]["median"], phases["end"][key]["median"]
        return round(b / a, 2) if a and b is not None else None

    ratios = {k: ratio(k) for k in phases["start"]}
    # Judged on the database's own time for the claim (EXPLAIN ANALYZE): on a shared machine the
    # workers' timings also carry their wait for a CPU. Both are reported.
    met = ratios["probe_new_ms"] is not None and ratios["probe_new_ms"] <= TARGET_RATIO
    return {
        "live_workflows": live, "transitions": total, "transitions_each": each,
        "processes": processes, "concurrency": concurrency, "elapsed_s": round(elapsed, 1),
        "transitions_per_s": round(total / elapsed, 1), "claims": len(samples),
        "full_sweeps": sweeps, "phases": phases, "ratios_end_to_start": ratios,
        "target_ratio": TARGET_RATIO, "target_met": met, "table_before": before,
        "table_after": after, "plans": plans, "probes": probes,
    }


# -- the report ----------------------------------------------------------------------------------


def render(results: dict[str, Any], meta: dict[str, Any]) -> str:
    """The Markdown report."""
    r = results
    lines = [
        "# Claim under dead index entries (autovacuum off)", "",
        f"Run {meta['started_at']} on {meta['machine']['cores']} cores "
        f"({meta['machine']['cpu']}), load average {meta['load_average_start']} at start, "
        f"{meta['load_average_end']} at end; PostgreSQL "
        f"{meta['postgres'].get('server_version')}; library at commit "
        f"`{meta['git']['commit']}`{' (with local changes)' if meta['git']['dirty'] else ''}.",
        "",
        f"{r['live_workflows']:,} live workflows, {r['transitions']:,} transitions "
        f"({r['transitions_each']} each), {r['processes']} worker processes x "
        f"{r['concurrency']} threads, `sticky=False` (every transition claimed): "
        f"{r['elapsed_s']} s, {r['transitions_per_s']:,} transitions/s; {r['claims']:,} claims, "
        f"{r['full_sweeps']} of them full sweeps.", "",
        f"`sm_workflows`: {r['table_before']['dead_tuples']:,} dead tuples before, "
        f"{r['table_after']['dead_tuples']:,} after; due index "
        f"{r['table_before']['due_index_bytes'] / 1e6:.2f} MB before, "
        f"{r['table_after']['due_index_bytes'] / 1e6:.2f} MB after.", "",
        "| claim | start median (p90) | end median (p90) | end ÷ start |",
        "|---|---:|---:|---:|",
    ]
    names = {
        "worker_bounded_ms": "workers' claims, bounded (ms)",
        "worker_sweep_ms": "workers' full sweeps (ms)",
        "probe_new_ms": "probe: bounded claim, EXPLAIN ANALYZE (ms)",
        "probe_old_ms": "probe: previous unbounded claim, EXPLAIN ANALYZE (ms)",
        "probe_new_buffers": "probe: bounded claim (buffers)",
        "probe_old_buffers": "probe: previous unbounded claim (buffers)",
    }
    for key, name in names.items():
        s, e = r["phases"]["start"][key], r["phases"]["end"][key]
        lines.append(f"| {name} | {_fmt(s)} | {_fmt(e)} | "
                     f"{r['ratios_end_to_start'][key] or '-'}x |")
    verdict = "met" if r["target_met"] else "NOT met"
    lines += ["", f"Target: the bounded claim's median execution time (EXPLAIN ANALYZE) at the "
              f"end within {r['target_ratio']}x of its median at the start: **{verdict}** "
              f"({r['ratios_end_to_start']['probe_new_ms']}x; the workers' own timings, which "
              f"include waiting for a CPU: {r['ratios_end_to_start']['worker_bounded_ms']}x).",
              ""]
    for key, title in (("new_end", "Bounded claim, at the end"),
                       ("old_end", "Previous unbounded claim, at the end"),
                       ("new_start", "Bounded claim, at the start"),
                       ("old_start", "Previous unbounded claim, at the start")):
        if key in r["plans"]:
            lines += [f"### {title}", "", "```", r["plans"][key], "```", ""]
    return "\n".join(lines)


def _fmt(s: dict[str, Any]) -> str:
    return "-" if s["median"] is None else f"{s['median']:g} ({s['p90']:g})"


def main(argv: list[str] | None = None) -> int:
    """Run, print the report, write the JSON; 1 if the target is not met."""
    p = argparse.ArgumentParser(prog="python -m bench.claimdecay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pg-url", default=DEFAULT_PG_URL)
    p.add_argument("--live", type=int, default=1000, help="live workflows (default 1,000)")
    p.add_argument("--transitions", type=int, default=300_000,
                   help="transitions in all (default 300,000)")
    p.add_argument("--processes", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--concurrency", type=int, default=4, help="threads each (default 4)")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--output", type=Path, default=Path("bench/results/claimdecay.json"))
    p.add_argument("--smoke", action="store_true",
                   help="20 workflows, 1,000 transitions: checks the harness, not the target")
    args = p.parse_args(argv)
    if args.smoke:
        args.live, args.transitions = 20, 1000
    t0 = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f}s] {message}", file=sys.stderr, flush=True)

    meta = {"started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(), "software": software(), "git": git_revision(),
            "load_average_start": load_average(), "postgres": {}}
    meta["postgres"] = server_info(args.pg_url)
    results = measure(args.pg_url, live=args.live, transitions=args.transitions,
                      processes=args.processes, concurrency=args.concurrency,
                      timeout=args.timeout, log=log)
    meta["load_average_end"] = load_average()
    report = render(results, meta)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"meta": meta, "results": results}, indent=1,
                                      default=str))
    args.output.with_suffix(".md").write_text(report)
    sys.stdout.write(report)
    return 0 if results["target_met"] or args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())

