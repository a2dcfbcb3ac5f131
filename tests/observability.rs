//! What an operator's Prometheus and probes see: build and configuration
//! info, the standard process metrics, the request-duration histogram by
//! route (never by raw path) and status class, readiness per dependency,
//! and a `/readyz` body that says what it waits for.
#![cfg(feature = "dev")]

mod support;

use std::time::Duration;

use support::*;

/// The real binary on a configuration, JSON logs at `info`, its stderr read
/// line by line; killed if the test fails before [`Binary::stop`].
struct Binary {
    child: Option<std::process::Child>,
    path: std::path::PathBuf,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Binary {
    fn start(text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("lap-observability-{}.toml", rand::random::<u64>()));
        std::fs::write(&path, text).unwrap();
        let mut child = support::process::spawn_binary(&path);
        let lines = support::process::stderr_lines(&mut child);
        Self { child: Some(child), path, lines, seen: Vec::new() }
    }

    /// The next line with `message` that passes `also`.
    async fn line(&mut self, message: &str, also: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        support::process::wait_for_line(&mut self.lines, &mut self.seen, message, also).await
    }

    fn signal(&self, signal: &str) {
        support::process::kill(self.child.as_ref().expect("running"), signal);
    }

    /// SIGTERM; asserts exit 0; every line the process wrote.
    async fn stop(mut self) -> Vec<String> {
        let mut child = self.child.take().expect("running");
        support::process::kill(&child, "TERM");
        let code = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
        assert_eq!(code.code(), Some(0));
        while let Some(line) = self.lines.recv().await {
            self.seen.push(line);
        }
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn series_value(metrics: &str, prefix: &str) -> Option<f64> {
    metrics.lines().find(|l| l.starts_with(prefix))?.rsplit(' ').next()?.parse().ok()
}

#[tokio::test]
async fn metrics_show_build_config_process_and_request_durations_by_route() {
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let routes = "[[routes]]\npath_prefix = \"/api/\"\nauth = \"access_token\"\n\
                  [[routes]]\npath_prefix = \"/public/\"\nauth = \"none\"\n\
                  [[routes]]\npath_prefix = \"/login\"\nauth = \"id_token\"\n";
    let jwks = format!("jwks_url = \"{}\"\n", line.jwks_url());
    let text = config_text_line(&line.base_url(), &upstream.url(), &jwks, routes);
    let proxy = spawn_proxy_with(config(&text), &clock).await;
    let c = client();
    for path in ["/api/orders/1", "/api/orders/2", "/api/orders/3"] {
        assert_eq!(c.get(proxy.url(path)).bearer_auth(TOKEN).send().await.unwrap().status(), 200);
    }
    assert_eq!(c.get(proxy.url("/api/x")).send().await.unwrap().status(), 401);
    assert_eq!(c.get(proxy.url("/public/a")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(proxy.url("/elsewhere")).bearer_auth(TOKEN).send().await.unwrap().status(), 200);
    assert_eq!(c.get(proxy.url("/auth/nonce")).send().await.unwrap().status(), 200);
    let m = proxy.metrics().await;

    let build = m.lines().find(|l| l.starts_with("line_auth_proxy_build_info{")).expect(&m);
    assert!(build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{build}");
    let revision = build.split("revision=\"").nth(1).unwrap().split('"').next().unwrap();
    assert!(
        revision == "unknown" || (revision.len() == 12 && revision.bytes().all(|b| b.is_ascii_hexdigit())),
        "{build}"
    );
    assert!(build.ends_with(" 1"), "{build}");
    let config_line = m.lines().find(|l| l.starts_with("line_auth_proxy_config_info{hash=\"")).expect(&m);
    let hash = config_line.split('"').nth(1).unwrap();
    assert!(hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()), "{config_line}");

    // Process metrics under their standard names, with plausible values.
    assert!(series_value(&m, "process_cpu_seconds_total").unwrap() > 0.0, "{m}");
    assert!(series_value(&m, "process_resident_memory_bytes").unwrap() > 1_000_000.0);
    assert!(series_value(&m, "process_open_fds").unwrap() >= 3.0);
    assert!(series_value(&m, "process_max_fds").unwrap() >= 64.0);
    let started = series_value(&m, "process_start_time_seconds").unwrap();
    let now = Clock::system().unix_seconds() as f64;
    assert!(started <= now + 1.0 && started > now - 3600.0 * 24.0, "{started}");
    assert!(m.trim_end().ends_with("# EOF"), "one EOF, at the end");
    assert_eq!(m.matches("# EOF").count(), 1);

    // The request histogram: by configured prefix, never by path.
    let count = |route: &str, class: &str| {
        metric(&m, &format!("line_auth_proxy_request_duration_seconds_count{{route=\"{route}\",class=\"{class}\"}}"))
    };
    assert_eq!(count("/api/", "2xx"), 3.0, "{m}");
    assert_eq!(count("/api/", "4xx"), 1.0);
    assert_eq!(count("/public/", "2xx"), 1.0);
    assert_eq!(count("default", "2xx"), 1.0);
    assert_eq!(count("proxy_endpoint", "2xx"), 1.0, "the nonce endpoint");
    assert!(!m.contains("/api/orders"), "a raw path became a label");
    // Its first bucket is below a cached hop (5 µs), not the 100 µs of the LINE histograms.
    let first = "line_auth_proxy_request_duration_seconds_bucket{le=\"0.000005\",route=\"/api/\",class=\"2xx\"}";
    assert!(m.contains(first), "{m}");
    // Every series of a route exists before its first request (no gaps in a dashboard).
    assert!(m.contains("line_auth_proxy_request_duration_seconds_count{route=\"/public/\",class=\"5xx\"} 0"), "{m}");
    // Draining is a dependency of every proxy, the JWKS of this one (local
    // ID-token checks); no Redis is configured, so no Redis series.
    assert_eq!(metric(&m, "line_auth_proxy_dependency_ready{dependency=\"draining\"}"), 1.0);
    assert_eq!(metric(&m, "line_auth_proxy_dependency_ready{dependency=\"jwks\"}"), 1.0);
    assert!(!m.contains("dependency=\"nonce_store\"") && !m.contains("dependency=\"shared_cache\""), "{m}");
}

#[tokio::test]
async fn readyz_names_what_it_waits_for_and_the_gauge_follows() {
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
    assert!(eventually(Duration::from_secs(5), || async { line.jwks_calls() >= 1 }).await, "no first fetch");
    let r = client().get(proxy.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert!(body.starts_with("not ready\n") && body.contains("jwks: no key set from LINE's JWKS yet"), "{body}");
    assert!(!body.contains("draining"), "{body}");
    let m = proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_dependency_ready{dependency=\"jwks\"}"), 0.0, "{m}");
    assert!(m.contains("line_auth_proxy_dependency_ready{dependency=\"jwks\"} 0"), "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_dependency_ready{dependency=\"draining\"}"), 1.0);
    // LINE recovers: the next fetch (5 s later on the proxy's clock) loads the set.
    line.set_faults(Faults::default());
    clock.advance(Duration::from_secs(6));
    assert!(eventually_status(&proxy.admin_url("/readyz"), 200, 10).await, "never ready");
    let body = client().get(proxy.admin_url("/readyz")).send().await.unwrap().text().await.unwrap();
    assert_eq!(body, "ready\n");
    assert_eq!(proxy.metric("line_auth_proxy_dependency_ready{dependency=\"jwks\"}").await, 1.0);
}

/// The real binary, LINE's JWKS out of reach (nothing listens there): it says
/// it listens, says what it waits for, and never that it is ready.
#[tokio::test]
async fn a_proxy_that_cannot_load_the_jwks_logs_listening_and_what_it_waits_for_never_ready() {
    // A port that refuses: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let upstream = RecordingUpstream::start().await;
    let text = config_text_line(
        &format!("http://{closed}"),
        &upstream.url(),
        &format!("jwks_url = \"http://{closed}/oauth2/v2.1/certs\"\n"),
        "[[routes]]\npath_prefix = \"/login\"\nauth = \"id_token\"\n",
    );
    let mut proxy = Binary::start(&text);
    let listening = proxy.line("line-auth-proxy listening", |_| true).await;
    let admin = listening["admin"].as_str().unwrap().to_owned();
    let waiting = proxy.line("waiting for a dependency", |v| v["dependency"] == "jwks").await;
    assert!(waiting["why"].as_str().unwrap().contains("JWKS"), "{waiting}");
    // After the fetch has failed: still not ready, and never said to be.
    proxy.line("LINE Platform call failed", |v| v["endpoint"] == "jwks").await;
    let r = client().get(format!("http://{admin}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("jwks:"));
    let seen = proxy.stop().await;
    assert!(!seen.iter().any(|l| l.contains("\"line-auth-proxy ready\"")), "{seen:#?}");
}

/// Every access line of a real process, JSON, for `text` with `requests` run against it.
async fn access_lines(text: &str, requests: impl AsyncFnOnce(String)) -> Vec<serde_json::Value> {
    let mut proxy = Binary::start(text);
    let ready = proxy.line("line-auth-proxy ready", |_| true).await;
    requests(format!("http://{}", ready["listen"].as_str().unwrap())).await;
    let seen = proxy.stop().await;
    seen.iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["target"] == "access")
        .collect()
}

#[tokio::test]
async fn access_lines_carry_client_route_agent_bytes_latencies_and_a_hashed_user() {
    let line = MockLine::start().await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let routes = "[[routes]]\npath_prefix = \"/echo-body\"\nauth = \"access_token\"\n";
    let text = config_text(&line.base_url(), &upstream.url(), routes)
        .replace("shutdown_grace_seconds = 5", "shutdown_grace_seconds = 5\ntrusted_proxies = [\"127.0.0.1/32\"]");
    let lines = access_lines(&text, async |proxy| {
        let c = client();
        let r = c
            .post(format!("{proxy}/echo-body/x"))
            .bearer_auth(TOKEN)
            .header("user-agent", format!("LineApp/13.0 {}", "x".repeat(400)))
            .header("x-forwarded-for", "203.0.113.9")
            .body("0123456789")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "0123456789");
        assert_eq!(c.get(format!("{proxy}/echo-body/y")).send().await.unwrap().status(), 401);
    })
    .await;
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let ok = &lines[0];
    assert_eq!(ok["route"], "/echo-body");
    assert_eq!(ok["path"], "/echo-body/x");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["client"], "203.0.113.9", "the trusted peer's X-Forwarded-For hop");
    assert!(ok["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{ok}");
    let agent = ok["user_agent"].as_str().unwrap();
    assert!(agent.starts_with("LineApp/13.0 ") && agent.chars().count() == 256, "{agent}");
    assert_eq!(ok["request_bytes"], 10);
    assert_eq!(ok["response_bytes"], 10);
    let hashed = {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(USER.as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    assert_eq!(ok["user_id"], hashed.as_str(), "log.user_id defaults to hashed");
    for key in ["duration_s", "upstream_s"] {
        let v = ok[key].as_f64().unwrap_or_else(|| panic!("{key}: {ok}"));
        assert!(v > 0.0 && v < 5.0, "{key}: {v}");
        let text = ok[key].to_string();
        assert!(text.split('.').nth(1).is_none_or(|d| d.len() <= 6), "{key} has more than microseconds: {text}");
    }
    assert!(ok["duration_s"].as_f64() >= ok["upstream_s"].as_f64());
    assert!(ok["latency_us"].as_u64().is_some());
    // A refused request: no user, no upstream time, nothing read of its body.
    let refused = &lines[1];
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["outcome"], "missing_credential");
    assert!(refused.get("user_id").is_none() && refused.get("upstream_s").is_none(), "{refused}");
    assert_eq!(refused["request_bytes"], 0);
    assert!(refused["response_bytes"].as_u64().unwrap() > 0, "the JSON error body");
    let text_user = serde_json::to_string(&lines).unwrap();
    assert!(!text_user.contains(USER), "the plain user id is in a line: {text_user}");
    assert!(!text_user.contains(TOKEN));
}

#[tokio::test]
async fn log_user_id_plain_and_off() {
    let line = MockLine::start().await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    for (mode, expected) in [("plain", Some(USER)), ("off", None)] {
        let text = format!("{}\n[log]\nuser_id = \"{mode}\"\n", config_text(&line.base_url(), &upstream.url(), ""));
        let lines = access_lines(&text, async |proxy| {
            assert_eq!(client().get(format!("{proxy}/a")).bearer_auth(TOKEN).send().await.unwrap().status(), 200);
        })
        .await;
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["user_id"].as_str(), expected, "{mode}: {}", lines[0]);
    }
}

/// LINE out of reach: the 503's WARN line names the host, the class of the
/// failure and the request it was for, and no token.
#[tokio::test]
async fn a_failed_line_call_names_its_host_cause_and_request() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    line_down(&format!("http://{closed}"), &closed.to_string(), "connect_refused").await;
    // A name that resolves nowhere (`.invalid` never does): the DNS failure
    // the operator could not see.
    line_down("https://lap-test.invalid", "lap-test.invalid", "dns").await;
}

async fn line_down(api_base_url: &str, host: &str, cause: &str) {
    let upstream = RecordingUpstream::start().await;
    let mut proxy = Binary::start(&config_text(api_base_url, &upstream.url(), ""));
    let ready = proxy.line("line-auth-proxy ready", |_| true).await;
    let listen = ready["listen"].as_str().unwrap().to_owned();
    let r = client().get(format!("http://{listen}/x")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let failed = proxy.line("LINE Platform call failed", |_| true).await;
    assert_eq!(failed["level"], "WARN", "{failed}");
    assert_eq!(failed["host"], host, "{failed}");
    assert_eq!(failed["cause"], cause, "{failed}");
    assert_eq!(failed["spans"][0]["name"], "line", "{failed}");
    assert_eq!(failed["spans"][0]["request_id"], request_id.as_str(), "{failed}");
    let seen = proxy.stop().await;
    assert!(!seen.iter().any(|l| l.contains(TOKEN)), "{seen:#?}");
}

/// Redis out of reach: a nonce request's 503 WARN line names the Redis
/// address (without credentials), the cause class and the request.
#[tokio::test]
async fn a_failed_redis_call_names_its_cause_and_request() {
    let line = MockLine::start().await.unwrap();
    let upstream = RecordingUpstream::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let extra = format!(
        "[[routes]]\npath_prefix = \"/login\"\nauth = \"id_token\"\n[nonce]\nstore = \"redis\"\nredis_url = \"redis://:pw-secret@{closed}\"\nredis_timeout_ms = 2000\n{}",
        mac_key_line()
    );
    let text =
        config_text_line(&line.base_url(), &upstream.url(), &format!("jwks_url = \"{}\"\n", line.jwks_url()), &extra);
    let mut proxy = Binary::start(&text);
    let listening = proxy.line("line-auth-proxy listening", |_| true).await;
    let listen = listening["listen"].as_str().unwrap().to_owned();
    let r = client().get(format!("http://{listen}/auth/nonce")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let failed = proxy
        .line("Redis call failed", |v| v["op"] == "nonce_issue" && v["spans"][0]["request_id"] == request_id.as_str())
        .await;
    assert_eq!(failed["level"], "WARN", "{failed}");
    assert_eq!(failed["cause"], "connect_refused", "{failed}");
    assert_eq!(failed["spans"][0]["name"], "redis", "{failed}");
    assert!(failed["redis"].as_str().unwrap().contains(&closed.port().to_string()), "{failed}");
    let seen = proxy.stop().await;
    assert!(!seen.iter().any(|l| l.contains("pw-secret")), "{seen:#?}");
    assert!(upstream.requests().is_empty(), "the upstream was reached");
}

/// The lines of an audit file, parsed.
fn audit_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// `log.audit_file` on the real binary: one JSON line per decision with its
/// documented fields, nothing on stderr, no token or cookie; SIGHUP moves
/// new lines to a fresh file at the path; the drain writes out the rest.
#[tokio::test]
async fn the_audit_file_has_a_line_per_decision_and_is_reopened_on_sighup() {
    use support::sessions::{cookie_pair, key_file, session_config};
    let line = MockLine::start().await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let fresh = "FRESHtokenAFTERoutage01";
    line.add_token(fresh, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let dir = std::env::temp_dir().join(format!("lap-audit-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let audit = dir.join("audit.jsonl");
    let routes = format!(
        "[log]\naudit_file = {:?}\n{}[[routes]]\npath_prefix = \"/api/\"\nauth = \"access_token\"\n",
        audit.display().to_string(),
        session_config(&[&key_file([3; 32])], "")
    );
    let mut proxy = Binary::start(&config_text(&line.base_url(), &upstream.url(), &routes));
    let ready = proxy.line("line-auth-proxy ready", |_| true).await;
    let base = format!("http://{}", ready["listen"].as_str().unwrap());
    let c = client();
    let id = |r: &reqwest::Response| r.headers()["x-request-id"].to_str().unwrap().to_owned();

    let r = c.post(format!("{base}/auth/session")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let (created_id, cookie) = (id(&r), cookie_pair(r.headers()["set-cookie"].to_str().unwrap()));
    let r = c.get(format!("{base}/api/a")).bearer_auth("NOTaTOKENlineKNOWS").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let rejected_id = id(&r);
    let r = c
        .post(format!("{base}/app/transfer"))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let csrf_id = id(&r);
    line.set_faults(Faults {
        verify: Some(Fault::Status(500)),
        profile: Some(Fault::Status(500)),
        ..Faults::default()
    });
    let r = c.get(format!("{base}/api/b")).bearer_auth("ANOTHERtokenDURINGoutage").send().await.unwrap();
    assert_eq!(r.status(), 503);
    let outage_id = id(&r);
    // Log rotation: the file moved away, then SIGHUP.
    let rotated = dir.join("audit.jsonl.1");
    std::fs::rename(&audit, &rotated).unwrap();
    proxy.signal("HUP");
    proxy.line("audit file reopened", |_| true).await;
    line.set_faults(Faults::default());
    let r = c.get(format!("{base}/api/c")).bearer_auth(fresh).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let recovered_id = id(&r);
    let stderr = proxy.stop().await;

    let old = audit_lines(&rotated);
    let events: Vec<&str> = old.iter().map(|l| l["event"].as_str().unwrap()).collect();
    // Verify and profile both failed: an outage of each (their order is the calls').
    assert_eq!(events[..4], ["session_created", "rejected", "csrf_refused", "line_outage_started"], "{old:#?}");
    assert_eq!(events[4..], ["line_outage_started"], "{old:#?}");
    let hash = {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(USER.as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let created = &old[0];
    assert_eq!(created["user_id"], hash.as_str(), "hashed by default: {created}");
    assert_eq!(created["channel"], CHANNEL);
    assert_eq!(created["request_id"], created_id.as_str());
    assert_eq!(created["route"], "proxy_endpoint");
    assert_eq!(created["client"], "127.0.0.1");
    assert_eq!((created["target"].as_str(), created["level"].as_str()), (Some("audit"), Some("INFO")));
    assert!(created["timestamp"].as_str().unwrap().ends_with('Z'), "{created}");
    assert!(created.get("reason").is_none(), "{created}");
    let rejected = &old[1];
    assert_eq!((rejected["reason"].as_str(), rejected["route"].as_str()), (Some("token_invalid"), Some("/api/")));
    assert_eq!((rejected["status"].as_u64(), rejected["request_id"].as_str()), (Some(401), Some(&*rejected_id)));
    assert!(rejected.get("user_id").is_none() && rejected.get("channel").is_none(), "{rejected}");
    let csrf = &old[2];
    assert_eq!((csrf["reason"].as_str(), csrf["route"].as_str()), (Some("cross_site_request"), Some("/app/")));
    assert_eq!(csrf["request_id"], csrf_id.as_str());
    let mut endpoints = Vec::new();
    for outage in &old[3..] {
        assert_eq!(outage["reason"], "line_server_error");
        assert_eq!(outage["request_id"], outage_id.as_str(), "the request whose verification noticed it");
        endpoints.push(outage["endpoint"].as_str().unwrap());
    }
    endpoints.sort();
    assert_eq!(endpoints, ["profile", "verify"]);
    let new = audit_lines(&audit);
    let mut ended: Vec<&str> = new
        .iter()
        .map(|l| {
            assert_eq!(
                (l["event"].as_str(), l["request_id"].as_str()),
                (Some("line_outage_ended"), Some(&*recovered_id))
            );
            l["endpoint"].as_str().unwrap()
        })
        .collect();
    ended.sort();
    assert_eq!(ended, ["profile", "verify"], "{new:#?}");
    // The file alone has them; no token, cookie or user id anywhere in it.
    assert!(!stderr.iter().any(|l| l.contains("\"target\":\"audit\"")), "audit lines on stderr");
    let written = std::fs::read_to_string(&rotated).unwrap() + &std::fs::read_to_string(&audit).unwrap();
    let cookie_value = cookie.split_once('=').unwrap().1;
    for secret in [TOKEN, fresh, "NOTaTOKENlineKNOWS", "ANOTHERtokenDURINGoutage", cookie_value, USER] {
        assert!(!written.contains(secret), "{secret} in the audit file");
    }
    // No refused request reached the upstream: only the one after the outage.
    let forwarded: Vec<String> = upstream.requests().into_iter().map(|r| r.path_and_query).collect();
    assert_eq!(forwarded, ["/api/c"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// W3C trace context: a valid `traceparent` (and its `tracestate`) reaches
/// the upstream unchanged and its trace id is in the access line; an invalid
/// one is removed with its `tracestate`; none is made up when none came.
#[tokio::test]
async fn a_valid_traceparent_goes_upstream_unchanged_and_into_the_access_line() {
    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let line = MockLine::start().await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let text = config_text(&line.base_url(), &upstream.url(), "");
    let lines = access_lines(&text, async |proxy| {
        let c = client();
        let get = |traceparent: Option<&str>| {
            let mut r = c.get(format!("{proxy}/api/x")).bearer_auth(TOKEN).header("tracestate", "congo=t61rcWkgMzE");
            if let Some(t) = traceparent {
                r = r.header("traceparent", t);
            }
            r.send()
        };
        assert_eq!(get(Some(PARENT)).await.unwrap().status(), 200);
        assert_eq!(get(Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01")).await.unwrap().status(), 200);
        assert_eq!(c.get(format!("{proxy}/api/y")).bearer_auth(TOKEN).send().await.unwrap().status(), 200);
    })
    .await;
    let seen = upstream.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].headers["traceparent"], PARENT);
    assert_eq!(seen[0].headers["tracestate"], "congo=t61rcWkgMzE");
    for r in &seen[1..] {
        assert!(r.headers.get("traceparent").is_none() && r.headers.get("tracestate").is_none(), "{:?}", r.headers);
    }
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert_eq!(lines[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(lines[1].get("trace_id").is_none() && lines[2].get("trace_id").is_none(), "{lines:#?}");
}

/// A collector that refuses connections is named once (host and cause
/// class), the requests go on, and its coming up is logged too.
#[cfg(feature = "otel")]
#[tokio::test]
async fn an_otel_collector_that_is_down_is_logged_once_and_so_is_its_recovery() {
    let line = MockLine::start().await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let collector = closed_port();
    let addr = collector.addr;
    let extra = format!("[otel]\nendpoint = \"http://{addr}\"\nsampling_ratio = 1.0\n");
    let mut proxy = Binary::start(&config_text(&line.base_url(), &upstream.url(), &extra));
    let ready = proxy.line("line-auth-proxy ready", |_| true).await;
    let listen = ready["listen"].as_str().unwrap().to_owned();
    let get = || client().get(format!("http://{listen}/x")).bearer_auth(TOKEN).send();
    assert_eq!(get().await.unwrap().status(), 200);
    let failing =
        proxy.line("OpenTelemetry export failing; spans are dropped until the collector answers", |_| true).await;
    assert_eq!(failing["level"], "WARN", "{failing}");
    assert_eq!(failing["collector"], addr.to_string(), "{failing}");
    assert_eq!(failing["cause"], "connect_refused", "{failing}");
    // The collector comes up: every export answered 200.
    let listener = collector.listen();
    let served = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                        bytes::Bytes::new(),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    assert_eq!(get().await.unwrap().status(), 200);
    let recovered = proxy.line("OpenTelemetry export recovered", |_| true).await;
    assert_eq!(recovered["level"], "INFO", "{recovered}");
    let seen = proxy.stop().await;
    served.abort();
    let failing = seen.iter().filter(|l| l.contains("OpenTelemetry export failing")).count();
    assert_eq!(failing, 1, "one line per outage, not one per batch or retry: {seen:#?}");
    assert_eq!(upstream.hits(), 2);
}

#[tokio::test]
async fn every_log_line_is_written_out_before_the_process_exits() {
    let line = MockLine::start().await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let mut proxy = Binary::start(&config_text(&line.base_url(), &upstream.url(), ""));
    let ready = proxy.line("line-auth-proxy ready", |_| true).await;
    let listen = ready["listen"].as_str().unwrap().to_owned();
    let c = client();
    for _ in 0..300 {
        assert_eq!(c.get(format!("http://{listen}/x")).bearer_auth(TOKEN).send().await.unwrap().status(), 200);
    }
    // SIGTERM right after the last answer: its line (buffered a few
    // milliseconds) is still written, before the drain's own lines.
    let lines = proxy.stop().await;
    let parsed: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(parsed.iter().filter(|l| l["target"] == "access").count(), 300);
    assert!(parsed.iter().any(|l| l["message"] == "stopped accepting; draining in-flight requests"));
}

#[tokio::test]
async fn a_stalled_stderr_drops_log_lines_counts_them_and_holds_up_no_request() {
    use std::io::BufRead;
    let line = MockLine::start().await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let path = std::env::temp_dir().join(format!("lap-stalled-{}.toml", rand::random::<u64>()));
    std::fs::write(&path, config_text(&line.base_url(), &upstream.url(), "")).unwrap();
    let mut child = support::process::spawn_binary(&path);
    // Read stderr up to the ready line, then stop reading until told.
    let stderr = child.stderr.take().unwrap();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<String>();
    let (resume_tx, resume_rx) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stderr).lines().map_while(Result::ok);
        let ready = lines.by_ref().find(|l| l.contains("line-auth-proxy ready")).unwrap();
        ready_tx.send(ready).unwrap();
        resume_rx.recv().unwrap();
        lines.collect::<Vec<_>>()
    });
    let ready: serde_json::Value = serde_json::from_str(&ready_rx.await.unwrap()).unwrap();
    let listen = ready["listen"].as_str().unwrap().to_owned();
    let admin = ready["admin"].as_str().unwrap().to_owned();
    // Far more access lines than the pipe (64 KiB) and the buffer (1 MiB) hold.
    let url = format!("http://{listen}/x");
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut ok = 0;
            for _ in 0..400 {
                ok += u32::from(c.get(&url).bearer_auth(TOKEN).send().await.unwrap().status() == 200);
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert_eq!(ok, 6400, "every request answered while stderr was stalled");
    let metrics = client().get(format!("http://{admin}/metrics")).send().await.unwrap().text().await.unwrap();
    let dropped = series_value(&metrics, "line_auth_proxy_log_lines_dropped_total ").unwrap();
    assert!(dropped > 0.0, "dropped {dropped}");
    // Read again: the lines kept come out, and the exit is clean.
    resume_tx.send(()).unwrap();
    support::process::kill(&child, "TERM");
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert_eq!(code.code(), Some(0));
    let rest = reader.join().unwrap();
    let access = rest.iter().filter(|l| l.contains("\"target\":\"access\"")).count();
    assert!(access > 1000 && (access as f64) < 6400.0 - dropped + 1.0, "access lines {access}, dropped {dropped}");
    assert!(rest.iter().any(|l| l.contains("stopped accepting")), "the drain's lines come after the flood's");
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn the_runtime_threads_follow_server_workers_and_say_where_the_count_came_from() {
    let line = MockLine::start().await.unwrap();
    let upstream = RecordingUpstream::start().await;
    let text = config_text(&line.base_url(), &upstream.url(), "")
        .replace("shutdown_grace_seconds = 5", "shutdown_grace_seconds = 5\nworkers = 3");
    let mut proxy = Binary::start(&text);
    let runtime = proxy.line("runtime threads", |_| true).await;
    assert_eq!(runtime["workers"], 3, "{runtime}");
    assert_eq!(runtime["workers_from"], "server.workers", "{runtime}");
    // The threads are there: tokio names its workers.
    let pid = proxy.child.as_ref().unwrap().id();
    proxy.line("line-auth-proxy ready", |_| true).await;
    // A new thread names itself once it runs: until then it shows the
    // process's name, so read until the names have settled.
    let names = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|n| n.trim().to_owned())
            .collect()
    };
    let workers = |names: &[String]| names.iter().filter(|n| *n == "tokio-rt-worker").count();
    eventually(Duration::from_secs(5), || async { workers(&names()) >= 3 }).await;
    let names = names();
    assert_eq!(workers(&names), 3, "{names:?}");
    proxy.stop().await;

    // Unset: the CPU quota or the CPUs, never more than this process may use.
    let mut proxy = Binary::start(&config_text(&line.base_url(), &upstream.url(), ""));
    let runtime = proxy.line("runtime threads", |_| true).await;
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    assert!((1..=cpus).contains(&runtime["workers"].as_u64().unwrap()), "{runtime}");
    assert!(["cpus", "cgroup cpu.max"].contains(&runtime["workers_from"].as_str().unwrap()), "{runtime}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_response_still_streaming_when_the_grace_ends_leaves_its_access_line() {
    let line = MockLine::start().await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let text = config_text(&line.base_url(), &upstream.url(), "")
        .replace("shutdown_grace_seconds = 5", "shutdown_grace_seconds = 1");
    let mut proxy = Binary::start(&text);
    let ready = proxy.line("line-auth-proxy ready", |_| true).await;
    let listen = ready["listen"].as_str().unwrap().to_owned();
    // The upstream sends one chunk and holds the rest: the answer is still
    // streaming when SIGTERM's grace runs out.
    let mut answer = client().get(format!("http://{listen}/stream-out")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer.chunk().await.unwrap().is_some());
    let lines = proxy.stop().await;
    let parsed: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        parsed.iter().any(|l| l["target"] == "access" && l["path"] == "/stream-out"),
        "the cut-off answer's line: {lines:#?}"
    );
}
