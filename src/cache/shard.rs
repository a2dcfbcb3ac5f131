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
//! size instead whenever at least an eighth of its capacity would be free.
//! It grows when the live entries need more, but not past the size that holds
//! its share of `cache.max_entries` with an eighth free: there it drops
//! arbitrary entries instead (see [`Shard::make_room`]).

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

pub(super) struct Shard {
    map: DigestMap<Entry>,
    /// The table's capacity with no tombstones: what `capacity()` (live
    /// entries plus free slots) said right after it was last built.
    built: usize,
    /// This shard's part of `cache.max_entries` (rounded up): once its table
    /// holds that many with an eighth free, it no longer grows.
    share: usize,
}

/// What an insert did.
pub(super) struct Inserted {
    /// The key was not there before.
    pub new: bool,
    /// Entries dropped to make room in a table already as large as the
    /// shard's share needs.
    pub evicted: usize,
}

impl Shard {
    pub fn new(share: usize) -> Self {
        Self { map: DigestMap::default(), built: 0, share }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn get(&self, key: &CacheKey) -> Option<&Entry> {
        self.map.get(key)
    }

    pub fn remove(&mut self, key: &CacheKey) -> Option<Entry> {
        self.map.remove(key)
    }

    /// Inserts or replaces.
    pub fn insert(&mut self, key: CacheKey, entry: Entry) -> Inserted {
        let mut evicted = 0;
        // Also when `key` is there: hashbrown reserves a slot before looking,
        // so replacing into a table with no free slot would grow it too.
        if self.map.len() == self.map.capacity() {
            evicted = self.make_room();
        }
        let new = self.map.insert(key, entry).is_none();
        self.built = self.built.max(self.map.capacity());
        Inserted { new, evicted }
    }

    /// Called when no free slot is left: the table is full of live entries
    /// and tombstones. Rebuilt at its size (dropping the tombstones) when
    /// that leaves an eighth of it free, so a rebuild comes at most once per
    /// `built / 8` inserts. Otherwise the table grows, unless it already holds
    /// the shard's share with an eighth free: then arbitrary entries go until
    /// an eighth is free, and it is rebuilt at its size. Without that, a cache
    /// kept full (100000 entries over 16 shards is 6250 a shard, against
    /// 6272 for a table of 8192 slots) doubled one shard after another as
    /// each one's count drifted past the line. Returns the entries dropped.
    fn make_room(&mut self) -> usize {
        let live = self.map.len();
        let room = (self.built / 8).max(1);
        let fits = self.built.saturating_sub(room);
        let mut evicted = 0;
        if live > fits && fits >= self.share {
            while self.map.len() > fits {
                let Some(victim) = self.any_key() else { break };
                self.map.remove(&victim);
                evicted += 1;
            }
        }
        if self.built > 0 && self.map.len() <= fits {
            let mut rebuilt = DigestMap::with_capacity_and_hasher(self.built, Default::default());
            rebuilt.extend(self.map.drain());
            self.map = rebuilt;
            self.built = self.map.capacity();
        }
        evicted
    }

    /// Any entry's key (the first occupied slot: constant expected time).
    pub fn any_key(&self) -> Option<CacheKey> {
        self.map.keys().next().copied()
    }

    /// Drops the entries dead at `now` (milliseconds on the cache's clock);
    /// how many it dropped.
    pub fn drop_expired(&mut self, now: u64) -> usize {
        let before = self.map.len();
        self.map.retain(|_, e| e.until > now);
        before - self.map.len()
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
