-- Deliveries that belong to no callback: the daily `sla.digest` is about a queue's day, not a
-- callback, so `deliveries.callback_id` becomes nullable. SQLite cannot drop NOT NULL from a
-- column: the table is rebuilt (create, copy, drop, rename) and every index on it recreated.
-- Nothing references `deliveries`, so dropping it breaks no foreign key.

CREATE TABLE deliveries_new (
    id           TEXT    PRIMARY KEY NOT NULL,   -- webhook-id, msg_<uuid>
    callback_id  TEXT    REFERENCES callbacks (id),   -- NULL for an SLA digest
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

INSERT INTO deliveries_new (id, callback_id, queue, notice, url, body, state, tries, next_try_at,
                            last_status, last_error, created_at, delivered_at)
SELECT id, callback_id, queue, notice, url, body, state, tries, next_try_at,
       last_status, last_error, created_at, delivered_at
FROM deliveries;

DROP TABLE deliveries;
ALTER TABLE deliveries_new RENAME TO deliveries;

-- The indexes of 0001, unchanged (0002-0004 added none on deliveries).
-- The notifier's view: pending deliveries by time (id breaks ties).
CREATE INDEX deliveries_state_next_try_at ON deliveries (state, next_try_at, id);
-- list_deliveries by state, newest (highest msg_<uuid> id) first.
CREATE INDEX deliveries_state_id ON deliveries (state, id);
-- 410 Gone holds every pending delivery to that URL.
CREATE INDEX deliveries_pending_url ON deliveries (url) WHERE state = 'pending';
-- Also finds the digests (callback_id IS NULL) for retention: one per queue and day, few enough
-- to filter by age.
CREATE INDEX deliveries_callback_id ON deliveries (callback_id);
