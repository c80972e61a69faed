"""Machine definitions: the graph derived from handler annotations, every validation rule, state
names, and retry policies. Pure Python, no database.

State classes live at module level so that handler annotations always resolve (handlers are
resolved with the module's globals plus the classes named in `initial`, `terminal` and `states`).
"""

import random
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest

from machines.order import (
    CardDeclined,
    Charged,
    Confirmed,
    GatewayUnavailable,
    Order,
    OrderPlaced,
    PaymentFailed,
    Shipped,
)
from statemachine import (
    Context,
    Failure,
    InvalidDefinition,
    Machine,
    PermanentError,
    RetryPolicy,
    on_cancel,
    on_children,
    on_event,
    on_timeout,
    state_name,
    step,
)
from statemachine._definition import lookup_machine


@attrs.frozen
class Start:
    n: int = 0


@attrs.frozen
class Middle:
    n: int = 0


@attrs.frozen
class Done:
    pass


@attrs.frozen
class Cancelled:
    pass


@attrs.frozen
class Stray:
    pass


@attrs.frozen
class Renamed:
    __state_name__: ClassVar[str] = "LegacyName"


@attrs.frozen
class RenamedChild(Renamed):
    pass


@attrs.frozen
class PosingAsStart:
    """Claims the stored name of another state."""

    __state_name__: ClassVar[str] = "Start"


class NotAState:
    """A plain class: not attrs, so not a state."""


def message(info: pytest.ExceptionInfo[InvalidDefinition], *parts: str) -> str:
    """The error's message, after checking that it names every one of `parts`."""
    text = str(info.value)
    for part in parts:
        assert part in text, f"{part!r} not in {text!r}"
    return text


# --- a valid machine ----------------------------------------------------------------------------


def test_demo_machine_graph_follows_the_annotations() -> None:
    spec = Order.spec
    assert spec.name == "order"
    assert spec.initial is OrderPlaced
    assert spec.states == {
        "OrderPlaced": OrderPlaced,
        "Charged": Charged,
        "Shipped": Shipped,
        "Confirmed": Confirmed,
        "PaymentFailed": PaymentFailed,
    }
    assert spec.terminal == frozenset({Confirmed, PaymentFailed})
    assert spec.edges() == [
        (OrderPlaced, Charged, "charge_card"),
        (OrderPlaced, PaymentFailed, "payment_failed"),
        (Charged, Shipped, "ship"),
        (Shipped, Confirmed, "confirm"),
    ]
    assert {source: h.name for source, h in spec.steps.items()} == {
        OrderPlaced: "charge_card", Charged: "ship", Shipped: "confirm"}
    charge = spec.steps[OrderPlaced]
    assert charge.source is OrderPlaced
    assert charge.targets == (Charged,)
    assert charge.retry.max_attempts == 5
    assert charge.error_route is not None
    assert charge.error_route.targets == (PaymentFailed,)
    assert spec.steps[Charged].retry == RetryPolicy()  # bare @step: the default policy
    assert spec.is_terminal(Confirmed)
    assert not spec.is_terminal(Shipped)
    assert lookup_machine("order") is Order


def test_union_return_annotation_declares_every_target() -> None:
    class Branching(Machine):
        initial = Start
        terminal = (Done, Cancelled)

        @step
        def begin(self, state: Start, ctx: Context) -> Middle | Cancelled:
            return Middle()

        @step
        def finish(self, state: Middle, ctx: Context) -> Done:
            return Done()

    spec = Branching.spec
    assert spec.name == "Branching"  # default name: the class name
    assert spec.edges() == [(Start, Middle, "begin"), (Start, Cancelled, "begin"),
                            (Middle, Done, "finish")]
    assert set(spec.states) == {"Start", "Middle", "Done", "Cancelled"}
    assert spec.terminal == frozenset({Done, Cancelled})
    assert lookup_machine("Branching") is Branching


def test_explicit_name_and_states_list() -> None:
    class Listed(Machine):
        name = "listed-machine"
        initial = Start
        terminal = (Done,)
        states = (Start, Done)

        @step
        def begin(self, state: Start, ctx: Context) -> Done:
            return Done()

    assert Listed.spec.name == "listed-machine"
    assert Listed.spec.states == {"Start": Start, "Done": Done}
    assert lookup_machine("listed-machine") is Listed


