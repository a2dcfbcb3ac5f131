//! The phases that face the upstream: building the request it receives
//! (`upstream_request`), sending it (`forward`), and passing its answer back
//! (`respond`), tunnelling an authenticated WebSocket upgrade.

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::Arc;

use super::{ConnectionSlot, ProxyBody, RequestCtx};
use crate::activity::{Stamped, TunnelActivity};
use crate::cache::{Cached, Stored};
use crate::error::{ClientError, ProxyError, UpstreamError};
use crate::headers;
use crate::upstream::{FilteredBody, SendFailure, UpstreamBody};

/// The client's side of a WebSocket handshake: its connection once upgraded,
/// and the `Sec-WebSocket-Accept` that proves the upstream really switched.
pub struct ClientUpgrade {
    on: OnUpgrade,
    accept: HeaderValue,
}

/// RFC 6455 §1.3: the accept value is base64(SHA-1(key + this GUID)).
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn websocket_accept(key: &HeaderValue) -> HeaderValue {
    use base64::Engine as _;
    let mut sha1 = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    sha1.update(key.as_bytes());
    sha1.update(WEBSOCKET_GUID);
    let encoded = base64::engine::general_purpose::STANDARD.encode(sha1.finish());
    HeaderValue::try_from(encoded).expect("base64 is a valid header value")
}

/// Phase 7: hop-by-hop and `Authorization` removal, identity injection (after
/// removal, so that nothing the client named can remove it), `X-Request-Id`,
/// the authorised path, and `X-Forwarded-*`. Returns the client's side of the
/// upgrade when the request is a WebSocket handshake.
pub fn upstream_request(
    ctx: &RequestCtx<'_>,
    mut req: Request<Incoming>,
    path: PathAndQuery,
    verdict: Option<Cached>,
) -> Result<(Request<UpstreamBody>, Option<ClientUpgrade>), ProxyError> {
    let config = &ctx.state.config;
    let upgrade = super::request::is_websocket_upgrade(&req);
    let client_upgrade = match req.headers().get(header::SEC_WEBSOCKET_KEY) {
        Some(key) if upgrade => Some(ClientUpgrade { accept: websocket_accept(key), on: hyper::upgrade::on(&mut req) }),
        _ => None,
    };
    let out = req.headers_mut();
    headers::strip_for_upstream(out, upgrade, config.identity.keys.forward_authorization, ctx.conn.trusted);
    crate::auth::credential::strip_websocket_bearer(out);
    if let Some(sessions) = &ctx.state.sessions {
        super::session::strip_cookie(out, &sessions.config.cookie_name);
    }
    if let Some(cached) = &verdict {
        let Stored::Valid(encoded) = &*cached.stored else {
            return Err(ProxyError::Internal("a rejected verdict reached injection"));
        };
        inject_identity(ctx, encoded, out);
    }
    out.insert(RequestCtx::request_id_header(), ctx.request_id.clone());
    headers::trace::strip_invalid(ctx.trace, out);
    let mut req = req.map(|body| UpstreamBody::to_upstream(body, ctx.state.strip_rule.clone()));
    let upstream = &ctx.state.upstream;
    upstream.prepare(&mut req, path);
    let client = if ctx.conn.trusted {
        HeaderValue::try_from(ctx.client.to_string()).expect("an IP address is a valid header value")
    } else {
        ctx.conn.peer_ip.clone()
    };
    headers::forwarding::apply(req.headers_mut(), &ctx.conn.peer_ip, &client, ctx.conn.tls, ctx.conn.trusted);
    upstream.finish(&mut req);
    Ok((req, client_upgrade))
}

/// The identity headers and, with `[assertion]`, the signed assertion: what
/// the upstream receives and what a forward-auth 200 answers with.
pub fn inject_identity(ctx: &RequestCtx<'_>, encoded: &crate::headers::EncodedIdentity, out: &mut http::HeaderMap) {
    let identity = &ctx.state.config.identity;
    identity.names.inject(encoded, out);
    if let (Some(signer), Some(subject)) = (&ctx.state.signer, &encoded.subject) {
        out.insert(identity.assertion_header.clone(), signer.assertion(subject));
    }
}

/// Phase 8: to the upstream; 502 when it cannot be reached, 504 when its head is late.
/// An HTTP/1.1 client's request goes on its connection's own upstream
/// connection, held until the answer's body is done; a WebSocket handshake
/// (whose connection becomes a tunnel) and HTTP/2 streams go through the pool.
pub async fn forward(
    ctx: &mut RequestCtx<'_>,
    req: Request<UpstreamBody>,
    upgrade: bool,
) -> Result<Response<Incoming>, ProxyError> {
    let via = if upgrade { None } else { ctx.conn.upstream.as_ref() };
    let (response, lease) =
        ctx.state.upstream.send(req, via, &ctx.state.metrics).await.map_err(|failure| match failure {
            SendFailure::Upstream(e) => ProxyError::Upstream(e),
            SendFailure::ClientBody => ProxyError::Client(ClientError::BadBody),
        })?;
    ctx.upstream_lease = lease;
    Ok(response)
}

