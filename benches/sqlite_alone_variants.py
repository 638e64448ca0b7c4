#!/usr/bin/env python3
"""Where SQLite's time goes when it takes intake's writes (see BENCHMARKS.md).

The bench's "SQLite alone" figure measures the store with everything intake writes. This
script repeats that measurement on a copy of a kept store and then leaves one thing out at a
time, to show which part costs what. Usage:

    target/release/callkeeper-bench --scenario backlog --n 100000 --keep
    python3 benches/sqlite_alone_variants.py /tmp/callkeeper-bench-<run>-backlog/callkeeper.db

Per callback it writes one `callbacks` row (all indexes), one `inbound_events` key with a
random event id (one variant makes them time-ordered) and one 540-byte outbox event, 1024 callbacks per transaction, with WAL,
synchronous=FULL and the worker's 64 MiB page cache. One INSERT ... SELECT per table and
transaction, so no client cost is in the figures.
"""
import shutil
import sqlite3
import sys
import tempfile
import time

BATCH = 1024
ROWS = 100_000
# Indexes no write needs, only reads (listing, reports, erasure).
READ_ONLY_INDEXES = [
    "callbacks_queue_id", "callbacks_state_id", "callbacks_queue_state_id",
    "callbacks_requested_at", "callbacks_queue_requested_at", "callbacks_phone",
]
VARIANTS = {
    "everything intake writes": {},
    "synchronous=OFF (no fsync)": {"sync": "OFF"},
    "without the six read-only indexes": {"drop": READ_ONLY_INDEXES},
    "time-ordered event ids (UUIDv7-like)": {"ordered_ids": True},
    "without the outbox event": {"skip": ["outbox"]},
    "callbacks rows only": {"skip": ["outbox", "inbound"]},
}


def run(source, variant):
    with tempfile.TemporaryDirectory() as scratch:
        path = f"{scratch}/store.db"
        shutil.copy(source, path)
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={variant.get('sync', 'FULL')}")
        db.execute("PRAGMA cache_size=-65536")
        for index in variant.get("drop", []):
            db.execute(f"DROP INDEX {index}")
        seeds = db.execute("SELECT count(*) FROM callbacks").fetchone()[0]
        columns = [row[1] for row in db.execute("PRAGMA table_info(callbacks)")]
        select = ", ".join(
            {"id": "printf('%s-f%d', id, :k)",
             "phone": f"printf('+317%09d', rowid + :k * {seeds})"}.get(c, f'"{c}"')
            for c in columns)
        statements = {
            "callbacks": f"INSERT INTO callbacks ({', '.join(columns)}) SELECT {select} "
                         "FROM callbacks WHERE rowid BETWEEN :a AND :b",
            "inbound": "INSERT INTO inbound_events SELECT 'bench', "
                       + ("printf('%012d-%08d', :k, rowid)" if variant.get("ordered_ids")
                          else "lower(hex(randomblob(16)))")
                       + ", lower(hex(randomblob(32))), requested_at "
                       "FROM callbacks WHERE rowid BETWEEN :a AND :b AND :k = :k",
            "outbox": "INSERT INTO event_outbox (id, callback_id, type, body, created_at) "
                      "SELECT lower(hex(randomblob(16))), id, 'callkeeper.callback.requested', "
                      "printf('%.540c', 'x'), requested_at "
                      "FROM callbacks WHERE rowid BETWEEN :a AND :b AND :k = :k",
        }
        for skipped in variant.get("skip", []):
            del statements[skipped]
        started = time.monotonic()
        done, k = 0, 1
        while done < ROWS:
            a = done % seeds + 1
            b = min(a + BATCH - 1, seeds)
            db.execute("BEGIN IMMEDIATE")
            for statement in statements.values():
                db.execute(statement, {"k": k, "a": a, "b": b})
            db.execute("COMMIT")
            done += b - a + 1
            k += 1
        took = time.monotonic() - started
        db.close()
        return ROWS / took


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for name, variant in VARIANTS.items():
        print(f"{name:38} {run(sys.argv[1], variant):>9,.0f} callbacks/s", flush=True)


if __name__ == "__main__":
    main()
