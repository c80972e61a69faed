-- statemachine schema, version 0002: events (signals), cancellation requests, schedules.
-- The same as postgresql/0002 (see 0001).
ALTER TABLE sm_workflows ADD COLUMN IF NOT EXISTS cancel_requested TEXT NULL;

CREATE TABLE IF NOT EXISTS sm_events (
    id               UUID        NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    workflow_id      UUID        NOT NULL,
    type             TEXT        NOT NULL,
    data             JSONB       NOT NULL DEFAULT '{}',
    status           TEXT        NOT NULL DEFAULT 'pending',
    noticed          BOOLEAN     NOT NULL DEFAULT false,
    error            TEXT        NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    consumed_at      TIMESTAMPTZ NULL,
    consumed_version BIGINT      NULL
);
CREATE INDEX IF NOT EXISTS sm_events_pending ON sm_events (workflow_id, created_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS sm_events_unnoticed ON sm_events (created_at) WHERE noticed = false;

CREATE TABLE IF NOT EXISTS sm_schedules (
    name       TEXT        NOT NULL PRIMARY KEY,
    last_tick  TIMESTAMPTZ NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
