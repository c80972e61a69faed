"""`Statements`: every statement the engine sends, by name (``store.sql.<name>``), composed from
the groups of one concern each, plus the in-process wake-ups that go with them."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

from ._connections import Database
from ._grouped import GroupStatements
from ._limits import LimitStatements
from ._purge import PurgeStatements
from ._reads import ReadStatements
from ._waiting import WaitingStatements

__all__ = ["Statements"]


class Statements(WaitingStatements, GroupStatements, LimitStatements, ReadStatements,
                 PurgeStatements):
    """The engine's statements: claim, commit, events, children, limits, schedules, reads,
    retention.
    Internal (the engine's, not the user's API); reached as ``store.sql``."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._listeners: list[Callable[[], None]] = []
        # Guards `_watchers`: client threads add and remove, worker threads read.
        self._watch_lock = threading.Lock()
        self._watchers: dict[uuid.UUID, list[threading.Event]] = {}

    # -- in-process wake-ups ------------------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever work is started or changed through this store object."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        """Stop calling `listener`."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def notify(self) -> None:
        """Wake this process's workers: there is new work."""
        for listener in list(self._listeners):
            listener()

    def watch(self, workflow_id: uuid.UUID,
              event: threading.Event | None = None) -> threading.Event:
        """An event set when a worker of this process commits a finished status (done, failed,
        cancelled) for `workflow_id` (`event` if given: a subclass may wake an event loop). Call
        `unwatch` when done with it."""
        event = threading.Event() if event is None else event
        with self._watch_lock:
            self._watchers.setdefault(workflow_id, []).append(event)
        return event

    def unwatch(self, workflow_id: uuid.UUID, event: threading.Event) -> None:
        """Forget an event made by `watch`."""
        with self._watch_lock:
            events = self._watchers.get(workflow_id, [])
            if event in events:
                events.remove(event)
            if not events:
                self._watchers.pop(workflow_id, None)

    def finished(self, workflow_id: uuid.UUID) -> None:
        """A worker of this process finished `workflow_id`: wake whoever watches it."""
        if self._watchers:
            with self._watch_lock:
                events = list(self._watchers.get(workflow_id, ()))
            for event in events:
                event.set()
