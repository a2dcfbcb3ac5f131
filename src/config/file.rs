//! The file as written: TOML text plus the environment overlay, read key by key
//! against the declared sections into a [`FileConfig`] with every default filled
//! in, and the set of key paths that were actually written (warnings about keys
//! that have no effect name only what the operator set).

use std::collections::BTreeSet;

use super::assertion::AssertionSection;
use super::cache::CacheSection;
use super::forward_auth::ForwardAuthSection;
use super::identity::IdentitySection;
use super::keys::{KeySpec, Kind, Section};
use super::limits::LimitsSection;
use super::line::LineSection;
use super::log::LogSection;
use super::login::LoginSection;
use super::nonce::NonceSection;
use super::otel::OtelSection;
use super::routes::RouteSection;
use super::server::ServerSection;
use super::session::SessionSection;
use super::upstream::UpstreamSection;
use super::{CONFIG_FILE_ENV, ENV_PREFIX, Problems};

/// Where TOML syntax errors are reported (replaced by the file name in `load`).
pub(super) const TOML_SYNTAX_KEY: &str = "<toml>";
/// `[[routes]]`: an array of tables, from the file only.
const ROUTES: &str = "routes";

/// Every section, defaults filled in where the file and environment said nothing.
#[derive(Clone, Debug, Default)]
pub struct FileConfig {
    /// What the configuration hash metric shows; see [`fingerprint`].
    pub fingerprint: String,
    pub server: ServerSection,
    pub upstream: UpstreamSection,
    pub line: LineSection,
    pub cache: CacheSection,
    pub identity: IdentitySection,
    pub nonce: NonceSection,
    pub limits: LimitsSection,
    pub forward_auth: ForwardAuthSection,
    pub log: LogSection,
    pub otel: OtelSection,
    pub assertion: AssertionSection,
    pub login: LoginSection,
    pub session: SessionSection,
    pub routes: Vec<RouteSection>,
    /// Key paths set by the file or the environment (`nonce.ttl_seconds`,
    /// `routes[1].require_nonce`); a section written empty appears by its name.
    pub written: BTreeSet<String>,
}

impl FileConfig {
    /// The sections with plain keys, in the order the reference lists them.
    fn sections(&mut self) -> [&mut dyn Section; 13] {
        [
            &mut self.server,
            &mut self.upstream,
            &mut self.line,
            &mut self.cache,
            &mut self.identity,
            &mut self.nonce,
            &mut self.limits,
            &mut self.log,
            &mut self.otel,
            &mut self.forward_auth,
            &mut self.assertion,
            &mut self.login,
            &mut self.session,
        ]
    }

    /// Every declared key with its section path, `routes` included (reference docs).
    pub fn all_keys() -> Vec<(&'static str, &'static KeySpec)> {
        let mut probe = FileConfig::default();
        let mut out: Vec<_> = probe.sections().iter().flat_map(|s| s.keys().iter().map(|k| (s.path(), k))).collect();
        out.extend(RouteSection::KEYS.iter().map(|k| (ROUTES, k)));
        out
    }

    /// True when the operator set `key` (a full path) or anything below it.
    pub fn wrote(&self, key: &str) -> bool {
        self.written.iter().any(|w| w == key || w.strip_prefix(key).is_some_and(|rest| rest.starts_with(['.', '['])))
    }

    /// Parses `text`, overlays `env`, and reads every section. `None` when the
    /// text is not TOML at all; every other problem is recorded and reading goes on.
    pub(super) fn read<I>(text: &str, env: I, p: &mut Problems) -> Option<Self>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut tree = match text.parse::<toml::Table>() {
            Ok(table) => table,
            Err(e) => {
                p.refuse(TOML_SYNTAX_KEY, syntax_error(text, &e));
                return None;
            }
        };
        apply_env(&mut tree, env, p);
        let mut file = FileConfig { fingerprint: fingerprint(&tree), ..FileConfig::default() };
        let mut written = BTreeSet::new();
        for (name, value) in tree {
            if name == ROUTES {
                file.routes = read_routes(value, &mut written, p);
                continue;
            }
            let mut sections = file.sections();
            let Some(section) = sections.iter_mut().find(|s| s.path() == name) else {
                let known: Vec<&str> = sections.iter().map(|s| s.path()).chain([ROUTES]).collect();
                p.refuse(name, format!("unknown section; known sections: {}", known.join(", ")));
                continue;
            };
            let toml::Value::Table(table) = value else {
                p.refuse(name, "must be a table");
                continue;
            };
            written.insert(name.clone());
            read_table(&mut **section, &name, table, &mut written, p);
        }
        file.written = written;
        Some(file)
    }
}

