//! Key rings: files of 32-byte symmetric keys shared by the replicas (the Redis
//! MAC key today). A file is either exactly 32 raw bytes (`head -c 32
//! /dev/urandom`), or text with one base64 key per line (`head -c 32
//! /dev/urandom | base64`; blank lines and `#` comments ignored). The first key
//! signs, every key verifies: to rotate, add the new key on a second line on
//! every replica, then move it to the first line, then drop the old one.

use std::fmt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

use super::secret::read_regular_file;

/// Bytes in one key (32: HMAC-SHA256's block-sized key, AES-256's key).
pub const KEY_BYTES: usize = 32;
/// Keys one file may hold (8): a rotation needs two.
const MAX_KEYS: usize = 8;
/// Key files larger than this are refused unread (4 KiB).
const MAX_KEY_FILE_BYTES: u64 = 4 * 1024;

/// One or more keys; the first signs. Prints as `<redacted>`.
#[derive(Clone, PartialEq)]
pub struct KeyRing(Vec<[u8; KEY_BYTES]>);

impl KeyRing {
    /// The key that signs first, then every other key that verifies.
    pub fn keys(&self) -> &[[u8; KEY_BYTES]] {
        &self.0
    }

    /// The keys of several files, in order.
    pub fn from_keys(keys: Vec<[u8; KEY_BYTES]>) -> Self {
        KeyRing(keys)
    }

    #[cfg(test)]
    pub fn for_tests(keys: &[[u8; KEY_BYTES]]) -> Self {
        KeyRing(keys.to_vec())
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyRing({} keys, <redacted>)", self.0.len())
    }
}

/// Reads a key ring. Errors name the file and the line, never a key.
pub fn read_key_ring(path: &Path) -> Result<KeyRing, String> {
    let bytes = read_regular_file(path, MAX_KEY_FILE_BYTES, "key file")?;
    if let Ok(raw) = <[u8; KEY_BYTES]>::try_from(bytes.as_slice()) {
        return Ok(KeyRing(vec![raw]));
    }
    let not_keys = || {
        format!(
            "{} is neither {KEY_BYTES} raw bytes nor {KEY_BYTES}-byte keys in base64, one per line (make one with `head -c {KEY_BYTES} /dev/urandom > FILE`)",
            path.display()
        )
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| not_keys())?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_matches(|c: char| c.is_ascii_whitespace());
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = decode(line).ok_or_else(|| {
            format!(
                "{} line {}: not a {KEY_BYTES}-byte key in base64 (make one with `head -c {KEY_BYTES} /dev/urandom | base64`)",
                path.display(),
                n + 1
            )
        })?;
        if keys.contains(&key) {
            return Err(format!("{} line {}: the same key twice", path.display(), n + 1));
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(not_keys());
    }
    if keys.len() > MAX_KEYS {
        return Err(format!("{} holds {} keys: at most {MAX_KEYS}", path.display(), keys.len()));
    }
    Ok(KeyRing(keys))
}

/// One key in standard or URL-safe base64, padded or not.
fn decode(line: &str) -> Option<[u8; KEY_BYTES]> {
    let unpadded = line.trim_end_matches('=');
    let bytes = STANDARD_NO_PAD.decode(unpadded).or_else(|_| URL_SAFE_NO_PAD.decode(unpadded)).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(bytes: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("lap-keyring-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn raw_and_base64_keys_are_read_first_key_first() {
        let raw = [7u8; KEY_BYTES];
        assert_eq!(read_key_ring(&file(&raw)).unwrap().keys(), &[raw]);
        let (a, b) = ([1u8; KEY_BYTES], [0xfbu8; KEY_BYTES]);
        let text = format!(
            "# new key first\n{}\n\n{}\n",
            base64::engine::general_purpose::STANDARD.encode(a),
            URL_SAFE_NO_PAD.encode(b)
        );
        assert_eq!(read_key_ring(&file(text.as_bytes())).unwrap().keys(), &[a, b]);
    }

    #[test]
    fn wrong_sizes_and_repeats_are_refused_by_line_without_the_key() {
        let short = base64::engine::general_purpose::STANDARD.encode([9u8; 16]);
        let e = read_key_ring(&file(format!("{short}\n").as_bytes())).unwrap_err();
        assert!(e.contains("line 1") && !e.contains(&short), "{e}");
        let key = base64::engine::general_purpose::STANDARD.encode([9u8; KEY_BYTES]);
        let e = read_key_ring(&file(format!("{key}\n{key}\n").as_bytes())).unwrap_err();
        assert!(e.contains("line 2: the same key twice") && !e.contains(&key), "{e}");
        assert!(read_key_ring(&file(&[0xffu8; 31])).unwrap_err().contains("neither 32 raw bytes"));
        assert!(read_key_ring(&file(b"# only a comment\n")).unwrap_err().contains("neither"));
        let e = format!("{:?}", read_key_ring(&file(&[3u8; KEY_BYTES])).unwrap());
        assert_eq!(e, "KeyRing(1 keys, <redacted>)");
    }
}
