//! Interop: the proxy in front of, and behind, the software users run — each a
//! real program, started here as a child process on a port the kernel picks.
//!
//! - backends reading identity the way their frameworks do: gunicorn + Flask
//!   (WSGI environ), uvicorn + Starlette (ASGI scope), Express (`req.headers`),
//!   `php -S` (`$_SERVER`), each sent a spoofed `X-Line-User-Id`,
//!   `X_Line_User_Id` and `x.line.user.id` that they must never see;
//! - a grpcio server and client through `upstream.protocol = "h2c"`;
//! - nginx terminating TLS in front of the proxy, with Flask's `ProxyFix`
//!   behind it: no redirect loop once nginx is a trusted proxy;
//! - a Python `websockets` echo of 1000 messages, the token sent as a
//!   subprotocol entry as a browser must;
//! - headless Chromium on a page of another origin: `fetch` reads the proxy's
//!   own 401 and 503 on a route naming that origin, and a `new WebSocket` opens
//!   with the token as a subprotocol entry;
//! - the ingress examples of `deploy/ingress/` in real nginx and Caddy, with
//!   line-auth-proxy as their forward-auth check (`ingress.rs`);
//! - the README's PyJWT and jose assertion verifiers, run as written against
//!   a live proxy's published keys (`verifiers.rs`).
//!
//! What they need is installed by `tests/setup.sh` (`.ci/run` runs it)
//! into `target/interop` (or `$LAP_INTEROP_DIR`). Missing software fails these
//! tests with that instruction; they are never skipped.
#![cfg(feature = "dev")]

#[path = "../support/mod.rs"]
mod support;

mod ingress;
mod verifiers;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;

const SPOOFS: [(&str, &str); 3] =
    [("X-Line-User-Id", "Uattacker0"), ("X_Line_User_Id", "Uattacker1"), ("x.line.user.id", "Uattacker2")];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn apps() -> PathBuf {
    repo().join("tests/interop/apps")
}

/// Where `setup.sh` put the Python environment and node_modules.
fn interop_dir() -> PathBuf {
    let dir = std::env::var_os("LAP_INTEROP_DIR").map_or_else(|| repo().join("target/interop"), PathBuf::from);
    assert!(
        dir.join("venv/bin/python").exists() && dir.join("node/node_modules/express").exists(),
        "the interop software is not installed in {}: run tests/setup.sh (.ci/run does)",
        dir.display()
    );
    dir
}

fn python() -> PathBuf {
    interop_dir().join("venv/bin/python")
}

/// A third-party server, killed on drop; its output is kept for failure messages.
struct Program {
    child: std::process::Child,
    port: u16,
    output: Arc<Mutex<Vec<String>>>,
}

impl Program {
    /// Starts `command` and waits until a line of its output names its port
    /// (`port_in` finds it).
    async fn start(mut command: std::process::Command, port_in: fn(&str) -> Option<u16>) -> Program {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e} (run tests/setup.sh)"));
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut ports) = tokio::sync::mpsc::unbounded_channel();
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let (output, tx) = (output.clone(), tx.clone());
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(port) = port_in(&line) {
                        let _ = tx.send(port);
                    }
                    output.lock().unwrap().push(line);
                }
            });
        }
        let port = tokio::time::timeout(Duration::from_secs(30), ports.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("{command:?} never named its port:\n{}", output.lock().unwrap().join("\n")));
        Program { child, port, output }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port in `http://127.0.0.1:PORT` or `LISTENING PORT`.
fn port_after(line: &str, marker: &str) -> Option<u16> {
    let rest = &line[line.find(marker)? + marker.len()..];
    rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
}

fn url_port(line: &str) -> Option<u16> {
    port_after(line, "http://127.0.0.1:")
}

fn listening_port(line: &str) -> Option<u16> {
    port_after(line, "LISTENING ")
}

/// Runs a client program to its end off the runtime's threads (the dev
/// build of tokio has no process feature), with a bound on how long.
async fn run_to_end(mut command: std::process::Command) -> std::process::Output {
    let run = tokio::task::spawn_blocking(move || command.output().expect("the client program starts"));
    tokio::time::timeout(Duration::from_secs(60), run).await.expect("the client program ends within 60 s").unwrap()
}

