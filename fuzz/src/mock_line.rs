//! A LINE Platform on loopback whose every answer (status, body, `Retry-After`)
//! the fuzz input scripts, and the proxy's LINE client, JWKS and ID-token
//! verifiers wired to it. Built once per fuzzing process; each input sets the
//! answers, runs one verification, and reads back what the proxy sent.
//!
//! The time the proxy sees is a manual [`Clock`]: it stands still, so a
//! target's oracle reads the same "now" as the code under test.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use line_auth_proxy::Clock;
use line_auth_proxy::dev::LoopbackServer;
use line_auth_proxy::fuzzing::{LinePlatform, line_platform};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

/// The channels the proxy accepts. Only the first has an HS256 secret.
pub const CHANNEL_IDS: [&str; 2] = ["1234567890", "1657000000"];
/// `line.clock_skew_seconds` of both verifiers.
pub const CLOCK_SKEW_SECONDS: u64 = 60;
/// The HS256 secret of `CHANNEL_IDS[0]`.
pub const CHANNEL_SECRET: &[u8] = b"fuzz-channel-secret-0123456789abcdef";
/// The `kid` of the one ES256 key in the mock's JWKS.
pub const KID: &str = "fuzz-es256-key";
/// Longer than any pause a `Retry-After` can cause (the proxy caps it at 60 seconds).
pub const PAST_ANY_BACKOFF: std::time::Duration = std::time::Duration::from_secs(61);

/// Longer LINE answers are unreadable to the proxy (64 KiB).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub retry_after: Option<Vec<u8>>,
}

impl Answer {
    pub fn new(status: u16, body: &[u8]) -> Self {
        Self { status, body: body.to_vec(), retry_after: None }
    }

    /// Whether the proxy counts this answer as a failed call toward its
    /// back-off: a 429, a 5xx, or a body it does not read (over
    /// [`MAX_ANSWER_BYTES`]). Any other answer resets the count.
    pub fn counts_as_failure(&self) -> bool {
        self.status == 429 || self.status >= 500 || self.body_sent().len() > MAX_ANSWER_BYTES
    }

    /// The body the client receives: none with statuses that cannot carry one.
    pub fn body_sent(&self) -> &[u8] {
        if matches!(self.status, 204 | 205 | 304) { &[] } else { &self.body }
    }
}

/// A status the mock can answer: 200 to 599 (1xx are not final answers).
pub fn status(n: u64) -> u16 {
    if (200..=599).contains(&n) { n as u16 } else { 200 + (n % 400) as u16 }
}

/// The answers of the four endpoints.
#[derive(Clone, Debug)]
pub struct Script {
    pub verify: Answer,
    pub profile: Answer,
    pub verify_id_token: Answer,
    pub jwks: Answer,
}

/// One request the proxy sent.
#[derive(Clone, Debug)]
pub struct Call {
    /// `verify`, `profile`, `verify_id_token`, `jwks` or `unknown`.
    pub endpoint: &'static str,
    pub query: Option<String>,
    pub authorization: Option<Vec<u8>>,
    pub body: Bytes,
}

#[derive(Default)]
struct Shared {
    script: Option<Script>,
    calls: Vec<Call>,
}

/// Everything a LINE-facing target needs, built once.
pub struct Harness {
    pub runtime: tokio::runtime::Runtime,
    pub clock: Clock,
    /// `id_token_verification = "local"`: HS256 with [`CHANNEL_SECRET`], ES256 against the mock's JWKS.
    pub local: LinePlatform,
    /// `id_token_verification = "remote"`: LINE's verify endpoint decides.
    pub remote: LinePlatform,
    pub es256: EcdsaKeyPair,
    shared: Arc<Mutex<Shared>>,
    _server: LoopbackServer,
}

