//! A mock LINE Platform for `dev` and the tests. It speaks the JSON documented in
//! the LINE Login v2.1 reference (see `shared/LINE-API.md`): the access-token
//! verify endpoint and the profile endpoint, with LINE's status codes and error
//! bodies. Tokens, faults (status codes, unreadable bodies, delays) and call
//! counters are programmable. It listens on loopback only: the real LINE
//! Platform must never receive test or load traffic.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

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
}

/// Faults currently in force; the default is a healthy LINE Platform.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Applied to every answer before it is sent.
    pub delay: Duration,
    pub verify: Option<Fault>,
    pub profile: Option<Fault>,
}

#[derive(Default)]
struct MockState {
    tokens: Mutex<HashMap<String, MockToken>>,
    faults: Mutex<Faults>,
    verify_calls: AtomicUsize,
    profile_calls: AtomicUsize,
    request_ids: AtomicUsize,
}

/// A running mock; stops when dropped.
pub struct MockLine {
    addr: SocketAddr,
    state: Arc<MockState>,
    task: JoinHandle<()>,
}

impl Drop for MockLine {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockLine {
    /// Starts on `127.0.0.1` with an ephemeral port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(MockState::default());
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(Self { addr, state, task })
    }

    /// The value for `line.api_base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn add_token(&self, token: &str, info: MockToken) {
        self.state
            .tokens
            .lock()
            .expect("poisoned")
            .insert(token.into(), info);
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
}

async fn accept_loop(listener: TcpListener, state: Arc<MockState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(state.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    state: Arc<MockState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let faults = state.faults.lock().expect("poisoned").clone();
    if !faults.delay.is_zero() {
        tokio::time::sleep(faults.delay).await;
    }
    let request_id = format!(
        "{:016x}",
        state.request_ids.fetch_add(1, Ordering::Relaxed) + 0x1000
    );
    let mut response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/oauth2/v2.1/verify") => {
            state.verify_calls.fetch_add(1, Ordering::SeqCst);
            match faults.verify {
                Some(fault) => fault_response(fault),
                None => verify(&state, req.uri().query().unwrap_or("")),
            }
        }
        (&Method::GET, "/v2/profile") => {
            state.profile_calls.fetch_add(1, Ordering::SeqCst);
            match faults.profile {
                Some(fault) => fault_response(fault),
                None => profile(&state, &req),
            }
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "message": "Not found" }),
        ),
    };
    response.headers_mut().insert(
        "x-line-request-id",
        HeaderValue::try_from(request_id).expect("hex"),
    );
    Ok(response)
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
    let tokens = state.tokens.lock().expect("poisoned");
    match tokens.get(&token) {
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
    let tokens = state.tokens.lock().expect("poisoned");
    match token.and_then(|t| tokens.get(t)) {
        Some(t) if t.expired => json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({ "message": "The access token expired" }),
        ),
        Some(t) => {
            let mut body =
                serde_json::json!({ "userId": t.user_id, "displayName": t.display_name });
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
            let mut r = json(
                StatusCode::TOO_MANY_REQUESTS,
                serde_json::json!({ "message": "Too Many Requests" }),
            );
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
            r
        }
        Fault::Garbage => {
            let mut r = Response::new(Full::new(Bytes::from_static(
                b"<html><body>502 Bad Gateway</body></html>",
            )));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
            r
        }
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The decoded value of `key` in an `application/x-www-form-urlencoded` string.
fn form_urlencoded_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| {
            let v = v.replace('+', " ");
            percent_encoding::percent_decode_str(&v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}
