"""Upgrading code with workflows in flight: state classes gain fields with defaults, get renamed
(old rows keep loading under the old name), and rewrite old data shapes with `__upcast__`.
A worker running the new code finishes workflows stored by the old code."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import pytest
from sqlalchemy import text

from statemachine import Client, Context, InvalidDefinition, Machine, Store, Worker, step


@attrs.frozen
class InvoiceDrafted:
    """v2: was `Draft` (v1) with `amount` in euros as a float; now cents, plus a currency."""

    __state_aliases__: ClassVar[tuple[str, ...]] = ("Draft",)
    invoice: str
    amount_cents: int
    currency: str = "EUR"

    @staticmethod
    def __upcast__(data: dict[str, Any]) -> dict[str, Any]:
        if "amount" in data:
            data["amount_cents"] = round(data.pop("amount") * 100)
        return data


@attrs.frozen
class InvoiceSent:
    invoice: str
    amount_cents: int
    currency: str


class Invoicing(Machine):
    name = "invoicing"
    initial = InvoiceDrafted
    terminal = (InvoiceSent,)

    @step
    def send(self, state: InvoiceDrafted, ctx: Context) -> InvoiceSent:
        return InvoiceSent(state.invoice, state.amount_cents, state.currency)


def _store_v1_row(store: Store, client: Client) -> str:
    """A workflow as the old code stored it: state `Draft`, amount in euros, no currency."""
    wid = client.start(Invoicing, InvoiceDrafted("INV-1", 1))
    data = '{"invoice": "INV-1", "amount": 12.5}'
    cast = "" if store.is_sqlite else "::jsonb"
    with store.engine.begin() as conn:
        conn.execute(text(f"UPDATE sm_workflows SET state = 'Draft', data = '{data}'{cast} "
                          "WHERE id = :id"), {"id": str(wid)})
    return str(wid)


def test_rows_stored_by_old_code_run_to_completion_on_new_code(store: Store) -> None:
    client = Client(store, [Invoicing])
    wid = _store_v1_row(store, client)
    assert client.get(wid).state == InvoiceDrafted("INV-1", 1250, "EUR")
    with Worker(store, [Invoicing], poll_interval=0.05):
        done = client.wait(wid, timeout=60)
    assert done.state == InvoiceSent("INV-1", 1250, "EUR")


def test_a_failing_upcast_names_the_workflow_and_state(store: Store) -> None:
    client = Client(store, [Invoicing])
    wid = client.start(Invoicing, InvoiceDrafted("INV-2", 1))
    cast = "" if store.is_sqlite else "::jsonb"
    with store.engine.begin() as conn:
        conn.execute(text(f"UPDATE sm_workflows SET data = '{{\"amount\": \"twelve\"}}'{cast} "
                          "WHERE id = :id"), {"id": str(wid)})
    info = client.get(wid)
    assert info.state is None
    assert info.load_error is not None
    assert str(wid) in info.load_error
    assert "__upcast__ failed: TypeError" in info.load_error


def test_an_alias_that_names_another_state_is_rejected() -> None:
    @attrs.frozen
    class Other:
        n: int

    @attrs.frozen
    class Clash:
        __state_aliases__: ClassVar[tuple[str, ...]] = ("Other",)
        n: int

    with pytest.raises(InvalidDefinition, match="alias 'Other'"):
        class Broken(Machine, abstract=False):
            initial = Clash
            terminal = (Other,)
            states = (Clash, Other)

            @step
            def go(self, state: Clash, ctx: Context) -> Other:
                return Other(state.n)
