-- One index keyed by phone number instead of two. Callers' numbers arrive in no order, so each
-- index on them puts every new callback on a random page, and intake writes (and fsyncs) about
-- one page per callback and index: with scattered numbers, SQLite took intake's writes 44 %
-- slower than with sequential ones, and one index instead of two won back about a fifth
-- (benches/sqlite_alone_variants.py, BENCHMARKS.md).
--
-- The new index keeps the rule of callbacks_one_open: at most one open callback per phone and
-- queue. Its last column is 1 for an open callback and NULL for a closed one, and SQLite counts
-- NULLs as distinct in a unique index, so closed callbacks never collide. Every callback being
-- in it, it also serves erasure, which callbacks_phone was for.
CREATE UNIQUE INDEX callbacks_phone_queue_open ON callbacks (
    phone, queue, (CASE WHEN state IN ('scheduled', 'due', 'claimed') THEN 1 END)
);
DROP INDEX callbacks_one_open;
DROP INDEX callbacks_phone;
