-- statemachine schema, version 0005: retention.
-- `purge_after`: when the workflow finished (done or cancelled); NULL while it can still run, and
-- for parked (failed) workflows, which wait for a person. Retention counts from it: the reaper
-- (`statemachine purge --older-than 30d`, or a worker's `purge_older_than`) deletes a finished
-- workflow tree with its history and events once its purge_after is older than the retention.
ALTER TABLE sm_workflows ADD COLUMN IF NOT EXISTS purge_after TIMESTAMPTZ NULL;
CREATE INDEX IF NOT EXISTS sm_workflows_purge ON sm_workflows (purge_after) WHERE purge_after IS NOT NULL;
-- The reaper deletes a workflow's events whatever their status (sm_events_pending holds only
-- pending ones).
CREATE INDEX IF NOT EXISTS sm_events_workflow ON sm_events (workflow_id);
