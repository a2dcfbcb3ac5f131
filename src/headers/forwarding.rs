//! `X-Forwarded-*`: what the proxy saw of the client, for the upstream. The
//! client's own claims play no part in any decision; the peer address is
//! appended to `X-Forwarded-For`, and `-Proto` and `-Host` are set from the
//! connection and the (already authorised) `Host`.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Sets the forwarding headers for a request from `peer_ip` (over TLS or not).
/// Runs after `Host` has its final value.
pub fn apply(headers: &mut HeaderMap, peer_ip: &HeaderValue, tls: bool) {
    append_forwarded_for(headers, peer_ip);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(if tls { "https" } else { "http" }));
    match headers.get(header::HOST).cloned() {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// Appends the peer address to any `X-Forwarded-For` the client sent (kept for
/// the upstream's information; the proxy itself never decides on it).
fn append_forwarded_for(headers: &mut HeaderMap, peer_ip: &HeaderValue) {
    if !headers.contains_key(&X_FORWARDED_FOR) {
        headers.insert(X_FORWARDED_FOR.clone(), peer_ip.clone());
        return;
    }
    let mut combined = Vec::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        if !combined.is_empty() {
            combined.extend_from_slice(b", ");
        }
        combined.extend_from_slice(v.as_bytes());
    }
    combined.extend_from_slice(b", ");
    combined.extend_from_slice(peer_ip.as_bytes());
    if let Ok(value) = HeaderValue::from_bytes(&combined) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_appends_the_peer() {
        let peer = HeaderValue::from_static("10.1.2.3");
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, &peer);
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.2.3");
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        append_forwarded_for(&mut h, &peer);
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.1.2.3");
    }

    #[test]
    fn proto_and_host_come_from_the_connection() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("app.example"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(&X_FORWARDED_HOST, HeaderValue::from_static("evil.example"));
        apply(&mut h, &HeaderValue::from_static("10.0.0.1"), false);
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "app.example");
    }
}
