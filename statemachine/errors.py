"""Every error statemachine raises, under one root.

    StateMachineError
    ├── InvalidDefinition        a machine or state class breaks a rule (raised at import)
    ├── DataError                stored or supplied data does not fit its state class
    ├── StoreError               the database refused or failed (driver error kept as __cause__)
    │   └── LeaseLost            a compare-and-set found the row changed under the worker
    ├── WorkflowNotFound         no workflow with that id
    ├── InvalidOperation         the workflow's status does not allow that (retry a running one)
    ├── WaitTimeout              `wait` gave up before the workflow finished
    └── UnknownMachine           a stored machine or state name this process does not know

Handlers signal intent with exceptions that are not errors of the library:
`PermanentError` fails the transition without retrying it.
"""

from __future__ import annotations

__all__ = [
    "DataError",
    "InvalidDefinition",
    "InvalidOperation",
    "LeaseLost",
    "PermanentError",
    "StateMachineError",
    "StoreError",
    "UnknownMachine",
    "WaitTimeout",
    "WorkflowNotFound",
]


class StateMachineError(Exception):
    """A statemachine error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())


class InvalidDefinition(StateMachineError):
    """The machine definition is invalid."""


class DataError(StateMachineError):
    """Data does not fit its state or event class."""


class StoreError(StateMachineError):
    """The database failed."""


class LeaseLost(StoreError):
    """The workflow changed under this worker (lease expired or an operator changed the row)."""


class WorkflowNotFound(StateMachineError):
    """No workflow with that id."""


class InvalidOperation(StateMachineError):
    """The workflow's status does not allow that operation."""


class WaitTimeout(StateMachineError):
    """The workflow did not finish in time."""


class UnknownMachine(StateMachineError):
    """The machine or state name is not known to this process."""


class PermanentError(Exception):
    """Raise (or subclass) in a handler to fail the transition at once, without retries."""
