"""The database contract: every table and index statemachine uses, as SQLAlchemy Core objects.

Operators write SQL against these names, so they are public interface
(see docs/reference/schema.md).
`migrations/` builds the same schema from plain SQL; a test keeps the two identical.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    Uuid,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeEngine

from .errors import InvalidArgument

__all__ = [
    "ACTIVE_STATUSES",
    "FINISHED_STATUSES",
    "PURGEABLE_STATUSES",
    "STATUSES",
    "events",
    "history",
    "limit_slots",
    "limit_windows",
    "metadata",
    "migrations_table",
    "schedules",
    "workflows",
]

STATUSES = ("ready", "running", "waiting", "done", "failed", "cancelled")
ACTIVE_STATUSES = ("ready", "running", "waiting")
FINISHED_STATUSES = ("done", "failed", "cancelled")
# Finished for good: what retention purges (a parked `failed` workflow waits for a person).
PURGEABLE_STATUSES = ("done", "cancelled")


def _aware_utc(value: datetime) -> datetime:
    """`value` in UTC; a naive one is refused (which zone it meant is unknown)."""
    if value.tzinfo is None:
        raise InvalidArgument(f"naive datetime {value!r}: statemachine stores aware UTC times")
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def _as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL stores TIMESTAMPTZ. SQLite has no date type: values are stored as naive UTC text in a
    fixed-width format, so string comparison in SQL is time comparison.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = _aware_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    @staticmethod
    def sqlite_text(value: datetime | None) -> str | None:
        """What SQLAlchemy's SQLite processing makes of `value` (this type's conversion, then the
        dialect's fixed-width text), in one call: the fast path's bind processor on SQLite."""
        if value is None:
            return None
        # (datetime's own isoformat: a subclass may override it with another signature)
        return datetime.isoformat(_aware_utc(value).replace(tzinfo=None), " ", "microseconds")

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class TextUUID(TypeDecorator[uuid.UUID]):
    """Native UUID on PostgreSQL/CockroachDB; dashed text on SQLite, so SQL reads naturally."""

    impl = Uuid
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(36))
        return dialect.type_descriptor(Uuid(as_uuid=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = _as_uuid(value)
        return str(value) if dialect.name == "sqlite" else value

    @staticmethod
    def sqlite_text(value: Any) -> str | None:
        """`process_bind_param` on SQLite, in one call: the fast path's bind processor there."""
        return None if value is None else str(_as_uuid(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> uuid.UUID | None:
        return None if value is None else _as_uuid(value)


JSONData = JSON().with_variant(JSONB(), "postgresql", "cockroachdb")

metadata = MetaData()

workflows = Table(
    "sm_workflows",
    metadata,
    Column("id", TextUUID, primary_key=True),
    Column("machine", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("data", JSONData, nullable=False),
    Column("status", Text, nullable=False),
    Column("version", BigInteger, nullable=False),
    # The version at which the current state was entered: the transition's idempotency key derives
    # from it, so it stays the same across retries (which bump `version`) of one transition.
    Column("entered_version", BigInteger, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("wake_at", UTCDateTime, nullable=True),
    Column("lease_token", Text, nullable=True),
    Column("lease_owner", Text, nullable=True),
    Column("key", Text, nullable=True),
    Column("parent_id", TextUUID, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # Set (to who asked and why) when cancellation was requested and not yet carried out.
    Column("cancel_requested", Text, nullable=True),
    # Set when an at-most-once handler's attempt started and never finished (see at_most_once).
    Column("in_doubt", Text, nullable=True),
    # Polls of a polling step in the current state (`Poll`): a poll that writes no history row
    # moves only this, `wake_at` and `updated_at`. Reset when a new state is entered.
    Column("polls", Integer, nullable=False, server_default=text("0")),
    # When the workflow finished (done or cancelled; NULL while it can still run, and while it is
    # parked for a person): retention counts from here (`statemachine purge`, row-level TTL on
    # CockroachDB).
    Column("purge_after", UTCDateTime, nullable=True),
)

# Only rows that can come due are indexed (finished rows have wake_at NULL), so the claim query's
# index stays the size of the live work, however many finished rows the table holds.
Index("sm_workflows_due", workflows.c.wake_at, sqlite_where=text("wake_at IS NOT NULL"),
      postgresql_where=text("wake_at IS NOT NULL"))
Index("sm_workflows_key", workflows.c.machine, workflows.c.key, unique=True,
      sqlite_where=text("key IS NOT NULL"), postgresql_where=text("key IS NOT NULL"))
Index("sm_workflows_parent", workflows.c.parent_id, sqlite_where=text("parent_id IS NOT NULL"),
      postgresql_where=text("parent_id IS NOT NULL"))
Index("sm_workflows_machine_status", workflows.c.machine, workflows.c.status)
# What the reaper scans for finished workflows past their retention (on CockroachDB hash-sharded,
# and row-level TTL deletes them: see migrations/cockroachdb/0005_retention.sql).
Index("sm_workflows_purge", workflows.c.purge_after,
      sqlite_where=text("purge_after IS NOT NULL"),
      postgresql_where=text("purge_after IS NOT NULL"))

history = Table(
    "sm_history",
    metadata,
    Column("workflow_id", TextUUID, nullable=False),
    Column("version", BigInteger, nullable=False),
    # start | transition | failed_attempt | parked | retry | cancel | external_change
    Column("kind", Text, nullable=False),
    Column("from_state", Text, nullable=True),
    Column("to_state", Text, nullable=False),
    Column("data", JSONData, nullable=False),
    Column("status", Text, nullable=False),
    Column("cause", Text, nullable=True),
    Column("attempt", Integer, nullable=False),
    Column("error", Text, nullable=True),
    Column("worker", Text, nullable=True),
    Column("started_at", UTCDateTime, nullable=True),
    Column("finished_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("workflow_id", "version", name="sm_history_pkey"),
)

# The inbox: events sent to a workflow, buffered until a state accepts them, consumed atomically
# with the transition they cause. `noticed` is false for rows inserted by plain SQL until a worker
# has woken their workflow.
events = Table(
    "sm_events",
    metadata,
    Column("id", TextUUID, primary_key=True),
    Column("workflow_id", TextUUID, nullable=False),
    Column("type", Text, nullable=False),
    Column("data", JSONData, nullable=False),
    Column("status", Text, nullable=False, server_default="pending"),  # pending|consumed|rejected
    Column("noticed", Boolean, nullable=False, server_default=false()),
    Column("error", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("consumed_at", UTCDateTime, nullable=True),
    Column("consumed_version", BigInteger, nullable=True),
    # The event's number in its workflow's inbox (1, 2, ...), given by the statement that records
    # it: events are consumed in this order, whatever the clocks of the nodes that took them.
    # NULL for rows recorded before version 0006, and for a row inserted by plain SQL until a
    # worker notices it (unnumbered rows are read first, by time).
    Column("seq", BigInteger, nullable=True),
)
Index("sm_events_seq", events.c.workflow_id, events.c.seq, unique=True)
Index("sm_events_pending", events.c.workflow_id, events.c.created_at,
      sqlite_where=text("status = 'pending'"), postgresql_where=text("status = 'pending'"))
Index("sm_events_unnoticed", events.c.created_at,
      sqlite_where=text("noticed = 0"), postgresql_where=text("noticed = false"))
# A workflow's events whatever their status: the reaper deletes them with their workflow.
Index("sm_events_workflow", events.c.workflow_id)

schedules = Table(
    "sm_schedules",
    metadata,
    Column("name", Text, primary_key=True),
    Column("last_tick", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Rate limits: `slot` rows per key cap concurrent handlers (a holder keeps its slot until it
# releases it or `expires_at` passes); a sliding window of recent start times per key caps starts
# per second exactly (no more than N in any window).
limit_slots = Table(
    "sm_limit_slots",
    metadata,
    Column("key", Text, nullable=False),
    Column("slot", Integer, nullable=False),
    Column("holder", TextUUID, nullable=True),
    Column("expires_at", UTCDateTime, nullable=True),
    PrimaryKeyConstraint("key", "slot", name="sm_limit_slots_pkey"),
)

limit_windows = Table(
    "sm_limit_windows",
    metadata,
    Column("key", Text, primary_key=True),
    Column("recent", JSONData, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

migrations_table = Table(
    "sm_migrations",
    metadata,
    Column("version", Text, primary_key=True),
    Column("applied_at", UTCDateTime, nullable=False),
)
