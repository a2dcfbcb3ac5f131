use super::*;
use crate::auth::{AuthMethod, Identity};

fn cache(max_entries: u64, clock: &Clock) -> VerdictCache {
    let keys = crate::config::CacheSection {
        max_entries: max_entries.into(),
        negative_ttl_seconds: 1.into(),
        ..Default::default()
    };
    cache_with(keys, clock)
}

fn cache_with(keys: crate::config::CacheSection, clock: &Clock) -> VerdictCache {
    let config = CacheConfig { keys, shared: None };
    VerdictCache::new(&config, IdentityHeaderNames::new("X-Line-").unwrap(), None, clock.clone())
}

fn valid_until(expires_at: u64) -> Verdict {
    Verdict::Valid(Identity {
        user_id: "U1234567890abcdef1234567890abcdef".into(),
        display_name: None,
        picture_url: None,
        email: None,
        channel_id: "1".into(),
        method: AuthMethod::AccessToken,
        expires_at,
        amr: Vec::new(),
    })
}

fn key(i: u32) -> CacheKey {
    cache_key(CredentialKind::AccessToken, &i.to_string())
}

#[tokio::test]
async fn stays_within_max_entries_when_full_of_live_entries() {
    let clock = Clock::manual();
    let c = cache(100, &clock);
    let exp = clock.unix_seconds() + 3600;
    for i in 0..1000 {
        let (r, lookup) = c.get_or_verify(key(i), async { Ok(valid_until(exp)) }).await;
        assert!(r.is_ok());
        assert_eq!(lookup, Lookup::Miss);
        assert!(c.entry_count() <= 100);
    }
    assert_eq!(c.entry_count(), 100);
    // The latest entry survived its own insertion.
    assert_eq!(c.get_or_verify(key(999), async { unreachable!() }).await.1, Lookup::Hit);
}

#[tokio::test]
async fn kinds_never_share_an_entry_and_rejections_expire() {
    let clock = Clock::manual();
    let c = cache(10, &clock);
    let access = cache_key(CredentialKind::AccessToken, "t");
    let id = cache_key(CredentialKind::IdToken, "t");
    assert_ne!(access, id);
    let _ = c.get_or_verify(access, async { Ok(Verdict::Rejected(Rejection::Invalid)) }).await;
    assert_eq!(c.get_or_verify(access, async { unreachable!() }).await.1, Lookup::Hit);
    let exp = clock.unix_seconds() + 3600;
    assert_eq!(c.get_or_verify(id, async { Ok(valid_until(exp)) }).await.1, Lookup::Miss);
    clock.advance(Duration::from_millis(1001));
    assert_eq!(c.get_or_verify(access, async { Ok(Verdict::Rejected(Rejection::Invalid)) }).await.1, Lookup::Miss);
}

#[tokio::test]
async fn expired_entries_leave_by_the_sweep_not_by_reading_the_count() {
    let clock = Clock::manual();
    let c = cache(100, &clock);
    for i in 0..10 {
        let _ = c.get_or_verify(key(i), async { Ok(Verdict::Rejected(Rejection::Invalid)) }).await;
    }
    clock.advance(Duration::from_secs(2));
    // Reading the count (what a scrape does) walks nothing and changes nothing.
    assert_eq!(c.entry_count(), 10);
    assert_eq!(c.entry_count(), 10);
    c.sweep();
    assert_eq!(c.entry_count(), 0);
}

