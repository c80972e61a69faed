"""The results of a run: written as JSON, rendered as Markdown, and checked for completeness.

JSON shape (``schema`` 1), one key per section that ran, plus ``meta`` (machine, software,
configuration, duration) and ``errors`` (section -> traceback)::

    throughput: {runs: [{backend, impl, mode, workers, transitions_per_s: {median, min, max,
                 samples}, workflows_per_s, cpu_us_per_transition, elapsed_s}],
                 ratio_to_reference: {mode: {workers: ratio}}, start_many_workflows_per_s}
    sql:        {statemachine_threads | statemachine_processes | reference:
                 {statements_per_transition, by_kind_per_transition, mean_ms_by_kind,
                  server: {xact_commit_per_transition, ...}}}
    latency:    {start_to_done, start_to_wait, start_call: {p50_ms, p90_ms, p99_ms, ...}}
    events:     {skipped: why} (until events exist)
    scale:      {empty_transitions_per_s, loaded_transitions_per_s, ratio_loaded_to_empty,
                 claim_plan_loaded: {plan, indexes, uses_index, execution_ms}, ...}
    memory:     {rss_start_mb, rss_after_mb, rss_growth_mb, peak_mb, transitions, samples}
    sqlite:     {runs: [...as throughput...], sqlite_version}
    profile:    {by_component_pct, statemachine_inclusive_pct, top_self_pct, ...} (on request)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .targets import targets

__all__ = ["problems", "render", "write_json"]

IMPL_LABEL = {("reference", "processes"):
                  "CTE reference (hand-written: claim + CTE commit), processes",
              ("same_plan", "processes"):
                  "same-plan loop (hand-written: statemachine's statements, sticky), processes",
              ("statemachine", "grouped"): "statemachine, threads in 1 process, group commit on",
              ("statemachine", "ungrouped"):
                  "statemachine, threads in 1 process, group commit off",
              ("statemachine", "threads"): "statemachine, threads in 1 process",
              ("statemachine", "processes"): "statemachine, processes"}


def write_json(results: dict[str, Any], path: Path) -> None:
    """Write `results` to `path` (creating its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")


def _n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _rate(s: dict[str, Any]) -> str:
    return f"{_n(s['median'])} ({_n(s['min'])}-{_n(s['max'])})"


def _header(results: dict[str, Any]) -> Iterator[str]:
    meta = results.get("meta", {})
    m, sw, cfg = meta.get("machine", {}), meta.get("software", {}), meta.get("config", {})
    pg, git = meta.get("postgres"), meta.get("git", {})
    yield "# statemachine benchmark"
    yield ""
    commit = git.get("commit") or "?"
    yield (f"Run {meta.get('started_at', '?')} on commit {commit}"
           f"{' (with local changes)' if git.get('dirty') else ''}; took "
           f"{meta.get('duration_s', '?')} s.")
    end = (meta.get("git_end") or {}).get("commit")
    if end and end != commit:
        yield (f"**The checkout moved to commit {end} during the run**: later sections measured "
               "newer code than earlier ones.")
    yield (f"Machine: {m.get('cores')} x {m.get('cpu')}, {m.get('memory_gb')} GB RAM, "
           f"{m.get('os')}; load average at start {meta.get('load_average_start')}, "
           f"at end {meta.get('load_average_end')}.")
    if pg:
        yield (f"PostgreSQL {pg['server_version']} on the same machine (synchronous_commit="
               f"{pg['synchronous_commit']}, fsync={pg['fsync']}, shared_buffers="
               f"{pg['shared_buffers']}); Python {sw.get('python')}, SQLAlchemy "
               f"{sw.get('sqlalchemy')}, psycopg {sw.get('psycopg')}.")
    yield (f"Workload: {cfg.get('workflows')} workflows x 3 transitions, trivial handlers, "
           f"started in bulk before the clock starts. Figures are medians of "
           f"{cfg.get('repeats')} runs, (min-max) in brackets.")
    yield ""


def _ratio_cell(table: dict[str, Any], mode: str, workers: int) -> str:
    value = table.get(mode, {}).get(str(workers))
    return "-" if value is None else f"{value:.2f}x"


def _throughput(results: dict[str, Any]) -> Iterator[str]:
    t = results.get("throughput")
    if not t:
        return
    workers = sorted({r["workers"] for r in t["runs"]})
    modes = list(t["ratio_to_reference"])
    yield "## Headline: statemachine ÷ the hand-written loops (PostgreSQL, same run)"
    yield ""
    yield ("| workers | "
           + " | ".join(f"{m}: transitions/s ÷ same-plan loop" for m in modes) + " | "
           + " | ".join(f"{m}: ÷ CTE reference" for m in modes) + " | "
           + " | ".join(f"{m}: CPU/transition ÷ same-plan loop's" for m in modes) + " |")
    yield "|---:|" + "---:|" * (3 * len(modes))
    for w in workers:
        cells = [_ratio_cell(t.get("ratio_to_same_plan", {}), m, w) for m in modes]
        cells += [_ratio_cell(t["ratio_to_reference"], m, w) for m in modes]
        cells += [_ratio_cell(t.get("cpu_ratio_to_same_plan", {}), m, w) for m in modes]
        yield f"| {w} | " + " | ".join(cells) + " |"
    yield ""
    yield ("Transitions/s ratios: higher is better (1.00x = as fast as the loop). CPU ratio: "
           "client + PostgreSQL backend CPU per transition, lower is better.")
    yield ""
    yield "## Throughput on PostgreSQL"
    yield ""
    yield from _runs_table(t["runs"], t)
    yield ""
    yield (f"`Client.start_many` inserted {_rate(t['start_many_workflows_per_s'])} workflows/s "
           "(set-up, not part of the timed runs).")
    yield ""
    for mode, why in (t.get("not_available") or {}).items():
        yield f"statemachine {mode}: {why}."
        yield ""


def _runs_table(runs: list[dict[str, Any]], ratios: dict[str, Any] | None) -> Iterator[str]:
    ratio_col = ratios is not None
    cte_col = ratios is not None and "ratio_to_reference" in ratios
    server_col = any(r.get("server_cpu_us_per_transition") for r in runs)
    yield ("| workers | implementation | transitions/s | workflows/s | client CPU µs/transition |"
           + (" server CPU µs/transition | total CPU µs/transition |" if server_col else "")
           + (" ÷ same-plan loop |" if ratio_col else "")
           + (" ÷ CTE reference |" if cte_col else ""))
    yield ("|---:|---|---:|---:|---:|" + ("---:|---:|" if server_col else "")
           + ("---:|" if ratio_col else "") + ("---:|" if cte_col else ""))
    for r in runs:
        label = IMPL_LABEL.get((r["impl"], r["mode"]), f"{r['impl']}, {r['mode']}")
        line = (f"| {r['workers']} | {label} | {_rate(r['transitions_per_s'])} | "
                f"{_n(r['workflows_per_s']['median'])} | "
                f"{_n(r['cpu_us_per_transition']['median'])} |")
        if server_col:
            server = r.get("server_cpu_us_per_transition")
            total = r.get("total_cpu_us_per_transition")
            line += (f" {_n(server['median']) if server else '-'} |"
                     f" {_n(total['median']) if total else '-'} |")
        if ratios is not None:
            if r["impl"] == "statemachine":
                mode, w = r["mode"], r["workers"]
                line += f" {_ratio_cell(ratios.get('ratio_to_same_plan', {}), mode, w)} |"
                if cte_col:
                    line += f" {_ratio_cell(ratios['ratio_to_reference'], mode, w)} |"
            else:
                line += " |" + (" |" if cte_col else "")
        yield line


SQL_COLUMNS = (("statemachine_threads", "statemachine, threads"),
               ("statemachine_processes", "statemachine, processes"),
               ("same_plan", "same-plan loop"),
               ("reference", "CTE reference"))


def _sql(results: dict[str, Any]) -> Iterator[str]:
    s = results.get("sql")
    if not s:
        return
    cols = [(k, label) for k, label in SQL_COLUMNS if k in s]
    yield (f"## Database work per transition (PostgreSQL, {s['workers']} workers, "
           f"{s['workflows']} workflows, one run each)")
    yield ""
    yield "| per transition | " + " | ".join(label for _, label in cols) + " |"
    yield "|---|" + "---:|" * len(cols)
    yield "| statements sent | " + " | ".join(
        f"{s[k]['statements_per_transition']:.2f}" for k, _ in cols) + " |"
    for key, label in (("xact_commit_per_transition", "transactions committed (server)"),
                       ("tup_inserted_per_transition", "rows inserted (server)"),
                       ("tup_updated_per_transition", "rows updated (server)")):
        yield f"| {label} | " + " | ".join(f"{s[k]['server'][key]:.2f}" for k, _ in cols) + " |"
    yield ""
    yield ("| statement: per transition x mean time | "
           + " | ".join(label for _, label in cols) + " |")
    yield "|---|" + "---:|" * len(cols)
    kinds = list(dict.fromkeys(kind for k, _ in cols for kind in s[k]["by_kind_per_transition"]))
    for kind in kinds:
        cells = []
        for k, _ in cols:
            per = s[k]["by_kind_per_transition"].get(kind)
            ms = s[k]["mean_ms_by_kind"].get(kind)
            cells.append("" if per is None else f"{per:.2f} x {ms:.2f} ms")
        yield f"| {kind} | " + " | ".join(cells) + " |"
    yield ""
    yield ("Times are means as the client sees them: the round trip, and in threads mode the "
           "wait for the GIL after it, included. Claims that found nothing, per transition: "
           + ", ".join(f"{label} {s[k]['empty_claims_per_transition']:.2f}" for k, label in cols
                       if "empty_claims_per_transition" in s[k]) + "."
           if "reference" in s else "")
    yield ""


def _latency_rows(lat: dict[str, Any], backend: str) -> Iterator[str]:
    labels = (("start_to_done", "start → terminal state committed (3 transitions)"),
              ("start_to_wait", "start → `Client.wait` returns"),
              ("start_call", "`Client.start` call alone"))
    for key, label in labels:
        x = lat[key]
        yield (f"| {backend} | {label} | {x['runs']} | {x['p50_ms']:.1f} | {x['p90_ms']:.1f} | "
               f"{x['p99_ms']:.1f} | {x['max_ms']:.1f} |")


def _latency(results: dict[str, Any]) -> Iterator[str]:
    lat, ev = results.get("latency"), results.get("events")
    lite = (results.get("sqlite") or {}).get("latency")
    if not lat and not ev and not lite:
        return
    yield "## Latency (one workflow at a time, idle in-process worker of 4 threads)"
    yield ""
    yield "| backend | measure | runs | p50 ms | p90 ms | p99 ms | max ms |"
    yield "|---|---|---:|---:|---:|---:|---:|"
    if lat:
        yield from _latency_rows(lat, "PostgreSQL")
    if lite:
        yield from _latency_rows(lite, "SQLite")
    if ev:
        if "skipped" in ev:
            yield f"| PostgreSQL | send → handler start | skipped: {ev['skipped']} | | | | |"
        else:
            x = ev["send_to_handler"]
            yield (f"| PostgreSQL | send → handler start | {x['runs']} | {x['p50_ms']:.1f} | "
                   f"{x['p90_ms']:.1f} | {x['p99_ms']:.1f} | {x['max_ms']:.1f} |")
    yield ""


def _grouping(results: dict[str, Any]) -> Iterator[str]:
    g = results.get("grouping")
    if not g:
        return
    yield "## Group commit (PostgreSQL, threads, same run)"
    yield ""
    if not g.get("available"):
        yield f"Grouped commit: **{g['reason']}**. No grouped figure is reported."
        yield ""
        return
    yield from _runs_table(g["runs"], g)
    yield ""
    lone = g["one_thread_latency"]
    yield "| 1-thread worker, start → done | runs | p50 ms | p99 ms |"
    yield "|---|---:|---:|---:|"
    for name in ("ungrouped", "grouped"):
        x = lone[name]
        yield f"| {name} | {x['runs']} | {x['p50_ms']:.1f} | {x['p99_ms']:.1f} |"
    yield ""


def _targets(results: dict[str, Any]) -> Iterator[str]:
    found = results.get("targets") or targets(results)
    yield "## Targets (issue 15)"
    yield ""
    cfg = results.get("meta", {}).get("config", {})
    if cfg.get("smoke") or cfg.get("quick"):
        yield (f"A {'smoke' if cfg.get('smoke') else 'quick'} run: its sizes are too small to "
               "judge the targets by (`make bench` does); the verdicts below are indicative only.")
        yield ""
    yield "| target | this run | met? |"
    yield "|---|---|---|"
    for t in found:
        met = {True: "**met**", False: "**not met**", None: "not measured"}[t["met"]]
        yield f"| {t['target']} | {t['result']} | {met} |"
    yield ""


def _scale(results: dict[str, Any]) -> Iterator[str]:
    s = results.get("scale")
    if not s:
        return
    plan = s["claim_plan_loaded"]
    yield f"## Scale (PostgreSQL, {s['workers']} threads)"
    yield ""
    yield "| sm_workflows holds | transitions/s |"
    yield "|---|---:|"
    yield f"| only the benchmark's workflows | {_rate(s['empty_transitions_per_s'])} |"
    yield (f"| + {s['finished_rows']:,} finished + {s['sleeping_rows']:,} sleeping rows | "
           f"{_rate(s['loaded_transitions_per_s'])} |")
    yield ""
    uses = ", ".join(plan["indexes"]) or "no index"
    seq = f"; sequential scan of {', '.join(plan['seq_scans'])}" if plan["seq_scans"] else ""
    yield (f"Loaded ÷ empty: **{s['ratio_loaded_to_empty']:.2f}x** (bulk load took "
           f"{s['load_s']} s). The claim on the loaded table uses {uses}{seq}; it ran in "
           f"{plan['execution_ms']} ms (EXPLAIN ANALYZE, rolled back):")
    yield ""
    yield "```"
    yield plan["plan"]
    yield "```"
    yield ""


def _memory(results: dict[str, Any]) -> Iterator[str]:
    m = results.get("memory")
    if not m:
        return
    yield f"## Memory (one worker process, {m['worker_concurrency']} threads, PostgreSQL)"
    yield ""
    yield ("| transitions committed | "
           + " | ".join(f"{s['transitions']:,}" for s in m["samples"]) + " |")
    yield "|---|" + "---:|" * len(m["samples"])
    yield "| RSS MB | " + " | ".join(f"{s['rss_mb']:.1f}" for s in m["samples"]) + " |"
    yield ""
    yield (f"RSS at start {m['rss_start_mb']} MB, after {m['transitions']:,} transitions "
           f"{m['rss_after_mb']} MB (growth {m['rss_growth_mb']} MB, peak {m['peak_mb']} MB), "
           f"at {_n(m['transitions_per_s'])} transitions/s.")
    yield ""


def _sqlite(results: dict[str, Any]) -> Iterator[str]:
    s = results.get("sqlite")
    if not s:
        return
    yield f"## SQLite (embedded default, SQLite {s['sqlite_version']}, WAL, a file in /tmp)"
    yield ""
    yield from _runs_table(s["runs"], None)
    yield ""
    for mode, why in (s.get("not_available") or {}).items():
        yield f"statemachine {mode}: {why}."
        yield ""


def _profile(results: dict[str, Any]) -> Iterator[str]:
    p = results.get("profile")
    if not p:
        return
    yield f"## Profile (py-spy, one worker process, {p.get('workers')} threads)"
    yield ""
    if "skipped" in p:
        yield f"Skipped: {p['skipped']}"
        yield ""
        return
    gil, wall = p["gil"], p["wall"]
    for kind, rec in (("GIL", gil), ("wall-clock", wall)):
        run = rec["run_under_profiler"]
        yield (f"{kind} recording: {p['workflows']:,} workflows, {rec['samples']:,} samples; under "
               f"the profiler {_n(run['transitions_per_s'])} transitions/s, "
               f"{_n(run['cpu_us_per_transition'])} CPU µs/transition. Raw stacks: "
               f"`{rec['raw_stacks']}`.")
        yield ""
    yield "Wall clock, by thread: share of each thread's samples"
    yield ""
    activities = sorted({a for shares in wall["by_thread_activity_pct"].values() for a in shares})
    yield "| thread | " + " | ".join(activities) + " |"
    yield "|---|" + "---:|" * len(activities)
    for role, shares in wall["by_thread_activity_pct"].items():
        yield f"| {role} | " + " | ".join(f"{shares.get(a, 0.0):.1f}" for a in activities) + " |"
    yield ""
    for title, key in (("GIL held, by thread", "by_thread_pct"),
                       ("GIL held, by component (self time)", "by_component_pct"),
                       ("GIL held, statemachine functions (inclusive)",
                        "statemachine_inclusive_pct"),
                       ("GIL held, SQLAlchemy and psycopg functions (inclusive)",
                        "libraries_inclusive_pct"),
                       ("GIL held, top functions (self time)", "top_self_pct")):
        yield f"| {title} | % of GIL samples |"
        yield "|---|---:|"
        for k, v in gil[key].items():
            yield f"| `{k}` | {v:.1f} |"
        yield ""


def render(results: dict[str, Any]) -> str:
    """The results as a Markdown report."""
    lines = [*_header(results), *_targets(results), *_throughput(results), *_grouping(results),
             *_sql(results), *_latency(results),
             *_scale(results), *_memory(results), *_sqlite(results), *_async(results),
             *_profile(results)]
    errors = results.get("errors") or {}
    if errors:
        lines += ["## Errors", ""]
        for section, text in errors.items():
            lines += [f"### {section}", "", "```", text.rstrip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _async(results: dict[str, Any]) -> list[str]:
    if "async" not in results:
        return []
    from .async_worker import render as render_async

    return [*render_async(results["async"]).splitlines(), ""]


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def problems(results: dict[str, Any]) -> list[str]:
    """What is missing or not positive in `results` for the sections its configuration asked
    for (empty when the run is complete and well formed)."""
    out: list[str] = []
    sections = results.get("meta", {}).get("config", {}).get("sections", [])

    def need(path: str, value: Any) -> None:
        if not _positive(value):
            out.append(f"{path} is {value!r}, expected a positive number")

    def get(d: Any, *keys: str) -> Any:
        for k in keys:
            d = d.get(k) if isinstance(d, dict) else None
        return d

    for section, text in (results.get("errors") or {}).items():
        out.append(f"section {section} failed: {text.strip().splitlines()[-1]}")
    for section in sections:
        if section not in results:
            out.append(f"section {section} is missing")
    cfg = results.get("meta", {}).get("config", {})
    for key in ("throughput", "sqlite"):
        if key not in results:
            continue
        runs = results[key].get("runs", [])
        missing = results[key].get("not_available") or {}
        modes = [m for m in cfg.get("modes", []) if m not in missing]
        impls = {("statemachine", m) for m in modes}
        if key == "throughput":
            impls |= {("reference", "processes"), ("same_plan", "processes")}
        workers = cfg.get("workers" if key == "throughput" else "sqlite_workers", [])
        have = {(r["impl"], r["mode"], r["workers"]) for r in runs}
        for impl, mode in impls:
            for w in workers:
                if (impl, mode, w) not in have:
                    out.append(f"{key}: no run for {impl} {mode} {w} workers")
        for r in runs:
            for fig in ("transitions_per_s", "workflows_per_s", "cpu_us_per_transition",
                        "elapsed_s"):
                need(f"{key}.{r['impl']}.{r['mode']}.{r['workers']}.{fig}",
                     get(r, fig, "median"))
        if key == "sqlite":
            for fig in ("p50_ms", "p99_ms"):
                need(f"sqlite.latency.start_to_done.{fig}",
                     get(results["sqlite"], "latency", "start_to_done", fig))
    if "throughput" in results:
        missing = results["throughput"].get("not_available") or {}
        need("throughput.start_many_workflows_per_s",
             get(results["throughput"], "start_many_workflows_per_s", "median"))
        for mode in cfg.get("modes", []):
            if mode in missing:
                continue
            for w in cfg.get("workers", []):
                for table in ("ratio_to_reference", "ratio_to_same_plan"):
                    need(f"throughput.{table}.{mode}.{w}",
                         get(results["throughput"], table, mode, str(w)))
    if "grouping" in results and results["grouping"].get("available"):
        for w in cfg.get("group_workers", []):
            need(f"grouping.ratio_to_same_plan.grouped.{w}",
                 get(results["grouping"], "ratio_to_same_plan", "grouped", str(w)))
    if "sql" in results:
        s = results["sql"]
        for impl in ("statemachine_threads", "statemachine_processes", "same_plan", "reference"):
            need(f"sql.{impl}.statements_per_transition",
                 get(s, impl, "statements_per_transition"))
            need(f"sql.{impl}.server.xact_commit_per_transition",
                 get(s, impl, "server", "xact_commit_per_transition"))
    if "latency" in results:
        for key in ("start_to_done", "start_to_wait", "start_call"):
            for fig in ("p50_ms", "p90_ms", "p99_ms", "max_ms"):
                need(f"latency.{key}.{fig}", get(results["latency"], key, fig))
    if "events" in results and not ("skipped" in results["events"]
                                    or "send_to_handler" in results["events"]):
        out.append("events: neither skipped nor measured")
    if "scale" in results:
        s = results["scale"]
        for fig in ("empty_transitions_per_s", "loaded_transitions_per_s"):
            need(f"scale.{fig}", get(s, fig, "median"))
        need("scale.ratio_loaded_to_empty", s.get("ratio_loaded_to_empty"))
        if not get(s, "claim_plan_loaded", "plan"):
            out.append("scale: no claim plan")
        if not isinstance(get(s, "claim_plan_loaded", "uses_index"), bool):
            out.append("scale: claim plan does not say whether it uses an index")
    if "memory" in results:
        m = results["memory"]
        for fig in ("rss_start_mb", "rss_after_mb", "peak_mb", "transitions", "transitions_per_s"):
            need(f"memory.{fig}", m.get(fig))
        if (m.get("transitions") or 0) < cfg.get("memory_transitions", 0):
            out.append(f"memory: only {m.get('transitions')} transitions")
    if "profile" in results and "skipped" not in results["profile"]:
        for kind in ("gil", "wall"):
            need(f"profile.{kind}.samples", get(results["profile"], kind, "samples"))
    return out
