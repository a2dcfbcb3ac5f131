//! `[log]`: what the access (and audit) lines say about the user, and where
//! the audit stream goes.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Problems;
use super::keys::{choice, section};

/// `log.user_id`: how the LINE user id appears in access lines. User ids are
/// personal data (Japan's APPI, the EU's GDPR), so the default shows a hash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserIdLogging {
    /// The first 16 hex digits of SHA-256 of the user id: the same user gives
    /// the same value on every line and replica (pseudonymous: anyone who
    /// knows a user id can compute its hash).
    #[default]
    Hashed,
    /// The user id as LINE gave it.
    Plain,
    /// No user field.
    Off,
}

impl UserIdLogging {
    pub fn as_str(self) -> &'static str {
        match self {
            UserIdLogging::Hashed => "hashed",
            UserIdLogging::Plain => "plain",
            UserIdLogging::Off => "off",
        }
    }
}

choice!(UserIdLogging);

section! {
    /// `[log]`
    pub struct LogSection("log") {
        /// The LINE user id in access and audit lines: hashed, plain or off.
        user_id: UserIdLogging,
        /// The audit stream's own file (JSON lines); unset: with the rest on stderr.
        audit_file: Option<PathBuf>,
    }
}

impl LogSection {
    /// `log.audit_file`, checked: a file name in a directory that exists
    /// (the file itself is created at start, and again after SIGHUP).
    pub(super) fn audit_file(&self, p: &mut Problems) -> Option<PathBuf> {
        let path = self.audit_file.as_ref()?;
        if path.as_os_str().is_empty() || path.file_name().is_none() {
            p.error("log.audit_file", "must name a file");
            return None;
        }
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !dir.is_dir() {
            p.error("log.audit_file", format!("the directory {} does not exist", dir.display()));
            return None;
        }
        if path.is_dir() {
            p.error("log.audit_file", format!("{} is a directory", path.display()));
            return None;
        }
        Some(path.clone())
    }
}
