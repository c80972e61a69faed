"""The `statemachine` command: migrate, run workers, start and steer workflows, run the demo.

The database comes from ``--db`` or ``STATEMACHINE_DATABASE_URL`` (default: ``statemachine.db`` in
the current directory). Machines come from ``--app module:attr`` (a machine class or instance, a
list of them, or a module: every machine defined in it). Errors print one line; ``--debug`` shows
the traceback.
"""

from __future__ import annotations

import importlib
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import attrs
import click

from ._client import Client, WorkflowInfo
from ._definition import Machine, lookup_machine
from ._runtime import Worker
from ._schedules import Schedule
from ._serde import StateCodec
from ._store import Change, Store, default_database_url
from .errors import StateMachineError, UnknownMachine

__all__ = ["load_machines", "main"]


class _Obj:
    def __init__(self, db: str, debug: bool) -> None:
        self.db = db
        self.debug = debug
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.db)
        return self._store


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


@cli.command()
@click.pass_obj
def migrate(obj: _Obj) -> None:
    """Create or upgrade the sm_* tables (idempotent)."""
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
@click.pass_obj
def worker(obj: _Obj, app: str, concurrency: int, lease: float, poll: float, grace: float,
           name: str | None) -> None:
    """Run workflows until SIGTERM/SIGINT."""
    if not obj.debug:
        logging.getLogger("statemachine").setLevel(logging.INFO)
    machines, schedules = load_app(app)
    w = Worker(obj.store, machines, concurrency=concurrency, lease=lease,
               poll_interval=poll, grace=grace, name=name, schedules=schedules)
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
    state = StateCodec(cls.spec).load(cls.spec.initial.__name__, fields)
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
@click.option("--status", default=None, type=click.Choice(
    ["ready", "running", "waiting", "done", "failed", "cancelled"]))
@click.option("--state", default=None)
@click.option("--limit", default=50, show_default=True)
@click.pass_obj
def list_(obj: _Obj, machine: str | None, status: str | None, state: str | None,
          limit: int) -> None:
    """List workflows, newest first."""
    infos = Client(obj.store).list(machine=machine, status=status, state=state, limit=limit)
    _table([(i.id, i.machine, i.state_name, i.status, i.version, _when(i.updated_at),
             (i.last_error or "")[:60]) for i in infos],
           ["ID", "MACHINE", "STATE", "STATUS", "VERSION", "UPDATED", "LAST ERROR"])


def _show(info: WorkflowInfo) -> None:
    fields = [("id", info.id), ("machine", info.machine), ("state", info.state_name),
              ("status", info.status), ("version", info.version), ("attempt", info.attempt),
              ("wake_at", _when(info.wake_at)), ("key", info.key), ("parent", info.parent_id),
              ("lease_owner", info.lease_owner), ("created", _when(info.created_at)),
              ("updated", _when(info.updated_at)), ("last_error", info.last_error),
              ("load_error", info.load_error)]
    for k, v in fields:
        if v not in (None, ""):
            click.echo(f"{k:12} {v}")
    click.echo(f"{'data':12} {json.dumps(info.data, sort_keys=True)}")


@cli.command()
@click.argument("workflow_id")
@click.option("--app", default=None,
              help="module:attr of the machine, to check that the stored data loads.")
@click.pass_obj
def show(obj: _Obj, workflow_id: str, app: str | None) -> None:
    """Show one workflow (with --app, also whether its data loads into its state class)."""
    info = _client(obj, app).get(workflow_id)
    if lookup_machine(info.machine) is None:  # not imported: nothing was checked, say nothing
        info = attrs.evolve(info, load_error=None)
    _show(info)


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
    """Before a deploy: does every stored workflow (and pending event) still load with this
    code? Lists each one that would not; exits 1 if any."""
    machines = {m.spec.name: StateCodec(m.spec) for m in load_machines(app)}
    statuses = ["ready", "running", "waiting"]
    if include_finished:
        statuses += ["done", "failed", "cancelled"]
    # Lazily: `scan` reads the table in batches, however large it is.
    stored = itertools.chain(
        ((r.id, r.machine, r.status, partial(machines[r.machine].load, r.state, r.data,
                                             workflow=r.id))
         for r in obj.store.sql.scan(list(machines), statuses)),
        ((e.workflow_id, e.machine, "event", partial(machines[e.machine].load_event, e.type,
                                                     e.data, workflow=e.workflow_id))
         for e in obj.store.sql.pending_events_of(list(machines))))
    checked = bad = 0
    for workflow_id, machine, what, load in stored:
        checked += 1
        try:
            load()
        except StateMachineError as e:
            bad += 1
            click.echo(f"{workflow_id}  {machine}  {what:8} {e}")
    click.echo(f"checked {checked} stored states and events: "
               + ("all load" if not bad else f"{bad} would not load"))
    if bad:
        raise SystemExit(1)


@cli.command()
@click.option("--orders", default=3, show_default=True, help="How many orders to run.")
@click.pass_obj
def demo(obj: _Obj, orders: int) -> None:
    """Run the order demo (charge, ship, confirm; one declined card) to completion."""
    from machines.order import FakePaymentGateway, Order, OrderPlaced

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
    except (StateMachineError, ValueError, OSError) as e:
        if debug:
            raise
        hint = ""
        if any(s in str(e) for s in ("no such table", "no such column", "does not exist")):
            hint = " (is the schema up to date? run `statemachine migrate`)"
        click.echo(f"error: {e}{hint}", err=True)
        return 1
    return 0


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the `statemachine` command."""
    sys.exit(_run(args))

