"""The `statemachine` command: migrate, run workers, start and steer workflows, run the demo.

The database comes from ``--db`` or ``STATEMACHINE_DATABASE_URL`` (default: ``statemachine.db`` in
the current directory). Machines come from ``--app module:attr`` (repeatable: a machine class or
instance, a list of them, a factory returning them, or a module: every machine defined in it).
Errors print one line; ``--debug`` shows the traceback.

The reading commands (`list`, `show`, `history`, `events`, `stats`) live in `_cli_list` and
`_cli_inspect`; `retry`, `cancel`, `force` and `resolve` in `_cli_steer`, with their filters in
`_cli_filters` and their bulk rails in `_cli_bulk`; output (tables, ``--json``) in `_cli_output`.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from ._async_worker import AsyncWorker, has_async_handlers
from ._cli_errors import check_url, describe, sqlite_file
from ._cli_filters import build_filter
from ._cli_inspect import events_command, history_command, show_command, stats_command
from ._cli_list import list_command
from ._cli_output import emit_json, json_option, when
from ._cli_output import json_data as _json_option
from ._cli_output import print_done as _done
from ._cli_purge import age_option, purge_command
from ._cli_steer import cancel, force, resolve, retry
from ._client import Client
from ._definition import Machine, lookup_machine, state_name
from ._logs import configure_logging, flush_logs
from ._migrate import cockroach_advice, migration_family
from ._runtime import Worker
from ._schedules import Schedule
from ._serde import StateCodec
from ._store import Change, Store, default_database_url
from ._store._audit import problems, scan_raw
from ._store._faults import interrupt_behind
from ._store._filters import WorkflowFilter, resolve_id
from .errors import InvalidArgument, StateMachineError, UnknownMachine

__all__ = ["load_machines", "main"]


# How often a one-shot command (list, show, start, ...) retries a lost connection or a
# serialization failure before it reports the error.
_ONE_SHOT_RETRIES = 3


class _Obj:
    def __init__(self, db: str, debug: bool) -> None:
        self.db = db
        self.debug = debug
        # Only `migrate` and `demo` may create a SQLite file; every other command reads one.
        self.may_create = False
        # A worker rides out outages; a one-shot command tells a person soon that the database
        # cannot be reached instead of retrying for many seconds.
        self.serving = False
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            url = check_url(self.db)
            path = sqlite_file(url)
            if path is not None and not self.may_create and not path.exists():
                # The hint names the absolute path: run from another directory, a relative URL
                # would create a second, empty database somewhere else.
                raise InvalidArgument(
                    f"no SQLite database at {path} (from --db {self.db}): the file does not "
                    f"exist; create it with `statemachine --db sqlite:///{path} migrate`, or "
                    "check --db / STATEMACHINE_DATABASE_URL")
            self._store = Store(self.db, max_retries=10 if self.serving else _ONE_SHOT_RETRIES)
        return self._store

    def machine_names(self, apps: Sequence[str]) -> tuple[str, ...]:
        """The names of the machines `--app` imports."""
        return tuple(m.spec.name for m in load_apps(apps)[0]) if apps else ()

    def client(self, apps: Sequence[str] = ()) -> Client:
        """A client that knows the machines `--app` imports."""
        machines = [m if isinstance(m, type) else type(m) for m in load_apps(apps)[0]] \
            if apps else []
        return Client(self.store, machines)

    def resolve(self, text: str) -> uuid.UUID:
        """The workflow id `text` is, or the one id it is a unique prefix of."""
        return resolve_id(self.store, text)

    def filter(self, values: dict[str, Any], apps: Sequence[str] = ()) -> WorkflowFilter:
        """The `list` filters in `values`, checked."""
        return build_filter(self.store, values, known_machines=self.machine_names(apps))

    def close(self) -> None:
        """Close the store's connections (when the command is done)."""
        if self._store is not None:
            self._store.dispose()
            self._store = None


