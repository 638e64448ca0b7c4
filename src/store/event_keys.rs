//! Where each idempotency key lives in `inbound_events`, kept in memory.
//!
//! IVRs send random event ids (UUIDv4). Indexed in the database, each new key landed on a
//! random page of the index, so a batch of intake wrote and fsynced about one page per event
//! (BENCHMARKS.md, "Backlog drain"). The table is now appended in arrival order (`seq`), each
//! row with a hash of its key, and this map from hash to `seq` says which rows to read back.
//!
//! The rows read back are the truth: the map may hold more than the table (a batch that failed
//! to commit, a purge whose removal was missed), never less, because keys are added before
//! their transaction commits. A stale entry costs one read by `seq`, nothing else. It only
//! holds while one process writes the store, which the deployment requires anyway.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use sha2::{Digest as _, Sha256};

/// The stored hash of a key: the first 8 bytes of its SHA-256, stable across releases so a
/// restart reads hashes instead of computing them. Two keys may share one; the rows decide.
pub fn key_hash(source: &str, id: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update((source.len() as u64).to_le_bytes())
        .chain_update(source)
        .chain_update(id)
        .finalize();
    i64::from_le_bytes(digest[..8].try_into().expect("SHA-256 has 32 bytes"))
}

#[derive(Debug, Default)]
pub struct EventKeys {
    /// Key hash → `seq` of the row holding it.
    rows: HashMap<i64, i64>,
    /// Further rows under a hash already in `rows`: two keys sharing 64 bits, or a stale entry.
    more: HashMap<i64, Vec<i64>>,
    /// The `seq` the next key gets: numbers are never handed out twice by this process.
    next_seq: i64,
}

impl EventKeys {
    /// An empty map with room for `capacity` keys, whose first new key gets `next_seq`.
    pub fn new(capacity: usize, next_seq: i64) -> Self {
        Self {
            rows: HashMap::with_capacity(capacity),
            next_seq,
            ..Self::default()
        }
    }

    /// The rows that may hold the key with this hash.
    pub fn candidates(&self, hash: i64) -> impl Iterator<Item = i64> + '_ {
        let first = self.rows.get(&hash).copied();
        let more = self.more.get(&hash).into_iter().flatten().copied();
        first.into_iter().chain(more)
    }

    /// Hands out `n` consecutive row numbers and returns the first.
    pub fn reserve(&mut self, n: usize) -> i64 {
        let first = self.next_seq;
        self.next_seq += n as i64;
        first
    }

    pub fn insert(&mut self, hash: i64, seq: i64) {
        match self.rows.entry(hash) {
            Entry::Vacant(slot) => {
                slot.insert(seq);
            }
            Entry::Occupied(_) => self.more.entry(hash).or_default().push(seq),
        }
    }

    pub fn remove(&mut self, hash: i64, seq: i64) {
        let more = self.more.get_mut(&hash);
        if self.rows.get(&hash) == Some(&seq) {
            // Another row under the hash takes the place in `rows`, so none is ever lost.
            match more.and_then(Vec::pop) {
                Some(next) => self.rows.insert(hash, next),
                None => self.rows.remove(&hash),
            };
        } else if let Some(more) = more {
            more.retain(|&s| s != seq);
        }
        if self.more.get(&hash).is_some_and(Vec::is_empty) {
            self.more.remove(&hash);
        }
    }

    /// Number of rows the map points to.
    pub fn len(&self) -> usize {
        self.rows.len() + self.more.values().map(Vec::len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(keys: &EventKeys, hash: i64) -> Vec<i64> {
        let mut seqs: Vec<i64> = keys.candidates(hash).collect();
        seqs.sort_unstable();
        seqs
    }

    #[test]
    fn finds_every_row_under_a_shared_hash_and_forgets_removed_ones() {
        let mut keys = EventKeys::new(0, 1);
        assert_eq!(keys.reserve(3), 1);
        assert_eq!(keys.reserve(2), 4, "numbers are never handed out twice");
        // Three rows under one hash: a collision, or a stale entry beside a live one.
        for seq in [1, 2, 3] {
            keys.insert(7, seq);
        }
        keys.insert(8, 4);
        assert_eq!(sorted(&keys, 7), [1, 2, 3]);
        assert_eq!(keys.len(), 4);

        keys.remove(7, 1); // the one in `rows`: another takes its place
        assert_eq!(sorted(&keys, 7), [2, 3]);
        keys.remove(7, 3);
        keys.remove(7, 9); // not there: nothing changes
        assert_eq!(sorted(&keys, 7), [2]);
        keys.remove(7, 2);
        assert!(sorted(&keys, 7).is_empty());
        assert!(keys.more.is_empty() && keys.rows.len() == 1);
        assert_eq!(sorted(&keys, 8), [4]);
    }

    #[test]
    fn the_hash_is_stable_and_tells_keys_apart_by_both_parts() {
        assert_ne!(key_hash("ivr", "a-1"), key_hash("ivr-a", "-1"));
        // Stored in the database: a release that hashed differently would lose every key.
        // The value, from Python: sha256(pack('<Q', 9) + b'/ivr/test' + b'e-1'), first 8
        // bytes as a little-endian i64.
        assert_eq!(key_hash("/ivr/test", "e-1"), -277_694_014_171_759_830);
    }
}
