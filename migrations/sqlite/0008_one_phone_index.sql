-- One index keyed by phone number instead of two, and one that firing leaves alone. Callers'
-- numbers arrive in no order, so an index on them puts each callback on a random page, and
-- every write of that index entry dirties (and fsyncs) a page of its own
-- (benches/sqlite_alone_variants.py, BENCHMARKS.md):
-- - intake wrote two such entries per new callback: the unique index of open callbacks and the
--   erasure index;
-- - the unique one was partial on `state`, and SQLite rewrites an index entry whenever an
--   UPDATE sets a column its key or WHERE reads, so every step of every callback (due,
--   claimed, retried) rewrote its entry too: a burst of 10,000 due callbacks could dirty up to
--   10,000 random pages.
--
-- The new index keeps the rule of callbacks_one_open: at most one open callback per phone and
-- queue. Its last column is 1 while the callback is open and NULL once it is closed, and SQLite
-- counts NULLs as distinct in a unique index, so closed callbacks never collide. It tells open
-- from closed by `closed_at`, which is set when, and only when, a callback closes (it never
-- opens again), and which the store's updates of open callbacks do not set. Every callback
-- being in it, it also serves erasure, which callbacks_phone was for.
CREATE UNIQUE INDEX callbacks_phone_queue_open ON callbacks (
    phone, queue, (CASE WHEN closed_at IS NULL THEN 1 END)
);
DROP INDEX callbacks_one_open;
DROP INDEX callbacks_phone;
