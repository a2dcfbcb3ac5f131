//! Whoever can write to the shared Redis cannot forge an identity: every value
//! the proxy keeps there is MAC'd over its key, so a planted, moved, edited or
//! rewritten value is a miss (an unknown nonce), counted; values larger than
//! the proxy writes are refused unread; and what memory keeps of a value read
//! from Redis dies with the Redis key and with this replica's own TTL.
#![cfg(feature = "dev")]

mod support;

use std::time::Duration;

use sha2::{Digest, Sha256};
use support::*;

const DB: u8 = 5;
const LOGIN_ROUTE: &str = "[[routes]]\npath_prefix = \"/login\"\nauth = \"id_token\"\n";

struct Replicas {
    clock: Clock,
    line: MockLine,
    upstream: RecordingUpstream,
    a: TestProxy,
    b: TestProxy,
}

/// Two replicas sharing one Redis for nonces and verdicts, `a_cache` and
/// `b_cache` extra `[cache]` keys each.
async fn replicas(redis: &RedisServer, a_cache: &str, b_cache: &str) -> Replicas {
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let mac = mac_key_line();
    let text = |cache: &str| {
        let extra = format!(
            "{LOGIN_ROUTE}[nonce]\nstore = \"redis\"\nredis_url = \"{}\"\n{mac}[cache]\nshared = \"redis\"\n{cache}",
            redis.url(DB)
        );
        config_text_line(&line.base_url(), &upstream.url(), &format!("jwks_url = \"{}\"\n", line.jwks_url()), &extra)
    };
    let a = spawn_proxy_with(config(&text(a_cache)), &clock).await;
    let b = spawn_proxy_with(config(&text(b_cache)), &clock).await;
    Replicas { clock, line, upstream, a, b }
}

async fn status(p: &TestProxy, token: &str) -> u16 {
    client().get(p.url("/api/x")).bearer_auth(token).send().await.unwrap().status().as_u16()
}

