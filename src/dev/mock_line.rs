//! A mock LINE Platform for `dev` and the tests. It speaks the JSON documented in
//! the LINE Login v2.1 API reference: the access-token
//! verify endpoint, the profile endpoint, the ID-token verify endpoint (with
//! LINE's documented `error_description` strings) and a JWKS of rotating ES256
//! keys, with LINE's status codes and error bodies. It signs ID tokens (ES256
//! with its keys, HS256 with a channel secret) for the tests and `dev`. Tokens,
//! faults (status codes, unreadable bodies, delays, held answers) and call
//! counters are programmable. For web login it has LINE's authorize page
//! (which logs a chosen user in at once, or cancels for them), the token
//! endpoint (codes bound to the client, the redirect URI and the PKCE
//! challenge, single use, ten minutes) and revoke, and its notion of now is a [`Clock`] the tests
//! can share with the proxy. It listens on loopback only: the real LINE
//! Platform must never receive test or load traffic.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::sync::watch;

use super::loopback::LoopbackServer;
use crate::clock::Clock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::{BodyExt, Limited};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, UnparsedPublicKey,
};

/// What LINE knows about one access token.
#[derive(Clone, Debug)]
pub struct MockToken {
    pub client_id: String,
    pub expires_in: i64,
    pub user_id: String,
    pub display_name: String,
    pub picture_url: Option<String>,
    pub status_message: Option<String>,
    /// Verify answers 400 `access token expired`, profile 401.
    pub expired: bool,
}

impl MockToken {
    /// A valid token for `client_id`, 30 days left, as LINE Login issues them.
    pub fn new(client_id: &str, user_id: &str, display_name: &str) -> Self {
        Self {
            client_id: client_id.into(),
            expires_in: 2_592_000,
            user_id: user_id.into(),
            display_name: display_name.into(),
            picture_url: None,
            status_message: None,
            expired: false,
        }
    }
}

/// A programmed failure of one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status with a LINE-style `{"message": …}` body.
    Status(u16),
    /// 429 with a `Retry-After` header of this many seconds.
    RateLimitedRetryAfter(u64),
    /// 200 with a body that is not JSON (a proxy's HTML error page, say).
    Garbage,
    /// 400 `{"error": "invalid_request", "error_description": <this>}`.
    Refuse(&'static str),
    /// 200 `application/json` with exactly this body (a hostile key set, say).
    Body(&'static str),
}

/// Faults currently in force; the default is a healthy LINE Platform.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Applied to every answer before it is sent.
    pub delay: Duration,
    pub verify: Option<Fault>,
    pub profile: Option<Fault>,
    pub jwks: Option<Fault>,
    pub verify_id_token: Option<Fault>,
    /// `POST /oauth2/v2.1/token`.
    pub token: Option<Fault>,
    /// `POST /oauth2/v2.1/revoke`.
    pub revoke: Option<Fault>,
}

/// The user LINE's authorize page logs in (the mock asks nothing: it approves
/// at once, as LINE's auto-login does).
#[derive(Clone, Debug)]
pub struct MockLoginUser {
    pub user_id: String,
    pub display_name: String,
    /// In the ID token when the `email` scope was asked for.
    pub email: Option<String>,
    /// The ID token's `amr`.
    pub amr: Vec<String>,
    /// Cancels at LINE: back to the callback with `error=access_denied`.
    pub deny: bool,
}

impl MockLoginUser {
    /// A user who approves, logged in by LINE's single sign-on.
    pub fn new(user_id: &str, display_name: &str) -> Self {
        Self {
            user_id: user_id.into(),
            display_name: display_name.into(),
            email: None,
            amr: vec!["linesso".into()],
            deny: false,
        }
    }
}

/// An authorization code LINE's authorize page issued.
struct IssuedCode {
    client_id: String,
    redirect_uri: String,
    /// `code_challenge` (S256).
    challenge: String,
    nonce: Option<String>,
    email: bool,
    /// `max_age` was asked for: the ID token carries `auth_time`.
    max_age: bool,
    user: MockLoginUser,
    issued_at: u64,
}

/// LINE's codes live ten minutes.
const CODE_LIFETIME_SECONDS: u64 = 600;

