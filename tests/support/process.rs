//! The real `line-auth-proxy` binary as a child process: its JSON log lines,
//! read as they come, and signals sent with `kill`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_line-auth-proxy");

/// Collects a child's stderr line by line on a thread of its own (the pipe
/// must keep draining), handing each line over as it comes.
pub fn stderr_lines(child: &mut Child) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads JSON log lines until one has `message`; that line (all kept in `seen`).
pub async fn wait_for_message(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: &mut Vec<String>,
    message: &str,
) -> serde_json::Value {
    wait_for_line(lines, seen, message, |_| true).await
}

/// Reads JSON log lines until one has `message` and passes `also`.
pub async fn wait_for_line(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: &mut Vec<String>,
    message: &str,
    also: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.recv())
            .await
            .unwrap_or_else(|_| panic!("no {message:?} line within 20 s: {seen:#?}"))
            .unwrap_or_else(|| panic!("the process ended before {message:?}: {seen:#?}"));
        // Lines printed before logging starts (`warning:`, `note:`) are not JSON.
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            seen.push(line);
            continue;
        };
        seen.push(line);
        if v["message"] == message && also(&v) {
            return v;
        }
    }
}

/// The proxy started with `--config FILE --log-format json` at `info`.
pub fn spawn_binary(config: &std::path::Path) -> Child {
    Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "--log-format", "json"])
        .env("RUST_LOG", "info")
        .env_remove("LINE_AUTH_PROXY_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Sends `signal` (`HUP`, `TERM`, `INT`) to the child.
pub fn kill(child: &Child, signal: &str) {
    let status = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().unwrap();
    assert!(status.success(), "kill -{signal} failed");
}

/// The lines `line-auth-proxy dev` prints on stdout, up to its last
/// ("Ctrl-C stops all three").
pub async fn dev_banner(child: &mut Child) -> Vec<String> {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("stdout piped");
    tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.contains("Ctrl-C stops all three");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    })
    .await
    .unwrap()
}
