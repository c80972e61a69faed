-- statemachine schema, version 0003: rate limits (concurrency slots and a sliding window per key).
CREATE TABLE IF NOT EXISTS sm_limit_slots (
    key        TEXT        NOT NULL,
    slot       INTEGER     NOT NULL,
    holder     VARCHAR(36) NULL,
    expires_at DATETIME    NULL,
    CONSTRAINT sm_limit_slots_pkey PRIMARY KEY (key, slot)
);

-- `recent`: the start times (epoch seconds) granted within the last window, oldest first.
CREATE TABLE IF NOT EXISTS sm_limit_windows (
    key        TEXT        NOT NULL PRIMARY KEY,
    recent     JSON        NOT NULL,
    updated_at DATETIME    NOT NULL
);
