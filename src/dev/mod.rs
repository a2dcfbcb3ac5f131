//! Development tooling, behind the default-on `dev` cargo feature, so that a
//! production build (`--no-default-features --features otel`) carries no mock
//! and no code that mints tokens.
//!
//! `line-auth-proxy dev`: one command, no setup. Starts the [`mock_line`] LINE
//! Platform, an [`echo`] upstream that answers with the headers it received, and
//! the proxy wired to both, then prints `curl` lines that work as pasted. The
//! tests and benchmarks use the same mock and the same [`LoopbackServer`].

pub mod echo;
pub mod loopback;
pub mod mock_line;

use std::net::SocketAddr;

pub use loopback::LoopbackServer;
pub use mock_line::{Fault, Faults, Held, MockLine, MockLoginUser, MockToken};

/// The demo channel id the proxy accepts in `dev`.
pub const DEMO_CHANNEL_ID: &str = "1234567890";
/// A token the mock LINE Platform accepts for the demo channel.
pub const DEMO_TOKEN: &str = "demo-valid-token";
/// A token the mock issued to another channel: refused by the channel check.
pub const DEMO_OTHER_CHANNEL_TOKEN: &str = "demo-other-channel-token";
/// The demo user's LINE user id.
pub const DEMO_USER_ID: &str = "U4af4980629d5ea2b0c8d1e6f3a7b9c01";
/// The demo user's display name.
pub const DEMO_DISPLAY_NAME: &str = "Brown ブラウン";

