"""The `statemachine` command: migrate, run workers, start and steer workflows, run the demo.

The database comes from ``--db`` or ``STATEMACHINE_DATABASE_URL`` (default: ``statemachine.db`` in
the current directory). Machines come from ``--app module:attr`` (a machine class or instance, a
list of them, or a module: every machine defined in it). Errors print one line; ``--debug`` shows
the traceback.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import click

from ._cli_errors import check_url, describe, sqlite_file
from ._client import Client
from ._definition import Machine, lookup_machine, state_name
from ._runtime import Worker
from ._schedules import Schedule
from ._serde import StateCodec
from ._store import Change, Store, default_database_url
from ._store._audit import RawRow, problems, raw_rows, scan_raw, when
from .errors import InvalidArgument, StateMachineError, UnknownMachine, WorkflowNotFound

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
                raise InvalidArgument(
                    f"no SQLite database at {path} (from --db {self.db}): the file does not "
                    f"exist; create it with `statemachine --db {self.db} migrate`, or check "
                    "--db / STATEMACHINE_DATABASE_URL")
            self._store = Store(self.db, max_retries=10 if self.serving else _ONE_SHOT_RETRIES)
        return self._store

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


def load_machines(spec: str) -> list[Machine | type[Machine]]:
    """The machines (classes or instances) that ``--app module:attr`` names or defines."""
    return load_app(spec)[0]


def load_schedules(spec: str) -> list[Schedule]:
    """The schedules that ``--app module:attr`` names or defines."""
    return [s for s in _import_app(spec) if isinstance(s, Schedule)]


def _json_option(data: str) -> Any:
    """The value of a ``--data`` option, or a usage error saying why it is not JSON."""
    try:
        return json.loads(data)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not JSON: {e}", param_hint="--data") from e


def _machine(obj: _Obj, name: str, app: str | None) -> type[Machine]:
    if app:
        load_machines(app)
    cls = lookup_machine(name)
    if cls is None:
        hint = "" if app else " (pass --app module:attr to import it)"
        raise UnknownMachine(f"unknown machine {name!r}{hint}")
    return cls


def _workflow_uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise WorkflowNotFound(f"{value!r} is not a workflow id (a UUID)") from None


def _client(obj: _Obj, app: str | None = None) -> Client:
    machines = [m if isinstance(m, type) else type(m) for m in load_machines(app)] if app else []
    return Client(obj.store, machines)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", envvar="STATEMACHINE_DATABASE_URL", default=None,
              help="Database URL (default: sqlite:///statemachine.db).")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def cli(ctx: click.Context, db: str | None, debug: bool) -> None:
    """Durable workflows as explicit state machines."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = _Obj(db or default_database_url(), debug)
    ctx.call_on_close(ctx.obj.close)


@cli.command()
@click.pass_obj
def migrate(obj: _Obj) -> None:
    """Create or upgrade the sm_* tables (idempotent)."""
    obj.may_create = True
    applied = obj.store.migrate()
    click.echo(f"applied {', '.join(applied)}" if applied else "schema is up to date")


@cli.command()
@click.option("--app", required=True, help="module:attr naming the machines to run.")
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
@click.pass_obj
def worker(obj: _Obj, app: str, concurrency: int, lease: float, poll: float, grace: float,
           name: str | None, exit_if_unreachable: float | None) -> None:
    """Run workflows until SIGTERM/SIGINT. Rides out database outages (logging when the
    database goes away and comes back); exits 1 only if it cannot go on serving."""
    obj.serving = True
    if not obj.debug:
        logging.getLogger("statemachine").setLevel(logging.INFO)
    machines, schedules = load_app(app)
    w = Worker(obj.store, machines, concurrency=concurrency, lease=lease,
               poll_interval=poll, grace=grace, name=name, schedules=schedules,
               exit_if_unreachable=exit_if_unreachable)
    click.echo(f"worker {w.name} running {', '.join(w.machines)} (Ctrl-C to stop)", err=True)
    w.run()
    if w.abandoned:
        # Handlers outlived the grace; their workflows were given back. Exit now: a normal exit
        # would join their threads, i.e. wait for them after all (for ever, if one hangs).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@cli.command()
@click.argument("machine")
@click.option("--data", default="{}", help="The initial state's fields, as JSON.")
@click.option("--key", default=None, help="Idempotent start key (unique per machine).")
@click.option("--app", default=None, help="module:attr to import the machine from.")
@click.pass_obj
def start(obj: _Obj, machine: str, data: str, key: str | None, app: str | None) -> None:
    """Start a workflow of MACHINE in its initial state; prints its id."""
    cls = _machine(obj, machine, app)
    fields = _json_option(data)
    state = StateCodec(cls.spec).load(state_name(cls.spec.initial), fields)
    click.echo(Client(obj.store, [cls]).start(cls, state, key=key))


