//! One shard of the in-process tier: a hash table that does not double under
//! churn.
//!
//! `std`'s table (hashbrown) marks a removed slot as a tombstone, and an
//! insert into a table whose free slots have all become tombstones rebuilds
//! it: in place when at most half of its capacity is live, else at twice the
//! size. A verdict cache removes as much as it inserts (expiry, eviction), so
//! a shard more than half full doubled a while after it filled, with no more
//! entries than before: 100000 cached identities grew the soak's RSS by a
//! third after its first minute. Here the shard rebuilds itself at the same
//! size instead whenever at least an eighth of its capacity would be free,
//! and grows only when the live entries need it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::{CacheKey, Entry};

/// Hashes a digest key by its first eight bytes: it is already uniformly random.
#[derive(Default)]
pub(super) struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*b) << (8 * i);
        }
    }
    fn write_usize(&mut self, _: usize) {}
}

pub(super) type DigestMap<V> = HashMap<CacheKey, V, BuildHasherDefault<DigestHasher>>;

#[derive(Default)]
pub(super) struct Shard {
    map: DigestMap<Entry>,
    /// The table's capacity with no tombstones: what `capacity()` (live
    /// entries plus free slots) said right after it was last built.
    built: usize,
}

impl Shard {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn get(&self, key: &CacheKey) -> Option<&Entry> {
        self.map.get(key)
    }

    pub fn remove(&mut self, key: &CacheKey) -> Option<Entry> {
        self.map.remove(key)
    }

    /// Inserts or replaces; `true` when `key` is new.
    pub fn insert(&mut self, key: CacheKey, entry: Entry) -> bool {
        if self.map.len() == self.map.capacity() && !self.map.contains_key(&key) {
            self.make_room();
        }
        let new = self.map.insert(key, entry).is_none();
        self.built = self.built.max(self.map.capacity());
        new
    }

    /// Called when no free slot is left: the table is full of live entries
    /// and tombstones. Rebuilt at its size (dropping the tombstones) when
    /// that leaves an eighth of it free, so a rebuild comes at most once per
    /// `built / 8` inserts; otherwise left to grow.
    fn make_room(&mut self) {
        let live = self.map.len();
        if self.built > live && live <= self.built - self.built / 8 {
            let mut rebuilt = DigestMap::with_capacity_and_hasher(self.built, Default::default());
            rebuilt.extend(self.map.drain());
            self.map = rebuilt;
            self.built = self.map.capacity();
        }
    }

    /// Any entry's key (the first occupied slot: constant expected time).
    pub fn any_key(&self) -> Option<CacheKey> {
        self.map.keys().next().copied()
    }

    pub fn retain(&mut self, keep: impl FnMut(&CacheKey, &mut Entry) -> bool) {
        self.map.retain(keep);
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Live entries plus free slots (tombstones are neither).
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.map.capacity()
    }
}