impl Harness {
    /// The process-wide harness (built on first use, JWKS loaded).
    pub fn get() -> &'static Harness {
        static HARNESS: OnceLock<Harness> = OnceLock::new();
        HARNESS.get_or_init(Harness::build)
    }

    fn build() -> Harness {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let server = runtime.block_on(LoopbackServer::start({
            let shared = shared.clone();
            move |request| answer(shared.clone(), request)
        }));
        let server = server.expect("the mock LINE Platform listens");
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("an ES256 key");
        let es256 =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("valid PKCS#8");
        let dir = std::env::temp_dir().join(format!("line-auth-proxy-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        let secret_file = dir.join("channel-secret");
        std::fs::write(&secret_file, CHANNEL_SECRET).expect("the secret file");
        let clock = Clock::manual();
        let config = |verification: &str| {
            let text = format!(
                r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[upstream]
url = "http://127.0.0.1:9"
[line]
channel_ids = ["{a}", "{b}"]
api_base_url = "{base}"
id_token_verification = "{verification}"
clock_skew_seconds = {CLOCK_SKEW_SECONDS}
{local}
[[routes]]
path_prefix = "/login"
auth = "id_token"
"#,
                a = CHANNEL_IDS[0],
                b = CHANNEL_IDS[1],
                base = server.url(),
                local = if verification == "local" {
                    format!(
                        "jwks_url = \"{}/jwks\"\nchannel_secret_files = {{ \"{}\" = {:?} }}",
                        server.url(),
                        CHANNEL_IDS[0],
                        secret_file.display().to_string()
                    )
                } else {
                    String::new()
                },
            );
            match line_auth_proxy::config::load_str(&text, std::iter::empty()) {
                Ok(loaded) => loaded.config,
                Err(problems) => panic!("the harness configuration is refused: {problems}"),
            }
        };
        let local = line_platform(&config("local"), clock.clone());
        let remote = line_platform(&config("remote"), clock.clone());
        let harness = Harness { runtime, clock, local, remote, es256, shared, _server: server };
        harness.set_script(harness.healthy_script());
        let jwks = harness.local.jwks.as_ref().expect("local verification has a JWKS");
        let loaded = harness.runtime.block_on(jwks.refresh());
        assert_eq!(loaded, Ok(1), "the harness JWKS loads");
        harness.take_calls();
        harness
    }

    /// Answers of a LINE Platform that accepts nothing in particular: JWKS with [`KID`].
    pub fn healthy_script(&self) -> Script {
        Script {
            verify: Answer::new(400, br#"{"error":"invalid_request","error_description":"invalid token"}"#),
            profile: Answer::new(401, br#"{"message":"invalid token"}"#),
            verify_id_token: Answer::new(400, br#"{"error":"invalid_request","error_description":"Invalid IdToken."}"#),
            jwks: Answer::new(200, self.jwks_body().as_bytes()),
        }
    }

    /// The mock's JWK set: the ES256 key and an RSA key the proxy must skip.
    pub fn jwks_body(&self) -> String {
        let point = self.es256.public_key().as_ref();
        serde_json::json!({"keys": [
            {"kty": "EC", "alg": "ES256", "use": "sig", "crv": "P-256", "kid": KID,
             "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])},
            {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "rsa", "n": "AQAB", "e": "AQAB"},
        ]})
        .to_string()
    }

    pub fn set_script(&self, script: Script) {
        self.shared.lock().expect("poisoned").script = Some(script);
    }

    /// The requests the proxy sent since the last call.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.shared.lock().expect("poisoned").calls)
    }

    /// After an input with an answer that [`Answer::counts_as_failure`]: the
    /// next input starts as the first did. The proxy backs off after five
    /// failed calls in a row (and after a 429), and an answer resets the
    /// count; so the clock passes any back-off and each client makes one
    /// access-token verification (verify and profile) against a healthy LINE.
    pub fn forget_failures(&self) {
        self.clock.advance(PAST_ANY_BACKOFF);
        self.set_script(self.healthy_script());
        for platform in [&self.local, &self.remote] {
            let answered = self.runtime.block_on(platform.client.verify_access_token("fuzz-reset-token"));
            assert!(answered.is_ok(), "a healthy LINE answers: {answered:?}");
        }
        self.take_calls();
    }
}

async fn answer(shared: Arc<Mutex<Shared>>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let endpoint = match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/oauth2/v2.1/verify") => "verify",
        (&Method::GET, "/v2/profile") => "profile",
        (&Method::POST, "/oauth2/v2.1/verify") => "verify_id_token",
        (&Method::GET, "/jwks") => "jwks",
        _ => "unknown",
    };
    let mut shared = shared.lock().expect("poisoned");
    shared.calls.push(Call {
        endpoint,
        query: parts.uri.query().map(str::to_owned),
        authorization: parts.headers.get(http::header::AUTHORIZATION).map(|v| v.as_bytes().to_vec()),
        body,
    });
    let script = shared.script.as_ref().expect("a script is set");
    let answer = match endpoint {
        "verify" => &script.verify,
        "profile" => &script.profile,
        "verify_id_token" => &script.verify_id_token,
        "jwks" => &script.jwks,
        _ => return Ok(Response::builder().status(404).body(Full::default()).expect("a response")),
    };
    let mut response = Response::builder()
        .status(StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK))
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(value) = answer.retry_after.as_deref().and_then(|v| http::HeaderValue::from_bytes(v).ok()) {
        response = response.header(http::header::RETRY_AFTER, value);
    }
    Ok(response.body(Full::new(Bytes::copy_from_slice(answer.body_sent()))).expect("a response"))
}
