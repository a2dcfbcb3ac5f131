//! TLS test material: rcgen certificates for `localhost` with a chosen
//! notAfter, written where the proxy's `server.tls_*_file` keys point, and a
//! real rustls handshake that reports the certificate the proxy presented.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use line_auth_proxy::Clock;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A self-signed certificate and its key, as PEM, and when it expires.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
    /// notAfter, unix seconds.
    pub not_after: u64,
}

/// A certificate for `localhost` that expires `valid_for` from now (whole
/// seconds, as X.509 writes them).
pub fn issue(valid_for: Duration) -> Issued {
    let not_after = Clock::system().unix_seconds() + valid_for.as_secs();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(not_after);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec(), not_after }
}

/// [`issue`], valid for a year.
pub fn issue_for_a_year() -> Issued {
    issue(Duration::from_secs(365 * 24 * 3600))
}

/// A directory removed on drop, holding `tls.crt` and `tls.key`.
pub struct TlsDir(pub PathBuf);

impl TlsDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("lap-tls-{}-{}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn cert(&self) -> PathBuf {
        self.0.join("tls.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.0.join("tls.key")
    }

    /// Writes both files, each by a rename into place (as certbot and
    /// cert-manager's tools do): the proxy never reads half a file.
    pub fn write(&self, cert_pem: &str, key_pem: &str) {
        replace(&self.cert(), cert_pem);
        replace(&self.key(), key_pem);
    }

    /// The `[server]` lines that name the two files.
    pub fn server_keys(&self) -> String {
        format!("tls_cert_file = {:?}\ntls_key_file = {:?}\n", self.cert(), self.key())
    }
}

impl Drop for TlsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replaces `path` by writing a sibling and renaming it over.
pub fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension(format!("tmp{}", rand::random::<u32>()));
    std::fs::write(&tmp, text).unwrap();
    // Owner-only, as a key file should be (the proxy warns about anything wider).
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Completes a TLS handshake with the proxy as `localhost`, trusting only
/// `trusted`; the connection and the DER of the certificate it presented.
pub async fn handshake(addr: SocketAddr, trusted: &[&Issued]) -> (TlsStream<TcpStream>, Vec<u8>) {
    let mut roots = rustls::RootCertStore::empty();
    for issued in trusted {
        roots.add(issued.der.clone().into()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    let presented = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (stream, presented)
}

/// The certificate a new handshake gets.
pub async fn presented(addr: SocketAddr, trusted: &[&Issued]) -> Vec<u8> {
    handshake(addr, trusted).await.1
}
