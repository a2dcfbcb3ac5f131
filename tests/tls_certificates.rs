//! `check` refuses what start-up cannot use, with the key path.
#![cfg(feature = "dev")]

mod support;

use std::process::Command;

use support::process::BIN;
use support::tls::TlsDir;
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
