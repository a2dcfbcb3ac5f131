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

/// Reads a secret file: trimmed of surrounding ASCII whitespace, never empty.
/// A byte-order mark or a non-breaking space at either end (an editor's or a
/// copy-paste's) is refused by name: kept, it would make every HS256 login
/// fail without a word. The error names the file and the problem, never the
/// content.
pub fn read_secret_file(path: &Path) -> Result<Secret, String> {
    let bytes = read_regular_file(path, MAX_SECRET_FILE_BYTES, "secret file")?;
    let secret = bytes.trim_ascii();
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    const NBSP: &[u8] = b"\xC2\xA0";
    if secret.starts_with(BOM) {
        return Err(format!("{} starts with a UTF-8 byte-order mark: save it without one", path.display()));
    }
    if [NBSP].iter().any(|w| secret.starts_with(w) || secret.ends_with(w)) {
        return Err(format!("{} starts or ends with a non-breaking space: remove it", path.display()));
    }
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Secret(secret.to_vec()))
}

/// Reads `path` whole if it is a regular file of at most `max` bytes: a FIFO
/// (which would block start-up), a device (`/dev/zero`) or anything larger is
/// refused without reading it, and the read itself stops past `max` bytes
/// should the file grow meanwhile. `what` names it in the error.
pub fn read_regular_file(path: &Path, max: u64, what: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let metadata = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !metadata.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let too_large = || format!("{} is larger than {max} bytes: not a {what}", path.display());
    if metadata.len() > max {
        return Err(too_large());
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > max {
        return Err(too_large());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("lap-secret-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn secrets_are_trimmed_and_invisible_characters_refused_by_name() {
        assert_eq!(read_secret_file(&file("ok", b"  s3cret\n")).unwrap().0, b"s3cret");
        let bom = read_secret_file(&file("bom", b"\xEF\xBB\xBFs3cret\n")).unwrap_err();
        assert!(bom.contains("byte-order mark") && !bom.contains("s3cret"), "{bom}");
        let nbsp = read_secret_file(&file("nbsp", b"s3cret\xC2\xA0\n")).unwrap_err();
        assert!(nbsp.contains("non-breaking space") && !nbsp.contains("s3cret"), "{nbsp}");
        assert!(read_secret_file(&file("empty", b" \n")).unwrap_err().contains("is empty"));
    }

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        assert!(read_regular_file(Path::new("/dev/zero"), 1024, "x").unwrap_err().contains("not a regular file"));
        let big = file("big", &[b'a'; 2048]);
        assert!(read_regular_file(&big, 1024, "test file").unwrap_err().contains("larger than 1024 bytes"));
        assert_eq!(read_regular_file(&big, 4096, "x").unwrap().len(), 2048);
    }
}
