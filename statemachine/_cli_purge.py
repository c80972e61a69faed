"""`statemachine purge --older-than 30d`: delete finished workflows (with their children, history
and events) that finished longer ago than the given age, in small batches, with a progress line.
See `_retention.py` for what is and is not purged."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import click

from ._retention import PurgeTotals, parse_age, purge

__all__ = ["age_option", "purge_command"]

F = TypeVar("F", bound=Callable[..., Any])


def _age(_ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    if value is None:
        return None
    try:
        return parse_age(value)
    except Exception as e:
        raise click.BadParameter(str(e), param=param) from None


def age_option(*names: str, **kwargs: Any) -> Callable[[F], F]:
    """A click option taking an age such as ``30d`` (a `timedelta`)."""
    return click.option(*names, callback=_age, metavar="AGE", **kwargs)


@click.command("purge")
@age_option("--older-than", "older_than", required=True,
            help="Purge workflows that finished longer ago than this (30d, 12h, 90m, 2w).")
@click.option("--batch-size", default=100, show_default=True,
              help="Top-level workflows (with their children) deleted per transaction.")
@click.option("--pause", default=0.0, show_default=True,
              help="Seconds to wait between batches, leaving the database to the workers.")
@click.pass_obj
def purge_command(obj: Any, older_than: timedelta, batch_size: int, pause: float) -> None:
    """Delete finished workflows older than --older-than, with their children, history and
    events, in small batches (safe while workers run). Parked (failed) workflows are kept."""
    if batch_size <= 0:
        raise click.BadParameter("must be positive", param_hint="--batch-size")
    live = sys.stderr.isatty()

    def progress(totals: PurgeTotals) -> None:
        # One line that updates itself on a terminal; a line every 10 batches in a log.
        if live:
            click.echo(f"\r{totals.describe()}", nl=False, err=True)
        elif totals.batches % 10 == 0:
            click.echo(totals.describe(), err=True)

    totals = purge(obj.store, older_than, batch_size=batch_size, pause=pause, progress=progress)
    if live and totals.batches:
        click.echo("", err=True)
    click.echo(totals.describe())
