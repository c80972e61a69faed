"""The vocabulary between the decision (`_decide`) and its drivers (`_runner`, a test harness).

What a decision is given (`Attempt`), the questions it asks while deciding (`PendingEvents`,
`EnteredAt`, ...), the actions it returns (`RunHandler`, `Commit`, `Settle`, ...), and what a
handler did (`Returned`, `Raised`). All frozen records; `drive` runs a decision from a plain loop.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator
from datetime import datetime
from typing import Any, Literal, Protocol

import attrs

from ._declarations import Failure
from ._records import Change, ChildStart, ClaimedRow
from ._spec import Handler, MachineSpec

__all__ = [
    "Action",
    "Attempt",
    "Call",
    "ChildrenResults",
    "Commit",
    "CountChildren",
    "DatabaseNow",
    "Done",
    "Dump",
    "EnteredAt",
    "EventSeen",
    "Flow",
    "Outcome",
    "PendingEvents",
    "PollingSince",
    "Question",
    "Raised",
    "RecordExternalChange",
    "RejectEvent",
    "ReleaseChildren",
    "Repoll",
    "Returned",
    "RunErrorRoute",
    "RunHandler",
    "Settle",
    "Stop",
    "drive",
]


# -- what the decision is given --------------------------------------------------------------------


@attrs.frozen
class Attempt:
    """One claimed row and what is known about it before deciding."""

    row: ClaimedRow
    spec: MachineSpec
    # The row's state object, or why it did not load (`state` is then None).
    state: object | None
    load_error: str | None
    now: datetime
    worker: str
    lease: float
    # The machine's state encoder (`StateCodec.dump`), for a handler's returned state.
    dump: Dump


# -- questions (yielded by `decide`; the answer is sent back) ------------------------------------


@attrs.frozen
class RecordExternalChange:
    """Write the external-change history row of `row`; answer True, or False if the lease is
    gone."""

    row: ClaimedRow


@attrs.frozen
class PendingEvents:
    """Answer the workflow's pending events, oldest first, as `EventSeen`s."""


@attrs.frozen
class EventSeen:
    """A pending event, decoded by the answerer: `event` is the event object, or `error` says why
    it does not load (None for both when its type is not one of the machine's events)."""

    id: uuid.UUID
    type: str
    created_at: datetime
    event: object | None = None
    error: str | None = None


@attrs.frozen
class RejectEvent:
    """Mark an event rejected, with why (answer None)."""

    event_id: uuid.UUID
    reason: str


@attrs.frozen
class EnteredAt:
    """Answer when the workflow reached `version` (None if unknown)."""

    version: int


@attrs.frozen
class DatabaseNow:
    """Answer the time by the database's clock, which deadlines are decided on (the store's
    clock, a `FakeClock` say, when it was given one); None: use `Attempt.now`."""


@attrs.frozen
class PollingSince:
    """Answer when a polling step's deadline starts: when the workflow reached `version` (it
    entered the state), or the latest operator retry since then (None if unknown)."""

    version: int


@attrs.frozen
class ReleaseChildren:
    """Let queued children go while fewer than `up_to` run (None: all of them); answer None."""

    up_to: int | None


@attrs.frozen
class CountChildren:
    """Answer the workflow's `ChildCounts`."""


@attrs.frozen
class ChildrenResults:
    """Answer the workflow's children as `ChildResult`s, in the order they were started."""


Question = (RecordExternalChange | PendingEvents | RejectEvent | EnteredAt | DatabaseNow
            | PollingSince | ReleaseChildren | CountChildren | ChildrenResults)


# -- actions (what the runner carries out) ---------------------------------------------------------


@attrs.frozen
class Call:
    """How a handler's result is committed: its history kind, cause and side effects."""

    kind: Literal["transition", "reconciled", "cancel"] = "transition"
    cause: str | None = None
    consume_event: uuid.UUID | None = None
    clear_cancel: bool = False
    cancel_children: str | None = None
    # A polling step: when its state was entered (its deadline runs from then), and the
    # database's time when this poll started (deadlines are decided on database time only).
    poll_since: datetime | None = None
    poll_now: datetime | None = None


@attrs.frozen
class RunHandler:
    """Run `handler(state, *args, ctx)` (under its limit) and hand its outcome to
    `after_handler`. For a reconcile handler, `step` is the step it reconciles."""

    row: ClaimedRow
    handler: Handler[Any]
    args: tuple[object, ...] = ()
    call: Call = Call()
    step: Handler[Any] | None = None

    def function(self) -> tuple[Callable[..., Any], tuple[object, ...]]:
        """The function to call as ``fn(machine, state, *args, ctx)``, and its args."""
        return self.handler.fn, self.args


@attrs.frozen
class RunErrorRoute:
    """The step failed for good: run its error route with `failure`, then `after_error_route`."""

    row: ClaimedRow
    handler: Handler[Any]
    failure: Failure

    def function(self) -> tuple[Callable[..., Any], tuple[object, ...]]:
        """The error route, called as ``fn(machine, state, failure, ctx)``."""
        assert self.handler.error_route is not None
        return self.handler.error_route.fn, (self.failure,)


Done = Literal["transition", "finish", "park", "in_doubt", "cancel", "retry", "rerun", "poll"]


@attrs.frozen
class Commit:
    """Commit `change`. `what` says which rule chose it (a handler's new state is "transition")."""

    row: ClaimedRow
    change: Change
    what: Done


@attrs.frozen
class Repoll:
    """A polling step's condition does not hold yet: poll again in `after` seconds, writing no
    history row (the row keeps its version; `wake_at`, `updated_at` and `polls` move, fenced by
    the lease token)."""

    row: ClaimedRow
    after: float


@attrs.frozen
class Settle:
    """Nothing to do yet: sleep in the waiting state until `deadline`, an event in `accepts`, or
    the children of `children` (the runner re-checks for news under the row's lock)."""

    row: ClaimedRow
    deadline: datetime | None
    accepts: tuple[str, ...]
    children: Handler[Any] | None


@attrs.frozen
class Stop:
    """Nothing more to do with this row (its lease is gone)."""

    row: ClaimedRow
    reason: str


Action = RunHandler | RunErrorRoute | Commit | Repoll | Settle | Stop
Flow = Generator[Question, Any, Action]


def drive(flow: Flow, answer: Callable[[Question], Any]) -> Action:
    """Run a decision to its action, answering each question it asks with `answer`."""
    reply: Any = None
    while True:
        try:
            question = flow.send(reply)
        except StopIteration as done:
            action: Action = done.value
            return action
        reply = answer(question)


# -- outcomes of a handler -------------------------------------------------------------------------


@attrs.frozen
class Returned:
    """The handler returned `value`; `children` are those it started with ``ctx.start_child``."""

    value: object
    children: tuple[ChildStart, ...] = ()


@attrs.frozen
class Raised:
    """The handler raised `error`."""

    error: BaseException


Outcome = Returned | Raised


class Dump(Protocol):
    """A machine's state encoder (`StateCodec.dump`): (stored name, data), or `DataError`."""

    def __call__(self, state: object, /) -> tuple[str, dict[str, Any]]: ...