/// The Redis key of an access token's verdict under `prefix`.
fn verdict_key(prefix: &str, token: &str) -> String {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(token.as_bytes());
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

/// Lets replica A verify [`TOKEN`] and returns its Redis key and value, once written.
async fn genuine_verdict(redis: &RedisServer, r: &Replicas) -> (String, Vec<u8>) {
    assert_eq!(status(&r.a, TOKEN).await, 200);
    let stored = || async { redis.keys(DB, "line-auth-proxy:verdict:*").await };
    assert!(eventually(Duration::from_secs(5), || async { stored().await.len() == 1 }).await);
    let key = stored().await.remove(0);
    let value: Vec<u8> = redis.run(DB, redis::cmd("GET").arg(&key)).await;
    (key, value)
}

fn refused(m: &str, purpose: &str, reason: &str) -> f64 {
    metric(m, &format!("line_auth_proxy_redis_entries_refused_total{{purpose=\"{purpose}\",reason=\"{reason}\"}}"))
}

#[tokio::test]
async fn a_verdict_planted_moved_or_edited_in_redis_is_a_miss_and_line_decides() {
    let redis = RedisServer::start().await;
    let r = replicas(&redis, "", "").await;
    let (key, genuine) = genuine_verdict(&redis, &r).await;
    assert!(genuine.starts_with(b"{") && genuine.len() > 44 && genuine[genuine.len() - 44] == b'.', "sealed");
    let payload = &genuine[..genuine.len() - 44];
    let prefix = &key[..key.len() - 64];

    // A verdict for a token string the attacker chose, in the format the
    // proxy writes but without its MAC: what a Redis writer could plant.
    let forged = "attacker-chosen-token";
    redis.run::<()>(DB, redis::cmd("SET").arg(verdict_key(prefix, forged)).arg(payload)).await;
    // The genuine sealed value copied under another token's key.
    let moved = "another-attacker-token";
    redis.run::<()>(DB, redis::cmd("SET").arg(verdict_key(prefix, moved)).arg(&genuine)).await;
    // The genuine value with its identity edited, the tag kept.
    let edited = String::from_utf8(genuine.clone()).unwrap().replace(USER, "Uffffffffffffffffffffffffffffffff");
    redis.run::<()>(DB, redis::cmd("SET").arg(&key).arg(edited)).await;

    for token in [forged, moved] {
        assert_eq!(status(&r.b, token).await, 401, "{token}");
    }
    assert_eq!(r.upstream.hits(), 1, "a planted verdict reached the upstream");
    assert_eq!(r.line.verify_calls(), 3, "B did not ask LINE about the planted tokens");
    // The edited identity is a miss too: B asks LINE and forwards LINE's user.
    assert_eq!(status(&r.b, TOKEN).await, 200);
    assert_eq!(r.line.verify_calls(), 4);
    assert_eq!(r.upstream.last().headers["x-line-user-id"], USER);
    let m = r.b.metrics().await;
    assert_eq!(refused(&m, "cache", "bad_mac"), 3.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_cache_shared_hits_total"), 0.0, "{m}");
}

#[tokio::test]
async fn a_consumed_nonce_rewritten_by_a_redis_writer_stays_used() {
    let redis = RedisServer::start().await;
    let r = replicas(&redis, "", "").await;
    let nonce = client().get(r.a.url("/auth/nonce")).send().await.unwrap();
    let nonce = nonce.json::<serde_json::Value>().await.unwrap()["nonce"].as_str().unwrap().to_string();
    let key = format!("line-auth-proxy:nonce:{nonce}");
    let record: Vec<u8> = redis.run(DB, redis::cmd("GET").arg(&key)).await;
    assert!(record.len() < 100 && record.contains(&b'.'), "a sealed expiry: {record:?}");
    let token = r.line.sign_es256(&r.line.id_claims(CHANNEL, USER, Some(&nonce)));
    let login = |p: &TestProxy, token: String| {
        let url = p.url("/login");
        async move { client().post(url).bearer_auth(token).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(login(&r.b, token.clone()).await, 200);
    // The nonce is gone; a writer puts back a record of its own making: an
    // unexpired expiry, as a record without a MAC would read.
    let expiry = r.clock.unix_millis() + 300_000;
    redis.run::<()>(DB, redis::cmd("SET").arg(&key).arg(expiry).arg("EX").arg(360)).await;
    assert_eq!(login(&r.a, token.clone()).await, 401, "the captured ID token replayed");
    // A record sealed for another nonce, moved to this one: refused as well.
    let other = client().get(r.a.url("/auth/nonce")).send().await.unwrap();
    let other = other.json::<serde_json::Value>().await.unwrap()["nonce"].as_str().unwrap().to_string();
    let sealed: Vec<u8> = redis.run(DB, redis::cmd("GET").arg(format!("line-auth-proxy:nonce:{other}"))).await;
    redis.run::<()>(DB, redis::cmd("SET").arg(&key).arg(sealed).arg("EX").arg(360)).await;
    assert_eq!(login(&r.b, token).await, 401);
    assert_eq!(r.upstream.hits(), 1, "a replay reached the upstream");
    let (ma, mb) = (r.a.metrics().await, r.b.metrics().await);
    assert_eq!(refused(&ma, "nonce", "bad_mac") + refused(&mb, "nonce", "bad_mac"), 2.0, "{ma}\n{mb}");
}

/// Bytes Redis has sent to its clients so far.
async fn redis_output_bytes(redis: &RedisServer) -> u64 {
    let info: String = redis.run(DB, redis::cmd("INFO").arg("stats")).await;
    let line = info.lines().find(|l| l.starts_with("total_net_output_bytes:")).unwrap();
    line.split_once(':').unwrap().1.trim().parse().unwrap()
}

#[tokio::test]
async fn values_larger_than_the_proxy_writes_are_refused_without_being_read() {
    let redis = RedisServer::start().await;
    let r = replicas(&redis, "", "").await;
    let (key, _) = genuine_verdict(&redis, &r).await;
    let huge = vec![b'{'; 8 << 20];
    redis.run::<()>(DB, redis::cmd("SET").arg(&key).arg(&huge)).await;
    let nonce = client().get(r.a.url("/auth/nonce")).send().await.unwrap();
    let nonce = nonce.json::<serde_json::Value>().await.unwrap()["nonce"].as_str().unwrap().to_string();
    let nonce_key = format!("line-auth-proxy:nonce:{nonce}");
    redis.run::<()>(DB, redis::cmd("SET").arg(&nonce_key).arg(&huge)).await;

    let before = redis_output_bytes(&redis).await;
    // B has nothing in memory: the shared tier finds 8 MiB and does not read it.
    assert_eq!(status(&r.b, TOKEN).await, 200);
    assert_eq!(r.line.verify_calls(), 2, "the oversized verdict was a miss: B asked LINE");
    let token = r.line.sign_es256(&r.line.id_claims(CHANNEL, USER, Some(&nonce)));
    let login = client().post(r.b.url("/login")).bearer_auth(token).send().await.unwrap();
    assert_eq!(login.status(), 401, "an oversized nonce record is no nonce");
    let sent = redis_output_bytes(&redis).await - before;
    assert!(sent < 64 * 1024, "Redis sent {sent} bytes: an oversized value was read");
    let m = r.b.metrics().await;
    assert_eq!(refused(&m, "cache", "too_large"), 1.0, "{m}");
    assert_eq!(refused(&m, "nonce", "too_large"), 1.0, "{m}");
}

#[tokio::test]
async fn memory_keeps_a_shared_verdict_no_longer_than_its_own_ttl_nor_the_redis_keys() {
    let redis = RedisServer::start().await;
    // A keeps verdicts 600 s; B only 60 s.
    let r = replicas(&redis, "ttl_seconds = 600\n", "").await;
    let (key, _) = genuine_verdict(&redis, &r).await;
    let shared_hits = || async { r.b.metric("line_auth_proxy_cache_shared_hits_total").await };
    assert_eq!(status(&r.b, TOKEN).await, 200);
    assert_eq!(shared_hits().await, 1.0);
    assert_eq!(status(&r.b, TOKEN).await, 200);
    assert_eq!(shared_hits().await, 1.0, "the second request is a memory hit");
    // Past B's own 60 s (the value A wrote says 600), B reads Redis again.
    r.clock.advance(Duration::from_secs(61));
    assert_eq!(status(&r.b, TOKEN).await, 200);
    assert_eq!(shared_hits().await, 2.0, "B's memory kept A's verdict past cache.ttl_seconds");
    // The Redis key's own TTL bounds memory too: 30 s left in Redis, so past
    // 30 s B's memory no longer answers.
    r.clock.advance(Duration::from_secs(61));
    redis.run::<()>(DB, redis::cmd("PEXPIRE").arg(&key).arg(30_000)).await;
    assert_eq!(status(&r.b, TOKEN).await, 200);
    assert_eq!(shared_hits().await, 3.0);
    r.clock.advance(Duration::from_secs(31));
    assert_eq!(status(&r.b, TOKEN).await, 200);
    assert_eq!(shared_hits().await, 4.0, "B's memory outlived the Redis key's TTL");
    assert_eq!(r.line.verify_calls(), 1, "every answer came from A's one verification");
}

#[tokio::test]
async fn replicas_with_different_mac_keys_share_nothing_and_say_so() {
    let redis = RedisServer::start().await;
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let text = |mac: String| {
        let extra = format!("[cache]\nshared = \"redis\"\nredis_url = \"{}\"\n{mac}", redis.url(DB));
        config_text_line(&line.base_url(), &upstream.url(), "", &extra)
    };
    let a = spawn_proxy_with(config(&text(mac_key_line_for([1; 32]))), &clock).await;
    let b = spawn_proxy_with(config(&text(mac_key_line_for([2; 32]))), &clock).await;
    assert_eq!(status(&a, TOKEN).await, 200);
    let stored = || async { redis.keys(DB, "line-auth-proxy:verdict:*").await.len() };
    assert!(eventually(Duration::from_secs(5), || async { stored().await == 1 }).await);
    assert_eq!(status(&b, TOKEN).await, 200);
    assert_eq!(line.verify_calls(), 2, "B trusted a value it cannot verify");
    assert_eq!(refused(&b.metrics().await, "cache", "bad_mac"), 1.0);
}
