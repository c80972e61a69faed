"""OpenTelemetry spans of a worker's transitions (the optional extra ``statemachine[otel]``).

`Tracing` is an `Observer` (see `_observe`) that records one span per committed change, named
``statemachine MACHINE.FROM_STATE``, from the start of the row's turn to its commit, with the
attributes ``statemachine.workflow_id``, ``.machine``, ``.from_state``, ``.to_state``,
``.attempt``, ``.version``, ``.kind`` and ``.outcome`` (the workflow's status after it), and
an error status when the workflow was parked.

**How spans are linked.** Nothing has to be stored: a workflow's id (a UUID, 128 bits) *is* its
trace id. Every span of a workflow is a child of the same remote parent, the workflow's own
span context (trace id = workflow id, span id = the first 64 bits of a hash of it), so all its
transitions, on any worker and after any restart, fall in one trace. A child workflow's spans
carry a link to its parent's workflow span context (attribute ``statemachine.link`` =
``parent``), so a trace viewer goes from a child to the parent's trace. The workflow span itself
is never reported (its transitions are); backends show the transitions as one trace.

``opentelemetry-api`` is imported here only: the core never needs it.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

from ._observe import Quiet
from ._records import Change, ClaimedRow
from .errors import InvalidArgument

__all__ = ["Tracing", "workflow_span_context"]


def _otel() -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        raise InvalidArgument(
            "tracing needs the opentelemetry-api package: pip install 'statemachine[otel]'"
        ) from None
    return trace


def workflow_span_context(workflow_id: uuid.UUID) -> Any:
    """The span context every transition span of `workflow_id` descends from: trace id = the
    workflow's id, span id derived from it (deterministic, so any process can rebuild it)."""
    trace = _otel()
    span_id = int.from_bytes(hashlib.sha256(workflow_id.bytes).digest()[:8], "big") or 1
    return trace.SpanContext(trace_id=workflow_id.int or 1, span_id=span_id, is_remote=True,
                             trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))


class Tracing(Quiet):
    """One span per committed transition. `tracer_provider`: where spans go (default: the
    global one set with ``opentelemetry.trace.set_tracer_provider``)."""

    def __init__(self, tracer_provider: Any = None) -> None:
        trace = _otel()
        self._trace = trace
        self.tracer = trace.get_tracer("statemachine", tracer_provider=tracer_provider)

    def committed(self, row: ClaimedRow, change: Change, version: int, seconds: float) -> None:
        trace = self._trace
        parent = trace.set_span_in_context(
            trace.NonRecordingSpan(workflow_span_context(change.workflow_id)))
        links = []
        if row.parent_id is not None:
            links.append(trace.Link(workflow_span_context(row.parent_id),
                                    {"statemachine.link": "parent",
                                     "statemachine.parent_id": str(row.parent_id)}))
        end = time.time_ns()
        start = end - int(seconds * 1e9)
        span = self.tracer.start_span(
            f"statemachine {row.machine}.{change.from_state}", context=parent, links=links,
            start_time=start, kind=trace.SpanKind.INTERNAL, attributes={
                "statemachine.workflow_id": str(change.workflow_id),
                "statemachine.machine": row.machine,
                "statemachine.from_state": change.from_state or "",
                "statemachine.to_state": change.to_state,
                "statemachine.attempt": change.attempt,
                "statemachine.version": version,
                "statemachine.kind": change.kind,
                "statemachine.outcome": change.status,
            })
        if change.status == "failed":
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"parked in {change.to_state}"))
        elif change.kind == "failed_attempt":
            span.set_status(trace.Status(trace.StatusCode.ERROR, "attempt failed; retrying"))
        span.end(end_time=end)