/// The issuer LINE puts in every ID token.
pub const ISSUER: &str = "https://access.line.me";

/// One ES256 key of the mock's JWKS.
struct SigningKey {
    kid: String,
    pair: EcdsaKeyPair,
}

impl SigningKey {
    fn generate() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key generation");
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("valid pkcs8");
        let mut kid = [0u8; 32];
        rng.fill(&mut kid).expect("random");
        let kid = kid.iter().map(|b| format!("{b:02x}")).collect();
        Self { kid, pair }
    }

    fn jwk(&self) -> serde_json::Value {
        let point = self.pair.public_key().as_ref();
        serde_json::json!({
            "kty": "EC", "alg": "ES256", "use": "sig", "crv": "P-256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    fn sign(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let input = signing_input(header, claims);
        let signature = self.pair.sign(&SystemRandom::new(), input.as_bytes()).expect("signing");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

struct MockState {
    clock: Clock,
    /// While true, the verification endpoints hold their answers.
    held: watch::Sender<bool>,
    tokens: Mutex<HashMap<String, MockToken>>,
    faults: Mutex<Faults>,
    verify_calls: AtomicUsize,
    profile_calls: AtomicUsize,
    jwks_calls: AtomicUsize,
    verify_id_token_calls: AtomicUsize,
    request_ids: AtomicUsize,
    /// Published in the JWKS; the last one signs.
    keys: Mutex<Vec<Arc<SigningKey>>>,
    /// Channel id → secret, for HS256 tokens at the remote verify endpoint.
    channel_secrets: Mutex<HashMap<String, Vec<u8>>>,
    /// Every token starting with this prefix is valid as this one (benchmarks).
    token_prefix: Mutex<Option<(String, MockToken)>>,
    /// Who the authorize page logs in; `None` answers 400.
    login_user: Mutex<Option<MockLoginUser>>,
    /// The next authorize call comes back with a state that is not the one
    /// sent, as LINE's auto-login failure does.
    fail_auto_login: std::sync::atomic::AtomicBool,
    codes: Mutex<HashMap<String, IssuedCode>>,
    /// Access tokens the token endpoint issued, in order.
    issued: Mutex<Vec<String>>,
    revoked: Mutex<Vec<String>>,
    last_authorize_query: Mutex<Option<String>>,
    authorize_calls: AtomicUsize,
    token_calls: AtomicUsize,
    revoke_calls: AtomicUsize,
}

impl MockState {
    /// The token's record: registered exactly, or by the benchmark prefix.
    fn lookup(&self, token: &str) -> Option<MockToken> {
        if let Some(t) = self.tokens.lock().expect("poisoned").get(token) {
            return Some(t.clone());
        }
        match &*self.token_prefix.lock().expect("poisoned") {
            Some((prefix, t)) if token.starts_with(prefix.as_str()) => Some(t.clone()),
            _ => None,
        }
    }

    fn current_key(&self) -> Arc<SigningKey> {
        self.keys.lock().expect("poisoned").last().expect("there is always a key").clone()
    }
}

/// A running mock; stops when dropped.
pub struct MockLine {
    server: LoopbackServer,
    state: Arc<MockState>,
}

/// Answers of the verification endpoints wait while this lives (see [`MockLine::hold`]).
pub struct Held(watch::Sender<bool>);

impl Held {
    /// Lets the held answers (and every later one) go.
    pub fn release(self) {}
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

impl MockLine {
    /// Starts on `127.0.0.1` with an ephemeral port, on the real clock.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with_clock(Clock::system()).await
    }

    /// Starts with `clock` as its notion of now (ID-token `iat`/`exp`, expiry checks).
    pub async fn start_with_clock(clock: Clock) -> std::io::Result<Self> {
        let state = Arc::new(MockState {
            clock,
            held: watch::channel(false).0,
            tokens: Mutex::default(),
            faults: Mutex::default(),
            verify_calls: AtomicUsize::default(),
            profile_calls: AtomicUsize::default(),
            jwks_calls: AtomicUsize::default(),
            verify_id_token_calls: AtomicUsize::default(),
            request_ids: AtomicUsize::default(),
            keys: Mutex::new(vec![Arc::new(SigningKey::generate())]),
            channel_secrets: Mutex::default(),
            token_prefix: Mutex::default(),
            login_user: Mutex::default(),
            fail_auto_login: Default::default(),
            codes: Mutex::default(),
            issued: Mutex::default(),
            revoked: Mutex::default(),
            last_authorize_query: Mutex::default(),
            authorize_calls: AtomicUsize::default(),
            token_calls: AtomicUsize::default(),
            revoke_calls: AtomicUsize::default(),
        });
        let handler_state = state.clone();
        let server = LoopbackServer::start(move |req| handle(handler_state.clone(), req)).await?;
        Ok(Self { server, state })
    }

    /// The value for `line.api_base_url`.
    pub fn base_url(&self) -> String {
        self.server.url()
    }

    /// Connections to the mock open now (the proxy's idle pool included).
    pub fn open_connections(&self) -> usize {
        self.server.open_connections()
    }

    /// Holds every answer of the verify, profile and ID-token verify endpoints
    /// (they are counted on arrival) until the returned guard is dropped.
    pub fn hold(&self) -> Held {
        self.state.held.send_replace(true);
        Held(self.state.held.clone())
    }

    pub fn add_token(&self, token: &str, info: MockToken) {
        self.state.tokens.lock().expect("poisoned").insert(token.into(), info);
    }

    /// Accepts every token that starts with `prefix` as `info` (benchmarks use
    /// many distinct fresh tokens without registering each).
    pub fn accept_prefix(&self, prefix: &str, info: MockToken) {
        *self.state.token_prefix.lock().expect("poisoned") = Some((prefix.into(), info));
    }

    pub fn remove_token(&self, token: &str) {
        self.state.tokens.lock().expect("poisoned").remove(token);
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.state.faults.lock().expect("poisoned") = faults;
    }

    pub fn verify_calls(&self) -> usize {
        self.state.verify_calls.load(Ordering::SeqCst)
    }

    pub fn profile_calls(&self) -> usize {
        self.state.profile_calls.load(Ordering::SeqCst)
    }

    pub fn jwks_calls(&self) -> usize {
        self.state.jwks_calls.load(Ordering::SeqCst)
    }

    pub fn verify_id_token_calls(&self) -> usize {
        self.state.verify_id_token_calls.load(Ordering::SeqCst)
    }

    /// The value for `line.jwks_url`.
    pub fn jwks_url(&self) -> String {
        format!("{}/oauth2/v2.1/certs", self.server.url())
    }

    /// Adds a new signing key (published next to the old ones); returns its kid.
    pub fn rotate_key(&self) -> String {
        let key = Arc::new(SigningKey::generate());
        let kid = key.kid.clone();
        self.state.keys.lock().expect("poisoned").push(key);
        kid
    }

    /// Stops publishing every key but the newest.
    pub fn retire_old_keys(&self) {
        let mut keys = self.state.keys.lock().expect("poisoned");
        let newest = keys.pop().expect("there is always a key");
        keys.clear();
        keys.push(newest);
    }

    /// The kid of the current signing key.
    pub fn current_kid(&self) -> String {
        self.state.current_key().kid.clone()
    }

    /// Registers a channel secret, for HS256 tokens at the remote verify endpoint.
    pub fn set_channel_secret(&self, channel_id: &str, secret: &[u8]) {
        self.state.channel_secrets.lock().expect("poisoned").insert(channel_id.into(), secret.to_vec());
    }

    /// The value for `login.authorize_url`.
    pub fn authorize_url(&self) -> String {
        format!("{}/oauth2/v2.1/authorize", self.server.url())
    }

    /// The user the authorize page logs in from now on.
    pub fn set_login_user(&self, user: MockLoginUser) {
        *self.state.login_user.lock().expect("poisoned") = Some(user);
    }

    /// The next authorize call (without `disable_auto_login=true`) fails the
    /// way LINE's auto-login does: back to the callback with a code that is
    /// no good and a state that is not the one sent.
    pub fn fail_next_auto_login(&self) {
        self.state.fail_auto_login.store(true, Ordering::SeqCst);
    }

    pub fn authorize_calls(&self) -> usize {
        self.state.authorize_calls.load(Ordering::SeqCst)
    }

    pub fn token_calls(&self) -> usize {
        self.state.token_calls.load(Ordering::SeqCst)
    }

    pub fn revoke_calls(&self) -> usize {
        self.state.revoke_calls.load(Ordering::SeqCst)
    }

    /// The query of the last authorize call.
    pub fn last_authorize_query(&self) -> Option<String> {
        self.state.last_authorize_query.lock().expect("poisoned").clone()
    }

    /// The access tokens the token endpoint issued, oldest first.
    pub fn issued_access_tokens(&self) -> Vec<String> {
        self.state.issued.lock().expect("poisoned").clone()
    }

    /// The access tokens revoked, oldest first.
    pub fn revoked_tokens(&self) -> Vec<String> {
        self.state.revoked.lock().expect("poisoned").clone()
    }

    /// An ES256 ID token over `claims`, signed with the current key.
    pub fn sign_es256(&self, claims: &serde_json::Value) -> String {
        let key = self.state.current_key();
        key.sign(&serde_json::json!({ "typ": "JWT", "alg": "ES256", "kid": key.kid }), claims)
    }

    /// An ES256 JWS with exactly this header, signed with the current key.
    pub fn sign_es256_with_header(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        self.state.current_key().sign(header, claims)
    }

    /// An HS256 ID token over `claims` with a channel secret (web login).
    pub fn sign_hs256(secret: &[u8], claims: &serde_json::Value) -> String {
        Self::sign_hs256_with_header(&serde_json::json!({ "typ": "JWT", "alg": "HS256" }), secret, claims)
    }

    /// An HS256 JWS with exactly this header.
    pub fn sign_hs256_with_header(header: &serde_json::Value, secret: &[u8], claims: &serde_json::Value) -> String {
        let input = signing_input(header, claims);
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The claims of a LINE ID token for `aud`/`sub`, issued now (by the mock's
    /// clock), valid an hour.
    pub fn id_claims(&self, aud: &str, sub: &str, nonce: Option<&str>) -> serde_json::Value {
        id_claims(self.state.clock.unix_seconds(), aud, sub, nonce)
    }
}

fn id_claims(now: u64, aud: &str, sub: &str, nonce: Option<&str>) -> serde_json::Value {
    let mut claims = serde_json::json!({
        "iss": ISSUER, "sub": sub, "aud": aud, "exp": now + 3600, "iat": now,
        "amr": ["linesso"], "name": "Brown", "picture": "https://profile.line-scdn.net/0hID",
    });
    if let Some(n) = nonce {
        claims["nonce"] = n.into();
    }
    claims
}

fn signing_input(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()))
}

async fn handle(state: Arc<MockState>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let faults = state.faults.lock().expect("poisoned").clone();
    if !faults.delay.is_zero() {
        tokio::time::sleep(faults.delay).await;
    }
    let request_id = format!("{:016x}", state.request_ids.fetch_add(1, Ordering::Relaxed) + 0x1000);
    let verification = matches!(path.as_str(), "/oauth2/v2.1/verify" | "/v2/profile");
    if verification {
        // Counted on arrival (below), answered once released.
        let mut held = state.held.subscribe();
        let count = match (&method, path.as_str()) {
            (&Method::GET, "/oauth2/v2.1/verify") => &state.verify_calls,
            (&Method::POST, _) => &state.verify_id_token_calls,
            _ => &state.profile_calls,
        };
        count.fetch_add(1, Ordering::SeqCst);
        let _ = held.wait_for(|held| !held).await;
    }
    let mut response = match (&method, path.as_str()) {
        (&Method::GET, "/oauth2/v2.1/verify") => match faults.verify {
            Some(fault) => fault_response(fault),
            None => verify(&state, req.uri().query().unwrap_or("")),
        },
        (&Method::GET, "/v2/profile") => match faults.profile {
            Some(fault) => fault_response(fault),
            None => profile(&state, &req),
        },
        (&Method::GET, "/oauth2/v2.1/certs") => {
            state.jwks_calls.fetch_add(1, Ordering::SeqCst);
            match faults.jwks {
                Some(fault) => fault_response(fault),
                None => jwks(&state),
            }
        }
        (&Method::POST, "/oauth2/v2.1/verify") => match faults.verify_id_token {
            Some(fault) => fault_response(fault),
            None => verify_id_token(&state, &form_body(req).await),
        },
        (&Method::GET, "/oauth2/v2.1/authorize") => {
            state.authorize_calls.fetch_add(1, Ordering::SeqCst);
            authorize(&state, req.uri().query().unwrap_or(""))
        }
        (&Method::POST, "/oauth2/v2.1/token") => {
            state.token_calls.fetch_add(1, Ordering::SeqCst);
            let form = form_body(req).await;
            match faults.token {
                Some(fault) => fault_response(fault),
                None => token(&state, &form),
            }
        }
        (&Method::POST, "/oauth2/v2.1/revoke") => {
            state.revoke_calls.fetch_add(1, Ordering::SeqCst);
            let form = form_body(req).await;
            match faults.revoke {
                Some(fault) => fault_response(fault),
                None => revoke(&state, &form),
            }
        }
        // Mock only: mints an ES256 ID token, so that `dev` can show a login.
        (&Method::GET, "/mock/id_token") => {
            let query = req.uri().query().unwrap_or("");
            let arg = |k| form_urlencoded_value(query, k);
            match (arg("aud"), arg("sub")) {
                (Some(aud), Some(sub)) => {
                    let claims = id_claims(state.clock.unix_seconds(), &aud, &sub, arg("nonce").as_deref());
                    let key = state.current_key();
                    let token = key.sign(&serde_json::json!({ "typ": "JWT", "alg": "ES256", "kid": key.kid }), &claims);
                    let mut r = Response::new(Full::new(Bytes::from(token)));
                    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    r
                }
                _ => json(StatusCode::BAD_REQUEST, serde_json::json!({ "message": "aud and sub are required" })),
            }
        }
        _ => json(StatusCode::NOT_FOUND, serde_json::json!({ "message": "Not found" })),
    };
    response.headers_mut().insert("x-line-request-id", HeaderValue::try_from(request_id).expect("hex"));
    Ok(response)
}

/// A form body, up to 64 KiB (an empty one past that).
async fn form_body(req: Request<Incoming>) -> String {
    let body = Limited::new(req.into_body(), 64 * 1024).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    String::from_utf8_lossy(&body).into_owned()
}

/// A random URL-safe string of `bytes` random bytes.
fn random_string(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    SystemRandom::new().fill(&mut raw).expect("random");
    URL_SAFE_NO_PAD.encode(raw)
}

/// `GET /oauth2/v2.1/authorize?…`: the login page, which approves at once
/// (302 to `redirect_uri` with `code` and `state`), or cancels for a denying
/// user (`error=access_denied`). A request LINE would refuse outright —
/// without `client_id`, `redirect_uri`, `state`, the `openid` scope, or with
/// a PKCE challenge that is not S256 — is a 400 page that redirects nowhere.
fn authorize(state: &MockState, query: &str) -> Response<Full<Bytes>> {
    *state.last_authorize_query.lock().expect("poisoned") = Some(query.to_owned());
    let arg = |k| form_urlencoded_value(query, k);
    let page = |status: StatusCode, text: &str| {
        let mut r = Response::new(Full::new(Bytes::from(format!("<!doctype html><title>LINE</title><p>{text}</p>"))));
        *r.status_mut() = status;
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        r
    };
    let (Some(client_id), Some(redirect_uri), Some(sent_state)) = (arg("client_id"), arg("redirect_uri"), arg("state"))
    else {
        return page(StatusCode::BAD_REQUEST, "400 Bad Request: client_id, redirect_uri and state are required");
    };
    let scope = arg("scope").unwrap_or_default();
    let pkce_ok =
        arg("code_challenge_method").as_deref() == Some("S256") && arg("code_challenge").is_some_and(|c| c.len() == 43);
    if arg("response_type").as_deref() != Some("code")
        || !scope.split(' ').any(|s| s == "openid")
        || !pkce_ok
        || !(redirect_uri.starts_with("https://") || redirect_uri.starts_with("http://"))
    {
        return page(StatusCode::BAD_REQUEST, "400 Bad Request: invalid authorization request");
    }
    let Some(user) = state.login_user.lock().expect("poisoned").clone() else {
        return page(StatusCode::BAD_REQUEST, "400 Bad Request: the mock has no login user");
    };
    let separator = if redirect_uri.contains('?') { '&' } else { '?' };
    let encode = |v: &str| form_urlencoded_encode(v);
    let back = if user.deny {
        format!(
            "{redirect_uri}{separator}error=access_denied&error_description={}&state={}",
            encode("The resource owner denied the request."),
            encode(&sent_state)
        )
    } else if arg("disable_auto_login").as_deref() != Some("true")
        && state.fail_auto_login.swap(false, Ordering::SeqCst)
    {
        // A code that is no good, and a state of the same shape that is not
        // the one sent (it belongs to a login of another browser).
        let mut other: Vec<u8> = sent_state.bytes().collect();
        let mut noise = [0u8; 64];
        SystemRandom::new().fill(&mut noise).expect("random");
        for (b, n) in other.iter_mut().skip(1).zip(noise) {
            if b.is_ascii_hexdigit() {
                *b = b"0123456789abcdef"[usize::from(n % 16)];
            }
        }
        let other = String::from_utf8(other).expect("ASCII stays ASCII");
        format!("{redirect_uri}{separator}code={}&state={}", random_string(15), encode(&other))
    } else {
        let code = random_string(15);
        let issued = IssuedCode {
            client_id,
            redirect_uri: redirect_uri.clone(),
            challenge: arg("code_challenge").unwrap_or_default(),
            nonce: arg("nonce"),
            email: scope.split(' ').any(|s| s == "email"),
            max_age: arg("max_age").is_some(),
            user,
            issued_at: state.clock.unix_seconds(),
        };
        state.codes.lock().expect("poisoned").insert(code.clone(), issued);
        format!("{redirect_uri}{separator}code={code}&state={}", encode(&sent_state))
    };
    let mut r = page(StatusCode::FOUND, "Redirecting");
    match HeaderValue::try_from(back) {
        Ok(location) => {
            r.headers_mut().insert(http::header::LOCATION, location);
            r
        }
        Err(_) => page(StatusCode::BAD_REQUEST, "400 Bad Request: redirect_uri"),
    }
}

/// `POST /oauth2/v2.1/token` (`grant_type=authorization_code`): the code is
/// used up by any try; it must be this client's, for this `redirect_uri`,
/// younger than ten minutes, and `code_verifier` must hash to its challenge.
/// The ID token is HS256 with the channel secret, as LINE signs web login's.
fn token(state: &MockState, form: &str) -> Response<Full<Bytes>> {
    let arg = |k| form_urlencoded_value(form, k);
    let error = |status: StatusCode, error: &str, description: &str| {
        json(status, serde_json::json!({ "error": error, "error_description": description }))
    };
    if arg("grant_type").as_deref() != Some("authorization_code") {
        return error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "grant_type must be authorization_code");
    }
    let (Some(code), Some(client_id), Some(redirect_uri), Some(verifier)) =
        (arg("code"), arg("client_id"), arg("redirect_uri"), arg("code_verifier"))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "code, client_id, redirect_uri and code_verifier are required",
        );
    };
    let Some(secret) = state.channel_secrets.lock().expect("poisoned").get(&client_id).cloned() else {
        return error(StatusCode::UNAUTHORIZED, "invalid_client", "invalid client");
    };
    if arg("client_secret").map(String::into_bytes).as_deref() != Some(secret.as_slice()) {
        return error(StatusCode::UNAUTHORIZED, "invalid_client", "invalid client_secret");
    }
    let Some(issued) = state.codes.lock().expect("poisoned").remove(&code) else {
        return error(StatusCode::BAD_REQUEST, "invalid_grant", "invalid authorization code");
    };
    let now = state.clock.unix_seconds();
    let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()));
    if issued.client_id != client_id
        || issued.redirect_uri != redirect_uri
        || now >= issued.issued_at + CODE_LIFETIME_SECONDS
    {
        return error(StatusCode::BAD_REQUEST, "invalid_grant", "invalid authorization code");
    }
    if issued.challenge != challenge {
        return error(StatusCode::BAD_REQUEST, "invalid_grant", "invalid code_verifier");
    }
    let user = &issued.user;
    let mut claims = id_claims(now, &client_id, &user.user_id, issued.nonce.as_deref());
    claims["name"] = user.display_name.clone().into();
    claims["amr"] = user.amr.clone().into();
    if issued.max_age {
        // The mock's user has just logged in at its authorize page.
        claims["auth_time"] = issued.issued_at.into();
    }
    if issued.email
        && let Some(email) = &user.email
    {
        claims["email"] = email.clone().into();
    }
    let id_token = MockLine::sign_hs256(&secret, &claims);
    let access_token = random_string(48);
    let mut record = MockToken::new(&client_id, &user.user_id, &user.display_name);
    record.picture_url = Some("https://profile.line-scdn.net/0hID".into());
    state.tokens.lock().expect("poisoned").insert(access_token.clone(), record);
    state.issued.lock().expect("poisoned").push(access_token.clone());
    let scope = if issued.email { "openid profile email" } else { "openid profile" };
    json(
        StatusCode::OK,
        serde_json::json!({
            "access_token": access_token, "expires_in": 2_592_000, "id_token": id_token,
            "refresh_token": random_string(15), "scope": scope, "token_type": "Bearer",
        }),
    )
}

