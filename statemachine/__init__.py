"""statemachine: durable workflows as explicit state machines, persisted in your database.

No code replay: the row in ``sm_workflows`` *is* the workflow's state. Declare a `Machine` of attrs
state classes with one `step` handler per state, start workflows with a `Client`, and run them
with a `Worker` inside your own process.
"""

from .client import Client, HistoryEntry, WorkflowInfo
from .clock import Clock, SystemClock
from .context import Context
from .definition import Failure, Machine, RetryPolicy, state_name, step
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
from .runtime import Worker
from .store import Store

__all__ = [
    "Client",
    "Clock",
    "Context",
    "DataError",
    "Failure",
    "HistoryEntry",
    "InvalidDefinition",
    "InvalidOperation",
    "LeaseLost",
    "Machine",
    "PermanentError",
    "RetryPolicy",
    "StateMachineError",
    "Store",
    "StoreError",
    "SystemClock",
    "UnknownMachine",
    "WaitTimeout",
    "Worker",
    "WorkflowInfo",
    "WorkflowNotFound",
    "state_name",
    "step",
]

__version__ = "0.1.0"