def _table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> None:
    cells = [[str(c) for c in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        click.echo("  ".join(c.ljust(wd) for c, wd in zip(r, widths, strict=True)).rstrip())


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


@cli.command("list")
@click.option("--machine", default=None)
@click.option("--status", default=None, help="ready, running, waiting, done, failed, cancelled "
              "(or any value a row holds).")
@click.option("--state", default=None)
@click.option("--limit", default=50, show_default=True)
@click.pass_obj
def list_(obj: _Obj, machine: str | None, status: str | None, state: str | None,
          limit: int) -> None:
    """List workflows, newest first. A row that no worker could run or read (unknown status,
    ready without wake_at, data that is not a JSON object) is listed with its PROBLEM."""
    rows = raw_rows(obj.store, machine=machine, status=status, state=state, limit=limit)
    _table([(r.id, r.machine, r.state, r.status, r.version, when(r.updated_at),
             (r.last_error or "").split("\n")[0][:60], "; ".join(r.problems)[:80])
            for r in rows],
           ["ID", "MACHINE", "STATE", "STATUS", "VERSION", "UPDATED", "LAST ERROR", "PROBLEM"])


def _show_raw(row: RawRow, load_error: str | None) -> None:
    fields = [("id", row.id), ("machine", row.machine), ("state", row.state),
              ("status", row.status), ("version", row.version), ("attempt", row.attempt),
              ("wake_at", when(row.wake_at)), ("key", row.key), ("parent", row.parent_id),
              ("lease_owner", row.lease_owner), ("created", when(row.created_at)),
              ("updated", when(row.updated_at)), ("last_error", row.last_error),
              ("load_error", load_error)]
    for k, v in fields:
        if v not in (None, ""):
            click.echo(f"{k:12} {v}")
    for problem in row.problems:
        click.echo(f"{'problem':12} {problem}")
    data = row.data if not isinstance(row.data, bytes) else row.data.decode(errors="replace")
    text = json.dumps(data, sort_keys=True) if not row.problems or isinstance(data, dict) \
        else repr(data)
    click.echo(f"{'data':12} {text}")


@cli.command()
@click.argument("workflow_id")
@click.option("--app", default=None,
              help="module:attr of the machine, to check that the stored data loads.")
@click.pass_obj
def show(obj: _Obj, workflow_id: str, app: str | None) -> None:
    """Show one workflow (with --app, also whether its data loads into its state class).
    A row that cannot be read or run is shown as stored, with its problems."""
    client = _client(obj, app)
    wid = str(_workflow_uuid(workflow_id))
    found = raw_rows(obj.store, workflow_id=wid, limit=1)
    if not found:
        raise WorkflowNotFound(f"no workflow {wid}")
    row = found[0]
    load_error: str | None = None
    if lookup_machine(row.machine) is not None and not row.problems:
        try:  # the typed read: it decodes the row as the engine does
            load_error = client.get(wid).load_error
        except (StateMachineError, ValueError, TypeError) as e:
            load_error = str(e)
    _show_raw(row, load_error)


@cli.command()
@click.argument("workflow_id")
@click.option("--errors", is_flag=True, help="Print each error's full text and traceback.")
@click.pass_obj
def history(obj: _Obj, workflow_id: str, errors: bool) -> None:
    """Show a workflow's history, oldest first."""
    entries = Client(obj.store).history(workflow_id)
    _table([(e.version, e.kind, e.from_state or "", e.to_state, e.status, e.attempt,
             _when(e.finished_at), (e.error or "").split("\n")[0][:70]) for e in entries],
           ["VERSION", "KIND", "FROM", "TO", "STATUS", "ATTEMPT", "AT", "ERROR"])
    if errors:
        for e in entries:
            if e.error:
                click.echo(f"\n--- version {e.version} ---\n{e.error}")


@cli.command()
@click.argument("workflow_id")
@click.pass_obj
def retry(obj: _Obj, workflow_id: str) -> None:
    """Resume a parked (failed) workflow from its state."""
    version = Client(obj.store).retry(workflow_id)
    click.echo(f"workflow {workflow_id} is ready again (version {version})")


@cli.command()
@click.argument("workflow_id")
@click.option("--retry", "rerun", is_flag=True,
              help="The doubtful attempt did not take effect: run the step again.")
@click.option("--to", "to_state", default=None,
              help="It did take effect: move on to this state (with --data).")
@click.option("--data", default="{}", help="The --to state's fields, as JSON.")
@click.option("--app", default=None, help="module:attr of the machine (needed with --to).")
@click.pass_obj
def resolve(obj: _Obj, workflow_id: str, rerun: bool, to_state: str | None, data: str,
            app: str | None) -> None:
    """Settle a workflow parked in doubt (or any parked one): --retry or --to STATE."""
    if rerun == (to_state is not None):
        raise click.UsageError("give exactly one of --retry and --to STATE")
    client = _client(obj, app)
    target: object | None = None
    if to_state is not None:
        info = client.get(workflow_id)
        codec = client.codec_for(info.machine)
        fields = _json_option(data)
        target = codec.load(to_state, fields)
    version = client.resolve(workflow_id, to=target, reason="resolved from the CLI")
    click.echo(f"workflow {workflow_id} resolved (version {version})")


@cli.command()
@click.argument("workflow_id")
@click.option("--reason", default="cancelled from the CLI")
@click.option("--app", default=None,
              help="module:attr of the machine: without it, a worker carries the cancel out.")
@click.pass_obj
def cancel(obj: _Obj, workflow_id: str, reason: str, app: str | None) -> None:
    """Cancel a workflow (a running one after its handler finishes)."""
    outcome = _client(obj, app).cancel(workflow_id, reason=reason)
    click.echo(f"workflow {workflow_id} {outcome}" + (
        "" if outcome == "cancelled" else " (a worker carries it out)"))


@cli.command()
@click.argument("workflow_id")
@click.argument("event_type")
@click.option("--data", default="{}", help="The event's fields, as JSON.")
@click.option("--app", default=None, help="module:attr to import the machine from.")
@click.pass_obj
def send(obj: _Obj, workflow_id: str, event_type: str, data: str, app: str | None) -> None:
    """Send an event of EVENT_TYPE to a workflow."""
    fields = _json_option(data)
    event_id = _client(obj, app).send_data(workflow_id, event_type, fields)
    click.echo(f"event {event_id} sent")


@cli.command()
@click.option("--app", required=True, help="module:attr naming the schedules (and machines).")
@click.pass_obj
def schedules(obj: _Obj, app: str) -> None:
    """List schedules with their last and next run."""
    found = load_schedules(app)
    if not found:
        raise click.UsageError(f"--app {app}: names no schedule")
    last = obj.store.sql.schedule_ticks()
    now = obj.store.current_time()
    _table([(s.name, s.cron, s.timezone, s.machine.spec.name, s.missed,
             _when(last.get(s.name)), _when(s.next_tick(max(now, last.get(s.name) or now))))
            for s in found],
           ["NAME", "CRON", "TIMEZONE", "MACHINE", "MISSED", "LAST TICK", "NEXT RUN (UTC)"])


@cli.command()
@click.argument("workflow_id")
@click.argument("state")
@click.option("--data", default="{}", help="The state's fields, as JSON.")
@click.option("--app", default=None, help="module:attr of the machine.")
@click.option("--reason", default="forced from the CLI")
@click.pass_obj
def force(obj: _Obj, workflow_id: str, state: str, data: str, app: str | None,
          reason: str) -> None:
    """Put a workflow in STATE (checked against its class) and make it due now."""
    client = _client(obj, app)
    info = client.get(workflow_id)
    fields = _json_option(data)
    target = client.codec_for(info.machine).load(state, fields)
    version = client.force(workflow_id, target, reason=reason)
    click.echo(f"workflow {workflow_id} forced to {state} (version {version})")


@cli.command()
@click.option("--app", required=True, help="module:attr naming the machines.")
@click.option("--machine", "only", default=None, help="Draw only this machine.")
def graph(app: str, only: str | None) -> None:
    """Print a mermaid diagram of each machine (paste into Markdown)."""
    from ._diagram import mermaid

    machines = {m.spec.name: m for m in load_machines(app)}
    if only is not None and only not in machines:
        raise UnknownMachine(f"--machine {only}: not among {', '.join(sorted(machines))}")
    for name, machine in machines.items():
        if only in (None, name):
            click.echo(f"```mermaid\n{mermaid(machine)}```")


@cli.command()
@click.option("--app", required=True, help="module:attr naming the machines (the new code).")
@click.option("--all", "include_finished", is_flag=True,
              help="Also check finished workflows (done, failed, cancelled).")
@click.pass_obj
def check(obj: _Obj, app: str, include_finished: bool) -> None:
    """Before a deploy, or when work seems stuck: scans every unfinished workflow (and pending
    event), known machine or not, for what no worker could run: unknown machines, unknown
    statuses, ready rows without wake_at, data that is not JSON or does not fit its state class.
    Prints each problem with a count and an example id; exits 1 if there is any."""
    machines = {m.spec.name: StateCodec(m.spec) for m in load_machines(app)}
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
    for problem in found:
        click.echo(problem.describe())
    for (machine, what), bad in unfit.items():
        example, message = bad[0]
        message = message.removeprefix(f"workflow {example}: ")
        rows = "1 workflow" if len(bad) == 1 else f"{len(bad)} workflows"
        click.echo(f"{machine} {what} does not load: {rows} (e.g. {example}: {message})")
    would_not_load = sum(len(b) for b in unfit.values())
    total = sum(p.count for p in found) + would_not_load
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
    ctx.invoke(history, workflow_id=str(ids[0]), errors=False)


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

