-- statemachine schema, version 0001: workflows and their history (SQLite).
-- UUIDs are dashed text; times are naive UTC text 'YYYY-MM-DD HH:MM:SS.ffffff' (sorts as time).
CREATE TABLE IF NOT EXISTS sm_workflows (
    id              VARCHAR(36) NOT NULL PRIMARY KEY,
    machine         TEXT        NOT NULL,
    state           TEXT        NOT NULL,
    data            JSON        NOT NULL,
    status          TEXT        NOT NULL,
    version         BIGINT      NOT NULL,
    entered_version BIGINT      NOT NULL,
    attempt         INTEGER     NOT NULL,
    wake_at         DATETIME    NULL,
    lease_token     TEXT        NULL,
    lease_owner     TEXT        NULL,
    key             TEXT        NULL,
    parent_id       VARCHAR(36) NULL,
    last_error      TEXT        NULL,
    created_at      DATETIME    NOT NULL,
    updated_at      DATETIME    NOT NULL
);

CREATE INDEX IF NOT EXISTS sm_workflows_due ON sm_workflows (wake_at) WHERE wake_at IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS sm_workflows_key ON sm_workflows (machine, key) WHERE key IS NOT NULL;
CREATE INDEX IF NOT EXISTS sm_workflows_parent ON sm_workflows (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS sm_workflows_machine_status ON sm_workflows (machine, status);

CREATE TABLE IF NOT EXISTS sm_history (
    workflow_id VARCHAR(36) NOT NULL,
    version     BIGINT      NOT NULL,
    kind        TEXT        NOT NULL,
    from_state  TEXT        NULL,
    to_state    TEXT        NOT NULL,
    data        JSON        NOT NULL,
    status      TEXT        NOT NULL,
    cause       TEXT        NULL,
    attempt     INTEGER     NOT NULL,
    error       TEXT        NULL,
    worker      TEXT        NULL,
    started_at  DATETIME    NULL,
    finished_at DATETIME    NOT NULL,
    CONSTRAINT sm_history_pkey PRIMARY KEY (workflow_id, version)
);