def test_abstract_base_class_is_allowed_and_shares_its_handlers() -> None:
    class SharedSteps(Machine, abstract=True):
        # No initial, no terminal: fine for an abstract base.
        @step
        def begin(self, state: Start, ctx: Context) -> Done:
            return Done()

    assert "spec" not in SharedSteps.__dict__
    assert lookup_machine("SharedSteps") is None

    class FromShared(SharedSteps):
        initial = Start
        terminal = (Done,)

    assert FromShared.spec.steps[Start].name == "begin"
    assert FromShared.spec.edges() == [(Start, Done, "begin")]


def test_without_abstract_a_base_class_is_checked() -> None:
    with pytest.raises(InvalidDefinition) as info:
        class HelpersOnly(Machine):
            @step
            def begin(self, state: Start, ctx: Context) -> Done:
                return Done()

    message(info, "HelpersOnly", "no initial state")


# --- state names --------------------------------------------------------------------------------


def test_state_name_is_the_class_name_or_the_explicit_name() -> None:
    assert state_name(Start) == "Start"
    assert state_name(Renamed) == "LegacyName"
    # The explicit name belongs to the class that sets it; a subclass is a different state.
    assert state_name(RenamedChild) == "RenamedChild"


def test_machine_stores_a_renamed_state_under_its_explicit_name() -> None:
    class WithRename(Machine):
        initial = Start
        terminal = (Renamed,)

        @step
        def begin(self, state: Start, ctx: Context) -> Renamed:
            return Renamed()

    assert WithRename.spec.states == {"Start": Start, "LegacyName": Renamed}


def test_two_states_with_the_same_stored_name_are_rejected() -> None:
    with pytest.raises(InvalidDefinition) as info:
        class NameClash(Machine):
            initial = Start
            terminal = (Done, PosingAsStart)

            @step
            def begin(self, state: Start, ctx: Context) -> Done | PosingAsStart:
                return Done()

    message(info, "NameClash", "two states are named 'Start'")


def test_two_classes_with_the_same_class_name_are_rejected() -> None:
    def make_other_done() -> type:
        @attrs.frozen
        class Done:  # same class name as the module-level Done, a different class
            pass

        return Done

    other_done = make_other_done()
    with pytest.raises(InvalidDefinition) as info:
        class SameNames(Machine):
            initial = Start
            terminal = (Done, other_done)
            states = (Start, Done, other_done)

            @step
            def begin(self, state: Start, ctx: Context) -> Done | other_done:  # type: ignore[valid-type]
                return Done()

    message(info, "SameNames", "two states are named 'Done'")


# --- validation rules ---------------------------------------------------------------------------


def test_no_initial_state() -> None:
    with pytest.raises(InvalidDefinition) as info:
        class NoInitial(Machine):
            terminal = (Done,)

    message(info, "machine NoInitial", "no initial state")


def test_no_terminal_state() -> None:
    with pytest.raises(InvalidDefinition) as info:
        class NoTerminal(Machine):
            initial = Start

    message(info, "machine NoTerminal", "no terminal state")


def test_terminal_given_as_a_bare_class_instead_of_a_tuple() -> None:
    with pytest.raises(InvalidDefinition) as info:
        class BareTerminal(Machine):
            initial = Start
            terminal = Done  # type: ignore[assignment]  # the mistake under test

            @step
            def begin(self, state: Start, ctx: Context) -> Done:
                return Done()

    message(info, "machine BareTerminal", "Done", "terminal")


def test_initial_state_that_is_terminal() -> None:
    with pytest.raises(InvalidDefinition) as info:
        class EndsAtOnce(Machine):
            initial = Done
            terminal = (Done,)

    message(info, "machine EndsAtOnce", "initial state Done is terminal")


def test_unreachable_terminal_state() -> None:
    with pytest.raises(InvalidDefinition) as info:
        class Orphan(Machine):
            initial = Start
            terminal = (Done, Stray)

            @step
            def begin(self, state: Start, ctx: Context) -> Done:
                return Done()

    message(info, "machine Orphan", "state Stray is unreachable", "initial state Start")


def test_unreachable_state_with_a_handler() -> None:
    with pytest.raises(InvalidDefinition) as info:
        class Island(Machine):
            initial = Start
            terminal = (Done,)

            @step
            def begin(self, state: Start, ctx: Context) -> Done:
                return Done()

            @step
            def never_runs(self, state: Middle, ctx: Context) -> Done:
                return Done()

    message(info, "machine Island", "state Middle is unreachable")