def _import_app(spec: str) -> list[Any]:
    """Import ``module:attr`` (or a bare module): the objects it names (or defines)."""
    module_name, _, attr = spec.partition(":")
    sys.path.insert(0, ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise click.UsageError(f"--app {spec}: cannot import {module_name!r}: {e}") from e
    if not attr:
        return [v for v in vars(module).values()
                if (isinstance(v, type) and issubclass(v, Machine) and hasattr(v, "spec")
                    and v.__module__ == module.__name__) or isinstance(v, Schedule)]
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise click.UsageError(f"--app {spec}: {module_name} has no attribute {attr!r}")
        target = getattr(target, part)
    if callable(target) and not isinstance(target, type) and not isinstance(target, Machine):
        target = target()
    items = list(target) if isinstance(target, list | tuple) else [target]
    for item in items:
        is_class = isinstance(item, type) and issubclass(item, Machine)
        if not (isinstance(item, Machine | Schedule) or is_class):
            raise click.UsageError(f"--app {spec}: {item!r} is not a machine or schedule")
    return items


def load_app(spec: str) -> tuple[list[Machine | type[Machine]], list[Schedule]]:
    """The machines and the schedules that ``--app module:attr`` names or defines (a factory
    attr is called once)."""
    items = _import_app(spec)
    machines = [m for m in items if not isinstance(m, Schedule)]
    if not machines:
        raise click.UsageError(f"--app {spec}: names no machine")
    return machines, [s for s in items if isinstance(s, Schedule)]


def load_apps(specs: Sequence[str]) -> tuple[list[Machine | type[Machine]], list[Schedule]]:
    """The machines and schedules of every ``--app`` (repeatable); one machine named twice is
    kept once, two different machines of one name are a usage error naming both."""
    machines: list[Machine | type[Machine]] = []
    schedules: list[Schedule] = []
    seen: dict[str, tuple[str, type]] = {}
    for spec in specs:
        found, sched = load_app(spec)
        for m in found:
            name, cls = m.spec.name, m if isinstance(m, type) else type(m)
            if name in seen:
                if seen[name][1] is not cls:
                    raise click.UsageError(f"--app {spec}: machine {name} is also defined by "
                                           f"--app {seen[name][0]} (a different class)")
                continue  # the same machine named twice: run it once
            seen[name] = (spec, cls)
            machines.append(m)
        schedules += [s for s in sched if s not in schedules]
    return machines, schedules


def load_machines(spec: str) -> list[Machine | type[Machine]]:
    """The machines (classes or instances) that ``--app module:attr`` names or defines."""
    return load_app(spec)[0]


def load_schedules(spec: str) -> list[Schedule]:
    """The schedules that ``--app module:attr`` names or defines."""
    return [s for s in _import_app(spec) if isinstance(s, Schedule)]


def _machine(obj: _Obj, name: str, app: Sequence[str]) -> type[Machine]:
    if app:
        load_apps(app)
    cls = lookup_machine(name)
    if cls is None:
        if app:
            known = ", ".join(sorted(obj.machine_names(app)))
            hint = f" (--app {' '.join(app)} defines {known})"
        else:
            hint = " (pass --app module:attr to import it)"
        raise UnknownMachine(f"unknown machine {name!r}{hint}", machine=name)
    return cls


def _client(obj: _Obj, app: Sequence[str] = ()) -> Client:
    return obj.client(app)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("statemachine")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", prog_name="statemachine",
                      message="%(prog)s %(version)s")
@click.option("--db", envvar="STATEMACHINE_DATABASE_URL", default=None,
              help="Database URL (default: sqlite:///statemachine.db).")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def cli(ctx: click.Context, db: str | None, debug: bool) -> None:
    """Durable workflows as explicit state machines."""
    # The text format prints a record's structured fields (``ctx.log``'s workflow_id, ...).
    configure_logging(level=logging.DEBUG if debug else logging.WARNING)
    ctx.obj = _Obj(db or default_database_url(), debug)
    ctx.call_on_close(ctx.obj.close)


cli.add_command(purge_command)


@cli.command()
@json_option
@click.pass_obj
def migrate(obj: _Obj, as_json: bool) -> None:
    """Create or upgrade the sm_* tables (idempotent). On CockroachDB, also prints the zone
    configuration recommended for the queue table (not applied: it needs an admin)."""
    obj.may_create = True
    applied = obj.store.migrate()
    advice = cockroach_advice() if migration_family(obj.store) == "cockroachdb" else None
    _done(as_json, f"applied {', '.join(applied)}" if applied else "schema is up to date",
          applied=applied, **({} if advice is None else {"advice": advice}))
    if advice is not None and not as_json:
        click.echo(advice)


