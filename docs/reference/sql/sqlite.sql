-- Every statement statemachine's engine sends to sqlite, by the
-- method of store.sql that sends it (statements numbered in the order it
-- builds them; values are bind parameters). Generated: do not edit; run
--     python -m tests.integration.golden_sql --write

-- name: acquire_slot#1
WITH RECURSIVE slots(slot) AS 
(SELECT ? AS slot UNION ALL SELECT prev.slot + ? AS slot 
FROM slots AS prev 
WHERE prev.slot + ? < ?)
 INSERT INTO sm_limit_slots ("key", slot, holder, expires_at) SELECT ? AS anon_1, candidate.slot, ? AS anon_2, ? AS anon_3 
FROM (SELECT slots.slot AS slot 
FROM slots 
WHERE NOT (EXISTS (SELECT sm_limit_slots.slot 
FROM sm_limit_slots 
WHERE sm_limit_slots."key" = ? AND sm_limit_slots.slot = slots.slot AND sm_limit_slots.holder IS NOT NULL AND sm_limit_slots.holder != ? AND sm_limit_slots.expires_at >= ?)) ORDER BY (slots.slot + ?) % ?
 LIMIT ? OFFSET ?) AS candidate 
WHERE 1 = 1 ON CONFLICT ("key", slot) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at WHERE sm_limit_slots.holder IS NULL OR sm_limit_slots.expires_at < ? OR sm_limit_slots.holder = ? RETURNING slot;

-- name: cancel_requested#1
SELECT sm_workflows.cancel_requested 
FROM sm_workflows 
WHERE sm_workflows.id = ?;

-- name: child_counts#1
SELECT sm_workflows.status, sm_workflows.wake_at IS NULL AS anon_1, count(*) AS count_1 
FROM sm_workflows 
WHERE sm_workflows.parent_id = ? GROUP BY sm_workflows.status, sm_workflows.wake_at IS NULL;

-- name: children_of#1
SELECT sm_workflows.id, sm_workflows.machine, sm_workflows.state, sm_workflows.data AS data, sm_workflows.status, sm_workflows.version, sm_workflows.entered_version, sm_workflows.attempt, sm_workflows.wake_at, sm_workflows.lease_token, sm_workflows.lease_owner, sm_workflows."key", sm_workflows.parent_id, sm_workflows.last_error, sm_workflows.created_at, sm_workflows.updated_at, sm_workflows.cancel_requested, sm_workflows.in_doubt, sm_workflows.polls, sm_workflows.purge_after 
FROM sm_workflows 
WHERE sm_workflows.parent_id = ? ORDER BY sm_workflows.created_at, sm_workflows.id;

-- name: claim#1
SELECT sm_workflows.id, sm_workflows.machine, sm_workflows.state, sm_workflows.data AS data, sm_workflows.version, sm_workflows.entered_version, sm_workflows.attempt, sm_workflows.status, sm_workflows.wake_at AS due_at, EXISTS (SELECT * 
FROM sm_history 
WHERE sm_history.workflow_id = sm_workflows.id AND sm_history.version = sm_workflows.version) AS rec, sm_workflows.parent_id, sm_workflows.cancel_requested, sm_workflows.in_doubt 
FROM sm_workflows 
WHERE sm_workflows.wake_at >= ? AND sm_workflows.wake_at IS NOT NULL AND sm_workflows.wake_at <= ? AND (+ sm_workflows.status) IN ('ready', 'running', 'waiting') AND (+ sm_workflows.machine) IN (SELECT value 
FROM json_each(?)) ORDER BY sm_workflows.wake_at
 LIMIT ? OFFSET ?;

-- name: claim#2
SELECT sm_workflows.id, sm_workflows.machine, sm_workflows.state, sm_workflows.data AS data, sm_workflows.version, sm_workflows.entered_version, sm_workflows.attempt, sm_workflows.status, sm_workflows.wake_at AS due_at, EXISTS (SELECT * 
FROM sm_history 
WHERE sm_history.workflow_id = sm_workflows.id AND sm_history.version = sm_workflows.version) AS rec, sm_workflows.parent_id, sm_workflows.cancel_requested, sm_workflows.in_doubt 
FROM sm_workflows 
WHERE sm_workflows.wake_at IS NOT NULL AND sm_workflows.wake_at <= ? AND (+ sm_workflows.status) IN ('ready', 'running', 'waiting') AND (+ sm_workflows.machine) IN (SELECT value 
FROM json_each(?)) ORDER BY sm_workflows.wake_at
 LIMIT ? OFFSET ?;

