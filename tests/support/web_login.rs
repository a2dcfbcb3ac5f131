//! Web login as the tests configure and drive it: the channel secret file,
//! the `[login]` and `[session]` sections, and a cookie jar that applies
//! `Set-Cookie` the way a browser does (a `Max-Age=0` removes).

use std::path::PathBuf;

use line_auth_proxy::dev::MockLine;

use super::sessions::key_file;

/// The web channel's secret (the mock signs HS256 ID tokens with it).
pub const SECRET: &str = "web-channel-secret-0123456789abcdef";
/// The app's origin in `login.redirect_uri` (the socket tests call the
/// proxy's own address; the origin only matters for the same-origin rule).
pub const APP: &str = "https://app.example";

/// The channel secret in a file, owner-only.
pub fn secret_file() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lap-web-login-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("channel-secret");
    std::fs::write(&path, SECRET).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

/// `[login]` against `line` with `redirect_uri`, `[session]` with a fresh key
/// (and `session_extra` in it), and the routes `/app/` (session) and `/public/`.
/// `login_extra` goes into `[login]`.
pub fn web_login_config(line: &MockLine, redirect_uri: &str, login_extra: &str, session_extra: &str) -> String {
    line.set_channel_secret(super::CHANNEL, SECRET.as_bytes());
    format!(
        "[login]\nenabled = true\nchannel_id = \"{}\"\nchannel_secret_file = {:?}\nredirect_uri = \"{redirect_uri}\"\nauthorize_url = \"{}\"\n{login_extra}\n{}",
        super::CHANNEL,
        secret_file().display().to_string(),
        line.authorize_url(),
        super::sessions::session_config(&[&key_file([7; 32])], session_extra),
    )
}

/// Cookies as a browser keeps them for one site.
#[derive(Clone, Debug, Default)]
pub struct Jar(pub Vec<(String, String)>);

impl Jar {
    /// Applies every `Set-Cookie` of an answer.
    pub fn update(&mut self, headers: &reqwest::header::HeaderMap) {
        for set in headers.get_all("set-cookie") {
            let set = set.to_str().unwrap();
            let pair = set.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            self.0.retain(|(n, _)| n != name);
            if !set.contains("Max-Age=0") {
                self.0.push((name.to_owned(), value.to_owned()));
            }
        }
    }

    /// The `Cookie` header (empty when there is none).
    pub fn header(&self) -> String {
        self.0.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("; ")
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The names of the cookies held.
    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|(n, _)| n.as_str()).collect()
    }
}
