//! `[login]`: browser login with LINE Login (web): the authorization code flow
//! with PKCE, ending in a proxy session (`[session]`).

use std::path::PathBuf;

use super::keys::{Seconds, section};
use super::secret::{Secret, read_secret};
use super::url::HttpUrl;
use super::{FileConfig, Problems};

/// `login.path`: `GET ?return_to=/…` starts a login.
pub const DEFAULT_LOGIN_PATH: &str = "/auth/login";
/// `login.logout_path`: `POST` ends the session.
pub const DEFAULT_LOGOUT_PATH: &str = "/auth/logout";
/// `login.authorize_url`: LINE's authorization endpoint.
pub const DEFAULT_AUTHORIZE_URL: &str = "https://access.line.me/oauth2/v2.1/authorize";

/// `login.scope` when unset: an ID token (`openid`) and the profile.
fn default_scope() -> Vec<String> {
    vec!["openid".into(), "profile".into()]
}

section! {
    /// `[login]`
    pub struct LoginSection("login") {
        /// Serve web login (`login.path`, the callback, `login.logout_path`).
        enabled: bool,
        /// The LINE Login channel of the web app; must be one of `line.channel_ids`.
        channel_id: Option<String>,
        /// The channel secret: `client_secret` at the token and revoke
        /// endpoints, and the HS256 key of web-login ID tokens.
        channel_secret_file: Option<PathBuf>,
        /// The callback URL registered in the LINE Developers Console; its
        /// path is served by the proxy, its origin is the app's (the CSRF rule).
        redirect_uri: Option<HttpUrl>,
        /// Scopes asked for: `openid` is required; add `email` for `X-Line-Email`.
        scope: Vec<String> = default_scope(),
        /// `GET ?return_to=/relative/path` → 302 to LINE's authorize endpoint.
        path: String = DEFAULT_LOGIN_PATH,
        /// `POST` only: revokes the access token at LINE and clears the session.
        logout_path: String = DEFAULT_LOGOUT_PATH,
        /// LINE's authorization endpoint (http only on loopback: tests, `dev`).
        authorize_url: HttpUrl = DEFAULT_AUTHORIZE_URL,
        /// LINE's `bot_prompt`: `normal` or `aggressive` (offer the official account as a friend).
        bot_prompt: Option<String>,
        /// LINE's `prompt`: `consent` (ask again even when already granted).
        prompt: Option<String>,
        /// LINE's `max_age`: seconds since the user last authenticated.
        max_age: Option<Seconds<0, 31_536_000>>,
        /// LINE's `ui_locales`: space-separated BCP 47 tags, e.g. `ja-JP`.
        ui_locales: Option<String>,
        /// LINE's `initial_amr_display`: `lineqr` (show the QR code login first).
        initial_amr_display: Option<String>,
    }
}

/// `[login]`, validated: present when `login.enabled`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoginConfig {
    pub channel_id: String,
    pub channel_secret: Secret,
    /// As registered: sent at authorize and token, byte for byte.
    pub redirect_uri: String,
    /// The path of `redirect_uri`: the callback the proxy serves.
    pub callback_path: String,
    /// `scheme://host[:port]` of `redirect_uri`, lower-case: the app's origin.
    pub origin: String,
    /// Space-separated, as LINE reads it.
    pub scope: String,
    pub path: String,
    pub logout_path: String,
    pub authorize_url: String,
    /// LINE's optional authorize parameters that are set, in a fixed order.
    pub extra: Vec<(&'static str, String)>,
    /// `login.max_age`: the ID token's `auth_time` must be within it.
    pub max_age: Option<std::time::Duration>,
}

impl LoginSection {
    pub(super) fn validate(&self, file: &FileConfig, p: &mut Problems) -> Option<LoginConfig> {
        if !self.enabled {
            for key in Self::KEYS.iter().map(|k| format!("login.{}", k.name)).filter(|k| k != "login.enabled") {
                if file.wrote(&key) {
                    p.warn(key, "has no effect: login.enabled is false");
                }
            }
            return None;
        }
        let channel_id = self.channel_id(file, p);
        let channel_secret = match &self.channel_secret_file {
            None => {
                p.error(
                    "login.channel_secret_file",
                    "is required with login.enabled: the file holding the channel secret (LINE Developers Console, Basic settings)",
                );
                None
            }
            Some(path) => read_secret("login.channel_secret_file", path, p),
        };
        let redirect = self.redirect(p);
        let scope = self.scope(p);
        for (key, path) in [("login.path", &self.path), ("login.logout_path", &self.logout_path)] {
            if let Err(why) = crate::routes::check_path_prefix(path) {
                p.error(key, format!("{why} (a path such as {:?})", DEFAULT_LOGIN_PATH));
            }
        }
        if let Some((_, _, callback)) = &redirect {
            let login = [
                ("login.path", self.path.as_str()),
                ("login.logout_path", self.logout_path.as_str()),
                ("login.redirect_uri", callback.as_str()),
            ];
            let others = [
                ("nonce.path", file.nonce.path.as_str()),
                ("forward_auth.path", file.forward_auth.path.as_str()),
                ("session.exchange_path", file.session.exchange_path.as_str()),
            ];
            for (i, (key, path)) in login.iter().enumerate() {
                let earlier = login[..i].iter().chain(&others);
                if let Some((other, _)) = earlier.into_iter().find(|(_, taken)| taken == path) {
                    p.error(*key, format!("has the path of {other}: give each endpoint its own path"));
                }
            }
        }
        if !self.authorize_url.https_unless_loopback() {
            p.error("login.authorize_url", "must be https (http is allowed for loopback test servers only)");
        }
        let extra = self.extra(p);
        let (redirect_uri, origin, callback_path) = redirect?;
        Some(LoginConfig {
            channel_id: channel_id?,
            channel_secret: channel_secret?,
            redirect_uri,
            callback_path,
            origin,
            scope: scope?,
            path: self.path.clone(),
            logout_path: self.logout_path.clone(),
            authorize_url: self.authorize_url.as_str().to_owned(),
            extra,
            max_age: self.max_age.map(|s| s.duration()),
        })
    }

