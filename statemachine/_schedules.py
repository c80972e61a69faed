"""Schedules (cron): start exactly one workflow per tick, however many workers run.

    billing = Schedule("monthly-billing", cron="0 6 1 * *", timezone="Europe/Berlin",
                       machine=Billing, start=lambda tick: BillingRun(period=tick.date()),
                       missed="latest")
    Worker(store, [Billing()], schedules=[billing])

Every worker that is given a schedule checks it each poll interval; the tick's workflow is started
with the key ``schedule:<name>:<tick>``, unique per machine, so only one start per tick can win.
`missed` says what happens to ticks that passed while no worker ran: ``"skip"`` them (only a tick
at most `grace` seconds late still runs), run the ``"latest"`` one once, or catch up ``"all"``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from cronsim import CronSim, CronSimError

from .errors import InvalidDefinition

if TYPE_CHECKING:
    from ._store import Store as StoreLike

__all__ = ["Schedule", "due_ticks", "run_schedule"]

MissedPolicy = Literal["skip", "latest", "all"]


@attrs.frozen
class Schedule:
    """Start `machine` in ``start(tick)`` at every tick of `cron` in `timezone`: 5 fields, or 6
    with seconds first (``"*/10 * * * * *"``), as cronsim reads them."""

    name: str
    cron: str
    machine: Any
    start: Callable[[datetime], object]
    timezone: str = "UTC"
    missed: MissedPolicy = "skip"
    grace: float = 60.0
    max_catch_up: int = 1000

    def __attrs_post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise InvalidDefinition(f"schedule {self.name!r}: unknown time zone "
                                    f"{self.timezone!r}") from e
        try:
            CronSim(self.cron, datetime.now(UTC))
        except CronSimError as e:
            raise InvalidDefinition(f"schedule {self.name!r}: bad cron expression "
                                    f"{self.cron!r}: {e}") from e
        if self.missed not in ("skip", "latest", "all"):
            raise InvalidDefinition(f"schedule {self.name!r}: missed must be skip, latest or "
                                    f"all, not {self.missed!r}")

    def ticks(self, after: datetime, until: datetime, limit: int) -> list[datetime]:
        """Ticks in (after, until], at most `limit` of the latest, oldest first, in UTC. Walks
        back from `until`, so a long outage costs at most `limit` steps, not one per tick."""
        zone = ZoneInfo(self.timezone)
        found: list[datetime] = []
        # cronsim's reverse walk excludes its start: begin a second past `until`.
        for tick in CronSim(self.cron, (until + timedelta(seconds=1)).astimezone(zone),
                            reverse=True):
            if tick > until:
                continue
            if tick <= after or len(found) >= limit:
                break
            found.append(tick.astimezone(UTC))
        return found[::-1]

    def next_tick(self, after: datetime) -> datetime:
        """The first tick after `after`, in UTC."""
        ticks = CronSim(self.cron, after.astimezone(ZoneInfo(self.timezone)))
        tick: datetime = next(t for t in ticks if t > after)  # see `ticks` on repeated hours
        return tick.astimezone(UTC)

    def key(self, tick: datetime) -> str:
        """The start key of the workflow for `tick`."""
        return f"schedule:{self.name}:{tick.astimezone(UTC).isoformat()}"


def due_ticks(schedule: Schedule, last_tick: datetime, now: datetime) -> tuple[list[datetime],
                                                                              datetime | None]:
    """(ticks to start now, the new last tick) for ticks after `last_tick` up to `now`, applying
    the schedule's missed-tick policy. The new last tick is None when nothing is due."""
    newest = schedule.ticks(last_tick, now, limit=1)
    if not newest:
        return [], None
    if schedule.missed == "all":
        return schedule.ticks(last_tick, now, limit=max(1, schedule.max_catch_up)), newest[-1]
    if schedule.missed == "latest":
        return newest, newest[-1]
    # skip: only ticks at most `grace` late (exactly `grace` still counts) run.
    earliest = now - timedelta(seconds=schedule.grace, microseconds=1)
    on_time = schedule.ticks(max(last_tick, earliest), now, limit=max(1, schedule.max_catch_up))
    return on_time, newest[-1]


def run_schedule(store: StoreLike, schedule: Schedule) -> list[uuid.UUID]:
    """Start the workflows of every tick of `schedule` that is due now (at most once per tick,
    whichever worker gets there first); returns the ids this call started."""
    from ._serde import StateCodec

    spec = schedule.machine.spec
    codec = StateCodec(spec)

    def plan(last: datetime, now: datetime) -> tuple[list[tuple[str, str, Any]],
                                                      datetime | None]:
        ticks, newest = due_ticks(schedule, last, now)
        starts = []
        for tick in ticks:
            name, data = codec.dump(schedule.start(tick))
            starts.append((schedule.key(tick), name, data))
        return starts, newest

    started: list[uuid.UUID] = store.sql.run_schedule(schedule.name, spec.name, plan)
    if started:
        store.sql.notify()
    return started
