-- statemachine schema, version 0006: events are numbered per workflow (seq), in the statement
-- that records them, and consumed in that order: no clock decides the order of two events.
-- Events recorded before this version keep seq NULL and are read first, in time order (as
-- before): no data is rewritten here.
-- The same as postgresql/0006; each statement in a transaction of its own (CockroachDB does
-- not mix DDL with DML). The key (workflow_id, seq) leads with a random UUID: no hotspot.
ALTER TABLE sm_events ADD COLUMN IF NOT EXISTS seq BIGINT NULL;

CREATE UNIQUE INDEX IF NOT EXISTS sm_events_seq ON sm_events (workflow_id, seq);
