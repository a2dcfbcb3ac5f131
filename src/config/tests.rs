use std::time::Duration;

use super::*;

fn load(toml: &str, env: &[(&str, &str)]) -> Result<Loaded, Problems> {
    load_str(toml, env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

fn config(toml: &str) -> Config {
    load(toml, &[]).unwrap_or_else(|p| panic!("{p}")).config
}

fn error_keys(toml: &str, env: &[(&str, &str)]) -> Vec<String> {
    load(toml, env).unwrap_err().error_keys().into_iter().map(str::to_owned).collect()
}

fn warning_keys(toml: &str) -> Vec<String> {
    load(toml, &[]).unwrap_or_else(|p| panic!("{p}")).warnings.into_iter().map(|w| w.key).collect()
}

/// A `redis_mac_key_file = …` line naming a fresh 32-byte key file.
fn mac_key_line() -> String {
    let dir = std::env::temp_dir().join(format!("lap-mac-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mac");
    std::fs::write(&path, [7u8; 32]).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    format!("redis_mac_key_file = {path:?}\n")
}

/// `text` with a MAC key file under every `store = "redis"` and `shared = "redis"`.
fn with_mac(text: &str) -> String {
    text.replace("store = \"redis\"\n", &format!("store = \"redis\"\n{}", mac_key_line()))
        .replace("shared = \"redis\"\n", &format!("shared = \"redis\"\n{}", mac_key_line()))
}

const MINIMAL: &str = "[upstream]\nurl = \"http://127.0.0.1:3000\"\n[line]\nchannel_ids = [\"1234567890\"]\n";
const LOGIN: &str = "[[routes]]\npath_prefix = \"/login\"\nauth = \"id_token\"\n";

#[test]
fn minimal_file_gets_every_default() {
    let c = config(MINIMAL);
    assert_eq!(c.server.keys.listen, server::DEFAULT_LISTEN);
    assert_eq!(c.server.keys.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(c.server.keys.admin_listen.to_string(), "127.0.0.1:9901");
    assert_eq!(c.server.keys.max_header_bytes.get(), 16384);
    assert_eq!(c.server.keys.shutdown_grace_seconds.duration(), Duration::from_secs(20));
    assert_eq!(c.cache.keys.ttl_seconds.duration(), Duration::from_secs(60));
    assert_eq!(c.line.api_base_url.as_string(), "https://api.line.me");
    assert_eq!(c.line.max_concurrent_calls.get(), 256);
    assert_eq!(c.identity.names.user_id.as_str(), "x-line-user-id");
    assert!(c.id_token.is_none());
}

#[test]
fn every_default_reads_back_through_its_own_declaration() {
    for (section, key) in FileConfig::all_keys() {
        let shown = (key.default)();
        if shown == "none" || shown.ends_with("entries") {
            continue;
        }
        let text = if section == "routes" {
            format!("[[routes]]\n{} = {shown}\n", key.name)
        } else {
            format!("[{section}]\n{} = {shown}\n", key.name)
        };
        let mut p = Problems::default();
        let file = FileConfig::read(&text, std::iter::empty(), &mut p).unwrap();
        let path =
            if section == "routes" { format!("routes[0].{}", key.name) } else { format!("{section}.{}", key.name) };
        assert!(!p.error_keys().contains(&path.as_str()), "the default of {path} ({shown}) does not read back: {p}");
        assert!(file.wrote(&path), "{path}");
    }
}

#[test]
fn example_config_is_valid_and_names_every_key() {
    let text = include_str!("../../config/example.toml");
    let loaded = load(text, &[]).unwrap_or_else(|p| panic!("config/example.toml must load:\n{p}"));
    assert!(loaded.warnings.is_empty(), "config/example.toml has warnings: {:?}", loaded.warnings);
    assert!(!loaded.config.routes.routes().is_empty());
    for (section, key) in FileConfig::all_keys() {
        assert!(text.contains(key.name), "config/example.toml does not document {section}.{}", key.name);
    }
}

#[test]
fn the_reference_documents_every_key_with_its_default() {
    let reference = include_str!("../../docs/configuration.md");
    for (section, key) in FileConfig::all_keys() {
        let path =
            if section == "routes" { format!("routes[].{}", key.name) } else { format!("{section}.{}", key.name) };
        let row = reference
            .lines()
            .find(|l| l.starts_with(&format!("| `{path}` ")))
            .unwrap_or_else(|| panic!("docs/configuration.md has no row for `{path}`"));
        let shown = (key.default)();
        if shown != "none" && !shown.ends_with("entries") {
            assert!(
                row.contains(&format!("`{shown}`")),
                "the row of `{path}` does not give its default `{shown}`: {row}"
            );
        }
        let allowed = (key.allowed)();
        assert!(row.contains(&allowed), "the row of `{path}` does not say it takes {allowed}: {row}");
    }
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let file = r#"
[server]
listen = "nonsense"
listn = "x"
max_header_bytes = 10
[upstream]
url = "ftp://x"
[line]
channel_ids = []
[cache]
ttl_seconds = 0
[identity]
header_prefix = "X Line"
[[routes]]
path_prefix = "public"
auth = "maybe"
[[routes]]
path_prefix = "/a//b"
auth = "none"
methods = ["G ET"]
"#;
    let k = error_keys(file, &[]);
    for expected in [
        "server.listn",
        "server.listen",
        "server.max_header_bytes",
        "upstream.url",
        "line.channel_ids",
        "cache.ttl_seconds",
        "identity.header_prefix",
        "routes[0].path_prefix",
        "routes[0].auth",
        "routes[1].path_prefix",
        "routes[1].methods[0]",
    ] {
        assert!(k.iter().any(|x| x == expected), "{expected} missing from {k:?}");
    }
}

#[test]
fn unknown_keys_and_types_are_all_reported() {
    let k = error_keys("[server]\nfoo = 1\nlisten = 5\n[bogus]\nx = 1\n[[routes]]\npath = \"/\"\n", &[]);
    for expected in ["server.foo", "server.listen", "bogus", "routes[0].path"] {
        assert!(k.iter().any(|x| x == expected), "{expected} missing from {k:?}");
    }
}

#[test]
fn messages_say_what_to_write() {
    let p = load(&format!("{MINIMAL}[server]\nlistn = \"x\"\nshutdown_grace_seconds = 99999\n"), &[]).unwrap_err();
    let text = p.to_string();
    assert!(text.contains("server.listn: unknown key; did you mean `listen`?"), "{text}");
    assert!(text.contains("server.shutdown_grace_seconds: must be between 0 and 3600 seconds"), "{text}");
    // Choices name their values from the enum itself, all of them.
    let p = load(&format!("{MINIMAL}[[routes]]\npath_prefix = \"/\"\nauth = \"maybe\"\n"), &[]).unwrap_err();
    assert!(p.to_string().contains("`none`, `access_token`, `optional`, `id_token`"), "{p}");
    let p = load(&format!("{MINIMAL}[[routes]]\npath_prefix = \"/\"\n"), &[]).unwrap_err();
    assert!(p.to_string().contains("is required: none, access_token, optional, id_token"), "{p}");
    let p = load(&format!("{MINIMAL}[nonce]\nstore = \"disk\"\n{LOGIN}"), &[]).unwrap_err();
    assert!(p.to_string().contains("expected `memory` or `redis`"), "{p}");
}

#[test]
fn env_overrides_scalars_lists_and_map_entries() {
    let c = load(
        MINIMAL,
        &[
            ("LINE_AUTH_PROXY__LINE__CHANNEL_IDS", "111, 222"),
            ("LINE_AUTH_PROXY__SERVER__LISTEN", "127.0.0.1:9999"),
            ("LINE_AUTH_PROXY__CACHE__TTL_SECONDS", "5"),
            ("LINE_AUTH_PROXY__IDENTITY__FORWARD_AUTHORIZATION", "true"),
            ("LINE_AUTH_PROXY__LINE__MAX_CONCURRENT_CALLS", "8"),
            ("UNRELATED", "x"),
        ],
    )
    .unwrap()
    .config;
    assert_eq!(c.line.channel_ids, vec!["111", "222"]);
    assert_eq!(c.server.keys.listen.port(), 9999);
    assert_eq!(c.cache.keys.ttl_seconds.duration(), Duration::from_secs(5));
    assert!(c.identity.keys.forward_authorization);
    assert_eq!(c.line.max_concurrent_calls.get(), 8);
    let mut p = Problems::default();
    let file = FileConfig::read(
        MINIMAL,
        [("LINE_AUTH_PROXY__LINE__CHANNEL_SECRET_FILES__1234567890".to_string(), "/run/s".to_string())],
        &mut p,
    )
    .unwrap();
    assert!(p.errors.is_empty(), "{p}");
    assert_eq!(file.line.channel_secret_files["1234567890"], std::path::PathBuf::from("/run/s"));
}

#[test]
fn env_typos_and_bad_values_are_errors() {
    let k = error_keys(
        MINIMAL,
        &[
            ("LINE_AUTH_PROXY__SERVER__LISTN", "x"),
            ("LINE_AUTH_PROXY__CACHE__TTL_SECONDS", "soon"),
            ("LINE_AUTH_PROXY__ROUTES__AUTH", "none"),
            ("LINE_AUTH_PROXY__SERVER__LISTEN__X", "1"),
        ],
    );
    for expected in [
        "LINE_AUTH_PROXY__SERVER__LISTN",
        "cache.ttl_seconds",
        "LINE_AUTH_PROXY__ROUTES__AUTH",
        "LINE_AUTH_PROXY__SERVER__LISTEN__X",
    ] {
        assert!(k.iter().any(|x| x == expected), "{expected} missing from {k:?}");
    }
}

#[test]
fn forward_auth_and_assertions_are_checked_when_enabled_and_warned_when_not() {
    // Disabled sections are accepted as written; what has no effect is a warning.
    let off = format!(
        "{MINIMAL}[forward_auth]\nenabled = false\npath = \"/v\"\n[assertion]\nenabled = false\nheader = \"X-Id\"\nissuer = \"me\"\n"
    );
    let loaded = load(&off, &[]).unwrap();
    assert_eq!(loaded.config.identity.assertion_header.as_str(), "x-id");
    assert!(loaded.config.forward_auth.is_none() && loaded.config.assertion.is_none());
    let warned: Vec<&str> = loaded.warnings.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(warned, vec!["forward_auth.path", "assertion.issuer"]);
    // Enabled: the path is checked, and an empty trusted_proxies is a warning.
    let on = format!("{MINIMAL}[forward_auth]\nenabled = true\n");
    let loaded = load(&on, &[]).unwrap();
    assert_eq!(loaded.config.forward_auth.unwrap().path, "/_auth/verify");
    assert_eq!(loaded.warnings.iter().map(|w| w.key.as_str()).collect::<Vec<_>>(), vec!["server.trusted_proxies"]);
    for bad in ["auth", "/_auth/", "/auth/nonce", "/a/../b"] {
        let text = format!("{MINIMAL}[forward_auth]\nenabled = true\npath = \"{bad}\"\n");
        assert_eq!(error_keys(&text, &[]), vec!["forward_auth.path"], "{bad}");
    }
    // Assertions need a key file of keys that sign.
    assert_eq!(error_keys(&format!("{MINIMAL}[assertion]\nenabled = true\n"), &[]), vec!["assertion.key_file"]);
    let dir = std::env::temp_dir().join(format!("lap-assertion-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN PRIVATE KEY-----\nMAMCAQA=\n-----END PRIVATE KEY-----\n").unwrap();
    let text = format!("{MINIMAL}[assertion]\nenabled = true\nkey_file = {garbage:?}\n");
    let p = load(&text, &[]).unwrap_err();
    assert_eq!(p.error_keys(), vec!["assertion.key_file"]);
    assert!(p.to_string().contains("PEM block 1"), "{p}");
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pkcs8.as_ref());
    let good = dir.join("good.pem");
    std::fs::write(&good, format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n")).unwrap();
    let text = format!("{MINIMAL}[assertion]\nenabled = true\nkey_file = {good:?}\n");
    let a = config(&text).assertion.unwrap();
    assert_eq!((a.issuer.as_str(), a.audience.as_str()), ("line-auth-proxy", "http://127.0.0.1:3000"));
}

#[test]
fn id_token_routes_get_nonce_and_verification_defaults() {
    let c = config(&format!("{MINIMAL}{LOGIN}"));
    let id = c.id_token.expect("id_token config");
    assert_eq!(id.verification, IdTokenVerification::Local);
    assert_eq!(id.jwks_url, line::DEFAULT_JWKS_URL);
    assert_eq!(id.clock_skew, Duration::from_secs(60));
    assert_eq!(id.nonce.path, "/auth/nonce");
    assert_eq!(id.nonce.ttl, Duration::from_secs(300));
    assert!(c.routes.routes()[0].require_nonce, "require_nonce defaults to true");
    let c = config(&format!("{MINIMAL}{LOGIN}require_nonce = false\n"));
    assert!(!c.routes.routes()[0].require_nonce);
}

#[test]
fn settings_without_effect_are_warnings_not_errors() {
    let file = format!(
        "{MINIMAL}id_token_verification = \"remote\"\njwks_url = \"https://x.example/certs\"\n[nonce]\nttl_seconds = 60\n\
         [cache]\nredis_timeout_ms = 50\n[[routes]]\npath_prefix = \"/\"\nauth = \"none\"\nrequire_nonce = true\n\
         allow_cors_preflight = true\n[[routes]]\npath_prefix = \"/api/\"\nauth = \"access_token\"\n"
    );
    let loaded = load(&file, &[]).expect("settings without effect do not stop the proxy");
    let keys: Vec<&str> = loaded.warnings.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "cache.redis_timeout_ms",
            "routes[0].require_nonce",
            "routes[0].allow_cors_preflight",
            "routes[1]",
            "line.id_token_verification",
            "line.jwks_url",
            "nonce.ttl_seconds",
        ]
    );
    for w in &loaded.warnings {
        assert!(w.message.starts_with("has no effect: "), "{w}");
    }
    // An empty [nonce] table is named by its section.
    assert_eq!(warning_keys(&format!("{MINIMAL}[nonce]\n")), vec!["nonce"]);
    // Memory nonces ignore the Redis keys; remote verification ignores the JWKS.
    let file = format!(
        "{MINIMAL}id_token_verification = \"remote\"\njwks_url = \"https://x.example/c\"\n[nonce]\nredis_timeout_ms = 9\n{LOGIN}"
    );
    assert_eq!(warning_keys(&file), vec!["line.jwks_url", "nonce.redis_timeout_ms"]);
}

#[test]
fn real_contradictions_stay_errors() {
    let file = format!(
        "{MINIMAL}jwks_url = \"http://evil.example/certs\"\nclock_skew_seconds = 3600\n\
         [nonce]\npath = \"nonce\"\nttl_seconds = 0\n{LOGIN}"
    );
    let k = error_keys(&file, &[]);
    for expected in ["line.jwks_url", "line.clock_skew_seconds", "nonce.path", "nonce.ttl_seconds"] {
        assert!(k.iter().any(|x| x == expected), "{expected} missing from {k:?}");
    }
    assert_eq!(error_keys(&format!("{MINIMAL}[nonce]\nstore = \"redis\"\n{LOGIN}"), &[]), vec!["nonce.redis_url"]);
}

#[test]
fn redis_settings_are_checked_and_passwords_never_echoed() {
    let redis = with_mac(&format!(
        "{MINIMAL}{LOGIN}[nonce]\nstore = \"redis\"\nredis_url = \"redis://:hunter2@10.0.0.5:6379/3\"\n"
    ));
    let r = config(&redis).id_token.unwrap().nonce.redis.unwrap();
    assert_eq!(r.key_prefix, "line-auth-proxy:nonce:");
    assert_eq!(r.timeout, Duration::from_millis(250));
    assert_eq!(r.redacted(), "redis://10.0.0.5:6379/3");
    assert!(!format!("{r:?}").contains("hunter2"));
    let bad = redis.replace("redis://:hunter2@10.0.0.5:6379/3", "http://:hunter2@x/");
    let p = load(&bad, &[]).unwrap_err();
    assert_eq!(p.error_keys(), vec!["nonce.redis_url"]);
    assert!(!p.to_string().contains("hunter2"), "{p}");
    // The shared cache falls back to the nonce URL, or names its own.
    let shared = format!("{redis}[cache]\nshared = \"redis\"\n");
    // Its default namespace names the deployment's channels.
    let prefix = config(&shared).cache.shared.unwrap().key_prefix;
    let hash = prefix.strip_prefix("line-auth-proxy:verdict:").and_then(|p| p.strip_suffix(':')).unwrap();
    assert!(hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()), "{prefix}");
    let ids =
        |ids: &[&str]| super::cache::deployment_key_prefix(&ids.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(ids(&["1", "2"]), ids(&["2", "1", "2"]), "order and repeats do not matter");
    assert_ne!(ids(&["1", "2"]), ids(&["1"]));
    assert_ne!(ids(&["12"]), ids(&["1", "2"]));
    let written =
        shared.replace("shared = \"redis\"\n", "shared = \"redis\"\nredis_key_prefix = \"line-auth-proxy:verdict:\"\n");
    assert_eq!(
        config(&written).cache.shared.unwrap().key_prefix,
        "line-auth-proxy:verdict:",
        "a written prefix is kept"
    );
    assert_eq!(error_keys(&format!("{MINIMAL}[cache]\nshared = \"redis\"\n"), &[]), vec!["cache.redis_url"]);
    let own = with_mac(&format!(
        "{MINIMAL}[cache]\nshared = \"redis\"\nredis_url = \"rediss://cache.internal:6380\"\nredis_timeout_ms = 50\n"
    ));
    assert_eq!(config(&own).cache.shared.unwrap().timeout, Duration::from_millis(50));
    // nonce.redis_url feeding the shared cache is not "without effect".
    let feeds =
        with_mac(&format!("{MINIMAL}[nonce]\nredis_url = \"redis://10.0.0.5\"\n[cache]\nshared = \"redis\"\n{LOGIN}"));
    assert!(warning_keys(&feeds).is_empty());
}

#[test]
fn a_private_redis_ca_is_read_checked_and_borrowed_by_the_cache() {
    let dir = std::env::temp_dir().join(format!("lap-ca-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, rcgen::generate_simple_self_signed(vec!["redis.internal".into()]).unwrap().cert.pem()).unwrap();
    let nonce = |url: &str, ca_line: &str| {
        with_mac(&format!("{MINIMAL}{LOGIN}[nonce]\nstore = \"redis\"\nredis_url = \"{url}\"\n{ca_line}"))
    };
    let with_ca = nonce("rediss://:pw@redis.internal:6380", &format!("redis_ca_file = {ca:?}\n"));
    let pem = std::fs::read(&ca).unwrap();
    let c = config(&with_ca);
    assert_eq!(c.id_token.unwrap().nonce.redis.unwrap().root_certs.as_deref(), Some(pem.as_slice()));
    assert!(config(&nonce("rediss://redis.internal", "")).id_token.unwrap().nonce.redis.unwrap().root_certs.is_none());
    // The shared cache takes nonce.redis_ca_file unless it names its own.
    let shared = format!("{with_ca}[cache]\nshared = \"redis\"\n");
    assert_eq!(config(&shared).cache.shared.unwrap().root_certs.as_deref(), Some(pem.as_slice()));
    assert!(warning_keys(&shared).is_empty());
    // On redis:// it does nothing: a warning, not an error.
    let plain = nonce("redis://redis.internal", &format!("redis_ca_file = {ca:?}\n"));
    assert_eq!(warning_keys(&plain), vec!["nonce.redis_ca_file"]);
    let loaded = load(&plain, &[]).unwrap();
    assert!(loaded.warnings[0].message.contains("has no effect: nonce.redis_url is redis://"), "{:?}", loaded.warnings);
    assert!(loaded.config.id_token.unwrap().nonce.redis.unwrap().root_certs.is_none());
    let unused = format!("{MINIMAL}[cache]\nredis_ca_file = {ca:?}\n");
    assert_eq!(warning_keys(&unused), vec!["cache.redis_ca_file"]);
    // A file that holds no certificate, or a broken one, is an error under its key.
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let broken = dir.join("broken.pem");
    std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
    for (path, says) in [(&empty, "holds no PEM certificate"), (&broken, "certificate 1 is not")] {
        let text = nonce("rediss://:hunter2@redis.internal", &format!("redis_ca_file = {path:?}\n"));
        let p = load(&text, &[]).unwrap_err();
        assert_eq!(p.error_keys(), vec!["nonce.redis_ca_file"], "{p}");
        assert!(p.to_string().contains(says) && !p.to_string().contains("hunter2"), "{p}");
    }
    let missing = nonce("rediss://redis.internal", "redis_ca_file = \"/nonexistent/ca.pem\"\n");
    assert_eq!(error_keys(&missing, &[]), vec!["nonce.redis_ca_file"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn channel_secrets_are_read_from_files_and_never_printed() {
    let dir = std::env::temp_dir().join(format!("lap-secret-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, "s3cr3t-value\n").unwrap();
    let file = format!("{MINIMAL}channel_secret_file = {secret:?}\n{LOGIN}");
    let id = config(&file).id_token.unwrap();
    assert_eq!(id.channel_secrets["1234567890"].0, b"s3cr3t-value");
    assert!(!format!("{id:?}").contains("s3cr3t"));
    // One file, several channels: ambiguous.
    let two = file.replace("[\"1234567890\"]", "[\"1234567890\", \"222\"]");
    assert_eq!(error_keys(&two, &[]), vec!["line.channel_secret_file"]);
    // Per-channel files must name our channels; missing files are reported.
    let map = format!(
        "{MINIMAL}{LOGIN}[line.channel_secret_files]\n\"1234567890\" = {secret:?}\n\"999\" = \"/nonexistent\"\n"
    );
    // Not one of our channels, and not readable: both said.
    assert_eq!(error_keys(&map, &[]), vec!["line.channel_secret_files.999", "line.channel_secret_files.999"]);
    // A directory is not a secret file.
    let dir_as_secret = format!("{MINIMAL}channel_secret_file = {dir:?}\n{LOGIN}");
    let p = load(&dir_as_secret, &[]).unwrap_err();
    assert!(p.to_string().contains("not a regular file"), "{p}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn secret_and_key_files_open_to_every_user_are_warnings_naming_the_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("lap-modes-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, content: &str, mode: u32| {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    };
    // A real pair: the TLS files are parsed and matched at load.
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let secret = write("secret", "s3cr3t-value\n", 0o644);
    let cert = write("cert.pem", &pair.cert.pem(), 0o644);
    let key = write("key.pem", &pair.key_pair.serialize_pem(), 0o666);
    let file = format!(
        "{MINIMAL}{LOGIN}[line.channel_secret_files]\n\"1234567890\" = {secret:?}\n\
         [server]\ntls_cert_file = {cert:?}\ntls_key_file = {key:?}\n"
    );
    let loaded = load(&file, &[]).unwrap_or_else(|p| panic!("{p}"));
    // The certificate is public: only the secret and the key are named.
    let keys: Vec<&str> = loaded.warnings.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(keys, vec!["server.tls_key_file", "line.channel_secret_files.1234567890"]);
    assert!(loaded.warnings[0].message.contains("readable and writable by every user (mode 0666)"));
    assert!(loaded.warnings[1].message.contains("readable by every user (mode 0644)"));
    for path in [&secret, &key] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    assert!(warning_keys(&file).is_empty());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn line_api_must_be_https_except_on_loopback() {
    let with = |url: &str| load(&format!("{MINIMAL}api_base_url = \"{url}\"\n"), &[]);
    assert!(with("https://api.line.me").is_ok());
    assert!(with("http://127.0.0.1:1234").is_ok());
    assert!(with("http://[::1]:1234").is_ok());
    assert!(with("http://localhost:1234").is_ok());
    assert_eq!(with("http://api.line.me").unwrap_err().error_keys(), vec!["line.api_base_url"]);
    assert_eq!(with("https://api.line.me/v2").unwrap_err().error_keys(), vec!["line.api_base_url"]);
}

#[test]
fn admin_port_cannot_be_the_proxy_port() {
    let file = format!("{MINIMAL}[server]\nlisten = \"0.0.0.0:8080\"\nadmin_listen = \"127.0.0.1:8080\"\n");
    assert_eq!(error_keys(&file, &[]), vec!["server.admin_listen"]);
}

#[test]
fn upstream_url_must_be_an_origin() {
    for bad in ["http://x:1/base", "http://u:p@x:1", "x:1", "ftp://x", "http://x?q=1"] {
        let file = MINIMAL.replace("http://127.0.0.1:3000", bad);
        assert_eq!(error_keys(&file, &[]), vec!["upstream.url"], "{bad}");
    }
}

#[test]
fn toml_syntax_errors_name_the_file() {
    let dir = std::env::temp_dir().join(format!("lap-syntax-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[server\n").unwrap();
    let p = super::load(Some(&path), std::iter::empty()).unwrap_err();
    assert_eq!(p.error_keys(), vec![path.display().to_string().as_str()]);
    std::fs::remove_dir_all(&dir).ok();
}

// What an adversarial review of the loader found (each was accepted silently,
// misreported, or echoed a secret).

#[test]
fn ports_and_hosts_are_checked_not_silently_defaulted() {
    for (key, line) in [
        ("upstream.url", "[upstream]\nurl = \"http://127.0.0.1:99999\"\n"),
        ("upstream.url", "[upstream]\nurl = \"http://127.0.0.1:abc\"\n"),
        ("upstream.url", "[upstream]\nurl = \"http://:80\"\n"),
    ] {
        let text = format!("{line}[line]\nchannel_ids = [\"1234567890\"]\n");
        assert_eq!(error_keys(&text, &[]), vec![key], "{line}");
    }
    let bad_line = format!("{MINIMAL}api_base_url = \"http://127.0.0.1:65536\"\n");
    assert_eq!(error_keys(&bad_line, &[]), vec!["line.api_base_url"]);
    let bad_jwks = format!("{MINIMAL}jwks_url = \"https://api.line.me:0/certs\"\n{LOGIN}");
    assert_eq!(error_keys(&bad_jwks, &[]), vec!["line.jwks_url"]);
}

#[test]
fn identity_names_cannot_swallow_standard_headers() {
    assert_eq!(
        error_keys(&format!("{MINIMAL}[identity]\nheader_prefix = \"Au\"\n"), &[]),
        vec!["identity.header_prefix"]
    );
    assert_eq!(
        error_keys(&format!("{MINIMAL}[identity]\nheader_prefix = \"Co\"\n"), &[]),
        vec!["identity.header_prefix"]
    );
    for header in ["Authorization", "Host", "Transfer-Encoding", "content_type"] {
        let text = format!("{MINIMAL}[assertion]\nheader = \"{header}\"\n");
        assert_eq!(error_keys(&text, &[]), vec!["assertion.header"], "{header}");
    }
}

#[test]
fn a_preflight_flag_that_takes_effect_is_not_warned_about() {
    // With methods, an OPTIONS preflight matches this route only because of the flag.
    let with_methods = format!(
        "{MINIMAL}[[routes]]\npath_prefix = \"/pub\"\nauth = \"none\"\nmethods = [\"GET\"]\nallow_cors_preflight = true\n"
    );
    assert!(warning_keys(&with_methods).is_empty());
    let without =
        format!("{MINIMAL}[[routes]]\npath_prefix = \"/pub\"\nauth = \"none\"\nallow_cors_preflight = true\n");
    assert_eq!(warning_keys(&without), vec!["routes[0].allow_cors_preflight"]);
}

#[test]
fn whatever_lives_in_redis_needs_a_mac_key_and_the_cache_may_borrow_the_nonces() {
    let nonce = format!("{MINIMAL}{LOGIN}[nonce]\nstore = \"redis\"\nredis_url = \"redis://10.0.0.5\"\n");
    assert_eq!(error_keys(&nonce, &[]), vec!["nonce.redis_mac_key_file"]);
    let p = load(&nonce, &[]).unwrap_err().to_string();
    assert!(p.contains("head -c 32 /dev/urandom"), "{p}");
    let cache = format!("{MINIMAL}[cache]\nshared = \"redis\"\nredis_url = \"redis://10.0.0.5\"\n");
    assert_eq!(error_keys(&cache, &[]), vec!["cache.redis_mac_key_file"]);
    // The cache borrows nonce.redis_mac_key_file, which then has an effect
    // even without an id_token route.
    let borrowed = format!("{cache}[nonce]\n{}", mac_key_line());
    assert_eq!(config(&borrowed).cache.shared.unwrap().mac_keys.keys(), &[[7u8; 32]]);
    assert!(warning_keys(&borrowed).is_empty());
    let unreadable = format!("{cache}redis_mac_key_file = \"/nonexistent/mac\"\n");
    assert_eq!(error_keys(&unreadable, &[]), vec!["cache.redis_mac_key_file"]);
    let short = std::env::temp_dir().join(format!("lap-mac-short-{}", rand::random::<u64>()));
    std::fs::write(&short, [1u8; 16]).unwrap();
    let p = load(&format!("{cache}redis_mac_key_file = {short:?}\n"), &[]).unwrap_err();
    assert_eq!(p.error_keys(), vec!["cache.redis_mac_key_file"]);
    // Without Redis the key has no effect.
    let unused = format!("{MINIMAL}[cache]\n{}", mac_key_line());
    assert_eq!(warning_keys(&unused), vec!["cache.redis_mac_key_file"]);
}

#[test]
fn a_nonce_url_the_shared_cache_uses_is_neither_warned_nor_misnamed() {
    let feeds =
        with_mac(&format!("{MINIMAL}[cache]\nshared = \"redis\"\n[nonce]\nredis_url = \"redis://10.0.0.5:6379/0\"\n"));
    assert!(warning_keys(&feeds).is_empty(), "following the warning would break the shared cache");
    let bad = feeds.replace("redis://10.0.0.5:6379/0", "http://bad");
    assert_eq!(error_keys(&bad, &[]), vec!["nonce.redis_url"], "the error names the key the operator wrote");
}

#[test]
fn no_message_echoes_a_password_or_a_secret_line() {
    for url in ["redis:/:hunter2@10.0.0.5", "redis//:hunter2@10.0.0.5", ":hunter2@h", "redis:::hunter2@h"] {
        let text = with_mac(&format!("{MINIMAL}[cache]\nshared = \"redis\"\nredis_url = \"{url}\"\n"));
        let p = load(&text, &[]).unwrap_err();
        assert_eq!(p.error_keys(), vec!["cache.redis_url"]);
        assert!(!p.to_string().contains("hunter2"), "{url}: {p}");
    }
    for url in ["http//admin:hunter2@backend", "http://admin:hunter2/x@backend:8080", "http://admin:pa?hunter2@b"] {
        let p = load(&MINIMAL.replace("http://127.0.0.1:3000", url), &[]).unwrap_err();
        assert!(!p.to_string().contains("hunter2"), "{url}: {p}");
    }
    // A syntax error says where, never what the line holds.
    let unterminated = format!("{MINIMAL}[cache]\nredis_url = 'redis://:hunter2@10.0.0.5:6379/0\n");
    let p = load(&unterminated, &[]).unwrap_err();
    assert!(p.to_string().contains("TOML syntax error at line 6"), "{p}");
    assert!(!p.to_string().contains("hunter2"), "{p}");
    let twice = format!("{MINIMAL}[nonce]\nredis_url = \"redis://:hunter2@a\"\nredis_url = \"redis://:hunter2@b\"\n");
    assert!(!load(&twice, &[]).unwrap_err().to_string().contains("hunter2"));
}

#[test]
fn debug_output_of_a_loaded_configuration_holds_no_password() {
    let text = with_mac(&format!(
        "{MINIMAL}[cache]\nshared = \"redis\"\nredis_url = \"redis://:hunter2@10.0.0.5\"\n\
         [nonce]\nstore = \"redis\"\nredis_url = \"rediss://:hunter3@10.0.0.6\"\n{LOGIN}"
    ));
    let loaded = load(&text, &[]).unwrap();
    let shown = format!("{loaded:?}");
    assert!(!shown.contains("hunter2") && !shown.contains("hunter3"), "{shown}");
    assert!(shown.contains("10.0.0.5") && shown.contains("10.0.0.6"));
}

#[test]
fn prefixes_and_the_nonce_path_must_be_able_to_match() {
    for prefix in ["/caf\u{e9}/", "/a b", "/q?x=1"] {
        let text = format!("{MINIMAL}[[routes]]\npath_prefix = \"{prefix}\"\nauth = \"none\"\n");
        assert_eq!(error_keys(&text, &[]), vec!["routes[0].path_prefix"], "{prefix}");
    }
    let escaped = format!("{MINIMAL}[[routes]]\npath_prefix = \"/caf%C3%A9/\"\nauth = \"none\"\n");
    assert!(load(&escaped, &[]).is_ok());
    let nonce = format!("{MINIMAL}[nonce]\npath = \"/auth/nonce?x\"\n{LOGIN}");
    assert_eq!(error_keys(&nonce, &[]), vec!["nonce.path"]);
}

#[test]
fn table_entries_are_reported_each_under_its_own_key() {
    let text = format!("{MINIMAL}{LOGIN}[line.channel_secret_files]\n\"1234567890\" = \"\"\n\"222\" = 5\n");
    assert_eq!(error_keys(&text, &[]), vec!["line.channel_secret_files.1234567890", "line.channel_secret_files.222"]);
    let env = [("LINE_AUTH_PROXY__LINE__CHANNEL_SECRET_FILES__1234567890", "")];
    assert_eq!(error_keys(&format!("{MINIMAL}{LOGIN}"), &env), vec!["line.channel_secret_files.1234567890"]);
    // Two problems with one entry are both reported.
    let foreign = format!("{MINIMAL}{LOGIN}[line.channel_secret_files]\n\"456\" = \"/nonexistent\"\n");
    let p = load(&foreign, &[]).unwrap_err();
    assert_eq!(p.error_keys(), vec!["line.channel_secret_files.456", "line.channel_secret_files.456"]);
    assert!(p.to_string().contains("is not one of line.channel_ids") && p.to_string().contains("cannot read"), "{p}");
}

#[test]
fn an_ipv4_mapped_listener_clashes_with_the_same_ipv4_address() {
    let text =
        format!("{MINIMAL}[server]\nlisten = \"[::ffff:127.0.0.1]:18080\"\nadmin_listen = \"127.0.0.1:18080\"\n");
    assert_eq!(error_keys(&text, &[]), vec!["server.admin_listen"]);
}

#[test]
fn two_spellings_of_one_environment_key_are_an_error() {
    let env = [("LINE_AUTH_PROXY__SERVER__LISTEN", "127.0.0.1:1"), ("LINE_AUTH_PROXY__server__listen", "127.0.0.1:2")];
    let p = load(MINIMAL, &env).unwrap_err();
    assert_eq!(p.error_keys(), vec!["server.listen"]);
    assert!(p.to_string().contains("set twice in the environment"), "{p}");
}

#[test]
fn environment_names_that_spell_a_key_wrongly_are_errors_with_the_right_name() {
    const SECRET: &str = "hunter2-not-for-logs";
    let meant = |name: &str| {
        let p = load(MINIMAL, &[(name, SECRET)]).unwrap_err();
        assert_eq!(p.error_keys(), vec![name], "{p}");
        let message = p.errors[0].message.clone();
        assert!(!p.to_string().contains(SECRET), "the value was printed: {p}");
        message
    };
    for name in [
        "LINE_AUTH_PROXY_SERVER__LISTEN",
        "line_auth_proxy__server__listen",
        "Line_Auth_Proxy__Server__Listen",
        "LINE_AUTH_PROXY__SERVER_LISTEN",
        "LINE_AUTH_PROXY_SERVER_LISTEN",
    ] {
        let message = meant(name);
        assert!(message.contains("did you mean LINE_AUTH_PROXY__SERVER__LISTEN?"), "{name}: {message}");
    }
    assert!(
        meant("LINE_AUTH_PROXY_LINE__CHANNEL_SECRET_FILES__1234567890")
            .contains("did you mean LINE_AUTH_PROXY__LINE__CHANNEL_SECRET_FILES__1234567890?")
    );
    assert!(meant("line_auth_proxy_config").contains("did you mean LINE_AUTH_PROXY_CONFIG?"));
    // Ours by its prefix, naming no key: refused, without a guess.
    assert!(meant("line_auth_proxy__server__listn").contains("variables are LINE_AUTH_PROXY__SECTION__KEY"));
    // The configuration file's variable, other tools' variables, and what
    // Kubernetes sets for a Service named line-auth-proxy are none of ours.
    let env = [
        ("LINE_AUTH_PROXY_CONFIG", "/etc/line-auth-proxy.toml"),
        ("LINE_AUTH_PROXY_SERVICE_HOST", "10.96.0.12"),
        ("LINE_AUTH_PROXY_SERVICE_PORT", "8080"),
        ("LINE_AUTH_PROXY_PORT", "tcp://10.96.0.12:8080"),
        ("LINE_AUTH_PROXY_PORT_8080_TCP_ADDR", "10.96.0.12"),
        ("SERVER__LISTEN", "x"),
    ];
    assert!(load(MINIMAL, &env).is_ok());
}

#[test]
fn route_entries_that_are_not_tables_invent_nothing() {
    let p = load(&format!("routes = [5, 'x']\n{MINIMAL}"), &[]).unwrap_err();
    assert_eq!(p.error_keys(), vec!["routes[0]", "routes[1]"]);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn the_environment_alone_can_be_the_configuration() {
    let env = [
        ("LINE_AUTH_PROXY__UPSTREAM__URL", "http://127.0.0.1:3000"),
        ("LINE_AUTH_PROXY__LINE__CHANNEL_IDS", "1234567890"),
    ];
    let loaded = super::load(None, env.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap();
    assert_eq!(loaded.config.upstream.authority.as_str(), "127.0.0.1:3000");
    let p = super::load(None, std::iter::empty()).unwrap_err();
    assert_eq!(p.error_keys(), vec!["upstream.url", "line.channel_ids"]);
}

#[test]
fn trusted_proxies_are_checked_entry_by_entry() {
    let c = config(&format!("{MINIMAL}[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"fd00::/8\", \"192.0.2.1\"]\n"));
    assert!(c.server.trusted_proxies.contains("10.2.3.4".parse().unwrap()));
    assert!(c.server.trusted_proxies.contains("192.0.2.1".parse().unwrap()));
    let bad = format!("{MINIMAL}[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/40\", \"nginx\"]\n");
    assert_eq!(error_keys(&bad, &[]), vec!["server.trusted_proxies[1]", "server.trusted_proxies[2]"]);
    let everyone = format!("{MINIMAL}[server]\ntrusted_proxies = [\"0.0.0.0/0\"]\n");
    assert_eq!(warning_keys(&everyone), vec!["server.trusted_proxies"]);
    let env = [("LINE_AUTH_PROXY__SERVER__TRUSTED_PROXIES", "10.0.0.0/8, fd00::/8")];
    let c = load(MINIMAL, &env).unwrap().config;
    assert!(c.server.trusted_proxies.contains("fd00::1".parse().unwrap()));
}

/// A web-login configuration (its secret and key files written owner-only),
/// with `line_extra` in `[line]`.
fn web_login(line_extra: &str) -> String {
    let dir = std::env::temp_dir().join(format!("lap-login-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        path
    };
    let secret = write("secret", b"0123456789abcdef0123456789abcdef");
    let key = write("key", &[3u8; 32]);
    format!(
        "[upstream]\nurl = \"http://127.0.0.1:3000\"\n[line]\nchannel_ids = [\"1234567890\"]\n{line_extra}\n\
         [login]\nenabled = true\nchannel_id = \"1234567890\"\nchannel_secret_file = {secret:?}\n\
         redirect_uri = \"https://app.example/auth/callback\"\n\
         [session]\nkey_files = [{key:?}]\n\
         [[routes]]\npath_prefix = \"/\"\nauth = \"session\"\n"
    )
}

#[test]
fn the_id_token_settings_web_login_reads_are_not_called_unused() {
    let read = "jwks_url = \"https://api.line.me/oauth2/v2.1/certs\"\nclock_skew_seconds = 30\nmax_id_token_age_seconds = 600\n\
                id_token_verification = \"local\"";
    // The check of web login's ID token reads the JWKS URL, the skew and the
    // age; the remaining ID-token keys still have no effect without such routes.
    assert_eq!(warning_keys(&web_login(read)), ["line.id_token_verification"]);
    let mut loaded = config(&web_login("clock_skew_seconds = 30"));
    assert!(loaded.login.take().is_some());
    assert!(loaded.id_token.is_none());
    // Its JWKS URL is held to https like the ID-token routes'.
    assert_eq!(error_keys(&web_login("jwks_url = \"http://certs.example/keys\""), &[]), ["line.jwks_url"]);
    // Without web login they are unused, as before.
    let plain = format!("{MINIMAL}clock_skew_seconds = 30\n");
    assert_eq!(warning_keys(&plain), ["line.clock_skew_seconds"]);
}

#[test]
fn the_login_origin_is_written_as_browsers_write_origin() {
    let with_uri = |uri: &str| web_login("").replace("https://app.example/auth/callback", uri);
    for (uri, origin) in [
        ("https://App.Example:443/auth/callback", "https://app.example"),
        ("https://app.example:8443/auth/callback", "https://app.example:8443"),
        ("http://127.0.0.1:80/auth/callback", "http://127.0.0.1"),
        ("http://127.0.0.1:8080/auth/callback", "http://127.0.0.1:8080"),
    ] {
        assert_eq!(config(&with_uri(uri)).login.unwrap().origin, origin, "{uri}");
    }
    assert_eq!(error_keys(&with_uri("https://user:pw@app.example/auth/callback"), &[]), ["login.redirect_uri"]);
}

#[test]
fn a_session_cookie_name_without_the_host_prefix_is_warned_about() {
    assert!(warning_keys(&web_login("")).is_empty());
    let named = web_login("").replace("[session]\n", "[session]\ncookie_name = \"sid\"\n");
    assert_eq!(warning_keys(&named), ["session.cookie_name"]);
}

#[test]
fn the_configuration_hash_follows_settings_not_layout_or_passwords() {
    let hash = |toml: &str, env: &[(&str, &str)]| load(toml, env).unwrap_or_else(|p| panic!("{p}")).config.fingerprint;
    let base = hash(MINIMAL, &[]);
    assert_eq!(base.len(), 16);
    assert!(base.bytes().all(|b| b.is_ascii_hexdigit()));
    let commented = format!("# the app\n\n{}", MINIMAL.replace("url = ", "url   =   "));
    assert_eq!(hash(&commented, &[]), base, "comments and layout");
    assert_ne!(hash(&format!("{MINIMAL}timeout_ms = 900\n"), &[]), base, "a setting");
    assert_ne!(hash(MINIMAL, &[("LINE_AUTH_PROXY__LINE__TIMEOUT_MS", "900")]), base, "an override");
    let mac = mac_key_line();
    let redis = |url: &str| format!("{MINIMAL}[cache]\nshared = \"redis\"\n{mac}redis_url = \"{url}\"\n");
    let a = hash(&redis("redis://:first-password@cache.internal:6379/0"), &[]);
    assert_eq!(a, hash(&redis("redis://:another-one@cache.internal:6379/0"), &[]), "the hash hides passwords");
    assert_ne!(a, hash(&redis("redis://other.internal:6379/0"), &[]));
}

#[test]
fn log_audit_file_must_name_a_file_in_a_directory_that_exists() {
    let with = |path: &str| format!("{MINIMAL}[log]\naudit_file = {path:?}\n");
    let dir = std::env::temp_dir();
    let good = dir.join("lap-audit-check.jsonl");
    assert_eq!(config(&with(good.to_str().unwrap())).audit_file(), Some(good.as_path()));
    assert_eq!(config(MINIMAL).audit_file(), None, "unset by default: stderr");
    for bad in ["/nonexistent-dir-lap/audit.jsonl", dir.to_str().unwrap(), ""] {
        assert_eq!(error_keys(&with(bad), &[]), ["log.audit_file"], "{bad:?}");
    }
    let message = load(&with("/nonexistent-dir-lap/audit.jsonl"), &[]).unwrap_err().to_string();
    assert!(message.contains("/nonexistent-dir-lap does not exist"), "{message}");
}

#[test]
fn otel_exports_to_the_endpoints_v1_traces_at_a_ratio_from_0_to_1() {
    let with = |otel: &str| format!("{MINIMAL}[otel]\n{otel}\n");
    assert_eq!(config(MINIMAL).otel, None, "unset: nothing exported");
    if cfg!(feature = "otel") {
        let c = config(&with("endpoint = \"http://otel-collector:4318\""));
        let otel = c.otel.unwrap();
        assert_eq!(otel.traces_url, "http://otel-collector:4318/v1/traces");
        assert_eq!(otel.sampling_ratio, 0.05);
        let c = config(&with("endpoint = \"https://gateway.example/otlp/\"\nsampling_ratio = 1"));
        let otel = c.otel.unwrap();
        assert_eq!(otel.traces_url, "https://gateway.example/otlp/v1/traces");
        assert_eq!(otel.sampling_ratio, 1.0, "a whole number is a ratio too");
        let env = [("LINE_AUTH_PROXY__OTEL__SAMPLING_RATIO", "0.25")];
        let loaded = load(&with("endpoint = \"http://127.0.0.1:4318\""), &env).unwrap();
        assert_eq!(loaded.config.otel.unwrap().sampling_ratio, 0.25);
        for bad in ["sampling_ratio = 1.5", "sampling_ratio = -0.1", "sampling_ratio = \"0.5\""] {
            let text = with(&format!("endpoint = \"http://127.0.0.1:4318\"\n{bad}"));
            assert_eq!(error_keys(&text, &[]), ["otel.sampling_ratio"], "{bad}");
        }
        let env = [("LINE_AUTH_PROXY__OTEL__SAMPLING_RATIO", "half")];
        assert_eq!(error_keys(&with("endpoint = \"http://127.0.0.1:4318\""), &env), ["otel.sampling_ratio"]);
    } else {
        let message = load(&with("endpoint = \"http://otel-collector:4318\""), &[]).unwrap_err().to_string();
        assert!(message.contains("built without the cargo feature otel"), "{message}");
    }
    for bad in ["otel-collector:4318", "ftp://collector", "http://collector:4318/?x=1", "http://u:p@collector:4318"] {
        assert_eq!(error_keys(&with(&format!("endpoint = {bad:?}")), &[]), ["otel.endpoint"], "{bad}");
    }
    assert_eq!(warning_keys(&with("sampling_ratio = 0.5")), ["otel.sampling_ratio"], "no endpoint: no effect");
}
