"""State objects to and from stored JSON: round trips of every demo state, and strict loading with
errors that name the workflow, the state and the field. Pure Python, no database."""

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import attrs
import cattrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from machines.order import Charged, Confirmed, Order, OrderPlaced, PaymentFailed, Shipped
from statemachine import Context, DataError, Machine, step
from statemachine._serde import StateCodec, make_state_converter
from statemachine.errors import UnknownState

CODEC = StateCodec(Order.spec)
WORKFLOW = "0b6f1c2e-7f0a-4d7e-9a53-2f1f3c4d5e6f"

# Aware datetimes in UTC and in fixed offsets. Not zoneinfo zones: stored data keeps the offset,
# not the zone name, and PEP 495 makes a zoneinfo time in a fold or gap compare unequal to every
# time in another zone, so "equal after a round trip" could not hold for them.
fixed_offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes)))
aware_datetimes = st.datetimes(timezones=st.one_of(st.just(UTC), fixed_offsets))

STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    OrderPlaced: st.builds(OrderPlaced, order_id=st.text(), amount_cents=st.integers(),
                           card=st.text(max_size=4)),
    Charged: st.builds(Charged, order_id=st.text(), charge_id=st.text()),
    Shipped: st.builds(Shipped, order_id=st.text(), tracking=st.text(),
                       shipped_at=aware_datetimes),
    Confirmed: st.builds(Confirmed, order_id=st.text(), tracking=st.text()),
    PaymentFailed: st.builds(PaymentFailed, order_id=st.text(), reason=st.text()),
}


def test_every_state_of_the_demo_machine_has_a_strategy() -> None:
    # A state added to the machine must be added to the round trip below.
    assert set(STRATEGIES) == set(Order.spec.states.values())


@pytest.mark.parametrize("cls", list(STRATEGIES), ids=lambda c: c.__name__)
@given(data=st.data())
def test_round_trip_through_json(cls: type, data: st.DataObject) -> None:
    state = data.draw(STRATEGIES[cls])
    name, dumped = CODEC.dump(state)
    assert name == cls.__name__
    stored = json.loads(json.dumps(dumped))  # what the database holds
    assert stored == dumped
    loaded = CODEC.load(name, stored, workflow=WORKFLOW)
    assert type(loaded) is cls
    assert loaded == state


def test_dumped_data_is_plain_json_fields() -> None:
    shipped_at = datetime(2024, 5, 1, 12, 30, tzinfo=timezone(timedelta(hours=2)))
    assert CODEC.dump(Shipped(order_id="o1", tracking="T1", shipped_at=shipped_at)) == (
        "Shipped",
        {"order_id": "o1", "tracking": "T1", "shipped_at": "2024-05-01T12:30:00+02:00"},
    )
    assert CODEC.dump(OrderPlaced(order_id="o1", amount_cents=100)) == (
        "OrderPlaced", {"order_id": "o1", "amount_cents": 100, "card": "4242"})


