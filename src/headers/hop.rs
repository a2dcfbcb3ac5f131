//! Hop-by-hop headers (RFC 9110 §7.6.1) in both directions, and the client
//! headers that would let a backend act on a request other than the one the
//! proxy authorised (routing, method and scheme overrides).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// RFC 9110 §7.6.1 hop-by-hop fields, the proxy-auth pair (§11.7), and h2c's
/// `HTTP2-Settings` (RFC 7540 §3.2.1), which only means something with `Upgrade: h2c`.
/// `Trailer` is end to end (§6.6.2): it says which trailers follow, and an
/// HTTP/1.1 hop sends only the trailers it names.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "http2-settings"
    )
}

/// Client-sent headers that backends and frameworks read as routing, method or
/// scheme decisions (`X-Original-URL` re-routes in IIS and Symfony, method
/// overrides turn a GET into a DELETE, `Forwarded` outranks `X-Forwarded-*` in
/// Spring). The proxy authorised the request line it saw; these would let the
/// backend act on another one, so they never reach it.
fn is_routing_override(name: &str) -> bool {
    matches!(
        name,
        "forwarded"
            | "x-original-url"
            | "x-original-uri"
            | "x-original-method"
            | "x-rewrite-url"
            | "x-http-method-override"
            | "x-http-method"
            | "x-method-override"
            | "x-forwarded-prefix"
            | "x-forwarded-uri"
            | "x-forwarded-method"
            | "x-forwarded-port"
            | "x-forwarded-ssl"
            | "x-forwarded-scheme"
    )
}

/// Client-sent claims of the client's address or scheme that backends use for
/// IP allow-lists and "is this https?" (nginx's `X-Real-IP`, Akamai's
/// `True-Client-IP`, Cloudflare's `CF-Connecting-IP`, …). The proxy says who
/// the client is in `X-Forwarded-For` and `X-Real-IP`; a client's own word
/// never reaches the backend, from any peer.
fn is_client_claim(name: &str) -> bool {
    matches!(
        name,
        "x-real-ip"
            | "true-client-ip"
            | "x-client-ip"
            | "cf-connecting-ip"
            | "fastly-client-ip"
            | "x-cluster-client-ip"
            | "front-end-https"
            | "x-url-scheme"
            | "x-forwarded-protocol"
    )
}

/// Before the upstream: removes hop-by-hop headers and those `Connection`
/// names, routing and method overrides, and (unless `forward_authorization`)
/// `Authorization`, in one pass over the names. `TE: trailers` survives; with
/// `keep_upgrade` (an authenticated WebSocket) so do exactly `Connection:
/// upgrade` and `Upgrade`. Runs before injection, so nothing here can remove an
/// injected header.
pub fn strip_for_upstream(headers: &mut HeaderMap, keep_upgrade: bool, forward_authorization: bool, trusted: bool) {
    strip(headers, keep_upgrade, |name| {
        // A trusted ingress's X-Forwarded-Port describes the client's connection to it.
        (is_routing_override(name) && !(trusted && name == "x-forwarded-port"))
            || is_client_claim(name)
            || (!forward_authorization && name == "authorization")
    });
}

/// On the way back: hop-by-hop headers and those the upstream's `Connection`
/// names; with `keep_upgrade` (a 101), `Connection: upgrade` and `Upgrade` stay.
pub fn strip_response_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    strip(headers, keep_upgrade, |_| false);
}

/// Fields that mean something only in the header section (RFC 9110 §6.5.1:
/// framing, routing, authentication, and what the proxy itself sets). In a
/// request's trailers they are a second, unchecked copy: an `Authorization` the
/// proxy never verified, an `X-Forwarded-For` it never wrote.
fn is_header_only(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "content-length"
            | "content-type"
            | "content-encoding"
            | "authorization"
            | "cookie"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "x-request-id"
    )
}

/// A request's trailers before the upstream: no hop-by-hop field (HTTP/2
/// refuses to send one, and the upstream's stream would hang to the timeout),
/// no routing or method override, and nothing that belongs in the header
/// section. Identity names are the caller's to strip, as in headers.
pub fn strip_request_trailers(trailers: &mut HeaderMap) {
    strip_trailers(trailers, |name| is_routing_override(name) || is_client_claim(name) || is_header_only(name));
}

/// An answer's trailers before the client: no hop-by-hop or framing field
/// (HTTP/2 resets a stream whose trailers carry one).
pub fn strip_response_trailers(trailers: &mut HeaderMap) {
    strip_trailers(trailers, |name| name == "content-length");
}

fn strip_trailers(trailers: &mut HeaderMap, also: impl Fn(&str) -> bool) {
    let doomed: Vec<HeaderName> =
        trailers.keys().filter(|name| is_hop_by_hop(name.as_str()) || also(name.as_str())).cloned().collect();
    for name in &doomed {
        trailers.remove(name);
    }
}

