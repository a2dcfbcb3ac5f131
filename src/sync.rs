//! Synchronisation helpers: locks that one panic cannot break for good, and
//! waiting on a shutdown flag.
//!
//! A `std` lock is poisoned when a thread panics while holding it, and
//! `.lock().expect(..)` then panics every later caller too: one bug would become
//! a permanent failure of whatever the lock guards. Everything the proxy guards
//! with a lock is replaced whole (a key set, a timestamp, a map entry), so the
//! data behind a poisoned lock is still consistent and is used as it is; the
//! verdict cache goes further and empties a poisoned shard (`cache/mod.rs`).

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::watch;

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

pub fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Resolves once `flag` holds true (the borrow guard never lives across an
/// await): the stop and force-close signals of listeners, connections, tunnels.
pub async fn until_set(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}
