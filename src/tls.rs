//! TLS on the proxy listener (`server.tls_cert_file`, `server.tls_key_file`).
//!
//! [`load`] reads and checks the pair: `check`, start-up and every reload go
//! through it, so that `check` passes exactly what the proxy would serve. New
//! handshakes get the pair a [`CertResolver`] holds; a reload (SIGHUP, or a
//! change to either file seen by a poll of their metadata) swaps in a new pair
//! only when it passes [`load`], else it is logged and counted and the old pair
//! stays. Connections already open keep the certificate they were handshaken
//! with. The leaf's notAfter is a metric and, close to it, a warning.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::{self, PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::clock::Clock;
use crate::config::TlsFiles;
use crate::file_stamp::FileStamp;
use crate::telemetry::{Metrics, TlsReloadLabels};

/// A certificate whose notAfter is closer than this is a warning from `check`,
/// at start-up and at every reload (14 days).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 60 * 60);
/// How often the two files' metadata is compared with what was last read (5
/// seconds): two `stat` calls, against the minute or more a Kubernetes Secret
/// takes to reach the pod.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Either PEM file larger than this is refused unread (1 MiB: a chain with its
/// intermediates is a few KiB).
const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;

const CERT_KEY: &str = "server.tls_cert_file";
const KEY_KEY: &str = "server.tls_key_file";
const SWAPPED: &str = "are server.tls_cert_file and server.tls_key_file swapped?";

/// A certificate chain and the private key of its first certificate.
pub struct Pair {
    pub certified: Arc<CertifiedKey>,
    /// The leaf's notAfter, unix seconds.
    pub not_after: i64,
    /// The same, as `openssl x509 -enddate` prints it.
    pub not_after_text: String,
}

impl Pair {
    /// The warning for a certificate that expired or expires within
    /// [`EXPIRY_WARNING`] of `now` (unix seconds). An expired certificate is
    /// still served, as nginx and Envoy do: refusing to start would turn a
    /// certificate problem into an outage of every client, also the ones that
    /// pin or ignore the date.
    pub fn expiry_warning(&self, cert_file: &Path, now: u64) -> Option<String> {
        let left = self.not_after - now as i64;
        let cert = cert_file.display();
        let when = &self.not_after_text;
        let reload = "the proxy reloads the files on SIGHUP or when they change";
        if left <= 0 {
            let ago = describe(left.unsigned_abs());
            Some(format!("{cert}: the certificate expired {ago} ago ({when}); clients refuse it: renew it ({reload})"))
        } else if (left as u64) < EXPIRY_WARNING.as_secs() {
            let within = describe(left as u64);
            Some(format!("{cert}: the certificate expires in {within} ({when}): renew it ({reload})"))
        } else {
            None
        }
    }
}

/// "3 days", "5 hours", "1 minute": rounded to the nearest unit.
fn describe(seconds: u64) -> String {
    let (n, unit) = match seconds {
        0..3600 => (seconds.div_ceil(60), "minute"),
        3600..172800 => ((seconds + 1800) / 3600, "hour"),
        _ => ((seconds + 43200) / 86400, "day"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// What is wrong with a pair: each problem with the key it concerns. The
/// messages name files and what to do, never any key material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairProblems(pub Vec<(&'static str, String)>);

impl std::fmt::Display for PairProblems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (key, why)) in self.0.iter().enumerate() {
            write!(f, "{}{key}: {why}", if i > 0 { "; " } else { "" })?;
        }
        Ok(())
    }
}

/// The TLS files could not be loaded at start (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub PairProblems);

/// The PEM sections of a file that this module knows, and whether it holds a
/// key rustls cannot read because it is encrypted.
struct Sections {
    certs: Vec<CertificateDer<'static>>,
    keys: Vec<PrivateKeyDer<'static>>,
    encrypted_key: bool,
}

