//! The TLS certificate and key files: `check` refuses every pair start-up
//! would (and names the key), warns of a certificate close to its notAfter,
//! whose value is a metric; SIGHUP and a change of the files (a Kubernetes
//! Secret's symlink swap included) reload the pair for new handshakes, and a
//! broken replacement leaves the serving pair in place.
#![cfg(feature = "dev")]

mod support;

use std::process::Command;
use std::time::Duration;

use support::process::{BIN, kill, spawn_binary, stderr_lines, wait_for_line, wait_for_message};
use support::tls::{Issued, TlsDir, handshake, issue, issue_for_a_year, presented};
use support::*;

/// `line-auth-proxy ARGS… --config <text, written to a file>`: exit code and stderr.
fn run_with(args: &[&str], text: &str) -> (i32, String) {
    let dir = TlsDir::new();
    let path = dir.0.join("config.toml");
    std::fs::write(&path, text).unwrap();
    run(args, &path)
}

/// `line-auth-proxy ARGS… --config PATH`: exit code and stderr.
fn run(args: &[&str], config: &std::path::Path) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .args(["--config", config.to_str().unwrap()])
        .env_remove("LINE_AUTH_PROXY_CONFIG")
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn config_with_tls(files: &TlsDir) -> String {
    config_text("http://127.0.0.1:1", "http://127.0.0.1:2", "")
        .replace("shutdown_grace_seconds = 5", &format!("shutdown_grace_seconds = 5\n{}", files.server_keys()))
}

/// A line of the key's base64 body: it must never be printed.
fn key_material(issued: &Issued) -> &str {
    issued.key_pem.lines().nth(1).unwrap()
}

/// `openssl ARGS…` reading `input` on stdin; what it wrote on stdout.
fn openssl(args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl is missing: run tests/setup.sh");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn check_refuses_every_pair_that_start_up_refuses_and_names_the_key() {
    let (a, b) = (issue_for_a_year(), issue_for_a_year());
    let files = TlsDir::new();
    let config_file = files.0.join("config.toml");
    std::fs::write(&config_file, config_with_tls(&files)).unwrap();
    let pkcs8_encrypted = openssl(&["pkcs8", "-topk8", "-passout", "pass:hunter2"], &a.key_pem);
    let legacy_encrypted = openssl(&["ec", "-aes256", "-passout", "pass:hunter2"], &a.key_pem);
    assert!(pkcs8_encrypted.contains("BEGIN ENCRYPTED PRIVATE KEY"), "{pkcs8_encrypted}");
    assert!(legacy_encrypted.contains("Proc-Type: 4,ENCRYPTED"), "{legacy_encrypted}");
    let cases: [(&str, &str, &str, &[&str]); 5] = [
        ("mismatched", &a.cert_pem, &b.key_pem, &["server.tls_key_file: ", "does not match the certificate"]),
        ("PKCS#8 encrypted", &a.cert_pem, &pkcs8_encrypted, &["server.tls_key_file: ", "encrypted private key"]),
        ("legacy encrypted", &a.cert_pem, &legacy_encrypted, &["server.tls_key_file: ", "encrypted private key"]),
        (
            "swapped",
            &a.key_pem,
            &a.cert_pem,
            &["server.tls_key_file: ", "server.tls_cert_file: ", "swapped?", "holds a certificate, not a private key"],
        ),
        (
            "garbage",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            &a.key_pem,
            &["server.tls_cert_file: ", "is not valid PEM"],
        ),
    ];
    for (case, cert, key, expected) in cases {
        files.write(cert, key);
        let (code, err) = run(&["check"], &config_file);
        assert_eq!(code, 2, "{case}: {err}");
        for expected in expected {
            assert!(err.contains(expected), "{case}: {expected:?} missing from:\n{err}");
        }
        assert!(!err.contains(key_material(&a)) && !err.contains(key_material(&b)), "{case}: key material:\n{err}");
        // Start-up refuses the same pair the same way, before binding anything.
        let (code, started) = run(&[], &config_file);
        assert_eq!(code, 2, "{case}: start-up: {started}");
        assert_eq!(started, err, "{case}: start-up and check disagree");
    }
    files.write(&a.cert_pem, &a.key_pem);
    let (code, err) = run(&["check"], &config_file);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn check_warns_of_a_certificate_close_to_its_expiry_and_still_passes() {
    let files = TlsDir::new();
    let text = config_with_tls(&files);
    let soon = issue(Duration::from_secs(3 * 24 * 3600));
    files.write(&soon.cert_pem, &soon.key_pem);
    let (code, err) = run_with(&["check"], &text);
    assert_eq!(code, 0, "{err}");
    let warning =
        err.lines().find(|l| l.starts_with("warning: server.tls_cert_file: ")).unwrap_or_else(|| panic!("{err}"));
    assert!(warning.contains("expires in 3 days"), "{warning}");
    // Already expired: a louder warning, and still exit 0 (as nginx and Envoy start).
    let expired = issue(Duration::ZERO);
    files.write(&expired.cert_pem, &expired.key_pem);
    let (code, err) = run_with(&["check"], &text);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: server.tls_cert_file: ") && err.contains("expired"), "{err}");
    assert!(err.contains("clients refuse it"), "{err}");
}

#[test]
fn check_refuses_rediss_insecure_as_start_up_cannot_use_it() {
    let text = config_text(
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
        &format!(
            "[cache]\nshared = \"redis\"\nredis_url = \"rediss://:hunter2@cache.internal:6380/0#insecure\"\n{}",
            mac_key_line()
        ),
    );
    let (code, err) = run_with(&["check"], &text);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("error: cache.redis_url: ") && err.contains("#insecure"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    let verified = text.replace("/0#insecure", "/0");
    assert_eq!(run_with(&["check"], &verified).0, 0);
}

#[tokio::test]
async fn the_expiry_metric_is_the_served_certificates_not_after_and_absent_without_tls() {
    let e = env("").await;
    let m = e.proxy.metrics().await;
    assert!(m.contains("# TYPE line_auth_proxy_tls_cert_expiry_timestamp_seconds gauge"), "{m}");
    let samples = |m: &str, name: &str| m.lines().filter(|l| l.starts_with(name)).count();
    assert_eq!(samples(&m, "line_auth_proxy_tls_cert_expiry_timestamp_seconds"), 0, "a sample without TLS:\n{m}");
    assert_eq!(samples(&m, "line_auth_proxy_tls_reloads_total"), 0, "a sample without TLS:\n{m}");
    let issued = issue(Duration::from_secs(40 * 24 * 3600));
    let files = TlsDir::new();
    files.write(&issued.cert_pem, &issued.key_pem);
    let text = config_text(&e.line.base_url(), &e.upstream.url(), "")
        .replace("shutdown_grace_seconds = 5", &format!("shutdown_grace_seconds = 5\n{}", files.server_keys()));
    let proxy = spawn_proxy_with(config(&text), &e.clock).await;
    assert_eq!(presented(proxy.addr, &[&issued]).await, issued.der);
    let m = proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_tls_cert_expiry_timestamp_seconds"), issued.not_after as f64, "{m}");
}

/// Kubernetes' Secret volume: `tls.crt -> ..data/tls.crt`, `..data -> ..<version>`;
/// an update writes a new version directory and renames a new `..data` link over.
struct SecretVolume {
    dir: TlsDir,
    versions: u32,
}

impl SecretVolume {
    fn new(issued: &Issued) -> Self {
        let mut volume = Self { dir: TlsDir::new(), versions: 0 };
        volume.publish(&issued.cert_pem, &issued.key_pem);
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), volume.dir.0.join(name)).unwrap();
        }
        volume
    }

    fn publish(&mut self, cert_pem: &str, key_pem: &str) {
        self.versions += 1;
        let version = format!("..v{}", self.versions);
        std::fs::create_dir(self.dir.0.join(&version)).unwrap();
        std::fs::write(self.dir.0.join(&version).join("tls.crt"), cert_pem).unwrap();
        std::fs::write(self.dir.0.join(&version).join("tls.key"), key_pem).unwrap();
        let tmp = self.dir.0.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.0.join("..data")).unwrap();
    }
}

