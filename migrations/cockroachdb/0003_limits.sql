-- statemachine schema, version 0003: rate limits (concurrency slots and a sliding window per key).
-- The same as postgresql/0003 (see 0001).
CREATE TABLE IF NOT EXISTS sm_limit_slots (
    key        TEXT        NOT NULL,
    slot       INTEGER     NOT NULL,
    holder     UUID        NULL,
    expires_at TIMESTAMPTZ NULL,
    CONSTRAINT sm_limit_slots_pkey PRIMARY KEY (key, slot)
);

-- `recent`: the start times (epoch seconds) granted within the last window, oldest first.
CREATE TABLE IF NOT EXISTS sm_limit_windows (
    key        TEXT        NOT NULL PRIMARY KEY,
    recent     JSONB       NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