#[tokio::test]
async fn the_background_sweeper_runs_on_the_cache_clock() {
    let clock = Clock::manual();
    let c = Arc::new(cache(100, &clock));
    let _ = c.get_or_verify(key(1), async { Ok(Verdict::Rejected(Rejection::Invalid)) }).await;
    let sweeper = tokio::spawn(c.clone().run_sweeper());
    tokio::task::yield_now().await;
    clock.advance(SWEEP_INTERVAL);
    for _ in 0..100 {
        if c.entry_count() == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(c.entry_count(), 0);
    sweeper.abort();
}

#[tokio::test]
async fn an_expired_verdict_is_refused_whatever_its_ttl_says() {
    let clock = Clock::manual();
    let c = cache(10, &clock);
    let exp = clock.unix_seconds() + 30;
    // Stored with a TTL longer than the token lives (as an entry from another
    // replica could be): past `exp` it is refused as expired, not served.
    let cached = Cached::new(c.store(&valid_until(exp)), Duration::from_secs(600));
    c.insert(key(7), &cached);
    assert!(matches!(
        c.get_or_verify(key(7), async { unreachable!() }).await.0.unwrap().stored.as_ref(),
        Stored::Valid(_)
    ));
    clock.advance(Duration::from_secs(31));
    let (result, lookup) = c.get_or_verify(key(7), async { unreachable!() }).await;
    assert_eq!(lookup, Lookup::Hit);
    assert!(matches!(result.unwrap().stored.as_ref(), Stored::Rejected(Rejection::Expired)));
    assert_eq!(c.entry_count(), 0);
}

#[tokio::test]
async fn a_panic_under_a_shard_lock_does_not_break_the_shard() {
    let clock = Clock::manual();
    let c = Arc::new(cache(100, &clock));
    let exp = clock.unix_seconds() + 3600;
    let _ = c.get_or_verify(key(1), async { Ok(valid_until(exp)) }).await;
    let home = VerdictCache::home(&key(1));
    let poisoner = c.clone();
    let joined = std::thread::spawn(move || {
        let _shard = poisoner.shards[home].lock().unwrap();
        panic!("a bug while holding a shard lock");
    })
    .join();
    assert!(joined.is_err());
    assert!(c.shards[home].is_poisoned());
    // The shard works again (emptied: a cache may forget, never fail for good).
    let (result, lookup) = c.get_or_verify(key(1), async { Ok(valid_until(exp)) }).await;
    assert!(result.is_ok());
    assert_eq!(lookup, Lookup::Miss);
    assert_eq!(c.get_or_verify(key(1), async { unreachable!() }).await.1, Lookup::Hit);
    assert!(!c.shards[home].is_poisoned());
    assert_eq!(c.entry_count(), 1);
}

#[tokio::test]
async fn a_cancelled_verification_leaves_no_flight_behind() {
    let clock = Clock::manual();
    let c = Arc::new(cache(10, &clock));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get_or_verify(key(1), async {
                let _ = started_tx.send(());
                std::future::pending::<Result<Verdict, LineError>>().await
            })
            .await
        })
    };
    started_rx.await.unwrap();
    assert_eq!(c.inflight_count(), 1);
    waiter.abort();
    let _ = waiter.await;
    assert_eq!(c.inflight_count(), 0, "the cancelled request's flight stayed in the map");
}

#[tokio::test]
async fn a_failure_is_shared_by_its_waiters_and_then_forgotten() {
    let clock = Clock::manual();
    let c = cache(10, &clock);
    let (result, lookup) = c.get_or_verify(key(1), async { Err(LineError::Overloaded) }).await;
    assert!(result.is_err());
    assert_eq!(lookup, Lookup::Miss);
    assert_eq!(c.inflight_count(), 0);
    assert_eq!(c.entry_count(), 0);
    let exp = clock.unix_seconds() + 3600;
    assert!(c.get_or_verify(key(1), async { Ok(valid_until(exp)) }).await.0.is_ok());
}

/// 6250 live entries (100000 over the 16 shards) in a table built for 7168:
/// more than half full, which `std`'s table alone answers, once removals have
/// turned its free slots into tombstones, by doubling.
#[test]
fn a_shard_more_than_half_full_keeps_its_size_under_churn() {
    // No share bound: only the rebuild keeps its size.
    let mut shard = shard::Shard::new(usize::MAX);
    let entry = || Entry { until: 0, stored: Arc::new(Stored::Rejected(Rejection::Invalid)) };
    const LIVE: u32 = 6250;
    for i in 0..LIVE {
        assert!(shard.insert(key(i), entry()).new);
    }
    let built = shard.capacity();
    assert_eq!(built, 7168, "the table this test means");
    // Expiry (the oldest goes) and eviction (any entry goes), twenty times over.
    let mut oldest = 0;
    for i in LIVE..LIVE * 20 {
        if i % 2 == 0 {
            // (skipping those evicted already)
            while shard.remove(&key(oldest)).is_none() {
                oldest += 1;
            }
            oldest += 1;
        } else {
            let victim = shard.any_key().expect("not empty");
            let _ = shard.remove(&victim);
        }
        assert!(shard.insert(key(i), entry()).new);
        assert_eq!(shard.len(), LIVE as usize);
        assert!(shard.capacity() <= built, "grew to {} after {} inserts", shard.capacity(), i - LIVE);
    }
    // Growth the live entries need still happens.
    for i in LIVE * 20..LIVE * 20 + 2000 {
        shard.insert(key(i), entry());
    }
    assert!(shard.capacity() >= 8250);
}

