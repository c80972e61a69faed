"""What the graph and the tests leave out: static checks of a machine's declared transitions,
and `Coverage` of the transitions and states an exploration (or any harness run) took."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from .._definition import Machine, state_name
from .._records import Change
from .._spec import MachineSpec

__all__ = ["Coverage", "closed_loops", "unfinishable_states"]

Edge = tuple[str, str, str]  # (from state, to state, handler)


def _spec(machine: Machine | type[Machine]) -> MachineSpec:
    return machine.spec


def _successors(spec: MachineSpec) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {name: set() for name in spec.states}
    for source, target, _ in spec.edges():
        out[state_name(source)].add(state_name(target))
    return out


def unfinishable_states(machine: Machine | type[Machine]) -> list[str]:
    """The states from which no declared path reaches a terminal state (sorted): a workflow
    there can never finish (a cancel still ends it)."""
    spec = _spec(machine)
    succ = _successors(spec)
    can_finish = {state_name(t) for t in spec.terminal}
    changed = True
    while changed:
        changed = False
        for name, targets in succ.items():
            if name not in can_finish and targets & can_finish:
                can_finish.add(name)
                changed = True
    return sorted(set(spec.states) - can_finish)


def closed_loops(machine: Machine | type[Machine]) -> list[list[str]]:
    """Groups of states that can only loop among themselves: every declared transition out of
    each of them leads back into the group (sorted names per group). Each group is a cycle with
    no way out."""
    spec = _spec(machine)
    succ = _successors(spec)
    terminal = {state_name(t) for t in spec.terminal}
    loops: list[list[str]] = []
    seen: set[str] = set()
    for name in sorted(spec.states):
        if name in seen or name in terminal:
            continue
        reach = _reachable(succ, name)
        # `name` loops with no way out when everything it reaches leads back to it.
        if name in reach and all(name in _reachable(succ, r) for r in reach):
            group = sorted(reach)
            seen.update(group)
            loops.append(group)
    return loops


def _reachable(succ: dict[str, set[str]], start: str) -> set[str]:
    out: set[str] = set()
    todo = list(succ[start])
    while todo:
        n = todo.pop()
        if n not in out:
            out.add(n)
            todo.extend(succ.get(n, ()))
    return out


@attrs.define
class Coverage:
    """Which declared transitions (from, to, handler) and which states of one machine were
    taken and reached; `untaken` and `unreached` are what a test never exercised."""

    machine: str
    declared: frozenset[Edge]
    states: frozenset[str]
    taken: set[Edge] = attrs.Factory(set)
    reached: set[str] = attrs.Factory(set)

    @classmethod
    def of(cls, machine: Machine | type[Machine]) -> Coverage:
        """An empty coverage of `machine`'s graph."""
        spec = _spec(machine)
        declared = frozenset((state_name(s), state_name(t), h) for s, t, h in spec.edges())
        return cls(spec.name, declared, frozenset(spec.states), reached={
            state_name(spec.initial)})

    def record(self, changes: Iterable[tuple[Change, int, str | None]]) -> None:
        """Count the changes a `Harness` committed (`Harness.changes`)."""
        for change, _version, handler in changes:
            if change.from_state is None or handler is None or change.kind not in (
                    "transition", "error_route", "reconciled", "cancel"):
                continue
            edge = (change.from_state, change.to_state, handler)
            if edge in self.declared:
                self.taken.add(edge)
                self.reached.add(change.to_state)

    @property
    def untaken(self) -> list[Edge]:
        """Declared transitions never taken, sorted."""
        return sorted(self.declared - self.taken)

    @property
    def unreached(self) -> list[str]:
        """States never entered (the initial state counts as entered), sorted."""
        return sorted(self.states - self.reached)

    @property
    def complete(self) -> bool:
        """Whether every declared transition was taken."""
        return not self.untaken

    def report(self) -> str:
        """A few readable lines: how much was covered and what was not."""
        lines = [f"{self.machine}: {len(self.taken)}/{len(self.declared)} transitions taken, "
                 f"{len(self.reached)}/{len(self.states)} states reached"]
        lines += [f"  never taken: {a} -> {b} ({h})" for a, b, h in self.untaken]
        lines += [f"  never reached: {s}" for s in self.unreached]
        return "\n".join(lines)
