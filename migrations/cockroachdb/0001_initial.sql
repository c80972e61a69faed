-- statemachine schema, version 0001: workflows and their history.
-- The same as postgresql/0001 (the CockroachDB-only layout comes in 0005, so databases migrated
-- with the postgresql/ set before CockroachDB had a set of its own converge on the same schema).
CREATE TABLE IF NOT EXISTS sm_workflows (
    id              UUID        NOT NULL PRIMARY KEY,
    machine         TEXT        NOT NULL,
    state           TEXT        NOT NULL,
    data            JSONB       NOT NULL,
    status          TEXT        NOT NULL,
    version         BIGINT      NOT NULL,
    entered_version BIGINT      NOT NULL,
    attempt         INTEGER     NOT NULL,
    wake_at         TIMESTAMPTZ NULL,
    lease_token     TEXT        NULL,
    lease_owner     TEXT        NULL,
    key             TEXT        NULL,
    parent_id       UUID        NULL,
    last_error      TEXT        NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);

CREATE INDEX IF NOT EXISTS sm_workflows_due ON sm_workflows (wake_at) WHERE wake_at IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS sm_workflows_key ON sm_workflows (machine, key) WHERE key IS NOT NULL;
CREATE INDEX IF NOT EXISTS sm_workflows_parent ON sm_workflows (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS sm_workflows_machine_status ON sm_workflows (machine, status);

CREATE TABLE IF NOT EXISTS sm_history (
    workflow_id UUID        NOT NULL,
    version     BIGINT      NOT NULL,
    kind        TEXT        NOT NULL,
    from_state  TEXT        NULL,
    to_state    TEXT        NOT NULL,
    data        JSONB       NOT NULL,
    status      TEXT        NOT NULL,
    cause       TEXT        NULL,
    attempt     INTEGER     NOT NULL,
    error       TEXT        NULL,
    worker      TEXT        NULL,
    started_at  TIMESTAMPTZ NULL,
    finished_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT sm_history_pkey PRIMARY KEY (workflow_id, version)
);
