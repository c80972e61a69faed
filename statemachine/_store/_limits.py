"""Rate limits (concurrency slots and sliding windows per key) and schedule ticks."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    Text,
    bindparam,
    exists,
    func,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from .._clock import utcnow
from .._records import ClaimedRow
from .._schema import TextUUID
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
        `lease` seconds pass unrenewed); None when all are taken.

        One statement: among slots ``0 .. size - 1``, the first that no other holder has (the
        search starts at a place given by the holder, so concurrent acquirers try different
        slots) is inserted, or taken over if it is free, expired or this holder's. The row of
        each slot is the lock: two acquirers of one slot cannot both have it, at any isolation
        level (at READ COMMITTED the later one finds the slot taken and gets None; at
        SERIALIZABLE one of them is retried). Slot rows of a larger earlier `size` are
        ignored."""
        stmt = self._statements.get("acquire_slot")
        if stmt is None:
            stmt = self._statements["acquire_slot"] = self._acquire_slot_statement()
        params = {"s_key": key, "s_size": size, "s_holder": holder,
                  "s_start": holder.int % size, "s_until": self._later_value(lease),
                  **self._now_value()}
        found = self._single(lambda c: c.execute(stmt, params).first())
        return None if found is None else int(found.slot)

    def _acquire_slot_statement(self) -> Any:
        key = bindparam("s_key", type_=Text())
        size = bindparam("s_size", type_=Integer())
        holder = bindparam("s_holder", type_=TextUUID())
        now = self._now_param()
        until = self._later_param("s_until")
        first = select(literal(0, Integer()).label("slot")).cte("slots", recursive=True)
        prev = first.alias("prev")
        slots = first.union_all(select((prev.c.slot + 1).label("slot"))
                                .where(prev.c.slot + 1 < size))
        taken = select(ls.c.slot).where(
            ls.c.key == key, ls.c.slot == slots.c.slot, ls.c.holder.is_not(None),
            ls.c.holder != holder, ls.c.expires_at >= now)
        candidate = (select(slots.c.slot).where(~exists(taken))
                     .order_by((slots.c.slot + bindparam("s_start", type_=Integer())) % size)
                     .limit(1).subquery("candidate"))
        rows = select(key, candidate.c.slot, holder, until).where(true())
        insert = self._upsert()(ls).from_select(["key", "slot", "holder", "expires_at"], rows)
        return insert.on_conflict_do_update(
            index_elements=[ls.c.key, ls.c.slot],
            set_={"holder": insert.excluded.holder, "expires_at": insert.excluded.expires_at},
            where=or_(ls.c.holder.is_(None), ls.c.expires_at < now, ls.c.holder == holder),
        ).returning(ls.c.slot)

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
        0.0 if recorded, else the seconds until the oldest of them leaves the window.

        Every writer measures the window on one clock, the database's (``clock_timestamp()``
        on servers, the host's on SQLite), never the store's own (a shifted clock of one writer
        would let its starts through another's window). The exception is a simulated clock
        (`FakeClock`, ``simulated = True``), which every writer of a test shares: it replaces
        the database's clock here too, so moving it moves the window. Stamps never go back: a
        start is stamped no earlier than the newest stamp stored (a clock stepped back, or a
        CockroachDB gateway behind another), so the window stays in order."""

        def run(conn: Connection) -> float:
            conn.execute(self._upsert()(lw).values(key=key, recent=[], updated_at=self.now())
                         .on_conflict_do_nothing())
            recent = conn.execute(select(lw.c.recent).where(lw.c.key == key)
                                  .with_for_update()).scalar_one()
            # The start's time is read once the row lock is held: a transaction that queued for
            # the lock must not stamp the start with the (earlier) time it began.
            if getattr(self.clock, "simulated", False):
                now = self.clock.now()
            elif self.is_sqlite:
                now = utcnow()
            else:
                now = conn.execute(select(func.clock_timestamp())).scalar_one()
            stamps = [float(t) for t in recent]
            stamp = max(now.timestamp(), stamps[-1] if stamps else 0.0)
            stamps = [t for t in stamps if t > stamp - window]
            if len(stamps) >= count:
                return max(0.001, stamps[-count] + window - stamp)
            conn.execute(update(lw).where(lw.c.key == key).values(
                recent=[*stamps, stamp], updated_at=self.now()))
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


