"""Every SQL statement statemachine runs, and the one retry wrapper they all go through.

One package, one concern a module: `_base` (connections, transactions, time, reads), `_workflows`
(start, claim, commit), `_waiting` (events, children, cancellation), `_limits` (rate limits and
schedules). `Store` combines them.

The contract (see DESIGN.md section 3):

* **claim**: one statement (PostgreSQL/CockroachDB) takes a batch of due rows with
  ``FOR UPDATE SKIP LOCKED`` and rewrites their lease; on SQLite one ``BEGIN IMMEDIATE``
  transaction does the same under SQLite's single write lock.
* **apply**: a compare-and-set on ``(id, version, lease_token)`` that writes the next row and
  appends its history row atomically (one CTE statement on servers), checked through ``RETURNING``.
* **times**: leases and timers use the database clock (``now()``) on servers, unless the store was
  given an explicit clock (tests move a fake one); SQLite always uses the process clock.
"""

from __future__ import annotations

from .._database import default_database_url
from .._records import Change, ChildStart, ClaimedRow, Committed
from ._limits import LimitStatements
from ._waiting import WaitingStatements

__all__ = ["Change", "ChildStart", "ClaimedRow", "Committed", "Store", "default_database_url"]


class Store(WaitingStatements, LimitStatements):
    """The database behind the engine: a SQLAlchemy engine plus every statement, by name."""
