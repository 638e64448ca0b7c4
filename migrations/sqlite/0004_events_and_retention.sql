-- Lifecycle events out, retention and erasure.

-- Outbox of lifecycle events (CloudEvents), written in the same transaction as the change they
-- describe and deleted once the broker confirmed them. `seq` is the publish order;
-- AUTOINCREMENT so a number is never reused, even after the table was emptied.
CREATE TABLE event_outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT    NOT NULL,   -- CloudEvents id
    callback_id TEXT    NOT NULL,
    type        TEXT    NOT NULL,   -- also the routing key
    body        TEXT    NOT NULL,   -- the exact JSON published
    created_at  INTEGER NOT NULL
);
-- Purge and erasure remove a callback's events with it.
CREATE INDEX event_outbox_callback_id ON event_outbox (callback_id);

-- Retention: closed callbacks by when they closed (only closed ones have closed_at).
CREATE INDEX callbacks_closed_at ON callbacks (closed_at, id) WHERE closed_at IS NOT NULL;
-- Retention: idempotency keys by age.
CREATE INDEX inbound_events_applied_at ON inbound_events (applied_at);
-- Erasure: every callback of a number, open or closed (callbacks_one_open holds open ones only).
CREATE INDEX callbacks_phone ON callbacks (phone);
