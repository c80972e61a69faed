-- statemachine schema, version 0004: at-most-once handlers.
-- The same as postgresql/0004 (see 0001).
-- `in_doubt` describes an attempt of an at-most-once handler that started and never finished:
-- while it is set, the handler is never re-run blindly (its reconcile handler runs, or a human
-- resolves it).
ALTER TABLE sm_workflows ADD COLUMN IF NOT EXISTS in_doubt TEXT NULL;
