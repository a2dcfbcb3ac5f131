//! Web login's two calls to the LINE Platform besides verification: the
//! authorization code for tokens (`POST /oauth2/v2.1/token`, with the PKCE
//! verifier and the channel secret) and revocation at logout
//! (`POST /oauth2/v2.1/revoke`). Both go through the admission verifications
//! go through (back-off after a 429, `line.max_concurrent_calls`, the
//! timeout), so a login storm cannot take more of LINE than a token storm.

use std::fmt;

use serde_json::Value;

use super::credential::MAX_TOKEN_BYTES;
use super::id_token::MAX_ID_TOKEN_BYTES;
use super::line::{Endpoint, LineClient, LineError, MAX_ACCESS_TOKEN_LIFETIME_SECONDS};

/// What the token endpoint gave for a code. Never printed.
pub struct Tokens {
    pub access_token: String,
    pub id_token: String,
    /// Seconds, capped at LINE's documented 30 days.
    pub expires_in: u64,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens").field("expires_in", &self.expires_in).finish_non_exhaustive()
    }
}

/// LINE refused the code (`400`, e.g. `invalid_grant`: unknown, used or
/// expired, or the PKCE verifier does not match): the login failed, not LINE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeRefused;

/// The code, the redirect URI it was issued for, the channel and the PKCE verifier.
pub struct CodeGrant<'a> {
    pub code: &'a str,
    pub redirect_uri: &'a str,
    pub client_id: &'a str,
    pub client_secret: &'a [u8],
    pub verifier: &'a str,
}

impl LineClient {
    /// Exchanges an authorization code for tokens.
    pub async fn exchange_code(&self, grant: &CodeGrant<'_>) -> Result<Result<Tokens, CodeRefused>, LineError> {
        const ENDPOINT: Endpoint = Endpoint::Token;
        let secret = std::str::from_utf8(grant.client_secret).map_err(|_| LineError::BadResponse(ENDPOINT))?;
        let _slot = self.admit().await?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", grant.code),
            ("redirect_uri", grant.redirect_uri),
            ("client_id", grant.client_id),
            ("client_secret", secret),
            ("code_verifier", grant.verifier),
        ];
        let (status, body) = self.call(ENDPOINT, self.post_form(&self.token_url, &form)).await?;
        parse_tokens(status, &body)
    }

    /// Revokes an access token (`client_secret` when the channel's is known:
    /// LINE requires it for web-only channels and ignores it for the others).
    pub async fn revoke(
        &self,
        access_token: &str,
        client_id: &str,
        client_secret: Option<&[u8]>,
    ) -> Result<(), LineError> {
        const ENDPOINT: Endpoint = Endpoint::Revoke;
        let secret = client_secret.and_then(|s| std::str::from_utf8(s).ok());
        let _slot = self.admit().await?;
        let mut form = vec![("access_token", access_token), ("client_id", client_id)];
        form.extend(secret.map(|s| ("client_secret", s)));
        let (status, _) = self.call(ENDPOINT, self.post_form(&self.revoke_url, &form)).await?;
        match status {
            200 => Ok(()),
            status => Err(LineError::Status { endpoint: ENDPOINT, status }),
        }
    }
}

/// LINE's token answer: `200` with the documented JSON, `400` (with LINE's
/// JSON `error`) a refused code; `401 invalid_client` means the channel
/// secret is wrong — the operator's problem, logged as such, a 503 to the user.
fn parse_tokens(status: u16, body: &[u8]) -> Result<Result<Tokens, CodeRefused>, LineError> {
    const ENDPOINT: Endpoint = Endpoint::Token;
    let bad = || LineError::BadResponse(ENDPOINT);
    let json: Value = serde_json::from_slice(body).map_err(|_| match status {
        200 | 400 => bad(),
        status => LineError::Status { endpoint: ENDPOINT, status },
    })?;
    match status {
        200 => {}
        400 if json.get("error").is_some_and(Value::is_string) => return Ok(Err(CodeRefused)),
        401 => {
            tracing::error!(
                endpoint = ENDPOINT.as_str(),
                "LINE refused the channel credentials (invalid_client): check login.channel_id and login.channel_secret_file"
            );
            return Err(LineError::Status { endpoint: ENDPOINT, status });
        }
        400 => return Err(bad()),
        status => return Err(LineError::Status { endpoint: ENDPOINT, status }),
    }
    let text = |key: &str, max: usize| {
        json.get(key)
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty() && t.len() <= max && t.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned)
    };
    let access_token = text("access_token", MAX_TOKEN_BYTES).ok_or_else(bad)?;
    let id_token = text("id_token", MAX_ID_TOKEN_BYTES).ok_or_else(bad)?;
    let expires_in = json.get("expires_in").and_then(Value::as_u64).filter(|n| *n > 0).ok_or_else(bad)?;
    Ok(Ok(Tokens { access_token, id_token, expires_in: expires_in.min(MAX_ACCESS_TOKEN_LIFETIME_SECONDS) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_answers_are_read_as_line_documents_them() {
        let ok = br#"{"access_token":"bNl4YEFPI","expires_in":2592000,"id_token":"a.b.c","refresh_token":"Aa1","scope":"openid profile","token_type":"Bearer"}"#;
        let tokens = parse_tokens(200, ok).unwrap().unwrap();
        assert_eq!(
            (tokens.access_token.as_str(), tokens.id_token.as_str(), tokens.expires_in),
            ("bNl4YEFPI", "a.b.c", 2_592_000)
        );
        assert!(!format!("{tokens:?}").contains("bNl4"), "the debug form shows no token");
        let long = br#"{"access_token":"t","expires_in":99999999,"id_token":"a.b.c"}"#;
        assert_eq!(parse_tokens(200, long).unwrap().unwrap().expires_in, MAX_ACCESS_TOKEN_LIFETIME_SECONDS);
        let refused = br#"{"error":"invalid_grant","error_description":"invalid authorization code"}"#;
        assert_eq!(parse_tokens(400, refused).unwrap().unwrap_err(), CodeRefused);
        let client = br#"{"error":"invalid_client","error_description":"invalid client secret"}"#;
        assert_eq!(
            parse_tokens(401, client).unwrap_err(),
            LineError::Status { endpoint: Endpoint::Token, status: 401 }
        );
        for bad in [
            &b"<html>"[..],
            br#"{"access_token":"t","expires_in":1}"#,
            br#"{"access_token":"a b","expires_in":1,"id_token":"x"}"#,
            br#"{"access_token":"t","expires_in":0,"id_token":"x"}"#,
        ] {
            assert_eq!(parse_tokens(200, bad).unwrap_err(), LineError::BadResponse(Endpoint::Token));
        }
        assert_eq!(parse_tokens(400, b"<html>").unwrap_err(), LineError::BadResponse(Endpoint::Token));
        assert_eq!(parse_tokens(500, b"").unwrap_err(), LineError::Status { endpoint: Endpoint::Token, status: 500 });
    }
}