#[tokio::test]
async fn a_changed_secret_volume_is_picked_up_without_a_signal() {
    let (first, second, stranger) =
        (issue_for_a_year(), issue(Duration::from_secs(200 * 24 * 3600)), issue_for_a_year());
    let mut volume = SecretVolume::new(&first);
    let e = env("").await;
    let text = config_text(&e.line.base_url(), &e.upstream.url(), "")
        .replace("shutdown_grace_seconds = 5", &format!("shutdown_grace_seconds = 5\n{}", volume.dir.server_keys()));
    let proxy = spawn_proxy_with(config(&text), &e.clock).await;
    let trusted = [&first, &second, &stranger];
    let (mut kept, served) = handshake(proxy.addr, &trusted).await;
    assert_eq!(served, first.der);
    assert_eq!(proxy.metric("line_auth_proxy_tls_cert_expiry_timestamp_seconds").await, first.not_after as f64);
    assert_eq!(proxy.metric("line_auth_proxy_tls_reloads_total{outcome=\"ok\"}").await, 0.0);

    volume.publish(&second.cert_pem, &second.key_pem);
    // The poll runs on the proxy's clock: each round moves it one interval on.
    let poll = Duration::from_secs(5);
    let picked_up = eventually(Duration::from_secs(10), || async {
        e.clock.advance(poll);
        presented(proxy.addr, &trusted).await == second.der
    })
    .await;
    assert!(picked_up, "new handshakes still get the first certificate");
    let m = proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_tls_cert_expiry_timestamp_seconds"), second.not_after as f64, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_tls_reloads_total{outcome=\"ok\"}"), 1.0, "{m}");
    // The connection opened before the swap still answers on its own certificate.
    use tokio::io::AsyncWriteExt;
    kept.write_all(b"GET /a HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    assert_eq!(raw_status(&read_answer_tls(&mut kept).await), 401);
    assert_eq!(kept.get_ref().1.peer_certificates().unwrap()[0].as_ref(), first.der.as_slice());

    // A key that is not the certificate's: refused, counted, the second pair stays.
    volume.publish(&stranger.cert_pem, &first.key_pem);
    let refused = eventually(Duration::from_secs(10), || async {
        e.clock.advance(poll);
        proxy.metric("line_auth_proxy_tls_reloads_total{outcome=\"error\"}").await == 1.0
    })
    .await;
    assert!(refused, "the broken pair was never refused");
    assert_eq!(presented(proxy.addr, &trusted).await, second.der);
    let m = proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_tls_cert_expiry_timestamp_seconds"), second.not_after as f64, "{m}");
    // Nothing changed since: the refused pair is not read again and again
    // (each handshake gives the reloader, on this runtime, its turn).
    for _ in 0..3 {
        e.clock.advance(poll);
        assert_eq!(presented(proxy.addr, &trusted).await, second.der);
    }
    assert_eq!(proxy.metric("line_auth_proxy_tls_reloads_total{outcome=\"error\"}").await, 1.0);
}

