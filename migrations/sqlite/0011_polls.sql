-- statemachine schema, version 0011: polling steps.
-- `polls` counts the polls of a polling step (`@step(poll=Poll(...))`) in the current state. A
-- poll that writes no history row moves only this, `wake_at` and `updated_at`; entering a new
-- state resets it to 0.
ALTER TABLE sm_workflows ADD COLUMN polls INTEGER NOT NULL DEFAULT 0;
