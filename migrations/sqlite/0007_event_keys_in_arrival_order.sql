-- Idempotency keys in arrival order. Event ids are random (IVRs send UUIDv4), so the primary
-- key on (source, id) put each new key on a random page: intake wrote and fsynced about one
-- page per event. Rows now append by `seq`. The worker keeps a map from `key_hash` (the first
-- 8 bytes of a SHA-256 of the key, src/store/event_keys.rs) to `seq` in memory, loaded at
-- start. The rows copied here keep a NULL hash; the worker hashes them as it loads them.
CREATE TABLE inbound_events_by_seq (
    seq         INTEGER PRIMARY KEY,
    key_hash    INTEGER,
    source      TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    applied_at  INTEGER NOT NULL
);
INSERT INTO inbound_events_by_seq (source, id, fingerprint, applied_at)
    SELECT source, id, fingerprint, applied_at FROM inbound_events ORDER BY applied_at;
DROP TABLE inbound_events;
ALTER TABLE inbound_events_by_seq RENAME TO inbound_events;
-- Retention: keys by age. It appends too: applied_at grows with seq.
CREATE INDEX inbound_events_applied_at ON inbound_events (applied_at);
-- The rows copied above, read on their own at start until retention removes them.
CREATE INDEX inbound_events_unhashed ON inbound_events (seq) WHERE key_hash IS NULL;
