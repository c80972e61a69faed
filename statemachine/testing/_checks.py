"""The engine's invariants, read from the database a `Harness` runs on.

`EngineInvariants.check()` raises `InvariantViolated` naming the workflow and the rule broken:

- only declared transitions happen, and no handler is caught breaking its contract (returning a
  state its annotation does not declare, or one that does not fit its class);
- history versions are contiguous from 1 and end at the row's version;
- no event is consumed twice, every consumed event is consumed by a history row, and no event
  is left pending while its workflow sleeps in a state that accepts it;
- every unfinished workflow is due (ready with a wake-up), waiting with a reason (an event it
  accepts, a deadline, a timer, children), or leased (running with a lease expiry);
- a finished workflow never changes, except by an operator (force, retry);
- an at-most-once step never runs twice with one idempotency key unless a reconcile (or an
  operator's retry) said it may run again.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from .. import _schema as schema
from .._definition import state_name
from .._records import FINISHED
from ._harness import Harness

__all__ = ["EngineInvariants", "InvariantViolated"]

# History kinds written by a handler's result, whose (from, to) must be a declared edge.
_HANDLER_KINDS = ("transition", "error_route", "reconciled")
# Kinds an operator writes: they may change a finished workflow (a parked one can be
# cancelled).
_OPERATOR_KINDS = frozenset(("forced", "retry", "external_change", "cancel"))
# Kinds that allow an at-most-once step to run again with the same key.
_RERUN_KINDS = frozenset(("rerun", "retry", "forced"))
_CONTRACT = ("which its return annotation does not declare", "does not fit its class",
             "does not serialize")


class InvariantViolated(AssertionError):
    """An invariant of the engine does not hold: the message names the workflow and the rule."""


class EngineInvariants:
    """Checks a harness's database after each step; remembers what it saw of finished
    workflows, so that a change to one later is caught."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self._finished: dict[uuid.UUID, int] = {}
        self._checked_at: int | None = None  # `harness.writes` at the last check
        self._declared: dict[str, set[tuple[str, str]]] = {}
        for name, loaded in harness.machines.items():
            self._declared[name] = {(state_name(s), state_name(t))
                                    for s, t, _ in loaded.spec.edges()}

    def reset(self) -> None:
        """Forget what was seen (after `Harness.reset`)."""
        self._finished.clear()
        self._checked_at = None

    def check(self) -> None:
        """Raise `InvariantViolated` for the first invariant that does not hold. (Nothing is
        read when the harness wrote nothing since the last check.)"""
        h = self.harness
        if self._checked_at == h.writes:
            return
        self._checked_at = h.writes
        w, hi, ev = schema.workflows, schema.history, schema.events
        names = list(h.machines)
        with h.store.connect() as conn:
            rows = conn.execute(select(
                w.c.id, w.c.machine, w.c.state, w.c.status, w.c.version, w.c.wake_at,
                w.c.lease_token, w.c.parent_id).where(w.c.machine.in_(names))).all()
            history = conn.execute(select(
                hi.c.workflow_id, hi.c.version, hi.c.kind, hi.c.from_state, hi.c.to_state,
                hi.c.error).order_by(hi.c.workflow_id, hi.c.version)).all()
            events = conn.execute(select(
                ev.c.id, ev.c.workflow_id, ev.c.type, ev.c.status,
                ev.c.consumed_version)).all()
        by_workflow: dict[uuid.UUID, list[Any]] = defaultdict(list)
        for r in history:
            by_workflow[r.workflow_id].append(r)
        for row in rows:
            entries = by_workflow.get(row.id, [])
            self._history(row, entries)
            self._status(row, entries)
            self._finished_stays(row, entries)
        self._events(events, by_workflow)
        self._lost(rows, events)
        self._at_most_once(by_workflow)

    def _history(self, row: Any, entries: list[Any]) -> None:
        versions = [e.version for e in entries]
        if versions != list(range(1, row.version + 1)):
            raise InvariantViolated(f"workflow {row.id}: history versions {versions} are not "
                                    f"1..{row.version} (contiguous, never duplicated)")
        declared = self._declared[row.machine]
        for e in entries:
            if e.kind == "parked" and e.error and any(c in e.error for c in _CONTRACT):
                raise InvariantViolated(f"workflow {row.id}: parked at version {e.version} "
                                        f"because a handler broke its contract: {e.error}")
            if e.kind in _HANDLER_KINDS and e.from_state != e.to_state and \
                    (e.from_state, e.to_state) not in declared:
                raise InvariantViolated(f"workflow {row.id}: undeclared transition "
                                        f"{e.from_state} -> {e.to_state} at version {e.version}")

    def _status(self, row: Any, entries: list[Any]) -> None:
        status = row.status
        if status in FINISHED:
            return
        if status == "ready" and row.wake_at is None and row.parent_id is None:
            # (a queued child has no wake-up until its parent lets it go)
            raise InvariantViolated(f"workflow {row.id}: ready in {row.state} with no wake-up: "
                                    "it would never run")
        if status == "running" and (row.wake_at is None or row.lease_token is None):
            raise InvariantViolated(f"workflow {row.id}: running in {row.state} with no lease")
        if status == "waiting" and row.wake_at is None:
            loaded = self.harness.machines[row.machine]
            cls = loaded.spec.states.get(row.state) or loaded.spec.aliases.get(row.state)
            if cls is None or not (loaded.spec.events.get(cls) or
                                   loaded.spec.children.get(cls)):
                raise InvariantViolated(f"workflow {row.id}: waiting in {row.state} with no "
                                        "deadline and no event or children to wait for")
        if status not in ("ready", "running", "waiting"):
            raise InvariantViolated(f"workflow {row.id}: unknown status {status!r}")

    def _finished_stays(self, row: Any, entries: list[Any]) -> None:
        seen = self._finished.get(row.id)
        if seen is not None and row.version != seen:
            later = [e for e in entries if e.version > seen]
            if not later or later[0].kind not in _OPERATOR_KINDS:
                kinds = ", ".join(e.kind for e in later) or "no history"
                raise InvariantViolated(f"workflow {row.id}: finished at version {seen}, then "
                                        f"changed without an operator ({kinds})")
        if row.status in FINISHED:
            self._finished[row.id] = row.version
        else:
            self._finished.pop(row.id, None)

    def _events(self, events: Sequence[Any], by_workflow: dict[uuid.UUID, list[Any]]) -> None:
        used: dict[tuple[uuid.UUID, int], uuid.UUID] = {}
        for e in events:
            if e.status != "consumed":
                continue
            if e.consumed_version is None:
                raise InvariantViolated(f"event {e.id} ({e.type}) of workflow {e.workflow_id}: "
                                        "consumed by no version")
            key = (e.workflow_id, e.consumed_version)
            if key in used:
                raise InvariantViolated(f"workflow {e.workflow_id}: version "
                                        f"{e.consumed_version} consumed two events ({used[key]}, "
                                        f"{e.id})")
            used[key] = e.id
            versions = {x.version for x in by_workflow.get(e.workflow_id, [])}
            if e.consumed_version not in versions:
                raise InvariantViolated(f"event {e.id} ({e.type}): consumed by version "
                                        f"{e.consumed_version} of workflow {e.workflow_id}, "
                                        "which history does not have")

    def _lost(self, rows: Sequence[Any], events: Sequence[Any]) -> None:
        """A workflow asleep in a state that accepts an event pending for it, with no wake-up
        due, would never see that event."""
        pending: dict[uuid.UUID, set[str]] = defaultdict(set)
        for e in events:
            if e.status == "pending":
                pending[e.workflow_id].add(e.type)
        now = self.harness.clock.now()
        for row in rows:
            if row.status != "waiting" or not pending.get(row.id):
                continue
            if row.wake_at is not None and row.wake_at <= now:
                continue  # due: the next step consumes it
            spec = self.harness.machines[row.machine].spec
            cls = spec.states.get(row.state) or spec.aliases.get(row.state)
            handled = spec.events.get(cls, {}) if cls else {}
            accepted = {name for name, t in spec.event_types.items() if t in handled}
            if lost := sorted(pending[row.id] & accepted):
                raise InvariantViolated(f"workflow {row.id}: waiting in {row.state}, which "
                                        f"accepts {', '.join(lost)}, with such an event pending "
                                        "and no wake-up due: the event is lost")

    def _at_most_once(self, by_workflow: dict[uuid.UUID, list[Any]]) -> None:
        calls = self.harness.at_most_once_calls
        seen: dict[tuple[uuid.UUID, str, str], int] = {}
        for index, (wid, name, key) in enumerate(calls):
            earlier = seen.get((wid, name, key))
            seen[(wid, name, key)] = index
            if earlier is None:
                continue
            # Allowed only if a rerun/retry/force was recorded between the two calls: count
            # them in history against the calls recorded before each.
            reruns = sum(1 for e in by_workflow.get(wid, []) if e.kind in _RERUN_KINDS)
            calls_before = sum(1 for c in calls[:index] if c[0] == wid and c[1] == name
                               and c[2] == key)
            if reruns < calls_before:
                raise InvariantViolated(f"workflow {wid}: at-most-once step {name} ran "
                                        f"{calls_before + 1} times with idempotency key {key} "
                                        f"and only {reruns} reconcile/retry said it may")