/// Reads `path` (a regular file of at most [`MAX_PEM_FILE_BYTES`]) as PEM.
fn read_sections(path: &Path) -> Result<Sections, String> {
    let bytes = crate::config::read_regular_file(path, MAX_PEM_FILE_BYTES, "PEM file")?;
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    // PKCS#8 `ENCRYPTED PRIVATE KEY`, or OpenSSL's legacy `Proc-Type: 4,ENCRYPTED`
    // header inside an `RSA PRIVATE KEY` or `EC PRIVATE KEY` section.
    let encrypted_key = contains(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") || contains(b"Proc-Type: 4,ENCRYPTED");
    let mut sections = Sections { certs: Vec::new(), keys: Vec::new(), encrypted_key };
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes) {
        let (kind, der) = match section {
            Ok(section) => section,
            // A legacy encrypted key's headers are no base64: it is reported as encrypted.
            Err(_) if encrypted_key => break,
            // The error's own text may quote a line of the file: it could be a key's.
            Err(e) => {
                let what = match e {
                    pem::Error::MissingSectionEnd { .. } => "a section has no -----END …----- line",
                    pem::Error::IllegalSectionStart { .. } => "a -----BEGIN …----- line is malformed",
                    pem::Error::Base64Decode(_) => "a section's base64 does not decode",
                    _ => "it cannot be parsed",
                };
                return Err(format!("{} is not valid PEM: {what}", path.display()));
            }
        };
        match kind {
            SectionKind::Certificate => sections.certs.push(der.into()),
            SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey => {
                sections.keys.extend(PrivateKeyDer::from_pem(kind, der))
            }
            _ => {}
        }
    }
    Ok(sections)
}

/// The certificate chain of `path`.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let s = read_sections(path)?;
    if !s.certs.is_empty() {
        Ok(s.certs)
    } else if s.keys.is_empty() && !s.encrypted_key {
        Err(format!("{} holds no certificate (no -----BEGIN CERTIFICATE----- section)", path.display()))
    } else {
        Err(format!("{} holds a private key, not a certificate: {SWAPPED}", path.display()))
    }
}

/// The notAfter of the chain's first certificate.
fn leaf_not_after(path: &Path, leaf: &CertificateDer<'_>) -> Result<x509_parser::time::ASN1Time, String> {
    x509_parser::parse_x509_certificate(leaf)
        .map(|(_, leaf)| leaf.validity().not_after)
        .map_err(|_| format!("{}: its first certificate is not a valid X.509 certificate", path.display()))
}

/// The private key of `path`, as rustls signs with it.
fn read_key(path: &Path) -> Result<Arc<dyn rustls::sign::SigningKey>, String> {
    let s = read_sections(path)?;
    let shown = path.display();
    if s.encrypted_key {
        return Err(format!(
            "{shown} holds an encrypted private key, which the proxy cannot decrypt (there is no passphrase \
             setting): store it unencrypted, e.g. `openssl pkey -in encrypted.key -out tls.key`, readable by \
             the proxy only"
        ));
    }
    let Some(key) = s.keys.into_iter().next() else {
        return Err(if s.certs.is_empty() {
            format!("{shown} holds no private key (no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY section)")
        } else {
            format!("{shown} holds a certificate, not a private key: {SWAPPED}")
        });
    };
    rustls::crypto::ring::sign::any_supported_type(&key).map_err(|_| {
        format!(
            "{shown} is not a private key rustls can use: RSA of 2048 bits or more, ECDSA P-256 or P-384, or \
             Ed25519, as PKCS#8, PKCS#1 or SEC1 PEM"
        )
    })
}

/// Why a key that is not the leaf's does not do: it may be the key of another
/// certificate in the chain (listed out of order).
fn mismatch(files: &TlsFiles, certified: &CertifiedKey) -> String {
    let (cert, key) = (files.cert_file.display(), files.key_file.display());
    let spki = certified.key.public_key();
    let spki = spki.as_ref().map(|s| s.as_ref());
    let belongs_to = certified
        .cert
        .iter()
        .skip(1)
        .position(|c| x509_parser::parse_x509_certificate(c).is_ok_and(|(_, c)| Some(c.public_key().raw) == spki));
    match belongs_to {
        Some(i) => format!(
            "{key} is the key of certificate {} in {cert}, not of the first one: list the server's own \
             certificate first, then its intermediates",
            i + 2
        ),
        None => format!(
            "{key} does not match the certificate in {cert}: the certificate was issued for another key (was \
             only one of the two files replaced?)"
        ),
    }
}

