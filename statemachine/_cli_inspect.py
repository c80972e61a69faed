"""The commands for looking: `show` (one workflow), `history` (what happened to it, with the
fields each change touched), `events` (its inbox), and `stats` (the whole table: counts, and
what is stuck)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from ._cli_filters import parse_duration
from ._cli_output import console, emit_json, iso, json_option, print_table, short_id, when
from ._definition import lookup_machine
from ._store._audit import raw_rows
from ._store._filters import event_rows
from ._store._stats import stats
from .errors import StateMachineError, WorkflowNotFound

if TYPE_CHECKING:
    from ._cli import _Obj

__all__ = ["events_command", "field_changes", "history_command", "show_command",
           "stats_command"]


def _pretty(data: Any) -> str:
    if isinstance(data, bytes):
        data = data.decode(errors="replace")
    if isinstance(data, dict | list):
        return json.dumps(data, indent=2, sort_keys=True, default=str)
    return repr(data)


@click.command("show")
@click.argument("workflow_id")
@click.option("--app", multiple=True,
              help="module:attr of the machine, to check that the stored data loads.")
@json_option
@click.pass_obj
def show_command(obj: _Obj, workflow_id: str, app: tuple[str, ...], as_json: bool) -> None:
    """Show one workflow: its state's data, status, lease, next wake-up, last error, parent,
    children and pending events (with --app, also whether its data loads into its state class).
    A row that cannot be read or run is shown as stored, with its problems."""
    client = obj.client(app)
    wid = obj.resolve(workflow_id)
    found = raw_rows(obj.store, workflow_id=str(wid), limit=1)
    if not found:
        raise WorkflowNotFound(f"no workflow {wid}")
    row = found[0]
    load_error: str | None = None
    if lookup_machine(row.machine) is not None and not row.problems:
        try:  # the typed read: it decodes the row as the engine does
            load_error = client.get(wid).load_error
        except (StateMachineError, ValueError, TypeError) as e:
            load_error = str(e)
    stored = obj.store.sql.get(wid)
    extra = {n: getattr(stored, n, None) for n in ("cancel_requested", "in_doubt",
                                                   "entered_version")}
    children = obj.store.sql.children_of(wid)
    pending = [e for e in event_rows(obj.store, wid) if e.status == "pending"]
    running = row.status == "running"
    doc = {
        "id": row.id, "machine": row.machine, "state": row.state, "status": row.status,
        "version": row.version, "attempt": row.attempt,
        "idempotency_key": (f"{row.id}:{extra['entered_version']}"
                            if extra["entered_version"] is not None else None),
        "wake_at": iso(row.wake_at), "lease_owner": row.lease_owner,
        "lease_expires_at": iso(row.wake_at) if running else None,
        "next_wake_at": None if running else iso(row.wake_at),
        "key": row.key, "parent_id": row.parent_id,
        "children": [{"id": str(c.id), "machine": c.machine, "state": c.state,
                      "status": c.status} for c in children],
        "pending_events": [{"id": str(e.id), "type": e.type, "created_at": iso(e.created_at)}
                           for e in pending],
        "last_error": row.last_error, "cancel_requested": extra["cancel_requested"],
        "in_doubt": extra["in_doubt"], "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at), "load_error": load_error,
        "problems": list(row.problems), "data": row.data,
    }
    if as_json:
        emit_json(doc)
        return
    out = console()
    lease = (f"held by {row.lease_owner or '?'} until {when(row.wake_at)}" if running else "")
    lines = [("id", row.id), ("machine", row.machine), ("state", row.state),
             ("status", row.status), ("version", row.version), ("attempt", row.attempt),
             ("lease", lease), ("next wake", "" if running else when(row.wake_at)),
             ("idempotency", doc["idempotency_key"]), ("key", row.key),
             ("parent", row.parent_id), ("created", when(row.created_at)),
             ("updated", when(row.updated_at)), ("cancel asked", extra["cancel_requested"]),
             ("in doubt", extra["in_doubt"]), ("last error", row.last_error),
             ("load error", load_error)]
    for name, value in lines:
        if value not in (None, ""):
            out.print(f"[bold]{name:12}[/bold] ", end="")
            out.print(str(value), markup=False)
    for problem in row.problems:
        out.print(f"[bold]{'problem':12}[/bold] ", end="")
        out.print(problem, markup=False)
    out.print("[bold]data[/bold]")
    out.print(_pretty(row.data), markup=False)
    if children:
        print_table([(short_id(c.id), c.machine, c.state, c.status) for c in children],
                    ["ID", "MACHINE", "STATE", "STATUS"], title=f"children ({len(children)})")
    if pending:
        print_table([(short_id(e.id), e.type, when(e.created_at)) for e in pending],
                    ["EVENT", "TYPE", "SENT"], title=f"pending events ({len(pending)})")


def field_changes(before: Any, after: Any) -> list[dict[str, Any]]:
    """What changed from one state's data to the next: ``{"field", "change", "before",
    "after"}`` per top-level field added, removed or changed (the whole data when either side
    is not a JSON object)."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        return [] if before == after else [
            {"field": None, "change": "changed", "before": before, "after": after}]
    found = []
    for name in sorted(set(before) | set(after)):
        if name not in before:
            found.append({"field": name, "change": "added", "before": None,
                          "after": after[name]})
        elif name not in after:
            found.append({"field": name, "change": "removed", "before": before[name],
                          "after": None})
        elif before[name] != after[name]:
            found.append({"field": name, "change": "changed", "before": before[name],
                          "after": after[name]})
    return found


