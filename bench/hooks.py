"""Counting and timing the statements a `Store` sends, at the driver: every psycopg connection
the store's pools open gets a cursor class that counts and times `execute`.

Not through SQLAlchemy's cursor events: statemachine runs its hot statements straight on the
psycopg connection while no such listener is attached, and would fall back to its slower path if
one were (so counting that way would measure other code). Pool and transaction events do not
change its path; they are counted too.

Used by the `sql` section, in this process (threads mode) and inside worker processes (processes
mode, where the counts come back in the child's report). The counting costs a little time, so no
timed throughput run installs it.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import event

from statemachine import Store

from .database import store_engines

__all__ = ["APPLY", "CLAIM", "StatementCounter", "classify"]

CLAIM = "claim (UPDATE ... FOR UPDATE SKIP LOCKED)"
APPLY = "apply (CTE: UPDATE workflow row + INSERT history row)"


def classify(statement: str) -> str:
    """A short name for a statement: claim, apply, or verb + first sm_ table."""
    s = " ".join(statement.split())
    upper = s.upper()
    if "SKIP LOCKED" in upper:
        return CLAIM
    if upper.startswith("WITH") and "INSERT INTO SM_HISTORY" in upper:
        return APPLY
    verb = upper.split(" ", 1)[0]
    tables = re.findall(r"\bsm_\w+", s)
    if verb == "SELECT" and not tables:
        return f"SELECT {s[7:40]}"
    return f"{verb} {tables[0] if tables else s[:40]}"


def _text(query: Any, cursor: psycopg.Cursor[Any]) -> str:
    if isinstance(query, sql.Composable):
        return query.as_string(cursor.connection)
    if isinstance(query, bytes | bytearray | memoryview):
        return bytes(query).decode(errors="replace")
    return str(query)


class StatementCounter:
    """Counts statements by kind with the seconds each took from the client's side (round trip
    included), and SQLAlchemy transaction and pool events."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.seconds: dict[str, float] = {}
        self.events: Counter[str] = Counter()
        self._lock = threading.Lock()  # handler threads record at the same time

    def install(self, store: Store) -> None:
        """Hook every engine of `store` (before it opens its first connection)."""
        cursor_class = self._cursor_class()

        def on_connect(dbapi_conn: Any, _record: Any) -> None:
            if isinstance(dbapi_conn, psycopg.Connection):
                dbapi_conn.cursor_factory = cursor_class

        for engine in store_engines(store):
            event.listen(engine.pool, "connect", on_connect)
            event.listen(engine.pool, "checkout",
                         lambda *_a: self.events.update(["pool_checkout"]))
            for name in ("begin", "commit", "rollback"):
                event.listen(engine, name, lambda *_a, _n=name: self.events.update([_n]))

    def _cursor_class(self) -> type[psycopg.Cursor[Any]]:
        counter = self

        class CountingCursor(psycopg.Cursor[Any]):
            """A psycopg cursor that reports each statement it runs, and how long it took."""

            def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return super().execute(query, params, **kwargs)
                finally:
                    counter.record(_text(query, self), time.perf_counter() - t0)

        return CountingCursor

    def record(self, statement: str, seconds: float) -> None:
        """Count one statement that took `seconds`."""
        kind = classify(statement)
        with self._lock:
            self.count[kind] += 1
            self.seconds[kind] = self.seconds.get(kind, 0.0) + seconds

    def stats(self) -> dict[str, float]:
        """Flat counters (``n|kind``, ``s|kind``, ``ev|event``), summable across processes."""
        return {**{f"n|{k}": float(v) for k, v in self.count.items()},
                **{f"s|{k}": float(v) for k, v in self.seconds.items()},
                **{f"ev|{k}": float(v) for k, v in self.events.items()}}

    @staticmethod
    def summarise(stats: dict[str, float], transitions: int) -> dict[str, Any]:
        """Per-transition figures from (summed) `stats`."""
        count = {k[2:]: v for k, v in stats.items() if k.startswith("n|")}
        seconds = {k[2:]: v for k, v in stats.items() if k.startswith("s|")}
        events = {k[3:]: v for k, v in stats.items() if k.startswith("ev|")}
        ordered = sorted(count, key=lambda k: -count[k])
        return {
            "statements_per_transition": round(sum(count.values()) / transitions, 3),
            "by_kind_per_transition": {k: round(count[k] / transitions, 3) for k in ordered},
            "mean_ms_by_kind": {k: round(1000 * seconds.get(k, 0.0) / count[k], 3)
                                for k in ordered},
            "sqlalchemy_events_per_transition": {k: round(v / transitions, 3)
                                                 for k, v in sorted(events.items())},
        }
