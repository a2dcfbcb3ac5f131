//! No token, ever, in a log line, a metric or an error body — even at
//! `RUST_LOG=trace`, and through every failure path that formats an error
//! (the LINE verify URL carries the token in its query string).
//!
//! One test in this file: it installs the process-wide subscriber.
#![cfg(feature = "dev")]

mod support;

use std::time::Duration;

use line_auth_proxy::{LogFormat, init_tracing_with};
use support::*;

const SECRETS: &[&str] = &[
    "SECRETvalidTOKEN0001",
    "SECRETunknownTOKEN0002",
    "SECRETexpiredTOKEN0003",
    "SECRET5xxTOKEN0004",
    "SECRETtimeoutTOKEN0005",
    "SECRETgarbageTOKEN0006",
    "SECRET429TOKEN0007",
    "SECRETunreachableTOKEN0008",
    "SECRETupstreamDownTOKEN0009",
    "SECRETscopeTOKEN0010",
    "SECRETsessionTOKEN0011",
];

#[tokio::test]
async fn no_token_reaches_logs_metrics_or_bodies_even_at_trace() {
    let capture = Capture::default();
    init_tracing_with(
        LogFormat::Json,
        Some("trace,hyper=trace,hyper_util=trace,reqwest=trace,h2=trace,reqwest::connect=trace"),
        capture.clone(),
    );
    let mut bodies = String::new();
    let e = env("").await;
    let c = client();
    let mut call = async |e: &Env, token: &str| {
        let r = c.get(e.proxy.url("/api/x?q=1")).bearer_auth(token).send().await.unwrap();
        bodies.push_str(&format!("{:?}", r.headers()));
        bodies.push_str(&r.text().await.unwrap());
    };

    e.line.add_token(SECRETS[0], MockToken::new(CHANNEL, USER, "Brown"));
    call(&e, SECRETS[0]).await;
    call(&e, SECRETS[1]).await;
    let mut expired = MockToken::new(CHANNEL, USER, "Brown");
    expired.expired = true;
    e.line.add_token(SECRETS[2], expired);
    call(&e, SECRETS[2]).await;
    e.line.set_faults(verify_fails(Fault::Status(500)));
    call(&e, SECRETS[3]).await;
    e.line.set_faults(Faults { delay: Duration::from_millis(1200), ..Faults::default() });
    call(&e, SECRETS[4]).await;
    e.line.set_faults(verify_fails(Fault::Garbage));
    call(&e, SECRETS[5]).await;
    e.line.set_faults(Faults { profile: Some(Fault::Status(403)), ..Faults::default() });
    call(&e, SECRETS[9]).await;
    e.line.set_faults(verify_fails(Fault::Status(429)));
    call(&e, SECRETS[6]).await;
    let metrics = e.proxy.metrics().await;

    // LINE unreachable, and the upstream unreachable, each on a proxy of its own.
    let closed_guard = closed_port();
    let closed = closed_guard.addr;
    let upstream = RecordingUpstream::start().await;
    let dead_line = spawn_proxy(config(&config_text(&format!("http://{closed}"), &upstream.url(), ""))).await;
    let r = c.get(dead_line.url("/a")).bearer_auth(SECRETS[7]).send().await.unwrap();
    bodies.push_str(&r.text().await.unwrap());
    let line = MockLine::start().await.unwrap();
    line.add_token(SECRETS[8], MockToken::new(CHANNEL, USER, "Brown"));
    let dead_up = spawn_proxy(config(&config_text(&line.base_url(), &format!("http://{closed}"), ""))).await;
    let r = c.get(dead_up.url("/a")).bearer_auth(SECRETS[8]).send().await.unwrap();
    assert_eq!(r.status(), 502);
    bodies.push_str(&r.text().await.unwrap());
    // A session made from a token, and its cookie refused on a cross-site
    // POST: audit lines that must name neither.
    let key = support::sessions::key_file([7; 32]);
    line.add_token(SECRETS[10], MockToken::new(CHANNEL, USER, "Brown"));
    let sessions = config_text(&line.base_url(), &upstream.url(), &support::sessions::session_config(&[&key], ""));
    let sessions = spawn_proxy(config(&sessions)).await;
    let r = c.post(sessions.url("/auth/session")).bearer_auth(SECRETS[10]).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let cookie = support::sessions::cookie_pair(r.headers()["set-cookie"].to_str().unwrap());
    let r = c.post(sessions.url("/app/x")).header("cookie", &cookie).header("sec-fetch-site", "cross-site");
    assert_eq!(r.send().await.unwrap().status(), 403);
    sessions.stop().await;
    let metrics2 = dead_line.metrics().await + &dead_up.metrics().await;
    dead_line.stop().await;
    dead_up.stop().await;

    let logs = capture.text();
    // The capture works: access lines and LINE failure lines are there.
    assert!(logs.contains("\"target\":\"access\""), "no access log captured:\n{logs}");
    assert!(logs.contains("LINE Platform"), "no LINE failure line captured");
    // The audit stream is captured too (JSON logs: the same writer).
    for event in ["rejected", "session_created", "csrf_refused", "line_outage_started", "line_outage_ended"] {
        assert!(
            logs.contains(&format!("\"target\":\"audit\",\"event\":\"{event}\"")),
            "no {event} audit line:\n{logs}"
        );
    }
    let cookie_value = cookie.split_once('=').unwrap().1;
    assert!(!logs.contains(cookie_value), "a session cookie reached the logs");
    for secret in SECRETS {
        assert!(!logs.contains(secret), "a token reached the logs: {secret}");
        assert!(!metrics.contains(secret) && !metrics2.contains(secret), "a token reached the metrics: {secret}");
        assert!(!bodies.contains(secret), "a token reached a response: {secret}");
    }
    // Dependencies stay at warn whatever RUST_LOG says.
    for line in logs.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let target = v["target"].as_str().unwrap_or("");
        let level = v["level"].as_str().unwrap_or("");
        let dependency = ["hyper", "reqwest", "h2", "rustls"].iter().any(|d| target.starts_with(d));
        assert!(!(dependency && matches!(level, "DEBUG" | "TRACE")), "dependency log below warn: {line}");
    }
}