-- name: commit#1
UPDATE sm_workflows SET state=?, data=?, status=?, version=(sm_workflows.version + ?), entered_version=(sm_workflows.version + ?), attempt=?, wake_at=CASE WHEN (sm_workflows.wake_at >= ?) THEN sm_workflows.wake_at ELSE ? END, last_error=?, updated_at=?, cancel_requested=?, in_doubt=?, polls=?, purge_after=? WHERE sm_workflows.id = ? AND sm_workflows.version = ? AND sm_workflows.lease_token = ? AND sm_workflows.status IN (__[POSTCOMPILE_p_expect]) RETURNING version, cancel_requested;

-- name: commit#2
UPDATE sm_workflows SET state=?, data=?, status=?, version=(sm_workflows.version + ?), entered_version=(sm_workflows.version + ?), attempt=?, wake_at=?, lease_token=?, lease_owner=?, last_error=?, updated_at=?, in_doubt=?, polls=?, purge_after=? WHERE sm_workflows.id = ? AND sm_workflows.version = ? RETURNING version, cancel_requested;

-- name: commit#3
UPDATE sm_workflows SET state=?, data=?, status=?, version=(sm_workflows.version + ?), entered_version=(sm_workflows.version + ?), attempt=?, wake_at=CASE WHEN (sm_workflows.wake_at >= ?) THEN sm_workflows.wake_at ELSE ? END, last_error=?, updated_at=?, in_doubt=?, polls=?, purge_after=? WHERE sm_workflows.id = ? AND sm_workflows.version = ? RETURNING version, cancel_requested;

-- name: commit#4
UPDATE sm_workflows SET state=?, data=?, status=?, version=(sm_workflows.version + ?), entered_version=(sm_workflows.version + ?), attempt=?, wake_at=CASE WHEN (sm_workflows.cancel_requested IS NOT NULL) THEN ? ELSE ? END, lease_token=?, lease_owner=?, last_error=?, updated_at=?, in_doubt=?, polls=?, purge_after=? WHERE sm_workflows.id = ? AND sm_workflows.version = ? RETURNING version, cancel_requested;

-- name: commit#5
UPDATE sm_workflows SET state=?, status=?, version=(sm_workflows.version + ?), entered_version=(sm_workflows.version + ?), attempt=?, wake_at=?, lease_token=?, lease_owner=?, last_error=?, updated_at=?, in_doubt=?, polls=?, purge_after=? WHERE sm_workflows.id = ? AND sm_workflows.version = ? RETURNING version, cancel_requested;

