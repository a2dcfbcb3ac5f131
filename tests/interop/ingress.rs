//! The ingress examples of `deploy/ingress/`, run as shipped by the real
//! nginx and Caddy: a client → the ingress → line-auth-proxy's forward-auth
//! endpoint → the ingress forwards to a recording upstream. Only addresses are
//! rewritten (service names to loopback ports, the listener to a unix socket:
//! neither program takes port 0). Each example is first checked by its own
//! binary (`nginx -t`, `caddy validate`); the YAML ones (Traefik, Envoy, Istio)
//! are parsed.

use super::*;

/// A spoof of every kind a client can try through an ingress: identity
/// headers in three spellings, an email the token does not have, and a
/// forwarded URI naming a public route.
const CLIENT_SPOOFS: [(&str, &str); 6] = [
    ("X-Line-User-Id", "Uattacker0"),
    ("X_Line_User_Id", "Uattacker1"),
    ("x.line.user.id", "Uattacker2"),
    ("X-Line-Email", "attacker@example.com"),
    ("X-Forwarded-Uri", "/public/"),
    ("X-Original-URI", "/public/"),
];

fn example(name: &str) -> String {
    let path = repo().join("deploy/ingress").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The example with its service names pointed at loopback ports.
fn example_for(name: &str, proxy: &TestProxy, app: &RecordingUpstream) -> String {
    let app_port = app.url().rsplit(':').next().unwrap().trim_end_matches('/').to_owned();
    let text = example(name);
    for service in ["line-auth-proxy:8080", "app:8000"] {
        assert!(text.contains(service), "{name} no longer names {service}: update this test");
    }
    text.replace("line-auth-proxy:8080", &format!("127.0.0.1:{}", proxy.addr.port()))
        .replace("app:8000", &format!("127.0.0.1:{app_port}"))
}

/// nginx or Caddy, running one example, reached through a TCP relay.
struct Ingress {
    _program: Program,
    port: u16,
    _relay: tokio::task::JoinHandle<()>,
    dir: PathBuf,
}

impl Drop for Ingress {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Ingress {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Starts `command`; it is up once `socket` accepts a connection.
    async fn start(mut command: std::process::Command, dir: PathBuf, socket: PathBuf, log: PathBuf) -> Ingress {
        let (port, relay) = unix_relay(socket.clone()).await;
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("run tests/setup.sh");
        let up = eventually(Duration::from_secs(20), || {
            // The file appears at bind(), before listen(): a connection is the proof.
            let listening = std::os::unix::net::UnixStream::connect(&socket).is_ok();
            async move { listening }
        })
        .await;
        if !up {
            let _ = child.kill();
            panic!("{command:?} did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        Ingress { _program: Program { child, port, output: Arc::default() }, port, _relay: relay, dir }
    }

    /// `deploy/ingress/nginx.conf` in an nginx of its own, after `nginx -t`.
    async fn nginx(proxy: &TestProxy, app: &RecordingUpstream) -> Ingress {
        let dir = std::env::temp_dir().join(format!("lap-nginx-fa-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("nginx.sock");
        let site = example_for("nginx.conf", proxy, app);
        assert!(site.contains("\n    listen 80;\n"), "nginx.conf no longer listens on 80: update this test");
        let site = site.replace("\n    listen 80;\n", &format!("\n    listen unix:{};\n", socket.display()));
        std::fs::write(dir.join("site.conf"), site).unwrap();
        let d = dir.display();
        let main = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 64; }}\nhttp {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    \
             proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    \
             scgi_temp_path {d}/scgi;\n    include {d}/site.conf;\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), main).unwrap();
        let nginx = || {
            let mut command = std::process::Command::new("nginx");
            command.arg("-p").arg(&dir).arg("-c").arg(dir.join("nginx.conf")).arg("-e").arg(dir.join("error.log"));
            command
        };
        let mut test = nginx();
        test.arg("-t");
        let test = run_to_end(test).await;
        assert!(test.status.success(), "nginx -t: {}", String::from_utf8_lossy(&test.stderr));
        let log = dir.join("error.log");
        Ingress::start(nginx(), dir.clone(), socket, log).await
    }

    /// `deploy/ingress/Caddyfile` in a Caddy of its own, after `caddy validate`.
    async fn caddy(proxy: &TestProxy, app: &RecordingUpstream) -> Ingress {
        let dir = std::env::temp_dir().join(format!("lap-caddy-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("caddy.sock");
        let site = example_for("Caddyfile", proxy, app);
        assert!(site.contains("\n:80 {\n"), "the Caddyfile's site is no longer :80: update this test");
        // No admin endpoint (tests run in parallel), no certificates.
        let site = format!("{{\n\tadmin off\n\tauto_https off\n}}\n{site}")
            .replace("\n:80 {\n", &format!("\nhttp:// {{\n\tbind unix/{}\n", socket.display()));
        std::fs::write(dir.join("Caddyfile"), site).unwrap();
        let log = dir.join("caddy.log");
        let caddy = |args: &[&str]| {
            let mut command = std::process::Command::new("caddy");
            command.args(args).arg("--config").arg(dir.join("Caddyfile")).args(["--adapter", "caddyfile"]);
            // Caddy keeps state under $HOME / $XDG_*: the test's own directory.
            for var in ["HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME"] {
                command.env(var, &dir);
            }
            command
        };
        let validate = run_to_end(caddy(&["validate"])).await;
        assert!(
            validate.status.success(),
            "caddy validate: {}{}",
            String::from_utf8_lossy(&validate.stdout),
            String::from_utf8_lossy(&validate.stderr)
        );
        let mut run = caddy(&["run"]);
        run.stderr(std::fs::File::create(&log).unwrap());
        Ingress::start(run, dir.clone(), socket, log).await
    }
}

/// LINE, a recording app and line-auth-proxy with forward-auth on, trusting
/// loopback (the ingress).
async fn forward_auth_proxy() -> (Clock, MockLine, RecordingUpstream, TestProxy) {
    let (clock, line) = line().await;
    line.add_token("fresh-token", MockToken::new(CHANNEL, USER, "Brown"));
    let app = RecordingUpstream::start().await;
    let routes = "[forward_auth]\nenabled = true\n[[routes]]\npath_prefix = \"/public/\"\nauth = \"none\"\n";
    let proxy = proxy_for(&clock, &line, &app.url(), routes, "trusted_proxies = [\"127.0.0.1/32\"]").await;
    (clock, line, app, proxy)
}

/// Every header the upstream got that reads as `X-Line-*` once `_` and `.`
/// count as `-`, as a PHP, WSGI or CGI backend reads it.
fn line_headers(seen: &Recorded) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = seen
        .headers
        .iter()
        .filter(|(k, _)| k.as_str().replace(['_', '.'], "-").starts_with("x-line-"))
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    v.sort();
    v
}

/// The identity headers the forward-auth endpoint answers for `TOKEN`, asked directly.
async fn answered_identity(proxy: &TestProxy) -> Vec<(String, String)> {
    let r = client().get(proxy.url("/_auth/verify")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut v: Vec<(String, String)> = r
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-line-"))
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    v.sort();
    v
}

fn spoofed(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    CLIENT_SPOOFS.iter().fold(request, |r, (name, value)| r.header(*name, *value))
}

/// The whole story through one ingress.
async fn authenticates_through(ingress: &Ingress, line: &MockLine, app: &RecordingUpstream, proxy: &TestProxy) {
    let expected = answered_identity(proxy).await;
    assert!(expected.iter().any(|(k, v)| k == "x-line-user-id" && v == USER), "{expected:?}");
    let c = client();

    // A valid token: forwarded with exactly the check's identity, whatever the client sent.
    let r = spoofed(c.get(ingress.url("/api/orders?id=7")).bearer_auth(TOKEN)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let seen = app.last();
    assert_eq!(seen.path_and_query, "/api/orders?id=7");
    assert_eq!(line_headers(&seen), expected, "the app saw another identity than the check answered");

    // The body goes to the app, not to the check.
    let r = c.post(ingress.url("/echo-body")).bearer_auth(TOKEN).body("a request body").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "a request body");
    let hits = app.hits();

    // No token, with a forwarded URI naming the public route: refused, not forwarded.
    let r = spoofed(c.get(ingress.url("/api/orders"))).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"), "{:?}", r.headers());
    let r = c.get(ingress.url("/api/orders")).bearer_auth("not-a-token").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().contains("error=\"invalid_token\""));
    // An encoded `/` in the original URI: the check's 400, not the ingress's 500.
    let r = c.get(ingress.url("/public%2F..%2Fadmin")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(app.hits(), hits, "a refused request reached the app");

    // A public route: forwarded without any identity, the client's spoofs gone.
    let r = spoofed(c.get(ingress.url("/public/page"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let seen = app.last();
    assert_eq!(seen.path_and_query, "/public/page");
    assert_eq!(line_headers(&seen), vec![], "a public route carried identity headers");
    let hits = app.hits();

    // LINE down: the client gets 503 with Retry-After, never 500 nor 200.
    line.set_faults(verify_fails(Fault::Status(500)));
    let r = c.get(ingress.url("/api/orders")).bearer_auth("fresh-token").send().await.unwrap();
    assert_eq!(r.status(), 503);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert_eq!(app.hits(), hits, "a request reached the app while LINE was down");
    line.set_faults(Faults::default());
}

#[tokio::test]
async fn nginx_auth_request_authenticates_through_forward_auth() {
    let (_clock, line, app, proxy) = forward_auth_proxy().await;
    let nginx = Ingress::nginx(&proxy, &app).await;
    authenticates_through(&nginx, &line, &app, &proxy).await;
}

#[tokio::test]
async fn caddy_forward_auth_authenticates_through_forward_auth() {
    let (_clock, line, app, proxy) = forward_auth_proxy().await;
    let caddy = Ingress::caddy(&proxy, &app).await;
    authenticates_through(&caddy, &line, &app, &proxy).await;
}

/// Traefik, Envoy and Istio do not run here: their examples are parsed and
/// the settings line-auth-proxy depends on checked
/// (`apps/check_ingress_yaml.py`: identity copied and client copies removed
/// first, the check at `/_auth/verify`, failing closed with 503).
#[tokio::test]
async fn the_traefik_envoy_and_istio_examples_parse_and_fail_closed() {
    let mut command = std::process::Command::new(python());
    command.arg(apps().join("check_ingress_yaml.py")).arg(repo().join("deploy/ingress"));
    let out = run_to_end(command).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().filter(|l| l.starts_with("checked ")).count(), 4, "{stdout}");
}
