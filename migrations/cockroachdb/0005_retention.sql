-- statemachine schema, version 0005 (CockroachDB): retention by row-level TTL, and a layout
-- without moving hot spots. Each statement is its own transaction (DDL commits the open one
-- first on CockroachDB 25.1+: autocommit_before_ddl), and each is safe to run again.
ALTER TABLE sm_workflows ADD COLUMN IF NOT EXISTS purge_after TIMESTAMPTZ NULL;

-- The due index on wake_at is a moving write hot spot (every claim, commit and renewal writes a
-- key near "now"): hash-sharded, it spreads over 16 ranges. It stores what the claim's scan
-- reads (the columns it filters on, and state and data, whose sizes cap a claim's batch at
-- ~16 KiB), so the scan never joins back to the table; the claim's UPDATE then reads the rows it
-- writes by primary key. Most commits move wake_at, which rewrites the index entry anyway. Dropped and made again (the plain one came from 0001): in between,
-- a claim scans the table, for the moments the backfill takes.
DROP INDEX IF EXISTS sm_workflows@sm_workflows_due;
CREATE INDEX IF NOT EXISTS sm_workflows_due ON sm_workflows (wake_at) USING HASH STORING (machine, status, state, data) WHERE wake_at IS NOT NULL;

-- Event times are monotonic too: the index of events not yet noticed is hash-sharded as well.
DROP INDEX IF EXISTS sm_events@sm_events_unnoticed;
CREATE INDEX IF NOT EXISTS sm_events_unnoticed ON sm_events (created_at) USING HASH WHERE noticed = false;

-- For `statemachine purge` (finished times are monotonic: hash-sharded) and for deleting a
-- workflow's events whatever their status.
CREATE INDEX IF NOT EXISTS sm_workflows_purge ON sm_workflows (purge_after) USING HASH WHERE purge_after IS NOT NULL;
CREATE INDEX IF NOT EXISTS sm_events_workflow ON sm_events (workflow_id);

-- Row-level TTL deletes workflow rows; these foreign keys make each deletion take the workflow's
-- history, its events and its children (and theirs) along, in the same transaction. NOT VALID:
-- rows already stored are not checked (an upgrade does not scan the history, and history left by
-- a workflow deleted by hand does not fail the migration); new rows are.
ALTER TABLE sm_history ADD CONSTRAINT IF NOT EXISTS sm_history_workflow_fk FOREIGN KEY (workflow_id) REFERENCES sm_workflows (id) ON DELETE CASCADE NOT VALID;
ALTER TABLE sm_events ADD CONSTRAINT IF NOT EXISTS sm_events_workflow_fk FOREIGN KEY (workflow_id) REFERENCES sm_workflows (id) ON DELETE CASCADE NOT VALID;
ALTER TABLE sm_workflows ADD CONSTRAINT IF NOT EXISTS sm_workflows_parent_fk FOREIGN KEY (parent_id) REFERENCES sm_workflows (id) ON DELETE CASCADE NOT VALID;

-- A finished workflow expires 30 days after purge_after (NULL: never). Change the retention with
-- ALTER TABLE sm_workflows SET (ttl_expiration_expression = 'purge_after + INTERVAL ''90 days''').
ALTER TABLE sm_workflows SET (ttl_expiration_expression = 'purge_after + INTERVAL ''30 days''', ttl_job_cron = '@hourly');
