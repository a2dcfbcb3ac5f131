//! The phases that face the upstream: building the request it receives
//! (`upstream_request`), sending it (`forward`), and passing its answer back
//! (`respond`), tunnelling an authenticated WebSocket upgrade.

use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::Arc;

use super::{ConnectionSlot, ProxyBody, RequestCtx};
use crate::cache::{Cached, Stored};
use crate::error::{ProxyError, UpstreamError};
use crate::headers;
use crate::upstream::UpstreamBody;

/// Phase 7: hop-by-hop and `Authorization` removal, identity injection (after
/// removal, so that nothing the client named can remove it), `X-Request-Id`,
/// the authorised path, and `X-Forwarded-*`. Returns the client's side of an
/// upgrade when the request is a WebSocket handshake.
pub fn upstream_request(
    ctx: &RequestCtx<'_>,
    mut req: Request<Incoming>,
    path: PathAndQuery,
    verdict: Option<Cached>,
) -> Result<(Request<UpstreamBody>, Option<OnUpgrade>), ProxyError> {
    let config = &ctx.state.config;
    let upgrade = super::request::is_websocket_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let out = req.headers_mut();
    headers::strip_for_upstream(out, upgrade, config.identity.keys.forward_authorization, ctx.conn.trusted);
    crate::auth::credential::strip_websocket_bearer(out);
    if let Some(cached) = &verdict {
        let Stored::Valid(encoded) = &cached.stored else {
            return Err(ProxyError::Internal("a rejected verdict reached injection"));
        };
        config.identity.names.inject(encoded, out);
    }
    out.insert(RequestCtx::request_id_header(), ctx.request_id.clone());
    let mut req = req.map(|body| UpstreamBody::new(body, ctx.state.strip_rule.clone()));
    let upstream = &ctx.state.upstream;
    upstream.prepare(&mut req, path);
    headers::forwarding::apply(req.headers_mut(), &ctx.conn.peer_ip, ctx.conn.tls, ctx.conn.trusted);
    upstream.finish(&mut req);
    Ok((req, client_upgrade))
}

/// Phase 8: to the upstream; 502 when it cannot be reached, 504 when its head is late.
pub async fn forward(ctx: &RequestCtx<'_>, req: Request<UpstreamBody>) -> Result<Response<Incoming>, ProxyError> {
    ctx.state.upstream.send(req, &ctx.state.metrics).await.map_err(ProxyError::Upstream)
}

/// Phase 9: hop-by-hop removal on the way back; the client's HTTP version (an
/// HTTP/1.0 upstream must not turn a keep-alive HTTP/1.1 connection into one
/// closed after every answer); a 101 to the WebSocket handshake becomes a
/// tunnel, a 101 nobody asked for a 502.
pub fn respond(
    ctx: &RequestCtx<'_>,
    mut response: Response<Incoming>,
    client_upgrade: Option<OnUpgrade>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ProxyError::Upstream(UpstreamError::UnrequestedUpgrade));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        // The tunnel holds the connection's slot: it counts against
        // server.max_connections and is waited for at shutdown.
        tokio::spawn(tunnel(client_upgrade, upstream_upgrade, ctx.conn.slot.clone(), ctx.conn.closing.clone()));
    }
    headers::strip_response_hop_by_hop(response.headers_mut(), switching);
    *response.version_mut() = ctx.version;
    Ok(response.map(Either::Left))
}

/// Copies bytes both ways between the upgraded client and upstream
/// connections, until either side closes or the shutdown grace period ends.
async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    _slot: Arc<ConnectionSlot>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let copy = async {
        match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    tracing::debug!(error = %e, "upgraded connection closed with an error");
                }
            }
            Err(e) => tracing::warn!(error = %e, "protocol upgrade failed"),
        }
    };
    tokio::select! {
        () = copy => {}
        () = crate::sync::until_set(&mut closing) => tracing::debug!("tunnel closed at the end of the grace period"),
    }
}
