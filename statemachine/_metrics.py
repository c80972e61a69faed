"""Prometheus metrics of a worker (the optional extra ``statemachine[metrics]``).

`Metrics` is an `Observer` (see `_observe`) that keeps, in its own registry:

=========================================== ===============================================
``statemachine_transitions_total``          committed changes, by machine, from_state,
                                            to_state and kind (history kind)
``statemachine_handler_duration_seconds``   handler run time, by machine and handler
                                            (histogram)
``statemachine_claim_duration_seconds``     time a claim statement took (histogram)
``statemachine_failed_attempts_total``      handler attempts that failed and will be
                                            retried, by machine and state
``statemachine_parked_total``               workflows parked (status failed), by machine and
                                            state
``statemachine_handlers_in_flight``         handlers running now, by machine
``statemachine_due_workflows``              rows due now (ready or waiting with wake_at in
                                            the past, or a lease expired), by machine: read
                                            from SQL when scraped, at most every
                                            `backlog_every` seconds
=========================================== ===============================================

``prometheus_client`` is imported here only: the core never needs it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ._records import Change, ClaimedRow
from .errors import InvalidArgument

if TYPE_CHECKING:
    from ._store import Store

__all__ = ["Metrics"]

_HANDLER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    300.0)
_CLAIM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise InvalidArgument(
            "metrics need the prometheus-client package: pip install 'statemachine[metrics]'"
        ) from None
    return prometheus_client


class Metrics:
    """A worker's Prometheus metrics. Pass it to ``Worker(..., observers=[metrics])``; serve
    them with `serve` (what ``statemachine worker --metrics-port`` does) or your own exporter
    over `registry`. `store` and `machines` enable the due-rows gauge."""

    def __init__(self, store: Store | None = None, machines: Sequence[str] = (), *,
                 backlog_every: float = 5.0, registry: Any = None) -> None:
        prom = _prometheus()
        self.registry = registry if registry is not None else prom.CollectorRegistry()
        r = self.registry
        self.transitions = prom.Counter(
            "statemachine_transitions", "Committed changes of workflows.",
            ["machine", "from_state", "to_state", "kind"], registry=r)
        self.handler_seconds = prom.Histogram(
            "statemachine_handler_duration_seconds", "How long handlers ran.",
            ["machine", "handler"], buckets=_HANDLER_BUCKETS, registry=r)
        self.claim_seconds = prom.Histogram(
            "statemachine_claim_duration_seconds", "How long a claim of due rows took.",
            buckets=_CLAIM_BUCKETS, registry=r)
        self.failed_attempts = prom.Counter(
            "statemachine_failed_attempts", "Handler attempts that failed and will be retried.",
            ["machine", "state"], registry=r)
        self.parked = prom.Counter(
            "statemachine_parked", "Workflows parked (status failed) for a person to look at.",
            ["machine", "state"], registry=r)
        self.in_flight = prom.Gauge(
            "statemachine_handlers_in_flight", "Handlers running now.", ["machine"],
            registry=r)
        self._server: Any = None
        if store is not None and machines:
            r.register(_Backlog(prom, store, list(machines), backlog_every))

    # -- Observer ------------------------------------------------------------------------------

    def claimed(self, machines: Sequence[str], rows: int, seconds: float) -> None:
        self.claim_seconds.observe(seconds)

    def handler_started(self, row: ClaimedRow, handler: str) -> None:
        self.in_flight.labels(row.machine).inc()

    def handler_finished(self, row: ClaimedRow, handler: str, seconds: float,
                         raised: BaseException | None) -> None:
        self.in_flight.labels(row.machine).dec()
        self.handler_seconds.labels(row.machine, handler).observe(seconds)

    def committed(self, row: ClaimedRow, change: Change, version: int, seconds: float) -> None:
        self.transitions.labels(row.machine, change.from_state or "", change.to_state,
                                change.kind).inc()
        if change.kind == "failed_attempt":
            self.failed_attempts.labels(row.machine, change.from_state or "").inc()
        if change.status == "failed":
            self.parked.labels(row.machine, change.to_state).inc()

    # -- serving -------------------------------------------------------------------------------

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:  # noqa: S104 (a scrape target)
        """Serve ``/metrics`` over HTTP on `port` (0: any free port) in a daemon thread;
        returns the port."""
        server, _thread = _prometheus().start_http_server(port, addr=addr,
                                                          registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        """Stop serving (if `serve` was called)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Backlog:
    """The due-rows gauge, read from SQL at scrape time and cached for `every` seconds (a
    scrape never costs more than one grouped count per interval)."""

    def __init__(self, prom: Any, store: Store, machines: list[str], every: float) -> None:
        self._family = prom.metrics_core.GaugeMetricFamily
        self._store = store
        self._machines = machines
        self._every = every
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._counts: dict[str, int] = {}

    def describe(self) -> list[Any]:
        return [self._family("statemachine_due_workflows", "Rows due now, by machine.",
                             labels=["machine"])]

    def collect(self) -> Iterator[Any]:
        with self._lock:
            if time.monotonic() - self._at >= self._every:
                self._counts = self._store.sql.due_counts(self._machines)
                self._at = time.monotonic()
            counts = dict(self._counts)
        family = self._family("statemachine_due_workflows", "Rows due now, by machine.",
                              labels=["machine"])
        for machine in self._machines:
            family.add_metric([machine], counts.get(machine, 0))
        yield family
