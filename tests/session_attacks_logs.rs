//! No session cookie value and no sealed token in a log line, a metric or an
//! answer, at trace, through the exchange, session routes and their failures.
//! One test in this file: it installs the process-wide subscriber.
#![cfg(feature = "dev")]

mod support;

use std::time::Duration;

use line_auth_proxy::{LogFormat, init_tracing_with};
use support::*;

const SECRET: &str = "SECRETsessionTOKEN0001";

#[tokio::test]
async fn no_cookie_or_token_reaches_logs_in_session_paths() {
    let capture = Capture::default();
    init_tracing_with(LogFormat::Json, Some("trace,hyper=trace,reqwest=trace,h2=trace"), capture.clone());
    let dir = std::env::temp_dir().join(format!("lap-session-logs-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("k");
    std::fs::write(&key, [3u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let e = env(&format!(
        "[session]\nkey_files = [{:?}]\nrevalidate_seconds = 5\n[[routes]]\npath_prefix = \"/app/\"\nauth = \"session\"\n",
        key.display().to_string()
    ))
    .await;
    e.line.add_token(SECRET, MockToken::new(CHANNEL, USER, "Brown"));
    let c = client();
    let r = c.post(e.proxy.url("/auth/session")).bearer_auth(SECRET).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let pair = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let sealed = pair.split_once('=').unwrap().1.to_owned();
    let mut bodies = String::new();
    let send = async |req: reqwest::RequestBuilder, bodies: &mut String| {
        let r = req.send().await.unwrap();
        bodies.push_str(&format!("{:?}", r.headers()));
        bodies.push_str(&r.text().await.unwrap());
    };
    send(c.get(e.proxy.url("/app/x")).header("cookie", &pair), &mut bodies).await;
    send(c.post(e.proxy.url("/app/x")).header("cookie", &pair), &mut bodies).await;
    send(c.get(e.proxy.url("/app/x")).header("cookie", &pair).bearer_auth(SECRET), &mut bodies).await;
    send(c.get(e.proxy.url("/app/x")).header("cookie", format!("{pair}x")), &mut bodies).await;
    e.line.set_faults(verify_fails(Fault::Status(500)));
    e.clock.advance(Duration::from_secs(6));
    send(c.get(e.proxy.url("/app/x")).header("cookie", &pair), &mut bodies).await;
    send(c.post(e.proxy.url("/auth/session")).bearer_auth(SECRET), &mut bodies).await;
    e.line.set_faults(Faults::default());
    e.line.remove_token(SECRET);
    e.clock.advance(Duration::from_secs(6));
    send(c.get(e.proxy.url("/app/x")).header("cookie", &pair), &mut bodies).await;
    let metrics = e.proxy.metrics().await;
    let logs = capture.text();
    assert!(logs.contains("\"target\":\"access\""), "no access log captured");
    // The sealed value in full, and any 24-character piece of it.
    let pieces: Vec<&str> = (3..sealed.len().saturating_sub(24)).step_by(12).map(|i| &sealed[i..i + 24]).collect();
    for secret in std::iter::once(SECRET).chain(std::iter::once(sealed.as_str())).chain(pieces) {
        assert!(!logs.contains(secret), "reached the logs: {secret}");
        assert!(!metrics.contains(secret), "reached the metrics: {secret}");
        assert!(!bodies.contains(secret), "reached an answer: {secret}");
    }
}