def test_zoneinfo_datetime_keeps_its_instant_and_offset() -> None:
    shipped_at = datetime(2024, 7, 1, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    name, data = CODEC.dump(Shipped(order_id="o1", tracking="T1", shipped_at=shipped_at))
    assert data["shipped_at"] == "2024-07-01T09:00:00+02:00"
    loaded = CODEC.load(name, data)
    assert isinstance(loaded, Shipped)
    assert loaded.shipped_at == shipped_at
    assert loaded.shipped_at.utcoffset() == timedelta(hours=2)


def test_defaults_fill_missing_optional_fields() -> None:
    assert CODEC.load("OrderPlaced", {"order_id": "o1", "amount_cents": 5}) == OrderPlaced(
        order_id="o1", amount_cents=5, card="4242")


def test_renamed_state_is_stored_and_loaded_under_its_explicit_name() -> None:
    @attrs.frozen
    class Begun:
        n: int

    @attrs.frozen
    class Finished:
        __state_name__: ClassVar[str] = "Completed"
        n: int

    class RenameCodec(Machine):
        initial = Begun
        terminal = (Finished,)

        @step
        def finish(self, state: Begun, ctx: Context) -> Finished:
            return Finished(state.n)

    codec = StateCodec(RenameCodec.spec)
    assert codec.dump(Finished(3)) == ("Completed", {"n": 3})
    assert codec.load("Completed", {"n": 3}) == Finished(3)
    with pytest.raises(UnknownState, match="'Finished'"):
        codec.load("Finished", {"n": 3})


# --- strict loading -----------------------------------------------------------------------------


def load_error(name: str, data: Any) -> str:
    with pytest.raises(DataError) as info:
        CODEC.load(name, data, workflow=WORKFLOW)
    return str(info.value)


def test_wrong_type_names_workflow_state_and_field() -> None:
    text = load_error("OrderPlaced", {"order_id": "o1", "amount_cents": "ten"})
    assert WORKFLOW in text
    assert "OrderPlaced" in text
    assert "data.amount_cents" in text
    assert "expected int" in text
    assert "'ten'" in text


def test_error_keeps_the_cattrs_error_as_cause() -> None:
    with pytest.raises(DataError) as info:
        CODEC.load("OrderPlaced", {"order_id": "o1", "amount_cents": "ten"})
    assert isinstance(info.value.__cause__, cattrs.BaseValidationError)


@pytest.mark.parametrize("value", ["10", True, False, 10.0, 1.5, None, [10]],
                         ids=repr)
def test_int_field_accepts_only_json_integers(value: object) -> None:
    text = load_error("OrderPlaced", {"order_id": "o1", "amount_cents": value})
    assert "data.amount_cents" in text
    assert "expected int" in text


@pytest.mark.parametrize("value", [1, True, None, ["o1"], {"id": "o1"}], ids=repr)
def test_str_field_accepts_only_json_strings(value: object) -> None:
    text = load_error("Charged", {"order_id": value, "charge_id": "c1"})
    assert "data.order_id" in text
    assert "expected str" in text


def test_missing_required_field_is_named() -> None:
    text = load_error("Charged", {"order_id": "o1"})
    assert "Charged" in text
    assert "data.charge_id" in text
    assert "missing" in text


def test_every_bad_field_is_reported() -> None:
    text = load_error("OrderPlaced", {"order_id": 7, "amount_cents": "ten"})
    assert "data.order_id" in text
    assert "data.amount_cents" in text


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("2024-05-01T12:30:00", "time zone"),
        ("yesterday", "yesterday"),
        (1714566600, "ISO 8601"),
    ],
)
def test_datetime_field_needs_an_aware_iso_string(value: object, fragment: str) -> None:
    text = load_error("Shipped", {"order_id": "o1", "tracking": "T1", "shipped_at": value})
    assert "data.shipped_at" in text
    assert fragment in text


def test_aware_iso_string_loads() -> None:
    loaded = CODEC.load("Shipped", {"order_id": "o1", "tracking": "T1",
                                    "shipped_at": "2024-05-01T12:30:00Z"})
    assert loaded == Shipped(order_id="o1", tracking="T1",
                             shipped_at=datetime(2024, 5, 1, 12, 30, tzinfo=UTC))


def test_unknown_state_name() -> None:
    with pytest.raises(UnknownState) as info:
        CODEC.load("Refunded", {"order_id": "o1"}, workflow=WORKFLOW)
    text = str(info.value)
    assert WORKFLOW in text
    assert "'Refunded'" in text
    assert "order" in text


@pytest.mark.parametrize("data", [None, [], ["o1", 100], "o1", 3], ids=repr)
def test_data_that_is_not_a_json_object(data: object) -> None:
    text = load_error("OrderPlaced", data)
    assert WORKFLOW in text
    assert "OrderPlaced" in text
    assert "JSON object" in text


# --- dumping ------------------------------------------------------------------------------------


def test_dumping_a_state_of_another_machine() -> None:
    @attrs.frozen
    class Foreign:
        order_id: str

    with pytest.raises(DataError, match="Foreign is not a state of machine order"):
        CODEC.dump(Foreign(order_id="o1"))