/// A full cache's shards drift around their share: 6300 live in the table
/// of 7168 that 6250 need is past the eighth-free line (6272). Bounded by its
/// share, the shard drops arbitrary entries down to the line rather than
/// doubling; with a larger share it grows.
#[test]
fn a_shard_past_the_line_keeps_its_size_when_its_share_fits() {
    let entry = || Entry { until: 0, stored: Arc::new(Stored::Rejected(Rejection::Invalid)) };
    for (share, grows) in [(6250, false), (8000, true)] {
        let mut shard = shard::Shard::new(share);
        let mut evicted = 0;
        for i in 0..6250 {
            evicted += shard.insert(key(i), entry()).evicted;
        }
        assert_eq!(shard.capacity(), 7168);
        // Churn with 50 more entries than removals: 6300 wanted.
        let (mut next, mut oldest) = (6250, 0);
        for round in 0..160_000 {
            // Expiry: the oldest goes (skipping those dropped already).
            if round % 3200 != 0 {
                while shard.remove(&key(oldest)).is_none() {
                    oldest += 1;
                }
                oldest += 1;
            }
            evicted += shard.insert(key(next), entry()).evicted;
            next += 1;
        }
        if grows {
            assert!(shard.capacity() > 7168, "{share}: kept {}", shard.capacity());
            assert_eq!(evicted, 0);
            assert_eq!(shard.len(), 6300);
        } else {
            assert!(shard.capacity() <= 7168, "{share}: grew to {}", shard.capacity());
            assert!(shard.len() <= 6273 && shard.len() + evicted == 6300, "{} live, {evicted} evicted", shard.len());
            assert!(evicted > 0);
        }
    }
}

/// hashbrown reserves a slot before it looks for the key, so a replace into
/// a table with no free slot grows it like an insert would.
#[test]
fn replacing_into_a_full_shard_does_not_grow_it_past_its_share() {
    let entry = || Entry { until: 0, stored: Arc::new(Stored::Rejected(Rejection::Invalid)) };
    let mut shard = shard::Shard::new(6272);
    for i in 0..7168 {
        assert_eq!(shard.insert(key(i), entry()).evicted, 0);
    }
    assert_eq!((shard.len(), shard.capacity()), (7168, 7168), "no free slot left");
    let replaced = shard.insert(key(0), entry());
    assert!(shard.capacity() <= 7168, "grew to {}", shard.capacity());
    assert_eq!(shard.len() + replaced.evicted, 7168 + usize::from(replaced.new));
}

#[tokio::test]
async fn entries_a_shard_drops_to_keep_its_size_leave_the_count() {
    let clock = Clock::manual();
    // 100000 over 16 shards, churned past the line by expiry.
    let section = crate::config::CacheSection { max_entries: 100_000.into(), ..Default::default() };
    let c = cache_with(section, &clock);
    let exp = clock.unix_seconds() + 3600;
    for i in 0..400_000 {
        let _ = c.get_or_verify(key(i), async { Ok(valid_until(exp)) }).await;
    }
    let held: usize = (0..SHARDS).map(|i| c.lock(i).len()).sum();
    assert_eq!(c.entry_count(), held as u64);
    assert!(held <= 100_000 && held > 99_000, "{held}");
    assert!((0..SHARDS).all(|i| c.lock(i).capacity() <= 7168), "a shard grew");
}

/// What the slot-size comments and the README's memory figures rest on.
#[test]
fn a_slot_is_the_key_and_sixteen_bytes() {
    assert_eq!(std::mem::size_of::<(CacheKey, Entry)>(), 48);
}

/// How many of `keys` the cache would serve now, without asking LINE.
fn live(c: &VerdictCache, keys: &[CacheKey]) -> usize {
    keys.iter().filter(|k| c.lookup(k).is_some()).count()
}

/// A cache with a 100 s TTL and 1000 verdicts made at the same moment.
async fn thousand_verdicts_made_together(
    section: crate::config::CacheSection,
    clock: &Clock,
) -> (VerdictCache, Vec<CacheKey>) {
    let section = crate::config::CacheSection { ttl_seconds: 100.into(), max_entries: 10_000.into(), ..section };
    let c = cache_with(section, clock);
    let exp = clock.unix_seconds() + 3600;
    let keys: Vec<CacheKey> = (0..1000).map(key).collect();
    for k in &keys {
        let _ = c.get_or_verify(*k, async { Ok(valid_until(exp)) }).await;
    }
    (c, keys)
}

