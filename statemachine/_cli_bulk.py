"""`retry`, `cancel`, `force` and `resolve` over many workflows at once, chosen by the `list`
filters, with rails: what would be touched is printed first, a person confirms (``--yes`` for
scripts; without a terminal, ``--yes`` is required), ``--dry-run`` stops there.

The work goes in batches (a rich progress bar on a terminal). Each batch is re-selected from the
database by the filter, so a row that changed meanwhile (a worker took it on, someone else fixed
it) simply no longer matches; each change is a compare-and-set on the version (and status) the
batch read, so it applies once or not at all. Interrupting is safe: the batch in flight rolls
back or commits whole, and running the same command again finishes the rest, touching nothing
twice (what was done no longer matches the filter).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ._cli_output import console, emit_json, print_table, short_id, when
from ._store._decode import StoredRow
from ._store._filters import WorkflowFilter, count_matching, page, selected_rows
from .errors import InvalidArgument, InvalidOperation, StoreError

if TYPE_CHECKING:
    from ._cli import _Obj
    from ._client import Client

__all__ = ["Outcome", "confirm_and_run", "narrow"]


@attrs.define
class Outcome:
    """What a bulk command did: `done` rows changed, `skipped` ones (id, why) left alone."""

    done: int = 0
    skipped: list[tuple[str, str]] = attrs.Factory(list)


def narrow(flt: WorkflowFilter, verb: str, allowed: tuple[str, ...]) -> WorkflowFilter:
    """`flt` limited to the statuses `verb` applies to (all of them, when it names none);
    `InvalidArgument` when it names another."""
    if not flt.statuses:
        return attrs.evolve(flt, statuses=allowed)
    other = [s for s in flt.statuses if s not in allowed]
    if other:
        raise InvalidArgument(f"--status {other[0]}: {verb} applies only to "
                              f"{', '.join(allowed)} workflows")
    return flt


def confirm_and_run(obj: _Obj, *, verb: str, flt: WorkflowFilter, yes: bool, dry_run: bool,
                    as_json: bool, batch: int,
                    act: Callable[[list[StoredRow], Outcome], None]) -> None:
    """Show what `flt` matches, ask, then `act` on it batch by batch (see the module)."""
    store = obj.store
    total = count_matching(store, flt)
    sample, _ = page(store, flt, limit=10)
    if as_json and dry_run:
        emit_json({"action": verb, "dry_run": True, "matched": total,
                   "sample": [{"id": r.id, "machine": r.machine, "state": r.state,
                               "status": r.status} for r in sample]})
        return
    out = click.echo if not as_json else (lambda text: click.echo(text, err=True))
    if total == 0:
        if as_json:
            emit_json({"action": verb, "dry_run": False, "matched": 0, "done": 0,
                       "skipped": []})
        else:
            out(f"no workflow matches: nothing to {verb}")
        return
    if not as_json:
        print_table([(short_id(r.id), r.machine, r.state, r.status, when(r.updated_at),
                      (r.last_error or "").split("\n")[0]) for r in sample],
                    ["ID", "MACHINE", "STATE", "STATUS", "UPDATED", "LAST ERROR"],
                    fold_last=False)
    more = f" (the first {len(sample)} above)" if total > len(sample) and not as_json else ""
    out(f"{total} workflow{'s' if total != 1 else ''} would be {_past(verb)}{more}")
    if dry_run:
        out("dry run: nothing changed")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise InvalidArgument(
                f"refusing to {verb} {total} workflows without confirmation: there is no "
                "terminal to ask on (pass --yes, or --dry-run to only list them)")
        click.confirm(f"{verb} these {total} workflows?", abort=True, err=True)
    outcome = Outcome()
    after: uuid.UUID | None = None
    progress = Progress(TextColumn(f"{verb}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console(err=True),
                        disable=not console(err=True).is_terminal)
    try:
        with progress:
            task = progress.add_task(verb, total=total)
            while True:
                rows = selected_rows(store, flt, batch=batch, after=after)
                if not rows:
                    break
                before = outcome.done + len(outcome.skipped)
                act(rows, outcome)
                progress.advance(task, outcome.done + len(outcome.skipped) - before)
                after = rows[-1].id
    except KeyboardInterrupt:
        click.echo(f"interrupted: {outcome.done} {_past(verb)} so far; run the same command "
                   "again to do the rest (nothing is done twice)", err=True)
        raise SystemExit(130) from None
    if as_json:
        emit_json({"action": verb, "dry_run": False, "matched": total, "done": outcome.done,
                   "skipped": [{"id": i, "reason": why} for i, why in outcome.skipped]})
        return
    line = f"{_past(verb)} {outcome.done} workflow{'s' if outcome.done != 1 else ''}"
    if outcome.skipped:
        line += f"; {len(outcome.skipped)} skipped (e.g. {outcome.skipped[0][0]}: " \
                f"{outcome.skipped[0][1]})"
    click.echo(line)


def _past(verb: str) -> str:
    return {"retry": "retried", "cancel": "cancelled", "force": "forced",
            "resolve": "resolved"}.get(verb, verb + "ed")


def commit_batch(obj: _Obj, rows: list[StoredRow], outcome: Outcome,
                 change_of: Callable[[StoredRow], Any]) -> None:
    """Commit one change per row (`change_of` gives it, or a reason to skip as text) in one
    transaction; a row whose compare-and-set fails changed meanwhile and is skipped."""
    store = obj.store
    changes = []
    for row in rows:
        if row.data_error:
            outcome.skipped.append((str(row.id), f"its stored data does not decode "
                                                 f"({row.data_error})"))
            continue
        change = change_of(row)
        if isinstance(change, str):
            outcome.skipped.append((str(row.id), change))
        else:
            changes.append(change)

    def run(conn: Any) -> list[bool]:
        return [store.sql.commit_in(conn, c) is not None for c in changes]

    try:
        applied = store.transaction(run) if changes else []
    except StoreError as e:
        if not ((e.sqlstate or "").startswith("40") or "locked" in str(e)):
            raise
        # Under heavy contention (a serializable database, busy workers) the batch kept
        # conflicting: row by row, each commit retried for longer, is slower but goes through.
        applied = [store.sql.commit(c, retry_for=30.0) is not None for c in changes]
    for change, ok in zip(changes, applied, strict=True):
        if ok:
            outcome.done += 1
        else:
            outcome.skipped.append((str(change.workflow_id), "it changed meanwhile"))
    if outcome.done:
        store.sql.notify()


def cancel_each(client: Client, rows: list[StoredRow], outcome: Outcome, *, reason: str,
                actor: str, skip_compensation: bool = False) -> None:
    """Cancel each row as `cancel ID` does (its machine's cancel route, if it has one)."""
    for row in rows:
        try:
            client.cancel(row.id, reason=reason, actor=actor,
                          skip_compensation=skip_compensation)
        except InvalidOperation as e:
            outcome.skipped.append((str(row.id), str(e)))
        else:
            outcome.done += 1


F = Any


def bulk_options(fn: F) -> F:
    """``--actor``, ``--yes``, ``--dry-run``, ``--batch`` and ``--json`` of the steering
    commands."""
    from ._cli_output import json_option

    options = [
        click.option("--actor", default=None, metavar="NAME",
                     help="Who is doing this, recorded in history (default: the OS user)."),
        click.option("--yes", "-y", is_flag=True,
                     help="With filters: do it without asking (needed without a terminal)."),
        click.option("--dry-run", is_flag=True,
                     help="With filters: only print what would be touched."),
        click.option("--batch", default=200, show_default=True, type=click.IntRange(1, 5000),
                     help="With filters: rows per transaction."),
        json_option,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn
