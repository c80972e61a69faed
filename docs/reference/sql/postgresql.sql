-- Every statement statemachine's engine sends to postgresql, by the
-- method of store.sql that sends it (statements numbered in the order it
-- builds them; values are bind parameters). Generated: do not edit; run
--     python -m tests.integration.golden_sql --write

-- name: acquire_slot#1
WITH RECURSIVE slots(slot) AS 
(SELECT %(param_1)s::INTEGER AS slot UNION ALL SELECT prev.slot + %(slot_1)s::INTEGER AS slot 
FROM slots AS prev 
WHERE prev.slot + %(slot_2)s::INTEGER < %(s_size)s::INTEGER)
 INSERT INTO sm_limit_slots (key, slot, holder, expires_at) SELECT %(s_key)s::VARCHAR AS anon_1, candidate.slot, %(s_holder)s::UUID AS anon_2, now() + %(s_until)s AS anon_3 
FROM (SELECT slots.slot AS slot 
FROM slots 
WHERE NOT (EXISTS (SELECT sm_limit_slots.slot 
FROM sm_limit_slots 
WHERE sm_limit_slots.key = %(s_key)s::VARCHAR AND sm_limit_slots.slot = slots.slot AND sm_limit_slots.holder IS NOT NULL AND sm_limit_slots.holder != %(s_holder)s::UUID AND sm_limit_slots.expires_at >= now())) ORDER BY (slots.slot + %(s_start)s::INTEGER) %% %(s_size)s::INTEGER 
 LIMIT %(param_2)s::INTEGER) AS candidate 
WHERE true ON CONFLICT (key, slot) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at WHERE sm_limit_slots.holder IS NULL OR sm_limit_slots.expires_at < now() OR sm_limit_slots.holder = %(s_holder)s::UUID RETURNING sm_limit_slots.slot;

-- name: cancel_requested#1
SELECT sm_workflows.cancel_requested 
FROM sm_workflows 
WHERE sm_workflows.id = %(id_1)s::UUID;

-- name: child_counts#1
SELECT sm_workflows.status, sm_workflows.wake_at IS NULL AS anon_1, count(*) AS count_1 
FROM sm_workflows 
WHERE sm_workflows.parent_id = %(parent_id_1)s::UUID GROUP BY sm_workflows.status, sm_workflows.wake_at IS NULL;

-- name: children_of#1
SELECT sm_workflows.id, sm_workflows.machine, sm_workflows.state, sm_workflows.data, sm_workflows.status, sm_workflows.version, sm_workflows.entered_version, sm_workflows.attempt, sm_workflows.wake_at, sm_workflows.lease_token, sm_workflows.lease_owner, sm_workflows.key, sm_workflows.parent_id, sm_workflows.last_error, sm_workflows.created_at, sm_workflows.updated_at, sm_workflows.cancel_requested, sm_workflows.in_doubt, sm_workflows.polls, sm_workflows.purge_after 
FROM sm_workflows 
WHERE sm_workflows.parent_id = %(parent_id_1)s::UUID ORDER BY sm_workflows.created_at, sm_workflows.id;

-- name: claim#1
UPDATE sm_workflows SET status=%(status)s::VARCHAR, attempt=(sm_workflows.attempt + %(attempt_1)s::INTEGER), wake_at=(now() + %(p_lease)s), lease_token=%(p_token)s::VARCHAR, lease_owner=%(p_owner)s::VARCHAR, updated_at=now() FROM (SELECT locked.id AS id, locked.status AS status, locked.due_at AS due_at, locked.size AS size, sum(locked.size) OVER (ORDER BY locked.due_at, locked.id) AS upto 
FROM (SELECT sm_workflows.id AS id, sm_workflows.status AS status, sm_workflows.wake_at AS due_at, octet_length(CAST(sm_workflows.data AS TEXT)) + octet_length(sm_workflows.state) + octet_length(sm_workflows.machine) + %(param_1)s::INTEGER AS size 
FROM sm_workflows 
WHERE sm_workflows.wake_at >= %(p_since)s::TIMESTAMP WITH TIME ZONE AND sm_workflows.wake_at IS NOT NULL AND sm_workflows.wake_at <= now() AND sm_workflows.status = ANY (%(param_2)s::TEXT[]) AND sm_workflows.machine = ANY (%(p_machines)s::TEXT[]) ORDER BY sm_workflows.wake_at 
 LIMIT %(p_limit)s::INTEGER FOR UPDATE SKIP LOCKED) AS locked) AS picked WHERE sm_workflows.id = picked.id AND (picked.upto <= %(p_bytes)s::INTEGER OR picked.upto = picked.size) RETURNING sm_workflows.id, sm_workflows.machine, sm_workflows.state, sm_workflows.data, sm_workflows.version, sm_workflows.entered_version, sm_workflows.attempt, picked.status, picked.due_at, EXISTS (SELECT * 
FROM sm_history 
WHERE sm_history.workflow_id = sm_workflows.id AND sm_history.version = sm_workflows.version) AS rec, sm_workflows.parent_id, sm_workflows.cancel_requested, sm_workflows.in_doubt;

-- name: claim#2
UPDATE sm_workflows SET status=%(status)s::VARCHAR, attempt=(sm_workflows.attempt + %(attempt_1)s::INTEGER), wake_at=(now() + %(p_lease)s), lease_token=%(p_token)s::VARCHAR, lease_owner=%(p_owner)s::VARCHAR, updated_at=now() FROM (SELECT locked.id AS id, locked.status AS status, locked.due_at AS due_at, locked.size AS size, sum(locked.size) OVER (ORDER BY locked.due_at, locked.id) AS upto 
FROM (SELECT sm_workflows.id AS id, sm_workflows.status AS status, sm_workflows.wake_at AS due_at, octet_length(CAST(sm_workflows.data AS TEXT)) + octet_length(sm_workflows.state) + octet_length(sm_workflows.machine) + %(param_1)s::INTEGER AS size 
FROM sm_workflows 
WHERE sm_workflows.wake_at IS NOT NULL AND sm_workflows.wake_at <= now() AND sm_workflows.status = ANY (%(param_2)s::TEXT[]) AND sm_workflows.machine = ANY (%(p_machines)s::TEXT[]) ORDER BY sm_workflows.wake_at 
 LIMIT %(p_limit)s::INTEGER FOR UPDATE SKIP LOCKED) AS locked) AS picked WHERE sm_workflows.id = picked.id AND (picked.upto <= %(p_bytes)s::INTEGER OR picked.upto = picked.size) RETURNING sm_workflows.id, sm_workflows.machine, sm_workflows.state, sm_workflows.data, sm_workflows.version, sm_workflows.entered_version, sm_workflows.attempt, picked.status, picked.due_at, EXISTS (SELECT * 
FROM sm_history 
WHERE sm_history.workflow_id = sm_workflows.id AND sm_history.version = sm_workflows.version) AS rec, sm_workflows.parent_id, sm_workflows.cancel_requested, sm_workflows.in_doubt;

-- name: commit#1
UPDATE sm_workflows SET state=%(p_state)s::VARCHAR, data=%(p_data)s::JSONB, status=%(status)s::VARCHAR, version=(sm_workflows.version + %(version_1)s::BIGINT), entered_version=(sm_workflows.version + %(version_2)s::BIGINT), attempt=%(attempt)s::INTEGER, wake_at=CASE WHEN (sm_workflows.wake_at >= now() + %(p_keep)s) THEN sm_workflows.wake_at ELSE now() + %(p_wake)s END, last_error=%(p_last_error)s::VARCHAR, updated_at=now(), cancel_requested=%(cancel_requested)s::VARCHAR, in_doubt=%(p_in_doubt)s::VARCHAR, polls=%(polls)s::INTEGER, purge_after=%(purge_after)s::TIMESTAMP WITH TIME ZONE WHERE sm_workflows.id = %(p_id)s::UUID AND sm_workflows.version = %(p_version)s::BIGINT AND sm_workflows.lease_token = %(p_token)s::VARCHAR AND sm_workflows.status IN (__[POSTCOMPILE_p_expect]) RETURNING sm_workflows.version, sm_workflows.cancel_requested;

-- name: commit#2
WITH u AS 
(UPDATE sm_workflows SET state=%(p_state)s::VARCHAR, data=%(p_data)s::JSONB, status=%(p_status)s::VARCHAR, version=(sm_workflows.version + %(version_1)s::BIGINT), entered_version=(sm_workflows.version + %(version_2)s::BIGINT), attempt=%(param_1)s::INTEGER, wake_at=%(param_2)s::TIMESTAMP WITH TIME ZONE, lease_token=%(param_3)s::VARCHAR, lease_owner=%(param_4)s::VARCHAR, last_error=%(p_last_error)s::VARCHAR, updated_at=now(), in_doubt=%(p_in_doubt)s::VARCHAR, polls=%(param_5)s::INTEGER, purge_after=%(param_6)s::TIMESTAMP WITH TIME ZONE WHERE sm_workflows.id = %(p_id)s::UUID AND sm_workflows.version = %(p_version)s::BIGINT RETURNING sm_workflows.id, sm_workflows.version, sm_workflows.cancel_requested), 
i AS 
(INSERT INTO sm_history (workflow_id, version, kind, from_state, to_state, data, status, cause, attempt, error, worker, started_at, finished_at) SELECT u.id AS id, u.version AS version, %(h_kind)s::VARCHAR AS anon_1, %(h_from)s::VARCHAR AS anon_2, %(p_state)s::VARCHAR AS anon_3, %(p_data)s::JSONB AS anon_4, %(h_status)s::VARCHAR AS anon_5, %(h_cause)s::VARCHAR AS anon_6, %(h_attempt)s::INTEGER AS anon_7, %(h_error)s::VARCHAR AS anon_8, %(h_worker)s::VARCHAR AS anon_9, %(h_started)s::TIMESTAMP WITH TIME ZONE AS anon_10, now() AS now_1 
FROM u RETURNING sm_history.version)
 SELECT u.version, u.cancel_requested 
FROM u JOIN i ON i.version = u.version;

-- name: commit#3
WITH u AS 
(UPDATE sm_workflows SET state=%(p_state)s::VARCHAR, data=%(p_data)s::JSONB, status=%(param_1)s::VARCHAR, version=(sm_workflows.version + %(version_1)s::BIGINT), entered_version=(sm_workflows.version + %(version_2)s::BIGINT), attempt=%(param_2)s::INTEGER, wake_at=CASE WHEN (sm_workflows.wake_at >= now() + %(p_keep)s) THEN sm_workflows.wake_at ELSE now() + %(p_wake)s END, last_error=%(p_last_error)s::VARCHAR, updated_at=now(), in_doubt=%(p_in_doubt)s::VARCHAR, polls=%(param_3)s::INTEGER, purge_after=%(param_4)s::TIMESTAMP WITH TIME ZONE WHERE sm_workflows.id = %(p_id)s::UUID AND sm_workflows.version = %(p_version)s::BIGINT RETURNING sm_workflows.id, sm_workflows.version, sm_workflows.cancel_requested), 
i AS 
(INSERT INTO sm_history (workflow_id, version, kind, from_state, to_state, data, status, cause, attempt, error, worker, started_at, finished_at) SELECT u.id AS id, u.version AS version, %(h_kind)s::VARCHAR AS anon_1, %(h_from)s::VARCHAR AS anon_2, %(p_state)s::VARCHAR AS anon_3, %(p_data)s::JSONB AS anon_4, %(h_status)s::VARCHAR AS anon_5, %(h_cause)s::VARCHAR AS anon_6, %(h_attempt)s::INTEGER AS anon_7, %(h_error)s::VARCHAR AS anon_8, %(h_worker)s::VARCHAR AS anon_9, %(h_started)s::TIMESTAMP WITH TIME ZONE AS anon_10, now() AS now_1 
FROM u RETURNING sm_history.version)
 SELECT u.version, u.cancel_requested 
FROM u JOIN i ON i.version = u.version;

-- name: commit#4
WITH u AS 
(UPDATE sm_workflows SET state=%(p_state)s::VARCHAR, data=%(p_data)s::JSONB, status=%(p_status)s::VARCHAR, version=(sm_workflows.version + %(version_1)s::BIGINT), entered_version=(sm_workflows.version + %(version_2)s::BIGINT), attempt=%(param_1)s::INTEGER, wake_at=CASE WHEN (sm_workflows.cancel_requested IS NOT NULL) THEN now() ELSE now() + %(p_wake)s END, lease_token=%(param_2)s::VARCHAR, lease_owner=%(param_3)s::VARCHAR, last_error=%(p_last_error)s::VARCHAR, updated_at=now(), in_doubt=%(p_in_doubt)s::VARCHAR, polls=%(param_4)s::INTEGER, purge_after=%(param_5)s::TIMESTAMP WITH TIME ZONE WHERE sm_workflows.id = %(p_id)s::UUID AND sm_workflows.version = %(p_version)s::BIGINT RETURNING sm_workflows.id, sm_workflows.version, sm_workflows.cancel_requested), 
i AS 
(INSERT INTO sm_history (workflow_id, version, kind, from_state, to_state, data, status, cause, attempt, error, worker, started_at, finished_at) SELECT u.id AS id, u.version AS version, %(h_kind)s::VARCHAR AS anon_1, %(h_from)s::VARCHAR AS anon_2, %(p_state)s::VARCHAR AS anon_3, %(p_data)s::JSONB AS anon_4, %(h_status)s::VARCHAR AS anon_5, %(h_cause)s::VARCHAR AS anon_6, %(h_attempt)s::INTEGER AS anon_7, %(h_error)s::VARCHAR AS anon_8, %(h_worker)s::VARCHAR AS anon_9, %(h_started)s::TIMESTAMP WITH TIME ZONE AS anon_10, now() AS now_1 
FROM u RETURNING sm_history.version)
 SELECT u.version, u.cancel_requested 
FROM u JOIN i ON i.version = u.version;

-- name: commit#5
WITH u AS 
(UPDATE sm_workflows SET state=%(p_state)s::VARCHAR, data=%(p_data)s::JSONB, status=%(p_status)s::VARCHAR, version=(sm_workflows.version + %(version_1)s::BIGINT), entered_version=(sm_workflows.version + %(version_2)s::BIGINT), attempt=%(param_1)s::INTEGER, wake_at=CASE WHEN (sm_workflows.cancel_requested IS NOT NULL) THEN now() ELSE %(p_wake_at)s::TIMESTAMP WITH TIME ZONE END, lease_token=%(param_2)s::VARCHAR, lease_owner=%(param_3)s::VARCHAR, last_error=%(p_last_error)s::VARCHAR, updated_at=now(), in_doubt=%(p_in_doubt)s::VARCHAR, polls=%(param_4)s::INTEGER, purge_after=%(param_5)s::TIMESTAMP WITH TIME ZONE WHERE sm_workflows.id = %(p_id)s::UUID AND sm_workflows.version = %(p_version)s::BIGINT RETURNING sm_workflows.id, sm_workflows.version, sm_workflows.cancel_requested), 
i AS 
(INSERT INTO sm_history (workflow_id, version, kind, from_state, to_state, data, status, cause, attempt, error, worker, started_at, finished_at) SELECT u.id AS id, u.version AS version, %(h_kind)s::VARCHAR AS anon_1, %(h_from)s::VARCHAR AS anon_2, %(p_state)s::VARCHAR AS anon_3, %(p_data)s::JSONB AS anon_4, %(h_status)s::VARCHAR AS anon_5, %(h_cause)s::VARCHAR AS anon_6, %(h_attempt)s::INTEGER AS anon_7, %(h_error)s::VARCHAR AS anon_8, %(h_worker)s::VARCHAR AS anon_9, %(h_started)s::TIMESTAMP WITH TIME ZONE AS anon_10, now() AS now_1 
FROM u RETURNING sm_history.version)
 SELECT u.version, u.cancel_requested 
FROM u JOIN i ON i.version = u.version;

-- name: commit#6
WITH u AS 
(UPDATE sm_workflows SET state=%(p_state)s::VARCHAR, status=%(p_status)s::VARCHAR, version=(sm_workflows.version + %(version_1)s::BIGINT), entered_version=(sm_workflows.version + %(version_2)s::BIGINT), attempt=%(param_1)s::INTEGER, wake_at=%(param_2)s::TIMESTAMP WITH TIME ZONE, lease_token=%(param_3)s::VARCHAR, lease_owner=%(param_4)s::VARCHAR, last_error=%(p_last_error)s::VARCHAR, updated_at=now(), in_doubt=%(p_in_doubt)s::VARCHAR, polls=%(param_5)s::INTEGER, purge_after=%(param_6)s::TIMESTAMP WITH TIME ZONE WHERE sm_workflows.id = %(p_id)s::UUID AND sm_workflows.version = %(p_version)s::BIGINT RETURNING sm_workflows.id, sm_workflows.version, sm_workflows.cancel_requested), 
i AS 
(INSERT INTO sm_history (workflow_id, version, kind, from_state, to_state, data, status, cause, attempt, error, worker, started_at, finished_at) SELECT u.id AS id, u.version AS version, %(h_kind)s::VARCHAR AS anon_1, %(h_from)s::VARCHAR AS anon_2, %(p_state)s::VARCHAR AS anon_3, %(p_data)s::JSONB AS anon_4, %(h_status)s::VARCHAR AS anon_5, %(h_cause)s::VARCHAR AS anon_6, %(h_attempt)s::INTEGER AS anon_7, %(h_error)s::VARCHAR AS anon_8, %(h_worker)s::VARCHAR AS anon_9, %(h_started)s::TIMESTAMP WITH TIME ZONE AS anon_10, now() AS now_1 
FROM u RETURNING sm_history.version)
 SELECT u.version, u.cancel_requested 
FROM u JOIN i ON i.version = u.version;

-- name: commit#7
INSERT INTO sm_history (workflow_id, version, kind, from_state, to_state, data, status, cause, attempt, error, worker, started_at, finished_at) VALUES (%(p_id)s::UUID, %(h_version)s::BIGINT, %(h_kind)s::VARCHAR, %(h_from)s::VARCHAR, %(p_state)s::VARCHAR, %(p_data)s::JSONB, %(h_status)s::VARCHAR, %(h_cause)s::VARCHAR, %(h_attempt)s::INTEGER, %(h_error)s::VARCHAR, %(h_worker)s::VARCHAR, %(h_started)s::TIMESTAMP WITH TIME ZONE, now());

-- name: commit#8
UPDATE sm_events SET status=%(status)s::VARCHAR, consumed_at=now(), consumed_version=%(consumed_version)s::BIGINT WHERE sm_events.id = %(id_1)s::UUID AND sm_events.status = %(status_1)s::VARCHAR RETURNING sm_events.id;

-- name: commit#9
UPDATE sm_events SET status=%(status)s::VARCHAR, noticed=%(noticed)s, error=%(error)s::VARCHAR, consumed_at=now() WHERE sm_events.workflow_id = %(workflow_id_1)s::UUID AND sm_events.status = %(status_1)s::VARCHAR;

-- name: commit#10
INSERT INTO sm_workflows (id, machine, state, data, status, version, entered_version, attempt, wake_at, key, parent_id, created_at, updated_at) SELECT CAST(c.value ->> %(value_1)s::TEXT AS UUID) AS anon_1, c.value ->> %(value_2)s::TEXT AS anon_2, c.value ->> %(value_3)s::TEXT AS anon_3, c.value -> %(param_1)s::VARCHAR AS anon_4, %(param_2)s::VARCHAR AS anon_5, %(param_3)s::BIGINT AS anon_6, %(param_4)s::BIGINT AS anon_7, %(param_5)s::INTEGER AS anon_8, CASE WHEN ((c.value ->> %(value_4)s::TEXT) = %(param_6)s::VARCHAR) THEN NULL ELSE now() END AS anon_9, c.value ->> %(value_5)s::TEXT AS anon_10, %(p_parent)s::UUID AS anon_11, now() + CAST((c.value ->> %(value_6)s::TEXT) AS INTEGER) * %(param_7)s AS anon_12, now() AS now_1 
FROM jsonb_array_elements(%(p_children)s::JSONB) AS c;

-- name: commit#11
INSERT INTO sm_history (workflow_id, version, kind, to_state, data, status, attempt, cause, finished_at) SELECT CAST(c.value ->> %(value_1)s::TEXT AS UUID) AS anon_1, %(param_1)s::BIGINT AS anon_2, %(param_2)s::VARCHAR AS anon_3, c.value ->> %(value_2)s::TEXT AS anon_4, c.value -> %(param_3)s::VARCHAR AS anon_5, %(param_4)s::VARCHAR AS anon_6, %(param_5)s::INTEGER AS anon_7, %(p_cause)s::VARCHAR AS anon_8, now() AS now_1 
FROM jsonb_array_elements(%(p_children)s::JSONB) AS c;

-- name: commit#12
UPDATE sm_workflows SET wake_at=CASE WHEN (sm_workflows.status = %(status_1)s::VARCHAR) THEN now() ELSE sm_workflows.wake_at END WHERE sm_workflows.id IN (__[POSTCOMPILE_id_1]);

-- name: commit#13
UPDATE sm_workflows SET wake_at=CASE WHEN (sm_workflows.status IN (__[POSTCOMPILE_status_1])) THEN now() ELSE sm_workflows.wake_at END, cancel_requested=%(cancel_requested)s::VARCHAR WHERE sm_workflows.parent_id = %(parent_id_1)s::UUID AND sm_workflows.status IN (__[POSTCOMPILE_status_2]) AND sm_workflows.cancel_requested IS NULL;

-- name: commit_group#1
WITH u AS 
(UPDATE sm_workflows SET state=(g.value ->> %(value_1)s::TEXT), data=(g.value -> %(param_1)s::VARCHAR), status=%(param_2)s::VARCHAR, version=(sm_workflows.version + %(version_1)s::BIGINT), entered_version=(sm_workflows.version + %(version_2)s::BIGINT), attempt=%(param_3)s::INTEGER, wake_at=CASE WHEN (sm_workflows.wake_at >= now() + CAST((g.value ->> %(value_2)s::TEXT) AS INTERVAL)) THEN sm_workflows.wake_at ELSE now() + CAST((g.value ->> %(value_3)s::TEXT) AS INTERVAL) END, last_error=(g.value ->> %(value_4)s::TEXT), updated_at=now(), in_doubt=(g.value ->> %(value_5)s::TEXT), polls=%(param_4)s::INTEGER, purge_after=%(param_5)s::TIMESTAMP WITH TIME ZONE FROM jsonb_array_elements(%(g_rows)s::JSONB) AS g WHERE sm_workflows.id = CAST((g.value ->> %(value_6)s::TEXT) AS UUID) AND sm_workflows.version = CAST((g.value ->> %(value_7)s::TEXT) AS BIGINT) AND sm_workflows.id = ANY (CAST((SELECT %(g_ids)s::UUID[] AS anon_1) AS UUID[])) RETURNING sm_workflows.id, sm_workflows.version, sm_workflows.cancel_requested), 
i AS 
(INSERT INTO sm_history (workflow_id, version, kind, from_state, to_state, data, status, cause, attempt, error, worker, started_at, finished_at) SELECT u.id AS id, u.version AS version, g.value ->> %(value_8)s::TEXT AS anon_2, g.value ->> %(value_9)s::TEXT AS anon_3, g.value ->> %(value_10)s::TEXT AS anon_4, g.value -> %(param_6)s::VARCHAR AS anon_5, g.value ->> %(value_11)s::TEXT AS anon_6, g.value ->> %(value_12)s::TEXT AS anon_7, CAST(g.value ->> %(value_13)s::TEXT AS INTEGER) AS anon_8, g.value ->> %(value_14)s::TEXT AS anon_9, g.value ->> %(value_15)s::TEXT AS anon_10, CAST(g.value ->> %(value_16)s::TEXT AS TIMESTAMP WITH TIME ZONE) AS anon_11, now() AS now_1 
FROM u JOIN jsonb_array_elements(%(g_rows)s::JSONB) AS g ON CAST((g.value ->> %(value_17)s::TEXT) AS UUID) = u.id RETURNING sm_history.workflow_id, sm_history.version)
 SELECT u.id, u.version, u.cancel_requested 
FROM u JOIN i ON i.workflow_id = u.id AND i.version = u.version;

-- name: commit_in#1
UPDATE sm_workflows SET state=%(p_state)s::VARCHAR, data=%(p_data)s::JSONB, status=%(status)s::VARCHAR, version=(sm_workflows.version + %(version_1)s::BIGINT), entered_version=(sm_workflows.version + %(version_2)s::BIGINT), attempt=%(attempt)s::INTEGER, wake_at=CASE WHEN (sm_workflows.wake_at >= now() + %(p_keep)s) THEN sm_workflows.wake_at ELSE now() + %(p_wake)s END, last_error=%(p_last_error)s::VARCHAR, updated_at=now(), cancel_requested=%(cancel_requested)s::VARCHAR, in_doubt=%(p_in_doubt)s::VARCHAR, polls=%(polls)s::INTEGER, purge_after=%(purge_after)s::TIMESTAMP WITH TIME ZONE WHERE sm_workflows.id = %(p_id)s::UUID AND sm_workflows.version = %(p_version)s::BIGINT AND sm_workflows.lease_token = %(p_token)s::VARCHAR AND sm_workflows.status IN (__[POSTCOMPILE_p_expect]) RETURNING sm_workflows.version, sm_workflows.cancel_requested;

-- name: commit_in#2
UPDATE sm_workflows SET state=%(p_state)s::VARCHAR, data=%(p_data)s::JSONB, status=%(p_status)s::VARCHAR, version=(sm_workflows.version + %(version_1)s::BIGINT), entered_version=(sm_workflows.version + %(version_2)s::BIGINT), attempt=%(attempt)s::INTEGER, wake_at=%(wake_at)s::TIMESTAMP WITH TIME ZONE, lease_token=%(lease_token)s::VARCHAR, lease_owner=%(lease_owner)s::VARCHAR, last_error=%(p_last_error)s::VARCHAR, updated_at=now(), in_doubt=%(p_in_doubt)s::VARCHAR, polls=%(polls)s::INTEGER, purge_after=%(purge_after)s::TIMESTAMP WITH TIME ZONE WHERE sm_workflows.id = %(p_id)s::UUID AND sm_workflows.version = %(p_version)s::BIGINT RETURNING sm_workflows.version, sm_workflows.cancel_requested;

-- name: commit_in#3
UPDATE sm_workflows SET state=%(p_state)s::VARCHAR, data=%(p_data)s::JSONB, status=%(status)s::VARCHAR, version=(sm_workflows.version + %(version_1)s::BIGINT), entered_version=(sm_workflows.version + %(version_2)s::BIGINT), attempt=%(attempt)s::INTEGER, wake_at=CASE WHEN (sm_workflows.wake_at >= now() + %(p_keep)s) THEN sm_workflows.wake_at ELSE now() + %(p_wake)s END, last_error=%(p_last_error)s::VARCHAR, updated_at=now(), in_doubt=%(p_in_doubt)s::VARCHAR, polls=%(polls)s::INTEGER, purge_after=%(purge_after)s::TIMESTAMP WITH TIME ZONE WHERE sm_workflows.id = %(p_id)s::UUID AND sm_workflows.version = %(p_version)s::BIGINT RETURNING sm_workflows.version, sm_workflows.cancel_requested;

-- name: commit_in#4
UPDATE sm_workflows SET state=%(p_state)s::VARCHAR, data=%(p_data)s::JSONB, status=%(p_status)s::VARCHAR, version=(sm_workflows.version + %(version_1)s::BIGINT), entered_version=(sm_workflows.version + %(version_2)s::BIGINT), attempt=%(attempt)s::INTEGER, wake_at=CASE WHEN (sm_workflows.cancel_requested IS NOT NULL) THEN now() ELSE now() + %(p_wake)s END, lease_token=%(lease_token)s::VARCHAR, lease_owner=%(lease_owner)s::VARCHAR, last_error=%(p_last_error)s::VARCHAR, updated_at=now(), in_doubt=%(p_in_doubt)s::VARCHAR, polls=%(polls)s::INTEGER, purge_after=%(purge_after)s::TIMESTAMP WITH TIME ZONE WHERE sm_workflows.id = %(p_id)s::UUID AND sm_workflows.version = %(p_version)s::BIGINT RETURNING sm_workflows.version, sm_workflows.cancel_requested;

-- name: commit_in#5
UPDATE sm_workflows SET state=%(p_state)s::VARCHAR, data=%(p_data)s::JSONB, status=%(p_status)s::VARCHAR, version=(sm_workflows.version + %(version_1)s::BIGINT), entered_version=(sm_workflows.version + %(version_2)s::BIGINT), attempt=%(attempt)s::INTEGER, wake_at=CASE WHEN (sm_workflows.cancel_requested IS NOT NULL) THEN now() ELSE %(p_wake_at)s::TIMESTAMP WITH TIME ZONE END, lease_token=%(lease_token)s::VARCHAR, lease_owner=%(lease_owner)s::VARCHAR, last_error=%(p_last_error)s::VARCHAR, updated_at=now(), in_doubt=%(p_in_doubt)s::VARCHAR, polls=%(polls)s::INTEGER, purge_after=%(purge_after)s::TIMESTAMP WITH TIME ZONE WHERE sm_workflows.id = %(p_id)s::UUID AND sm_workflows.version = %(p_version)s::BIGINT RETURNING sm_workflows.version, sm_workflows.cancel_requested;

-- name: commit_in#6
UPDATE sm_workflows SET state=%(p_state)s::VARCHAR, status=%(p_status)s::VARCHAR, version=(sm_workflows.version + %(version_1)s::BIGINT), entered_version=(sm_workflows.version + %(version_2)s::BIGINT), attempt=%(attempt)s::INTEGER, wake_at=%(wake_at)s::TIMESTAMP WITH TIME ZONE, lease_token=%(lease_token)s::VARCHAR, lease_owner=%(lease_owner)s::VARCHAR, last_error=%(p_last_error)s::VARCHAR, updated_at=now(), in_doubt=%(p_in_doubt)s::VARCHAR, polls=%(polls)s::INTEGER, purge_after=%(purge_after)s::TIMESTAMP WITH TIME ZONE WHERE sm_workflows.id = %(p_id)s::UUID AND sm_workflows.version = %(p_version)s::BIGINT RETURNING sm_workflows.version, sm_workflows.cancel_requested;

-- name: commit_in#7
INSERT INTO sm_history (workflow_id, version, kind, from_state, to_state, data, status, cause, attempt, error, worker, started_at, finished_at) VALUES (%(p_id)s::UUID, %(h_version)s::BIGINT, %(h_kind)s::VARCHAR, %(h_from)s::VARCHAR, %(p_state)s::VARCHAR, %(p_data)s::JSONB, %(h_status)s::VARCHAR, %(h_cause)s::VARCHAR, %(h_attempt)s::INTEGER, %(h_error)s::VARCHAR, %(h_worker)s::VARCHAR, %(h_started)s::TIMESTAMP WITH TIME ZONE, now());

-- name: commit_in#8
UPDATE sm_events SET status=%(status)s::VARCHAR, consumed_at=now(), consumed_version=%(consumed_version)s::BIGINT WHERE sm_events.id = %(id_1)s::UUID AND sm_events.status = %(status_1)s::VARCHAR RETURNING sm_events.id;

-- name: commit_in#9
UPDATE sm_events SET status=%(status)s::VARCHAR, noticed=%(noticed)s, error=%(error)s::VARCHAR, consumed_at=now() WHERE sm_events.workflow_id = %(workflow_id_1)s::UUID AND sm_events.status = %(status_1)s::VARCHAR;

-- name: commit_in#10
INSERT INTO sm_workflows (id, machine, state, data, status, version, entered_version, attempt, wake_at, key, parent_id, created_at, updated_at) SELECT CAST(c.value ->> %(value_1)s::TEXT AS UUID) AS anon_1, c.value ->> %(value_2)s::TEXT AS anon_2, c.value ->> %(value_3)s::TEXT AS anon_3, c.value -> %(param_1)s::VARCHAR AS anon_4, %(param_2)s::VARCHAR AS anon_5, %(param_3)s::BIGINT AS anon_6, %(param_4)s::BIGINT AS anon_7, %(param_5)s::INTEGER AS anon_8, CASE WHEN ((c.value ->> %(value_4)s::TEXT) = %(param_6)s::VARCHAR) THEN NULL ELSE now() END AS anon_9, c.value ->> %(value_5)s::TEXT AS anon_10, %(p_parent)s::UUID AS anon_11, now() + CAST((c.value ->> %(value_6)s::TEXT) AS INTEGER) * %(param_7)s AS anon_12, now() AS now_1 
FROM jsonb_array_elements(%(p_children)s::JSONB) AS c;

-- name: commit_in#11
INSERT INTO sm_history (workflow_id, version, kind, to_state, data, status, attempt, cause, finished_at) SELECT CAST(c.value ->> %(value_1)s::TEXT AS UUID) AS anon_1, %(param_1)s::BIGINT AS anon_2, %(param_2)s::VARCHAR AS anon_3, c.value ->> %(value_2)s::TEXT AS anon_4, c.value -> %(param_3)s::VARCHAR AS anon_5, %(param_4)s::VARCHAR AS anon_6, %(param_5)s::INTEGER AS anon_7, %(p_cause)s::VARCHAR AS anon_8, now() AS now_1 
FROM jsonb_array_elements(%(p_children)s::JSONB) AS c;

-- name: commit_in#12
UPDATE sm_workflows SET wake_at=CASE WHEN (sm_workflows.status = %(status_1)s::VARCHAR) THEN now() ELSE sm_workflows.wake_at END WHERE sm_workflows.id IN (__[POSTCOMPILE_id_1]);

-- name: commit_in#13
UPDATE sm_workflows SET wake_at=CASE WHEN (sm_workflows.status IN (__[POSTCOMPILE_status_1])) THEN now() ELSE sm_workflows.wake_at END, cancel_requested=%(cancel_requested)s::VARCHAR WHERE sm_workflows.parent_id = %(parent_id_1)s::UUID AND sm_workflows.status IN (__[POSTCOMPILE_status_2]) AND sm_workflows.cancel_requested IS NULL;

-- name: count_by_status#1
SELECT sm_workflows.status, count(*) AS count_1 
FROM sm_workflows 
WHERE sm_workflows.machine = %(machine_1)s::VARCHAR GROUP BY sm_workflows.status;

-- name: count_by_status#2
SELECT sm_workflows.status, count(*) AS count_1 
FROM sm_workflows GROUP BY sm_workflows.status;

-- name: current_time#1
SELECT now() AS now_1;

-- name: defer#1
UPDATE sm_workflows SET status=%(status)s::VARCHAR, attempt=(sm_workflows.attempt - %(attempt_1)s::INTEGER), wake_at=(now() + %(param_1)s), lease_token=%(lease_token)s::VARCHAR, lease_owner=%(lease_owner)s::VARCHAR, updated_at=now() WHERE sm_workflows.id = %(id_1)s::UUID AND sm_workflows.version = %(version_1)s::BIGINT AND sm_workflows.lease_token = %(lease_token_1)s::VARCHAR RETURNING sm_workflows.id;

-- name: due_counts#1
SELECT sm_workflows.machine, count(*) AS count_1 
FROM sm_workflows 
WHERE sm_workflows.machine IN (__[POSTCOMPILE_machine_1]) AND sm_workflows.status IN (__[POSTCOMPILE_status_1]) AND sm_workflows.wake_at IS NOT NULL AND sm_workflows.wake_at <= now() GROUP BY sm_workflows.machine;

-- name: entered_at#1
SELECT sm_history.finished_at 
FROM sm_history 
WHERE sm_history.workflow_id = %(workflow_id_1)s::UUID AND sm_history.version = %(version_1)s::BIGINT;

-- name: first_state#1
SELECT sm_history.workflow_id, sm_history.version, sm_history.kind, sm_history.from_state, sm_history.to_state, sm_history.data, sm_history.status, sm_history.cause, sm_history.attempt, sm_history.error, sm_history.worker, sm_history.started_at, sm_history.finished_at 
FROM sm_history 
WHERE sm_history.workflow_id = %(workflow_id_1)s::UUID AND sm_history.version = %(version_1)s::BIGINT;

-- name: get#1
SELECT sm_workflows.id, sm_workflows.machine, sm_workflows.state, sm_workflows.data, sm_workflows.status, sm_workflows.version, sm_workflows.entered_version, sm_workflows.attempt, sm_workflows.wake_at, sm_workflows.lease_token, sm_workflows.lease_owner, sm_workflows.key, sm_workflows.parent_id, sm_workflows.last_error, sm_workflows.created_at, sm_workflows.updated_at, sm_workflows.cancel_requested, sm_workflows.in_doubt, sm_workflows.polls, sm_workflows.purge_after 
FROM sm_workflows 
WHERE sm_workflows.id = %(id_1)s::UUID;

-- name: get_many#1
SELECT sm_workflows.id, sm_workflows.machine, sm_workflows.state, sm_workflows.data, sm_workflows.status, sm_workflows.version, sm_workflows.entered_version, sm_workflows.attempt, sm_workflows.wake_at, sm_workflows.lease_token, sm_workflows.lease_owner, sm_workflows.key, sm_workflows.parent_id, sm_workflows.last_error, sm_workflows.created_at, sm_workflows.updated_at, sm_workflows.cancel_requested, sm_workflows.in_doubt, sm_workflows.polls, sm_workflows.purge_after 
FROM sm_workflows 
WHERE sm_workflows.id IN (__[POSTCOMPILE_id_1]);

