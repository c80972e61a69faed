"""What a worker reports as it goes: the `Observer` hooks, and the one that logs transitions.

The runner calls an observer at three moments: a handler starts, a handler ends, a change is
committed; the worker's claimer reports each claim. `Observers` fans one call out to several
(the transition log, Prometheus metrics, OpenTelemetry spans); each observer's failure is
logged and never stops the worker. The metrics and tracing observers live in `_metrics` and
`_tracing`, imported only when asked for (their libraries are optional extras).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Protocol

from ._records import Change, ClaimedRow

__all__ = ["Observer", "Observers", "Quiet", "TransitionLog"]

log = logging.getLogger("statemachine.worker")

# One INFO line per committed change; silence it with
# ``logging.getLogger("statemachine.worker.transitions").setLevel(logging.WARNING)``.
transitions_log = logging.getLogger("statemachine.worker.transitions")


class Observer(Protocol):
    """Hooks a worker calls; every method must be cheap and thread-safe (handler threads call
    them concurrently)."""

    def claimed(self, machines: Sequence[str], rows: int, seconds: float) -> None:
        """A claim of `machines` took `seconds` and leased `rows` rows."""

    def handler_started(self, row: ClaimedRow, handler: str) -> None:
        """`handler` starts on `row`."""

    def handler_finished(self, row: ClaimedRow, handler: str, seconds: float,
                         raised: BaseException | None) -> None:
        """`handler` ended after `seconds`, having raised `raised` (None: it returned)."""

    def committed(self, row: ClaimedRow, change: Change, version: int, seconds: float) -> None:
        """`change` to `row` was committed as `version`, `seconds` after the row's turn began."""


class Quiet:
    """An `Observer` whose hooks do nothing: subclass it and override the hooks you need."""

    def claimed(self, machines: Sequence[str], rows: int, seconds: float) -> None:
        return None

    def handler_started(self, row: ClaimedRow, handler: str) -> None:
        return None

    def handler_finished(self, row: ClaimedRow, handler: str, seconds: float,
                         raised: BaseException | None) -> None:
        return None

    def committed(self, row: ClaimedRow, change: Change, version: int, seconds: float) -> None:
        return None


class Observers:
    """Several observers called as one; an observer that raises is logged and skipped."""

    def __init__(self, observers: Iterable[Observer]) -> None:
        self.observers = tuple(observers)
        # Per hook, the observers that do something in it (a `Quiet` hook left as it is does
        # nothing: not calling it saves two calls per hook on every transition).
        self._hooks: dict[str, tuple[Observer, ...]] = {
            name: tuple(o for o in self.observers
                        if getattr(type(o), name, None) is not getattr(Quiet, name))
            for name in ("claimed", "handler_started", "handler_finished", "committed")}

    def _each(self, method: str, *args: object) -> None:
        for o in self._hooks[method]:
            try:
                getattr(o, method)(*args)
            except Exception:
                log.exception("observer %s failed in %s", type(o).__name__, method)

    def claimed(self, machines: Sequence[str], rows: int, seconds: float) -> None:
        if self._hooks["claimed"]:
            self._each("claimed", machines, rows, seconds)

    def handler_started(self, row: ClaimedRow, handler: str) -> None:
        if self._hooks["handler_started"]:
            self._each("handler_started", row, handler)

    def handler_finished(self, row: ClaimedRow, handler: str, seconds: float,
                         raised: BaseException | None) -> None:
        if self._hooks["handler_finished"]:
            self._each("handler_finished", row, handler, seconds, raised)

    def committed(self, row: ClaimedRow, change: Change, version: int, seconds: float) -> None:
        if self._hooks["committed"]:
            self._each("committed", row, change, version, seconds)


class TransitionLog(Quiet):
    """Logs one INFO line per committed change on ``statemachine.worker.transitions``, with
    the fields as ``extra`` (``workflow_id``, ``machine``, ``from_state``, ``to_state``,
    ``kind``, ``status``, ``attempt``, ``version``, ``duration_ms``) so a JSON formatter
    carries them. No state data and no error text: only names and numbers."""

    def committed(self, row: ClaimedRow, change: Change, version: int, seconds: float) -> None:
        if not transitions_log.isEnabledFor(logging.INFO):
            return
        duration_ms = round(seconds * 1000, 3)
        fields = dict(workflow_id=str(change.workflow_id), machine=row.machine,
                      from_state=change.from_state, to_state=change.to_state, kind=change.kind,
                      status=change.status, attempt=change.attempt, version=version,
                      duration_ms=duration_ms)
        moved = (change.to_state if change.from_state == change.to_state
                 else f"{change.from_state} -> {change.to_state}")
        transitions_log.info("workflow %s (%s): %s %s, now %s (attempt %d, %.1f ms)",
                             change.workflow_id, row.machine, change.kind, moved,
                             change.status, change.attempt, duration_ms, extra=fields)
