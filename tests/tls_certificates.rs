//! The TLS certificate and key files: `check` refuses every pair start-up
//! would (and names the key), and warns of a certificate close to its
//! notAfter, whose value is a metric. `check` also refuses what start-up
//! cannot use elsewhere (`rediss://…#insecure`).
#![cfg(feature = "dev")]

mod support;

use std::process::Command;
use std::time::Duration;

use support::process::BIN;
use support::tls::{Issued, TlsDir, issue, issue_for_a_year, presented};
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
        "[cache]\nshared = \"redis\"\nredis_url = \"rediss://:hunter2@cache.internal:6380/0#insecure\"\n",
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
