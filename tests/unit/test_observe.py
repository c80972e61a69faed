"""The worker's observers (`_observe`) and the log formats (`_logs`), with no database."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from statemachine._diagram import path_from_history
from statemachine._logs import JsonFormatter, TextFormatter
from statemachine._observe import Observers, TransitionLog
from statemachine._records import Change, ClaimedRow

WID = uuid.UUID("7d1c6f7e-1b43-4f0a-9a54-3c2b1a0f9e8d")
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _row() -> ClaimedRow:
    return ClaimedRow(id=WID, machine="order", state="OrderPlaced", data={"card": "4242"},
                      version=3, entered_version=3, attempt=2, lease_token="t",
                      previous_status="ready", external_change=False)


def _change() -> Change:
    return Change.transition(_row(), "Charged", {"secret": "x"}, terminal=False, worker="w1",
                             started_at=NOW)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def claimed(self, machines: Any, rows: int, seconds: float) -> None:
        self.calls.append(("claimed", rows))

    def handler_started(self, row: ClaimedRow, handler: str) -> None:
        self.calls.append(("started", handler))

    def handler_finished(self, row: ClaimedRow, handler: str, seconds: float,
                         raised: BaseException | None) -> None:
        self.calls.append(("finished", handler, raised))

    def committed(self, row: ClaimedRow, change: Change, version: int, seconds: float) -> None:
        self.calls.append(("committed", change.to_state, version))


class Broken(Recorder):
    def committed(self, row: ClaimedRow, change: Change, version: int, seconds: float) -> None:
        raise RuntimeError("observer bug")


def test_an_observer_that_raises_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    after = Recorder()
    both = Observers([Broken(), after])
    both.committed(_row(), _change(), 4, 0.01)
    both.claimed(["order"], 2, 0.001)
    assert after.calls == [("committed", "Charged", 4), ("claimed", 2)]
    assert any("observer Broken failed in committed" in r.getMessage() for r in caplog.records)


def test_the_transition_log_is_one_info_line_with_fields_and_no_data(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="statemachine.worker.transitions")
    TransitionLog().committed(_row(), _change(), 4, 0.0125)
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert record.getMessage() == (f"workflow {WID} (order): transition OrderPlaced -> Charged, "
                                   "now ready (attempt 2, 12.5 ms)")
    fields = {k: getattr(record, k) for k in ("workflow_id", "machine", "from_state", "to_state",
                                              "kind", "status", "attempt", "version",
                                              "duration_ms")}
    assert fields == dict(workflow_id=str(WID), machine="order", from_state="OrderPlaced",
                          to_state="Charged", kind="transition", status="ready", attempt=2,
                          version=4, duration_ms=12.5)
    text = TextFormatter().format(record)
    assert "4242" not in text
    assert "secret" not in text
    out = json.loads(JsonFormatter().format(record))
    assert (out["from_state"], out["to_state"], out["duration_ms"]) == (
        "OrderPlaced", "Charged", 12.5)


def test_the_transition_log_costs_nothing_when_silenced(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="statemachine.worker.transitions")
    TransitionLog().committed(_row(), _change(), 4, 0.0)
    assert caplog.records == []


def test_a_text_field_with_spaces_is_quoted_and_a_record_without_fields_is_plain() -> None:
    logger = logging.getLogger("statemachine.test")
    plain = logger.makeRecord("statemachine.test", logging.INFO, __file__, 1, "hi", (), None)
    assert TextFormatter().format(plain).endswith("statemachine.test: hi")
    spaced = logger.makeRecord("statemachine.test", logging.INFO, __file__, 1, "hi", (), None,
                               extra={"why": "two words", "n": 3, "none": None})
    assert TextFormatter().format(spaced).endswith('hi why="two words" n=3 none=""')


class _H:
    def __init__(self, from_state: str | None, to_state: str, kind: str) -> None:
        self.from_state, self.to_state, self.kind = from_state, to_state, kind


def test_a_workflows_path_keeps_only_the_moves_between_states() -> None:
    path = path_from_history(WID, "Charged", "ready", [
        _H(None, "OrderPlaced", "start"), _H("OrderPlaced", "OrderPlaced", "failed_attempt"),
        _H("OrderPlaced", "Charged", "transition")])
    assert path.steps == (("OrderPlaced", "Charged", "transition"),)
    assert (path.current, path.status, path.workflow_id) == ("Charged", "ready", str(WID))


def test_discover_finds_machines_in_subpackages_and_never_runs_a_main(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from statemachine._diagram import discover

    pkg = tmp_path / "zoo"
    (pkg / "inner").mkdir(parents=True)
    (pkg / "__init__.py").write_text("", "utf-8")
    (pkg / "__main__.py").write_text("raise SystemExit('a __main__ was run')\n", "utf-8")
    (pkg / "inner" / "__init__.py").write_text("from machines.order import Order\n", "utf-8")
    (pkg / "inner" / "more.py").write_text(
        "from machines.order import Order as AgainTheSame\n", "utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = discover("zoo")
    assert [m.spec.name for m in found] == ["order"]  # found once, through a re-export
