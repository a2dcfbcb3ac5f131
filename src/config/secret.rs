//! Secrets come from files named in the configuration, never from the TOML
//! itself, and print as `<redacted>`. This is the one reader every secret-file
//! key goes through.

use std::fmt;
use std::path::Path;

/// Secret files larger than this are refused rather than read (64 KiB).
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Secret bytes that never show in `Debug` output.
#[derive(Clone)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Reads a secret file: trimmed of surrounding whitespace, never empty. The
/// error names the file and the problem, never the content.
pub fn read_secret_file(path: &Path) -> Result<Secret, String> {
    let metadata = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !metadata.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if metadata.len() > MAX_SECRET_FILE_BYTES {
        return Err(format!("{} is larger than {MAX_SECRET_FILE_BYTES} bytes: not a secret file", path.display()));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let secret = bytes.trim_ascii().to_vec();
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Secret(secret))
}