/// Runs the demo until SIGINT/SIGTERM.
pub async fn run(listen: SocketAddr, admin_listen: SocketAddr) -> Result<(), crate::RunError> {
    if !listen.ip().to_canonical().is_loopback() {
        // The demo tokens are in the source: on a reachable address they let
        // anyone through. Loud on the terminal, and in the log for whoever
        // only keeps that.
        let warning = format!(
            "line-auth-proxy dev listens on {listen}, which is not a loopback address: anyone who can reach it is let through with the demo tokens (they are public); use --listen 127.0.0.1:PORT unless that is what you want"
        );
        eprintln!("\n!!! WARNING: {warning}\n");
        tracing::warn!(
            listen = %listen,
            "dev listens on a non-loopback address: anyone who can reach it is let through with the public demo tokens"
        );
    }
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let bind_err = |source| crate::RunError::Bind { addr: loopback, source };
    let line = MockLine::start().await.map_err(bind_err)?;
    let mut demo = MockToken::new(DEMO_CHANNEL_ID, DEMO_USER_ID, DEMO_DISPLAY_NAME);
    demo.picture_url = Some("https://profile.line-scdn.net/0hdemo".into());
    demo.status_message = Some("Hello, LINE!".into());
    line.add_token(DEMO_TOKEN, demo);
    line.add_token(
        DEMO_OTHER_CHANNEL_TOKEN,
        MockToken::new("9999999999", "U00000000000000000000000000000000", "Mallory"),
    );
    let upstream = echo::start().await.map_err(bind_err)?;
    // Web login: the mock's authorize page logs the demo user in at once. The
    // proxy's address must be known for the redirect URI, so it is bound first.
    let listener = crate::listen(listen).map_err(|source| crate::RunError::Bind { addr: listen, source })?;
    let proxy = listener.local_addr().map_err(|source| crate::RunError::Bind { addr: listen, source })?;
    let callback_host =
        if proxy.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], proxy.port())) } else { proxy };
    let secrets = DevSecrets::create().map_err(bind_err)?;
    line.set_channel_secret(DEMO_CHANNEL_ID, &secrets.channel_secret);
    line.set_login_user(MockLoginUser::new(DEMO_USER_ID, DEMO_DISPLAY_NAME));
    // The demo is configured the way an operator would write it.
    let text = format!(
        r#"
[server]
listen = "{listen}"
admin_listen = "{admin_listen}"
shutdown_grace_seconds = 2

[upstream]
url = "{upstream}"

[line]
channel_ids = ["{DEMO_CHANNEL_ID}"]
api_base_url = "{line}"
jwks_url = "{jwks}"

[[routes]]
path_prefix = "/public/"
auth = "none"

[[routes]]
path_prefix = "/login"
auth = "id_token"

[[routes]]
path_prefix = "/app/"
auth = "session"

[login]
enabled = true
channel_id = "{DEMO_CHANNEL_ID}"
channel_secret_file = {channel_secret_file:?}
redirect_uri = "http://{callback_host}/auth/callback"
authorize_url = "{authorize}"

[session]
key_files = [{session_key_file:?}]
"#,
        upstream = upstream.url(),
        line = line.base_url(),
        jwks = line.jwks_url(),
        authorize = line.authorize_url(),
        channel_secret_file = secrets.channel_secret_file.display().to_string(),
        session_key_file = secrets.session_key_file.display().to_string(),
    );
    let config = crate::config::load_str(&text, std::iter::empty()).expect("the dev configuration is valid").config;

    let bound = crate::bind_on(config, listener, crate::Clock::system()).await?;
    let admin = bound.admin_addr();
    println!(
        "\nline-auth-proxy dev: proxy http://{proxy}  admin http://{admin}\n\
         mock LINE Platform {line_url}  echo upstream {up_url}  channel {DEMO_CHANNEL_ID}\n\n\
         # a valid LINE access token: the upstream sees X-Line-* identity headers\n\
         curl -s http://{proxy}/api/hello -H 'Authorization: Bearer {DEMO_TOKEN}'\n\n\
         # an invalid token: 401, the upstream is never called\n\
         curl -si http://{proxy}/api/hello -H 'Authorization: Bearer not-a-real-token'\n\n\
         # a token issued to another channel: 401\n\
         curl -si http://{proxy}/api/hello -H 'Authorization: Bearer {DEMO_OTHER_CHANNEL_TOKEN}'\n\n\
         # spoofing: client-sent identity headers are stripped, LINE's identity wins\n\
         curl -s http://{proxy}/api/hello -H 'Authorization: Bearer {DEMO_TOKEN}' -H 'X-Line-User-Id: Uattacker' -H 'X_Line_Email: evil@example.com'\n\n\
         # a public route (auth = \"none\"): no credential needed, spoofed headers still stripped\n\
         curl -s http://{proxy}/public/info -H 'X-Line-User-Id: Uattacker'\n\n\
         # metrics\n\
         curl -s http://{admin}/metrics\n\n\
         # ID-token login: a nonce from the proxy, an ID token carrying it (minted by the\n\
         # mock LINE Platform, as the LINE SDK would get one), then the login route\n\
         NONCE=$(curl -s http://{proxy}/auth/nonce | sed -E 's/.*\"nonce\":\"([^\"]+)\".*/\\1/')\n\
         ID_TOKEN=$(curl -s \"{line_url}/mock/id_token?aud={DEMO_CHANNEL_ID}&sub={DEMO_USER_ID}&nonce=$NONCE\")\n\
         curl -s -X POST http://{proxy}/login -H \"Authorization: Bearer $ID_TOKEN\"\n\n\
         # the same ID token again: 401, its nonce was used (no replay)\n\
         curl -si -X POST http://{proxy}/login -H \"Authorization: Bearer $ID_TOKEN\"\n\n\
         # web login in a browser: the mock LINE logs you in as the demo user, and the\n\
         # echo upstream shows the identity headers it got with the session\n\
         open http://{callback_host}/app/\n\
         # log out: in that page's developer console\n\
         fetch('/auth/logout', {{method: 'POST'}})\n\n\
         Ctrl-C stops all three.\n",
        line_url = line.base_url(),
        up_url = upstream.url(),
    );
    let result = bound.serve(crate::shutdown_signal()).await;
    drop(upstream);
    drop(line);
    drop(secrets);
    result
}

/// The demo's channel secret and session key, random, in owner-only files of
/// a temporary directory that is removed when the demo ends.
struct DevSecrets {
    dir: std::path::PathBuf,
    channel_secret: Vec<u8>,
    channel_secret_file: std::path::PathBuf,
    session_key_file: std::path::PathBuf,
}

impl DevSecrets {
    fn create() -> std::io::Result<Self> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let random = |n: usize| -> std::io::Result<Vec<u8>> {
            let mut bytes = vec![0u8; n];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                .map_err(|_| std::io::Error::other("no system randomness"))?;
            Ok(bytes)
        };
        let name: String = random(8)?.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("line-auth-proxy-dev-{name}"));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let write = |file: &str, bytes: &[u8]| -> std::io::Result<std::path::PathBuf> {
            let path = dir.join(file);
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?.write_all(bytes)?;
            Ok(path)
        };
        let channel_secret: Vec<u8> = random(16)?.iter().flat_map(|b| format!("{b:02x}").into_bytes()).collect();
        let channel_secret_file = write("channel-secret", &channel_secret)?;
        let session_key_file = write("session.key", &random(32)?)?;
        Ok(Self { dir, channel_secret, channel_secret_file, session_key_file })
    }
}

impl Drop for DevSecrets {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
