"""Diagrams drawn from the code (issue 12, item 8): no styling the engine does not mean (the
initial state is not "active"), waits and timers drawn as such, one workflow's place and path
(`graph --workflow ID`, on every backend), and every machine in machines/ drawn in
docs/machines/diagrams/ by one command, checked current here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from machines.order import Order
from statemachine import Client, Store, Worker
from statemachine._diagram import GENERATED, discover, mermaid, write_diagrams
from tests.integration.test_waiting import Booking, Confirming, Reserving, new_tag
from tests.unit.test_decide import Waits
from tests.waits import wait_until

ROOT = Path(__file__).resolve().parents[2]
DIAGRAMS = ROOT / "docs" / "machines" / "diagrams"
MAKE_DIAGRAMS = ["graph", "--package", "machines", "--out", "docs/machines/diagrams"]


def sm(*args: str, db: str = "sqlite:///unused.db") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "STATEMACHINE_DATABASE_URL"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "statemachine", "--db", db, *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
                          env=env)


def test_every_machine_in_machines_has_a_current_diagram_in_the_docs() -> None:
    done = sm(*MAKE_DIAGRAMS, "--check")
    assert done.returncode == 0, (
        f"{done.stderr}\nregenerate with `make diagrams` "
        "(statemachine graph --package machines --out docs/machines/diagrams)")
    names = sorted(m.spec.name for m in discover("machines"))
    assert "order" in names  # a machine machines/ re-exports counts too
    assert sorted(p.stem for p in DIAGRAMS.glob("*.md")) == names
    for name in names:
        assert f"title: {name}\n" in (DIAGRAMS / f"{name}.md").read_text("utf-8")


def test_the_initial_state_is_not_styled_active() -> None:
    diagram = mermaid(Order)
    assert "active" not in diagram
    assert "class OrderPlaced" not in diagram  # the initial state is just a state
    assert "[*] --> OrderPlaced" in diagram
    assert "class Confirmed,PaymentFailed terminal" in diagram or \
        "class PaymentFailed,Confirmed terminal" in diagram


def test_waits_timeouts_timers_events_and_cancel_routes_are_drawn_as_such() -> None:
    booking = mermaid(Booking)
    assert 'state "Holding (waits)" as Holding' in booking
    assert "class Holding waiting" in booking
    assert "Reserving --> Confirming: reserve (timer)" in booking  # later(...): a timer
    assert "Reserving --> Holding: reserve\n" in booking  # the same step, at once
    assert "Holding --> Confirmed: confirmed (on Confirm)" in booking
    assert "Holding --> Releasing: compensate (cancel)" in booking
    waits = mermaid(Waits)
    assert "Waiting --> Expired: expire (timeout after 1min)" in waits
    assert "Waiting --> Paid: paid (on Payment)" in waits


def test_graph_workflow_shows_where_it_is_and_the_path_it_took(store: Store,
                                                              db_url: str) -> None:
    client = Client(store, [Booking])
    tag = new_tag()
    with Worker(store, [Booking], concurrency=2, poll_interval=0.05):
        wid = client.start(Booking, Reserving(tag, "wait"))
        wait_until(lambda: client.get(wid).status == "waiting", "the booking to wait")
    client.force(wid, Confirming(tag), reason="ops")  # a move no handler declares
    out = sm("graph", "--app", "tests.integration.test_waiting:Booking", "--workflow", str(wid),
             db=db_url)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("```mermaid\n")
    assert 'state "Confirming [now: ready]" as Confirming' in text
    assert "class Confirming current" in text
    assert "class Reserving,Holding visited" in text
    assert "Reserving --> Holding: reserve #1\n" in text
    assert "Holding --> Confirming: forced #2" in text
    assert "classDef current" in text


def test_graph_workflow_of_another_machine_says_which(store: Store, db_url: str) -> None:
    wid = Client(store, [Booking]).start(Booking, Reserving(new_tag(), "wait"))
    out = sm("graph", "--app", "machines.order:Order", "--workflow", str(wid), db=db_url)
    assert out.returncode == 1
    assert "is a Booking workflow" in out.stderr
    assert "Traceback" not in out.stderr


def test_writing_diagrams_replaces_stale_generated_pages_only(tmp_path: Path) -> None:
    (tmp_path / "gone.md").write_text(f"{GENERATED}\n# gone\n", "utf-8")
    (tmp_path / "index.md").write_text("# a page of someone's\n", "utf-8")
    machines: dict[str, Any] = {"order": Order}
    assert write_diagrams(machines, tmp_path, command="x", check=True) == ["order.md", "gone.md"]
    assert (tmp_path / "gone.md").exists()  # check writes nothing
    assert write_diagrams(machines, tmp_path, command="x") == ["order.md", "gone.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.md", "order.md"]
    assert write_diagrams(machines, tmp_path, command="x", check=True) == []


def test_a_stale_diagram_fails_the_check_naming_the_command(tmp_path: Path) -> None:
    out = sm("graph", "--app", "machines.order:Order", "--out", str(tmp_path), "--check")
    assert out.returncode == 1
    assert "order.md" in out.stderr
    assert "make diagrams" in out.stderr


@pytest.mark.parametrize("args", [["graph"], ["graph", "--app", "machines.order:Order",
                                              "--package", "machines"]])
def test_graph_needs_exactly_one_source_of_machines(args: list[str]) -> None:
    out = sm(*args)
    assert out.returncode != 0
    assert "--app or --package" in out.stderr
