-- callkeeper schema for SQLite.
-- Times are INTEGER unix milliseconds (compact, sortable, index-friendly); ids are text, and
-- UUIDv7 text sorts by creation time, which keyset paging relies on.

CREATE TABLE callbacks (
    id                TEXT    PRIMARY KEY NOT NULL,
    queue             TEXT    NOT NULL,
    phone             TEXT    NOT NULL,
    priority          TEXT    NOT NULL,
    state             TEXT    NOT NULL,
    sla               TEXT    NOT NULL,
    customer          TEXT,              -- JSON object
    agent_id          TEXT,
    context           TEXT,              -- JSON, handed to the agent verbatim
    call_info         TEXT,              -- JSON object
    window_not_before INTEGER,
    window_not_after  INTEGER,
    requested_at      INTEGER NOT NULL,
    due_at            INTEGER NOT NULL,
    deadline          INTEGER NOT NULL,
    requests          INTEGER NOT NULL,
    attempts          INTEGER NOT NULL,
    max_attempts      INTEGER NOT NULL,
    claimed_by        TEXT,
    claimed_at        INTEGER,
    first_attempt_at  INTEGER,
    last_outcome      TEXT,
    at_risk_notified  INTEGER NOT NULL,
    cancel_reason     TEXT,
    closed_at         INTEGER,
    updated_at        INTEGER NOT NULL,
    -- When the timer must next look at it; NULL once nothing time-driven is left (always NULL
    -- for closed callbacks), so the partial index below holds only live work.
    next_fire_at      INTEGER
);

-- The timer's view: earliest fire time first (covering, with id as the tie-breaker).
CREATE INDEX callbacks_next_fire_at ON callbacks (next_fire_at, id) WHERE next_fire_at IS NOT NULL;

-- At most one open callback per phone and queue: duplicates merge into it. Also serves the
-- merge lookup and cancel-by-phone / opt-out (phone is the leading column).
CREATE UNIQUE INDEX callbacks_one_open ON callbacks (phone, queue)
    WHERE state IN ('scheduled', 'due', 'claimed');

-- GET /v1/callbacks keyset paging by id, with or without queue/state filters.
CREATE INDEX callbacks_queue_state_id ON callbacks (queue, state, id);
CREATE INDEX callbacks_queue_id ON callbacks (queue, id);
CREATE INDEX callbacks_state_id ON callbacks (state, id);

-- Idempotency keys of applied inbound events (CloudEvents source + id).
CREATE TABLE inbound_events (
    source      TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    applied_at  INTEGER NOT NULL,
    PRIMARY KEY (source, id)
) WITHOUT ROWID;

CREATE TABLE attempts (
    callback_id TEXT    NOT NULL REFERENCES callbacks (id),
    number      INTEGER NOT NULL,   -- 1-based
    agent_id    TEXT    NOT NULL,
    outcome     TEXT    NOT NULL,
    note        TEXT,
    at          INTEGER NOT NULL,
    PRIMARY KEY (callback_id, number)
) WITHOUT ROWID;

-- Webhook outbox: one row per notification per endpoint, body fixed at creation.
CREATE TABLE deliveries (
    id           TEXT    PRIMARY KEY NOT NULL,   -- webhook-id, msg_<uuidv7>
    callback_id  TEXT    NOT NULL REFERENCES callbacks (id),
    queue        TEXT    NOT NULL,
    notice       TEXT    NOT NULL,
    url          TEXT    NOT NULL,
    body         TEXT    NOT NULL,
    state        TEXT    NOT NULL,
    tries        INTEGER NOT NULL,
    next_try_at  INTEGER NOT NULL,
    last_status  INTEGER,
    last_error   TEXT,
    created_at   INTEGER NOT NULL,
    delivered_at INTEGER
);

-- The notifier's view: pending deliveries by time (id breaks ties).
CREATE INDEX deliveries_state_next_try_at ON deliveries (state, next_try_at, id);
-- list_deliveries by state, newest (highest msg_<uuidv7> id) first.
CREATE INDEX deliveries_state_id ON deliveries (state, id);
-- 410 Gone holds every pending delivery to that URL.
CREATE INDEX deliveries_pending_url ON deliveries (url) WHERE state = 'pending';
CREATE INDEX deliveries_callback_id ON deliveries (callback_id);

-- Endpoints that answered 410 Gone; new deliveries to them are held until a replay.
CREATE TABLE endpoints (
    url         TEXT PRIMARY KEY NOT NULL,
    disabled_at INTEGER
) WITHOUT ROWID;

-- Numbers that opted out of contact, refused until `until`.
CREATE TABLE opt_outs (
    phone TEXT    PRIMARY KEY NOT NULL,
    until INTEGER NOT NULL
) WITHOUT ROWID;
