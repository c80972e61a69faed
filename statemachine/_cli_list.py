"""`statemachine list`: find workflows by status, machine, state, key, parent, time and error,
newest first, one page at a time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ._cli_filters import build_filter, filter_options
from ._cli_output import emit_json, iso, json_option, print_table, short_id, when
from ._store._audit import RawRow
from ._store._filters import Cursor, count_matching, page

if TYPE_CHECKING:
    from ._cli import _Obj

__all__ = ["list_command", "row_json"]


def row_json(r: RawRow) -> dict[str, Any]:
    """A listed workflow as JSON (the fields of `list --json`)."""
    return {"id": r.id, "machine": r.machine, "state": r.state, "status": r.status,
            "version": r.version, "attempt": r.attempt, "wake_at": iso(r.wake_at),
            "key": r.key, "parent_id": r.parent_id, "lease_owner": r.lease_owner,
            "last_error": r.last_error, "created_at": iso(r.created_at),
            "updated_at": iso(r.updated_at), "problems": list(r.problems)}


@click.command("list")
@filter_options
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000),
              help="Rows per page.")
@click.option("--after", default=None, metavar="CURSOR",
              help="The next page: the cursor the previous page printed.")
@click.option("--app", multiple=True, help="module:attr of machines (to check --state names "
              "against their classes); repeatable.")
@json_option
@click.pass_obj
def list_command(obj: _Obj, /, limit: int, after: str | None, app: tuple[str, ...],
                 as_json: bool, **filters: Any) -> None:
    """List workflows, newest first, with a "showing N of M" line and the cursor of the next
    page. A row that no worker could run or read (unknown status, ready without wake_at, data
    that is not a JSON object) is listed with its PROBLEM."""
    known = obj.machine_names(app)
    flt = build_filter(obj.store, filters, known_machines=known)
    rows, cursor = page(obj.store, flt, limit=limit,
                        after=Cursor.decode(after) if after else None)
    total = count_matching(obj.store, flt)
    next_cursor = cursor.encode() if cursor else None
    if as_json:
        emit_json({"workflows": [row_json(r) for r in rows], "shown": len(rows),
                   "total": total, "next_cursor": next_cursor})
        return
    print_table(
        [(short_id(r.id), r.machine, r.state, r.status, r.version, when(r.updated_at),
          "; ".join(r.problems) if r.problems else (r.last_error or "").split("\n")[0])
         for r in rows],
        ["ID", "MACHINE", "STATE", "STATUS", "V", "UPDATED", "LAST ERROR / PROBLEM"],
        fold_last=False)
    line = f"showing {len(rows)} of {total}"
    if next_cursor:
        line += f" (next page: --after {next_cursor})"
    click.echo(line)