def test_dumping_a_lookalike_class_with_a_known_name() -> None:
    # Same stored name as a state of the machine, but another class: still not this machine's.
    @attrs.frozen
    class Charged:
        order_id: str
        charge_id: str

    with pytest.raises(DataError, match="not a state of machine order"):
        CODEC.dump(Charged(order_id="o1", charge_id="c1"))


def test_dumping_a_naive_datetime() -> None:
    naive = datetime(2024, 5, 1, 12, 30)  # noqa: DTZ001  # the mistake under test
    with pytest.raises(DataError, match="naive datetime"):
        CODEC.dump(Shipped(order_id="o1", tracking="T1", shipped_at=naive))


def test_converter_is_per_machine_not_global() -> None:
    assert make_state_converter() is not make_state_converter()
    assert make_state_converter() is not cattrs.global_converter
    # The strict hooks did not leak into the global converter, which still coerces.
    assert cattrs.structure("10", int) == 10
    with pytest.raises(cattrs.BaseValidationError):
        make_state_converter().structure({"order_id": "o1", "amount_cents": "10"}, OrderPlaced)


# --- checked on the way in ----------------------------------------------------------------------


@pytest.mark.parametrize(("state", "field", "expected"), [
    (OrderPlaced(order_id="o1", amount_cents="not-an-int"), "amount_cents", "expected int"),  # type: ignore[arg-type]
    (OrderPlaced(order_id="o1", amount_cents=True), "amount_cents", "expected int"),
    (Charged(order_id=7, charge_id="c"), "order_id", "expected str"),  # type: ignore[arg-type]
    (Shipped(order_id="o1", tracking="T", shipped_at="yesterday"), "shipped_at",  # type: ignore[arg-type]
     "expected datetime, got 'yesterday'"),
], ids=["str-for-int", "bool-for-int", "int-for-str", "str-for-datetime"])
def test_dumping_a_state_with_a_mistyped_field_names_machine_state_and_field(
        state: object, field: str, expected: str) -> None:
    with pytest.raises(DataError) as info:
        CODEC.dump(state)
    text = str(info.value)
    for part in ("machine order", f"state {type(state).__name__}", f"@ data.{field}", expected):
        assert part in text, f"{part!r} not in {text!r}"


def test_dumping_a_well_typed_state_passes_the_check() -> None:
    # int for a float field is fine (JSON has one number type), as it is on load.
    @attrs.frozen
    class Priced:
        price: float
        tags: list[str]
        note: str | None = None

    @attrs.frozen
    class Sold:
        pass

    class Shop(Machine):
        initial = Priced
        terminal = (Sold,)

        @step
        def sell(self, state: Priced, ctx: Context) -> Sold:
            return Sold()

    codec = StateCodec(Shop.spec)
    assert codec.dump(Priced(3, ["a"])) == ("Priced", {"price": 3, "tags": ["a"], "note": None})
    with pytest.raises(DataError, match=r"@ data\.tags\[1\]"):
        codec.dump(Priced(3.5, ["a", 2]))  # type: ignore[list-item]


def test_data_given_by_a_caller_may_not_carry_unknown_fields() -> None:
    with pytest.raises(DataError, match="Extra fields in constructor for OrderPlaced: colour"):
        CODEC.load("OrderPlaced", {"order_id": "o1", "amount_cents": 5, "colour": "red"})


def test_a_stored_row_may_carry_a_field_its_class_no_longer_has() -> None:
    # A field removed from a class must not make the rows written before fail to load.
    loaded = CODEC.load("OrderPlaced", {"order_id": "o1", "amount_cents": 5, "colour": "red"},
                        workflow=WORKFLOW)
    assert loaded == OrderPlaced(order_id="o1", amount_cents=5)
    with pytest.raises(DataError, match="Extra fields"):
        CODEC.load("OrderPlaced", {"order_id": "o1", "amount_cents": 5, "colour": "red"},
                   workflow=WORKFLOW, stored=False)
