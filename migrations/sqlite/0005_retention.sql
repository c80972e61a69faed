-- statemachine schema, version 0005: retention (SQLite); see postgresql/0005_retention.sql.
ALTER TABLE sm_workflows ADD COLUMN purge_after DATETIME NULL;
CREATE INDEX IF NOT EXISTS sm_workflows_purge ON sm_workflows (purge_after) WHERE purge_after IS NOT NULL;
CREATE INDEX IF NOT EXISTS sm_events_workflow ON sm_events (workflow_id);
