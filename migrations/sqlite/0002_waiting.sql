-- statemachine schema, version 0002: events (signals), cancellation requests, schedules (SQLite).
-- Defaults let an operator INSERT an event with just workflow_id, type and data.
ALTER TABLE sm_workflows ADD COLUMN cancel_requested TEXT NULL;

CREATE TABLE IF NOT EXISTS sm_events (
    id               VARCHAR(36) NOT NULL PRIMARY KEY DEFAULT (lower(
                         hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' ||
                         substr(hex(randomblob(2)), 2) || '-' ||
                         substr('89ab', 1 + (abs(random()) % 4), 1) ||
                         substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))),
    workflow_id      VARCHAR(36) NOT NULL,
    type             TEXT        NOT NULL,
    data             JSON        NOT NULL DEFAULT '{}',
    status           TEXT        NOT NULL DEFAULT 'pending',
    noticed          BOOLEAN     NOT NULL DEFAULT 0,
    error            TEXT        NULL,
    created_at       DATETIME    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f000', 'now')),
    consumed_at      DATETIME    NULL,
    consumed_version BIGINT      NULL
);
CREATE INDEX IF NOT EXISTS sm_events_pending ON sm_events (workflow_id, created_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS sm_events_unnoticed ON sm_events (created_at) WHERE noticed = 0;

CREATE TABLE IF NOT EXISTS sm_schedules (
    name       TEXT     NOT NULL PRIMARY KEY,
    last_tick  DATETIME NULL,
    updated_at DATETIME NOT NULL
);
