//! `rediss://` to a real redis-server speaking TLS with a certificate from a
//! private CA: trusted once `nonce.redis_ca_file` names that CA; without it,
//! refused (503, fail closed), and the log says it is the certificate, never
//! the password. One test: it installs the process-wide subscriber.
#![cfg(feature = "dev")]

mod support;

use std::time::Duration;

use line_auth_proxy::{LogFormat, init_tracing_with};
use support::*;

const PASSWORD: &str = "s3cret-Tls-Redis-Passw0rd";

/// A CA, and a certificate it signed for 127.0.0.1 and localhost: (CA PEM,
/// server certificate PEM, server key PEM).
fn private_ca() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    ca.distinguished_name.push(rcgen::DnType::CommonName, "line-auth-proxy test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = server.signed_by(&key, &ca_cert, &ca_key).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

async fn proxy_with(redis_url: &str, ca_file: Option<&std::path::Path>) -> (MockLine, RecordingUpstream, TestProxy) {
    let line = MockLine::start().await.unwrap();
    let upstream = RecordingUpstream::start().await;
    let ca = ca_file.map_or_else(String::new, |path| format!("redis_ca_file = {path:?}\n"));
    let extra = format!(
        "[[routes]]\npath_prefix = \"/login\"\nauth = \"id_token\"\n[nonce]\nstore = \"redis\"\nredis_url = \"{redis_url}\"\n{ca}{}",
        mac_key_line()
    );
    let text =
        config_text_line(&line.base_url(), &upstream.url(), &format!("jwks_url = \"{}\"\n", line.jwks_url()), &extra);
    let proxy = spawn_proxy_unready_with(config(&text), &Clock::manual()).await;
    (line, upstream, proxy)
}

#[tokio::test]
async fn a_private_ca_is_trusted_with_redis_ca_file_and_a_refused_certificate_is_logged_as_such() {
    let capture = Capture::default();
    init_tracing_with(LogFormat::Text, Some("info"), capture.clone());
    let (ca_pem, cert_pem, key_pem) = private_ca();
    let redis = RedisServer::start_tls(&cert_pem, &key_pem, Some(PASSWORD)).await;
    let dir = std::env::temp_dir().join(format!("lap-redis-ca-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let c = client();

    // With the CA: ready, and nonces live in Redis, reached over TLS.
    let (_line, _upstream, trusted) = proxy_with(&redis.tls_url(0), Some(&ca_file)).await;
    assert!(eventually_status(&trusted.admin_url("/readyz"), 200, 10).await, "never ready over rediss://");
    let r = c.get(trusted.url("/auth/nonce")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let nonce = r.json::<serde_json::Value>().await.unwrap()["nonce"].as_str().unwrap().to_owned();
    assert_eq!(redis.keys(0, &format!("line-auth-proxy:nonce:{nonce}")).await.len(), 1);

    // Without it: the public roots do not know this CA. Fail closed, and say why.
    let (_line2, _upstream2, refused) = proxy_with(&redis.tls_url(0), None).await;
    let r = c.get(refused.url("/auth/nonce")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    let said = || capture.text().contains("Redis TLS certificate verification failed");
    // The probe meets the handshake's error once redis-rs has given up reconnecting.
    assert!(eventually(Duration::from_secs(10), || async { said() }).await, "{}", capture.text());
    assert_eq!(c.get(refused.admin_url("/readyz")).send().await.unwrap().status(), 503);
    let logs = capture.text();
    let line = logs.lines().find(|l| l.contains("Redis TLS certificate verification failed")).unwrap();
    assert!(line.contains("purpose=\"nonce\"") || line.contains("purpose=nonce"), "{line}");
    assert!(line.contains("invalid peer certificate: UnknownIssuer"), "{line}");
    assert!(line.contains(&format!("127.0.0.1:{}", redis.tls_port.unwrap())), "{line}");
    let metrics = refused.metrics().await;
    for seen in [&logs, &body, &metrics] {
        assert!(!seen.contains(PASSWORD), "the Redis password leaked:\n{seen}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