@cli.command()
@click.option("--app", required=True, multiple=True,
              help="module:attr naming the machines to run (repeatable).")
@click.option("--concurrency", default=4, show_default=True, help="Handlers run at once.")
@click.option("--lease", default=30.0, show_default=True, help="Lease seconds.")
@click.option("--poll", default=1.0, show_default=True, help="Longest idle poll interval (s).")
@click.option("--grace", default=30.0, show_default=True,
              help="Seconds in-flight handlers get to finish on SIGTERM/SIGINT.")
@click.option("--name", default=None, help="Worker name in leases and history.")
@click.option("--exit-if-unreachable", "exit_if_unreachable", type=float, default=None,
              metavar="SECONDS",
              help="Exit 1 once the database has been unreachable for this long (also at "
                   "start). Default: keep waiting for it.")
@click.option("--log-format", "log_format", type=click.Choice(["text", "json"]),
              default="text", show_default=True,
              help="text: one line per record with its fields as key=value; json: one JSON "
                   "object per line.")
@click.option("--metrics-port", "metrics_port", type=click.IntRange(0, 65535), default=None,
              metavar="PORT", help="Serve Prometheus metrics at http://HOST:PORT/metrics (0: "
                                   "any free port, printed). Needs statemachine[metrics].")
@click.option("--metrics-host", "metrics_host", default="0.0.0.0",  # noqa: S104
              show_default=True, help="Address the metrics endpoint listens on.")
@click.option("--otel", is_flag=True,
              help="Record an OpenTelemetry span per transition with the global tracer "
                   "provider (configure it as usual, e.g. opentelemetry-instrument). Needs "
                   "statemachine[otel].")
@age_option("--purge-older-than", "purge_older_than", default=None,
            help="Also purge, continuously, workflows that finished longer ago than this "
                 "(30d, 12h; as `statemachine purge`). Default: never.")
@click.option("--driver", type=click.Choice(["auto", "threads", "async"]), default="auto",
              show_default=True,
              help="threads: the thread Worker (--concurrency threads); async: the AsyncWorker "
                   "(--concurrency tasks on one event loop, sync handlers and database calls "
                   "in --threads threads); auto: async when any handler is `async def`.")
@click.option("--threads", default=8, show_default=True,
              help="With the async driver: the thread pool for sync handlers and the "
                   "database.")
@click.pass_obj
def worker(obj: _Obj, app: tuple[str, ...], concurrency: int, lease: float, poll: float,
           grace: float, name: str | None, exit_if_unreachable: float | None, log_format: str,
           metrics_port: int | None, metrics_host: str, otel: bool,
           purge_older_than: timedelta | None, driver: str, threads: int) -> None:
    """Run workflows until SIGTERM/SIGINT. Rides out database outages (logging when the
    database goes away and comes back); exits 1 only if it cannot go on serving. Logs one
    INFO line per committed transition (logger statemachine.worker.transitions)."""
    obj.serving = True
    configure_logging(level=logging.DEBUG if obj.debug else logging.WARNING,
                      fmt="json" if log_format == "json" else "text")
    if not obj.debug:
        logging.getLogger("statemachine").setLevel(logging.INFO)
    machines, schedules = load_apps(app)
    observers: list[Any] = []
    metrics = None
    if metrics_port is not None:
        from ._metrics import Metrics  # prometheus-client is an optional extra

        metrics = Metrics(obj.store, [m.spec.name for m in machines])
        observers.append(metrics)
    if otel:
        from ._tracing import Tracing  # opentelemetry-api is an optional extra

        observers.append(Tracing())
    options: dict[str, Any] = dict(
        concurrency=concurrency, lease=lease, poll_interval=poll, grace=grace, name=name,
        schedules=schedules, exit_if_unreachable=exit_if_unreachable, observers=observers,
        purge_older_than=purge_older_than)
    w: Worker | AsyncWorker
    if driver == "async" or (driver == "auto" and has_async_handlers(machines)):
        w = AsyncWorker(obj.store, machines, threads=threads, **options)
    else:
        w = Worker(obj.store, machines, **options)
    if metrics is not None:
        assert metrics_port is not None
        port = metrics.serve(metrics_port, metrics_host)
        click.echo(f"metrics at http://{metrics_host}:{port}/metrics", err=True)
    kind = "async " if isinstance(w, AsyncWorker) else ""
    click.echo(f"{kind}worker {w.name} running {', '.join(w.machines)} (Ctrl-C to stop)",
               err=True)
    if isinstance(w, AsyncWorker):
        loop = asyncio.Runner()
        try:
            loop.run(w.run())
        finally:
            if not w.abandoned:  # else the threads of abandoned handlers would be joined
                loop.close()
    else:
        w.run()
    if w.abandoned:
        # Handlers outlived the grace; their workflows were given back. Exit now: a normal exit
        # would join their threads, i.e. wait for them after all (for ever, if one hangs).
        flush_logs()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@cli.command()
