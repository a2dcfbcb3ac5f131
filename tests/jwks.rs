//! LINE's JWKS in local mode: loaded before readiness, refetched once on an
//! unknown `kid` (rate-limited however many arrive), the last good set kept
//! when LINE fails.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

fn claims(nonce: &str) -> serde_json::Value {
    MockLine::id_claims(CHANNEL, USER, Some(nonce))
}

#[tokio::test]
async fn key_rotation_is_picked_up_with_one_refetch() {
    let e = login_env("", "").await;
    assert_eq!(e.line.jwks_calls(), 1, "loaded once at start");
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_jwks_keys"), 1.0, "{m}");
    let new_kid = e.line.rotate_key();
    assert_eq!(e.line.current_kid(), new_kid);
    let token = e.line.sign_es256(&claims(&e.nonce().await));
    assert_eq!(e.login(&token).await, 200);
    assert_eq!(e.line.jwks_calls(), 2, "one refetch for the unknown kid");
    // The new key is now known: no further fetch.
    assert_eq!(e.login(&e.line.sign_es256(&claims(&e.nonce().await))).await, 200);
    assert_eq!(e.line.jwks_calls(), 2);
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_at_most_one_fetch_per_window() {
    let e = login_env("", "").await;
    let nonce = e.nonce().await;
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let kid = format!("{i:064x}");
        let token = e.line.sign_es256_with_header(&json!({"alg": "ES256", "kid": kid}), &claims(&nonce));
        let (c, url) = (c.clone(), e.proxy.url("/login"));
        tasks.push(tokio::spawn(async move { c.post(url).bearer_auth(token).send().await.unwrap().status().as_u16() }));
        if tasks.len() == 100 {
            for t in tasks.drain(..) {
                assert_eq!(t.await.unwrap(), 401);
            }
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    // One fetch at start, at most one more in this 30-second window.
    assert!(e.line.jwks_calls() <= 2, "{} JWKS fetches", e.line.jwks_calls());
    assert_eq!(e.upstream.hits(), 0);
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_auth_rejections_total{reason=\"id_token_unknown_kid\"}"), 1000.0, "{m}");
    // The nonce survived all of it.
    assert_eq!(e.login(&e.line.sign_es256(&claims(&nonce))).await, 200);
}

#[tokio::test]
async fn jwks_down_at_start_means_not_ready_and_503() {
    let line = MockLine::start().await.unwrap();
    line.set_faults(Faults { jwks: Some(Fault::Status(500)), ..Faults::default() });
    let upstream = RecordingUpstream::start().await;
    let text = config_text_line(
        &line.base_url(),
        &upstream.url(),
        &format!("jwks_url = \"{}\"\n", line.jwks_url()),
        "[[routes]]\npath_prefix = \"/login\"\nauth = \"id_token\"\n",
    );
    let proxy = spawn_proxy_unready(config(&text)).await;
    let c = client();
    // Wait for the first (failed) fetch.
    while line.jwks_calls() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(c.get(proxy.admin_url("/readyz")).send().await.unwrap().status(), 503);
    // A login now cannot be verified: fail closed.
    let nonce: serde_json::Value = c.get(proxy.url("/auth/nonce")).send().await.unwrap().json().await.unwrap();
    let token = line.sign_es256(&claims(nonce["nonce"].as_str().unwrap()));
    let r = c.post(proxy.url("/login")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(upstream.hits(), 0);
    // LINE recovers: the retry loads the set and readiness follows.
    line.set_faults(Faults::default());
    let ready = eventually_status(&proxy.admin_url("/readyz"), 200, 10).await;
    assert!(ready, "never became ready after the JWKS came back");
    let r = c.post(proxy.url("/login")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn jwks_down_later_keeps_the_last_good_set() {
    let e = login_env("", "").await;
    e.line.set_faults(Faults { jwks: Some(Fault::Status(503)), ..Faults::default() });
    // A token with the old key still verifies.
    assert_eq!(e.login(&e.line.sign_es256(&claims(&e.nonce().await))).await, 200);
    // A rotated key cannot be learned while LINE fails: 503 (LINE unavailable),
    // not let through, and not a 401 that blames the token — on every retry.
    e.line.rotate_key();
    let token = e.line.sign_es256(&claims(&e.nonce().await));
    assert_eq!(e.login(&token).await, 503);
    assert_eq!(e.login(&token).await, 503);
    assert_eq!(e.upstream.hits(), 1);
    // A kid nobody knows, while the old set still verifies old tokens: also 503.
    assert_eq!(e.login(&e.line.sign_es256(&claims(&e.nonce().await))).await, 503);
    assert_eq!(e.login(&e.line.sign_es256(&claims(&e.nonce().await))).await, 503);
    assert_eq!(client().get(e.proxy.admin_url("/readyz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn retired_keys_stop_verifying_after_a_refetch() {
    let e = login_env("", "").await;
    let old_token = e.line.sign_es256(&claims(&e.nonce().await));
    e.line.rotate_key();
    e.line.retire_old_keys();
    // A new-kid token triggers the refetch; the old kid is gone from the set.
    assert_eq!(e.login(&e.line.sign_es256(&claims(&e.nonce().await))).await, 200);
    assert_eq!(e.login(&old_token).await, 401);
}
