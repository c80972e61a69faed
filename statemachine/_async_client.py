"""`AsyncClient`: the `Client` for async code (a FastAPI endpoint, an asyncio service).

Each call is the `Client`'s, run in a thread (``asyncio.to_thread``), so the event loop goes on
serving while the database answers: one set of statements and rules for both clients. `wait` is
the exception: it waits on the loop itself, woken at once by a worker of this process that
finishes the workflow (an `AsyncWorker` or a `Worker` sharing the `Store`), and reads the row
now and then for a worker elsewhere.
"""

from __future__ import annotations

import asyncio
import builtins
import threading
import time
import uuid
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

from ._client import Client, HistoryEntry, WorkflowId, WorkflowInfo, _uuid
from ._definition import Machine
from ._store import Store
from .errors import WaitTimeout

__all__ = ["AsyncClient"]


class _LoopEvent(threading.Event):
    """A watch event (see `Statements.watch`) that also wakes an asyncio waiter on its loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self.woken = asyncio.Event()

    def set(self) -> None:
        super().set()
        try:
            self._loop.call_soon_threadsafe(self.woken.set)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


class AsyncClient:
    """Start, inspect and steer workflows from async code; the same calls as `Client`, each
    awaited. Given a URL (or nothing), it opens its own `Store` and closes it in `close()` or at
    the end of ``async with AsyncClient(url) as client:``; a `Store` passed in stays open.
    Share the worker's `Store` for `wait` to be woken in-process."""

    def __init__(self, store: Store | str | None = None,
                 machines: Iterable[type[Machine] | Machine] = ()) -> None:
        self.sync = Client(store, machines)
        self.store = self.sync.store

    async def close(self) -> None:
        """Close the store this client opened from a URL (a store passed in is left open)."""
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def start(self, machine: type[Machine] | Machine, state: object, *,
                    key: str | None = None) -> uuid.UUID:
        """`Client.start`: start a workflow of `machine` in `state`; its id."""
        return await asyncio.to_thread(self.sync.start, machine, state, key=key)

    async def start_many(self, machine: type[Machine] | Machine, states: Iterable[object], *,
                         keys: Iterable[str | None] | None = None) -> builtins.list[uuid.UUID]:
        """`Client.start_many`: one workflow per state, in one transaction; their ids."""
        states = builtins.list(states)
        keys = None if keys is None else builtins.list(keys)
        return await asyncio.to_thread(self.sync.start_many, machine, states, keys=keys)

    async def get(self, workflow_id: WorkflowId) -> WorkflowInfo:
        """`Client.get`: the workflow now. Raises `WorkflowNotFound`."""
        return await asyncio.to_thread(self.sync.get, workflow_id)

    async def wait(self, workflow_id: WorkflowId, timeout: float = 30.0,
                   poll: float = 0.05) -> WorkflowInfo:
        """Wait until the workflow is finished (done, failed or cancelled) and return it; the
        loop is free meanwhile. Raises `WaitTimeout` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        wid = _uuid(workflow_id)
        finished = _LoopEvent(asyncio.get_running_loop())
        self.store.sql.watch(wid, finished)
        try:
            while True:
                info = await self.get(wid)
                if info.finished:
                    return info
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(f"workflow {info.id} still {info.status} in "
                                      f"{info.state_name} after {timeout}s",
                                      workflow_id=info.id, state=info.state_name)
                try:
                    await asyncio.wait_for(finished.woken.wait(), min(poll, left))
                except TimeoutError:
                    pass
                poll = min(poll * 1.5, 1.0)
        finally:
            self.store.sql.unwatch(wid, finished)

    async def list(self, *, machine: str | None = None, status: str | None = None,
                   state: str | None = None, limit: int = 100) -> builtins.list[WorkflowInfo]:
        """`Client.list`: workflows, newest first."""
        return await asyncio.to_thread(self.sync.list, machine=machine, status=status,
                                       state=state, limit=limit)

    async def history(self, workflow_id: WorkflowId) -> builtins.list[HistoryEntry]:
        """`Client.history`: the workflow's transitions, oldest first."""
        return await asyncio.to_thread(self.sync.history, workflow_id)

    async def send(self, workflow_id: WorkflowId, event: object) -> uuid.UUID:
        """`Client.send`: deliver an event; its id."""
        return await asyncio.to_thread(self.sync.send, workflow_id, event)

    async def send_data(self, workflow_id: WorkflowId, event_type: str, data: Any) -> uuid.UUID:
        """`Client.send_data`: deliver an event given by type name and JSON data; its id."""
        return await asyncio.to_thread(self.sync.send_data, workflow_id, event_type, data)

    async def cancel(self, workflow_id: WorkflowId, *, reason: str = "cancel requested",
                     actor: str | None = None, skip_compensation: bool = False) -> str:
        """`Client.cancel`: ask to cancel the workflow; what was done."""
        return await asyncio.to_thread(self.sync.cancel, workflow_id, reason=reason,
                                       actor=actor, skip_compensation=skip_compensation)

    async def retry(self, workflow_id: WorkflowId, *, reason: str | None = None,
                    actor: str | None = None) -> int:
        """`Client.retry`: run a parked workflow's state again; its new version."""
        return await asyncio.to_thread(self.sync.retry, workflow_id, reason=reason, actor=actor)

    async def force(self, workflow_id: WorkflowId, state: object, *, reason: str = "forced",
                    actor: str | None = None) -> int:
        """`Client.force`: put the workflow in `state`; its new version."""
        return await asyncio.to_thread(self.sync.force, workflow_id, state, reason=reason,
                                       actor=actor)

    async def resolve(self, workflow_id: WorkflowId, *, to: object | None = None,
                      reason: str = "resolved by an operator",
                      actor: str | None = None) -> int:
        """`Client.resolve`: settle an in-doubt workflow; its new version."""
        return await asyncio.to_thread(self.sync.resolve, workflow_id, to=to, reason=reason,
                                       actor=actor)
