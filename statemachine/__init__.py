"""statemachine: durable workflows as explicit state machines, persisted in your database.

No code replay: the row in ``sm_workflows`` *is* the workflow's state. Declare a `Machine` of attrs
state classes with one `step` handler per state, start workflows with a `Client`, and run them
with a `Worker` inside your own process.
"""

from ._client import Client, HistoryEntry, WorkflowInfo
from ._clock import Clock, SystemClock
from ._context import Context
from ._definition import (
    ChildResult,
    Delayed,
    Failure,
    Machine,
    Rerun,
    RetryPolicy,
    later,
    on_cancel,
    on_children,
    on_event,
    on_timeout,
    rerun,
    state_name,
    step,
)
from ._health import WorkerHealth
from ._limits import Limit, RetryAfter
from ._runtime import Worker
from ._schedules import Schedule
from ._store import Store
from .errors import (
    DataError,
    InvalidDefinition,
    InvalidOperation,
    LeaseLost,
    PermanentError,
    StateMachineError,
    StoreError,
    UnknownMachine,
    WaitTimeout,
    WorkflowNotFound,
)

__all__ = [
    "ChildResult",
    "Client",
    "Clock",
    "Context",
    "DataError",
    "Delayed",
    "Failure",
    "HistoryEntry",
    "InvalidDefinition",
    "InvalidOperation",
    "LeaseLost",
    "Limit",
    "Machine",
    "PermanentError",
    "Rerun",
    "RetryAfter",
    "RetryPolicy",
    "Schedule",
    "StateMachineError",
    "Store",
    "StoreError",
    "SystemClock",
    "UnknownMachine",
    "WaitTimeout",
    "Worker",
    "WorkerHealth",
    "WorkflowInfo",
    "WorkflowNotFound",
    "later",
    "on_cancel",
    "on_children",
    "on_event",
    "on_timeout",
    "rerun",
    "state_name",
    "step",
]

__version__ = "0.1.0"