/// `POST /oauth2/v2.1/revoke`: 200 with an empty body; the token is dead
/// (verify answers 400 for it from now on). LINE answers 200 for a token it
/// does not know, too.
fn revoke(state: &MockState, form: &str) -> Response<Full<Bytes>> {
    let (Some(token), Some(_client_id)) =
        (form_urlencoded_value(form, "access_token"), form_urlencoded_value(form, "client_id"))
    else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "invalid_request", "error_description": "access_token and client_id are required" }),
        );
    };
    state.tokens.lock().expect("poisoned").remove(&token);
    state.revoked.lock().expect("poisoned").push(token);
    Response::new(Full::new(Bytes::new()))
}

/// `GET /oauth2/v2.1/verify?access_token=…`
fn verify(state: &MockState, query: &str) -> Response<Full<Bytes>> {
    let token = form_urlencoded_value(query, "access_token");
    let Some(token) = token else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "invalid_request", "error_description": "access_token is required" }),
        );
    };
    match state.lookup(&token) {
        Some(t) if t.expired => json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "invalid_request", "error_description": "access token expired" }),
        ),
        Some(t) => json(
            StatusCode::OK,
            serde_json::json!({ "scope": "profile openid", "client_id": t.client_id, "expires_in": t.expires_in }),
        ),
        // LINE does not document the body for unknown tokens; this is the
        // documented shape with a plausible description.
        None => json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "invalid_request", "error_description": "invalid access token" }),
        ),
    }
}

