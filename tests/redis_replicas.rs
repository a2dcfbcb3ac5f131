//! Several replicas behind one real Redis: nonces issued by one are consumable
//! exactly once by any; verdicts verified by one serve the others; Redis
//! outages fail nonce routes closed while access-token routes keep working.
#![cfg(feature = "dev")]

mod support;

use std::time::Duration;

use support::*;

const LOGIN_ROUTE: &str = "[[routes]]\npath_prefix = \"/login\"\nauth = \"id_token\"\n";

/// Two proxies (A, B) sharing `redis` for nonces and verdicts, one mock LINE.
struct Replicas {
    line: MockLine,
    upstream: RecordingUpstream,
    a: TestProxy,
    b: TestProxy,
}

async fn replicas(redis: &RedisServer) -> Replicas {
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let extra = format!(
        "{LOGIN_ROUTE}[nonce]\nstore = \"redis\"\nredis_url = \"{}\"\n{}[cache]\nshared = \"redis\"\n",
        redis.url(3),
        mac_key_line()
    );
    let text =
        config_text_line(&line.base_url(), &upstream.url(), &format!("jwks_url = \"{}\"\n", line.jwks_url()), &extra);
    let a = spawn_proxy_with(config(&text), &clock).await;
    let b = spawn_proxy_with(config(&text), &clock).await;
    Replicas { line, upstream, a, b }
}

