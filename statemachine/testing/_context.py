"""Unit-testing one handler: `context` builds the `Context` a worker would pass, `call` runs the
handler of a state (or of an event, a timeout, an error route) with it, with no database."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .._clock import Clock
from .._context import Context
from .._definition import Failure, Machine
from ..errors import InvalidArgument
from ._clock import FakeClock

__all__ = ["call", "context"]


def context(
    machine: Machine | type[Machine] | str = "test",
    state: object | str = "State",
    *,
    workflow_id: uuid.UUID | None = None,
    attempt: int = 1,
    version: int = 1,
    idempotency_key: str | None = None,
    clock: Clock | None = None,
    now: datetime | None = None,
    worker: str = "test-worker",
    extend_lease: Callable[[float], None] | None = None,
    cancel_requested: str | None = None,
    start_child: Callable[[Any, object, str | None], uuid.UUID] | None = None,
) -> Context:
    """A `Context` for calling a handler directly, with the defaults a first attempt has.

    `machine` and `state` name the machine and the current state (a class, an instance or a
    name). The idempotency key defaults to ``"<workflow_id>:<version>"``, as a worker makes it.
    Time comes from `clock`, else a `FakeClock` at `now` (default 2030-01-01 UTC).
    `extend_lease` receives ``ctx.extend_lease(seconds)`` calls (default: accepted, ignored);
    `cancel_requested` is what ``ctx.cancel_requested`` answers. ``ctx.connection`` raises, as
    it does for a handler that is not transactional."""
    if attempt < 1 or version < 1:
        raise InvalidArgument(f"context(attempt={attempt}, version={version}): both start at 1")
    if clock is not None and now is not None:
        raise InvalidArgument("context() takes clock= or now=, not both")
    machine_name = machine if isinstance(machine, str) else machine.spec.name
    if isinstance(state, str):
        state_name = state
    else:
        state_name = (state if isinstance(state, type) else type(state)).__name__
    wid = workflow_id or uuid.uuid4()
    return Context(
        workflow_id=wid, machine=machine_name, state=state_name, attempt=attempt,
        version=version, idempotency_key=idempotency_key or f"{wid}:{version}", worker=worker,
        log=logging.LoggerAdapter(logging.getLogger(f"statemachine.workflow.{machine_name}"),
                                  {"workflow_id": str(wid), "state": state_name}),
        clock=clock or FakeClock(now), extend=extend_lease or (lambda _seconds: None),
        start_child=start_child,
        cancel_check=(lambda: cancel_requested) if cancel_requested is not None else None)


def call(
    machine: Machine,
    state: object,
    ctx: Context | None = None,
    *,
    event: object | None = None,
    timeout: bool = False,
    failure: Failure | None = None,
) -> Any:
    """Run the handler of `state` on `machine` (an instance, with its dependencies) and return
    what it returned (a state, or a `Delayed` one); what it raises propagates.

    Which handler: the state's step; with `event`, the state's handler of that event's class;
    with ``timeout=True``, its timeout handler; with `failure`, the error route of its step.
    `ctx` defaults to ``context(machine, state)``."""
    spec = type(machine).spec
    cls = type(state)
    if cls not in spec.states.values():
        raise InvalidArgument(f"{cls.__name__} is not a state of machine {spec.name}")
    ctx = ctx or context(machine, state)
    chosen = [event is not None, timeout, failure is not None]
    if sum(chosen) > 1:
        raise InvalidArgument("call() takes at most one of event=, timeout=True and failure=")
    if event is not None:
        handler = spec.events.get(cls, {}).get(type(event))
        if handler is None:
            accepted = ", ".join(e.__name__ for e in spec.events.get(cls, {})) or "no events"
            raise InvalidArgument(f"{cls.__name__} does not accept {type(event).__name__} "
                                  f"(it accepts {accepted})")
        return handler.fn(machine, state, event, ctx)
    if timeout:
        handler = spec.timeouts.get(cls)
        if handler is None:
            raise InvalidArgument(f"{cls.__name__} has no timeout handler")
        return handler.fn(machine, state, ctx)
    step = spec.steps.get(cls)
    if step is None:
        kind = "a terminal state" if spec.is_terminal(cls) else "a waiting state"
        raise InvalidArgument(f"{cls.__name__} has no step handler: it is {kind} (pass event= "
                              "or timeout=True for a waiting state)")
    if failure is not None:
        if step.error_route is None:
            raise InvalidArgument(f"step {step.name} of {cls.__name__} has no error route")
        return step.error_route.fn(machine, state, failure, ctx)
    return step.fn(machine, state, ctx)
