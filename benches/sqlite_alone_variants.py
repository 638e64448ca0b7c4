#!/usr/bin/env python3
"""Where SQLite's time goes when it takes intake's writes (see BENCHMARKS.md).

The bench's "SQLite alone" figure measures the store with everything intake writes. This
script repeats that measurement on copies of a kept store and then changes one thing at a
time, to show which part costs what. Usage:

    target/release/callkeeper-bench --scenario backlog --n 100000 --keep
    python3 benches/sqlite_alone_variants.py /tmp/callkeeper-bench-<run>-backlog/callkeeper.db

Per callback it writes what the bench's SQLite alone writes (`StoreFloor` in
src/bin/callkeeper-bench.rs): one `callbacks` row with all its indexes and a phone number
scattered as callers' are, one `inbound_events` key with a random event id (and a random
integer for its hash, where the schema stores one) and one 540-byte outbox event, 1024
callbacks per transaction, with WAL, synchronous=FULL and the worker's 64 MiB page cache. One INSERT ... SELECT per table and transaction, so no client
cost is in the figures. The indexes and columns are read from the store, so the variants
follow the schema. Each variant runs on a fresh copy `--repeat` times; the median counts.
"""
import argparse
import shutil
import sqlite3
import statistics
import tempfile
import time

BATCH = 1024
# 3**18 shares no factor with 10**9, so multiplying by it modulo 10**9 is a bijection: every
# row gets its own number, scattered over the index as callers' numbers are (as in the bench;
# the prefix keeps them apart from the bench's own rows).
SCATTER = 387_420_489
SCATTERED_PHONE = f"printf('+318%09d', (rowid + :off) * {SCATTER} % 1000000000)"
SEQUENTIAL_PHONE = "printf('+318%09d', rowid + :off)"
PHONE_INDEXES = ["callbacks_one_open", "callbacks_phone", "callbacks_phone_queue_open"]
# On a store from before migration 0008, its change: both phone-keyed indexes as one, the
# unique key of open callbacks whose NULL for closed ones never collides.
ONE_PHONE_INDEX = [
    "CREATE UNIQUE INDEX callbacks_phone_queue_open ON callbacks (phone, queue, "
    "(CASE WHEN state IN ('scheduled', 'due', 'claimed') THEN 1 END))",
    "DROP INDEX callbacks_one_open",
    "DROP INDEX callbacks_phone",
]


def variants(indexes):
    """(name, settings) in report order; the first is the bench's own SQLite alone."""
    yield "everything intake writes (the bench's SQLite alone)", {}
    yield "callers' numbers in order (as the bench had them until 12-03)", {
        "phone": SEQUENTIAL_PHONE}
    yield "synchronous=OFF (no fsync)", {"sync": "OFF"}
    yield "without the outbox event", {"skip": ["outbox"]}
    yield "without the idempotency key", {"skip": ["inbound"]}
    yield "callbacks rows only", {"skip": ["outbox", "inbound"]}
    if "callbacks_one_open" in indexes and "callbacks_phone" in indexes:
        yield "one index on phone numbers instead of two (migration 0008)", {
            "ddl": ONE_PHONE_INDEX}
    yield "without the indexes on phone numbers", {
        "drop": [i for i in indexes if i in PHONE_INDEXES]}
    yield "callbacks rows without any of their indexes", {
        "skip": ["outbox", "inbound"], "drop": indexes}
    for index in indexes:
        yield f"without index {index}", {"drop": [index]}


def statements(db, settings):
    columns = [row[1] for row in db.execute("PRAGMA table_info(callbacks)")]
    select = ", ".join(
        {"id": "printf('%s-f%d', id, :first)",
         "phone": settings.get("phone", SCATTERED_PHONE)}.get(c, f'"{c}"')
        for c in columns)
    quoted = ", ".join(f'"{c}"' for c in columns)
    hashed = any(row[1] == "key_hash" for row in db.execute("PRAGMA table_info(inbound_events)"))
    hash_column, hash_value = (", key_hash", ", random()") if hashed else ("", "")
    all_statements = {
        "callbacks": f"INSERT INTO callbacks ({quoted}) SELECT {select} "
                     "FROM callbacks WHERE rowid BETWEEN :a AND :b",
        "inbound": f"INSERT INTO inbound_events (source, id, fingerprint, applied_at{hash_column}) "
                   "SELECT 'bench', lower(hex(randomblob(16))), lower(hex(randomblob(32))), "
                   f"requested_at{hash_value} FROM callbacks WHERE rowid BETWEEN :a AND :b",
        "outbox": "INSERT INTO event_outbox (id, callback_id, type, body, created_at) "
                  "SELECT lower(hex(randomblob(16))), id, 'callkeeper.callback.requested', "
                  "printf('%.540c', 'x'), requested_at "
                  "FROM callbacks WHERE rowid BETWEEN :a AND :b",
    }
    return [s for name, s in all_statements.items() if name not in settings.get("skip", [])]


def run(source, settings, rows):
    """Callbacks per second written into a fresh copy of `source`."""
    with tempfile.TemporaryDirectory() as scratch:
        path = f"{scratch}/store.db"
        shutil.copy(source, path)
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={settings.get('sync', 'FULL')}")
        db.execute("PRAGMA cache_size=-65536")
        for index in settings.get("drop", []):
            db.execute(f'DROP INDEX "{index}"')
        for statement in settings.get("ddl", []):
            db.execute(statement)
        seeds = db.execute("SELECT count(*) FROM callbacks").fetchone()[0]
        work = statements(db, settings)
        started = time.monotonic()
        written = 0
        while written < rows:
            db.execute("BEGIN IMMEDIATE")
            left = min(BATCH, rows - written)
            while left > 0:
                a = written % seeds + 1
                b = min(a + left - 1, seeds)
                # The copies' row number: it tags their ids and makes their phone numbers, so
                # neither repeats (as in the bench).
                first = seeds + written + 1
                for statement in work:
                    db.execute(statement, {"first": first, "a": a, "b": b, "off": first - a})
                written += b - a + 1
                left -= b - a + 1
            db.execute("COMMIT")
        took = time.monotonic() - started
        db.close()
        return rows / took


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", help="a callkeeper SQLite store kept by the bench")
    parser.add_argument("--rows", type=int, default=100_000, help="callbacks per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per variant")
    parser.add_argument("--only", default="", help="only the variants whose name has this text "
                        "(the first, the ratios' base, always runs)")
    args = parser.parse_args()
    with sqlite3.connect(args.store) as db:
        indexes = [name for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'callbacks' "
            "AND sql IS NOT NULL ORDER BY name")]
    baseline = None
    print(f"| variant ({args.rows:,} callbacks, {BATCH} per transaction, median of "
          f"{args.repeat}) | callbacks/s | vs the first |")
    print("|---|---|---|")
    for name, settings in variants(indexes):
        if baseline and args.only not in name:
            continue
        rate = statistics.median(run(args.store, settings, args.rows) for _ in range(args.repeat))
        baseline = baseline or rate
        print(f"| {name} | {rate:,.0f} | {rate / baseline:.2f} |", flush=True)


if __name__ == "__main__":
    main()