async fn nonce_from(p: &TestProxy) -> String {
    let r = client().get(p.url("/auth/nonce")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json::<serde_json::Value>().await.unwrap()["nonce"].as_str().unwrap().to_string()
}

async fn login(p: &TestProxy, token: &str) -> u16 {
    client().post(p.url("/login")).bearer_auth(token).send().await.unwrap().status().as_u16()
}

fn id_token(line: &MockLine, nonce: &str) -> String {
    line.sign_es256(&line.id_claims(CHANNEL, USER, Some(nonce)))
}

#[tokio::test]
async fn a_nonce_from_one_replica_is_consumed_once_by_any() {
    let redis = RedisServer::start().await;
    let r = replicas(&redis).await;
    let nonce = nonce_from(&r.a).await;
    let token = id_token(&r.line, &nonce);
    assert_eq!(login(&r.b, &token).await, 200);
    assert_eq!(login(&r.a, &token).await, 401);
    assert_eq!(login(&r.b, &token).await, 401);
    // Another token carrying the spent nonce, on either replica: refused.
    assert_eq!(login(&r.a, &id_token(&r.line, &nonce)).await, 401);
    assert_eq!(r.upstream.hits(), 1);
    // The keys are namespaced, in the URL's database.
    // (Beside the nonces: the store's counters, `line-auth-proxy:nonce:count:*`.)
    let nonces = || async {
        let keys = redis.keys(3, "line-auth-proxy:nonce:*").await;
        keys.into_iter().filter(|k| !k.starts_with("line-auth-proxy:nonce:count:")).collect::<Vec<_>>()
    };
    assert!(nonces().await.is_empty(), "consumed nonce left behind");
    let live = nonce_from(&r.b).await;
    assert_eq!(nonces().await, vec![format!("line-auth-proxy:nonce:{live}")]);
    assert!(redis.keys(0, "*").await.is_empty(), "keys written outside database 3");
    let m = r.a.metrics().await;
    assert!(
        metric(&m, "line_auth_proxy_redis_requests_total{purpose=\"nonce\",op=\"nonce_issue\",outcome=\"ok\"}") >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn concurrent_consumers_across_replicas_have_one_winner() {
    let redis = RedisServer::start().await;
    let r = replicas(&redis).await;
    let token: &'static str = Box::leak(id_token(&r.line, &nonce_from(&r.a).await).into_boxed_str());
    let c = client();
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let url = if i % 2 == 0 { r.a.url("/login") } else { r.b.url("/login") };
            let c = c.clone();
            tokio::spawn(async move { c.post(url).bearer_auth(token).send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 401), "{statuses:?}");
    assert_eq!(r.upstream.hits(), 1);
}

#[tokio::test]
async fn a_verdict_cached_by_one_replica_serves_the_other_without_line() {
    let redis = RedisServer::start().await;
    let r = replicas(&redis).await;
    assert_eq!(client().get(r.a.url("/api/x")).bearer_auth(TOKEN).send().await.unwrap().status(), 200);
    assert_eq!(r.line.verify_calls(), 1);
    // The write to Redis happens in the background: wait until it landed.
    let verdicts = || async { redis.keys(3, "line-auth-proxy:verdict:*").await };
    assert!(eventually(Duration::from_secs(5), || async { !verdicts().await.is_empty() }).await);
    let stored = verdicts().await;
    assert_eq!(stored.len(), 1);
    assert!(!stored[0].contains(TOKEN), "the raw token is a Redis key");
    assert_eq!(client().get(r.b.url("/api/x")).bearer_auth(TOKEN).send().await.unwrap().status(), 200);
    assert_eq!(r.line.verify_calls(), 1, "replica B asked LINE again");
    let seen = r.upstream.last();
    assert_eq!(seen.headers["x-line-user-id"], USER);
    assert_eq!(seen.headers["x-line-display-name"], "Brown");
    let m = r.b.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_cache_shared_hits_total"), 1.0, "{m}");
    // Rejections are shared too, for their short TTL.
    assert_eq!(client().get(r.a.url("/api/x")).bearer_auth("bogus").send().await.unwrap().status(), 401);
    assert!(eventually(Duration::from_secs(5), || async { verdicts().await.len() == 2 }).await);
    assert_eq!(client().get(r.b.url("/api/x")).bearer_auth("bogus").send().await.unwrap().status(), 401);
    assert_eq!(r.line.verify_calls(), 2);
}

#[tokio::test]
async fn redis_outage_fails_nonces_closed_and_recovers() {
    let mut redis = RedisServer::start().await;
    let r = replicas(&redis).await;
    let c = client();
    let nonce = nonce_from(&r.a).await;
    redis.kill();

    // Nonce routes: 503, never "accept without checking".
    let res = c.get(r.a.url("/auth/nonce")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let token = id_token(&r.line, &nonce);
    assert_eq!(login(&r.b, &token).await, 503);
    assert_eq!(r.upstream.hits(), 0);

    // Access tokens still work: the shared cache degrades to memory + LINE.
    assert_eq!(c.get(r.a.url("/api/x")).bearer_auth(TOKEN).send().await.unwrap().status(), 200);
    assert_eq!(c.get(r.a.url("/api/x")).bearer_auth(TOKEN).send().await.unwrap().status(), 200);
    assert_eq!(r.line.verify_calls(), 1);
    let m = r.a.metrics().await;
    assert!(metric(&m, "line_auth_proxy_cache_shared_errors_total") >= 1.0, "{m}");

    // Readiness reports the nonce store's Redis.
    let not_ready = eventually_status(&r.a.admin_url("/readyz"), 503, 5).await;
    assert!(not_ready, "/readyz stayed 200 with the nonce store down");

    // Redis comes back (empty): reconnection happens by itself.
    redis.restart().await;
    let recovered = eventually_status(&r.b.url("/auth/nonce"), 200, 10).await;
    assert!(recovered, "nonce issuance never recovered");
    let fresh = nonce_from(&r.b).await;
    assert_eq!(login(&r.a, &id_token(&r.line, &fresh)).await, 200);
    // The nonce issued before the outage died with it: refused, not accepted.
    assert_eq!(login(&r.a, &token).await, 401);
    let ready = eventually_status(&r.a.admin_url("/readyz"), 200, 10).await;
    assert!(ready);
}

#[tokio::test]
async fn redis_down_at_start_means_not_ready_until_it_comes() {
    let mut redis = RedisServer::start().await;
    redis.kill();
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    let upstream = RecordingUpstream::start().await;
    let extra =
        format!("{LOGIN_ROUTE}[nonce]\nstore = \"redis\"\nredis_url = \"{}\"\n{}", redis.url(0), mac_key_line());
    let text =
        config_text_line(&line.base_url(), &upstream.url(), &format!("jwks_url = \"{}\"\n", line.jwks_url()), &extra);
    let proxy = spawn_proxy_unready_with(config(&text), &clock).await;
    let c = client();
    // Not ready even after the health probe has tried and failed (an error,
    // or a timeout when its retry waited on a reconnection that never came).
    let ping = |outcome: &str| {
        format!("line_auth_proxy_redis_requests_total{{purpose=\"nonce\",op=\"ping\",outcome=\"{outcome}\"}}")
    };
    let (error, timeout) = (ping("error"), ping("timeout"));
    let failed = || async { proxy.metric(&error).await + proxy.metric(&timeout).await >= 1.0 };
    assert!(eventually(Duration::from_secs(10), failed).await);
    assert_eq!(c.get(proxy.admin_url("/readyz")).send().await.unwrap().status(), 503);
    assert_eq!(c.get(proxy.url("/auth/nonce")).send().await.unwrap().status(), 503);
    redis.restart().await;
    let ready = eventually_status(&proxy.admin_url("/readyz"), 200, 10).await;
    assert!(ready, "never became ready after Redis came up");
    assert_eq!(c.get(proxy.url("/auth/nonce")).send().await.unwrap().status(), 200);
}

/// Two deployments — A accepting `CHANNEL`, B another channel — on one Redis,
/// with `cache.shared = "redis"`, one mock LINE, and the given `[cache]` extra.
async fn two_deployments(
    redis: &RedisServer,
    cache_extra: &str,
) -> (MockLine, RecordingUpstream, TestProxy, TestProxy) {
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    line.add_token("second-token", MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let extra =
        format!("[cache]\nshared = \"redis\"\nredis_url = \"{}\"\n{}{cache_extra}", redis.url(2), mac_key_line());
    let text = config_text_line(&line.base_url(), &upstream.url(), "", &extra);
    let a = spawn_proxy_with(config(&text), &clock).await;
    let other = text.replace(&format!("channel_ids = [\"{CHANNEL}\"]"), "channel_ids = [\"2222222222\"]");
    assert_ne!(other, text);
    let b = spawn_proxy_with(config(&other), &clock).await;
    (line, upstream, a, b)
}

async fn status(p: &TestProxy, token: &str) -> u16 {
    client().get(p.url("/api/x")).bearer_auth(token).send().await.unwrap().status().as_u16()
}

/// Waits until `n` verdicts are in Redis (they are written in the background).
async fn verdicts_stored(redis: &RedisServer, n: usize) {
    let count = || async { redis.keys(2, "line-auth-proxy:verdict:*").await.len() };
    assert!(eventually(Duration::from_secs(5), || async { count().await == n }).await, "{} stored", count().await);
}

#[tokio::test]
async fn two_deployments_on_one_redis_never_accept_each_others_tokens_by_default() {
    let redis = RedisServer::start().await;
    let (line, upstream, a, b) = two_deployments(&redis, "").await;
    assert_eq!(status(&a, TOKEN).await, 200);
    verdicts_stored(&redis, 1).await;
    // B's namespace is its own: it asks LINE, and LINE's answer names A's channel.
    assert_eq!(status(&b, TOKEN).await, 401);
    assert_eq!(line.verify_calls(), 2, "B used A's verdict");
    verdicts_stored(&redis, 2).await;
    // The reverse: B's wrong_channel verdict never poisons A.
    assert_eq!(status(&b, "second-token").await, 401);
    verdicts_stored(&redis, 3).await;
    assert_eq!(status(&a, "second-token").await, 200);
    assert_eq!(upstream.hits(), 2);
    let keys = redis.keys(2, "line-auth-proxy:verdict:*").await;
    let namespaces: std::collections::BTreeSet<&str> = keys.iter().map(|k| &k[..k.rfind(':').unwrap()]).collect();
    assert_eq!(namespaces.len(), 2, "{keys:?}");
}

#[tokio::test]
async fn a_verdict_read_from_a_shared_namespace_is_judged_by_this_deployments_channels() {
    let redis = RedisServer::start().await;
    // Both write one namespace, as a written prefix allows.
    let (line, upstream, a, b) = two_deployments(&redis, "redis_key_prefix = \"shared:\"\n").await;
    let count = || async { redis.keys(2, "shared:*").await.len() };
    assert_eq!(status(&a, TOKEN).await, 200);
    assert!(eventually(Duration::from_secs(5), || async { count().await == 1 }).await);
    // B reads A's identity, and refuses it as a fresh verification would.
    assert_eq!(status(&b, TOKEN).await, 401);
    assert_eq!(line.verify_calls(), 1, "B's refusal came from the stored identity");
    // B verifies a token of A's channel first: its wrong_channel is stored...
    assert_eq!(status(&b, "second-token").await, 401);
    assert_eq!(line.verify_calls(), 2);
    assert!(eventually(Duration::from_secs(5), || async { count().await == 2 }).await);
    // ...and A, reading it, asks LINE itself instead of refusing its own user.
    assert_eq!(status(&a, "second-token").await, 200);
    assert_eq!(line.verify_calls(), 3);
    assert_eq!(upstream.hits(), 2);
}

/// The Redis nonce store is bounded across replicas: issuing counts into one
/// counter per key lifetime, a consumed nonce is taken off it, and once the
/// counts reach 100000 both replicas answer 503 `nonce_store_full` and write
/// nothing more.
#[tokio::test]
async fn the_redis_nonce_store_is_capped_across_replicas() {
    let redis = RedisServer::start().await;
    let r = replicas(&redis).await;
    let nonce = nonce_from(&r.a).await;
    let counters = redis.keys(3, "line-auth-proxy:nonce:count:*").await;
    assert_eq!(counters.len(), 1, "{counters:?}");
    let count = || async { redis.run::<i64>(3, redis::cmd("GET").arg(&counters[0])).await };
    assert_eq!(count().await, 1);
    let _second = nonce_from(&r.b).await;
    assert_eq!(count().await, 2, "both replicas count into one counter");
    // A consumed nonce no longer counts.
    assert_eq!(login(&r.b, &id_token(&r.line, &nonce)).await, 200);
    assert_eq!(count().await, 1);
    // Another writer (or a flood) brings the count to the cap.
    redis.run::<()>(3, redis::cmd("SET").arg(&counters[0]).arg(100_000)).await;
    let before = redis.keys(3, "line-auth-proxy:nonce:*").await.len();
    for p in [&r.a, &r.b] {
        let refused = client().get(p.url("/auth/nonce")).send().await.unwrap();
        assert_eq!(refused.status(), 503);
        assert_eq!(refused.headers()["retry-after"], "1");
        assert_eq!(json_error(refused, 503).await, "temporarily_unavailable");
    }
    assert_eq!(redis.keys(3, "line-auth-proxy:nonce:*").await.len(), before, "a refused nonce was written");
    let m = r.a.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_nonces_total{event=\"store_full\"}"), 1.0, "{m}");
    assert!(m.contains("reason=\"nonce_store_full\""), "{m}");
}

/// A Redis connection reset under a working Redis (a restart behind a load
/// balancer, an idle-connection reaper, `CLIENT KILL`) costs the request that
/// meets it nothing: the call is retried once on a new connection, within its
/// timeout, and counted.
#[tokio::test]
async fn a_connection_reset_is_retried_once_instead_of_a_503() {
    let redis = RedisServer::start().await;
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    let upstream = RecordingUpstream::start().await;
    // A timeout long enough for a reconnect on a loaded test machine.
    let extra = format!(
        "{LOGIN_ROUTE}[nonce]\nstore = \"redis\"\nredis_url = \"{}\"\nredis_timeout_ms = 2000\n{}",
        redis.url(0),
        mac_key_line()
    );
    let text =
        config_text_line(&line.base_url(), &upstream.url(), &format!("jwks_url = \"{}\"\n", line.jwks_url()), &extra);
    let proxy = spawn_proxy_with(config(&text), &clock).await;
    let _ = nonce_from(&proxy).await;
    for round in 0..3 {
        // Every client connection but the killer's own is cut, server-side.
        let killed: i64 = redis.run(0, redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal")).await;
        assert!(killed >= 1, "round {round}: the proxy had no connection to cut");
        let res = client().get(proxy.url("/auth/nonce")).send().await.unwrap();
        assert_eq!(res.status(), 200, "round {round}: a reset connection became a 503");
    }
    let m = proxy.metrics().await;
    let retried =
        |op: &str| metric(&m, &format!("line_auth_proxy_redis_retries_total{{purpose=\"nonce\",op=\"{op}\"}}"));
    // Each reset was met by the nonce request, or (rarely) by the health probe first.
    assert_eq!(retried("nonce_issue") + retried("ping"), 3.0, "{m}");
    assert_eq!(
        metric(&m, "line_auth_proxy_redis_requests_total{purpose=\"nonce\",op=\"nonce_issue\",outcome=\"error\"}"),
        0.0,
        "{m}"
    );
}
