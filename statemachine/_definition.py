"""Declaring machines: states, step handlers, retry policies, and the checks run at class creation.

A machine is a class. Its states are attrs frozen classes; each non-terminal state has one step
handler, a method whose first parameter is annotated with the state it handles and whose return
annotation (a union of state classes) declares where it may go::

    class Order(Machine):
        initial = OrderPlaced
        terminal = (Confirmed, PaymentFailed)

        @step(retry=RetryPolicy(max_attempts=5))
        def charge_card(self, state: OrderPlaced, ctx: Context) -> Charged: ...

The graph is derived from those annotations and checked when the class is created: a bad machine
fails at import with `InvalidDefinition`, naming the state and the rule it breaks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from ._declarations import (
    ChildResult,
    Delayed,
    Failure,
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
from ._spec import Handler, MachineSpec, Route
from ._validation import build_spec

__all__ = [
    "ChildResult",
    "Delayed",
    "Failure",
    "Handler",
    "Machine",
    "MachineSpec",
    "Poll",
    "PollAgain",
    "Rerun",
    "RetryPolicy",
    "Route",
    "later",
    "lookup_machine",
    "on_cancel",
    "on_children",
    "on_event",
    "on_timeout",
    "poll_again",
    "rerun",
    "state_name",
    "step",
]


class Machine:
    """Base class of every workflow machine.

    Subclasses set `initial` (the state a workflow starts in) and `terminal` (the states it ends
    in), and define one `@step` handler per other state. `name` (default: the class name) is what
    rows store; keep it stable. Instances carry the handlers' dependencies (HTTP clients, settings):
    give a worker instances, not classes. Pass ``abstract=True`` in the class statement for a base
    class that shares helpers but is not a machine itself.
    """

    name: ClassVar[str]
    initial: ClassVar[type]
    terminal: ClassVar[Iterable[type]] = ()
    states: ClassVar[Iterable[type] | None] = None
    spec: ClassVar[MachineSpec]

    def __init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if abstract:
            return
        if "name" not in cls.__dict__:
            cls.name = cls.__name__
        cls.spec = build_spec(cls)
        _REGISTRY[cls.name] = cls


_REGISTRY: dict[str, type[Machine]] = {}


def lookup_machine(name: str) -> type[Machine] | None:
    """The most recently defined machine class stored under `name`, if any was imported."""
    return _REGISTRY.get(name)
