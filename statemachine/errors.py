"""Every error statemachine raises, under one root.

    StateMachineError
    ├── InvalidDefinition        a machine or state class breaks a rule (raised at import)
    ├── InvalidArgument          a call got a value it cannot use (also a ValueError)
    ├── DataError                stored or supplied data does not fit its state class (ValueError)
    ├── StoreError               the database refused or failed (driver error kept as __cause__)
    │   ├── DatabaseUnavailable  the server cannot be reached or dropped the connection
    │   └── LeaseLost            the worker no longer holds the row (ctx.extend_lease)
    ├── WorkflowNotFound         no workflow with that id, or not a UUID (also a LookupError)
    ├── InvalidOperation         the workflow's status does not allow that (retry a running one)
    ├── WaitTimeout              `wait` gave up before the workflow finished (a TimeoutError)
    ├── UnknownMachine           a machine name this process does not know (a LookupError)
    └── UnknownState             a state name its machine does not have (a LookupError)

Every error carries the fields that apply (``workflow_id``, ``state``, ``sqlstate``, ...) so a
caller can act on it without parsing the message.

Handlers signal intent with exceptions that are not errors of the library:
`PermanentError` fails the transition without retrying it.
"""

from __future__ import annotations

import uuid

__all__ = [
    "DataError",
    "DatabaseUnavailable",
    "InvalidArgument",
    "InvalidDefinition",
    "InvalidOperation",
    "LeaseLost",
    "PermanentError",
    "StateMachineError",
    "StoreError",
    "UnknownMachine",
    "UnknownState",
    "WaitTimeout",
    "WorkflowNotFound",
]


class StateMachineError(Exception):
    """A statemachine error."""

    workflow_id: uuid.UUID | None
    state: str | None

    def __init__(
        self,
        message: str | None = None,
        *,
        workflow_id: uuid.UUID | None = None,
        state: str | None = None,
    ) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())
        self.workflow_id = workflow_id
        self.state = state


class InvalidDefinition(StateMachineError):
    """The machine definition is invalid."""

    def __init__(
        self, message: str | None = None, *, machine: str | None = None, state: str | None = None
    ) -> None:
        super().__init__(message, state=state)
        self.machine = machine


class InvalidArgument(StateMachineError, ValueError):
    """An argument has a value that cannot be used."""


class DataError(StateMachineError, ValueError):
    """Data does not fit its state or event class."""


class StoreError(StateMachineError):
    """The database failed."""

    def __init__(
        self,
        message: str | None = None,
        *,
        sqlstate: str | None = None,
        workflow_id: uuid.UUID | None = None,
        state: str | None = None,
    ) -> None:
        super().__init__(message, workflow_id=workflow_id, state=state)
        self.sqlstate = sqlstate


class DatabaseUnavailable(StoreError):
    """The database cannot be reached, or it dropped the connection."""


class LeaseLost(StoreError):
    """This worker no longer holds the workflow: its lease expired and another worker took it,
    or an operator changed the row (raised by `Context.extend_lease`)."""

    def __init__(
        self,
        message: str | None = None,
        *,
        workflow_id: uuid.UUID | None = None,
        state: str | None = None,
        version: int | None = None,
    ) -> None:
        super().__init__(message, workflow_id=workflow_id, state=state)
        self.version = version


class WorkflowNotFound(StateMachineError, LookupError):
    """No workflow with that id."""


class InvalidOperation(StateMachineError):
    """The workflow's status does not allow that operation."""

    def __init__(
        self,
        message: str | None = None,
        *,
        workflow_id: uuid.UUID | None = None,
        state: str | None = None,
        status: str | None = None,
    ) -> None:
        super().__init__(message, workflow_id=workflow_id, state=state)
        self.status = status


class WaitTimeout(StateMachineError, TimeoutError):
    """The workflow did not finish in time."""


class UnknownMachine(StateMachineError, LookupError):
    """The machine name is not known to this process."""

    def __init__(
        self,
        message: str | None = None,
        *,
        machine: str | None = None,
        workflow_id: uuid.UUID | None = None,
    ) -> None:
        super().__init__(message, workflow_id=workflow_id)
        self.machine = machine


class UnknownState(StateMachineError, LookupError):
    """The state name is not a state of its machine."""

    def __init__(
        self,
        message: str | None = None,
        *,
        machine: str | None = None,
        state: str | None = None,
        workflow_id: uuid.UUID | None = None,
    ) -> None:
        super().__init__(message, workflow_id=workflow_id, state=state)
        self.machine = machine


class PermanentError(Exception):
    """Raise (or subclass) in a handler to fail the transition at once, without retries."""