def test_unreachable_state_in_an_explicit_states_list() -> None:
    with pytest.raises(InvalidDefinition) as info:
        class ListsStray(Machine):
            initial = Start
            terminal = (Done, Stray)
            states = (Start, Done, Stray)

            @step
            def begin(self, state: Start, ctx: Context) -> Done:
                return Done()

    message(info, "machine ListsStray", "state Stray is unreachable")


def test_error_route_targets_make_states_reachable() -> None:
    # The demo machine minus its error route: PaymentFailed can no longer be reached.
    with pytest.raises(InvalidDefinition) as info:
        class NoRoute(Machine):
            initial = OrderPlaced
            terminal = (Confirmed, PaymentFailed)

            @step
            def charge_card(self, state: OrderPlaced, ctx: Context) -> Charged:
                return Charged(order_id=state.order_id, charge_id="c")

            @step
            def ship(self, state: Charged, ctx: Context) -> Confirmed:
                return Confirmed(order_id=state.order_id, tracking="t")

    message(info, "machine NoRoute", "state PaymentFailed is unreachable")


def test_dead_end_state() -> None:
    with pytest.raises(InvalidDefinition) as info:
        class DeadEnd(Machine):
            initial = Start
            terminal = (Done,)

            @step
            def begin(self, state: Start, ctx: Context) -> Middle | Done:
                return Middle()

    message(info, "machine DeadEnd", "state Middle is a dead end")


def test_two_handlers_for_one_state() -> None:
    with pytest.raises(InvalidDefinition) as info:
        class TwoWays(Machine):
            initial = Start
            terminal = (Done,)

            @step
            def first(self, state: Start, ctx: Context) -> Done:
                return Done()

            @step
            def second(self, state: Start, ctx: Context) -> Done:
                return Done()

    message(info, "machine TwoWays", "state Start has two handlers", "'first'", "'second'")


def test_handler_on_a_terminal_state() -> None:
    with pytest.raises(InvalidDefinition) as info:
        class LeavesTheEnd(Machine):
            initial = Start
            terminal = (Done,)

            @step
            def begin(self, state: Start, ctx: Context) -> Done:
                return Done()

            @step
            def again(self, state: Done, ctx: Context) -> Start:
                return Start()

    message(info, "machine LeavesTheEnd", "terminal state Done has a handler", "'again'")


def test_target_missing_from_the_states_list() -> None:
    with pytest.raises(InvalidDefinition) as info:
        class Undeclared(Machine):
            initial = Start
            terminal = (Done,)
            states = (Start, Done)

            @step
            def begin(self, state: Start, ctx: Context) -> Middle | Done:
                return Done()

    message(info, "machine Undeclared", "handler 'begin' returns Middle",
            "not a state of this machine")


def test_handled_state_missing_from_the_states_list() -> None:
    with pytest.raises(InvalidDefinition) as info:
        class Unlisted(Machine):
            initial = Start
            terminal = (Done,)
            states = (Start, Done)

            @step
            def begin(self, state: Start, ctx: Context) -> Done:
                return Done()

            @step
            def extra(self, state: Middle, ctx: Context) -> Done:
                return Done()

    message(info, "machine Unlisted", "handler 'extra' handles Middle",
            "not a state of this machine")


def test_terminal_state_missing_from_the_states_list() -> None:
    with pytest.raises(InvalidDefinition) as info:
        class TerminalUnlisted(Machine):
            initial = Start
            terminal = (Done,)
            states = (Start,)

            @step
            def begin(self, state: Start, ctx: Context) -> Done:
                return Done()

    message(info, "machine TerminalUnlisted", "state Done is not in `states`")


@pytest.mark.parametrize("target", [NotAState, int, type(None)])
def test_target_that_is_not_an_attrs_class(target: type) -> None:
    def go(self: Any, state: Start, ctx: Context) -> Done:
        return Done()

    go.__annotations__["return"] = Done | target

    with pytest.raises(InvalidDefinition) as info:
        class BadTarget(Machine):
            initial = Start
            terminal = (Done,)
            begin = step(go)

    message(info, "machine BadTarget", "'begin' returns", target.__name__, "not a state class")