/// Phase 9: hop-by-hop removal on the way back; the client's HTTP version (an
/// HTTP/1.0 upstream must not turn a keep-alive HTTP/1.1 connection into one
/// closed after every answer); a 101 that answers the WebSocket handshake
/// becomes a tunnel. Any other 101 is a 502, and the upstream connection it
/// came on is closed: an upstream that said 101 without switching would
/// otherwise read every later byte of the client as plain HTTP, unchecked.
pub fn respond(
    ctx: &RequestCtx<'_>,
    mut response: Response<Incoming>,
    client_upgrade: Option<ClientUpgrade>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        let refused = match &client_upgrade {
            None => Some(UpstreamError::UnrequestedUpgrade),
            Some(client) if !completes_handshake(response.headers(), &client.accept) => {
                Some(UpstreamError::InvalidUpgrade)
            }
            Some(_) => None,
        };
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        if let Some(refused) = refused {
            // Dropped: the upstream connection is closed, never pooled.
            drop(upstream_upgrade);
            return Err(ProxyError::Upstream(refused));
        }
        let client_upgrade = client_upgrade.expect("checked above").on;
        // The tunnel holds the connection's slot: it counts against
        // server.max_connections and is waited for at shutdown.
        let ends = TunnelEnds {
            slot: ctx.conn.slot.clone(),
            closing: ctx.conn.closing.clone(),
            clock: ctx.state.clock.clone(),
            idle: ctx.state.config.server.keys.idle_timeout_ms.duration(),
        };
        tokio::spawn(tunnel(client_upgrade, upstream_upgrade, ends));
    }
    headers::strip_response_hop_by_hop(response.headers_mut(), switching);
    if ctx.version <= Version::HTTP_11 {
        declare_grpc_trailers(response.headers_mut());
    }
    *response.version_mut() = ctx.version;
    Ok(response.map(|body| Either::Left(FilteredBody::to_client(body))))
}

/// Whether a 101's headers are the answer to the handshake (RFC 6455 §4.2.2):
/// `Upgrade: websocket`, `Connection: upgrade`, and the accept value of the
/// client's key.
fn completes_handshake(headers: &http::HeaderMap, accept: &HeaderValue) -> bool {
    let upgrade = headers.get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let connection = crate::headers::connection_lists(headers, "upgrade");
    let accepted = headers.get_all(header::SEC_WEBSOCKET_ACCEPT).iter().eq(std::iter::once(accept));
    upgrade && connection && accepted
}

/// The trailers a gRPC answer ends with (grpc/doc/PROTOCOL-HTTP2.md).
const GRPC_TRAILERS: &str = "grpc-status, grpc-message, grpc-status-details-bin";

/// An HTTP/1.1 hop sends only the trailers a `Trailer` header names, and an
/// HTTP/2 upstream names none: a gRPC answer's are known, so they are declared
/// for an HTTP/1.x client. (gRPC-Web carries its trailers in the body.)
fn declare_grpc_trailers(headers: &mut http::HeaderMap) {
    let grpc = headers.get(http::header::CONTENT_TYPE).is_some_and(|v| super::grpc_kind(v) == Some(super::Grpc::Http2));
    if grpc && !headers.contains_key(http::header::TRAILER) {
        headers.insert(http::header::TRAILER, http::HeaderValue::from_static(GRPC_TRAILERS));
    }
}

/// What ends a tunnel besides either side closing: the grace period, and
/// `server.idle_timeout_ms` with no byte either way. The slot is held to the end.
struct TunnelEnds {
    slot: Arc<ConnectionSlot>,
    closing: tokio::sync::watch::Receiver<bool>,
    clock: crate::Clock,
    idle: std::time::Duration,
}

/// Copies bytes both ways between the upgraded client and upstream
/// connections, until either side closes, no byte has crossed for the idle
/// timeout, or the shutdown grace period ends.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, ends: TunnelEnds) {
    let TunnelEnds { slot: _slot, mut closing, clock, idle } = ends;
    let activity = TunnelActivity::new(clock);
    let copy = async {
        match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                let mut client = Stamped::new(TokioIo::new(client), activity.clone());
                let mut upstream = Stamped::new(TokioIo::new(upstream), activity.clone());
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    tracing::debug!(error = %e, "upgraded connection closed with an error");
                }
            }
            Err(e) => tracing::warn!(error = %e, "protocol upgrade failed"),
        }
    };
    tokio::select! {
        () = copy => {}
        () = activity.idle_for(idle) => tracing::debug!("idle tunnel closed"),
        () = crate::sync::until_set(&mut closing) => tracing::debug!("tunnel closed at the end of the grace period"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_value_is_rfc_6455s() {
        // RFC 6455 §1.3's worked example.
        let accept = websocket_accept(&HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn only_the_handshakes_answer_completes_it() {
        let accept = HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let answer = |pairs: &[(&'static str, &'static str)]| {
            let mut h = http::HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_static(v));
            }
            completes_handshake(&h, &accept)
        };
        let good = [
            ("upgrade", "WebSocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ];
        assert!(answer(&good));
        assert!(!answer(&good[..2]), "no accept");
        assert!(!answer(&good[1..]), "no upgrade");
        assert!(!answer(&[good[0], good[2]]), "no connection");
        assert!(!answer(&[good[0], good[1], ("sec-websocket-accept", "AAAAAAAAAAAAAAAAAAAAAAAAAAA=")]), "wrong accept");
        assert!(!answer(&[good[0], good[1], good[2], ("sec-websocket-accept", "second")]), "two accepts");
        assert!(!answer(&[("upgrade", "h2c"), good[1], good[2]]), "another protocol");
    }
}
