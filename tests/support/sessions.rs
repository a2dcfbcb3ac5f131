//! Proxy sessions as the tests configure them: session key files and the
//! `[session]` section with a `/app/` session route and a `/public/` one.

use std::path::PathBuf;

/// The default `session.cookie_name`.
pub const COOKIE: &str = "__Host-line-auth-session";

/// A session key file of `key`, owner-only.
pub fn key_file(key: [u8; 32]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lap-session-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("session.key");
    std::fs::write(&path, key).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

/// `[session]` sealing under `keys` (with `extra` inside it) and the routes
/// `/app/` (session) and `/public/` (none).
pub fn session_config(keys: &[&PathBuf], extra: &str) -> String {
    let files: Vec<String> = keys.iter().map(|k| format!("{:?}", k.display().to_string())).collect();
    format!(
        "[session]\nkey_files = [{}]\n{extra}\n\
         [[routes]]\npath_prefix = \"/app/\"\nauth = \"session\"\n\
         [[routes]]\npath_prefix = \"/public/\"\nauth = \"none\"\n",
        files.join(", ")
    )
}

/// The `name=value` pair of a `Set-Cookie` value.
pub fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}