@click.argument("machine")
@click.option("--data", default="{}", help="The initial state's fields, as JSON.")
@click.option("--key", default=None, help="Idempotent start key (unique per machine).")
@click.option("--app", multiple=True, help="module:attr to import the machine from.")
@json_option
@click.pass_obj
def start(obj: _Obj, machine: str, data: str, key: str | None, app: tuple[str, ...],
          as_json: bool) -> None:
    """Start a workflow of MACHINE in its initial state; prints its id."""
    cls = _machine(obj, machine, app)
    fields = _json_option(data)
    state = StateCodec(cls.spec).load(state_name(cls.spec.initial), fields)
    wid = Client(obj.store, [cls]).start(cls, state, key=key)
    _done(as_json, str(wid), id=wid, machine=cls.spec.name, key=key)


def _table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> None:
    from ._cli_output import print_table

    print_table(rows, headers)


cli.add_command(list_command)
cli.add_command(show_command)
cli.add_command(history_command)
cli.add_command(events_command)
cli.add_command(stats_command)
cli.add_command(retry)
cli.add_command(resolve)
cli.add_command(cancel)
cli.add_command(force)


@cli.command()
@click.argument("workflow_id")
@click.argument("event_type")
@click.option("--data", default="{}", help="The event's fields, as JSON.")
@click.option("--app", multiple=True, help="module:attr to import the machine from.")
@json_option
@click.pass_obj
def send(obj: _Obj, workflow_id: str, event_type: str, data: str, app: tuple[str, ...],
         as_json: bool) -> None:
    """Send an event of EVENT_TYPE to a workflow."""
    fields = _json_option(data)
    wid = obj.resolve(workflow_id)
    event_id = _client(obj, app).send_data(wid, event_type, fields)
    _done(as_json, f"event {event_id} sent", id=event_id, workflow_id=wid)


@cli.command()
@click.option("--app", required=True, multiple=True,
              help="module:attr naming the schedules (and machines); repeatable.")
@json_option
@click.pass_obj
def schedules(obj: _Obj, app: tuple[str, ...], as_json: bool) -> None:
    """List schedules with their last and next run."""
    found = [s for spec in app for s in load_schedules(spec)]
    if not found:
        raise click.UsageError(f"--app {' '.join(app)}: names no schedule")
    last = obj.store.sql.schedule_ticks()
    now = obj.store.current_time()
    if as_json:
        emit_json({"schedules": [
            {"name": s.name, "cron": s.cron, "timezone": s.timezone,
             "machine": s.machine.spec.name, "missed": s.missed,
             "last_tick": last.get(s.name),
             "next_run": s.next_tick(max(now, last.get(s.name) or now))} for s in found]})
        return
    _table([(s.name, s.cron, s.timezone, s.machine.spec.name, s.missed,
             when(last.get(s.name)), when(s.next_tick(max(now, last.get(s.name) or now))))
            for s in found],
           ["NAME", "CRON", "TIMEZONE", "MACHINE", "MISSED", "LAST TICK", "NEXT RUN (UTC)"])


@cli.command()
@click.option("--app", multiple=True,
              help="module:attr naming the machines (repeatable).")
@click.option("--package", default=None,
              help="Draw every machine a module of this package (and its subpackages) defines "
                   "or exposes, e.g. machines.")