/// The first 16 hex digits of SHA-256 over the configuration as it applies
/// (the file's tree after the environment's overrides, written back as TOML
/// in key order): comments and layout do not change it, any setting does.
/// The user name and password of a URL (`redis://:password@host`) are left
/// out first: the hash is shown in a metric, and a weak password must not be
/// found by hashing guesses with the rest of a known configuration.
fn fingerprint(tree: &toml::Table) -> String {
    fn without_userinfo(value: &toml::Value) -> toml::Value {
        match value {
            toml::Value::String(s) => match s.split_once("://") {
                Some((scheme, rest)) => {
                    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                    match rest[..authority_end].rfind('@') {
                        Some(at) => toml::Value::String(format!("{scheme}://{}", &rest[at + 1..])),
                        None => value.clone(),
                    }
                }
                None => value.clone(),
            },
            toml::Value::Array(items) => toml::Value::Array(items.iter().map(without_userinfo).collect()),
            toml::Value::Table(table) => {
                toml::Value::Table(table.iter().map(|(k, v)| (k.clone(), without_userinfo(v))).collect())
            }
            other => other.clone(),
        }
    }
    let canonical = without_userinfo(&toml::Value::Table(tree.clone())).to_string();
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads one table into `section`, reporting unknown keys and bad values by path.
fn read_table(
    section: &mut dyn Section,
    path: &str,
    table: toml::Table,
    written: &mut BTreeSet<String>,
    p: &mut Problems,
) {
    for (key, value) in table {
        let shown = format!("{path}.{key}");
        let Some(spec) = section.keys().iter().find(|k| k.name == key) else {
            p.refuse(shown, unknown_key_message(&key, section.keys()));
            continue;
        };
        if spec.kind == Kind::Map
            && let Some(entries) = value.as_table()
        {
            // Each entry is a key of its own: `line.channel_secret_files.<id>`.
            let mut fine = true;
            for (entry, v) in entries {
                if v.as_str().is_none_or(str::is_empty) {
                    p.refuse(format!("{shown}.{entry}"), "must be a path (a non-empty string)");
                    fine = false;
                }
            }
            if !fine {
                continue;
            }
            written.extend(entries.keys().map(|entry| format!("{shown}.{entry}")));
        }
        if !spec.kind.accepts(&value) {
            p.refuse(shown, format!("must be {}", spec.kind.expected()));
            continue;
        }
        match section.set(&key, value) {
            Some(Ok(())) => {
                written.insert(shown);
            }
            Some(Err(why)) => p.refuse(shown, why),
            None => unreachable!("the key table and the setter come from one declaration"),
        }
    }
}

fn read_routes(value: toml::Value, written: &mut BTreeSet<String>, p: &mut Problems) -> Vec<RouteSection> {
    let toml::Value::Array(items) = value else {
        p.refuse(ROUTES, "must be an array of tables: [[routes]]");
        return Vec::new();
    };
    let mut routes = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("{ROUTES}[{i}]");
        let mut route = RouteSection::default();
        match item {
            toml::Value::Table(table) => read_table(&mut route, &path, table, written, p),
            // Kept (so that later indices match the file), but never validated.
            _ => p.refuse(path, "must be a table"),
        }
        routes.push(route);
    }
    routes
}

/// Where the syntax error is and what it is, without quoting the line: the
/// line may hold a secret (a Redis URL with its password, say).
fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    let what = e.message().lines().next().unwrap_or("invalid TOML");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("TOML syntax error at line {line}, column {column}: {what}")
        }
        None => format!("TOML syntax error: {what}"),
    }
}

