"""Diagrams of machines, drawn from the same declarations the engine runs (mermaid text)."""

from __future__ import annotations

from typing import Any

from transitions.extensions.diagrams import GraphMachine

from ._definition import Machine, MachineSpec, state_name
from ._spec import Handler

__all__ = ["mermaid"]


def _label(spec: MachineSpec, source: type, handler_name: str) -> str:
    for handler in spec.handlers():
        if handler.name == handler_name or _route_name(handler) == handler_name:
            return _describe(handler, handler_name)
    return handler_name


def _route_name(handler: Handler[Any]) -> str | None:
    return handler.error_route.fn.__name__ if handler.error_route else None


def _describe(handler: Handler[Any], name: str) -> str:
    if name != handler.name:
        reconcile = handler.reconcile_route
        return f"{name} (reconcile)" if reconcile and reconcile.fn.__name__ == name else \
            f"{name} (on error)"
    if handler.kind == "event" and handler.event is not None:
        return f"{name} (on {state_name(handler.event)})"
    if handler.kind in ("timeout", "children", "cancel"):
        return f"{name} ({handler.kind})"
    return name


def mermaid(machine: type[Machine] | Machine, *, title: str | None = None) -> str:
    """A mermaid ``stateDiagram-v2`` of the machine: every state, every declared transition
    labelled with its handler (and the event, timeout, children or error route behind it)."""
    spec = machine.spec
    names = {cls: state_name(cls) for cls in spec.states.values()}
    transitions = []
    seen = set()
    for source, target, handler_name in spec.edges():
        key = (names[source], names[target], handler_name)
        if key in seen:
            continue
        seen.add(key)
        transitions.append({"trigger": _label(spec, source, handler_name),
                            "source": names[source], "dest": names[target]})
    states = [{"name": names[cls], "final": cls in spec.terminal} for cls in spec.states.values()]
    graph = GraphMachine(states=states, transitions=transitions, initial=names[spec.initial],
                         graph_engine="mermaid", auto_transitions=False, title=title or spec.name,
                         show_conditions=False)
    text: str = graph.get_graph().draw(None)
    ends = "".join(f"  {names[cls]} --> [*]\n" for cls in spec.states.values()
                   if cls in spec.terminal)
    return text.rstrip("\n") + "\n" + ends
