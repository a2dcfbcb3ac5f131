//! `[log]`: what the access (and audit) lines say about the user.

use serde::Deserialize;

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
        /// The LINE user id in access lines: hashed, plain or off.
        user_id: UserIdLogging,
    }
}