#[tokio::test]
async fn verdicts_made_together_expire_spread_over_the_last_jitter_of_their_ttl() {
    let clock = Clock::manual();
    let section = crate::config::CacheSection::default();
    assert_eq!(section.ttl_jitter_percent.get(), 10, "the default");
    let (c, keys) = thousand_verdicts_made_together(section, &clock).await;
    // Never longer than the TTL, never shorter than 90 % of it.
    clock.advance(Duration::from_millis(89_999));
    assert_eq!(live(&c, &keys), 1000);
    // Spread: about half are gone half-way through the jitter window.
    clock.advance(Duration::from_millis(5_001));
    let at_95 = live(&c, &keys);
    assert!((350..=650).contains(&at_95), "{at_95} of 1000 left at 95 s");
    clock.advance(Duration::from_millis(4_000));
    // About a tenth: those cut by less than a second.
    let at_99 = live(&c, &keys);
    assert!(at_99 < at_95 && (40..=160).contains(&at_99), "{at_99} of 1000 left at 99 s");
    clock.advance(Duration::from_millis(1_000));
    assert_eq!(live(&c, &keys), 0);
}

#[tokio::test]
async fn the_jitter_is_fixed_per_credential_and_never_outlives_the_token() {
    let clock = Clock::manual();
    let section =
        crate::config::CacheSection { ttl_seconds: 600.into(), ttl_jitter_percent: 50.into(), ..Default::default() };
    let c = cache_with(section, &clock);
    let exp = clock.unix_seconds() + 30;
    let ttls: Vec<Duration> =
        (0..200).map(|i| c.ttl_for(&key(i), CredentialKind::AccessToken, &valid_until(exp))).collect();
    // The token's 30 s bound the TTL first; the cut only shortens it.
    assert!(ttls.iter().all(|t| *t <= Duration::from_secs(30) && *t > Duration::from_secs(15)), "{ttls:?}");
    assert!(ttls.iter().any(|t| *t < Duration::from_secs(20)) && ttls.iter().any(|t| *t > Duration::from_secs(25)));
    // The same credential, the same cut: not a coin tossed per request.
    assert_eq!(c.ttl_for(&key(7), CredentialKind::AccessToken, &valid_until(exp)), ttls[7]);
    // Rejections are spread the same way.
    let negative = c.ttl_for(&key(7), CredentialKind::AccessToken, &Verdict::Rejected(Rejection::Invalid));
    assert!(negative <= Duration::from_secs(10) && negative > Duration::from_secs(5), "{negative:?}");
}

#[tokio::test]
async fn with_no_jitter_every_verdict_lives_its_whole_ttl() {
    let clock = Clock::manual();
    let section = crate::config::CacheSection { ttl_jitter_percent: 0.into(), ..Default::default() };
    let (c, keys) = thousand_verdicts_made_together(section, &clock).await;
    clock.advance(Duration::from_millis(99_999));
    assert_eq!(live(&c, &keys), 1000);
    clock.advance(Duration::from_millis(1));
    assert_eq!(live(&c, &keys), 0);
}

#[tokio::test]
async fn the_sweep_makes_a_full_caches_dead_verdicts_room_for_new_ones() {
    let clock = Clock::manual();
    let c = cache(1000, &clock);
    let exp = clock.unix_seconds() + 3600;
    // 500 rejections (1 s), 500 valid verdicts (60 s): the cache is full.
    for i in 0..500 {
        let _ = c.get_or_verify(key(i), async { Ok(Verdict::Rejected(Rejection::Invalid)) }).await;
    }
    let kept: Vec<CacheKey> = (500..1000).map(key).collect();
    for k in &kept {
        let _ = c.get_or_verify(*k, async { Ok(valid_until(exp)) }).await;
    }
    assert_eq!(c.entry_count(), 1000);
    // The rejections are dead and swept (the sweeper runs every second);
    // 500 new verdicts arrive.
    clock.advance(Duration::from_secs(2));
    c.sweep();
    assert_eq!(c.entry_count(), 500);
    let held: usize = (0..SHARDS).map(|i| c.lock(i).len()).sum();
    assert_eq!(held, 500, "the sweep dropped the dead verdicts, not only their count");
    let new: Vec<CacheKey> = (1000..1500).map(key).collect();
    for k in &new {
        let _ = c.get_or_verify(*k, async { Ok(valid_until(exp)) }).await;
    }
    // They took the dead entries' room: no live verdict was evicted.
    assert_eq!(live(&c, &kept), 500);
    assert_eq!(live(&c, &new), 500);
    assert_eq!(c.entry_count(), 1000);
}
