"""Starting, inspecting and steering workflows from application code (and the CLI)."""

from __future__ import annotations

import builtins
import time
import uuid
from collections.abc import Iterable
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import attrs

from ._definition import Machine, MachineSpec, state_name
from ._operator import force_change
from ._records import HistoryKind, Status
from ._schema import FINISHED_STATUSES
from ._serde import Codecs, StateCodec
from ._store import Change, Store
from .errors import (
    DataError,
    InvalidArgument,
    InvalidOperation,
    UnknownMachine,
    UnknownState,
    WaitTimeout,
    WorkflowNotFound,
)

__all__ = ["Client", "HistoryEntry", "WorkflowInfo"]

WorkflowId = uuid.UUID | str


@attrs.frozen
class WorkflowInfo:
    """A workflow as stored now. `state` is the loaded state object, or None when this process
    does not know the machine or the stored data does not fit (then `load_error` says why)."""

    id: uuid.UUID
    machine: str
    state_name: str
    data: Any
    status: str
    version: int
    attempt: int
    wake_at: datetime | None
    key: str | None
    parent_id: uuid.UUID | None
    last_error: str | None
    lease_owner: str | None
    created_at: datetime
    updated_at: datetime
    state: object | None = None
    load_error: str | None = None

    @property
    def state_type(self) -> type | None:
        """The class of the loaded state (None when it did not load)."""
        return None if self.state is None else type(self.state)

    @property
    def finished(self) -> bool:
        """Whether the workflow has reached done, failed (parked) or cancelled."""
        return self.status in FINISHED_STATUSES


@attrs.frozen
class HistoryEntry:
    """One row of `sm_history`: a committed change to the workflow."""

    version: int
    kind: str
    from_state: str | None
    to_state: str
    data: Any
    status: str
    cause: str | None
    attempt: int
    error: str | None
    worker: str | None
    started_at: datetime | None
    finished_at: datetime


