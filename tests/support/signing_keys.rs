//! Assertion signing keys as `assertion.key_file` holds them: fresh ES256
//! (P-256) and Ed25519 keys in PEM PKCS#8, written owner-only.

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};

/// PKCS#8 DER as a `PRIVATE KEY` PEM block.
pub fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"))
}

pub fn es256_key() -> String {
    pem(EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap().as_ref())
}

pub fn ed25519_key() -> String {
    pem(Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap().as_ref())
}

/// A key file holding `pems`, in order (the first signs), mode 0600.
pub fn key_file(pems: &[&str]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lap-assertion-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("assertion.pem");
    std::fs::write(&path, pems.concat()).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}
