//! Phase 3, `own_endpoints`: what the proxy answers itself on the proxy
//! listener, before routing and without a credential — today the nonce endpoint
//! (`GET {nonce.path}` → `{"nonce": …, "expires_in": …}`).

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response};
use http_body_util::{Either, Full};
use tracing::Instrument;

use super::{ProxyBody, RequestCtx};
use crate::auth::nonce::{NonceError, NonceStore};
use crate::error::{ClientError, ProxyError};
use crate::limits::{ClientKey, Limit};
use crate::routes::RouteAuth;
use crate::telemetry::Outcome;

/// `Some(answer)` when the path is one of the proxy's own endpoints.
pub async fn own_endpoints<B>(
    ctx: &mut RequestCtx<'_>,
    req: &Request<B>,
    path: &PathAndQuery,
) -> Result<Option<Response<ProxyBody>>, ProxyError> {
    let Some(nonces) = &ctx.state.nonces else { return Ok(None) };
    if path.path() != nonces.path {
        return Ok(None);
    }
    ctx.auth = RouteAuth::None;
    let answer = issue_nonce(ctx, req.method(), &nonces.store).await?;
    ctx.outcome = Outcome::NonceIssued;
    Ok(Some(answer))
}

/// `GET {nonce.path}`: a fresh nonce as `{"nonce": …, "expires_in": …}`,
/// within the client's `limits.nonces_per_minute` and its share of the store.
async fn issue_nonce(
    ctx: &RequestCtx<'_>,
    method: &Method,
    store: &NonceStore,
) -> Result<Response<ProxyBody>, ProxyError> {
    // GET only: a HEAD would store a nonce nobody ever sees.
    if method != Method::GET {
        return Err(ProxyError::Client(ClientError::NonceMethod));
    }
    let client = ClientKey::of(ctx.client);
    if let Some(budget) = &ctx.state.limits.nonces {
        budget
            .take(client)
            .map_err(|spent| ProxyError::Limited { limit: Limit::Nonces, retry_after: spent.retry_after })?;
    }
    let span = super::authenticate::redis_span(&ctx.request_id, store.redis().is_some());
    let nonce = store.issue(client).instrument(span).await.map_err(|e| match e {
        // The nonces it holds free up as they are used or expire.
        NonceError::ClientShare => ProxyError::Limited { limit: Limit::LiveNonces, retry_after: store.ttl() },
        NonceError::Full => ProxyError::NonceStoreFull,
        NonceError::Unavailable => ProxyError::NonceStore,
    })?;
    let body = serde_json::json!({ "nonce": nonce, "expires_in": store.ttl().as_secs() });
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // A nonce is single-use: no shared cache may hand it to someone else.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
