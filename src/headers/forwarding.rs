//! `X-Forwarded-*`: what the proxy saw of the client, for the upstream, and
//! whose word on it the proxy takes.
//!
//! From any peer, the peer address is appended to `X-Forwarded-For`. From a
//! peer in `server.trusted_proxies` (an ingress that terminated TLS), its
//! `X-Forwarded-Proto`, `-Host` and `-Port` pass on unchanged: they describe
//! the client's connection to the ingress, which the backend needs to build its
//! own URLs (Flask `ProxyFix`, Express `trust proxy`, Spring). From anyone else
//! `-Proto` and `-Host` are set from the connection and the authorised `Host`,
//! and `-Port` is removed (with the other override headers, in `hop.rs`).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The peers whose forwarding headers are taken at their word.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// CIDRs (`10.0.0.0/8`, `fd00::/8`) or single addresses; the errors name
    /// each entry that is neither, by its index.
    pub fn parse(entries: &[String]) -> Result<Self, Vec<(usize, String)>> {
        let mut nets = Vec::with_capacity(entries.len());
        let mut errors = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let trimmed = entry.trim();
            match trimmed.parse::<IpNet>().or_else(|_| trimmed.parse::<IpAddr>().map(IpNet::from)) {
                Ok(net) => nets.push(as_ipv4_when_mapped(net.trunc())),
                Err(_) => errors.push((
                    i,
                    format!("{entry:?} is not a CIDR or an IP address, e.g. \"10.0.0.0/8\" or \"fd00::/8\""),
                )),
            }
        }
        if errors.is_empty() { Ok(Self(nets)) } else { Err(errors) }
    }

    /// True when `peer` is in one of the networks. An IPv4 peer on a dual-stack
    /// listener arrives as `::ffff:a.b.c.d` and is matched as `a.b.c.d`.
    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.0.iter().any(|net| net.contains(&peer))
    }

    /// Whether an entry covers every address of its family (`0.0.0.0/0`, `::/0`).
    pub fn trusts_everyone(&self) -> bool {
        self.0.iter().any(|net| net.prefix_len() == 0)
    }
}

/// `::ffff:10.0.0.0/104` is `10.0.0.0/8`: peers are matched in canonical form
/// (an IPv4 peer on a dual-stack listener is matched as IPv4), so an entry
/// written IPv4-mapped must be too, or it would never match.
fn as_ipv4_when_mapped(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

/// The client a request is from, for per-client limits and `X-Real-IP`: the
/// peer, unless the peer is a trusted proxy; then the nearest `X-Forwarded-For`
/// entry that is not itself a trusted proxy, read from the right (the entries a
/// trusted proxy appended; anything left of the first untrusted one is the
/// client's own claim). When every entry is trusted, the leftmost; when an
/// entry is not an address, the hop to its right, which is trusted to have
/// written it.
pub fn client_address(headers: &HeaderMap, peer: IpAddr, trusted: &TrustedProxies) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    let mut client = peer;
    let lists: Vec<&HeaderValue> = headers.get_all(&X_FORWARDED_FOR).iter().collect();
    for value in lists.into_iter().rev() {
        let Ok(list) = value.to_str() else { return client };
        for entry in list.rsplit(',') {
            let Some(hop) = parse_hop(entry) else { return client };
            client = hop;
            if !trusted.contains(hop) {
                return hop;
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, IPv6 perhaps bracketed, perhaps
/// with a port (`[2001:db8::1]:443`, `192.0.2.1:443`).
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = entry.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse::<IpAddr>().ok()).map(|ip| ip.to_canonical());
    }
    entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip().to_canonical())
}