def test_handled_state_that_is_not_an_attrs_class() -> None:
    with pytest.raises(InvalidDefinition) as info:
        class BadSource(Machine):
            initial = Start
            terminal = (Done,)

            @step
            def begin(self, state: Start, ctx: Context) -> Done:
                return Done()

            @step
            def odd(self, state: NotAState, ctx: Context) -> Done:
                return Done()

    message(info, "machine BadSource", "'odd' handles", "NotAState", "not a state class")


def test_initial_state_that_is_not_an_attrs_class() -> None:
    with pytest.raises(InvalidDefinition) as info:
        class PlainInitial(Machine):
            initial = NotAState
            terminal = (Done,)

            @step
            def begin(self, state: NotAState, ctx: Context) -> Done:
                return Done()

    message(info, "machine PlainInitial", "NotAState", "not a state class")


def test_handler_without_return_annotation() -> None:
    with pytest.raises(InvalidDefinition) as info:
        class NoReturn(Machine):
            initial = Start
            terminal = (Done,)

            @step
            def begin(self, state: Start, ctx: Context):  # type: ignore[no-untyped-def]
                return Done()

    message(info, "machine NoReturn", "'begin' has no return annotation")


def test_handler_without_state_annotation() -> None:
    with pytest.raises(InvalidDefinition) as info:
        class NoSource(Machine):
            initial = Start
            terminal = (Done,)

            @step
            def begin(self, state, ctx: Context) -> Done:  # type: ignore[no-untyped-def]
                return Done()

    message(info, "machine NoSource", "'begin' must annotate its first parameter")


def test_handler_without_any_parameter() -> None:
    with pytest.raises(InvalidDefinition) as info:
        class NoParams(Machine):
            initial = Start
            terminal = (Done,)

            @step
            def begin(self) -> Done:
                return Done()

    message(info, "machine NoParams", "'begin' must annotate its first parameter")


def test_annotation_that_does_not_resolve() -> None:
    # A string annotation naming a class the machine cannot see (a class local to a function,
    # say) is a definition error, not a NameError.
    with pytest.raises(InvalidDefinition) as info:
        class Unresolved(Machine):
            initial = Start
            terminal = (Done,)

            @step
            def begin(self, state: Start, ctx: Context) -> "Nowhere":  # type: ignore[name-defined]  # noqa: F821
                return Done()

    message(info, "machine Unresolved", "'begin'", "Nowhere", "does not resolve")


def test_states_named_in_initial_terminal_or_states_resolve_from_strings() -> None:
    @attrs.frozen
    class LocalStart:
        pass

    @attrs.frozen
    class LocalDone:
        pass

    class LocalNames(Machine):
        initial = LocalStart
        terminal = (LocalDone,)

        @step
        def begin(self, state: "LocalStart", ctx: Context) -> "LocalDone":
            return LocalDone()

    assert LocalNames.spec.edges() == [(LocalStart, LocalDone, "begin")]


def test_error_route_for_another_state() -> None:
    with pytest.raises(InvalidDefinition) as info:
        class CrossedRoute(Machine):
            initial = Start
            terminal = (Done, Cancelled)

            @step
            def begin(self, state: Start, ctx: Context) -> Middle:
                return Middle()

            @begin.on_error
            def give_up(self, state: Middle, failure: Failure, ctx: Context) -> Cancelled:
                return Cancelled()

            @step
            def finish(self, state: Middle, ctx: Context) -> Done:
                return Done()

    message(info, "machine CrossedRoute", "error route 'give_up' handles Middle",
            "step 'begin' handles Start")


def test_error_route_target_must_be_a_state() -> None:
    with pytest.raises(InvalidDefinition) as info:
        class RouteToNowhere(Machine):
            initial = Start
            terminal = (Done,)

            @step
            def begin(self, state: Start, ctx: Context) -> Done:
                return Done()

            @begin.on_error
            def give_up(self, state: Start, failure: Failure, ctx: Context) -> NotAState:
                return NotAState()

    message(info, "machine RouteToNowhere", "'give_up' returns", "NotAState")


