"""`explore` finds planted defects and shrinks each to a small counter-example; the demo and the
checkout explore clean.

Each planted test runs the exploration until it fails, then asserts on the failure (its message)
and on the size of the shrunk counter-example (`Exploration.last_trace`: the rules of the last
example run, which is the shrunk one hypothesis replays to report it)."""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable, Iterable

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from machines.checkout import metadata as checkout_tables
from machines.order import FakePaymentGateway, Order
from statemachine import Store
from statemachine.testing import Exploration, FakeClock, InvariantViolated, explore
from tests.checkout_fakes import checkout
from tests.planted_bugs import (
    Bank,
    Collecting,
    Collector,
    Mailer,
    Payments,
    Quoting,
    Reminders,
    Transfer,
    Trip,
    every_consumed_item_is_kept,
    one_transfer_per_workflow,
    refunded_at_most_once,
    reminders_an_hour_apart,
)

# Up to 300 examples to find the defect (each is found in far fewer), no "explain" phase (it
# re-runs the shrunk example many times to annotate it).
FIND = settings(max_examples=300, stateful_step_count=8, deadline=None, database=None,
                report_multiple_bugs=False, phases=[Phase.generate, Phase.shrink], derandomize=True,
                suppress_health_check=list(HealthCheck))


def failure_of(exploring: type[Exploration]) -> tuple[BaseException, list[str]]:
    """Run the exploration; the error it ends with and the shrunk counter-example's rules."""
    try:
        with pytest.raises(AssertionError) as raised:
            run_state_machine_as_test(exploring, settings=FIND)
    finally:
        exploring.close()
    return raised.value, exploring.last_trace


def steps_of(trace: list[str]) -> list[str]:
    """The rules of a trace that did something (hypothesis may keep no-op rules)."""
    return [line for line in trace if "nothing due" not in line]


def test_an_undeclared_state_on_a_rare_input_is_found() -> None:
    error, trace = failure_of(explore(Quoting, force=False, send_events=False,
                                      crashes=False))
    assert isinstance(error, InvariantViolated)
    assert "broke its contract" in str(error)
    assert "returned Declined, which its return annotation does not declare" in str(error)
    assert len(steps_of(trace)) <= 3, trace
    assert "QuoteRequested(amount=10001)" in trace[0], trace  # shrunk to the boundary


def test_a_compensation_that_runs_twice_after_a_crash_is_found() -> None:
    error, trace = failure_of(explore(lambda: Trip(Bank()), invariants=[refunded_at_most_once],
                                      force=False, send_events=False))
    assert "refunded more than once" in str(error)
    assert any("Refunding (crashed AFTER_EFFECT)" in line for line in trace), trace
    assert len(steps_of(trace)) <= 7, trace  # pay crashes until given up, then the refund


def test_a_waiting_state_that_drops_an_event_is_found() -> None:
    error, trace = failure_of(explore(Collector, initial=st.just(Collecting()),
                                      invariants=[every_consumed_item_is_kept], force=False,
                                      crashes=False, failures=False))
    assert "items consumed" in str(error)
    assert any("Item(value=-1)" in line for line in trace), trace
    assert len(steps_of(trace)) <= 4, trace


def test_an_effect_not_keyed_by_the_idempotency_key_is_found() -> None:
    error, trace = failure_of(explore(lambda: Transfer(Payments()),
                                      invariants=[one_transfer_per_workflow], force=False))
    assert "2 transfers for 1 workflows" in str(error)
    assert any("TransferRequested (crashed AFTER_EFFECT)" in line for line in trace), trace
    assert len(steps_of(trace)) <= 4, trace


def test_a_timer_from_a_stale_clock_value_is_found() -> None:
    error, trace = failure_of(explore(lambda: Reminders(Mailer()),
                                      invariants=[reminders_an_hour_apart], force=False,
                                      crashes=False))
    assert "reminders [datetime.timedelta(seconds=3600), datetime.timedelta(0)] apart" in \
        str(error) or "timedelta(0)" in str(error)
    assert len(steps_of(trace)) <= 3, trace


# -- the machines of machines/ explore clean -------------------------------------------------------

CLEAN = settings(max_examples=40, stateful_step_count=10, deadline=None, database=None,
                 phases=[Phase.generate, Phase.shrink], derandomize=True,
                 suppress_health_check=list(HealthCheck))


def charged_once_per_workflow(charges: Iterable[str]) -> None:
    """Idempotency keys are ``<workflow id>:<version>``: one key charged per workflow."""
    workflows = Counter(key.split(":")[0] for key in charges)
    twice = [w for w, n in workflows.items() if n > 1]
    assert not twice, f"charged twice: {twice}"


def order_charged_once(ex: Exploration) -> None:
    charged_once_per_workflow(ex.machine.gateway.charges)  # type: ignore[attr-defined]


def checkout_charged_once_refunded_only_if_charged(ex: Exploration) -> None:
    services = ex.machine.services  # type: ignore[attr-defined]
    charged_once_per_workflow(services.charges)
    charge_ids = {c["id"] for c in services.charges.values()}
    assert set(services.refunds.values()) <= charge_ids, "refunded a charge never made"


def checkout_store() -> Store:
    store = Store(f"sqlite:///{tempfile.mkdtemp(prefix='sm-explore-')}/checkout.db",
                  clock=FakeClock())
    store.migrate()
    checkout_tables.create_all(store.engine)
    return store


# To explore a new machine: one line here (its fakes in a factory, its invariants).
EXPLORATIONS: dict[str, Callable[[], type[Exploration]]] = {
    "order": lambda: explore(lambda: Order(FakePaymentGateway()), force=False,
                             fields={"card": st.sampled_from(["4242", "0000"])},  # 0000: declined
                             invariants=[order_charged_once]),
    "order, forced states": lambda: explore(lambda: Order(FakePaymentGateway(flaky=False))),
    "checkout": lambda: explore(
        checkout, store=checkout_store, force=False,
        fields={"card": st.sampled_from(["tok_visa", "declined"]),
                "items": st.dictionaries(st.sampled_from(["sku1", "sku2"]), st.integers(1, 9),
                                         min_size=1, max_size=2)},
        invariants=[checkout_charged_once_refunded_only_if_charged]),
}


@pytest.mark.parametrize("name", list(EXPLORATIONS))
def test_the_machines_explore_clean(name: str) -> None:
    exploring = EXPLORATIONS[name]()
    try:
        run_state_machine_as_test(exploring, settings=CLEAN)
    finally:
        exploring.close()
    coverage = exploring.coverage
    print(coverage.report())  # what the exploration never did (pytest -rP shows it)
    assert coverage.taken, coverage.report()
    if name == "order":  # small enough to cover in 40 examples
        assert coverage.complete, coverage.report()
        assert not coverage.unreached, coverage.report()


def test_exploration_runs_on_every_backend(db_url: str) -> None:
    exploring = explore(lambda: Order(FakePaymentGateway()), invariants=[order_charged_once],
                        store=lambda: Store(db_url, clock=FakeClock()), force=False)
    try:
        run_state_machine_as_test(exploring, settings=settings(
            CLEAN, max_examples=8, stateful_step_count=8))
    finally:
        exploring.close()
    assert ("OrderPlaced", "Charged", "charge_card") in exploring.coverage.taken