/// Sets the forwarding headers for a request from `peer_ip` (over TLS or not;
/// from a trusted proxy or not) on behalf of `client` (the peer, or behind a
/// trusted proxy its first hop: [`client_address`]), which `X-Real-IP` names.
/// Runs after `Host` has its final value, and after client claims are stripped.
pub fn apply(headers: &mut HeaderMap, peer_ip: &HeaderValue, client: &HeaderValue, tls: bool, trusted: bool) {
    append_forwarded_for(headers, peer_ip);
    headers.insert(X_REAL_IP.clone(), client.clone());
    if trusted && headers.contains_key(&X_FORWARDED_PROTO) {
        // The ingress's word on the client's scheme stands.
    } else {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(if tls { "https" } else { "http" }));
    }
    if trusted && headers.contains_key(&X_FORWARDED_HOST) {
        return;
    }
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
    fn the_client_is_the_nearest_untrusted_hop_behind_a_trusted_proxy() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap();
        let client = |peer: &str, xff: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in xff {
                h.append(&X_FORWARDED_FOR, HeaderValue::from_static(v));
            }
            client_address(&h, peer.parse().unwrap(), &trusted).to_string()
        };
        // From an untrusted peer, X-Forwarded-For is never read.
        assert_eq!(client("192.0.2.9", &["198.51.100.1"]), "192.0.2.9");
        // Behind the ingress: the address it appended, not the client's own claims.
        assert_eq!(client("10.0.0.5", &["6.6.6.6, 198.51.100.1"]), "198.51.100.1");
        assert_eq!(client("10.0.0.5", &["6.6.6.6", "198.51.100.1, 10.0.0.7"]), "198.51.100.1");
        assert_eq!(client("::ffff:10.0.0.5", &["[2001:db8::1]:443"]), "2001:db8::1");
        assert_eq!(client("10.0.0.5", &["198.51.100.1:8443"]), "198.51.100.1");
        // No header, or only trusted hops: the last one known.
        assert_eq!(client("10.0.0.5", &[]), "10.0.0.5");
        assert_eq!(client("10.0.0.5", &["10.0.0.1, 10.0.0.2"]), "10.0.0.1");
        // Garbage a trusted hop passed on: the hop that passed it.
        assert_eq!(client("10.0.0.5", &["unknown, 10.0.0.2"]), "10.0.0.2");
    }

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
        apply(&mut h, &HeaderValue::from_static("10.0.0.1"), &HeaderValue::from_static("10.0.0.1"), false, false);
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "app.example");
    }

    #[test]
    fn a_trusted_ingress_keeps_its_word_and_fills_in_what_it_left_out() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("10.0.0.7:8080"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(&X_FORWARDED_HOST, HeaderValue::from_static("app.example"));
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        apply(&mut h, &HeaderValue::from_static("10.0.0.1"), &HeaderValue::from_static("10.0.0.1"), false, true);
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "app.example");
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.9, 10.0.0.1");
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("app.example"));
        apply(&mut h, &HeaderValue::from_static("10.0.0.1"), &HeaderValue::from_static("10.0.0.1"), true, true);
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "app.example");
    }

    #[test]
    fn trusted_networks_match_v4_v6_and_mapped_peers() {
        let t = TrustedProxies::parse(&["10.0.0.0/8".into(), "fd00::/8".into(), "192.0.2.7".into()]).unwrap();
        for inside in ["10.1.2.3", "fd12::1", "192.0.2.7", "::ffff:10.9.9.9"] {
            assert!(t.contains(inside.parse().unwrap()), "{inside}");
        }
        for outside in ["11.0.0.1", "fe80::1", "192.0.2.8", "::ffff:11.0.0.1", "127.0.0.1"] {
            assert!(!t.contains(outside.parse().unwrap()), "{outside}");
        }
        assert!(!t.trusts_everyone());
        assert!(TrustedProxies::parse(&["0.0.0.0/0".into()]).unwrap().trusts_everyone());
        let bad = TrustedProxies::parse(&["10.0.0.0/8".into(), "10.0.0.0/33".into(), "ingress".into()]).unwrap_err();
        assert_eq!(bad.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn entries_written_ipv4_mapped_match_ipv4_peers() {
        let t = TrustedProxies::parse(&["::ffff:127.0.0.1".into(), "::ffff:10.0.0.0/104".into()]).unwrap();
        for inside in ["127.0.0.1", "::ffff:127.0.0.1", "10.200.0.1", "::ffff:10.0.0.9"] {
            assert!(t.contains(inside.parse().unwrap()), "{inside}");
        }
        for outside in ["127.0.0.2", "11.0.0.1", "::1"] {
            assert!(!t.contains(outside.parse().unwrap()), "{outside}");
        }
        // Not mapped space: stays IPv6, and matches no IPv4 peer.
        let v6 = TrustedProxies::parse(&["::/0".into()]).unwrap();
        assert!(v6.contains("2001:db8::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
    }
}