async fn read_answer_tls<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn sighup_reloads_the_pair_of_a_running_process_and_a_broken_one_keeps_the_old() {
    let e = env("").await;
    let (first, second, stranger) =
        (issue_for_a_year(), issue(Duration::from_secs(100 * 24 * 3600)), issue_for_a_year());
    let files = TlsDir::new();
    files.write(&first.cert_pem, &first.key_pem);
    let text = config_text(&e.line.base_url(), &e.upstream.url(), "")
        .replace("shutdown_grace_seconds = 5", &format!("shutdown_grace_seconds = 5\n{}", files.server_keys()));
    let config_file = files.0.join("config.toml");
    std::fs::write(&config_file, text).unwrap();
    let mut child = spawn_binary(&config_file);
    let mut lines = stderr_lines(&mut child);
    let mut seen = Vec::new();
    let ready = wait_for_message(&mut lines, &mut seen, "line-auth-proxy ready").await;
    let proxy: std::net::SocketAddr = ready["listen"].as_str().unwrap().parse().unwrap();
    let admin = format!("http://{}/metrics", ready["admin"].as_str().unwrap());
    let metrics = || async { client().get(&admin).send().await.unwrap().text().await.unwrap() };
    let trusted = [&first, &second, &stranger];
    assert_eq!(presented(proxy, &trusted).await, first.der);
    assert_eq!(metric(&metrics().await, "line_auth_proxy_tls_cert_expiry_timestamp_seconds"), first.not_after as f64);

    files.write(&second.cert_pem, &second.key_pem);
    kill(&child, "HUP");
    // (The poll may see the change first; the SIGHUP reload comes all the same.)
    let sighup = |v: &serde_json::Value| v["trigger"] == "SIGHUP";
    wait_for_line(&mut lines, &mut seen, "TLS certificate reloaded", sighup).await;
    assert_eq!(presented(proxy, &trusted).await, second.der);
    let m = metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_tls_cert_expiry_timestamp_seconds"), second.not_after as f64, "{m}");
    assert!(metric(&m, "line_auth_proxy_tls_reloads_total{outcome=\"ok\"}") >= 1.0, "{m}");

    files.write(&stranger.cert_pem, &first.key_pem);
    kill(&child, "HUP");
    let refused = wait_for_line(
        &mut lines,
        &mut seen,
        "TLS files not reloaded; new handshakes keep the previous certificate",
        sighup,
    )
    .await;
    let problems = refused["problems"].as_str().unwrap();
    assert!(problems.contains("server.tls_key_file: ") && problems.contains("does not match"), "{problems}");
    assert_eq!(presented(proxy, &trusted).await, second.der);
    let m = metrics().await;
    assert!(metric(&m, "line_auth_proxy_tls_reloads_total{outcome=\"error\"}") >= 1.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_tls_cert_expiry_timestamp_seconds"), second.not_after as f64, "{m}");

    kill(&child, "TERM");
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    while let Some(line) = lines.recv().await {
        seen.push(line);
    }
    assert_eq!(code.code(), Some(0), "{seen:#?}");
    let log = seen.join("\n");
    for issued in trusted {
        assert!(!log.contains(key_material(issued)), "key material in the log:\n{log}");
    }
}

#[tokio::test]
async fn sighup_without_tls_does_not_end_the_process() {
    let e = env("").await;
    let files = TlsDir::new();
    let config_file = files.0.join("config.toml");
    std::fs::write(&config_file, config_text(&e.line.base_url(), &e.upstream.url(), "")).unwrap();
    let mut child = spawn_binary(&config_file);
    let mut lines = stderr_lines(&mut child);
    let mut seen = Vec::new();
    let ready = wait_for_message(&mut lines, &mut seen, "line-auth-proxy ready").await;
    let admin = ready["admin"].as_str().unwrap().to_owned();
    kill(&child, "HUP");
    wait_for_message(&mut lines, &mut seen, "configuration unchanged").await;
    let r = client().get(format!("http://{admin}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    kill(&child, "TERM");
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert_eq!(code.code(), Some(0), "{seen:#?}");
}
