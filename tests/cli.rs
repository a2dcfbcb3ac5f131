//! The command line as operators use it: `check`, `--config`, the environment,
//! exit codes 0/1/2, and SIGTERM ending a real process with 0.
#![cfg(feature = "dev")]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::process::{BIN, dev_banner, stderr_lines, wait_for_message};
use support::*;

fn write_config(text: &str) -> tempfile_like::TempFile {
    tempfile_like::TempFile::new(text)
}

/// A file removed on drop (no extra crate needed).
mod tempfile_like {
    pub struct TempFile(pub std::path::PathBuf);
    impl TempFile {
        pub fn new(text: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("lap-cli-{}-{}.toml", std::process::id(), rand::random::<u64>()));
            std::fs::write(&path, text).unwrap();
            Self(path)
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("LINE_AUTH_PROXY_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = "[upstream]\nurl = \"http://127.0.0.1:3000\"\n[line]\nchannel_ids = [\"1234567890\"]\n";

#[test]
fn check_accepts_a_good_file_and_the_example() {
    let f = write_config(GOOD);
    let (code, out, _) = run(&["check", "--config", f.0.to_str().unwrap()], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("configuration OK"));
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml");
    assert_eq!(run(&["check", "--config", example], &[]).0, 0);
}

#[test]
fn settings_without_effect_are_warnings_and_check_exits_0() {
    // A base configuration shared by deployments without login routes.
    let f = write_config(&format!(
        "{GOOD}jwks_url = \"https://api.line.me/oauth2/v2.1/certs\"\n[nonce]\nttl_seconds = 120\n"
    ));
    let (code, out, err) = run(&["check", "--config", f.0.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration OK (2 warning(s) above)"), "{out}");
    let no_login = "has no effect: no route has auth = \"id_token\"";
    assert!(err.contains(&format!("warning: line.jwks_url: {no_login}")), "{err}");
    assert!(err.contains(&format!("warning: nonce.ttl_seconds: {no_login}")), "{err}");
    assert!(!err.contains("error"), "{err}");
}

#[test]
fn the_environment_alone_can_configure_the_proxy() {
    let env = [
        ("LINE_AUTH_PROXY__UPSTREAM__URL", "http://127.0.0.1:3000"),
        ("LINE_AUTH_PROXY__LINE__CHANNEL_IDS", "1234567890"),
    ];
    let (code, out, err) = run(&["check"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration OK"), "{out}");
    // Routes have no environment form: the start says so.
    assert!(err.contains("note: configured from the environment alone: routes can be written only in a file"), "{err}");
    let file = write_config(GOOD);
    let (_, _, err) = run(&["check", "--config", file.0.to_str().unwrap()], &[]);
    assert!(!err.contains("note: configured from the environment alone"), "{err}");
    // Without any of it, every missing required key is named.
    let (code, _, err) = run(&["check"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("error: upstream.url: is required") && err.contains("error: line.channel_ids:"), "{err}");
}

#[test]
fn a_variable_that_is_not_utf8_is_skipped_or_named_never_a_crash() {
    use std::os::unix::ffi::OsStrExt;
    let f = write_config(GOOD);
    let not_utf8 = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let status = |name: &str| {
        let out = Command::new(BIN)
            .args(["check", "--config", f.0.to_str().unwrap()])
            .env_remove("LINE_AUTH_PROXY_CONFIG")
            .env(name, not_utf8)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // Someone else's variable: none of our business.
    assert_eq!(status("SOME_OTHER_TOOL").0, Some(0));
    // Ours: named, exit 2.
    let (code, err) = status("LINE_AUTH_PROXY__SERVER__LISTEN");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("error: LINE_AUTH_PROXY__SERVER__LISTEN: is not valid UTF-8"), "{err}");
}

#[test]
fn check_warns_about_a_secret_file_every_user_can_read_and_still_exits_0() {
    use std::os::unix::fs::PermissionsExt;
    let secret = write_config("0123456789abcdef0123456789abcdef\n");
    let f = write_config(&format!(
        "{GOOD}channel_secret_file = {:?}\n[[routes]]\npath_prefix = \"/login\"\nauth = \"id_token\"\n",
        secret.0
    ));
    let check = |mode: u32| {
        std::fs::set_permissions(&secret.0, std::fs::Permissions::from_mode(mode)).unwrap();
        let (code, out, err) = run(&["check", "--config", f.0.to_str().unwrap()], &[]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("configuration OK"), "{out}");
        err
    };
    let err = check(0o644);
    let expected =
        format!("warning: line.channel_secret_file: {} is readable by every user (mode 0644)", secret.0.display());
    assert!(err.contains(&expected), "{err}");
    assert!(err.contains("defaultMode: 0400") && !err.contains("0123456789abcdef"), "{err}");
    assert!(!check(0o600).contains("warning"));
}

#[test]
fn environment_names_that_are_ours_misspelt_are_errors_never_ignored() {
    let f = write_config(GOOD);
    let path = f.0.to_str().unwrap();
    for (name, meant) in [
        ("LINE_AUTH_PROXY_SERVER__LISTEN", "LINE_AUTH_PROXY__SERVER__LISTEN"),
        ("line_auth_proxy__server__listen", "LINE_AUTH_PROXY__SERVER__LISTEN"),
        ("LINE_AUTH_PROXY__SERVER_LISTEN", "LINE_AUTH_PROXY__SERVER__LISTEN"),
    ] {
        let (code, _, err) = run(&["check", "--config", path], &[(name, "127.0.0.1:7777")]);
        assert_eq!(code, 2, "{name}: {err}");
        assert!(err.contains(&format!("error: {name}: ")), "{name}: {err}");
        assert!(err.contains(&format!("did you mean {meant}?")), "{name}: {err}");
        assert!(!err.contains("7777"), "the value was printed: {err}");
    }
    // What Kubernetes sets for a Service named line-auth-proxy is not ours.
    let k8s = [("LINE_AUTH_PROXY_SERVICE_HOST", "10.96.0.12"), ("LINE_AUTH_PROXY_PORT", "tcp://10.96.0.12:8080")];
    let (code, _, err) = run(&["check", "--config", path], &k8s);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn check_prints_every_problem_with_its_key_path_and_exits_2() {
    let f = write_config(
        "[server]\nlisten = \"nope\"\ncolour = \"blue\"\n[upstream]\nurl = \"ftp://x\"\n[line]\nchannel_ids = []\n\
         [cache]\nttl_seconds = 0\n[[routes]]\npath_prefix = \"/a\"\nauth = \"sometimes\"\n",
    );
    let (code, _, err) = run(&["check", "--config", f.0.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    for key in
        ["server.listen", "server.colour", "upstream.url", "line.channel_ids", "cache.ttl_seconds", "routes[0].auth"]
    {
        assert!(err.contains(&format!("error: {key}: ")), "{key} missing from:\n{err}");
    }
}

#[test]
fn config_file_may_come_from_the_environment() {
    let f = write_config(GOOD);
    let (code, _, _) = run(&["check"], &[("LINE_AUTH_PROXY_CONFIG", f.0.to_str().unwrap())]);
    assert_eq!(code, 0);
    let (code, _, err) = run(
        &["check"],
        &[("LINE_AUTH_PROXY_CONFIG", f.0.to_str().unwrap()), ("LINE_AUTH_PROXY__CACHE__TTL_SECONDS", "0")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("cache.ttl_seconds"), "{err}");
}

#[test]
fn missing_config_and_bad_arguments_exit_2() {
    let (code, _, err) = run(&["check"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("--config"), "{err}");
    assert_eq!(run(&[], &[]).0, 2);
    assert_eq!(run(&["--no-such-flag"], &[]).0, 2);
    assert_eq!(run(&["check", "--config", "/nonexistent/file.toml"], &[]).0, 2);
}

#[tokio::test]
async fn a_second_signal_during_the_drain_exits_at_once_with_0() {
    let e = env("").await;
    // A minute of serving on after the first signal: only the second ends it early.
    let text = config_text(&e.line.base_url(), &e.upstream.url(), "")
        .replace("shutdown_grace_seconds = 5", "shutdown_grace_seconds = 60\nshutdown_delay_seconds = 60");
    let f = write_config(&text);
    let mut child = Command::new(BIN)
        .args(["--config", f.0.to_str().unwrap(), "--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = stderr_lines(&mut child);
    let mut seen = Vec::new();
    wait_for_message(&mut lines, &mut seen, "line-auth-proxy ready").await;
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    wait_for_message(&mut lines, &mut seen, "not ready; serving on before the drain").await;
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let waited = tokio::task::spawn_blocking(move || child.wait().unwrap());
    let code = tokio::time::timeout(Duration::from_secs(10), waited)
        .await
        .expect("the second signal did not end the process")
        .unwrap();
    while let Some(line) = lines.recv().await {
        seen.push(line);
    }
    assert_eq!(code.code(), Some(0), "{seen:#?}");
    assert!(seen.iter().any(|l| l.contains("second shutdown signal")), "{seen:#?}");
}

#[tokio::test]
async fn sigterm_stops_a_real_process_with_exit_0_and_the_log_names_the_bound_ports() {
    let e = env("").await;
    // Port 0 for both listeners: the process reports what it bound.
    let f = write_config(&config_text(&e.line.base_url(), &e.upstream.url(), ""));
    let mut child = Command::new(BIN)
        .args(["--config", f.0.to_str().unwrap(), "--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = stderr_lines(&mut child);
    let mut seen = Vec::new();
    let ready = wait_for_message(&mut lines, &mut seen, "line-auth-proxy ready").await;
    let proxy: std::net::SocketAddr = ready["listen"].as_str().unwrap().parse().unwrap();
    let admin: std::net::SocketAddr = ready["admin"].as_str().unwrap().parse().unwrap();
    assert_ne!(proxy.port(), 0, "the start-up line names the configured port, not the bound one");
    assert_ne!(admin.port(), 0);
    let c = client();
    assert_eq!(c.get(format!("http://{admin}/readyz")).send().await.unwrap().status(), 200);
    let r = c.get(format!("http://{proxy}/a")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    while let Some(line) = lines.recv().await {
        seen.push(line);
    }
    let stderr = seen.join("\n");
    assert_eq!(code.code(), Some(0), "stderr:\n{stderr}");
    // JSON logs: every line parses, and the access line is there.
    let parsed: Vec<serde_json::Value> = seen.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(parsed.iter().any(|l| l["target"] == "access" && l["status"] == 200), "{stderr}");
    assert!(!stderr.contains(TOKEN));
}

#[test]
fn a_port_in_use_is_a_runtime_failure_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = format!("[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:0\"\n{GOOD}");
    let f = write_config(&text);
    let mut child = Command::new(BIN)
        .args(["--config", f.0.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let _ = std::io::stderr().flush();
}

/// Splits a printed `curl` line into its URL and `-H` headers.
fn parse_curl(line: &str) -> (String, Vec<(String, String)>) {
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_string();
    let headers = line
        .split("-H '")
        .skip(1)
        .map(|h| {
            let h = &h[..h.find('\'').unwrap()];
            let (k, v) = h.split_once(": ").unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    (url, headers)
}

#[tokio::test]
async fn dev_prints_curl_lines_that_work_as_pasted() {
    let mut child = Command::new(BIN)
        .args(["dev", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = stderr_lines(&mut child);
    let lines = dev_banner(&mut child).await;
    // The banner names the ports the kernel gave.
    let banner = lines.iter().find(|l| l.starts_with("line-auth-proxy dev: proxy http://")).expect("banner");
    let proxy = banner.split_whitespace().nth(3).unwrap().trim_start_matches("http://").to_string();
    assert!(!proxy.ends_with(":0"), "{banner}");
    let curls: Vec<&String> = lines.iter().filter(|l| l.starts_with("curl ") && !l.contains('$')).collect();
    assert_eq!(curls.len(), 6, "{lines:#?}");
    let c = client();
    let mut answers = Vec::new();
    for line in &curls {
        let (url, headers) = parse_curl(line);
        let mut rb = c.get(&url);
        for (k, v) in headers {
            rb = rb.header(k, v);
        }
        let r = rb.send().await.unwrap();
        answers.push((r.status().as_u16(), r.text().await.unwrap()));
    }
    // valid token, invalid token, other channel, spoofing, public route, metrics
    assert_eq!(answers[0].0, 200);
    assert!(answers[0].1.contains("x-line-user-id"), "{}", answers[0].1);
    assert_eq!(answers[1].0, 401);
    assert_eq!(answers[2].0, 401);
    assert_eq!(answers[3].0, 200);
    assert!(!answers[3].1.contains("Uattacker") && !answers[3].1.contains("evil@example.com"), "{}", answers[3].1);
    assert!(answers[3].1.contains(line_auth_proxy::dev::DEMO_USER_ID));
    assert_eq!(answers[4].0, 200);
    assert!(!answers[4].1.contains("x-line-user-id"), "{}", answers[4].1);
    assert_eq!(answers[5].0, 200);
    assert!(answers[5].1.contains("line_auth_proxy_requests_total"));
    // The login sequence, step by step as a shell would run it.
    let nonce_line = lines.iter().find(|l| l.starts_with("NONCE=")).unwrap();
    let (nonce_url, _) = parse_curl(nonce_line);
    let v: serde_json::Value = c.get(&nonce_url).send().await.unwrap().json().await.unwrap();
    let nonce = v["nonce"].as_str().unwrap();
    let mint_line = lines.iter().find(|l| l.starts_with("ID_TOKEN=")).unwrap();
    let mint_url = mint_line.split('"').nth(1).unwrap().replace("$NONCE", nonce);
    let id_token = c.get(&mint_url).send().await.unwrap().text().await.unwrap();
    let login_url = format!("http://{proxy}/login");
    let login_lines: Vec<&String> =
        lines.iter().filter(|l| l.starts_with("curl ") && l.contains("$ID_TOKEN")).collect();
    assert_eq!(login_lines.len(), 2, "{lines:#?}");
    assert!(login_lines.iter().all(|l| l.contains(&login_url)));
    let first = c.post(&login_url).bearer_auth(&id_token).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.text().await.unwrap().contains("\"id_token\""));
    let replay = c.post(&login_url).bearer_auth(&id_token).send().await.unwrap();
    assert_eq!(replay.status(), 401);
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), Some(0));
    let mut logged = Vec::new();
    while let Some(line) = stderr.recv().await {
        logged.push(line);
    }
    assert!(!logged.iter().any(|l| l.contains("not a loopback address")), "{logged:#?}");
}

#[tokio::test]
async fn dev_on_a_non_loopback_address_warns_that_anyone_can_get_in() {
    let mut child = Command::new(BIN)
        .args(["dev", "--listen", "0.0.0.0:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = stderr_lines(&mut child);
    let mut seen = Vec::new();
    let mut next = async || {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.recv())
            .await
            .expect("no line within 20 s")
            .expect("dev ended before warning");
        seen.push(line.clone());
        line
    };
    // The terminal gets it in plain words, before anything else...
    let mut plain = next().await;
    while plain.is_empty() {
        plain = next().await;
    }
    assert!(plain.starts_with("!!! WARNING: line-auth-proxy dev listens on 0.0.0.0:0"), "{plain}");
    assert!(plain.contains("anyone who can reach it is let through with the demo tokens"), "{plain}");
    // ...and the log a WARN line naming the address.
    let logged = loop {
        let line = next().await;
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["level"] == "WARN"
        {
            break v;
        }
    };
    assert_eq!(logged["listen"], "0.0.0.0:0", "{logged}");
    assert!(logged["message"].as_str().unwrap().contains("non-loopback address"), "{logged}");
    // A warning, not a refusal: the demo comes up (and then handles SIGINT).
    while !next().await.contains("line-auth-proxy ready") {}
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn check_and_start_never_print_a_password_from_a_typo_or_a_syntax_error() {
    let typo = format!("{GOOD}[cache]\nshared = \"redis\"\nredis_url = \"redis:/:S3cretPw@10.0.0.5:6379\"\n");
    let unterminated = format!("{GOOD}[nonce]\nredis_url = \"redis://:S3cretPw@10.0.0.5:6379\n");
    for text in [typo, unterminated] {
        let f = write_config(&text);
        let path = f.0.to_str().unwrap();
        for args in [vec!["check", "--config", path], vec!["--config", path]] {
            let (code, out, err) = run(&args, &[]);
            assert_eq!(code, 2, "{args:?}: {err}");
            assert!(
                !out.contains("S3cretPw") && !err.contains("S3cretPw"),
                "{args:?} printed the password:\n{out}\n{err}"
            );
            assert!(err.contains("redis_url") || err.contains("TOML syntax error"), "{args:?}: {err}");
        }
    }
    // From the environment too.
    let f = write_config(GOOD);
    let env = [("LINE_AUTH_PROXY__UPSTREAM__URL", "http//admin:S3cretPw@backend:3000")];
    let (code, out, err) = run(&["check", "--config", f.0.to_str().unwrap()], &env);
    assert_eq!(code, 2, "{err}");
    assert!(!out.contains("S3cretPw") && !err.contains("S3cretPw"), "{out}\n{err}");
}

/// A configuration path that is a FIFO (nothing ever writes it: reading would
/// block start-up for good) or a device (`/dev/zero`: reading would eat memory)
/// is refused without reading, exit 2, naming it.
#[test]
fn a_config_path_that_is_no_regular_file_is_refused_without_reading_it() {
    let dir = std::env::temp_dir().join(format!("lap-fifo-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("config.toml");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for path in [fifo.to_str().unwrap(), "/dev/zero"] {
        let (tx, rx) = std::sync::mpsc::channel();
        let path = path.to_owned();
        std::thread::spawn(move || tx.send(run(&["check", "--config", &path], &[])).unwrap());
        let (code, _, err) = rx.recv_timeout(Duration::from_secs(20)).expect("check did not return: it read the path");
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("is not a regular file"), "{err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
