"""Rate limits (concurrency slots and sliding windows per key) and schedule ticks."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .._records import ClaimedRow
from .._schema import limit_slots as ls
from .._schema import limit_windows as lw
from .._schema import schedules as sch
from .._schema import workflows as w
from ._workflows import WorkflowStatements

__all__ = ["LimitStatements"]


class LimitStatements(WorkflowStatements):
    """Concurrency slots, rate windows, deferring a workflow, schedule ticks."""

    def _upsert(self) -> Any:
        return sqlite_insert if self.is_sqlite else pg_insert

    def acquire_slot(self, key: str, size: int, holder: uuid.UUID, lease: float) -> int | None:
        """Take one of the `size` concurrency slots of `key` for `holder` (until released, or
        `lease` seconds pass unrenewed); None when all are taken."""

        def run(conn: Connection) -> int | None:
            have = conn.execute(select(func.count()).select_from(ls).where(ls.c.key == key)
                                ).scalar_one()
            if have < size:
                conn.execute(self._upsert()(ls).values(
                    [{"key": key, "slot": i} for i in range(int(have), size)]
                ).on_conflict_do_nothing())
            free = (select(ls.c.slot).where(
                ls.c.key == key, ls.c.slot < size,
                or_(ls.c.holder.is_(None), ls.c.expires_at < self.now(), ls.c.holder == holder))
                .order_by(ls.c.slot).limit(1).with_for_update(skip_locked=True))
            slot = conn.execute(free).scalar()
            if slot is None:
                return None
            conn.execute(update(ls).where(ls.c.key == key, ls.c.slot == slot).values(
                holder=holder, expires_at=self.later(lease)))
            return int(slot)

        return self.transaction(run)

    def release_slot(self, key: str, slot: int, holder: uuid.UUID) -> None:
        """Give a concurrency slot back."""
        stmt = update(ls).where(ls.c.key == key, ls.c.slot == slot, ls.c.holder == holder).values(
            holder=None, expires_at=None)
        self._single(lambda c: c.execute(stmt))

    def renew_slots(self, holders: Sequence[uuid.UUID], lease: float) -> None:
        """Keep the slots of workflows whose handlers still run."""
        if holders:
            stmt = update(ls).where(ls.c.holder.in_(holders)).values(expires_at=self.later(lease))
            self._single(lambda c: c.execute(stmt))

    def take_start(self, key: str, count: int, window: float) -> float:
        """Record a start for `key` if fewer than `count` happened in the last `window` seconds:
        0.0 if recorded, else the seconds until the oldest of them leaves the window."""

        def run(conn: Connection) -> float:
            conn.execute(self._upsert()(lw).values(key=key, recent=[], updated_at=self.now())
                         .on_conflict_do_nothing())
            recent = conn.execute(select(lw.c.recent).where(lw.c.key == key)
                                  .with_for_update()).scalar_one()
            # The start's time is read once the row lock is held: a transaction that queued for
            # the lock must not stamp the start with the (earlier) time it began.
            clock = func.clock_timestamp() if self.server_clock else self.now()
            now: datetime = conn.execute(select(clock)).scalar_one()
            stamp = now.timestamp()
            recent = [t for t in recent if t > stamp - window]
            if len(recent) >= count:
                return max(0.001, float(recent[-count]) + window - stamp)
            conn.execute(update(lw).where(lw.c.key == key).values(
                recent=[*recent, stamp], updated_at=now))
            return 0.0

        return self.transaction(run)

    def defer(self, row: ClaimedRow, seconds: float) -> bool:
        """Put a claimed workflow back, due in `seconds`, without counting the attempt (it waits
        for a limit, holding no worker). False if the lease is gone."""
        stmt = (update(w).where(w.c.id == row.id, w.c.version == row.version,
                                w.c.lease_token == row.lease_token)
                .values(status="ready", wake_at=self.later(seconds), lease_token=None,
                        lease_owner=None, attempt=w.c.attempt - 1, updated_at=self.now())
                .returning(w.c.id))
        return bool(self._single(lambda c: c.execute(stmt).first()))

    # -- schedules ---------------------------------------------------------------------------

    def run_schedule(
        self, name: str, machine: str,
        plan: Callable[[datetime, datetime], tuple[list[tuple[str, str, Any]], datetime | None]],
    ) -> list[uuid.UUID]:
        """Under the schedule's row lock: ask `plan(last_tick, now)` for the (key, state, data)
        of each workflow to start and the new last tick, start them, record the tick. A schedule
        seen for the first time starts from now. Returns the ids started now."""

        def run(conn: Connection) -> list[uuid.UUID]:
            now: datetime = conn.execute(select(self.now())).scalar_one()
            conn.execute(self._upsert()(sch).values(name=name, last_tick=now, updated_at=now)
                         .on_conflict_do_nothing())
            last = conn.execute(select(sch.c.last_tick).where(sch.c.name == name)
                                .with_for_update()).scalar_one()
            starts, newest = plan(last or now, now)
            started = []
            for key, state, data in starts:
                wid, created = self.insert_workflow_in(
                    conn, machine=machine, state=state, data=data, key=key,
                    cause=f"schedule {name}")
                if created:
                    started.append(wid)
            if newest is not None:
                conn.execute(update(sch).where(sch.c.name == name).values(
                    last_tick=newest, updated_at=now))
            return started

        return self.transaction(run)

    def schedule_ticks(self) -> dict[str, datetime | None]:
        """The last tick of every schedule that has run."""
        stmt = select(sch.c.name, sch.c.last_tick)
        return self._single(lambda c: {r.name: r.last_tick for r in c.execute(stmt)})