/// `GET /v2/profile` with `Authorization: Bearer …`
fn profile(state: &MockState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token.and_then(|t| state.lookup(t)) {
        Some(t) if t.expired => {
            json(StatusCode::UNAUTHORIZED, serde_json::json!({ "message": "The access token expired" }))
        }
        Some(t) => {
            let mut body = serde_json::json!({ "userId": t.user_id, "displayName": t.display_name });
            if let Some(p) = &t.picture_url {
                body["pictureUrl"] = p.clone().into();
            }
            if let Some(s) = &t.status_message {
                body["statusMessage"] = s.clone().into();
            }
            json(StatusCode::OK, body)
        }
        None => json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({ "message": "Authentication failed. Confirm that the access token in the authorization header is valid." }),
        ),
    }
}

/// `GET /oauth2/v2.1/certs`: the mock's EC keys, plus an RSA key as LINE's own
/// set has had (verifiers must skip it).
fn jwks(state: &MockState) -> Response<Full<Bytes>> {
    let mut keys: Vec<serde_json::Value> = state.keys.lock().expect("poisoned").iter().map(|k| k.jwk()).collect();
    keys.push(serde_json::json!({
        "kty": "RSA", "alg": "RS256", "use": "sig", "kid": "rsa-decoy-0000",
        "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw",
        "e": "AQAB",
    }));
    json(StatusCode::OK, serde_json::json!({ "keys": keys }))
}

