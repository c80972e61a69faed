"""The filter options shared by `list` and the bulk commands, checked before any row is read:
an unknown machine, state or status is an error listing the known ones, a time that does not
parse says what would."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ._definition import lookup_machine
from ._schema import STATUSES
from ._store._filters import WorkflowFilter, distinct_values, resolve_id
from .errors import InvalidArgument, UnknownMachine, UnknownState

if TYPE_CHECKING:
    from ._store import Store

__all__ = ["build_filter", "filter_options", "parse_duration", "parse_time"]

F = TypeVar("F", bound=Callable[..., Any])

FILTER_NAMES = ("status", "machine", "state", "key", "parent", "since", "until", "time_field",
                "error")


def filter_options(fn: F) -> F:
    """The ``list`` filters, as options of `fn` (which receives them as keyword arguments)."""
    options = [
        click.option("--status", multiple=True, metavar="STATUS",
                     help="ready, running, waiting, done, failed or cancelled (repeatable)."),
        click.option("--machine", multiple=True, metavar="NAME", help="Machine (repeatable)."),
        click.option("--state", multiple=True, metavar="STATE", help="State name (repeatable)."),
        click.option("--key", multiple=True, metavar="KEY", help="Start key (repeatable)."),
        click.option("--parent", default=None, metavar="ID", help="Children of this workflow."),
        click.option("--since", default=None, metavar="TIME",
                     help="Changed (or created, see --time) at or after TIME: 2026-12-01, "
                          "2026-12-01T10:00, or an age such as 30m, 2h, 7d."),
        click.option("--until", default=None, metavar="TIME", help="... before TIME."),
        click.option("--time", "time_field", type=click.Choice(["updated", "created"]),
                     default="updated", show_default=True,
                     help="Which time --since/--until bound."),
        click.option("--error", default=None, metavar="TEXT",
                     help="last_error contains TEXT (case-insensitive)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def has_filter(values: dict[str, Any]) -> bool:
    """Whether any filter option was given."""
    return any(values.get(n) for n in FILTER_NAMES if n != "time_field")


_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, option: str) -> timedelta:
    """``90s``, ``30m``, ``2h``, ``7d``, ``1w`` as a timedelta."""
    match = _AGE.match(text.strip())
    if match is None:
        raise InvalidArgument(f"{option} {text}: not a duration (e.g. 90s, 30m, 2h, 7d, 1w)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def parse_time(text: str, option: str, now: datetime) -> datetime:
    """An ISO date or time (UTC unless it says otherwise), or an age before `now`."""
    if _AGE.match(text.strip()):
        return now - parse_duration(text, option)
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidArgument(f"{option} {text}: not a time (e.g. 2026-12-01, "
                              "2026-12-01T10:00:00, 2026-12-01T10:00+02:00, or an age: 30m, "
                              "2h, 7d)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def build_filter(store: Store, values: dict[str, Any], *,
                 known_machines: tuple[str, ...] = ()) -> WorkflowFilter:
    """The filter the options in `values` describe, each name checked against what exists:
    machines in the database or imported (`known_machines`), states of those machines (their
    classes, or what the database holds), the six statuses (or one a row holds)."""
    statuses = tuple(values.get("status") or ())
    machines = tuple(values.get("machine") or ())
    states = tuple(values.get("state") or ())
    if statuses:
        unknown = [s for s in statuses if s not in STATUSES]
        if unknown:
            held = set(distinct_values(store, "status"))
            bad = [s for s in unknown if s not in held]
            if bad:
                raise InvalidArgument(f"--status {bad[0]}: not a status (statuses: "
                                      f"{', '.join(STATUSES)})")
    if machines:
        known = set(distinct_values(store, "machine")) | set(known_machines)
        for name in machines:
            if name not in known and lookup_machine(name) is None:
                listed = ", ".join(sorted(known)) or "none: the database holds no workflows"
                raise UnknownMachine(f"--machine {name}: no such machine (known: {listed})",
                                     machine=name)
    if states:
        known_states = set(distinct_values(store, "state", machines))
        for name in machines or known_machines:
            cls = lookup_machine(name)
            if cls is not None:
                known_states |= set(cls.spec.states)
        for name in states:
            if name not in known_states:
                of = f" of {', '.join(machines)}" if machines else ""
                listed = ", ".join(sorted(known_states)) or "none"
                raise UnknownState(f"--state {name}: no such state{of} (known: {listed})",
                                   state=name)
    now = store.current_time()
    since = values.get("since")
    until = values.get("until")
    parent = values.get("parent")
    return WorkflowFilter(
        statuses=statuses, machines=machines, states=states,
        keys=tuple(values.get("key") or ()),
        parent=resolve_id(store, parent) if parent else None,
        since=parse_time(since, "--since", now) if since else None,
        until=parse_time(until, "--until", now) if until else None,
        time_field=values.get("time_field") or "updated", error=values.get("error") or None)
