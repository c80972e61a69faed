"""The operator tools: `graph` (diagrams from the code), `check` (do stored rows still load with
this code?) and `force` (move a workflow to a state, checked against its class)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from machines.order import Order, OrderPlaced
from statemachine import Client, Store
from statemachine._diagram import mermaid

ROOT = Path(__file__).resolve().parents[2]


def sm(*args: str, db: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "statemachine", "--db", db, *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)


def test_mermaid_draws_every_state_and_declared_transition() -> None:
    diagram = mermaid(Order)
    assert diagram.lstrip("-\n ").startswith("State Machine") or "stateDiagram-v2" in diagram
    for edge in ("OrderPlaced --> Charged: charge_card",
                 "OrderPlaced --> PaymentFailed: payment_failed (on error)",
                 "Charged --> Shipped: ship", "Shipped --> Confirmed: confirm",
                 "[*] --> OrderPlaced", "Confirmed --> [*]", "PaymentFailed --> [*]"):
        assert edge in diagram
    assert "Shipped --> [*]" not in diagram  # not terminal


def test_graph_command_prints_a_mermaid_block() -> None:
    out = sm("graph", "--app", "machines.order:Order", db="sqlite:///unused.db")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("```mermaid")
    assert "Charged --> Shipped: ship" in out.stdout


def _break_row(store: Store, workflow_id: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE sm_workflows SET data = :d, version = version + 1 "
                          "WHERE id = :id"),
                     {"d": json.dumps({"order_id": 5}),
                      "id": workflow_id})


def test_check_reports_rows_that_would_not_load(db_url: str) -> None:
    store = Store(db_url)
    client = Client(store, [Order])
    good = client.start(Order, OrderPlaced(order_id="good", amount_cents=1))
    bad = client.start(Order, OrderPlaced(order_id="bad", amount_cents=2))
    assert sm("check", "--app", "machines.order:Order", db=db_url).returncode == 0
    _break_row(store, str(bad))
    out = sm("check", "--app", "machines.order:Order", db=db_url)
    assert out.returncode == 1
    assert str(bad) in out.stdout
    assert str(good) not in out.stdout
    assert "data.order_id" in out.stdout
    assert "data.amount_cents" in out.stdout
    assert "1 would not load" in out.stdout
    store.dispose()


def test_force_checks_the_state_and_moves_the_workflow(db_url: str) -> None:
    store = Store(db_url)
    client = Client(store, [Order])
    wid = client.start(Order, OrderPlaced(order_id="f", amount_cents=1))
    wrong = sm("force", str(wid), "Charged", "--data", '{"order_id": "f"}',
               "--app", "machines.order:Order", db=db_url)
    assert wrong.returncode == 1
    assert "data.charge_id" in wrong.stderr
    assert client.get(wid).state_name == "OrderPlaced"
    ok = sm("force", str(wid), "Charged", "--data", '{"order_id": "f", "charge_id": "ch_1"}',
            "--app", "machines.order:Order", db=db_url)
    assert ok.returncode == 0, ok.stderr
    info = client.get(wid)
    assert (info.state_name, info.status, info.version) == ("Charged", "ready", 2)
    assert [h.kind for h in client.history(wid)] == ["start", "forced"]
    store.dispose()


@pytest.mark.parametrize("args", [["graph", "--app", "machines.order:Nope"],
                                  ["check", "--app", "nosuchmodule:X"]])
def test_bad_app_is_one_readable_line(args: list[str]) -> None:
    out = sm(*args, db="sqlite:///unused.db")
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert "--app" in out.stderr
