"""Testing workflows: a clock you move by hand, handlers called directly, the engine run step by
step with crashes and failures injected, and property-based exploration with hypothesis.

- `FakeClock`: give it to ``Store(url, clock=...)``; timers, deadlines, leases and ``ctx.now()``
  read it on every backend.
- `context` and `call`: run one handler with a `Context` a worker would have built, no database.
- `Harness`: the real engine (the worker's claim, decisions and SQL) in this thread, one step at a
  time: `Harness.step` (optionally crashing at a `CrashPoint`, or failing), `run_until_idle`
  (jumps the clock to each next wake-up), start/send/cancel/force.
- `states`, `events` and `strategy_for`: hypothesis strategies for a machine's state and event
  classes, from their attrs field types.
- `explore`: a hypothesis `RuleBasedStateMachine` for a machine, checking `engine_invariants`
  after every rule; `Coverage`, `unfinishable_states` and `closed_loops` say what the graph
  and the exploration leave out.

The names that need hypothesis (`explore`, the strategies) import it when first used; install it
with the ``testing`` extra.
"""


import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING

from ._clock import FakeClock

if _TYPE_CHECKING:
    from ._checks import EngineInvariants, InvariantViolated
    from ._context import call, context
    from ._explore import Exploration, explore
    from ._graph import Coverage, closed_loops, unfinishable_states
    from ._harness import (
        Crash,
        CrashPoint,
        Harness,
        InjectedFailure,
        InjectedPermanentFailure,
        Run,
        Step,
    )
    from ._strategies import events, states, strategy_for

_LAZY = {
    **dict.fromkeys(["EngineInvariants", "InvariantViolated"], "_checks"),
    **dict.fromkeys(["call", "context"], "_context"),
    **dict.fromkeys(["Exploration", "explore"], "_explore"),
    **dict.fromkeys(["Coverage", "closed_loops", "unfinishable_states"], "_graph"),
    **dict.fromkeys(["Crash", "CrashPoint", "Harness", "InjectedFailure",
                     "InjectedPermanentFailure", "Run", "Step"], "_harness"),
    **dict.fromkeys(["events", "states", "strategy_for"], "_strategies"),
}

__all__ = [
    "Coverage",
    "Crash",
    "CrashPoint",
    "EngineInvariants",
    "Exploration",
    "FakeClock",
    "Harness",
    "InjectedFailure",
    "InjectedPermanentFailure",
    "InvariantViolated",
    "Run",
    "Step",
    "call",
    "closed_loops",
    "context",
    "events",
    "explore",
    "states",
    "strategy_for",
    "unfinishable_states",
]

FakeClock.__module__ = __name__


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    obj = getattr(_importlib.import_module(f"{__name__}.{module}"), name)
    if getattr(obj, "__module__", "").startswith(__name__ + "."):
        obj.__module__ = __name__
    globals()[name] = obj
    return obj


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