def test_two_error_routes_for_one_step() -> None:
    with pytest.raises(InvalidDefinition, match="'begin' has two error routes") as info:
        class TwoRoutes(Machine):
            initial = Start
            terminal = (Done,)

            @step
            def begin(self, state: Start, ctx: Context) -> Done:
                return Done()

            @begin.on_error
            def first(self, state: Start, failure: Failure, ctx: Context) -> Done:
                return Done()

            @begin.on_error
            def second(self, state: Start, failure: Failure, ctx: Context) -> Done:
                return Done()

    message(info, "machine TwoRoutes", "'first'", "'second'")
    assert (info.value.machine, info.value.state) == ("TwoRoutes", "Start")


# --- retry policies -----------------------------------------------------------------------------


def test_delay_grows_exponentially_and_is_capped() -> None:
    policy = RetryPolicy(initial_delay=0.5, multiplier=3.0, max_delay=10.0, jitter=0.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]


def test_delay_stays_capped_for_very_many_attempts() -> None:
    # A "retry practically forever" policy must not overflow the float power.
    policy = RetryPolicy(max_attempts=100_000, max_delay=60.0, jitter=0.0)
    assert policy.delay(5_000) == 60.0
    assert policy.delay(100_000) == 60.0


def test_jitter_shortens_the_delay_by_at_most_its_fraction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = RetryPolicy(initial_delay=2.0, multiplier=2.0, max_delay=100.0, jitter=0.25)
    monkeypatch.setattr(random, "random", lambda: 0.0)
    assert policy.delay(3) == 8.0
    monkeypatch.setattr(random, "random", lambda: 1.0)
    assert policy.delay(3) == 6.0
    monkeypatch.undo()
    delays = {policy.delay(3) for _ in range(200)}
    assert all(6.0 <= d <= 8.0 for d in delays)
    assert len(delays) > 1  # it does spread


def test_default_policy() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.initial_delay, policy.max_delay, policy.jitter) == (
        3, 1.0, 300.0, 0.2)
    assert policy.permanent == ()


def test_permanent_errors() -> None:
    policy = RetryPolicy()
    assert policy.is_permanent(PermanentError("no"))
    assert policy.is_permanent(CardDeclined("declined"))  # a PermanentError subclass
    assert not policy.is_permanent(GatewayUnavailable("503"))
    assert not policy.is_permanent(ValueError("x"))


def test_permanent_exception_types_by_policy() -> None:
    policy = RetryPolicy(permanent=[LookupError])  # any iterable, stored as a tuple
    assert policy.permanent == (LookupError,)
    assert policy.is_permanent(LookupError("x"))
    assert policy.is_permanent(KeyError("a subclass"))
    assert policy.is_permanent(PermanentError("still permanent"))
    assert not policy.is_permanent(ValueError("x"))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": -3}, "max_attempts"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": 1.5}, "jitter"),
        ({"initial_delay": -1.0}, "initial_delay"),
        ({"max_delay": -1.0}, "max_delay"),
        ({"multiplier": -2.0}, "multiplier"),
    ],
)
def test_invalid_policies_are_rejected(kwargs: dict[str, float], fragment: str) -> None:
    with pytest.raises(InvalidDefinition, match=fragment):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("jitter", [0.0, 1.0])
def test_jitter_bounds_are_inclusive(jitter: float) -> None:
    assert RetryPolicy(jitter=jitter).jitter == jitter


def test_failure_reads_as_type_and_message() -> None:
    failure = Failure(type="GatewayUnavailable", message="payment gateway returned 503", attempt=2)
    assert str(failure) == "GatewayUnavailable: payment gateway returned 503"


# -- overriding handlers in a subclass ------------------------------------------------------------


@attrs.frozen
class OvStart:
    n: int


@attrs.frozen
class OvDone:
    n: int


class OvBase(Machine, abstract=True):
    initial = OvStart
    terminal = (OvDone,)

    @step
    def go(self, state: OvStart, ctx: Context) -> OvDone:
        return OvDone(state.n)


class OvChild(OvBase):
    @step
    def go(self, state: OvStart, ctx: Context) -> OvDone:
        return OvDone(state.n * 10)


def test_a_subclass_overrides_a_handler_by_redefining_it() -> None:
    assert [h.fn.__qualname__ for h in OvChild.spec.handlers()] == ["OvChild.go"]
    assert OvChild.spec.steps[OvStart].fn(OvChild(), OvStart(2), None) == OvDone(20)


# -- declarations are frozen; every machine gets its own spec -----------------------------------


def _finish_class() -> type:
    @attrs.frozen
    class Finish:
        pass

    return Finish