/// "unknown key", with the declared key it most likely meant.
fn unknown_key_message(key: &str, keys: &[KeySpec]) -> String {
    let closest = keys.iter().map(|k| (edit_distance(key, k.name), k.name)).min();
    match closest {
        Some((d, name)) if d <= 2 => format!("unknown key; did you mean `{name}`?"),
        _ => "unknown key (docs/configuration.md lists every key)".into(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

/// Applies `LINE_AUTH_PROXY__SECTION__KEY=value` overrides, typed by the
/// declarations (a map entry is `…__SECTION__KEY__ENTRY`).
fn apply_env<I>(tree: &mut toml::Table, env: I, p: &mut Problems)
where
    I: IntoIterator<Item = (String, String)>,
{
    let keys = FileConfig::all_keys();
    // Names are case-insensitive: two spellings of one key would otherwise
    // be decided by the order of the environment.
    let mut seen: std::collections::BTreeMap<String, String> = Default::default();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            // Ours in all but spelling: refused, never silently ignored.
            let meant = look_alike(&name, &keys);
            const FORM: &str = "LINE_AUTH_PROXY__SECTION__KEY: the prefix in capitals, two underscores between levels";
            let message = match meant {
                Some(m) if m == CONFIG_FILE_ENV => format!("is not read: did you mean {m}? (names are case-sensitive)"),
                Some(m) => format!("is not read: did you mean {m}? (variables are {FORM})"),
                None if name.to_ascii_uppercase().starts_with(ENV_PREFIX) => {
                    format!("is not read: variables are {FORM}")
                }
                None => continue,
            };
            p.refuse(name.clone(), message);
            continue;
        };
        let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let found = match parts.as_slice() {
            [section, key] | [section, key, _] if section != ROUTES => {
                keys.iter().find(|(s, k)| s == section && k.name == key).map(|(s, k)| (*s, *k))
            }
            _ => None,
        };
        let entry = parts.get(2);
        let Some((section, spec)) = found.filter(|(_, k)| (k.kind == Kind::Map) == entry.is_some()) else {
            let message = match look_alike(&name, &keys) {
                Some(meant) => format!(
                    "unknown configuration key in the environment: did you mean {meant}? (two underscores between levels)"
                ),
                None => "unknown configuration key in the environment (use LINE_AUTH_PROXY__SECTION__KEY; [[routes]] come from the file only)".to_owned(),
            };
            p.refuse(name.clone(), message);
            continue;
        };
        let path = format!("{section}.{}", spec.name);
        let slot = match entry {
            Some(entry) => format!("{path}.{entry}"),
            None => path.clone(),
        };
        if let Some(first) = seen.insert(slot.clone(), name.clone()) {
            p.refuse(slot, format!("is set twice in the environment: {first} and {name}"));
            continue;
        }
        let value = match spec.kind {
            Kind::Str | Kind::Map => toml::Value::String(raw),
            Kind::Int => match raw.trim().parse::<i64>() {
                Ok(n) => toml::Value::Integer(n),
                Err(_) => {
                    p.refuse(path, format!("{name} must be a whole number"));
                    continue;
                }
            },
            Kind::Bool => match raw.trim() {
                "true" => toml::Value::Boolean(true),
                "false" => toml::Value::Boolean(false),
                _ => {
                    p.refuse(path, format!("{name} must be true or false"));
                    continue;
                }
            },
            Kind::Number => match raw.trim().parse::<f64>() {
                Ok(n) if n.is_finite() => toml::Value::Float(n),
                _ => {
                    p.refuse(path, format!("{name} must be a number"));
                    continue;
                }
            },
            Kind::List => toml::Value::Array(
                raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.to_owned().into()).collect(),
            ),
        };
        let table = tree.entry(section.to_owned()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(table) = table.as_table_mut() else {
            p.refuse(section, "must be a table");
            continue;
        };
        match entry {
            Some(entry) => {
                let map = table.entry(spec.name.to_owned()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
                match map.as_table_mut() {
                    Some(map) => {
                        map.insert(entry.clone(), value);
                    }
                    None => p.refuse(path, "must be a table"),
                }
            }
            None => {
                table.insert(spec.name.to_owned(), value);
            }
        }
    }
}

/// The variable `name` was most likely meant as, when it spells one of ours
/// with a wrong prefix or separators: `LINE_AUTH_PROXY_SERVER__LISTEN`,
/// `line_auth_proxy__server__listen` and `LINE_AUTH_PROXY__SERVER_LISTEN` all
/// mean `LINE_AUTH_PROXY__SERVER__LISTEN`; `line_auth_proxy_config` means
/// [`CONFIG_FILE_ENV`]. Only names that spell a declared key are matched:
/// Kubernetes gives every pod `LINE_AUTH_PROXY_SERVICE_HOST`,
/// `LINE_AUTH_PROXY_PORT_8080_TCP` and the like for a Service of that name,
/// and those are none of ours.
fn look_alike(name: &str, keys: &[(&'static str, &'static KeySpec)]) -> Option<String> {
    if name == CONFIG_FILE_ENV {
        return None;
    }
    let upper = name.to_ascii_uppercase();
    if upper == CONFIG_FILE_ENV {
        return Some(CONFIG_FILE_ENV.to_owned());
    }
    let rest = upper.strip_prefix("LINE_AUTH_PROXY_")?;
    // Words only: any run of underscores is one separator.
    let words = |s: &str| s.split('_').filter(|w| !w.is_empty()).map(str::to_ascii_lowercase).collect::<Vec<_>>();
    let written = words(rest);
    keys.iter().filter(|(section, _)| *section != ROUTES).find_map(|(section, key)| {
        let declared = [words(section), words(key.name)].concat();
        let entry = written.strip_prefix(declared.as_slice())?;
        let canonical = format!("{ENV_PREFIX}{}__{}", section.to_ascii_uppercase(), key.name.to_ascii_uppercase());
        match (key.kind == Kind::Map, entry.is_empty()) {
            (false, true) => Some(canonical),
            // A table entry keeps its own spelling, which may hold underscores.
            (true, false) => Some(format!("{canonical}__{}", entry.join("_").to_ascii_uppercase())),
            _ => None,
        }
    })
}