/// Reads both files and checks that they make a pair rustls can serve: a
/// certificate chain, an unencrypted private key of a supported type, and the
/// key belonging to the chain's first certificate. Every problem found is
/// returned, each under the key of the file it is about.
pub fn load(files: &TlsFiles) -> Result<Pair, PairProblems> {
    let certs = read_certs(&files.cert_file);
    let not_after = certs.as_ref().ok().map(|certs| leaf_not_after(&files.cert_file, &certs[0]));
    let key = read_key(&files.key_file);
    let (certs, not_after, key) = match (certs, not_after, key) {
        (Ok(certs), Some(Ok(not_after)), Ok(key)) => (certs, not_after, key),
        (certs, not_after, key) => {
            let cert_problem = certs.err().or(not_after.and_then(Result::err));
            let problems = [cert_problem.map(|why| (CERT_KEY, why)), key.err().map(|why| (KEY_KEY, why))];
            return Err(PairProblems(problems.into_iter().flatten().collect()));
        }
    };
    let certified = CertifiedKey::new(certs, key);
    match certified.keys_match() {
        // A key that cannot tell its public half (none of ring's) is not a mismatch.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(PairProblems(vec![(KEY_KEY, mismatch(files, &certified))]));
        }
        Err(e) => {
            let why = format!("{}: rustls cannot use its first certificate ({e})", files.cert_file.display());
            return Err(PairProblems(vec![(CERT_KEY, why)]));
        }
    }
    Ok(Pair { certified: Arc::new(certified), not_after: not_after.timestamp(), not_after_text: not_after.to_string() })
}

/// The pair new handshakes get; a reload swaps it without touching the
/// connections that already have theirs.
pub struct CertResolver(ArcSwap<CertifiedKey>);

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertResolver(<certificate and key>)")
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// What the files looked like when last read: a change of either starts a
/// reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp([Option<FileStamp>; 2]);

impl Stamp {
    fn of(files: &TlsFiles) -> Self {
        Self([FileStamp::of(&files.cert_file), FileStamp::of(&files.key_file)])
    }
}

/// TLS on the proxy listener: the acceptor, and the reloading of its pair.
pub struct Tls {
    files: TlsFiles,
    resolver: Arc<CertResolver>,
    acceptor: TlsAcceptor,
    metrics: Arc<Metrics>,
    clock: Clock,
    /// The files' metadata when the serving pair was read.
    loaded: Stamp,
}