@click.option("--machine", "only", default=None, help="Draw only this machine.")
@click.option("--workflow", "workflow_id", default=None, metavar="ID",
              help="Highlight where this workflow is and the path it took (reads the database).")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Write one DIR/<machine>.md per machine (removing stale generated ones) "
                   "instead of printing.")
@click.option("--check", "check_only", is_flag=True,
              help="With --out: write nothing, exit 1 if a file there is missing or stale.")
@click.pass_obj
def graph(obj: _Obj, app: tuple[str, ...], package: str | None, only: str | None,
          workflow_id: str | None, out_dir: str | None, check_only: bool) -> None:
    """Print a mermaid diagram of each machine (paste into Markdown), or write them (--out)."""
    from ._diagram import discover, mermaid, path_from_history, write_diagrams

    if bool(app) == (package is not None):
        raise click.UsageError("give --app or --package (one of them)")
    found = load_apps(app)[0] if app else list(discover(package or ""))
    machines = {m.spec.name: m for m in found}
    if only is not None and only not in machines:
        raise UnknownMachine(f"--machine {only}: not among {', '.join(sorted(machines))}")
    if out_dir is not None:
        if workflow_id is not None:
            raise click.UsageError("--workflow draws one workflow: it does not go with --out")
        command = f"statemachine graph --package {package} --out {out_dir}" if package \
            else f"statemachine graph --app {' --app '.join(app)} --out {out_dir}"
        chosen = {n: m for n, m in machines.items() if only in (None, n)}
        stale = write_diagrams(chosen, Path(out_dir), command=command, check=check_only)
        if check_only and stale:
            raise InvalidArgument(f"diagrams out of date in {out_dir}: {', '.join(stale)}; "
                                  f"regenerate with `{command}` (make diagrams)")
        click.echo(f"{len(chosen)} diagrams {'checked' if check_only else 'written'} in "
                   f"{out_dir}" + (f" ({len(stale)} changed)" if stale and not check_only
                                   else ""))
        return
    if workflow_id is not None:
        client = Client(obj.store, [m if isinstance(m, type) else type(m) for m in found])
        info = client.get(resolve_id(obj.store, workflow_id))
        if info.machine not in machines:
            raise UnknownMachine(f"workflow {info.id} is a {info.machine} workflow, not one of "
                                 f"{', '.join(sorted(machines))} (check --app)")
        path = path_from_history(info.id, info.state_name, info.status,
                                 client.history(info.id))
        click.echo(f"```mermaid\n{mermaid(machines[info.machine], path=path)}```")
        return
    for name, machine in machines.items():
        if only in (None, name):
            click.echo(f"```mermaid\n{mermaid(machine)}```")


@cli.command()
@click.option("--app", required=True, multiple=True,
              help="module:attr naming the machines (the new code); repeatable.")
@click.option("--all", "include_finished", is_flag=True,
              help="Also check finished workflows (done, failed, cancelled).")