-- name: commit#6
INSERT INTO sm_history (workflow_id, version, kind, from_state, to_state, data, status, cause, attempt, error, worker, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: commit#7
UPDATE sm_events SET status=?, consumed_at=?, consumed_version=? WHERE sm_events.id = ? AND sm_events.status = ? RETURNING id;

-- name: commit#8
UPDATE sm_events SET status=?, noticed=?, error=?, consumed_at=? WHERE sm_events.workflow_id = ? AND sm_events.status = ?;

-- name: commit#9
INSERT INTO sm_workflows (id, machine, state, data, status, version, entered_version, attempt, wake_at, lease_token, lease_owner, "key", parent_id, last_error, created_at, updated_at, cancel_requested, in_doubt, polls, purge_after) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: commit#10
UPDATE sm_workflows SET wake_at=CASE WHEN (sm_workflows.status = ?) THEN ? ELSE sm_workflows.wake_at END WHERE sm_workflows.id IN (__[POSTCOMPILE_id_1]);

-- name: commit#11
UPDATE sm_workflows SET wake_at=CASE WHEN (sm_workflows.status IN (__[POSTCOMPILE_status_1])) THEN ? ELSE sm_workflows.wake_at END, cancel_requested=? WHERE sm_workflows.parent_id = ? AND sm_workflows.status IN (__[POSTCOMPILE_status_2]) AND sm_workflows.cancel_requested IS NULL;

-- name: commit_group#1
UPDATE sm_workflows SET state=?, data=?, status=?, version=(sm_workflows.version + ?), entered_version=(sm_workflows.version + ?), attempt=?, wake_at=CASE WHEN (sm_workflows.wake_at >= ?) THEN sm_workflows.wake_at ELSE ? END, last_error=?, updated_at=?, in_doubt=?, polls=?, purge_after=? WHERE sm_workflows.id = ? AND sm_workflows.version = ? RETURNING version, cancel_requested;

-- name: commit_group#2
INSERT INTO sm_history (workflow_id, version, kind, from_state, to_state, data, status, cause, attempt, error, worker, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: commit_in#1
UPDATE sm_workflows SET state=?, data=?, status=?, version=(sm_workflows.version + ?), entered_version=(sm_workflows.version + ?), attempt=?, wake_at=CASE WHEN (sm_workflows.wake_at >= ?) THEN sm_workflows.wake_at ELSE ? END, last_error=?, updated_at=?, cancel_requested=?, in_doubt=?, polls=?, purge_after=? WHERE sm_workflows.id = ? AND sm_workflows.version = ? AND sm_workflows.lease_token = ? AND sm_workflows.status IN (__[POSTCOMPILE_p_expect]) RETURNING version, cancel_requested;

-- name: commit_in#2
UPDATE sm_workflows SET state=?, data=?, status=?, version=(sm_workflows.version + ?), entered_version=(sm_workflows.version + ?), attempt=?, wake_at=?, lease_token=?, lease_owner=?, last_error=?, updated_at=?, in_doubt=?, polls=?, purge_after=? WHERE sm_workflows.id = ? AND sm_workflows.version = ? RETURNING version, cancel_requested;

-- name: commit_in#3
UPDATE sm_workflows SET state=?, data=?, status=?, version=(sm_workflows.version + ?), entered_version=(sm_workflows.version + ?), attempt=?, wake_at=CASE WHEN (sm_workflows.wake_at >= ?) THEN sm_workflows.wake_at ELSE ? END, last_error=?, updated_at=?, in_doubt=?, polls=?, purge_after=? WHERE sm_workflows.id = ? AND sm_workflows.version = ? RETURNING version, cancel_requested;

-- name: commit_in#4
UPDATE sm_workflows SET state=?, data=?, status=?, version=(sm_workflows.version + ?), entered_version=(sm_workflows.version + ?), attempt=?, wake_at=CASE WHEN (sm_workflows.cancel_requested IS NOT NULL) THEN ? ELSE ? END, lease_token=?, lease_owner=?, last_error=?, updated_at=?, in_doubt=?, polls=?, purge_after=? WHERE sm_workflows.id = ? AND sm_workflows.version = ? RETURNING version, cancel_requested;

-- name: commit_in#5
UPDATE sm_workflows SET state=?, status=?, version=(sm_workflows.version + ?), entered_version=(sm_workflows.version + ?), attempt=?, wake_at=?, lease_token=?, lease_owner=?, last_error=?, updated_at=?, in_doubt=?, polls=?, purge_after=? WHERE sm_workflows.id = ? AND sm_workflows.version = ? RETURNING version, cancel_requested;

-- name: commit_in#6
INSERT INTO sm_history (workflow_id, version, kind, from_state, to_state, data, status, cause, attempt, error, worker, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: commit_in#7
UPDATE sm_events SET status=?, consumed_at=?, consumed_version=? WHERE sm_events.id = ? AND sm_events.status = ? RETURNING id;

-- name: commit_in#8
UPDATE sm_events SET status=?, noticed=?, error=?, consumed_at=? WHERE sm_events.workflow_id = ? AND sm_events.status = ?;

-- name: commit_in#9
INSERT INTO sm_workflows (id, machine, state, data, status, version, entered_version, attempt, wake_at, lease_token, lease_owner, "key", parent_id, last_error, created_at, updated_at, cancel_requested, in_doubt, polls, purge_after) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: commit_in#10
UPDATE sm_workflows SET wake_at=CASE WHEN (sm_workflows.status = ?) THEN ? ELSE sm_workflows.wake_at END WHERE sm_workflows.id IN (__[POSTCOMPILE_id_1]);

-- name: commit_in#11
UPDATE sm_workflows SET wake_at=CASE WHEN (sm_workflows.status IN (__[POSTCOMPILE_status_1])) THEN ? ELSE sm_workflows.wake_at END, cancel_requested=? WHERE sm_workflows.parent_id = ? AND sm_workflows.status IN (__[POSTCOMPILE_status_2]) AND sm_workflows.cancel_requested IS NULL;

-- name: count_by_status#1
SELECT sm_workflows.status, count(*) AS count_1 
FROM sm_workflows 
WHERE sm_workflows.machine = ? GROUP BY sm_workflows.status;

-- name: count_by_status#2
SELECT sm_workflows.status, count(*) AS count_1 
FROM sm_workflows GROUP BY sm_workflows.status;

-- name: defer#1
UPDATE sm_workflows SET status=?, attempt=(sm_workflows.attempt - ?), wake_at=?, lease_token=?, lease_owner=?, updated_at=? WHERE sm_workflows.id = ? AND sm_workflows.version = ? AND sm_workflows.lease_token = ? RETURNING id;

-- name: due_counts#1
SELECT sm_workflows.machine, count(*) AS count_1 
FROM sm_workflows 
WHERE sm_workflows.machine IN (__[POSTCOMPILE_machine_1]) AND sm_workflows.status IN (__[POSTCOMPILE_status_1]) AND sm_workflows.wake_at IS NOT NULL AND sm_workflows.wake_at <= ? GROUP BY sm_workflows.machine;

-- name: entered_at#1
SELECT sm_history.finished_at 
FROM sm_history 
WHERE sm_history.workflow_id = ? AND sm_history.version = ?;

-- name: first_state#1
SELECT sm_history.workflow_id, sm_history.version, sm_history.kind, sm_history.from_state, sm_history.to_state, sm_history.data AS data, sm_history.status, sm_history.cause, sm_history.attempt, sm_history.error, sm_history.worker, sm_history.started_at, sm_history.finished_at 
FROM sm_history 
WHERE sm_history.workflow_id = ? AND sm_history.version = ?;

-- name: get#1
SELECT sm_workflows.id, sm_workflows.machine, sm_workflows.state, sm_workflows.data AS data, sm_workflows.status, sm_workflows.version, sm_workflows.entered_version, sm_workflows.attempt, sm_workflows.wake_at, sm_workflows.lease_token, sm_workflows.lease_owner, sm_workflows."key", sm_workflows.parent_id, sm_workflows.last_error, sm_workflows.created_at, sm_workflows.updated_at, sm_workflows.cancel_requested, sm_workflows.in_doubt, sm_workflows.polls, sm_workflows.purge_after 
FROM sm_workflows 
WHERE sm_workflows.id = ?;

-- name: get_many#1
SELECT sm_workflows.id, sm_workflows.machine, sm_workflows.state, sm_workflows.data AS data, sm_workflows.status, sm_workflows.version, sm_workflows.entered_version, sm_workflows.attempt, sm_workflows.wake_at, sm_workflows.lease_token, sm_workflows.lease_owner, sm_workflows."key", sm_workflows.parent_id, sm_workflows.last_error, sm_workflows.created_at, sm_workflows.updated_at, sm_workflows.cancel_requested, sm_workflows.in_doubt, sm_workflows.polls, sm_workflows.purge_after 
FROM sm_workflows 
WHERE sm_workflows.id IN (__[POSTCOMPILE_id_1]);

-- name: history#1
SELECT sm_history.workflow_id, sm_history.version, sm_history.kind, sm_history.from_state, sm_history.to_state, sm_history.data AS data, sm_history.status, sm_history.cause, sm_history.attempt, sm_history.error, sm_history.worker, sm_history.started_at, sm_history.finished_at 
FROM sm_history 
WHERE sm_history.workflow_id = ? ORDER BY sm_history.version;

-- name: insert_event#1
UPDATE sm_workflows SET wake_at=CASE WHEN (sm_workflows.status = ?) THEN ? ELSE sm_workflows.wake_at END WHERE sm_workflows.id = ? RETURNING status;

-- name: insert_event#2
INSERT INTO sm_events (id, workflow_id, type, data, status, noticed, created_at, seq) SELECT ? AS anon_1, ? AS anon_2, ? AS anon_3, ? AS anon_4, ? AS anon_5, ? AS anon_6, ? AS anon_7, coalesce(max(sm_events.seq), ?) + ? AS anon_8 
FROM sm_events 
WHERE sm_events.workflow_id = ? ON CONFLICT (id) DO NOTHING;

-- name: insert_workflow#1
INSERT INTO sm_workflows (id, machine, state, data, status, version, entered_version, attempt, wake_at, "key", parent_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (machine, "key") WHERE "key" IS NOT NULL DO NOTHING RETURNING id;

-- name: insert_workflow#2
SELECT sm_workflows.id 
FROM sm_workflows 
WHERE sm_workflows.machine = ? AND sm_workflows."key" = ?;

-- name: insert_workflow#3
INSERT INTO sm_workflows (id, machine, state, data, status, version, entered_version, attempt, wake_at, "key", parent_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: insert_workflow#4
INSERT INTO sm_history (workflow_id, version, kind, from_state, to_state, data, status, cause, attempt, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: insert_workflow_in#1
INSERT INTO sm_workflows (id, machine, state, data, status, version, entered_version, attempt, wake_at, "key", parent_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (machine, "key") WHERE "key" IS NOT NULL DO NOTHING RETURNING id;

-- name: insert_workflow_in#2
SELECT sm_workflows.id 
FROM sm_workflows 
WHERE sm_workflows.machine = ? AND sm_workflows."key" = ?;

-- name: insert_workflow_in#3
INSERT INTO sm_workflows (id, machine, state, data, status, version, entered_version, attempt, wake_at, "key", parent_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: insert_workflow_in#4
INSERT INTO sm_history (workflow_id, version, kind, from_state, to_state, data, status, cause, attempt, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: insert_workflows#1
SELECT sm_workflows.id 
FROM sm_workflows 
WHERE sm_workflows.id = ?;

-- name: insert_workflows#2
INSERT INTO sm_workflows (id, machine, state, data, status, version, entered_version, attempt, wake_at, lease_token, lease_owner, "key", parent_id, last_error, created_at, updated_at, cancel_requested, in_doubt, polls, purge_after) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: insert_workflows#3
INSERT INTO sm_history (workflow_id, version, kind, from_state, to_state, data, status, cause, attempt, error, worker, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: list_workflows#1
SELECT sm_workflows.id, sm_workflows.machine, sm_workflows.state, sm_workflows.data AS data, sm_workflows.status, sm_workflows.version, sm_workflows.entered_version, sm_workflows.attempt, sm_workflows.wake_at, sm_workflows.lease_token, sm_workflows.lease_owner, sm_workflows."key", sm_workflows.parent_id, sm_workflows.last_error, sm_workflows.created_at, sm_workflows.updated_at, sm_workflows.cancel_requested, sm_workflows.in_doubt, sm_workflows.polls, sm_workflows.purge_after 
FROM sm_workflows 
WHERE sm_workflows.machine = ? AND sm_workflows.status = ? AND sm_workflows.state = ? ORDER BY sm_workflows.created_at DESC, sm_workflows.id
 LIMIT ? OFFSET ?;

-- name: list_workflows#2
SELECT sm_workflows.id, sm_workflows.machine, sm_workflows.state, sm_workflows.data AS data, sm_workflows.status, sm_workflows.version, sm_workflows.entered_version, sm_workflows.attempt, sm_workflows.wake_at, sm_workflows.lease_token, sm_workflows.lease_owner, sm_workflows."key", sm_workflows.parent_id, sm_workflows.last_error, sm_workflows.created_at, sm_workflows.updated_at, sm_workflows.cancel_requested, sm_workflows.in_doubt, sm_workflows.polls, sm_workflows.purge_after 
FROM sm_workflows ORDER BY sm_workflows.created_at DESC, sm_workflows.id
 LIMIT ? OFFSET ?;

-- name: notice_sql_events#1
SELECT sm_events.id, sm_events.workflow_id, sm_events.created_at 
FROM sm_events 
WHERE sm_events.noticed = 0
 LIMIT ? OFFSET ?;

-- name: notice_sql_events#2
UPDATE sm_workflows SET wake_at=CASE WHEN (sm_workflows.status = ?) THEN ? ELSE sm_workflows.wake_at END WHERE sm_workflows.id IN (__[POSTCOMPILE_id_1]);

-- name: notice_sql_events#3
UPDATE sm_events SET noticed=?, seq=(SELECT coalesce(max(numbered.seq), ?) + ? AS anon_1 
FROM sm_events AS numbered 
WHERE numbered.workflow_id = sm_events.workflow_id) WHERE sm_events.id = ? AND sm_events.seq IS NULL;

-- name: notice_sql_events#4
UPDATE sm_events SET noticed=? WHERE sm_events.id IN (__[POSTCOMPILE_id_1]);

-- name: pending_events#1
SELECT sm_events.id, sm_events.type, sm_events.data AS data, sm_events.created_at 
FROM sm_events 
WHERE sm_events.workflow_id = ? AND sm_events.status = ? ORDER BY sm_events.seq ASC NULLS FIRST, sm_events.created_at, sm_events.id;

-- name: pending_events_of#1
SELECT sm_events.id, sm_events.workflow_id, sm_events.type, sm_events.data AS data, sm_workflows.machine 
FROM sm_events JOIN sm_workflows ON sm_workflows.id = sm_events.workflow_id 
WHERE sm_events.status = ? AND sm_workflows.machine IN (__[POSTCOMPILE_machine_1]);

-- name: poll_again#1
UPDATE sm_workflows SET status=?, attempt=?, wake_at=CASE WHEN (sm_workflows.cancel_requested IS NOT NULL) THEN ? ELSE ? END, lease_token=?, lease_owner=?, updated_at=?, polls=(sm_workflows.polls + ?) WHERE sm_workflows.id = ? AND sm_workflows.version = ? AND sm_workflows.lease_token = ? AND sm_workflows.status = ? RETURNING id;

-- name: polling_since#1
SELECT max(sm_history.finished_at) AS max_1 
FROM sm_history 
WHERE sm_history.workflow_id = ? AND sm_history.version >= ? AND (sm_history.version = ? OR sm_history.kind = ?);

-- name: purge_batch#1
SELECT sm_workflows.id, sm_workflows.purge_after 
FROM sm_workflows 
WHERE sm_workflows.purge_after IS NOT NULL AND sm_workflows.purge_after < ? AND sm_workflows.parent_id IS NULL AND (sm_workflows.purge_after > ? OR sm_workflows.purge_after = ? AND sm_workflows.id > ?) ORDER BY sm_workflows.purge_after, sm_workflows.id
 LIMIT ? OFFSET ?;

-- name: purge_batch#2
SELECT sm_workflows.id, sm_workflows.purge_after 
FROM sm_workflows 
WHERE sm_workflows.purge_after IS NOT NULL AND sm_workflows.purge_after < ? AND sm_workflows.parent_id IS NULL ORDER BY sm_workflows.purge_after, sm_workflows.id
 LIMIT ? OFFSET ?;

-- name: purge_batch#3
SELECT sm_workflows.id, sm_workflows.parent_id, sm_workflows.status 
FROM sm_workflows 
WHERE sm_workflows.id IN (__[POSTCOMPILE_p_ids]);

-- name: purge_batch#4
SELECT sm_workflows.id, sm_workflows.parent_id, sm_workflows.status 
FROM sm_workflows 
WHERE sm_workflows.parent_id IN (__[POSTCOMPILE_p_ids]);

-- name: record_external_change#1
UPDATE sm_workflows SET entered_version=?, attempt=?, polls=? WHERE sm_workflows.id = ? AND sm_workflows.version = ? AND sm_workflows.lease_token = ? RETURNING id;

-- name: record_external_change#2
INSERT INTO sm_history (workflow_id, version, kind, from_state, to_state, data, status, cause, attempt, worker, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (workflow_id, version) DO NOTHING;

-- name: reject_event#1
UPDATE sm_events SET status=?, noticed=?, error=?, consumed_at=? WHERE sm_events.id = ? AND sm_events.status = ?;

-- name: release#1
UPDATE sm_workflows SET status=?, attempt=(sm_workflows.attempt - ?), wake_at=?, lease_token=?, lease_owner=?, updated_at=? WHERE sm_workflows.id IN (__[POSTCOMPILE_id_1]) AND sm_workflows.lease_token = ? AND sm_workflows.status = ? RETURNING id;

-- name: release_children#1
SELECT count(*) AS count_1 
FROM sm_workflows 
WHERE sm_workflows.parent_id = ? AND sm_workflows.status IN (__[POSTCOMPILE_status_1]) AND NOT (sm_workflows.status = ? AND sm_workflows.wake_at IS NULL);

-- name: release_slot#1
UPDATE sm_limit_slots SET holder=?, expires_at=? WHERE sm_limit_slots."key" = ? AND sm_limit_slots.slot = ? AND sm_limit_slots.holder = ?;

-- name: renew_leases#1
UPDATE sm_workflows SET wake_at=? WHERE sm_workflows.id IN (__[POSTCOMPILE_id_1]) AND sm_workflows.lease_token = ? AND sm_workflows.status = ? RETURNING id;

-- name: renew_slots#1
UPDATE sm_limit_slots SET expires_at=? WHERE sm_limit_slots.holder IN (__[POSTCOMPILE_holder_1]);

-- name: request_cancel#1
SELECT sm_workflows.id, sm_workflows.machine, sm_workflows.state, sm_workflows.data, sm_workflows.status, sm_workflows.version, sm_workflows.entered_version, sm_workflows.attempt, sm_workflows.wake_at, sm_workflows.lease_token, sm_workflows.lease_owner, sm_workflows."key", sm_workflows.parent_id, sm_workflows.last_error, sm_workflows.created_at, sm_workflows.updated_at, sm_workflows.cancel_requested, sm_workflows.in_doubt, sm_workflows.polls, sm_workflows.purge_after 
FROM sm_workflows 
WHERE sm_workflows.id = ?;

-- name: request_cancel#2
UPDATE sm_workflows SET state=?, data=?, status=?, version=(sm_workflows.version + ?), wake_at=?, lease_token=?, lease_owner=?, last_error=?, updated_at=?, cancel_requested=?, purge_after=? WHERE sm_workflows.id = ? AND sm_workflows.version = ? RETURNING version, cancel_requested;

-- name: request_cancel#3
INSERT INTO sm_history (workflow_id, version, kind, from_state, to_state, data, status, cause, attempt, error, worker, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: request_cancel#4
UPDATE sm_events SET status=?, noticed=?, error=?, consumed_at=? WHERE sm_events.workflow_id = ? AND sm_events.status = ?;

-- name: request_cancel#5
UPDATE sm_workflows SET wake_at=CASE WHEN (sm_workflows.status = ?) THEN ? ELSE sm_workflows.wake_at END WHERE sm_workflows.id IN (__[POSTCOMPILE_id_1]);

-- name: request_cancel#6
UPDATE sm_workflows SET wake_at=CASE WHEN (sm_workflows.status IN (__[POSTCOMPILE_status_1])) THEN ? ELSE sm_workflows.wake_at END, cancel_requested=? WHERE sm_workflows.parent_id = ? AND sm_workflows.status IN (__[POSTCOMPILE_status_2]) AND sm_workflows.cancel_requested IS NULL;

-- name: request_cancel#7
UPDATE sm_workflows SET status=?, wake_at=?, cancel_requested=? WHERE sm_workflows.id = ?;

-- name: run_schedule#1
SELECT ? AS anon_1;

-- name: run_schedule#2
INSERT INTO sm_schedules (name, last_tick, updated_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING;

-- name: run_schedule#3
SELECT sm_schedules.last_tick 
FROM sm_schedules 
WHERE sm_schedules.name = ?;

-- name: scan#1
SELECT sm_workflows.id, sm_workflows.machine, sm_workflows.state, sm_workflows.data AS data, sm_workflows.status, sm_workflows.version, sm_workflows.entered_version, sm_workflows.attempt, sm_workflows.wake_at, sm_workflows.lease_token, sm_workflows.lease_owner, sm_workflows."key", sm_workflows.parent_id, sm_workflows.last_error, sm_workflows.created_at, sm_workflows.updated_at, sm_workflows.cancel_requested, sm_workflows.in_doubt, sm_workflows.polls, sm_workflows.purge_after 
FROM sm_workflows 
WHERE sm_workflows.machine IN (__[POSTCOMPILE_machine_1]) AND sm_workflows.status IN (__[POSTCOMPILE_status_1]) ORDER BY sm_workflows.id
 LIMIT ? OFFSET ?;

-- name: schedule_ticks#1
SELECT sm_schedules.name, sm_schedules.last_tick 
FROM sm_schedules;

-- name: settle_waiting#1
SELECT sm_workflows.id 
FROM sm_workflows 
WHERE sm_workflows.id = ? AND sm_workflows.version = ? AND sm_workflows.lease_token = ?;

-- name: settle_waiting#2
SELECT sm_events.id 
FROM sm_events 
WHERE sm_events.workflow_id = ? AND sm_events.status = ? AND sm_events.type IN (__[POSTCOMPILE_type_1])
 LIMIT ? OFFSET ?;

-- name: take_start#1
INSERT INTO sm_limit_windows ("key", recent, updated_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING;

-- name: take_start#2
SELECT sm_limit_windows.recent 
FROM sm_limit_windows 
WHERE sm_limit_windows."key" = ?;
