"""How the `statemachine` command prints: tables for people (rich, fitted to the terminal; 80
columns when the output is not a terminal), and ``--json`` for scripts.

JSON output is one document on stdout: an object, or an object holding a list (the field names
are documented in docs/reference/cli.md and kept stable). Times are ISO 8601 in UTC, ids full
UUIDs, absent values ``null``.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

__all__ = ["console", "emit_json", "iso", "json_data", "json_option", "print_done",
           "print_table", "short_id", "when"]

F = TypeVar("F", bound=Callable[..., Any])


def json_option(fn: F) -> F:
    """The ``--json`` flag of a command that prints data."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print JSON (stable field names; see docs/reference/cli.md).")(fn)


def console(*, err: bool = False) -> Console:
    """A console on stdout (or stderr): the terminal's width, or 80 columns when redirected."""
    return Console(stderr=err, highlight=False, soft_wrap=False,
                   width=None if _is_terminal(err) else 80)


def _is_terminal(err: bool) -> bool:
    return (sys.stderr if err else sys.stdout).isatty()


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def json_data(data: str) -> Any:
    """The value of a ``--data`` option, or a usage error saying why it is not JSON."""
    try:
        return json.loads(data)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not JSON: {e}", param_hint="--data") from e


def print_done(as_json: bool, text: str, **fields: Any) -> None:
    """What a command did: `text` for a person, or `fields` as a JSON object."""
    if as_json:
        emit_json({key: str(v) if isinstance(v, uuid.UUID) else v for key, v in fields.items()})
    else:
        click.echo(text)


def emit_json(document: Any) -> None:
    """Print `document` as JSON (datetimes as ISO 8601 UTC, UUIDs as text)."""
    click.echo(json.dumps(document, default=_plain, indent=2, sort_keys=False))


def iso(value: object) -> str | None:
    """A stored time as ISO 8601 UTC (``2026-12-02T03:10:00.123456+00:00``), or None."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).isoformat()


def when(value: object) -> str:
    """A stored time for a table: ``YYYY-MM-DD HH:MM:SS`` (UTC)."""
    text = iso(value)
    return "" if text is None else text[:19].replace("T", " ")


def short_id(value: object) -> str:
    """The first 8 characters of an id: what tables print (every command accepts a unique
    prefix)."""
    return str(value)[:8]


def print_table(rows: Sequence[Sequence[object]], headers: Sequence[str], *,
                title: str | None = None, wrap: Sequence[str] = (),
                fold_last: bool = True) -> None:
    """A table fitted to the console's width: columns keep their natural width while they fit
    (the widest give way first), the last column takes what is left. Long cells are cut with an
    ellipsis, except in the columns named in `wrap` (and the last, with `fold_last`), which
    fold."""
    out = console()
    cells = [["" if c is None else str(c) for c in row] for row in rows]
    natural = [max([len(h), *(max((len(x) for x in row[n].splitlines()), default=0)
                              for row in cells)]) for n, h in enumerate(headers)]
    widths = _fit(natural, out.width - 2 * (len(headers) - 1))
    table = Table(title=title, box=None, pad_edge=False, header_style="bold",
                  title_justify="left", title_style="bold", expand=False)
    for n, header in enumerate(headers):
        folds = header in wrap or (fold_last and n == len(headers) - 1)
        table.add_column(header, width=widths[n], no_wrap=not folds,
                         overflow="fold" if folds else "ellipsis")
    for row in cells:
        table.add_row(*row)
    out.print(table)


def _fit(natural: list[int], room: int) -> list[int]:
    """Column widths within `room`: the last column gets what the others leave (at least 12),
    and while they do not fit, the widest of the others is narrowed."""
    widths = list(natural)
    last = len(widths) - 1
    while sum(widths[:last]) + min(widths[last], 12) > room:
        widest = max(range(last), key=lambda i: widths[i], default=None)
        if widest is None or widths[widest] <= 4:
            break
        widths[widest] -= 1
    widths[last] = max(1, min(widths[last], room - sum(widths[:last])))
    return widths
