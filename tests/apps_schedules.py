"""An app with schedules for worker subprocesses: ``statemachine worker --app
tests.apps_schedules:app`` runs the `SchedTicker` machine and both schedules below.

`EVERY_SECOND` uses cronsim's six-field form (the sixth field is seconds), so a real-time test
sees a tick every second without waiting for minute boundaries. Each tick's initial state records
the pid of the process whose `run_schedule` started it, so the test can tell that the ticks were
raced for (and won) by more than one worker process. `DAILY` ticks once a day at 02:30 in
Europe/Berlin; `statemachine schedules` lists it with a next run the test can compute.
"""

from __future__ import annotations

import os
from datetime import datetime

import attrs

from statemachine import Context, Machine, Schedule, step

__all__ = ["DAILY", "EVERY_SECOND", "SchedTicker", "Tick", "Ticked", "app"]


@attrs.frozen
class Tick:
    at: str  # the tick, ISO 8601 in UTC
    by: int  # pid of the process that started the workflow


@attrs.frozen
class Ticked:
    at: str
    by: int
    ran_in: int  # pid of the process that ran the handler


class SchedTicker(Machine):
    initial = Tick
    terminal = (Ticked,)

    @step
    def record(self, state: Tick, ctx: Context) -> Ticked:
        return Ticked(at=state.at, by=state.by, ran_in=os.getpid())


def _tick(tick: datetime) -> Tick:
    return Tick(at=tick.isoformat(), by=os.getpid())


EVERY_SECOND = Schedule("every-second", cron="* * * * * *", machine=SchedTicker, start=_tick,
                        missed="skip", grace=60.0)
DAILY = Schedule("daily-0230-berlin", cron="30 2 * * *", timezone="Europe/Berlin",
                 machine=SchedTicker, start=_tick, missed="latest")

app = [SchedTicker, EVERY_SECOND, DAILY]
