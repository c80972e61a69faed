"""statemachine: durable workflows as explicit state machines, persisted in your database.

No code replay: the row in ``sm_workflows`` *is* the workflow's state. Declare a `Machine` of attrs
state classes with one `step` handler per state, start workflows with a `Client`, and run them
with a `Worker` inside your own process.
"""

import importlib as _importlib
import inspect as _inspect
import sys as _sys
from typing import TYPE_CHECKING as _TYPE_CHECKING

from .errors import (
    DatabaseUnavailable,
    DataError,
    InvalidArgument,
    InvalidDefinition,
    InvalidOperation,
    LeaseLost,
    PermanentError,
    StateMachineError,
    StoreError,
    UnknownMachine,
    UnknownState,
    WaitTimeout,
    WorkflowNotFound,
)

if _TYPE_CHECKING:
    from ._async_client import AsyncClient
    from ._async_worker import AsyncWorker
    from ._client import Client, HistoryEntry, WorkflowInfo
    from ._clock import Clock, SystemClock
    from ._context import Context
    from ._definition import (
        ChildResult,
        Delayed,
        Failure,
        Machine,
        Poll,
        PollAgain,
        Rerun,
        RetryPolicy,
        later,
        on_cancel,
        on_children,
        on_event,
        on_timeout,
        poll_again,
        rerun,
        state_name,
        step,
    )
    from ._health import WorkerHealth
    from ._limits import Limit, RetryAfter
    from ._metrics import Metrics
    from ._observe import Observer
    from ._runtime import Worker
    from ._schedules import Schedule
    from ._store import Store
    from ._tracing import Tracing

# Where each lazily loaded name is defined. Importing the package loads no database driver, so
# `statemachine._decide` (the engine's rules) can be imported without SQLAlchemy or psycopg; a
# name's module is imported the first time the name is used.
_LAZY = {
    "AsyncClient": "_async_client",
    "AsyncWorker": "_async_worker",
    **dict.fromkeys(["Client", "HistoryEntry", "WorkflowInfo"], "_client"),
    **dict.fromkeys(["Clock", "SystemClock"], "_clock"),
    "Context": "_context",
    **dict.fromkeys(["ChildResult", "Delayed", "Failure", "Machine", "Rerun", "RetryPolicy",
                     "later", "on_cancel", "on_children", "on_event", "on_timeout", "rerun",
                     "state_name", "step"], "_definition"),
    **dict.fromkeys(["Poll", "PollAgain", "poll_again"], "_definition"),
    "WorkerHealth": "_health",
    **dict.fromkeys(["Limit", "RetryAfter"], "_limits"),
    "Metrics": "_metrics",
    "Observer": "_observe",
    "Tracing": "_tracing",
    "Worker": "_runtime",
    "Schedule": "_schedules",
    "Store": "_store",
}

__all__ = [
    "AsyncClient",
    "AsyncWorker",
    "ChildResult",
    "Client",
    "Clock",
    "Context",
    "DataError",
    "DatabaseUnavailable",
    "Delayed",
    "Failure",
    "HistoryEntry",
    "InvalidArgument",
    "InvalidDefinition",
    "InvalidOperation",
    "LeaseLost",
    "Limit",
    "Machine",
    "Metrics",
    "Observer",
    "PermanentError",
    "Poll",
    "PollAgain",
    "Rerun",
    "RetryAfter",
    "RetryPolicy",
    "Schedule",
    "StateMachineError",
    "Store",
    "StoreError",
    "SystemClock",
    "Tracing",
    "UnknownMachine",
    "UnknownState",
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
    "poll_again",
    "rerun",
    "state_name",
    "step",
]

__version__ = "0.1.0"


def _present_as_public(obj: object) -> None:
    """Make every exported class and function say it lives here (``statemachine.Worker``, not
    ``statemachine._runtime.Worker``), as httpx does: reprs, tracebacks and pickles then name the
    public path, which stays put when private modules move.

    A class's string annotations (``from __future__ import annotations``) are resolved against
    its defining module's namespace first: `typing.get_type_hints` (and so attrs and cattrs) look
    them up through ``__module__``, which from now on names this package."""
    module = getattr(obj, "__module__", "")
    if not module.startswith(__name__ + "."):
        return  # not defined in this package (or already renamed): not ours to rename
    if isinstance(obj, type):
        obj.__annotations__ = _resolved_annotations(obj, vars(_sys.modules[module]))
    obj.__module__ = __name__


def _resolved_annotations(cls: type, namespace: dict[str, object]) -> dict[str, object]:
    """`cls`'s own annotations, each string evaluated as `typing.get_type_hints` would; one that
    names a type-checking-only import stays a string (it did not resolve before, either)."""
    resolved: dict[str, object] = {}
    for key, value in _inspect.get_annotations(cls).items():
        if isinstance(value, str):
            try:
                value = eval(value, dict(namespace), dict(vars(cls)))  # noqa: S307  # as typing does
            except NameError:
                pass
        resolved[key] = value
    return resolved


def __getattr__(name: str) -> object:
    """Load a lazily exported name from its module (once; then it is a plain attribute)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    obj = getattr(_importlib.import_module(f"{__name__}.{module}"), name)
    _present_as_public(obj)
    globals()[name] = obj
    return obj


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


for _name in __all__:
    if _name not in _LAZY:
        _present_as_public(globals()[_name])
