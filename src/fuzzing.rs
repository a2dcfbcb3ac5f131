//! The internal pieces the cargo-fuzz targets (`fuzz/fuzz_targets/`) drive with
//! arbitrary input. Not an API: nothing here is stable, and it is hidden from the docs.

use std::sync::Arc;

use http::HeaderName;

pub use crate::auth::credential::{
    CredentialError, MAX_TOKEN_BYTES, WEBSOCKET_BEARER_PREFIX, bearer_token, strip_websocket_bearer, websocket_bearer,
};
pub use crate::auth::id_token::{
    IdClaims, IdTokenVerifier, Jws, LINE_ISSUER, MAX_ID_TOKEN_BYTES, parse as parse_id_token,
};
pub use crate::auth::jwks::{Jwks, UNKNOWN_KID_REFETCH_INTERVAL};
pub use crate::auth::line::{Endpoint, LineClient, LineError, MAX_ACCESS_TOKEN_LIFETIME_SECONDS};
pub use crate::auth::{AuthMethod, Identity, Rejection, Verdict, is_line_user_id};
pub use crate::headers::{IdentityHeaderNames, parse_header_name, strip_identity};
pub use crate::routes::{
    DEFAULT_POLICY, PathError, Policy, Route, RouteAuth, RouteTable, check_path_prefix, normalize_path, parse_method,
};

use crate::{Clock, Config};

/// The request headers no identity prefix may cover (`crate::headers` keeps the list).
pub fn standard_request_headers() -> &'static [&'static str] {
    crate::headers::STANDARD_REQUEST_HEADERS
}

/// The route table a loaded configuration matches requests against.
pub fn routes(config: &Config) -> &RouteTable {
    &config.routes
}

/// The identity header names and the assertion header that every request is stripped of.
pub fn identity_headers(config: &Config) -> (&IdentityHeaderNames, &HeaderName) {
    (&config.identity.names, &config.identity.assertion_header)
}

/// `line.channel_ids`.
pub fn channel_ids(config: &Config) -> &[String] {
    &config.line.channel_ids
}

/// The LINE Platform side of the proxy, wired as [`crate::bind_with`] wires it,
/// without listeners, Redis or background tasks (the JWKS loads on
/// [`Jwks::refresh`]).
pub struct LinePlatform {
    pub client: Arc<LineClient>,
    /// Present when `line.id_token_verification` is `local` and some route takes ID tokens.
    pub jwks: Option<Arc<Jwks>>,
    /// Present when some route takes ID tokens.
    pub id_tokens: Option<IdTokenVerifier>,
}

/// Builds the LINE client, the JWKS and the ID-token verifier from `config`.
///
/// # Panics
/// When the HTTP client cannot be built (no TLS roots): a harness set-up failure.
pub fn line_platform(config: &Config, clock: Clock) -> LinePlatform {
    crate::install_crypto_provider();
    let metrics = Arc::new(crate::telemetry::Metrics::new());
    let client =
        Arc::new(LineClient::new(&config.line, clock.clone(), metrics.clone()).expect("the LINE client builds"));
    let jwks = config
        .id_token
        .as_ref()
        .filter(|c| c.verification == crate::config::IdTokenVerification::Local)
        .map(|c| Arc::new(Jwks::new(client.clone(), c.jwks_url.clone(), clock.clone(), metrics)));
    let id_tokens = config
        .id_token
        .as_ref()
        .map(|c| IdTokenVerifier::new(c, config.line.channel_ids.clone(), client.clone(), jwks.clone(), clock.clone()));
    LinePlatform { client, jwks, id_tokens }
}
