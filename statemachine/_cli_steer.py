"""`retry`, `resolve`, `cancel` and `force`: steer one workflow by id (or a unique prefix), or
every workflow the `list` filters match, with the rails of `_cli_bulk` (preview, confirmation,
``--dry-run``, batches, safe to interrupt). Each records ``--reason`` and ``--actor`` in history.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import attrs
import click

from ._cli_bulk import (
    Outcome,
    bulk_options,
    cancel_each,
    commit_batch,
    confirm_and_run,
    narrow,
)
from ._cli_filters import filter_options, has_filter
from ._cli_output import json_data, print_done
from ._client import Client
from ._operator import default_actor, force_change, retry_change
from ._records import Change
from ._store._decode import StoredRow
from ._store._filters import WorkflowFilter

if TYPE_CHECKING:
    from ._cli import _Obj

__all__ = ["cancel", "force", "resolve", "retry"]


def _one_or_many(obj: _Obj, workflow_id: str | None, filters: dict[str, Any],
                 verb: str) -> uuid.UUID | None:
    """The one workflow a steering command names, or None when filters choose many; a usage
    error for both or neither."""
    if workflow_id is not None and has_filter(filters):
        raise click.UsageError(f"give a workflow id or filters to {verb}, not both")
    if workflow_id is None and not has_filter(filters):
        raise click.UsageError(f"give a workflow id, or filters (e.g. --status failed "
                               f"--machine NAME) to {verb} every workflow they match")
    return None if workflow_id is None else obj.resolve(workflow_id)


@click.command()
@click.argument("workflow_id", required=False)
@filter_options
@click.option("--reason", default=None, help="Why, recorded in history (default: retry "
              "requested).")
@bulk_options
@click.pass_obj
def retry(obj: _Obj, /, workflow_id: str | None, reason: str | None, actor: str | None,
          yes: bool, dry_run: bool, batch: int, as_json: bool, **filters: Any) -> None:
    """Resume parked (failed) workflows from their state, with fresh attempts and the same
    idempotency key: one by WORKFLOW_ID (or a unique prefix), or every one the filters match."""
    actor = actor or default_actor()
    wid = _one_or_many(obj, workflow_id, filters, "retry")
    if wid is not None:
        version = Client(obj.store).retry(wid, reason=reason, actor=actor)
        print_done(as_json, f"workflow {wid} is ready again (version {version})", id=wid,
              version=version)
        return

    def change(row: StoredRow) -> Change:
        return retry_change(workflow_id=row.id, version=row.version, state=row.state,
                            data=row.data, attempt=row.attempt, reason=reason, actor=actor)

    confirm_and_run(obj, verb="retry", flt=narrow(obj.filter(filters), "retry", ("failed",)),
                    yes=yes, dry_run=dry_run, as_json=as_json, batch=batch,
                    act=lambda rows, outcome: commit_batch(obj, rows, outcome, change))


def _forcing(obj: _Obj, client: Client, flt: WorkflowFilter, to_state: str, data: str,
             reason: str, actor: str, *, only_parked: bool) -> tuple[WorkflowFilter, Any]:
    """The filter (minus rows already in `to_state`) and the change for each row, for `force`
    and `resolve --to` with filters: the state is checked once against the one machine."""
    if len(flt.machines) != 1:
        raise click.UsageError(f"with filters, --machine must name the one machine whose state "
                               f"{to_state} is")
    codec = client.codec_for(flt.machines[0])
    name, stored = codec.dump(codec.load(to_state, json_data(data)))
    terminal = codec.spec.is_terminal(type(codec.load(name, stored)))
    expect = ("failed",) if only_parked else ()

    def change(row: StoredRow) -> Change:
        return force_change(workflow_id=row.id, version=row.version, from_state=row.state,
                            to_state=name, data=stored, terminal=terminal,
                            parent_id=row.parent_id, reason=reason, actor=actor,
                            expect_status=expect)

    return attrs.evolve(flt, exclude_states=(name,)), change


@click.command()
@click.argument("workflow_id", required=False)
@filter_options
@click.option("--retry", "rerun", is_flag=True,
              help="The doubtful attempt did not take effect: run the step again.")
@click.option("--to", "to_state", default=None,
              help="It did take effect: move on to this state (with --data).")
@click.option("--data", default="{}", help="The --to state's fields, as JSON.")
@click.option("--app", multiple=True, help="module:attr of the machine (needed with --to).")
@click.option("--reason", default="resolved from the CLI", show_default=True,
              help="Why, recorded in history.")
@bulk_options
@click.pass_obj
def resolve(obj: _Obj, /, workflow_id: str | None, rerun: bool, to_state: str | None, data: str,
            app: tuple[str, ...], reason: str, actor: str | None, yes: bool, dry_run: bool,
            batch: int, as_json: bool, **filters: Any) -> None:
    """Settle parked workflows (in doubt, or any parked one): --retry or --to STATE; one by
    WORKFLOW_ID, or every parked one the filters match."""
    if rerun == (to_state is not None):
        raise click.UsageError("give exactly one of --retry and --to STATE")
    actor = actor or default_actor()
    wid = _one_or_many(obj, workflow_id, filters, "resolve")
    client = obj.client(app)
    if wid is not None:
        target: object | None = None
        if to_state is not None:
            info = client.get(wid)
            codec = client.codec_for(info.machine)
            target = codec.load(to_state, json_data(data))
        version = client.resolve(wid, to=target, reason=reason, actor=actor)
        print_done(as_json, f"workflow {wid} resolved (version {version})", id=wid, version=version)
        return
    flt = narrow(obj.filter(filters, app), "resolve", ("failed",))
    if to_state is None:
        def change(row: StoredRow) -> Any:
            return retry_change(workflow_id=row.id, version=row.version, state=row.state,
                                data=row.data, attempt=row.attempt, reason=reason, actor=actor)
    else:
        flt, change = _forcing(obj, client, flt, to_state, data, reason, actor,
                               only_parked=True)
    confirm_and_run(obj, verb="resolve", flt=flt, yes=yes, dry_run=dry_run, as_json=as_json,
                    batch=batch, act=lambda rows, outcome: commit_batch(obj, rows, outcome,
                                                                        change))


@click.command()
@click.argument("workflow_id", required=False)
@filter_options
@click.option("--reason", default="cancelled from the CLI", show_default=True,
              help="Why, recorded in history.")
@click.option("--app", multiple=True,
              help="module:attr of the machine: without it, a worker carries the cancel out.")
@click.option("--skip-compensation", "skip_compensation", is_flag=True,
              help="End it now without running the machine's cancel route (recorded in "
                   "history).")
@bulk_options
@click.pass_obj
def cancel(obj: _Obj, /, workflow_id: str | None, reason: str, app: tuple[str, ...],
           skip_compensation: bool, actor: str | None, yes: bool, dry_run: bool, batch: int,
           as_json: bool, **filters: Any) -> None:
    """Cancel workflows (a running one after its handler finishes): one by WORKFLOW_ID, or
    every unfinished (or parked) one the filters match."""
    actor = actor or default_actor()
    wid = _one_or_many(obj, workflow_id, filters, "cancel")
    if wid is not None:
        outcome = obj.client(app).cancel(wid, reason=reason, actor=actor,
                                         skip_compensation=skip_compensation)
        print_done(as_json, f"workflow {wid} {outcome}" + (
            "" if outcome == "cancelled" else " (a worker carries it out)"),
            id=wid, outcome=outcome)
        return
    flt = attrs.evolve(narrow(obj.filter(filters, app), "cancel",
                              ("ready", "running", "waiting", "failed")),
                       exclude_cancel_requested=True)

    client = obj.client(app)

    def act(rows: list[StoredRow], outcome: Outcome) -> None:
        cancel_each(client, rows, outcome, reason=reason, actor=actor,
                    skip_compensation=skip_compensation)

    confirm_and_run(obj, verb="cancel", flt=flt, yes=yes, dry_run=dry_run, as_json=as_json,
                    batch=batch, act=act)


@click.command()
@click.argument("target", nargs=-1, required=True, metavar="[WORKFLOW_ID] STATE")
@filter_options
@click.option("--data", default="{}", help="The state's fields, as JSON.")
@click.option("--app", multiple=True, help="module:attr of the machine.")
@click.option("--reason", default="forced from the CLI", show_default=True,
              help="Why, recorded in history.")
@bulk_options
@click.pass_obj
def force(obj: _Obj, /, target: tuple[str, ...], data: str, app: tuple[str, ...], reason: str,
          actor: str | None, yes: bool, dry_run: bool, batch: int, as_json: bool,
          **filters: Any) -> None:
    """Put workflows in STATE (checked against its class) and make them due now: one by
    WORKFLOW_ID, or every one the filters match (with one --machine; rows already in STATE are
    left alone)."""
    if len(target) > 2:
        raise click.UsageError("give WORKFLOW_ID STATE, or STATE with filters")
    actor = actor or default_actor()
    state = target[-1]
    wid = _one_or_many(obj, target[0] if len(target) == 2 else None, filters, "force")
    client = obj.client(app)
    if wid is not None:
        info = client.get(wid)
        fields = json_data(data)
        target_state = client.codec_for(info.machine).load(state, fields)
        version = client.force(wid, target_state, reason=reason, actor=actor)
        print_done(as_json, f"workflow {wid} forced to {state} (version {version})", id=wid,
              version=version)
        return
    flt, change = _forcing(obj, client, obj.filter(filters, app), state, data, reason, actor,
                           only_parked=False)
    confirm_and_run(obj, verb="force", flt=flt, yes=yes, dry_run=dry_run, as_json=as_json,
                    batch=batch, act=lambda rows, outcome: commit_batch(obj, rows, outcome,
                                                                        change))