FinishA, FinishB = _finish_class(), _finish_class()


class SharedSteps(Machine, abstract=True):
    initial = Start

    @step(retry=RetryPolicy(max_attempts=7))
    def begin(self, state: Start, ctx: Context) -> "Finish":  # noqa: F821 (resolved per machine)
        raise NotImplementedError


class EndsInA(SharedSteps):
    terminal = (FinishA,)


class EndsInB(SharedSteps):
    terminal = (FinishB,)


def test_each_decorator_returns_a_frozen_declaration_of_its_own_kind() -> None:
    def handler(self: Any, state: Start, ctx: Context) -> Done:
        return Done()

    made = {
        "step": step(handler), "event": on_event(handler), "timeout": on_timeout(after=1)(handler),
        "children": on_children()(handler), "cancel": on_cancel(handler)}
    assert {kind: type(d).kind for kind, d in made.items()} == {k: k for k in made}
    assert len({type(d) for d in made.values()}) == 5
    for declaration in made.values():
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            declaration.fn = handler  # type: ignore[misc]


def test_two_machines_inheriting_one_base_resolve_it_each_for_itself() -> None:
    # One declaration, two machines whose annotation "Finish" names different classes: each
    # spec has its own handler, and building the second did not change the first.
    a, b = EndsInA.spec.steps[Start], EndsInB.spec.steps[Start]
    assert a is not b
    assert (a.targets, b.targets) == ((FinishA,), (FinishB,))
    assert a.declaration is b.declaration is vars(SharedSteps)["begin"]
    assert a.retry == b.retry == RetryPolicy(max_attempts=7)


def test_building_a_spec_mutates_no_declaration() -> None:
    declaration = vars(SharedSteps)["begin"]
    before = attrs.asdict(declaration, recurse=False)

    finish_c = _finish_class()

    class EndsInC(SharedSteps):
        terminal = (finish_c,)

    assert attrs.asdict(declaration, recurse=False) == before
    assert EndsInC.spec.steps[Start].targets == (finish_c,)
    assert EndsInA.spec.steps[Start].targets == (FinishA,)


def test_an_error_route_stacked_on_two_steps_serves_both() -> None:
    class TwoSteps(Machine):
        initial = Start
        terminal = (Done, Cancelled)

        @step
        def begin(self, state: Start, ctx: Context) -> Middle:
            return Middle()

        @step
        def finish(self, state: Middle, ctx: Context) -> Done:
            return Done()

        @begin.on_error
        @finish.on_error
        def give_up(self, state: Start | Middle, failure: Failure, ctx: Context) -> Cancelled:
            return Cancelled()

    routes = {s.__name__: h.error_route for s, h in TwoSteps.spec.steps.items()}
    assert {name: r.name for name, r in routes.items() if r} == {"Start": "give_up",
                                                                  "Middle": "give_up"}
    # On an instance the route is still the plain method.
    assert TwoSteps().give_up(Start(), Failure("X", "y", 1), None) == Cancelled()  # type: ignore[arg-type]


def test_reconcile_needs_an_at_most_once_step() -> None:
    @step
    def begin(self: Any, state: Start, ctx: Context) -> Done:
        return Done()

    with pytest.raises(InvalidDefinition, match="reconcile needs @step"):
        begin.reconcile(lambda self, state, ctx: Done())


def test_a_definition_error_carries_the_machine_and_the_state() -> None:
    with pytest.raises(InvalidDefinition) as info:
        class DeadEnd(Machine):
            initial = Start
            terminal = (Done,)

            @step
            def begin(self, state: Start, ctx: Context) -> Middle | Done:
                return Done()

    assert (info.value.machine, info.value.state) == ("DeadEnd", "Middle")


@pytest.mark.parametrize("first", ["_definition", "_validation", "_declarations", "_spec"])
def test_definition_modules_import_in_any_order(first: str) -> None:
    # Under a bare package (the real __init__ imports everything in its own order).
    root = Path(__file__).resolve().parents[2] / "statemachine"
    code = ("import sys, types\n"
            f"pkg = types.ModuleType('statemachine'); pkg.__path__ = [{str(root)!r}]\n"
            "sys.modules['statemachine'] = pkg\n"
            f"import statemachine.{first}\n"
            "import statemachine._definition\n")
    subprocess.run([sys.executable, "-c", code], check=True)