fn venv_command(program: &str) -> std::process::Command {
    let mut command = std::process::Command::new(interop_dir().join("venv/bin").join(program));
    command.current_dir(apps());
    command
}

async fn gunicorn() -> Program {
    let mut command = venv_command("gunicorn");
    // No control socket in $HOME: tests run in parallel.
    command.args(["-b", "127.0.0.1:0", "--workers", "1", "--no-control-socket", "wsgi_app:app"]);
    Program::start(command, url_port).await
}

/// The proxy in front of `backend`, on the shared clock of `line`.
async fn proxy_for(clock: &Clock, line: &MockLine, backend: &str, extra: &str, server_extra: &str) -> TestProxy {
    let text = config_text(&line.base_url(), backend, extra)
        .replace("shutdown_grace_seconds = 5", &format!("shutdown_grace_seconds = 5\n{server_extra}"));
    spawn_proxy_with(config(&text), clock).await
}

async fn line() -> (Clock, MockLine) {
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    (clock, line)
}

/// GET `/whoami…` with the token and every spoof; the backend's JSON answer.
async fn whoami(proxy: &TestProxy, path: &str) -> serde_json::Value {
    let mut request = client().get(proxy.url(path)).bearer_auth(TOKEN);
    for (name, value) in SPOOFS {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The control: the same spoofs sent straight to the backend, without the
/// proxy, do show — so a spoof the proxy let through would be seen.
async fn assert_spoofs_would_show(backend: &Program, path: &str) {
    let mut request = client().get(format!("{}{path}", backend.url()));
    for (name, value) in SPOOFS {
        request = request.header(name, value);
    }
    let text = request.send().await.unwrap().text().await.unwrap();
    assert!(
        text.contains("Uattacker"),
        "the backend shows no spoof even when sent directly, so the test proves nothing: {text}"
    );
}

fn assert_only_lines_identity(seen: &serde_json::Value, backend: &str) {
    assert_eq!(seen["user_id"], USER, "{backend} did not see LINE's user id: {seen}");
    let text = seen.to_string();
    assert!(!text.contains("Uattacker"), "{backend} saw a spoofed identity: {text}");
}

#[tokio::test]
async fn gunicorn_and_flask_see_only_the_proxys_identity() {
    let (clock, line) = line().await;
    let backend = gunicorn().await;
    let proxy = proxy_for(&clock, &line, &backend.url(), "", "").await;
    assert_spoofs_would_show(&backend, "/whoami").await;
    let seen = whoami(&proxy, "/whoami").await;
    assert_only_lines_identity(&seen, "gunicorn + Flask");
    assert_eq!(seen["environ"]["HTTP_X_LINE_CHANNEL_ID"], CHANNEL, "{seen}");
    assert!(seen["environ"].get("HTTP_AUTHORIZATION").is_none(), "{seen}");
}

#[tokio::test]
async fn uvicorn_and_starlette_see_only_the_proxys_identity() {
    let (clock, line) = line().await;
    let mut command = venv_command("uvicorn");
    command.args(["asgi_app:app", "--host", "127.0.0.1", "--port", "0", "--no-access-log"]);
    let backend = Program::start(command, url_port).await;
    let proxy = proxy_for(&clock, &line, &backend.url(), "", "").await;
    assert_spoofs_would_show(&backend, "/whoami").await;
    let seen = whoami(&proxy, "/whoami").await;
    assert_only_lines_identity(&seen, "uvicorn + Starlette");
    let user_ids = seen["raw"].as_array().unwrap().iter().filter(|h| h[0] == "x-line-user-id").count();
    assert_eq!(user_ids, 1, "{seen}");
}

#[tokio::test]
async fn express_sees_only_the_proxys_identity() {
    let (clock, line) = line().await;
    let mut command = std::process::Command::new("node");
    command.arg(apps().join("express_app.js")).env("NODE_PATH", interop_dir().join("node/node_modules"));
    let backend = Program::start(command, listening_port).await;
    let proxy = proxy_for(&clock, &line, &backend.url(), "", "").await;
    assert_spoofs_would_show(&backend, "/whoami").await;
    assert_only_lines_identity(&whoami(&proxy, "/whoami").await, "Express");
}

#[tokio::test]
async fn php_sees_only_the_proxys_identity() {
    let (clock, line) = line().await;
    let mut command = std::process::Command::new("php");
    command.args(["-S", "127.0.0.1:0", "-t"]).arg(apps().join("php"));
    let backend = Program::start(command, url_port).await;
    let proxy = proxy_for(&clock, &line, &backend.url(), "", "").await;
    assert_spoofs_would_show(&backend, "/index.php").await;
    let seen = whoami(&proxy, "/index.php").await;
    // $_SERVER folds X-Line-User-Id and X_Line_User_Id into one name: only the
    // proxy's value may be there.
    assert_only_lines_identity(&seen, "php -S");
    assert_eq!(seen["server"]["HTTP_X_LINE_USER_ID"], USER, "{seen}");
}

#[tokio::test]
async fn grpcio_calls_go_through_h2c() {
    let (clock, line) = line().await;
    let mut command = std::process::Command::new(python());
    command.arg(apps().join("grpc_server.py"));
    let server = Program::start(command, listening_port).await;
    let text = config_text(&line.base_url(), &server.url(), "")
        .replace("timeout_ms = 2000", "timeout_ms = 2000\nprotocol = \"h2c\"");
    let proxy = spawn_proxy_with(config(&text), &clock).await;
    let mut client = std::process::Command::new(python());
    client.arg(apps().join("grpc_client.py")).arg(proxy.addr.to_string()).arg(TOKEN);
    let client = run_to_end(client).await;
    let stdout = String::from_utf8_lossy(&client.stdout);
    assert!(
        client.status.success(),
        "grpc client failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&client.stderr),
        server.output()
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen["unary"], "hello", "{seen}");
    assert_eq!(seen["unary_code"], "OK", "{seen}");
    assert_eq!(seen["echo_user"], USER, "{seen}");
    let keys: Vec<&str> = seen["echo_keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    for spoof in ["x_line_channel_id", "x-line-identity-jwt", "authorization"] {
        assert!(!keys.contains(&spoof), "{spoof} reached the grpcio server: {keys:?}");
    }
    assert!(keys.contains(&"x-line-channel-id"), "{keys:?}");
    assert_eq!(seen["fail"]["code"], "NOT_FOUND", "{seen}");
    assert_eq!(seen["fail"]["details"], "no such thing", "{seen}");
    assert_eq!(seen["fail"]["trailing"]["x-detail"], "looked everywhere", "{seen}");
    assert_eq!(seen["stream"], "abcde", "{seen}");
    assert_eq!(seen["stream_code"], "OK", "{seen}");
    assert_eq!(seen["no_token"]["code"], "UNAUTHENTICATED", "{seen}");
    assert_eq!(seen["bad_token"]["code"], "UNAUTHENTICATED", "{seen}");
}

/// nginx terminating TLS for `app.example`, proxying to `proxy`.
struct Nginx {
    _program: Program,
    port: u16,
    _relay: tokio::task::JoinHandle<()>,
    root: reqwest::Certificate,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Nginx {
    async fn start(proxy: &TestProxy) -> Nginx {
        let dir = std::env::temp_dir().join(format!("lap-nginx-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["app.example".to_string()]).unwrap();
        std::fs::write(dir.join("tls.crt"), cert.cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), cert.key_pair.serialize_pem()).unwrap();
        // nginx cannot take port 0: it listens on a unix socket, reached through
        // a TCP relay on a port this test holds.
        let socket = dir.join("nginx.sock");
        let (port, relay) = unix_relay(socket.clone()).await;
        let conf = nginx_conf(&dir, &socket, port, proxy.addr.port());
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let mut command = std::process::Command::new("nginx");
        command.arg("-p").arg(&dir).arg("-c").arg(dir.join("nginx.conf")).arg("-e").arg(dir.join("error.log"));
        // nginx prints nothing when it starts: its readiness is its socket accepting.
        let mut child =
            command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("nginx (run tests/setup.sh)");
        let up = eventually(Duration::from_secs(10), || {
            // The file appears at bind(), before listen(): a connection is the proof.
            let listening = std::os::unix::net::UnixStream::connect(&socket).is_ok();
            async move { listening }
        })
        .await;
        if !up {
            let _ = child.kill();
            panic!("nginx did not start: {}", std::fs::read_to_string(dir.join("error.log")).unwrap_or_default());
        }
        let program = Program { child, port, output: Arc::default() };
        Nginx {
            _program: program,
            port,
            _relay: relay,
            root: reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap(),
            dir,
        }
    }

    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(self.root.clone())
            .resolve("app.example", ([127, 0, 0, 1], self.port).into())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("https://app.example:{}{path}", self.port)
    }
}

fn nginx_conf(dir: &Path, socket: &Path, public_port: u16, proxy_port: u16) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen unix:{socket} ssl;
        server_name app.example;
        ssl_certificate {d}/tls.crt;
        ssl_certificate_key {d}/tls.key;
        location / {{
            proxy_pass http://127.0.0.1:{proxy_port};
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-Port {public_port};
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"#,
        socket = socket.display(),
    )
}

#[tokio::test]
async fn nginx_terminating_tls_in_front_causes_no_redirect_loop_once_trusted() {
    let (clock, line) = line().await;
    let backend = gunicorn().await;
    // nginx reaches the proxy from 127.0.0.1: that is the ingress to trust.
    let trusting = proxy_for(&clock, &line, &backend.url(), "", "trusted_proxies = [\"127.0.0.1/32\"]").await;
    let nginx = Nginx::start(&trusting).await;
    let r = nginx.client().get(nginx.url("/secure")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "Flask redirected although the client came over https: {:?}",
        r.headers().get("location")
    );
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["scheme"], "https", "{seen}");
    assert_eq!(seen["url"], nginx.url("/secure"), "{seen}");
    // The same chain without the ingress in server.trusted_proxies: Flask sees
    // http and sends the browser to https — where it already was — forever.
    let untrusting = proxy_for(&clock, &line, &backend.url(), "", "").await;
    let loop_nginx = Nginx::start(&untrusting).await;
    let r = loop_nginx.client().get(loop_nginx.url("/secure")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], loop_nginx.url("/secure"));
}

#[tokio::test]
async fn a_websockets_echo_of_a_thousand_messages_goes_through_the_tunnel() {
    let (clock, line) = line().await;
    let mut command = std::process::Command::new(python());
    command.arg(apps().join("ws_server.py"));
    let server = Program::start(command, listening_port).await;
    let proxy = proxy_for(&clock, &line, &server.url(), "", "").await;
    let mut client = std::process::Command::new(python());
    client.arg(apps().join("ws_client.py")).arg(format!("ws://{}/chat", proxy.addr)).arg(TOKEN).arg("1000");
    let client = run_to_end(client).await;
    let stdout = String::from_utf8_lossy(&client.stdout);
    assert!(
        client.status.success(),
        "websockets client failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&client.stderr),
        server.output()
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen["echoed"], 1000, "{seen}");
    assert_eq!(seen["subprotocol"], "chat", "{seen}");
    assert_eq!(seen["first"], format!("user:{USER}"), "{seen}");
}

/// The page the browser test serves from its own origin, the proxy's address and
/// the token filled in.
fn browser_page(api: &str) -> String {
    std::fs::read_to_string(apps().join("browser_page.html"))
        .unwrap()
        .replace("__API__", api)
        .replace("__TOKEN__", TOKEN)
}

/// A child process killed (and its profile directory removed) on drop.
struct Browser {
    child: std::process::Child,
    profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    /// Headless Chromium (Debian's `chromium`) opening `url`, in a fresh profile.
    fn open(url: &str) -> Browser {
        let profile = std::env::temp_dir().join(format!("lap-chromium-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&profile).unwrap();
        let child = std::process::Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
            .args(["--no-default-browser-check", "--disable-extensions", "--disable-background-networking"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(profile.with_extension("log")).unwrap())
            .spawn()
            .expect("chromium (run tests/setup.sh)");
        Browser { child, profile }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.profile.with_extension("log")).unwrap_or_default()
    }
}

/// Headless Chromium on a page of another origin calling the API through the
/// proxy: what `fetch` lets the page read of the proxy's own answers, and a
/// `new WebSocket` with the token as a subprotocol entry.
#[tokio::test]
async fn headless_chromium_reads_the_proxys_answers_and_opens_a_websocket() {
    let (clock, line) = line().await;
    let line = Arc::new(line);
    line.add_token(&format!("{TOKEN}-second"), MockToken::new(CHANNEL, USER, "Brown"));
    let mut command = venv_command("uvicorn");
    command.args(["asgi_app:app", "--host", "127.0.0.1", "--port", "0", "--no-access-log"]);
    let backend = Program::start(command, url_port).await;

    // The page's own origin: serves the page, turns LINE off when the page asks
    // (so that one page load sees both), and takes the page's results.
    let page_html = Arc::new(Mutex::new(String::new()));
    let (results_tx, mut results) = tokio::sync::mpsc::unbounded_channel::<String>();
    let page = {
        let (page_html, line) = (page_html.clone(), line.clone());
        LoopbackServer::start(move |req: http::Request<hyper::body::Incoming>| {
            let (page_html, line, results_tx) = (page_html.clone(), line.clone(), results_tx.clone());
            async move {
                let body = match req.uri().path() {
                    "/" => page_html.lock().unwrap().clone(),
                    "/line-down" => {
                        line.set_faults(Faults {
                            verify: Some(Fault::Status(503)),
                            profile: Some(Fault::Status(503)),
                            ..Faults::default()
                        });
                        String::new()
                    }
                    "/result" => {
                        let bytes = collect(req.into_body()).await;
                        let _ = results_tx.send(String::from_utf8_lossy(&bytes).into_owned());
                        String::new()
                    }
                    _ => String::new(),
                };
                let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                response.headers_mut().insert("content-type", "text/html; charset=utf-8".parse().unwrap());
                Ok::<_, std::convert::Infallible>(response)
            }
        })
        .await
        .unwrap()
    };
    let origin = page.url();
    let routes = format!(
        r#"
[[routes]]
path_prefix = "/api/"
auth = "access_token"
allow_cors_preflight = true
cors_allow_origins = ["{origin}"]

[[routes]]
path_prefix = "/plain/"
auth = "access_token"

[[routes]]
path_prefix = "/ws/"
auth = "access_token"
"#
    );
    let proxy = proxy_for(&clock, &line, &backend.url(), &routes, "").await;
    *page_html.lock().unwrap() = browser_page(&format!("http://{}", proxy.addr));

    let browser = Browser::open(&format!("{origin}/"));
    let seen =
        tokio::time::timeout(Duration::from_secs(60), results.recv()).await.ok().flatten().unwrap_or_else(|| {
            panic!("the page never reported; chromium said:\n{}\nuvicorn said:\n{}", browser.log(), backend.output())
        });
    drop(browser);
    let seen: serde_json::Value = serde_json::from_str(&seen).unwrap();

    // No token: a 401 the page can read, challenge included.
    assert_eq!(seen["no_token"]["status"], 401, "{seen}");
    assert_eq!(seen["no_token"]["www_authenticate"], "Bearer", "{seen}");
    assert!(seen["no_token"]["request_id"].is_string(), "{seen}");
    // A valid token: the preflight went to the upstream, the call through.
    assert_eq!(seen["valid"]["status"], 200, "{seen}");
    let whoami: serde_json::Value = serde_json::from_str(seen["valid"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(whoami["user_id"], USER, "{seen}");
    // An invalid token: "log in again".
    assert_eq!(seen["invalid"]["status"], 401, "{seen}");
    assert!(seen["invalid"]["www_authenticate"].as_str().unwrap().contains("invalid_token"), "{seen}");
    // A route that names no origins: the page sees only what it always saw.
    assert!(seen["route_without_cors"]["error"].as_str().unwrap().starts_with("TypeError"), "{seen}");
    // LINE down: a 503 the page can read, with when to retry.
    assert_eq!(seen["line_down"]["status"], 503, "{seen}");
    assert_eq!(seen["line_down"]["retry_after"], "1", "{seen}");
    // The WebSocket: authenticated by its subprotocol entry, which the upstream
    // never saw; the page's real subprotocol selected.
    assert_eq!(seen["websocket"]["protocol"], "chat", "{seen}");
    let messages = &seen["websocket"]["messages"];
    assert_eq!(messages[0], format!("user:{USER}"), "{seen}");
    assert_eq!(messages[1], "offered:chat", "{seen}");
    assert_eq!(messages[2], "ping", "{seen}");
}