class Client:
    """Start and steer workflows. Pass the machines whose states you want loaded as objects;
    machines defined in imported modules are found by name too.

    Given a URL (or nothing: the default database), the client opens its own `Store` and closes
    it in `close()` or at the end of ``with Client(url) as client:``; a `Store` passed in is the
    caller's, and stays open."""

    def __init__(self, store: Store | str | None = None,
                 machines: Iterable[type[Machine] | Machine] = ()) -> None:
        self._owns_store = not isinstance(store, Store)
        self.store = store if isinstance(store, Store) else Store(store)
        self._specs = [m.spec for m in machines]
        self.codecs = Codecs(self._specs)

    def close(self) -> None:
        """Close the store this client opened from a URL (a store passed in is left open)."""
        if self._owns_store:
            self.store.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def codec_for(self, machine: str, *, workflow_id: uuid.UUID | None = None) -> StateCodec:
        """The codec of `machine`; `UnknownMachine` if this process does not know it."""
        codec = self.codecs.get(machine)
        if codec is None:
            about = f" (the machine of workflow {workflow_id})" if workflow_id else ""
            raise UnknownMachine(
                f"machine {machine}{about} is not known to this process (pass the machine to "
                "Client, or --app on the command line)", machine=machine, workflow_id=workflow_id)
        return codec

    # -- starting ----------------------------------------------------------------------------

    def start(
        self, machine: type[Machine] | Machine, state: object, *, key: str | None = None
    ) -> uuid.UUID:
        """Start a workflow of `machine` in `state` (its initial state); returns the id.

        With a `key`, starting again with the same key and the same state returns the first
        workflow's id and starts nothing (safe to call from a retried request handler); the
        same key with a different state raises `InvalidOperation` naming the existing
        workflow (its ``workflow_id``)."""
        spec = machine.spec
        _check_initial(spec.name, spec.initial, state)
        codec = self.codecs.of(spec)
        name, data = codec.dump(state)
        workflow_id, created = self.store.sql.insert_workflow(
            machine=spec.name, state=name, data=data, key=key)
        if not created:
            self._check_same_start(workflow_id, spec.name, key, name, data)
        self.store.sql.notify()
        return workflow_id

    def start_many(
        self, machine: type[Machine] | Machine, states: Iterable[object], *,
        keys: Iterable[str | None] | None = None,
    ) -> list[uuid.UUID]:
        """Start one workflow per state in a single transaction; returns their ids in order.

        `keys`, one per state (None for no key), make each start idempotent as in `start`: a
        key already used with the same state returns the existing workflow's id, with a
        different state it raises `InvalidOperation` naming that workflow (and nothing of
        this call is started)."""
        spec = machine.spec
        codec = self.codecs.of(spec)
        rows = []
        for s in states:
            _check_initial(spec.name, spec.initial, s)
            rows.append(codec.dump(s))
        if keys is None:
            ids = self.store.sql.insert_workflows(spec.name, rows)
        else:
            key_list = builtins.list(keys)
            if len(key_list) != len(rows):
                raise InvalidArgument(f"start_many got {len(rows)} states but {len(key_list)} "
                                      "keys (give one key, or None, per state)")
            ids = self.store.transaction(lambda conn: self._start_keyed(
                conn, spec.name, rows, key_list))
        self.store.sql.notify()
        return ids

    def _start_keyed(self, conn: Any, machine: str, rows: builtins.list[tuple[str, Any]],
                     keys: builtins.list[str | None]) -> builtins.list[uuid.UUID]:
        ids = []
        for (name, data), key in zip(rows, keys, strict=True):
            wid, created = self.store.sql.insert_workflow_in(
                conn, machine=machine, state=name, data=data, key=key)
            if not created:  # raising rolls back the whole call
                self._check_same_start(wid, machine, key, name, data, conn=conn)
            ids.append(wid)
        return ids

    def _check_same_start(self, existing: uuid.UUID, machine: str, key: str | None,
                          state: str, data: Any, *, conn: Any = None) -> None:
        """`InvalidOperation` unless the workflow already started with `key` began in the same
        state with the same data (so a retried start is harmless and a clash is not)."""
        first = self.store.sql.first_state(existing, conn=conn)
        if first is None or first == (state, data):
            return
        raise InvalidOperation(
            f"start key {key!r} of machine {machine} is already used by workflow {existing}, "
            f"which started in {first[0]} with different data; use another key, or the same "
            "data to get that workflow back",
            workflow_id=existing, state=first[0])

    # -- reading -----------------------------------------------------------------------------

    def get(self, workflow_id: WorkflowId) -> WorkflowInfo:
        """The workflow now. Raises `WorkflowNotFound`."""
        wid = _uuid(workflow_id)
        row = self.store.sql.get(wid)
        if row is None:
            raise WorkflowNotFound(f"no workflow {wid}", workflow_id=wid)
        return self._info(row)

    def wait(self, workflow_id: WorkflowId, timeout: float = 30.0,
             poll: float = 0.02) -> WorkflowInfo:
        """Block until the workflow is finished (done, failed or cancelled); returns it.
        Raises `WaitTimeout` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        wid = _uuid(workflow_id)
        # A worker in this process says when it finishes the workflow; others are polled for.
        finished = self.store.sql.watch(wid)
        try:
            while True:
                info = self.get(wid)
                if info.finished:
                    return info
                if time.monotonic() >= deadline:
                    raise WaitTimeout(f"workflow {info.id} still {info.status} in "
                                      f"{info.state_name} after {timeout}s",
                                      workflow_id=info.id, state=info.state_name)
                finished.wait(min(poll, max(0.0, deadline - time.monotonic())))
                poll = min(poll * 1.5, 0.5)
        finally:
            self.store.sql.unwatch(wid, finished)

    def list(self, *, machine: str | None = None, status: str | None = None,
             state: str | None = None, limit: int = 100) -> builtins.list[WorkflowInfo]:
        """Workflows, newest first."""
        return [self._info(r) for r in self.store.sql.list_workflows(machine=machine, status=status,
                                                       state=state, limit=limit)]

    def history(self, workflow_id: WorkflowId) -> builtins.list[HistoryEntry]:
        """Every committed change of the workflow, oldest first."""
        wid = _uuid(workflow_id)
        rows = self.store.sql.history(wid)
        if not rows and self.store.sql.get(wid) is None:
            raise WorkflowNotFound(f"no workflow {wid}", workflow_id=wid)
        return [HistoryEntry(r.version, r.kind, r.from_state, r.to_state, r.data, r.status,
                             r.cause, r.attempt, r.error, r.worker, r.started_at, r.finished_at)
                for r in rows]

    # -- steering ----------------------------------------------------------------------------

    def retry(self, workflow_id: WorkflowId, *, reason: str | None = None,
              actor: str | None = None) -> int:
        """Resume a parked (failed) workflow from the state it is in, with fresh attempts. For
        one parked in doubt, this says the doubtful attempt did not happen: the handler runs.
        History records `reason` (default ``retry requested``) and `actor` (who asked)."""
        return self._change(workflow_id, ("failed",), "retry", "ready", wake_after=0.0,
                            cause=reason or "retry requested", actor=actor)

    def resolve(self, workflow_id: WorkflowId, *, to: object | None = None,
                reason: str = "resolved by an operator", actor: str | None = None) -> int:
        """Settle a workflow parked in doubt: ``to=None`` re-runs the step (the attempt did not
        take effect), ``to=SomeState(...)`` moves on as if it did. Returns the new version.
        History records `reason` and `actor` (who did it)."""
        info = self.get(workflow_id)
        if info.status != "failed":
            raise InvalidOperation(f"cannot resolve workflow {info.id}: it is {info.status}, "
                                   "not parked", workflow_id=info.id, state=info.state_name,
                                   status=info.status)
        if to is None:
            return self.retry(info.id, reason=reason, actor=actor)
        return self.force(info.id, to, reason=reason, actor=actor)

    def cancel(self, workflow_id: WorkflowId, *, reason: str = "cancel requested",
               actor: str | None = None, skip_compensation: bool = False) -> str:
        """Cancel a workflow, whatever it is doing. Returns ``"cancelled"`` when it ended at once
        (it was not running and its machine has no cancel route for its state), else
        ``"requested"``: a worker carries it out, running the machine's cancel route
        (compensation) if it has one, after a running handler finishes. Children are cancelled
        with their parent. Every request leaves a history row with `reason` (say who asked):
        ``cancel`` when carried out (directly or by the cancel route), ``cancel_superseded``
        when the workflow finished before a worker could carry it out.

        A parked (failed) workflow is cancelled the same way: its cancel route runs. When the
        route cannot run (the stored state does not load), this raises `InvalidOperation`
        naming the route, unless `skip_compensation` is true: then the workflow ends
        ``cancelled`` at once without its compensation, and history says so. Skipping the
        compensation of a workflow whose handler is running now is refused (try again once the
        handler has finished). `reason` is followed by ``(by ACTOR)`` when `actor` says who
        asked."""
        wid = _uuid(workflow_id)
        if actor:
            reason = f"{reason} (by {actor})"
        info = self.get(wid)
        codec = self.codecs.get(info.machine)
        spec = codec.spec if codec is not None else None
        route = spec.cancel if spec is not None else None
        applies = False
        if spec is not None and route is not None:
            # A state name the machine does not know: only a route for every state applies.
            applies = spec.cancel_applies(info.state_type or spec.states.get(info.state_name,
                                                                             object))
        if skip_compensation:
            if info.status == "running":
                raise InvalidOperation(
                    f"cannot skip the compensation of workflow {wid}: a handler of "
                    f"{info.state_name} is running now; cancel it again once it has finished",
                    workflow_id=wid, state=info.state_name, status=info.status)
            skipped = f" (compensation {route.name!r} skipped)" if applies and route else ""
            outcome = self.store.sql.request_cancel(
                wid, reason + (skipped or " (compensation skipped)"), direct=True)
        else:
            if applies and info.state is None and route is not None:
                raise InvalidOperation(
                    f"cannot cancel workflow {wid} through its cancel route {route.name!r}: "
                    f"its state {info.state_name} does not load ({info.load_error}). Fix the "
                    "data, or cancel with skip_compensation=True (--skip-compensation) to end "
                    "it without compensation", workflow_id=wid, state=info.state_name,
                    status=info.status)
            # Unknown machine (no codec): a worker, which knows it, decides.
            direct = codec is not None and not applies
            outcome = self.store.sql.request_cancel(wid, reason, direct=direct)
        self.store.sql.notify()
        return outcome

    def send(self, workflow_id: WorkflowId, event: object) -> uuid.UUID:
        """Send `event` to a workflow; returns the event's id. The event waits in the
        workflow's inbox (in order) until a state that accepts it consumes it, atomically with
        the transition it causes. Raises `DataError` for an event type the machine does not
        accept anywhere or data that does not fit, `InvalidOperation` if it has finished."""
        wid = _uuid(workflow_id)
        info = self.get(wid)
        if info.finished:
            raise InvalidOperation(f"workflow {wid} is {info.status}: it accepts no more events",
                                   workflow_id=wid, state=info.state_name, status=info.status)
        codec = self.codec_for(info.machine, workflow_id=wid)
        name, data = codec.dump_event(event)
        event_id = self.store.sql.insert_event(wid, name, data)
        self.store.sql.notify()
        return event_id

    def send_data(self, workflow_id: WorkflowId, event_type: str, data: Any) -> uuid.UUID:
        """`send` an event given by type name and JSON data (what the CLI does)."""
        info = self.get(workflow_id)
        codec = self.codec_for(info.machine, workflow_id=info.id)
        return self.send(info.id, codec.load_event(event_type, data))

    def force(self, workflow_id: WorkflowId, state: object, *, reason: str = "forced",
              actor: str | None = None) -> int:
        """Put the workflow in `state` and make it due now, whatever it was doing (an in-flight
        handler's result is then discarded). The Python twin of the SQL in
        docs/how-to/operating-by-sql.md. History records `reason` and `actor` (who did it)."""
        info = self.get(workflow_id)
        codec = self.codec_for(info.machine, workflow_id=info.id)
        self._check_state_of(codec.spec, state, info)
        name, data = codec.dump(state)
        change = force_change(
            workflow_id=info.id, version=info.version, from_state=info.state_name, to_state=name,
            data=data, terminal=codec.spec.is_terminal(type(state)), parent_id=info.parent_id,
            reason=reason, actor=actor)
        done = self.store.sql.commit(change)
        if done is None:
            raise InvalidOperation(f"workflow {info.id} changed while forcing it; try again",
                                   workflow_id=info.id, state=info.state_name,
                                   status=info.status)
        self.store.sql.notify()
        return done.version

    def _change(self, workflow_id: WorkflowId, allowed: tuple[str, ...], kind: HistoryKind,
                status: Status, *, wake_after: float | None, cause: str,
                actor: str | None = None) -> int:
        for _ in range(5):
            info = self.get(workflow_id)
            if info.status not in allowed:
                raise InvalidOperation(
                    f"cannot {kind} workflow {info.id}: it is {info.status} "
                    f"(only {', '.join(allowed)} workflows can be)",
                    workflow_id=info.id, state=info.state_name, status=info.status)
            done = self.store.sql.commit(Change(
                workflow_id=info.id, version=info.version, expect_status=allowed, kind=kind,
                from_state=info.state_name, to_state=info.state_name, data=info.data,
                status=status, attempt=info.attempt, wake_after=wake_after, new_state=False,
                reset_attempts=True, cause=cause, clear_in_doubt=kind == "retry",
                worker=actor))
            if done is not None:
                self.store.sql.notify()
                return done.version
        raise InvalidOperation(f"workflow {info.id} kept changing; {kind} not applied (try again)",
                               workflow_id=info.id, state=info.state_name, status=info.status)

    def _check_state_of(self, spec: MachineSpec, state: object, info: WorkflowInfo) -> None:
        """`InvalidArgument` unless `state` is a state of `spec`, the workflow's machine."""
        cls = type(state)
        if spec.states.get(state_name(cls)) is cls:
            return
        name = cls.__name__
        other = next((o.name for o in self._specs if o.states.get(state_name(cls)) is cls), None)
        whose = (f"{name} is a state of machine {other}, not" if other
                 else f"{name} is not a state of")
        raise InvalidArgument(
            f"cannot force workflow {info.id} into {name}: {whose} machine {spec.name} (its "
            f"states: {', '.join(sorted(spec.states))})",
            workflow_id=info.id, state=info.state_name)

    def _info(self, row: Any) -> WorkflowInfo:
        state: object | None = None
        load_error: str | None = None
        codec = self.codecs.get(row.machine)
        if codec is None:
            load_error = f"machine {row.machine} is not known to this process"
        else:
            try:
                state = codec.load(row.state, row.data, workflow=row.id)
            except (DataError, UnknownMachine, UnknownState) as e:
                load_error = str(e)
        return WorkflowInfo(
            id=row.id, machine=row.machine, state_name=row.state, data=row.data,
            status=row.status, version=row.version, attempt=row.attempt, wake_at=row.wake_at,
            key=row.key, parent_id=row.parent_id, last_error=row.last_error,
            lease_owner=row.lease_owner, created_at=row.created_at, updated_at=row.updated_at,
            state=state, load_error=load_error)


def _check_initial(machine: str, initial: type, state: object) -> None:
    if type(state) is not initial:
        raise InvalidArgument(
            f"machine {machine} starts in {initial.__name__}, not {type(state).__name__}",
            state=state_name(type(state)))


def _uuid(value: WorkflowId) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except ValueError:
        raise WorkflowNotFound(f"{value!r} is not a workflow id (a UUID)") from None
