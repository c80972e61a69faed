"""What a handler gets besides its state: who it is, which attempt, a fresh clock, a logger."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs

from ._clock import Clock
from ._records import ChildStart, ClaimedRow
from ._serde import Codecs
from .errors import InvalidArgument, InvalidOperation

if TYPE_CHECKING:
    from sqlalchemy import Connection

__all__ = ["Context", "Services", "child_starter", "context_for"]


@attrs.define(slots=True)
class Context:
    """Passed to every handler as its last argument.

    `idempotency_key` is the same for every retry of this transition and different for the next
    one: pass it to APIs that deduplicate (an ``Idempotency-Key`` header). `now()` reads the clock
    each time it is called; nothing about time is replayed.
    """

    workflow_id: uuid.UUID
    machine: str
    state: str
    attempt: int
    version: int
    idempotency_key: str
    worker: str
    log: logging.LoggerAdapter[logging.Logger]
    _clock: Clock = attrs.field(alias="clock")
    _extend: Callable[[float], None] = attrs.field(alias="extend")
    _start_child: Callable[[Any, object, str | None], uuid.UUID] | None = attrs.field(
        alias="start_child", default=None)
    _cancel_check: Callable[[], str | None] | None = attrs.field(alias="cancel_check",
                                                                default=None)
    _connection: Connection | None = attrs.field(alias="connection", default=None)

    def now(self) -> datetime:
        """The current time (aware UTC), read afresh."""
        return self._clock.now()

    def extend_lease(self, seconds: float) -> None:
        """Hold this workflow for `seconds` from now, for an action that will take long. (Leases
        are also renewed in the background while the worker process is alive.)

        Raises `LeaseLost` when this worker no longer holds the workflow (its lease expired and
        another worker took it over, or an operator changed the row): the handler should stop,
        since whatever it returns will be discarded."""
        self._extend(seconds)

    async def extend_lease_async(self, seconds: float) -> None:
        """`extend_lease` for an ``async def`` handler: the database call runs in a thread, so
        the event loop goes on running other handlers meanwhile. Raises `LeaseLost` likewise."""
        await asyncio.to_thread(self._extend, seconds)

    async def cancel_requested_async(self) -> str | None:
        """`cancel_requested` for an ``async def`` handler, read in a thread (the event loop is
        not blocked by the database round trip)."""
        return await asyncio.to_thread(lambda: self.cancel_requested)

    def start_child(self, machine: Any, state: object, *, key: str | None = None) -> uuid.UUID:
        """Start a child workflow of `machine` in `state` when this transition commits (never
        before, never twice: a retried attempt starts its own children, the failed one's are
        never written). Returns the child's id. Return a state with an `@on_children` handler to
        wait for the children."""
        if self._start_child is None:
            raise InvalidOperation("children can only be started from a handler run by a worker",
                                   workflow_id=self.workflow_id, state=self.state)
        return self._start_child(machine, state, key)

    @property
    def connection(self) -> Connection:
        """The open transaction of a ``@step(transactional=True)`` handler: what it writes here
        commits atomically with the workflow's next state (and rolls back if that fails)."""
        if self._connection is None:
            raise InvalidOperation(f"ctx.connection: handler of {self.state} is not "
                                   "transactional; declare it @step(transactional=True)",
                                   workflow_id=self.workflow_id, state=self.state)
        return self._connection

    @property
    def cancel_requested(self) -> str | None:
        """Who asked to cancel this workflow and why, if someone did while the handler runs
        (read from the database on each access). Finish or stop early; the cancel route follows."""
        return self._cancel_check() if self._cancel_check is not None else None


@attrs.frozen
class Services:
    """What a worker lends one attempt's handler: its name, the clock, and the calls behind
    ``ctx.extend_lease``, ``ctx.start_child``, ``ctx.cancel_requested`` and ``ctx.connection``."""

    worker: str
    clock: Clock
    extend: Callable[[float], None]
    start_child: Callable[[Any, object, str | None], uuid.UUID] | None = None
    cancel_check: Callable[[], str | None] | None = None
    connection: Connection | None = None


# machine name -> its handlers' logger
_loggers: dict[str, logging.Logger] = {}


def context_for(row: ClaimedRow, services: Services) -> Context:
    """The `Context` of one attempt of `row`'s current transition."""
    workflow_id = str(row.id)
    logger = _loggers.get(row.machine)
    if logger is None:  # (getLogger takes logging's lock: once per machine, not per attempt)
        logger = _loggers[row.machine] = logging.getLogger(f"statemachine.workflow.{row.machine}")
    return Context(
        workflow_id=row.id, machine=row.machine, state=row.state, attempt=row.attempt,
        version=row.version, idempotency_key=f"{workflow_id}:{row.entered_version}",
        worker=services.worker,
        log=logging.LoggerAdapter(logger, {"workflow_id": workflow_id, "state": row.state}),
        clock=services.clock, extend=services.extend, start_child=services.start_child,
        cancel_check=services.cancel_check, connection=services.connection)


def child_starter(codecs: Codecs, row: ClaimedRow,
                  children: list[ChildStart]) -> Callable[[Any, object, str | None], uuid.UUID]:
    """What ``ctx.start_child`` calls: checks and encodes the child's first state (`DataError`
    for a field of the wrong type) and collects it into `children`, committed with the
    transition."""

    def start_child(machine: Any, state: object, key: str | None) -> uuid.UUID:
        spec = machine.spec
        if type(state) is not spec.initial:
            raise InvalidArgument(f"machine {spec.name} starts in {spec.initial.__name__}, "
                                  f"not {type(state).__name__}", workflow_id=row.id,
                                  state=row.state)
        name, data = codecs.of(spec).dump(state)
        child = ChildStart(id=uuid.uuid4(), machine=spec.name, state=name, data=data, key=key)
        children.append(child)
        return child.id

    return start_child