@json_option
@click.pass_obj
def check(obj: _Obj, app: tuple[str, ...], include_finished: bool, as_json: bool) -> None:
    """Before a deploy, or when work seems stuck: scans every unfinished workflow (and pending
    event), known machine or not, for what no worker could run: unknown machines, unknown
    statuses, ready rows without wake_at, data that is not JSON or does not fit its state class.
    Prints each problem with a count and an example id; exits 1 if there is any."""
    machines = {m.spec.name: StateCodec(m.spec) for m in load_apps(app)[0]}
    store = obj.store
    found = problems(store, list(machines))
    # Data that SQL sees is fine must still load into its state class: grouped per state.
    unfit: dict[tuple[str, str], list[tuple[str, str]]] = {}
    checked = 0
    for row in scan_raw(store, list(machines), include_finished=include_finished):
        checked += 1
        if row.problems:
            continue  # reported by `problems` above
        try:
            machines[row.machine].load(row.state, row.data, workflow=row.id)
        except StateMachineError as error:
            unfit.setdefault((row.machine, f"state {row.state}"), []).append(
                (row.id, str(error)))
    for ev in store.sql.pending_events_of(list(machines)):
        checked += 1
        try:
            machines[ev.machine].load_event(ev.type, ev.data, workflow=ev.workflow_id)
        except StateMachineError as error:
            unfit.setdefault((ev.machine, f"event {ev.type}"), []).append(
                (str(ev.workflow_id), str(error)))
    would_not_load = sum(len(b) for b in unfit.values())
    total = sum(p.count for p in found) + would_not_load
    if as_json:
        emit_json({
            "checked": checked, "would_not_load": would_not_load, "problem_rows": total,
            "problems": [{"kind": p.kind, "detail": p.detail, "count": p.count,
                          "example": p.example} for p in found],
            "unfit": [{"machine": machine, "what": what, "count": len(bad),
                       "example": bad[0][0], "message": bad[0][1]}
                      for (machine, what), bad in unfit.items()]})
        if total:
            raise SystemExit(1)
        return
    for problem in found:
        click.echo(problem.describe())
    for (machine, what), bad in unfit.items():
        example, message = bad[0]
        message = message.removeprefix(f"workflow {example}: ")
        rows = "1 workflow" if len(bad) == 1 else f"{len(bad)} workflows"
        click.echo(f"{machine} {what} does not load: {rows} (e.g. {example}: {message})")
    if not total:
        click.echo(f"checked {checked} stored states and events: all load")
        return
    kinds = len(found) + len(unfit)
    click.echo(f"checked {checked} stored states and events: {would_not_load} would not load; "
               f"{kinds} {'kind' if kinds == 1 else 'kinds'} of problem in {total} "
               f"{'row' if total == 1 else 'rows'}")
    raise SystemExit(1)


@cli.command()
@click.option("--orders", default=3, show_default=True, help="How many orders to run.")
@click.pass_obj
def demo(obj: _Obj, orders: int) -> None:
    """Run the order demo (charge, ship, confirm; one declined card) to completion."""
    from ._demo import FakePaymentGateway, Order, OrderPlaced

    obj.may_create = True
    store = obj.store
    store.migrate()
    click.echo(f"database: {obj.db}")
    printer = _TransitionPrinter()
    client = Client(store, [Order])
    with Worker(store, [Order(FakePaymentGateway())], concurrency=2, poll_interval=0.2,
                on_change=printer):
        ids = [client.start(Order, OrderPlaced(order_id=f"A{n + 1:03d}",
                                               amount_cents=1250 * (n + 1),
                                               card="0000" if n == 1 else "4242"))
               for n in range(orders)]
        infos = [client.wait(i, timeout=60) for i in ids]
    click.echo("\nfinal states:")
    for info in infos:
        click.echo(f"  {info.id}  {info.status:6} {info.state!r}")
    click.echo(f"\nhistory of {ids[0]} (sm_history, as any SQL client sees it):")
    ctx = click.get_current_context()
    ctx.invoke(history_command, workflow_id=str(ids[0]), errors=False, as_json=False)


class _TransitionPrinter:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, change: Change, version: int) -> None:
        what = {"failed_attempt": "retry scheduled", "error_route": "error route",
                "parked": "PARKED"}.get(change.kind, "")
        error = f"  ({(change.error or '').splitlines()[0]})" if change.error else ""
        click.echo(f"{time.monotonic() - self.t0:7.3f}s  {str(change.workflow_id)[:8]}  "
                   f"v{version:<3} {change.from_state} -> {change.to_state} [{change.status}]"
                   f" {what}{error}")


def _run(args: Sequence[str] | None) -> int:
    debug = "--debug" in (args if args is not None else sys.argv[1:])
    try:
        cli.main(args=list(args) if args is not None else None, prog_name="statemachine",
                 standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except Exception as e:
        if debug:
            raise
        if interrupt_behind(e) is not None:  # Ctrl-C, whatever its clean-up raised after it
            click.echo("aborted", err=True)
            return 130
        click.echo(f"error: {describe(e, _db_of(args))}", err=True)
        return 1
    return 0


def _db_of(args: Sequence[str] | None) -> str:
    """The database URL the command line (or the environment) names, for error messages."""
    argv = list(args) if args is not None else sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg == "--db" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--db="):
            return arg.removeprefix("--db=")
    return default_database_url()


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the `statemachine` command."""
    sys.exit(_run(args))

