"""A fleet pool that lives for months: its per-transition time and its row size after 100,000
transitions (by default), on PostgreSQL.

One `machines.fleet.Fleet` workflow (a pool of 3 servers, against the fake cloud in this process)
receives `ScaleTo` events in batches of 500; each is two transitions of the pool (the event, then
`reconcile`, which lists the cloud's servers). The last event of every batch moves the target
between 3 and 4, so each batch also starts one provisioning or teardown child: children pile up in
``sm_workflows`` as they would over months. Measured:

- the pool's own time per transition: the median gap between consecutive ``finished_at`` of its
  ``sm_history`` rows, over its first and its last `window` transitions (the inbox is never empty
  meanwhile, so the gap is the pool's work, not a wait for news);
- the wall time per transition of each batch (sending included), first and last five batches;
- the buffer pages read or hit in the ``sm_*`` tables per transition (from
  ``pg_statio_user_tables``), first and last five batches: the work, whatever else the machine
  is doing;
- its ``sm_workflows`` row, ``pg_column_size`` of the whole row and ``octet_length`` of ``data``,
  before and after; and what grows meanwhile (its history rows, consumed events, children).

Run::

    python -m bench.fleet                          # 100,000 transitions (~10 min on 2 cores)
    python -m bench.fleet --transitions 2000       # a quick look
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from machines.fakes.cloud import CloudService
from machines.fleet import (
    Fleet,
    PoolReconciling,
    PoolSpec,
    ProvisionServer,
    ScaleTo,
    TeardownServer,
)
from statemachine import Client, Store, Worker

from .config import DEFAULT_PG_URL
from .database import BenchDatabase, connect

__all__ = ["measure"]

BATCH = 500  # events per batch: 1,000 transitions of the pool


def _log(message: str) -> None:
    print(f"[bench.fleet] {message}", file=sys.stderr, flush=True)


# The columns whose size can vary (the others are fixed-size or the same throughout).
_VARIABLE = ("state", "data", "status", "lease_token", "lease_owner", "last_error",
             "cancel_requested", "in_doubt")


def _row(url: str, wid: str) -> dict[str, int]:
    with connect(url) as conn:
        row, data, text, *sizes = conn.execute(
            "SELECT pg_column_size(w.*), octet_length(w.data::text), w.data::text, "
            + ", ".join(f"coalesce(pg_column_size(w.{c}), 0)" for c in _VARIABLE)
            + " FROM sm_workflows w WHERE id = %s", (wid,)).fetchone() or (0, 0, "")
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM sm_history WHERE workflow_id = %(w)s),"
            " (SELECT count(*) FROM sm_events WHERE workflow_id = %(w)s),"
            " (SELECT count(*) FROM sm_workflows WHERE parent_id = %(w)s)",
            {"w": wid}).fetchone() or (0, 0, 0)
    return {"row_bytes": int(row), "data_bytes": int(data), "data": text,
            "columns": dict(zip(_VARIABLE, (int(n) for n in sizes), strict=True)),
            "history_rows": int(counts[0]),
            "events": int(counts[1]), "children": int(counts[2])}


def _blocks(url: str) -> int:
    """Buffer pages read or hit so far in statemachine's tables and their indexes. The server
    publishes these counters about once a second: a batch takes several."""
    time.sleep(1.2)
    with connect(url) as conn:
        row = conn.execute(
            "SELECT sum(coalesce(heap_blks_read, 0) + coalesce(heap_blks_hit, 0) "
            "+ coalesce(idx_blks_read, 0) + coalesce(idx_blks_hit, 0)) "
            "FROM pg_statio_user_tables WHERE relname LIKE 'sm_%%'").fetchone()
    return int(row[0] or 0) if row else 0


def _gaps(url: str, wid: str, first: int, last: int) -> float:
    """Median seconds between consecutive history rows of versions first..last of the pool."""
    with connect(url) as conn:
        times = [r[0] for r in conn.execute(
            "SELECT finished_at FROM sm_history WHERE workflow_id = %s AND version BETWEEN %s "
            "AND %s ORDER BY version", (wid, first, last))]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    return statistics.median(gaps) if gaps else float("nan")


def _settle(client: Client, wid: Any, target: int) -> None:
    """Send ScaleTo(target) until the pool has nothing in flight (its children are done)."""
    while True:
        version = client.get(wid).version
        client.send(wid, ScaleTo(target))
        while True:
            info = client.get(wid)
            if info.version >= version + 2 and info.status == "waiting":
                break
            time.sleep(0.005)
        spec = info.state.spec  # type: ignore[union-attr]
        if not spec.creating and not spec.deleting and len(spec.servers) == target:
            return
        time.sleep(0.05)


def _vacuum(url: str) -> None:
    with connect(url) as conn:
        conn.execute("VACUUM sm_workflows, sm_events, sm_history")


def _autovacuum(url: str) -> str:
    with connect(url) as conn:
        row = conn.execute("SHOW autovacuum").fetchone()
    return str(row[0]) if row else "?"


def measure(url: str, transitions: int, window: int = 2000, batch: int = BATCH,
            count_pages: bool = True, vacuum: bool = True) -> dict[str, Any]:
    """Drive one pool through `transitions` transitions on the database at `url`
    (`count_pages`: read the page counters after every batch, which waits ~1 s each time;
    `vacuum`: VACUUM the tables after every batch, as autovacuum would: the server the figures
    in docs/performance.md come from runs with autovacuum off)."""
    store = Store(url)
    cloud = CloudService().start()
    client = Client(store, [Fleet, ProvisionServer, TeardownServer])
    machines = [Fleet(cloud.url), ProvisionServer(cloud.url), TeardownServer(cloud.url)]
    batches: list[float] = []
    per_transition: list[float] = []  # buffer pages touched per transition, per batch
    try:
        with Worker(store, machines, concurrency=4, poll_interval=0.05):
            wid = client.start(Fleet, PoolReconciling(PoolSpec("bench", 3)))
            while client.get(wid).state_name != "PoolWatching" or len(cloud.pool("bench")) < 3:
                time.sleep(0.01)
            _settle(client, wid, 3)
            before = _row(url, str(wid))
            start_version = client.get(wid).version
            target = 3
            blocks = _blocks(url) if count_pages else 0
            while client.get(wid).version - start_version < transitions:
                began, version = time.perf_counter(), client.get(wid).version
                for n in range(batch):
                    if n == batch - 1:
                        target = 7 - target  # 3 <-> 4: one child per batch
                    client.send(wid, ScaleTo(target))
                while True:
                    info = client.get(wid)
                    if info.version >= version + 2 * batch and info.status == "waiting":
                        break
                    time.sleep(0.1)  # seldom: the benchmark's own reads stay out of the way
                took = time.perf_counter() - began
                batches.append(took / (info.version - version))
                if count_pages:
                    per_transition.append((_blocks(url) - blocks) / (info.version - version))
                if vacuum:
                    _vacuum(url)
                if count_pages:
                    blocks = _blocks(url)  # the vacuum's own pages are not the pool's
                done = info.version - start_version
                if len(batches) % 20 == 0:
                    _log(f"{done:,} transitions, {batches[-1] * 1000:.2f} ms each (last batch)")
            end_version = client.get(wid).version
            _settle(client, wid, 3)  # the size it started at: rows compared like for like
            after = _row(url, str(wid))
        return {
            "transitions": end_version - start_version,
            "autovacuum": _autovacuum(url), "vacuum_each_batch": vacuum,
            "own_ms_first": round(_gaps(url, str(wid), start_version,
                                        start_version + window) * 1000, 3),
            "own_ms_last": round(_gaps(url, str(wid), end_version - window,
                                       end_version) * 1000, 3),
            "batch_ms_first": round(statistics.median(batches[:5]) * 1000, 3),
            "batch_ms_last": round(statistics.median(batches[-5:]) * 1000, 3),
            # Pages read or hit in sm_* tables and indexes per transition, children and the
            # benchmark's own polling included: the work, without the machine's noise.
            "pages_first": round(statistics.median(per_transition[1:6]), 2)
            if len(per_transition) > 1 else None,
            "pages_last": round(statistics.median(per_transition[-5:]), 2)
            if per_transition else None,
            "before": before, "after": after,
            "servers_created": len(cloud.created), "servers_deleted": len(cloud.deleted),
        }
    finally:
        cloud.stop()
        store.dispose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pg-url", default=os.environ.get("STATEMACHINE_BENCH_POSTGRES_URL",
                                                      DEFAULT_PG_URL))
    p.add_argument("--transitions", type=int, default=100_000)
    p.add_argument("--window", type=int, default=2000,
                   help="transitions at each end whose gaps are compared (default 2000)")
    p.add_argument("--no-vacuum", action="store_true",
                   help="do not VACUUM after each batch (leave it to autovacuum, if it is on)")
    p.add_argument("--output", type=Path, default=Path("bench/results/fleet.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    db = BenchDatabase(args.pg_url)
    try:
        result = measure(db.url, args.transitions, min(args.window, args.transitions // 2),
                         vacuum=not args.no_vacuum)
    finally:
        db.drop()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