    fn channel_id(&self, file: &FileConfig, p: &mut Problems) -> Option<String> {
        let Some(id) = &self.channel_id else {
            p.error("login.channel_id", "is required with login.enabled: the LINE Login channel id of the web app");
            return None;
        };
        if !file.line.channel_ids.contains(id) {
            p.error(
                "login.channel_id",
                format!(
                    "{id:?} is not one of line.channel_ids: add it there too (its tokens are verified like the others)"
                ),
            );
            return None;
        }
        Some(id.clone())
    }

    /// `(redirect_uri, its origin, its path)`.
    fn redirect(&self, p: &mut Problems) -> Option<(String, String, String)> {
        const KEY: &str = "login.redirect_uri";
        let Some(url) = &self.redirect_uri else {
            p.error(KEY, "is required with login.enabled: the callback URL registered in the LINE Developers Console");
            return None;
        };
        if !url.https_unless_loopback() {
            p.error(KEY, "must be https: LINE's security checklist (http is allowed for loopback test servers only)");
            return None;
        }
        let uri: http::Uri = url.as_str().parse().ok()?;
        if url.as_str().contains('#') {
            p.error(KEY, "must not have a fragment");
            return None;
        }
        let path = uri.path().to_owned();
        if let Err(why) = crate::routes::check_path_prefix(&path) {
            p.error(KEY, format!("has a path that {why}"));
            return None;
        }
        let authority = uri.authority()?;
        if authority.as_str().contains('@') {
            p.error(KEY, "must not have a user name or password");
            return None;
        }
        // The origin as a browser writes it in `Origin`: the scheme's default
        // port is left out (`https://app.example:443` is `https://app.example`).
        let scheme = uri.scheme_str()?;
        let default_port = match scheme {
            "https" => 443,
            _ => 80,
        };
        let origin = match authority.port_u16() {
            Some(port) if port != default_port => format!("{scheme}://{}:{port}", authority.host()),
            _ => format!("{scheme}://{}", authority.host()),
        }
        .to_ascii_lowercase();
        Some((url.as_str().to_owned(), origin, path))
    }

    fn scope(&self, p: &mut Problems) -> Option<String> {
        if !self.scope.iter().any(|s| s == "openid") {
            p.error("login.scope", "must include \"openid\": the login is proven by the ID token");
            return None;
        }
        if let Some(bad) = self.scope.iter().find(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic())) {
            p.error("login.scope", format!("{bad:?} is not a scope (visible ASCII, no spaces)"));
            return None;
        }
        Some(self.scope.join(" "))
    }

    /// The optional authorize parameters, each checked against what LINE documents.
    fn extra(&self, p: &mut Problems) -> Vec<(&'static str, String)> {
        let choices: [(&'static str, &Option<String>, &[&str]); 3] = [
            ("bot_prompt", &self.bot_prompt, &["normal", "aggressive"]),
            ("prompt", &self.prompt, &["consent"]),
            ("initial_amr_display", &self.initial_amr_display, &["lineqr"]),
        ];
        let mut extra = Vec::new();
        for (name, value, allowed) in choices {
            if let Some(v) = value {
                if allowed.contains(&v.as_str()) {
                    extra.push((name, v.clone()));
                } else {
                    p.error(format!("login.{name}"), format!("must be one of {}", allowed.join(", ")));
                }
            }
        }
        if let Some(seconds) = self.max_age {
            extra.push(("max_age", seconds.0.to_string()));
        }
        if let Some(v) = &self.ui_locales {
            if !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"- ".contains(&b)) {
                extra.push(("ui_locales", v.clone()));
            } else {
                p.error("login.ui_locales", "must be space-separated language tags, e.g. \"ja-JP en-US\"");
            }
        }
        extra
    }
}
