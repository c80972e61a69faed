-- statemachine schema, version 0006: events are numbered per workflow (seq), in the statement
-- that records them, and consumed in that order: no clock decides the order of two events.
-- Events recorded before this version keep seq NULL and are read first, in time order (as
-- before): no data is rewritten here.
ALTER TABLE sm_events ADD COLUMN seq BIGINT NULL;

CREATE UNIQUE INDEX IF NOT EXISTS sm_events_seq ON sm_events (workflow_id, seq);