/// `POST /oauth2/v2.1/verify` with `id_token`, `client_id`, optional `nonce`:
/// the payload, or 400 with one of LINE's documented `error_description`s.
fn verify_id_token(state: &MockState, form: &str) -> Response<Full<Bytes>> {
    let refuse = |description: &str| {
        json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "invalid_request", "error_description": description }),
        )
    };
    let (Some(token), Some(client_id)) =
        (form_urlencoded_value(form, "id_token"), form_urlencoded_value(form, "client_id"))
    else {
        return refuse("id_token and client_id are required");
    };
    let nonce = form_urlencoded_value(form, "nonce");
    // LINE answers 400 to an empty `nonce=` (LINE-API.md §10, pitfall 2).
    if nonce.as_deref() == Some("") {
        return refuse("Invalid IdToken Nonce.");
    }
    let parts: Vec<&str> = token.split('.').collect();
    let decoded = (parts.len() == 3)
        .then(|| {
            let h = URL_SAFE_NO_PAD.decode(parts[0]).ok()?;
            let p = URL_SAFE_NO_PAD.decode(parts[1]).ok()?;
            let s = URL_SAFE_NO_PAD.decode(parts[2]).ok()?;
            Some((
                serde_json::from_slice::<serde_json::Value>(&h).ok()?,
                serde_json::from_slice::<serde_json::Value>(&p).ok()?,
                s,
            ))
        })
        .flatten();
    let Some((header, payload, signature)) = decoded else {
        return refuse("Invalid IdToken.");
    };
    let input = format!("{}.{}", parts[0], parts[1]);
    let signed = match header["alg"].as_str() {
        Some("ES256") => state.keys.lock().expect("poisoned").iter().any(|k| {
            Some(k.kid.as_str()) == header["kid"].as_str()
                && UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, k.pair.public_key().as_ref())
                    .verify(input.as_bytes(), &signature)
                    .is_ok()
        }),
        Some("HS256") => state.channel_secrets.lock().expect("poisoned").get(&client_id).is_some_and(|secret| {
            hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, secret), input.as_bytes(), &signature).is_ok()
        }),
        _ => false,
    };
    if !signed {
        return refuse("Invalid IdToken.");
    }
    if payload["iss"].as_str() != Some(ISSUER) {
        return refuse("Invalid IdToken Issuer.");
    }
    if payload["exp"].as_u64().is_none_or(|exp| exp <= state.clock.unix_seconds()) {
        return refuse("IdToken expired.");
    }
    if payload["aud"].as_str() != Some(client_id.as_str()) {
        return refuse("Invalid IdToken Audience.");
    }
    if let Some(n) = nonce
        && payload["nonce"].as_str() != Some(n.as_str())
    {
        return refuse("Invalid IdToken Nonce.");
    }
    json(StatusCode::OK, payload)
}

fn fault_response(fault: Fault) -> Response<Full<Bytes>> {
    match fault {
        Fault::Status(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let message = match status.as_u16() {
                429 => "Too Many Requests",
                500..=599 => "Internal Server Error",
                _ => "Error",
            };
            json(status, serde_json::json!({ "message": message }))
        }
        Fault::RateLimitedRetryAfter(seconds) => {
            let mut r = json(StatusCode::TOO_MANY_REQUESTS, serde_json::json!({ "message": "Too Many Requests" }));
            r.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
            r
        }
        Fault::Refuse(description) => json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "invalid_request", "error_description": description }),
        ),
        Fault::Body(body) => {
            let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Fault::Garbage => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"<html><body>502 Bad Gateway</body></html>")));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
            r
        }
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `value` percent-encoded for a query.
fn form_urlencoded_encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The decoded value of `key` in an `application/x-www-form-urlencoded` string.
fn form_urlencoded_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| {
            let v = v.replace('+', " ");
            percent_encoding::percent_decode_str(&v).decode_utf8_lossy().into_owned()
        })
    })
}
