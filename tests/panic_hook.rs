//! A panic anywhere in the process — here in a detached task, as hyper's
//! per-connection and per-stream tasks are — is never swallowed once the panic
//! hook is installed (the binary installs it): the proxy logs it, `/readyz`
//! turns 503 and `serve` returns an error, which the binary turns into exit 1.
//! One test in this file: the hook is process-wide.
#![cfg(feature = "dev")]

mod support;

use line_auth_proxy::{LogFormat, RunError, init_tracing_with, install_panic_hook};
use support::*;

#[tokio::test]
async fn a_panic_in_any_task_stops_the_proxy() {
    let capture = Capture::default();
    init_tracing_with(LogFormat::Json, None, capture.clone());
    install_panic_hook();
    let e = env("").await;
    assert_eq!(e.status("/a", TOKEN).await, 200);
    let mut proxy = e.proxy;
    let served = proxy.serving_task();
    let _ = tokio::spawn(async { panic!("a bug in a connection task") }).await;
    let result = tokio::time::timeout(std::time::Duration::from_secs(5), served).await.expect("serve did not stop");
    match result.unwrap() {
        Err(RunError::TaskFailed { why, .. }) => assert!(why.contains("a bug in a connection task"), "{why}"),
        other => panic!("expected a task failure, got {other:?}"),
    }
    // Readiness went 503 before serve returned; the admin listener may be gone by now.
    if let Ok(r) = client().get(proxy.admin_url("/readyz")).send().await {
        assert_eq!(r.status(), 503);
    }
    let logs = capture.text();
    assert!(logs.contains("a task panicked; the proxy stops"), "{logs}");
    assert!(logs.contains("a task of the proxy failed; exiting"), "{logs}");
}