def _short(value: Any, width: int = 30) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[:width - 3] + "..."


def _describe_changes(changes: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for c in changes:
        name = c["field"] or "data"
        if c["change"] == "added":
            lines.append(f"+{name}={_short(c['after'])}")
        elif c["change"] == "removed":
            lines.append(f"-{name} (was {_short(c['before'])})")
        else:
            lines.append(f"~{name}: {_short(c['before'])} -> {_short(c['after'])}")
    return lines


@click.command("history")
@click.argument("workflow_id")
@click.option("--errors", is_flag=True, help="Print each error's full text and traceback.")
@json_option
@click.pass_obj
def history_command(obj: _Obj, workflow_id: str, errors: bool, as_json: bool) -> None:
    """Show a workflow's history, oldest first: time, kind, states, who (the worker, or the
    operator of a retry/force/cancel/resolve), cause, attempt, error, and the fields each
    change touched (+added, -removed, ~changed)."""
    from ._client import Client

    wid = obj.resolve(workflow_id)
    entries = Client(obj.store).history(wid)
    docs = []
    previous: Any = None
    for n, e in enumerate(entries):
        changes = field_changes(previous, e.data) if n else []
        previous = e.data
        docs.append({"version": e.version, "kind": e.kind, "from_state": e.from_state,
                     "to_state": e.to_state, "status": e.status, "cause": e.cause,
                     "attempt": e.attempt, "error": e.error, "by": e.worker,
                     "started_at": iso(e.started_at), "finished_at": iso(e.finished_at),
                     "data": e.data, "changes": changes})
    if as_json:
        emit_json({"workflow_id": str(wid), "history": docs})
        return
    rows = []
    for d in docs:
        moved = d["to_state"] if d["from_state"] in (None, d["to_state"]) \
            else f"{d['from_state']}\n-> {d['to_state']}"
        details = [f"{d['status']}, attempt {d['attempt']}"
                   + (f", by {d['by']}" if d["by"] else "")]
        if d["cause"]:
            details.append(f"cause: {d['cause']}")
        if d["error"]:
            details.append(f"error: {d['error'].splitlines()[0]}")
        details += _describe_changes(d["changes"])
        rows.append((d["version"], when(d["finished_at"])[11:], d["kind"], moved,
                     "\n".join(details)))
    day = when(docs[0]["finished_at"])[:10] if docs else ""
    click.echo(f"history of {wid} (from {day}; --json for full times)")
    print_table(rows, ["V", "AT (UTC)", "KIND", "STATE", "DETAILS"])
    if errors:
        for e in entries:
            if e.error:
                click.echo(f"\n--- version {e.version} ---\n{e.error}")


@click.command("events")
@click.argument("workflow_id")
@json_option
@click.pass_obj
def events_command(obj: _Obj, workflow_id: str, as_json: bool) -> None:
    """A workflow's events, oldest first: pending ones (waiting for a state that accepts them),
    consumed ones (with the version whose transition consumed them), rejected ones (with the
    reason)."""
    wid = obj.resolve(workflow_id)
    if obj.store.sql.get(wid) is None:
        raise WorkflowNotFound(f"no workflow {wid}")
    found = event_rows(obj.store, wid)
    docs = [{"id": str(e.id), "type": e.type, "status": e.status, "data": e.data,
             "error": e.error, "created_at": iso(e.created_at),
             "consumed_at": iso(e.consumed_at), "consumed_version": e.consumed_version}
            for e in found]
    if as_json:
        emit_json({"workflow_id": str(wid), "events": docs})
        return
    if not docs:
        click.echo(f"no events were sent to workflow {wid}")
        return
    print_table([(short_id(d["id"]), d["type"], d["status"], when(d["created_at"]),
                  "" if d["consumed_version"] is None
                  else f"v{d['consumed_version']} {when(d['consumed_at'])}",
                  d["error"] or "") for d in docs],
                ["EVENT", "TYPE", "STATUS", "SENT", "CONSUMED", "REASON"], wrap=("REASON",))
    counts = {s: sum(1 for d in docs if d["status"] == s) for s in
              sorted({str(d["status"]) for d in docs})}
    click.echo(f"{len(docs)} events" + (": " + ", ".join(f"{n} {s}" for s, n in counts.items())
                                        if counts else ""))


@click.command("stats")
@click.option("--machine", multiple=True, metavar="NAME", help="Only this machine (repeatable).")
@click.option("--overdue", default="1m", show_default=True, metavar="AGE",
              help="How late a row must be to count as stuck.")
@json_option
@click.pass_obj
def stats_command(obj: _Obj, machine: tuple[str, ...], overdue: str, as_json: bool) -> None:
    """Counts by machine, state and status; the oldest due row; what looks stuck (running with
    an expired lease, ready and overdue, waiting past its deadline); pending events of finished
    workflows."""
    from ._cli_filters import build_filter

    build_filter(obj.store, {"machine": machine})  # checks the names
    found = stats(obj.store, overdue=parse_duration(overdue, "--overdue"), machines=machine)
    by_status: dict[str, int] = {}
    for _, _, status, n in found.counts:
        by_status[status] = by_status.get(status, 0) + n
    late = (found.now - found.oldest_due).total_seconds() if found.oldest_due else None
    doc = {
        "now": iso(found.now), "total": sum(by_status.values()), "by_status": by_status,
        "counts": [{"machine": m, "state": s, "status": st, "count": n}
                   for m, s, st, n in found.counts],
        "oldest_due": None if found.oldest_due is None else {
            "id": found.oldest_due_id, "wake_at": iso(found.oldest_due),
            "late_seconds": late},
        "stuck": [{"kind": s.kind, "machine": s.machine, "count": s.count,
                   "oldest_wake_at": iso(s.oldest), "example": s.example}
                  for s in found.stuck],
        "orphaned_events": {"count": found.orphaned_events,
                            "example_workflow": found.orphaned_example},
    }
    if as_json:
        emit_json(doc)
        return
    print_table([(m, s, st, n) for m, s, st, n in found.counts],
                ["MACHINE", "STATE", "STATUS", "COUNT"], title="workflows")
    click.echo(f"total {doc['total']}: " + ", ".join(f"{n} {s}" for s, n in
                                                     sorted(by_status.items())))
    if found.oldest_due is not None:
        click.echo(f"oldest due: {found.oldest_due_id} since {when(found.oldest_due)} "
                   f"({late:.0f} s ago)")
    else:
        click.echo("oldest due: nothing is due")
    if found.stuck:
        print_table([(s.kind, s.machine, s.count, when(s.oldest), short_id(s.example))
                     for s in found.stuck],
                    ["STUCK", "MACHINE", "COUNT", "SINCE", "E.G."], title="stuck")
    else:
        click.echo(f"stuck: none (nothing more than {overdue} late)")
    if found.orphaned_events:
        click.echo(f"orphaned events: {found.orphaned_events} pending events of finished "
                   f"workflows (e.g. of {found.orphaned_example}; see `statemachine events`)")
    else:
        click.echo("orphaned events: none")
