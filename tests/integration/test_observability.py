"""Watching a worker (issue 12, items 6 and 7), on every backend: one INFO log line per
committed transition with structured fields, `ctx.log`'s fields in the CLI's formats, JSON logs,
no secrets in either; Prometheus metrics scraped over HTTP from a real
``statemachine worker --metrics-port`` process; OpenTelemetry spans per transition read back
from an in-memory exporter, one trace per workflow and linked from child to parent; and the core
working without either extra.

Machines live at module level so worker processes can import them
(``--app tests.integration.test_observability:Relay``).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import attrs
import pytest

from statemachine import (
    ChildResult,
    Client,
    Context,
    InvalidArgument,
    Machine,
    Metrics,
    PermanentError,
    RetryPolicy,
    Store,
    Tracing,
    Worker,
    on_children,
    step,
)
from statemachine._logs import JsonFormatter, TextFormatter
from tests.procs import WorkerProcesses
from tests.waits import wait_until

ROOT = Path(__file__).resolve().parents[2]
FAST: dict[str, Any] = dict(concurrency=4, poll_interval=0.05)
WAIT = 60.0
SECRET = "sk_live_abcdef123456"


@attrs.frozen
class Received:
    tag: str
    token: str  # a secret the logs must never show
    fail_first: bool = False


@attrs.frozen
class Forwarded:
    tag: str


@attrs.frozen
class Delivered:
    tag: str


@attrs.frozen
class Rejected:
    tag: str


ATTEMPTS: dict[str, int] = {}


class Relay(Machine):
    """Receive, forward (failing once when asked), deliver; a tag "park" parks."""

    initial = Received
    terminal = (Delivered,)

    @step(retry=RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0.0))
    def forward(self, state: Received, ctx: Context) -> Forwarded:
        ctx.log.info("forwarding with token=%s", state.token)
        if state.tag == "park":
            raise PermanentError("refused for good")
        ATTEMPTS[state.tag] = ATTEMPTS.get(state.tag, 0) + 1
        if state.fail_first and ATTEMPTS[state.tag] == 1:
            raise ConnectionError("flaky")
        return Forwarded(state.tag)

    @step
    def deliver(self, state: Forwarded, ctx: Context) -> Delivered:
        return Delivered(state.tag)


@attrs.frozen
class Fanning:
    tag: str


@attrs.frozen
class Gathered:
    tag: str


@attrs.frozen
class AllDone:
    tag: str


class Fan(Machine):
    """A parent with one Relay child."""

    initial = Fanning
    terminal = (AllDone,)

    @step
    def fan_out(self, state: Fanning, ctx: Context) -> Gathered:
        ctx.start_child(Relay, Received(state.tag, token=SECRET))
        return Gathered(state.tag)

    @on_children()
    def gathered(self, state: Gathered, children: list[ChildResult], ctx: Context) -> AllDone:
        return AllDone(state.tag)


def _tag() -> str:
    return uuid.uuid4().hex[:12]


# -- logs ----------------------------------------------------------------------------------------


def test_each_committed_transition_logs_one_info_line_with_its_fields(
    store: Store, caplog: pytest.LogCaptureFixture,
) -> None:
    client = Client(store, [Relay])
    tag = _tag()
    caplog.set_level(logging.INFO, logger="statemachine")
    with Worker(store, [Relay], **FAST):
        wid = client.start(Relay, Received(tag, token=SECRET, fail_first=True))
        client.wait(wid, timeout=WAIT)
    history = client.history(wid)[1:]  # the start is the client's, not a worker's
    lines = [r for r in caplog.records if r.name == "statemachine.worker.transitions"
             and getattr(r, "workflow_id", None) == str(wid)]
    assert [(r.from_state, r.to_state, r.kind, r.attempt) for r in lines] == [  # type: ignore[attr-defined]
        (h.from_state, h.to_state, h.kind, h.attempt) for h in history]
    assert [r.kind for r in lines] == [  # type: ignore[attr-defined]
        "failed_attempt", "transition", "transition"]
    for r in lines:
        assert r.levelno == logging.INFO
        assert r.machine == Relay.spec.name  # type: ignore[attr-defined]
        assert isinstance(r.duration_ms, float)  # type: ignore[attr-defined]
        assert r.duration_ms >= 0  # type: ignore[attr-defined]
        assert str(wid) in r.getMessage()
    assert "Received -> Forwarded" in lines[1].getMessage()
    everything = "\n".join(TextFormatter().format(r) for r in caplog.records)
    assert SECRET not in everything
    assert "token=[redacted]" in everything  # ctx.log's message, redacted


def _record(msg: str, *args: object, **extra: Any) -> logging.LogRecord:
    return logging.getLogger("statemachine.workflow.Relay").makeRecord(
        "statemachine.workflow.Relay", logging.INFO, __file__, 1, msg, args, None, extra=extra)


def test_the_text_format_prints_ctx_log_fields_and_redacts_them() -> None:
    record = _record("charging %s", "o1", workflow_id="w-1", state="Charging",
                     note=f"Authorization: Bearer {SECRET}")
    text = TextFormatter().format(record)
    assert text.endswith('charging o1 workflow_id=w-1 state=Charging '
                         'note="Authorization: Bearer [redacted]"')
    assert SECRET not in text


def test_the_json_format_is_one_object_per_record_with_the_fields() -> None:
    try:
        raise ValueError(f"password={SECRET}")
    except ValueError:
        exc = sys.exc_info()
    record = _record("failed", workflow_id="w-1", state="Charging", attempt=2)
    record.exc_info = exc
    out = json.loads(JsonFormatter().format(record))
    assert (out["level"], out["logger"], out["message"]) == (
        "INFO", "statemachine.workflow.Relay", "failed")
    assert (out["workflow_id"], out["state"], out["attempt"]) == ("w-1", "Charging", 2)
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", out["time"])
    assert "ValueError" in out["exception"]
    assert SECRET not in json.dumps(out)


# -- metrics and logs from a real worker process ----------------------------------------------


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())


def _value(text: str, name: str, **labels: str) -> float:
    """The value of sample `name` whose labels include `labels` (0 if absent)."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if m is None or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def test_a_worker_process_serves_metrics_and_logs_json(
    store: Store, db_url: str, tmp_path: Path,
) -> None:
    client = Client(store, [Relay])
    name = Relay.spec.name
    # Due before the worker starts: the backlog gauge sees them.
    waiting = [client.start(Relay, Received(_tag(), token=SECRET)) for _ in range(3)]
    with WorkerProcesses(db_url, tmp_path) as workers:
        workers.spawn("w1", "tests.integration.test_observability:Relay",
                      extra=["--metrics-port", "0", "--metrics-host", "127.0.0.1",
                             "--log-format", "json"])
        workers.wait_ready("w1")
        port = int(wait_until(lambda: re.search(r"metrics at http://127\.0\.0\.1:(\d+)/metrics",
                                                workers.log("w1")), "the metrics port").group(1))
        url = f"http://127.0.0.1:{port}/metrics"
        ok = [client.start(Relay, Received(_tag(), token=SECRET, fail_first=True))
              for _ in range(2)]
        parked = client.start(Relay, Received("park", token=SECRET))
        for wid in [*waiting, *ok, parked]:
            client.wait(wid, timeout=WAIT)

        def scraped() -> str:
            text = _scrape(url)
            done = _value(text, "statemachine_transitions_total", machine=name,
                          from_state="Forwarded", to_state="Delivered", kind="transition")
            return text if done == 5 else ""

        text = wait_until(scraped, "five deliveries counted")
    assert _value(text, "statemachine_transitions_total", machine=name, from_state="Received",
                  to_state="Received", kind="failed_attempt") == 2
    assert _value(text, "statemachine_failed_attempts_total", machine=name,
                  state="Received") == 2
    assert _value(text, "statemachine_parked_total", machine=name, state="Received") == 1
    assert _value(text, "statemachine_handler_duration_seconds_count", machine=name,
                  handler="forward") == 3 + 2 * 2 + 1
    assert _value(text, "statemachine_handler_duration_seconds_count", machine=name,
                  handler="deliver") == 5
    assert _value(text, "statemachine_claim_duration_seconds_count") >= 1
    assert _value(text, "statemachine_handlers_in_flight", machine=name) == 0
    assert f'statemachine_due_workflows{{machine="{name}"}}' in text

    def logged() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        # The worker writes its log from a queue in a thread of its own: the lines may follow
        # the commits they tell of by a moment.
        records = [json.loads(line) for line in workers.log("w1").splitlines()
                   if line.startswith("{")]
        moves = [r for r in records if r["logger"] == "statemachine.worker.transitions"]
        mine = [r for r in moves if r["workflow_id"] == str(ok[0])]
        return (records, mine) if len(mine) == 3 else None

    records, mine = wait_until(logged, "three transitions of the first workflow logged")
    log = workers.log("w1")
    assert SECRET not in log
    assert [(r["from_state"], r["to_state"], r["kind"], r["attempt"]) for r in mine] == [
        ("Received", "Received", "failed_attempt", 1), ("Received", "Forwarded", "transition", 2),
        ("Forwarded", "Delivered", "transition", 1)]
    assert all(r["level"] == "INFO" and r["machine"] == name and r["duration_ms"] >= 0
               for r in mine)
    handler_lines = [r for r in records if r["logger"] == f"statemachine.workflow.{name}"]
    assert handler_lines
    assert {"workflow_id", "state"} <= set(handler_lines[0])