-- name: history#1
SELECT sm_history.workflow_id, sm_history.version, sm_history.kind, sm_history.from_state, sm_history.to_state, sm_history.data, sm_history.status, sm_history.cause, sm_history.attempt, sm_history.error, sm_history.worker, sm_history.started_at, sm_history.finished_at 
FROM sm_history 
WHERE sm_history.workflow_id = %(workflow_id_1)s::UUID ORDER BY sm_history.version;

-- name: insert_event#1
UPDATE sm_workflows SET wake_at=CASE WHEN (sm_workflows.status = %(status_1)s::VARCHAR) THEN now() ELSE sm_workflows.wake_at END WHERE sm_workflows.id = %(id_1)s::UUID RETURNING sm_workflows.status;

-- name: insert_event#2
INSERT INTO sm_events (id, workflow_id, type, data, status, noticed, created_at, seq) SELECT %(param_1)s::UUID AS anon_1, %(param_2)s::UUID AS anon_2, %(param_3)s::VARCHAR AS anon_3, %(param_4)s::JSONB AS anon_4, %(param_5)s::VARCHAR AS anon_5, %(param_6)s AS anon_6, now() AS now_1, coalesce(max(sm_events.seq), %(coalesce_1)s::INTEGER) + %(coalesce_2)s::BIGINT AS anon_7 
FROM sm_events 
WHERE sm_events.workflow_id = %(workflow_id_1)s::UUID ON CONFLICT (id) DO NOTHING;

-- name: insert_workflow#1
WITH "new" AS 
(INSERT INTO sm_workflows (id, machine, state, data, status, version, entered_version, attempt, wake_at, key, parent_id, created_at, updated_at) VALUES (%(p_id)s::UUID, %(p_machine)s::VARCHAR, %(p_state)s::VARCHAR, %(p_data)s::JSONB, %(param_5)s::VARCHAR, %(param_6)s::BIGINT, %(param_7)s::BIGINT, %(param_8)s::INTEGER, (now() + %(p_wake)s), %(p_key)s::VARCHAR, %(p_parent)s::UUID, now(), now()) ON CONFLICT DO NOTHING RETURNING sm_workflows.id, sm_workflows.state, sm_workflows.data), 
first AS 
(INSERT INTO sm_history (workflow_id, version, kind, to_state, data, status, attempt, cause, finished_at) SELECT "new".id AS id, %(param_1)s::BIGINT AS anon_1, %(param_2)s::VARCHAR AS anon_2, "new".state AS state, "new".data AS data, %(param_3)s::VARCHAR AS anon_3, %(param_4)s::INTEGER AS anon_4, %(h_cause)s::VARCHAR AS anon_5, now() AS now_1 
FROM "new" RETURNING sm_history.workflow_id)
 SELECT first.workflow_id 
FROM first;

-- name: insert_workflow#2
SELECT sm_workflows.id 
FROM sm_workflows 
WHERE sm_workflows.id = %(id_1)s::UUID;

-- name: insert_workflow#3
SELECT sm_workflows.id 
FROM sm_workflows 
WHERE sm_workflows.machine = %(machine_1)s::VARCHAR AND sm_workflows.key = %(key_1)s::VARCHAR;

-- name: insert_workflow#4
SELECT sm_workflows.id 
FROM sm_workflows 
WHERE sm_workflows.machine = %(machine_1)s::VARCHAR AND sm_workflows.key IS NULL;

-- name: insert_workflow_in#1
INSERT INTO sm_workflows (id, machine, state, data, status, version, entered_version, attempt, wake_at, key, parent_id, created_at, updated_at) VALUES (%(id)s::UUID, %(machine)s::VARCHAR, %(state)s::VARCHAR, %(data)s::JSONB, %(status)s::VARCHAR, %(version)s::BIGINT, %(entered_version)s::BIGINT, %(attempt)s::INTEGER, (now() + %(param_1)s), %(key)s::VARCHAR, %(parent_id)s::UUID, now(), now()) ON CONFLICT (machine, key) WHERE key IS NOT NULL DO NOTHING RETURNING sm_workflows.id;

-- name: insert_workflow_in#2
SELECT sm_workflows.id 
FROM sm_workflows 
WHERE sm_workflows.machine = %(machine_1)s::VARCHAR AND sm_workflows.key = %(key_1)s::VARCHAR;

-- name: insert_workflow_in#3
INSERT INTO sm_workflows (id, machine, state, data, status, version, entered_version, attempt, wake_at, key, parent_id, created_at, updated_at) VALUES (%(id)s::UUID, %(machine)s::VARCHAR, %(state)s::VARCHAR, %(data)s::JSONB, %(status)s::VARCHAR, %(version)s::BIGINT, %(entered_version)s::BIGINT, %(attempt)s::INTEGER, (now() + %(param_1)s), %(key)s::VARCHAR, %(parent_id)s::UUID, now(), now());

-- name: insert_workflow_in#4
INSERT INTO sm_history (workflow_id, version, kind, from_state, to_state, data, status, cause, attempt, finished_at) VALUES (%(workflow_id)s::UUID, %(version)s::BIGINT, %(kind)s::VARCHAR, %(from_state)s::VARCHAR, %(to_state)s::VARCHAR, %(data)s::JSONB, %(status)s::VARCHAR, %(cause)s::VARCHAR, %(attempt)s::INTEGER, now());

-- name: insert_workflows#1
SELECT sm_workflows.id 
FROM sm_workflows 
WHERE sm_workflows.id = %(id_1)s::UUID;

-- name: insert_workflows#2
SELECT now() AS now_1;

-- name: insert_workflows#3
INSERT INTO sm_workflows (id, machine, state, data, status, version, entered_version, attempt, wake_at, lease_token, lease_owner, key, parent_id, last_error, created_at, updated_at, cancel_requested, in_doubt, polls, purge_after) VALUES (%(id)s::UUID, %(machine)s::VARCHAR, %(state)s::VARCHAR, %(data)s::JSONB, %(status)s::VARCHAR, %(version)s::BIGINT, %(entered_version)s::BIGINT, %(attempt)s::INTEGER, %(wake_at)s::TIMESTAMP WITH TIME ZONE, %(lease_token)s::VARCHAR, %(lease_owner)s::VARCHAR, %(key)s::VARCHAR, %(parent_id)s::UUID, %(last_error)s::VARCHAR, %(created_at)s::TIMESTAMP WITH TIME ZONE, %(updated_at)s::TIMESTAMP WITH TIME ZONE, %(cancel_requested)s::VARCHAR, %(in_doubt)s::VARCHAR, %(polls)s::INTEGER, %(purge_after)s::TIMESTAMP WITH TIME ZONE);

-- name: insert_workflows#4
INSERT INTO sm_history (workflow_id, version, kind, from_state, to_state, data, status, cause, attempt, error, worker, started_at, finished_at) VALUES (%(workflow_id)s::UUID, %(version)s::BIGINT, %(kind)s::VARCHAR, %(from_state)s::VARCHAR, %(to_state)s::VARCHAR, %(data)s::JSONB, %(status)s::VARCHAR, %(cause)s::VARCHAR, %(attempt)s::INTEGER, %(error)s::VARCHAR, %(worker)s::VARCHAR, %(started_at)s::TIMESTAMP WITH TIME ZONE, %(finished_at)s::TIMESTAMP WITH TIME ZONE);

