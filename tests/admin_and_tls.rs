//! The admin listener (`/healthz`, `/readyz`, `/metrics`, never on the proxy
//! port) and rustls termination on the proxy listener.
#![cfg(feature = "dev")]

mod support;

use support::*;

#[tokio::test]
async fn admin_endpoints_answer_on_their_own_listener_only() {
    let e = env("").await;
    let c = client();
    assert_eq!(c.get(e.proxy.admin_url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(e.proxy.admin_url("/readyz")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(e.proxy.admin_url("/nope")).send().await.unwrap().status(), 404);
    let r = c.get(e.proxy.admin_url("/metrics")).send().await.unwrap();
    assert!(r.headers()["content-type"].to_str().unwrap().contains("openmetrics-text"));
    let text = r.text().await.unwrap();
    for family in [
        "line_auth_proxy_requests",
        "line_auth_proxy_auth_duration_seconds",
        "line_auth_proxy_line_requests",
        "line_auth_proxy_line_request_duration_seconds",
        "line_auth_proxy_cache_hits",
        "line_auth_proxy_cache_misses",
        "line_auth_proxy_cache_coalesced",
        "line_auth_proxy_cache_entries",
        "line_auth_proxy_upstream_duration_seconds",
        "line_auth_proxy_upstream_responses",
        "line_auth_proxy_open_connections",
        "line_auth_proxy_auth_rejections",
        "line_auth_proxy_auth_unavailable",
    ] {
        assert!(text.contains(&format!("# TYPE {family} ")), "{family} missing from /metrics:\n{text}");
    }
    // On the proxy port, /metrics and /readyz are just paths: they need a token
    // and, with one, go to the upstream.
    let r = c.get(e.proxy.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c.get(e.proxy.url("/metrics")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "upstream ok");
    assert_eq!(e.upstream.last().path_and_query, "/metrics");
}

#[tokio::test]
async fn latency_and_connection_metrics_move() {
    let e = env("").await;
    let c = client();
    for _ in 0..3 {
        c.get(e.proxy.url("/a")).bearer_auth(TOKEN).send().await.unwrap();
    }
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_auth_duration_seconds_count{source=\"line\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_auth_duration_seconds_count{source=\"cache\"}"), 2.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_upstream_responses_total{class=\"2xx\"}"), 3.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_upstream_duration_seconds_count"), 3.0, "{m}");
    assert!(metric(&m, "line_auth_proxy_open_connections") >= 1.0, "{m}");
}

#[tokio::test]
async fn tls_termination_serves_http1_and_h2() {
    let dir = std::env::temp_dir().join(format!("lap-tls-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();

    let line = MockLine::start().await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let text = config_text(&line.base_url(), &upstream.url(), "").replace(
        "shutdown_grace_seconds = 5",
        &format!("shutdown_grace_seconds = 5\ntls_cert_file = {:?}\ntls_key_file = {:?}", cert_path, key_path),
    );
    let proxy = spawn_proxy(config(&text)).await;
    let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    let url = format!("https://localhost:{}/api/x", proxy.addr.port());
    for http2 in [false, true] {
        let mut b = reqwest::Client::builder().no_proxy().add_root_certificate(root.clone());
        if http2 {
            b = b.http2_prior_knowledge();
        } else {
            b = b.http1_only();
        }
        let tls_client = b.resolve("localhost", proxy.addr).build().unwrap();
        let r = tls_client.get(&url).bearer_auth(TOKEN).header("x-line-user-id", "Uevil").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), if http2 { reqwest::Version::HTTP_2 } else { reqwest::Version::HTTP_11 });
        let seen = upstream.last();
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
        assert_eq!(seen.headers["x-line-user-id"], USER);
        let r = tls_client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    assert_eq!(upstream.hits(), 2);
    // Plain HTTP on the TLS port gets nowhere.
    let answer = raw(proxy.addr, b"GET /api/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(upstream.hits(), 2);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tls_files_are_checked_at_load_time() {
    let text = config_text("http://127.0.0.1:1", "http://127.0.0.1:2", "")
        .replace("shutdown_grace_seconds = 5", "tls_cert_file = \"/nonexistent.crt\"");
    let problems = line_auth_proxy::config::load_str(&text, std::iter::empty()).unwrap_err().to_string();
    assert!(problems.contains("server.tls_key_file"), "{problems}");
    assert!(problems.contains("server.tls_cert_file"), "{problems}");
}
