//! What the LINE Platform vouched for: the [`Identity`] a verification produces,
//! which the cache keeps (encoded), the shared tier stores, and the identity
//! headers carry. Nothing here ever comes from the client. A leaf of the module
//! graph: the verifiers, the cache and the header code all read it.

/// How the client proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    AccessToken,
    IdToken,
    /// A proxy session (`[session]`) sealing an access token.
    Session,
}

impl AuthMethod {
    /// The `X-Line-Auth-Method` value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::AccessToken => "access_token",
            AuthMethod::IdToken => "id_token",
            AuthMethod::Session => "session",
        }
    }
}

/// An identity the LINE Platform vouched for. Nothing here comes from the client.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// `U` + 32 hex, from `/v2/profile`.
    pub user_id: String,
    pub display_name: Option<String>,
    pub picture_url: Option<String>,
    pub email: Option<String>,
    /// The channel the token was issued to (`client_id`), one of `line.channel_ids`.
    pub channel_id: String,
    pub method: AuthMethod,
    /// Token expiry, unix seconds.
    pub expires_at: u64,
    /// How the user logged in (the ID token's `amr`: `pwd`, `lineautologin`,
    /// …), when LINE said; access tokens carry none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
}

/// `U` followed by 32 lower-case hex digits, the only shape a LINE user id has.
pub fn is_line_user_id(s: &str) -> bool {
    s.len() == 33 && s.starts_with('U') && s[1..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_shape() {
        assert!(is_line_user_id("U1234567890abcdef1234567890abcdef"));
        assert!(!is_line_user_id("U1234567890ABCDEF1234567890abcdef"));
        assert!(!is_line_user_id("U1234567890abcdef1234567890abcdef "));
        assert!(!is_line_user_id("X1234567890abcdef1234567890abcdef"));
        assert!(!is_line_user_id("U123"));
    }
}