-- name: list_workflows#1
SELECT sm_workflows.id, sm_workflows.machine, sm_workflows.state, sm_workflows.data, sm_workflows.status, sm_workflows.version, sm_workflows.entered_version, sm_workflows.attempt, sm_workflows.wake_at, sm_workflows.lease_token, sm_workflows.lease_owner, sm_workflows.key, sm_workflows.parent_id, sm_workflows.last_error, sm_workflows.created_at, sm_workflows.updated_at, sm_workflows.cancel_requested, sm_workflows.in_doubt, sm_workflows.polls, sm_workflows.purge_after 
FROM sm_workflows 
WHERE sm_workflows.machine = %(machine_1)s::VARCHAR AND sm_workflows.status = %(status_1)s::VARCHAR AND sm_workflows.state = %(state_1)s::VARCHAR ORDER BY sm_workflows.created_at DESC, sm_workflows.id 
 LIMIT %(param_1)s::INTEGER;

-- name: list_workflows#2
SELECT sm_workflows.id, sm_workflows.machine, sm_workflows.state, sm_workflows.data, sm_workflows.status, sm_workflows.version, sm_workflows.entered_version, sm_workflows.attempt, sm_workflows.wake_at, sm_workflows.lease_token, sm_workflows.lease_owner, sm_workflows.key, sm_workflows.parent_id, sm_workflows.last_error, sm_workflows.created_at, sm_workflows.updated_at, sm_workflows.cancel_requested, sm_workflows.in_doubt, sm_workflows.polls, sm_workflows.purge_after 
FROM sm_workflows ORDER BY sm_workflows.created_at DESC, sm_workflows.id 
 LIMIT %(param_1)s::INTEGER;

-- name: notice_sql_events#1
SELECT sm_events.id, sm_events.workflow_id, sm_events.created_at 
FROM sm_events 
WHERE sm_events.noticed = false 
 LIMIT %(param_1)s::INTEGER;

-- name: notice_sql_events#2
UPDATE sm_workflows SET wake_at=CASE WHEN (sm_workflows.status = %(status_1)s::VARCHAR) THEN now() ELSE sm_workflows.wake_at END WHERE sm_workflows.id IN (__[POSTCOMPILE_id_1]);

-- name: notice_sql_events#3
UPDATE sm_events SET noticed=%(noticed)s, seq=(SELECT coalesce(max(numbered.seq), %(coalesce_1)s::INTEGER) + %(coalesce_2)s::BIGINT AS anon_1 
FROM sm_events AS numbered 
WHERE numbered.workflow_id = sm_events.workflow_id) WHERE sm_events.id = %(e_id)s::UUID AND sm_events.seq IS NULL;

-- name: notice_sql_events#4
UPDATE sm_events SET noticed=%(noticed)s WHERE sm_events.id IN (__[POSTCOMPILE_id_1]);

-- name: pending_events#1
SELECT sm_events.id, sm_events.type, sm_events.data, sm_events.created_at 
FROM sm_events 
WHERE sm_events.workflow_id = %(workflow_id_1)s::UUID AND sm_events.status = %(status_1)s::VARCHAR ORDER BY sm_events.seq ASC NULLS FIRST, sm_events.created_at, sm_events.id;

-- name: pending_events_of#1
SELECT sm_events.id, sm_events.workflow_id, sm_events.type, sm_events.data, sm_workflows.machine 
FROM sm_events JOIN sm_workflows ON sm_workflows.id = sm_events.workflow_id 
WHERE sm_events.status = %(status_1)s::VARCHAR AND sm_workflows.machine IN (__[POSTCOMPILE_machine_1]);

-- name: poll_again#1
UPDATE sm_workflows SET status=%(status)s::VARCHAR, attempt=%(attempt)s::INTEGER, wake_at=CASE WHEN (sm_workflows.cancel_requested IS NOT NULL) THEN now() ELSE now() + %(param_1)s END, lease_token=%(lease_token)s::VARCHAR, lease_owner=%(lease_owner)s::VARCHAR, updated_at=now(), polls=(sm_workflows.polls + %(polls_1)s::INTEGER) WHERE sm_workflows.id = %(id_1)s::UUID AND sm_workflows.version = %(version_1)s::BIGINT AND sm_workflows.lease_token = %(lease_token_1)s::VARCHAR AND sm_workflows.status = %(status_1)s::VARCHAR RETURNING sm_workflows.id;

-- name: polling_since#1
SELECT max(sm_history.finished_at) AS max_1 
FROM sm_history 
WHERE sm_history.workflow_id = %(workflow_id_1)s::UUID AND sm_history.version >= %(version_1)s::BIGINT AND (sm_history.version = %(version_2)s::BIGINT OR sm_history.kind = %(kind_1)s::VARCHAR);

-- name: purge_batch#1
SELECT sm_workflows.id, sm_workflows.purge_after 
FROM sm_workflows 
WHERE sm_workflows.purge_after IS NOT NULL AND sm_workflows.purge_after < now() + %(param_1)s AND sm_workflows.parent_id IS NULL AND (sm_workflows.purge_after > %(purge_after_1)s::TIMESTAMP WITH TIME ZONE OR sm_workflows.purge_after = %(purge_after_2)s::TIMESTAMP WITH TIME ZONE AND sm_workflows.id > %(id_1)s::UUID) ORDER BY sm_workflows.purge_after, sm_workflows.id 
 LIMIT %(param_2)s::INTEGER;

-- name: purge_batch#2
SELECT sm_workflows.id, sm_workflows.purge_after 
FROM sm_workflows 
WHERE sm_workflows.purge_after IS NOT NULL AND sm_workflows.purge_after < now() + %(param_1)s AND sm_workflows.parent_id IS NULL ORDER BY sm_workflows.purge_after, sm_workflows.id 
 LIMIT %(param_2)s::INTEGER;

-- name: purge_batch#3
SELECT sm_workflows.id, sm_workflows.parent_id, sm_workflows.status 
FROM sm_workflows 
WHERE sm_workflows.id IN (__[POSTCOMPILE_p_ids]) FOR UPDATE;

-- name: purge_batch#4
SELECT sm_workflows.id, sm_workflows.parent_id, sm_workflows.status 
FROM sm_workflows 
WHERE sm_workflows.parent_id IN (__[POSTCOMPILE_p_ids]) FOR UPDATE;

-- name: record_external_change#1
UPDATE sm_workflows SET entered_version=%(entered_version)s::BIGINT, attempt=%(attempt)s::INTEGER, polls=%(polls)s::INTEGER WHERE sm_workflows.id = %(id_1)s::UUID AND sm_workflows.version = %(version_1)s::BIGINT AND sm_workflows.lease_token = %(lease_token_1)s::VARCHAR RETURNING sm_workflows.id;

-- name: record_external_change#2
INSERT INTO sm_history (workflow_id, version, kind, from_state, to_state, data, status, cause, attempt, worker, finished_at) VALUES (%(workflow_id)s::UUID, %(version)s::BIGINT, %(kind)s::VARCHAR, %(from_state)s::VARCHAR, %(to_state)s::VARCHAR, %(data)s::JSONB, %(status)s::VARCHAR, %(cause)s::VARCHAR, %(attempt)s::INTEGER, %(worker)s::VARCHAR, now()) ON CONFLICT (workflow_id, version) DO NOTHING;

-- name: reject_event#1
UPDATE sm_events SET status=%(status)s::VARCHAR, noticed=%(noticed)s, error=%(error)s::VARCHAR, consumed_at=now() WHERE sm_events.id = %(id_1)s::UUID AND sm_events.status = %(status_1)s::VARCHAR;

-- name: release#1
UPDATE sm_workflows SET status=%(status)s::VARCHAR, attempt=(sm_workflows.attempt - %(attempt_1)s::INTEGER), wake_at=now(), lease_token=%(lease_token)s::VARCHAR, lease_owner=%(lease_owner)s::VARCHAR, updated_at=now() WHERE sm_workflows.id IN (__[POSTCOMPILE_id_1]) AND sm_workflows.lease_token = %(lease_token_1)s::VARCHAR AND sm_workflows.status = %(status_1)s::VARCHAR RETURNING sm_workflows.id;