def test_the_due_gauge_counts_due_rows_by_machine_and_is_cached(store: Store) -> None:
    client = Client(store, [Relay])
    for _ in range(4):
        client.start(Relay, Received(_tag(), token="t"))
    metrics = Metrics(store, [Relay.spec.name, "other"], backlog_every=3600)

    def due() -> dict[str, float]:
        found = {}
        for family in metrics.registry.collect():
            if family.name == "statemachine_due_workflows":
                found = {s.labels["machine"]: s.value for s in family.samples}
        return found

    assert due() == {Relay.spec.name: 4, "other": 0}
    client.start(Relay, Received(_tag(), token="t"))
    assert due()[Relay.spec.name] == 4  # cached: one count per interval, not per scrape


# -- spans ---------------------------------------------------------------------------------------


def test_each_transition_is_a_span_in_its_workflows_trace_linked_to_the_parent(
    store: Store,
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    client = Client(store, [Fan, Relay])
    tag = _tag()
    with Worker(store, [Fan, Relay], observers=[Tracing(provider)], **FAST):
        parent = client.start(Fan, Fanning(tag))
        client.wait(parent, timeout=WAIT)
    child = store.sql.children_of(parent)[0].id
    spans = exporter.get_finished_spans()

    def of(wid: uuid.UUID) -> list[Any]:
        return [s for s in spans if s.attributes["statemachine.workflow_id"] == str(wid)]

    parent_spans, child_spans = of(parent), of(child)
    assert [(s.attributes["statemachine.from_state"], s.attributes["statemachine.to_state"])
            for s in parent_spans] == [("Fanning", "Gathered"), ("Gathered", "AllDone")]
    assert [s.attributes["statemachine.to_state"] for s in child_spans] == [
        "Forwarded", "Delivered"]
    for wid, group in ((parent, parent_spans), (child, child_spans)):
        assert {s.context.trace_id for s in group} == {wid.int}  # one trace per workflow
        assert len({s.parent.span_id for s in group}) == 1  # under the workflow's span
    last = parent_spans[-1]
    assert (last.name, last.attributes["statemachine.outcome"],
            last.attributes["statemachine.attempt"], last.attributes["statemachine.kind"]) == (
        f"statemachine {Fan.spec.name}.Gathered", "done", 1, "transition")
    assert all(s.start_time <= s.end_time for s in spans)
    for s in child_spans:  # a child points at its parent's trace
        assert [(link.context.trace_id, link.attributes["statemachine.link"])
                for link in s.links] == [(parent.int, "parent")]
    assert parent_spans[0].links == ()


def test_a_parked_workflows_span_has_an_error_status(store: Store) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    client = Client(store, [Relay])
    with Worker(store, [Relay], observers=[Tracing(provider)], **FAST):
        wid = client.start(Relay, Received("park", token="t"))
        client.wait(wid, timeout=WAIT)
    (span,) = [s for s in exporter.get_finished_spans()
               if s.attributes["statemachine.workflow_id"] == str(wid)]
    assert span.attributes["statemachine.outcome"] == "failed"
    assert span.status.status_code == StatusCode.ERROR


SITECUSTOMIZE = """
import json, os
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

def _line(span):
    return json.dumps({"name": span.name, "trace_id": span.context.trace_id,
                       "attributes": dict(span.attributes)}) + "\\n"

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(
    out=open(os.environ["SPANS_FILE"], "a", buffering=1), formatter=_line)))
trace.set_tracer_provider(provider)
"""


def test_worker_otel_records_spans_with_the_global_tracer_provider(
    store: Store, db_url: str, tmp_path: Path,
) -> None:
    """`statemachine worker --otel` uses the provider the application configured (here by a
    sitecustomize module, as an OpenTelemetry distro would)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE, "utf-8")
    spans_file = tmp_path / "spans.jsonl"
    client = Client(store, [Relay])
    with WorkerProcesses(db_url, tmp_path, env={"SPANS_FILE": str(spans_file)}) as workers:
        workers.env["PYTHONPATH"] = f"{site}:{ROOT}"
        workers.spawn("w1", "tests.integration.test_observability:Relay", extra=["--otel"])
        workers.wait_ready("w1")
        wid = client.start(Relay, Received(_tag(), token=SECRET))
        client.wait(wid, timeout=WAIT)

        def spans() -> list[dict[str, Any]]:
            found = [json.loads(line) for line in spans_file.read_text().splitlines()] \
                if spans_file.exists() else []
            mine = [s for s in found if s["attributes"]["statemachine.workflow_id"] == str(wid)]
            return mine if len(mine) == 2 else []

        mine = wait_until(spans, "two spans written by the worker")

        def moves() -> list[str]:
            # Log lines are written from a queue by a thread of their own: they may follow the
            # commits (and spans) by a moment.
            lines = [line for line in workers.log("w1").splitlines()
                     if "statemachine.worker.transitions" in line and f"workflow_id={wid}" in line]
            return lines if len(lines) == 2 else []

        moved = wait_until(moves, "two transitions logged by the worker")
        log = workers.log("w1")
    # The default text format: the fields after the message, ctx.log's too, redacted.
    assert "from_state=Received to_state=Forwarded kind=transition" in moved[0]
    assert f"forwarding with token=[redacted] workflow_id={wid} state=Received" in log
    assert SECRET not in log
    assert [(s["attributes"]["statemachine.from_state"], s["attributes"]["statemachine.to_state"])
            for s in mine] == [("Received", "Forwarded"), ("Forwarded", "Delivered")]
    assert {s["trace_id"] for s in mine} == {wid.int}
    assert SECRET not in spans_file.read_text()


# -- without the extras --------------------------------------------------------------------------


def test_without_the_extras_the_core_runs_and_asking_for_them_says_what_to_install(
    db_url: str,
) -> None:
    """prometheus_client and opentelemetry are made unimportable in a fresh interpreter: a
    worker runs a workflow, and `--metrics-port` fails with one line naming the extra."""
    script = f"""
import sys
sys.modules["prometheus_client"] = None
sys.modules["opentelemetry"] = None
from statemachine import Client, Store, Worker, Metrics, InvalidArgument
from tests.integration.test_observability import Relay, Received
store = Store({db_url!r})
client = Client(store, [Relay])
with Worker(store, [Relay], poll_interval=0.05):
    wid = client.start(Relay, Received("x", token="t"))
    print(client.wait(wid, timeout=60).status)
try:
    Metrics()
except InvalidArgument as e:
    print(e)
from statemachine._cli import main
sys.argv = ["statemachine", "--db", {db_url!r}, "worker", "--app",
            "tests.integration.test_observability:Relay", "--metrics-port", "0"]
main()
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    out = done.stdout.splitlines()
    assert out[:2] == ["done", "metrics need the prometheus-client package: pip install "
                               "'statemachine[metrics]'"], done
    assert done.returncode == 1, done
    assert done.stderr.strip().splitlines()[-1] == (
        "error: metrics need the prometheus-client package: pip install "
        "'statemachine[metrics]'"), done.stderr


def test_metrics_without_the_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(InvalidArgument, match=r"statemachine\[metrics\]"):
        Metrics()
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(InvalidArgument, match=r"statemachine\[otel\]"):
        Tracing()
