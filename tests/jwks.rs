//! LINE's JWKS in local mode: loaded before readiness, refetched once on an
//! unknown `kid` (rate-limited however many arrive), the last good set kept
//! when LINE fails.
#![cfg(feature = "dev")]

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

impl Env {
    /// A nonce-carrying ID token signed with the mock's current key.
    async fn fresh_token(&self) -> String {
        self.line.sign_es256(&self.claims(Some(&self.nonce().await)))
    }
}

#[tokio::test]
async fn key_rotation_is_picked_up_with_one_refetch() {
    let e = login_env("", "").await;
    assert_eq!(e.line.jwks_calls(), 1, "loaded once at start");
    assert_eq!(e.proxy.metric("line_auth_proxy_jwks_keys").await, 1.0);
    let new_kid = e.line.rotate_key();
    assert_eq!(e.line.current_kid(), new_kid);
    assert_eq!(e.login(&e.fresh_token().await).await, 200);
    assert_eq!(e.line.jwks_calls(), 2, "one refetch for the unknown kid");
    // The new key is now known: no further fetch.
    assert_eq!(e.login(&e.fresh_token().await).await, 200);
    assert_eq!(e.line.jwks_calls(), 2);
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_at_most_one_fetch_per_window() {
    // One client floods here; its fresh-token budget (tests/limits.rs) is off
    // so that every token reaches the JWKS lookup.
    let e = login_env("", "[limits]\nfresh_tokens_per_minute = 0\n").await;
    let nonce = e.nonce().await;
    let c = client();
    let mut tasks = Vec::new();
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..1000 {
        let kid = format!("{i:064x}");
        let token = e.line.sign_es256_with_header(&json!({"alg": "ES256", "kid": kid}), &e.claims(Some(&nonce)));
        let (c, url) = (c.clone(), e.proxy.url("/login"));
        tasks.push(tokio::spawn(async move { c.post(url).bearer_auth(token).send().await.unwrap().status().as_u16() }));
        if tasks.len() == 100 {
            for t in tasks.drain(..) {
                *statuses.entry(t.await.unwrap()).or_insert(0) += 1;
            }
        }
    }
    for t in tasks {
        *statuses.entry(t.await.unwrap()).or_insert(0) += 1;
    }
    // One fetch at start, one more for the first unknown kid; the clock stands
    // still, so the whole flood falls in one 30-second window. The kid that
    // refetched is a 401; every later one is a 503 (a refetch once the window
    // is over could still find it), never a definitive refusal.
    assert_eq!(statuses, std::collections::BTreeMap::from([(401, 1), (503, 999)]));
    assert_eq!(e.line.jwks_calls(), 2);
    assert_eq!(e.upstream.hits(), 0);
    let unknown = "line_auth_proxy_auth_rejections_total{reason=\"id_token_unknown_kid\"}";
    assert_eq!(e.proxy.metric(unknown).await, 1.0);
    // A window later, an unknown kid may refetch once more.
    e.clock.advance(Duration::from_secs(30));
    let token = e.line.sign_es256_with_header(&json!({"alg": "ES256", "kid": "f".repeat(64)}), &e.claims(Some(&nonce)));
    assert_eq!(e.login(&token).await, 401);
    assert_eq!(e.line.jwks_calls(), 3);
    // The nonce survived all of it.
    assert_eq!(e.login(&e.line.sign_es256(&e.claims(Some(&nonce)))).await, 200);
}

#[tokio::test]
async fn jwks_down_at_start_means_not_ready_and_503() {
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    line.set_faults(Faults { jwks: Some(Fault::Status(500)), ..Faults::default() });
    let upstream = RecordingUpstream::start().await;
    let text = config_text_line(
        &line.base_url(),
        &upstream.url(),
        &format!("jwks_url = \"{}\"\n", line.jwks_url()),
        "[[routes]]\npath_prefix = \"/login\"\nauth = \"id_token\"\n",
    );
    let proxy = spawn_proxy_unready_with(config(&text), &clock).await;
    let c = client();
    assert!(eventually(Duration::from_secs(5), || async { line.jwks_calls() == 1 }).await, "no first fetch");
    assert_eq!(c.get(proxy.admin_url("/readyz")).send().await.unwrap().status(), 503);
    // A login now cannot be verified: fail closed.
    let nonce: serde_json::Value = c.get(proxy.url("/auth/nonce")).send().await.unwrap().json().await.unwrap();
    let token = line.sign_es256(&line.id_claims(CHANNEL, USER, nonce["nonce"].as_str()));
    let r = c.post(proxy.url("/login")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(upstream.hits(), 0);
    // LINE recovers: the retry (5 s later on the proxy's clock) loads the set,
    // and readiness follows.
    line.set_faults(Faults::default());
    assert_eq!(line.jwks_calls(), 2, "the failed login asked for the key set once more");
    clock.advance(Duration::from_secs(5));
    assert!(eventually_status(&proxy.admin_url("/readyz"), 200, 5).await, "never ready after the JWKS came back");
    let r = c.post(proxy.url("/login")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn jwks_down_later_keeps_the_last_good_set() {
    let e = login_env("", "").await;
    e.line.set_faults(Faults { jwks: Some(Fault::Status(503)), ..Faults::default() });
    // A token with the old key still verifies.
    assert_eq!(e.login(&e.fresh_token().await).await, 200);
    // A rotated key cannot be learned while LINE fails: 503 (LINE unavailable),
    // not let through, and not a 401 that blames the token — on every retry.
    e.line.rotate_key();
    let token = e.fresh_token().await;
    assert_eq!(e.login(&token).await, 503);
    assert_eq!(e.login(&token).await, 503);
    assert_eq!(e.upstream.hits(), 1);
    // A kid nobody knows, while the old set still verifies old tokens: also 503.
    assert_eq!(e.login(&e.fresh_token().await).await, 503);
    assert_eq!(e.login(&e.fresh_token().await).await, 503);
    assert_eq!(client().get(e.proxy.admin_url("/readyz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn retired_keys_stop_verifying_after_a_refetch() {
    let e = login_env("", "").await;
    let old_token = e.fresh_token().await;
    e.line.rotate_key();
    e.line.retire_old_keys();
    // A new-kid token triggers the refetch; the old kid is gone from the set.
    assert_eq!(e.login(&e.fresh_token().await).await, 200);
    // Within the refetch window an unknown kid is a 503 (a refetch could still
    // find it); once a refetch has looked and not found it, a 401.
    assert_eq!(e.login(&old_token).await, 503);
    e.clock.advance(Duration::from_secs(30));
    assert_eq!(e.login(&old_token).await, 401);
}

/// After a rotation, one client's random kid spends the refetch window; a real
/// login with the new key in that window is a 503 with Retry-After, not a 401,
/// and goes through once the window is over.
#[tokio::test]
async fn a_random_kid_cannot_turn_a_rotated_keys_logins_into_401s() {
    let e = login_env("", "").await;
    e.line.rotate_key();
    let nonce = e.nonce().await;
    let random =
        e.line.sign_es256_with_header(&json!({"alg": "ES256", "kid": "f".repeat(64)}), &e.claims(Some(&nonce)));
    // The random kid's refetch found the rotated key, but this was not it: 401.
    assert_eq!(e.login(&random).await, 401);
    assert_eq!(e.line.jwks_calls(), 2);
    e.line.rotate_key();
    let r = client().post(e.proxy.url("/login")).bearer_auth(e.fresh_token().await).send().await.unwrap();
    assert_eq!(r.status(), 503, "a login with the newest key while the refetch waits");
    assert!(r.headers().contains_key("retry-after"));
    e.clock.advance(Duration::from_secs(30));
    assert_eq!(e.login(&e.fresh_token().await).await, 200);
    assert_eq!(e.line.jwks_calls(), 3);
}

/// LINE's current key set as JSON, and that set with `entry` added.
async fn jwks_with(e: &Env, entry: serde_json::Value) -> &'static str {
    let mut set: serde_json::Value = client().get(e.line.jwks_url()).send().await.unwrap().json().await.unwrap();
    set["keys"].as_array_mut().unwrap().push(entry);
    Box::leak(set.to_string().into_boxed_str())
}

#[tokio::test]
async fn a_key_set_with_a_bad_point_or_a_kid_twice_is_refused_and_the_last_good_one_kept() {
    let e = login_env("", "").await;
    let kid = e.line.current_kid();
    let b64 = |bytes: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes);
    // A key whose coordinates are no point of P-256 (y = x = 1): LINE's answer
    // is refused, and the key that verifies today keeps verifying.
    let off_curve = json!({"kty": "EC", "crv": "P-256", "kid": "new", "x": b64(&[1; 32]), "y": b64(&[1; 32])});
    // The same kid twice, the second with another point: which one verified
    // would be a matter of order.
    let mut twice: serde_json::Value =
        client().get(e.line.jwks_url()).send().await.unwrap().json::<serde_json::Value>().await.unwrap()["keys"][0]
            .clone();
    twice["x"] = json!(b64(&[1; 32]));
    assert_eq!(twice["kid"], kid.as_str());
    for (reason, entry) in [("invalid_key", off_curve), ("duplicate_kid", twice)] {
        let body = jwks_with(&e, entry).await;
        e.line.set_faults(Faults { jwks: Some(Fault::Body(body)), ..Faults::default() });
        let unknown =
            e.line.sign_es256_with_header(&json!({"alg": "ES256", "kid": "new"}), &e.claims(Some(&e.nonce().await)));
        let before = e.line.jwks_calls();
        // The refetch fetched the hostile set: LINE's answer is not usable, 503.
        assert_eq!(e.login(&unknown).await, 503, "{reason}");
        assert_eq!(e.line.jwks_calls(), before + 1);
        let refused = format!("line_auth_proxy_jwks_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(e.proxy.metric(&refused).await, 1.0, "{reason}");
        e.line.set_faults(Faults::default());
        assert_eq!(e.login(&e.fresh_token().await).await, 200, "the last good set was replaced ({reason})");
        e.clock.advance(Duration::from_secs(30));
    }
    assert_eq!(e.proxy.metric("line_auth_proxy_jwks_keys").await, 1.0);
}
