//! The internal pieces the criterion benchmarks (`benches/hot_path.rs`) measure
//! one by one. Not an API: nothing here is stable, and it is hidden from the docs.

pub use crate::auth::{AuthMethod, Identity, Verdict};
pub use crate::cache::{CredentialKind, VerdictCache, cache_key};
pub use crate::headers::{IdentityHeaderNames, percent_encoded, strip_for_upstream, strip_identity};
pub use crate::routes::{Route, RouteAuth, RouteTable, normalize_path};

/// A verdict cache with the default TTLs, on the real clock.
pub fn verdict_cache(max_entries: u64) -> VerdictCache {
    let keys = crate::config::CacheSection { max_entries: max_entries.into(), ..Default::default() };
    let config = crate::config::CacheConfig { keys, shared: None };
    let names = IdentityHeaderNames::new("X-Line-").expect("the default prefix is valid");
    VerdictCache::new(&config, names, None, crate::Clock::system())
}
