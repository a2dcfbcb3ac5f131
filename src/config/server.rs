//! `[server]`: the listeners, the request-head bounds, the connection bound,
//! and the shutdown drain.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use super::Problems;
use super::keys::{Bytes, Count, Millis, Seconds, section};
use crate::headers::forwarding::TrustedProxies;

/// `server.listen`: every interface, port 8080.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080);
/// `server.admin_listen`: loopback, port 9901.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9901);
/// `server.shutdown_grace_seconds` (20 seconds).
pub const DEFAULT_SHUTDOWN_GRACE_SECONDS: u64 = 20;
/// `server.shutdown_delay_seconds` (0 seconds: drain at once).
pub const DEFAULT_SHUTDOWN_DELAY_SECONDS: u64 = 0;
/// `server.max_header_bytes` (16384 bytes).
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 16 * 1024;
/// `server.max_connections` (10000 connections).
pub const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;
/// `server.idle_timeout_ms` (75000 milliseconds, as nginx's `keepalive_timeout`).
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 75_000;
/// `server.header_read_timeout_ms` (10000 milliseconds).
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;

section! {
    /// `[server]`
    pub struct ServerSection("server") {
        /// The proxy listener, `IP:port` (`127.0.0.1:0`: any free port, reported at start).
        listen: SocketAddr = DEFAULT_LISTEN,
        /// `/healthz`, `/readyz` and `/metrics`, `IP:port`; never the proxy's port.
        admin_listen: SocketAddr = DEFAULT_ADMIN_LISTEN,
        /// After SIGTERM or SIGINT, in-flight requests get this long to finish.
        shutdown_grace_seconds: Seconds<0, 3600> = DEFAULT_SHUTDOWN_GRACE_SECONDS,
        /// After SIGTERM or SIGINT, `/readyz` is 503 at once but the proxy keeps
        /// serving this long before it drains, so that load balancers and
        /// Kubernetes endpoints stop sending to it first.
        shutdown_delay_seconds: Seconds<0, 3600> = DEFAULT_SHUTDOWN_DELAY_SECONDS,
        /// Request line plus headers above this are answered 431.
        max_header_bytes: Bytes<1024, 1048576> = DEFAULT_MAX_HEADER_BYTES,
        /// A connection with nothing in flight this long is closed: an HTTP/1.1
        /// keep-alive connection between requests, an HTTP/2 connection with no
        /// open stream (whatever PINGs it answers; it gets a GOAWAY), a WebSocket
        /// tunnel with no byte either way.
        idle_timeout_ms: Millis<1, 3600000> = DEFAULT_IDLE_TIMEOUT_MS,
        /// Concurrent client connections (WebSocket tunnels included); more wait
        /// in the kernel's accept queue.
        max_connections: Count<1, 1000000> = DEFAULT_MAX_CONNECTIONS,
        /// Time a client gets to send a complete request head, from its first
        /// byte (the first head: from the accept, TLS handshake included); then
        /// the connection is closed.
        header_read_timeout_ms: Millis<1, 600000> = DEFAULT_HEADER_READ_TIMEOUT_MS,
        /// PEM certificate chain, the server's own certificate first: with
        /// `tls_key_file`, `listen` serves TLS (rustls). Both files are read
        /// again on SIGHUP and when either changes.
        tls_cert_file: Option<PathBuf>,
        /// PEM private key of `tls_cert_file`, unencrypted.
        tls_key_file: Option<PathBuf>,
        /// Runtime threads. Unset: the container's CPU quota (cgroup `cpu.max`),
        /// else the CPUs the process may run on; 1 is a current-thread runtime.
        workers: Option<Count<1, 1024>>,
        /// Peers (an ingress that terminated TLS) whose `X-Forwarded-Proto`,
        /// `-Host` and `-Port` pass on unchanged: CIDRs or addresses, IPv4 and IPv6.
        trusted_proxies: Vec<String>,
    }
}

/// `[server]`, validated: the keys as declared, the TLS file pair, and the
/// trusted proxies' networks.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    pub keys: ServerSection,
    pub tls: Option<TlsFiles>,
    pub trusted_proxies: TrustedProxies,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl ServerSection {
    pub(super) fn validate(&self, p: &mut Problems) -> ServerConfig {
        // `[::ffff:127.0.0.1]` is 127.0.0.1: compare canonical addresses.
        let (a, b) = (self.listen, self.admin_listen);
        let (ia, ib) = (a.ip().to_canonical(), b.ip().to_canonical());
        if a.port() != 0 && a.port() == b.port() && (ia == ib || ia.is_unspecified() || ib.is_unspecified()) {
            p.error(
                "server.admin_listen",
                "must differ from server.listen: /metrics and /readyz are never served on the proxy port",
            );
        }
        let tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => {
                let files = TlsFiles { cert_file: cert.clone(), key_file: key.clone() };
                // The same reading and checks as start-up and every reload.
                match crate::tls::load(&files) {
                    Ok(pair) => {
                        let now = crate::clock::Clock::system().unix_seconds();
                        if let Some(warning) = pair.expiry_warning(cert, now) {
                            p.warn("server.tls_cert_file", warning);
                        }
                    }
                    Err(problems) => {
                        for (key, why) in problems.0 {
                            p.error(key, why);
                        }
                    }
                }
                super::secret::check_permissions("server.tls_key_file", key, p);
                Some(files)
            }
            (None, None) => None,
            (Some(_), None) => {
                p.error("server.tls_key_file", "is required when server.tls_cert_file is set");
                None
            }
            (None, Some(_)) => {
                p.error("server.tls_cert_file", "is required when server.tls_key_file is set");
                None
            }
        };
        let trusted_proxies = TrustedProxies::parse(&self.trusted_proxies).unwrap_or_else(|errors| {
            for (i, why) in errors {
                p.error(format!("server.trusted_proxies[{i}]"), why);
            }
            TrustedProxies::default()
        });
        if trusted_proxies.trusts_everyone() {
            p.warn(
                "server.trusted_proxies",
                "trusts every peer (a /0 network): any client can then set X-Forwarded-Proto, -Host and -Port",
            );
        }
        ServerConfig { keys: self.clone(), tls, trusted_proxies }
    }
}
