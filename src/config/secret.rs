//! Secrets come from files named in the configuration, never from the TOML
//! itself, and print as `<redacted>`. This is the one reader every secret-file
//! key goes through ([`read_secret`]); key files that are read elsewhere (the
//! TLS key, by rustls) get the same permission check ([`check_permissions`]).

use std::fmt;
use std::path::Path;

use super::Problems;

/// Secret files larger than this are refused rather than read (64 KiB).
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Secret bytes that never show in `Debug` output.
#[derive(Clone, PartialEq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Reads the secret file that `key` names: errors and a too-open mode are
/// recorded under `key`. `None` when the file is unusable (an error was recorded).
pub fn read_secret(key: &str, path: &Path, p: &mut Problems) -> Option<Secret> {
    match read_secret_file(path) {
        Ok(secret) => {
            check_permissions(key, path, p);
            Some(secret)
        }
        Err(why) => {
            p.error(key, why);
            None
        }
    }
}

/// Warns, under `key`, when the file `path` (a secret or a private key) may be
/// read or written by every user of the host. The mode is the target's: a
/// Kubernetes secret volume is symlinks to files of the volume's
/// `defaultMode`, 0644 unless set. A file that cannot be inspected is left to
/// the reader's error.
pub fn check_permissions(key: &str, path: &Path, p: &mut Problems) {
    if let Some(warning) = std::fs::metadata(path).ok().and_then(|m| exposure(&m, path)) {
        p.warn(key, warning);
    }
}

#[cfg(unix)]
fn exposure(metadata: &std::fs::Metadata, path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o7777;
    let who = match (mode & 0o004 != 0, mode & 0o002 != 0) {
        (false, false) => return None,
        (true, false) => "readable",
        (false, true) => "writable",
        (true, true) => "readable and writable",
    };
    Some(format!(
        "{} is {who} by every user (mode {mode:04o}): chmod 600 it (or 400); in Kubernetes, set the secret volume's defaultMode: 0400",
        path.display()
    ))
}

#[cfg(not(unix))]
fn exposure(_: &std::fs::Metadata, _: &Path) -> Option<String> {
    None
}

/// Reads a secret file: trimmed of surrounding ASCII whitespace, never empty.
/// A byte-order mark or a non-breaking space at either end (an editor's or a
/// copy-paste's) is refused by name: kept, it would make every HS256 login
/// fail without a word. The error names the file and the problem, never the
/// content.
fn read_secret_file(path: &Path) -> Result<Secret, String> {
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

    #[test]
    fn secrets_open_to_every_user_are_warned_about_by_key() {
        use std::os::unix::fs::PermissionsExt;
        let path = file("secret", b"s3cret");
        let warnings = |mode: u32| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let mut p = Problems::default();
            assert_eq!(read_secret("line.channel_secret_file", &path, &mut p).unwrap().0, b"s3cret");
            assert!(p.errors.is_empty(), "{p}");
            p.warnings
        };
        assert!(warnings(0o600).is_empty());
        assert!(warnings(0o640).is_empty(), "group-readable is the operator's choice");
        let readable = warnings(0o644);
        assert_eq!(readable.len(), 1);
        assert_eq!(readable[0].key, "line.channel_secret_file");
        let message = &readable[0].message;
        assert!(message.contains("is readable by every user (mode 0644)"), "{message}");
        assert!(message.contains("chmod 600") && message.contains("defaultMode: 0400"), "{message}");
        assert!(message.contains(&path.display().to_string()) && !message.contains("s3cret"), "{message}");
        assert!(warnings(0o622)[0].message.contains("is writable by every user (mode 0622)"));
        assert!(warnings(0o666)[0].message.contains("readable and writable by every user (mode 0666)"));
        // A symlink (a Kubernetes secret volume) is judged by its target.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = path.with_file_name("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let mut p = Problems::default();
        read_secret("k", &link, &mut p).unwrap();
        assert!(p.warnings[0].message.contains("mode 0644"), "{p:?}");
    }
}