impl Tls {
    /// Loads the pair (ALPN `h2`, `http/1.1`) and publishes its expiry.
    pub fn new(files: &TlsFiles, metrics: Arc<Metrics>, clock: Clock) -> Result<Self, TlsError> {
        // Read before the files: a change while they are read is seen by the next poll.
        let loaded = Stamp::of(files);
        let pair = load(files).map_err(TlsError)?;
        metrics.tls_cert_expiry.set(pair.not_after);
        for outcome in ["ok", "error"] {
            let _ = metrics.tls_reloads.get_or_create(&TlsReloadLabels { outcome });
        }
        let resolver = Arc::new(CertResolver(ArcSwap::new(pair.certified)));
        let mut config = rustls::ServerConfig::builder().with_no_client_auth().with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        Ok(Self { files: files.clone(), resolver, acceptor, metrics, clock, loaded })
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Re-reads the pair: a valid one serves every handshake from now on, an
    /// invalid one is logged and counted, and the pair in use stays.
    fn reload(&self, trigger: &'static str) {
        let (cert, key) = (self.files.cert_file.display(), self.files.key_file.display());
        match load(&self.files) {
            Ok(pair) => {
                let expiry = pair.expiry_warning(&self.files.cert_file, self.clock.unix_seconds());
                self.metrics.tls_cert_expiry.set(pair.not_after);
                self.resolver.0.store(pair.certified);
                self.metrics.tls_reloads.get_or_create(&TlsReloadLabels { outcome: "ok" }).inc();
                tracing::info!(trigger, cert_file = %cert, key_file = %key, not_after = %pair.not_after_text, "TLS certificate reloaded");
                if let Some(warning) = expiry {
                    tracing::warn!(key = CERT_KEY, "{warning}");
                }
            }
            Err(problems) => {
                self.metrics.tls_reloads.get_or_create(&TlsReloadLabels { outcome: "error" }).inc();
                tracing::warn!(trigger, problems = %problems, "TLS files not reloaded; new handshakes keep the previous certificate");
            }
        }
    }

    /// Reloads on every SIGHUP from `hangups`, and when a poll every
    /// [`POLL_INTERVAL`] finds either file changed since it was last read (a
    /// pair caught half-written is refused, and read again once the other file
    /// changes too). Runs until aborted.
    pub async fn run_reloader(self: Arc<Self>, mut hangups: watch::Receiver<u64>) {
        let mut seen = self.loaded;
        let mut listening = true;
        loop {
            let trigger = tokio::select! {
                changed = hangups.changed(), if listening => match changed {
                    Ok(()) => "SIGHUP",
                    // The SIGHUP listener stopped (shutdown): polling goes on.
                    Err(_) => {
                        listening = false;
                        continue;
                    }
                },
                () = self.clock.sleep(POLL_INTERVAL) => {
                    if Stamp::of(&self.files) == seen {
                        continue;
                    }
                    "file change"
                }
            };
            seen = Stamp::of(&self.files);
            self.reload(trigger);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_an_operator_would_say_them() {
        assert_eq!(describe(30), "1 minute");
        assert_eq!(describe(3 * 3600 - 5), "3 hours");
        assert_eq!(describe(3 * 86400 - 5), "3 days");
        assert_eq!(describe(86400), "24 hours");
        assert_eq!(describe(14 * 86400), "14 days");
    }

    struct Files(std::path::PathBuf);

    impl Files {
        fn with(cert: &str, key: &str) -> (Self, TlsFiles) {
            let dir = std::env::temp_dir().join(format!("lap-tls-unit-{}", rand::random::<u64>()));
            std::fs::create_dir_all(&dir).unwrap();
            let files = TlsFiles { cert_file: dir.join("tls.crt"), key_file: dir.join("tls.key") };
            std::fs::write(&files.cert_file, cert).unwrap();
            std::fs::write(&files.key_file, key).unwrap();
            (Self(dir), files)
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn issue(name: &str) -> rcgen::CertifiedKey {
        rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap()
    }

    /// The single problem of loading `cert` with `key`.
    fn problem(cert: &str, key: &str) -> (&'static str, String) {
        let (_dir, files) = Files::with(cert, key);
        let problems = load(&files).err().expect("refused").0;
        assert_eq!(problems.len(), 1, "{problems:?}");
        problems.into_iter().next().unwrap()
    }

    #[test]
    fn a_pair_loads_with_the_leaf_expiry() {
        let a = issue("localhost");
        let (_dir, files) = Files::with(&a.cert.pem(), &a.key_pair.serialize_pem());
        let pair = load(&files).unwrap();
        // rcgen's default notAfter: 4096-01-01.
        assert_eq!(pair.not_after, 67_090_118_400);
        assert!(pair.not_after_text.contains("4096"), "{}", pair.not_after_text);
        assert_eq!(pair.expiry_warning(&files.cert_file, 0), None);
        let soon = pair.expiry_warning(&files.cert_file, (pair.not_after - 3600) as u64).unwrap();
        assert!(soon.contains("expires in 1 hour"), "{soon}");
        let late = pair.expiry_warning(&files.cert_file, (pair.not_after + 2 * 86400) as u64).unwrap();
        assert!(late.contains("expired 2 days ago"), "{late}");
    }

    #[test]
    fn a_chain_listed_out_of_order_is_named_as_such() {
        let (leaf, other) = (issue("localhost"), issue("intermediate.example"));
        let chain = format!("{}{}", other.cert.pem(), leaf.cert.pem());
        let (key, why) = problem(&chain, &leaf.key_pair.serialize_pem());
        assert_eq!(key, KEY_KEY);
        assert!(why.contains("is the key of certificate 2") && why.contains("first"), "{why}");
    }

    #[test]
    fn files_without_what_they_should_hold_are_named() {
        let a = issue("localhost");
        let (cert, key) = (a.cert.pem(), a.key_pair.serialize_pem());
        let (k, why) = problem("not PEM at all\n", &key);
        assert_eq!(k, CERT_KEY);
        assert!(why.contains("holds no certificate"), "{why}");
        let (k, why) = problem(&cert, "");
        assert_eq!(k, KEY_KEY);
        assert!(why.contains("holds no private key"), "{why}");
        let truncated = &key[..key.len() - 30];
        let (k, why) = problem(&cert, truncated);
        assert_eq!(k, KEY_KEY);
        assert!(why.contains("is not valid PEM") && !why.contains(&key[40..60]), "{why}");
        let (_dir, mut files) = Files::with(&cert, &key);
        files.key_file = files.key_file.with_extension("missing");
        let problems = load(&files).err().unwrap().0;
        assert_eq!(problems[0].0, KEY_KEY);
        assert!(problems[0].1.contains("cannot read"), "{problems:?}");
    }

    #[test]
    fn problems_print_one_after_the_other_with_their_keys() {
        let p = PairProblems(vec![(CERT_KEY, "a".into()), (KEY_KEY, "b".into())]);
        assert_eq!(p.to_string(), "server.tls_cert_file: a; server.tls_key_file: b");
    }
}