/// Whether a `Connection` header lists `token` (`Connection: keep-alive, Upgrade`).
pub fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
}

/// Whether a `TE` value lists `trailers` (`TE: trailers, deflate;q=0.5`).
fn lists_trailers(value: &HeaderValue) -> bool {
    value
        .to_str()
        .is_ok_and(|v| v.split(',').any(|t| t.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("trailers")))
}

fn strip(headers: &mut HeaderMap, keep_upgrade: bool, also: impl Fn(&str) -> bool) {
    // Room for the usual few on the stack (no allocation per request).
    let mut doomed: smallvec::SmallVec<[HeaderName; 8]> = smallvec::SmallVec::new();
    let mut te_trailers = false;
    let mut upgrade = None;
    for (name, value) in headers.iter() {
        let n = name.as_str();
        if n == "connection" {
            // `Connection: upgrade` itself names Upgrade: it is put back below.
            for token in value.to_str().unwrap_or("").split(',') {
                // Host is never hop-by-hop; everything else a client names goes.
                if let Ok(named) = HeaderName::from_bytes(token.trim().as_bytes())
                    && named != header::HOST
                {
                    doomed.push(named);
                }
            }
        } else if n == "te" {
            // Only `trailers` passes: the other codings are this hop's.
            te_trailers |= lists_trailers(value);
        } else if n == "upgrade" && keep_upgrade {
            upgrade = Some(value.clone());
        }
        if is_hop_by_hop(n) || also(n) {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_cannot_remove_host_and_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("example"));
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-foo, host"));
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_for_upstream(&mut h, false, true, false);
        assert!(h.contains_key(header::HOST));
        assert!(!h.contains_key("x-foo"));
        assert!(!h.contains_key("keep-alive"));
        assert!(!h.contains_key(header::UPGRADE));
        assert!(!h.contains_key(header::CONNECTION));
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
    }

    #[test]
    fn one_pass_drops_overrides_and_authorization_unless_forwarded() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        h.insert("x-original-url", HeaderValue::from_static("/admin"));
        h.insert("x-http-method-override", HeaderValue::from_static("DELETE"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        let mut kept = h.clone();
        strip_for_upstream(&mut h, false, false, false);
        assert_eq!(h.len(), 1);
        strip_for_upstream(&mut kept, false, true, false);
        assert_eq!(kept.len(), 2);
        assert!(kept.contains_key(header::AUTHORIZATION));
    }

    #[test]
    fn te_keeps_trailers_from_a_list_and_nothing_else() {
        for (te, kept) in [
            ("trailers", true),
            ("Trailers", true),
            ("trailers, deflate", true),
            ("deflate;q=0.5, trailers", true),
            ("gzip", false),
            ("trailersx", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::TE, HeaderValue::from_static(te));
            strip_for_upstream(&mut h, false, true, false);
            assert_eq!(h.get(header::TE).map(|v| v.to_str().unwrap()), kept.then_some("trailers"), "{te}");
        }
    }

    #[test]
    fn request_trailers_lose_hop_by_hop_overrides_and_header_only_fields() {
        let mut t = HeaderMap::new();
        for name in [
            "keep-alive",
            "connection",
            "te",
            "transfer-encoding",
            "authorization",
            "cookie",
            "host",
            "content-length",
            "x-forwarded-for",
            "x-original-url",
            "x-http-method-override",
            "x-request-id",
        ] {
            t.insert(HeaderName::from_static(name), HeaderValue::from_static("1"));
        }
        t.insert("x-checksum", HeaderValue::from_static("abc"));
        t.insert("grpc-status", HeaderValue::from_static("0"));
        let mut answer = t.clone();
        strip_request_trailers(&mut t);
        let mut kept: Vec<&str> = t.keys().map(HeaderName::as_str).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["grpc-status", "x-checksum"]);
        // An answer's trailers keep end-to-end fields, Authorization-like names included.
        strip_response_trailers(&mut answer);
        assert!(
            !answer.contains_key("keep-alive")
                && !answer.contains_key("connection")
                && !answer.contains_key("content-length")
        );
        assert!(answer.contains_key("x-checksum") && answer.contains_key("grpc-status"));
    }

    #[test]
    fn response_side_drops_proxy_authenticate() {
        let mut h = HeaderMap::new();
        h.insert(header::PROXY_AUTHENTICATE, HeaderValue::from_static("Basic"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-upstream", HeaderValue::from_static("1"));
        strip_response_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn authenticated_upgrade_keeps_exactly_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade, x-foo"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-foo", HeaderValue::from_static("1"));
        strip_for_upstream(&mut h, true, true, false);
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert!(!h.contains_key("x-foo"));
    }
}
