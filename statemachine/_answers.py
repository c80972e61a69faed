"""The runner's store calls for one attempt: answers to a decision's questions, and a limit.

Each question is one store call (or one short transaction); events and children are decoded here,
with the machines' codecs, so the decision sees objects or the reason they do not load.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from ._actions import (
    ChildrenResults,
    CountChildren,
    DatabaseNow,
    EnteredAt,
    EventSeen,
    PendingEvents,
    PollingSince,
    Question,
    RecordExternalChange,
    RejectEvent,
    ReleaseChildren,
)
from ._declarations import ChildResult
from ._limits import Limit
from ._records import FINISHED, ChildCounts, ClaimedRow
from ._serde import Codecs, StateCodec
from ._store import Store
from ._store._faults import is_retryable
from .errors import StateMachineError, StoreError

__all__ = ["ALL_CHILDREN", "StoreAnswers", "acquire"]

log = logging.getLogger("statemachine.worker")

ALL_CHILDREN = 2**31 - 1


class StoreAnswers:
    """Answers the questions asked about one claimed row of a machine (`codec`)."""

    def __init__(self, store: Store, codecs: Codecs, *, worker: str) -> None:
        self.store = store
        self.codecs = codecs
        self.worker = worker

    def __call__(self, row: ClaimedRow, codec: StateCodec, q: Question) -> Any:
        sql = self.store.sql
        match q:
            case RecordExternalChange():
                return sql.record_external_change(q.row, worker=self.worker)
            case PendingEvents():
                return [_event(codec, row, e) for e in sql.pending_events(row.id)]
            case RejectEvent():
                log.warning("workflow %s: event %s rejected: %s", row.id, q.event_id, q.reason)
                return sql.reject_event(q.event_id, q.reason)
            case EnteredAt():
                return sql.entered_at(row.id, q.version)
            case DatabaseNow():
                return self.store.current_time()
            case PollingSince():
                return sql.polling_since(row.id, q.version)
            case ReleaseChildren():
                up_to = ALL_CHILDREN if q.up_to is None else q.up_to
                return self.store.transaction(lambda c: sql.release_children(c, row.id, up_to))
            case CountChildren():
                return self.store.transaction(lambda c: ChildCounts(*sql.child_counts(c, row.id)))
            case ChildrenResults():
                return [self._child_result(c) for c in sql.children_of(row.id)]
        raise AssertionError(f"no answer to {q!r}")

    def _child_result(self, child: Any) -> ChildResult:
        state: object | None = None
        codec = self.codecs.get(child.machine)
        if codec is not None and child.status in FINISHED:
            try:
                state = codec.load(child.state, child.data, workflow=child.id)
            except StateMachineError:
                state = None
        return ChildResult(id=child.id, machine=child.machine, status=child.status,
                           state_name=child.state, data=child.data, state=state,
                           last_error=child.last_error)


def _event(codec: StateCodec, row: ClaimedRow, e: Any) -> EventSeen:
    if e.type not in codec.spec.event_types:
        return EventSeen(e.id, e.type, e.created_at)
    try:
        return EventSeen(e.id, e.type, e.created_at,
                         event=codec.load_event(e.type, e.data, workflow=row.id))
    except StateMachineError as error:
        return EventSeen(e.id, e.type, e.created_at, error=str(error))


def acquire(store: Store, row: ClaimedRow, limit: Limit, state: object,
            lease: float) -> tuple[str, int | None] | float:
    """Take what `limit` asks for: (key, slot) to release after the handler, or the seconds to
    wait (nothing held, a little jitter added) when the key is at its limit."""
    key = limit.key_for(state)
    slot: int | None = None
    try:
        if limit.concurrency is not None:
            slot = store.sql.acquire_slot(key, limit.concurrency, row.id, lease)
            if slot is None:
                return 0.05 + random.random() * 0.15
        if limit.rated:
            count, window = limit.window
            wait = store.sql.take_start(key, count, window)
            if wait > 0:
                if slot is not None:
                    store.sql.release_slot(key, slot, row.id)
                return wait + random.random() * 0.01
    except StoreError as e:
        if e.__cause__ is None or not is_retryable(e.__cause__):
            raise
        # Every retry lost to the other takers of this key: nothing was run, so the workflow
        # goes back to wait a moment instead of staying held until its lease expires.
        log.info("workflow %s: limit %r still contended after retries (%s); trying again "
                 "shortly", row.id, key, e)
        if slot is not None:
            store.sql.release_slot(key, slot, row.id)
        return 0.1 + random.random() * 0.2
    return key, slot