-- name: release_children#1
SELECT count(*) AS count_1 
FROM sm_workflows 
WHERE sm_workflows.parent_id = %(parent_id_1)s::UUID AND sm_workflows.status IN (__[POSTCOMPILE_status_1]) AND NOT (sm_workflows.status = %(status_2)s::VARCHAR AND sm_workflows.wake_at IS NULL);

-- name: release_slot#1
UPDATE sm_limit_slots SET holder=%(holder)s::UUID, expires_at=%(expires_at)s::TIMESTAMP WITH TIME ZONE WHERE sm_limit_slots.key = %(key_1)s::VARCHAR AND sm_limit_slots.slot = %(slot_1)s::INTEGER AND sm_limit_slots.holder = %(holder_1)s::UUID;

-- name: renew_leases#1
UPDATE sm_workflows SET wake_at=(now() + %(param_1)s) WHERE sm_workflows.id IN (__[POSTCOMPILE_id_1]) AND sm_workflows.lease_token = %(lease_token_1)s::VARCHAR AND sm_workflows.status = %(status_1)s::VARCHAR RETURNING sm_workflows.id;

-- name: renew_slots#1
UPDATE sm_limit_slots SET expires_at=(now() + %(param_1)s) WHERE sm_limit_slots.holder IN (__[POSTCOMPILE_holder_1]);

-- name: request_cancel#1
SELECT sm_workflows.id, sm_workflows.machine, sm_workflows.state, sm_workflows.data, sm_workflows.status, sm_workflows.version, sm_workflows.entered_version, sm_workflows.attempt, sm_workflows.wake_at, sm_workflows.lease_token, sm_workflows.lease_owner, sm_workflows.key, sm_workflows.parent_id, sm_workflows.last_error, sm_workflows.created_at, sm_workflows.updated_at, sm_workflows.cancel_requested, sm_workflows.in_doubt, sm_workflows.polls, sm_workflows.purge_after 
FROM sm_workflows 
WHERE sm_workflows.id = %(id_1)s::UUID FOR UPDATE;

-- name: request_cancel#2
UPDATE sm_workflows SET state=%(p_state)s::VARCHAR, data=%(p_data)s::JSONB, status=%(p_status)s::VARCHAR, version=(sm_workflows.version + %(version_1)s::BIGINT), wake_at=%(wake_at)s::TIMESTAMP WITH TIME ZONE, lease_token=%(lease_token)s::VARCHAR, lease_owner=%(lease_owner)s::VARCHAR, last_error=%(p_last_error)s::VARCHAR, updated_at=now(), cancel_requested=%(cancel_requested)s::VARCHAR, purge_after=now() WHERE sm_workflows.id = %(p_id)s::UUID AND sm_workflows.version = %(p_version)s::BIGINT RETURNING sm_workflows.version, sm_workflows.cancel_requested;

-- name: request_cancel#3
INSERT INTO sm_history (workflow_id, version, kind, from_state, to_state, data, status, cause, attempt, error, worker, started_at, finished_at) VALUES (%(p_id)s::UUID, %(h_version)s::BIGINT, %(h_kind)s::VARCHAR, %(h_from)s::VARCHAR, %(p_state)s::VARCHAR, %(p_data)s::JSONB, %(h_status)s::VARCHAR, %(h_cause)s::VARCHAR, %(h_attempt)s::INTEGER, %(h_error)s::VARCHAR, %(h_worker)s::VARCHAR, %(h_started)s::TIMESTAMP WITH TIME ZONE, now());

-- name: request_cancel#4
UPDATE sm_events SET status=%(status)s::VARCHAR, noticed=%(noticed)s, error=%(error)s::VARCHAR, consumed_at=now() WHERE sm_events.workflow_id = %(workflow_id_1)s::UUID AND sm_events.status = %(status_1)s::VARCHAR;

-- name: request_cancel#5
UPDATE sm_workflows SET wake_at=CASE WHEN (sm_workflows.status = %(status_1)s::VARCHAR) THEN now() ELSE sm_workflows.wake_at END WHERE sm_workflows.id IN (__[POSTCOMPILE_id_1]);

-- name: request_cancel#6
UPDATE sm_workflows SET wake_at=CASE WHEN (sm_workflows.status IN (__[POSTCOMPILE_status_1])) THEN now() ELSE sm_workflows.wake_at END, cancel_requested=%(cancel_requested)s::VARCHAR WHERE sm_workflows.parent_id = %(parent_id_1)s::UUID AND sm_workflows.status IN (__[POSTCOMPILE_status_2]) AND sm_workflows.cancel_requested IS NULL;

-- name: request_cancel#7
UPDATE sm_workflows SET status=%(status)s::VARCHAR, wake_at=now(), cancel_requested=%(cancel_requested)s::VARCHAR WHERE sm_workflows.id = %(id_1)s::UUID;

-- name: run_schedule#1
SELECT now() AS now_1;

-- name: run_schedule#2
INSERT INTO sm_schedules (name, last_tick, updated_at) VALUES (%(name)s::VARCHAR, %(last_tick)s::TIMESTAMP WITH TIME ZONE, %(updated_at)s::TIMESTAMP WITH TIME ZONE) ON CONFLICT DO NOTHING;

-- name: run_schedule#3
SELECT sm_schedules.last_tick 
FROM sm_schedules 
WHERE sm_schedules.name = %(name_1)s::VARCHAR FOR UPDATE;

-- name: scan#1
SELECT sm_workflows.id, sm_workflows.machine, sm_workflows.state, sm_workflows.data, sm_workflows.status, sm_workflows.version, sm_workflows.entered_version, sm_workflows.attempt, sm_workflows.wake_at, sm_workflows.lease_token, sm_workflows.lease_owner, sm_workflows.key, sm_workflows.parent_id, sm_workflows.last_error, sm_workflows.created_at, sm_workflows.updated_at, sm_workflows.cancel_requested, sm_workflows.in_doubt, sm_workflows.polls, sm_workflows.purge_after 
FROM sm_workflows 
WHERE sm_workflows.machine IN (__[POSTCOMPILE_machine_1]) AND sm_workflows.status IN (__[POSTCOMPILE_status_1]) ORDER BY sm_workflows.id 
 LIMIT %(param_1)s::INTEGER;

-- name: schedule_ticks#1
SELECT sm_schedules.name, sm_schedules.last_tick 
FROM sm_schedules;

-- name: settle_waiting#1
SELECT sm_workflows.id 
FROM sm_workflows 
WHERE sm_workflows.id = %(id_1)s::UUID AND sm_workflows.version = %(version_1)s::BIGINT AND sm_workflows.lease_token = %(lease_token_1)s::VARCHAR FOR UPDATE;

-- name: settle_waiting#2
SELECT sm_events.id 
FROM sm_events 
WHERE sm_events.workflow_id = %(workflow_id_1)s::UUID AND sm_events.status = %(status_1)s::VARCHAR AND sm_events.type IN (__[POSTCOMPILE_type_1]) 
 LIMIT %(param_1)s::INTEGER;

-- name: take_start#1
INSERT INTO sm_limit_windows (key, recent, updated_at) VALUES (%(key)s::VARCHAR, %(recent)s::JSONB, now()) ON CONFLICT DO NOTHING;

-- name: take_start#2
SELECT sm_limit_windows.recent 
FROM sm_limit_windows 
WHERE sm_limit_windows.key = %(key_1)s::VARCHAR FOR UPDATE;

-- name: take_start#3
SELECT clock_timestamp() AS clock_timestamp_1;
