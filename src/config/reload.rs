//! Reading the configuration again for a running proxy (SIGHUP, or a change
//! of the file): the new file is validated as written, and the settings only
//! a restart can apply — the listeners and the rest of `[server]`,
//! `[upstream]`, `[otel]`, `log.audit_file` — are compared with the running
//! ones. When some differ, they are named, and the file is validated once more
//! with the running values in their place: that is the configuration the
//! proxy then runs, so it is checked as a whole like any other.

use std::path::{Path, PathBuf};

use super::file::FileConfig;
use super::otel::OtelSection;
use super::server::ServerSection;
use super::upstream::UpstreamSection;
use super::{Config, Problem, Problems};

/// The settings only a restart applies, as the file and environment wrote them.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct RestartOnly {
    server: ServerSection,
    upstream: UpstreamSection,
    otel: OtelSection,
    audit_file: Option<PathBuf>,
    /// The written key paths below those.
    written: Vec<String>,
}

impl RestartOnly {
    pub(super) fn of(file: &FileConfig) -> Self {
        Self {
            server: file.server.clone(),
            upstream: file.upstream.clone(),
            otel: file.otel.clone(),
            audit_file: file.log.audit_file.clone(),
            written: file.written.iter().filter(|w| restart_only(w)).cloned().collect(),
        }
    }

    /// Puts these values in place of the file's.
    fn apply_to(&self, file: &mut FileConfig) {
        file.server = self.server.clone();
        file.upstream = self.upstream.clone();
        file.otel = self.otel.clone();
        file.log.audit_file = self.audit_file.clone();
        file.written.retain(|w| !restart_only(w));
        file.written.extend(self.written.iter().cloned());
    }

    /// The dotted keys whose values differ in `new`.
    fn changed(&self, new: &Self) -> Vec<String> {
        let keys = |section: &str, keys: Vec<&'static str>| {
            keys.into_iter().map(|k| format!("{section}.{k}")).collect::<Vec<_>>()
        };
        let mut out = keys("server", self.server.changed(&new.server));
        out.extend(keys("upstream", self.upstream.changed(&new.upstream)));
        out.extend(keys("otel", self.otel.changed(&new.otel)));
        if self.audit_file != new.audit_file {
            out.push("log.audit_file".to_owned());
        }
        out
    }
}

/// Whether a written key path is one of [`RestartOnly`]'s.
fn restart_only(key: &str) -> bool {
    let under = |section: &str| key == section || key.strip_prefix(section).is_some_and(|rest| rest.starts_with('.'));
    under("server") || under("upstream") || under("otel") || key == "log.audit_file"
}

/// A configuration read again: what the proxy runs from now on, its warnings,
/// and the keys of the file that wait for a restart (their running values
/// stand in).
#[derive(Debug)]
pub(crate) struct Reloaded {
    pub config: Config,
    pub warnings: Vec<Problem>,
    pub restart_needed: Vec<String>,
}

/// Reads the file (or the environment alone) again for a proxy running
/// `running`. Every problem is returned, as `check` would print it; a file
/// that is valid only with its own listener settings, not the running ones,
/// is refused too.
pub(crate) fn reload(path: Option<&Path>, env: &[(String, String)], running: &Config) -> Result<Reloaded, Problems> {
    let text = super::read_text(path)?;
    let written = super::load_str(&text, env.iter().cloned()).map_err(|p| super::syntax_at(path, p))?;
    let restart_needed = running.restart_only.changed(&written.config.restart_only);
    if restart_needed.is_empty() {
        return Ok(Reloaded { config: written.config, warnings: written.warnings, restart_needed });
    }
    let mut problems = Problems::default();
    let Some(mut file) = FileConfig::read(&text, env.iter().cloned(), &mut problems) else {
        return Err(problems);
    };
    running.restart_only.apply_to(&mut file);
    let config = super::validate(&file, &mut problems);
    if problems.has_errors() {
        return Err(problems);
    }
    Ok(Reloaded { config, warnings: problems.warnings, restart_needed })
}

/// The parts of the configuration that differ, named as the file names them
/// (for the reload's log line).
pub(crate) fn changed_sections(old: &Config, new: &Config) -> Vec<&'static str> {
    // The ID-token rules apart from the nonce settings (named on their own).
    let id_token_rules_differ = match (&old.id_token, &new.id_token) {
        (Some(a), Some(b)) => super::IdTokenConfig { nonce: b.nonce.clone(), ..a.clone() } != *b,
        (a, b) => a.is_some() != b.is_some(),
    };
    let parts: [(&'static str, bool); 14] = [
        ("line", old.line != new.line),
        // The channel secrets' contents among them (a rotated file).
        ("id_token", id_token_rules_differ),
        ("cache", old.cache != new.cache),
        ("identity", old.identity != new.identity),
        ("nonce", old.id_token.as_ref().map(|c| &c.nonce) != new.id_token.as_ref().map(|c| &c.nonce)),
        ("routes", old.routes != new.routes),
        ("limits", old.limits != new.limits),
        ("forward_auth", old.forward_auth != new.forward_auth),
        ("assertion", old.assertion != new.assertion),
        ("session", old.session != new.session),
        ("login", old.login != new.login),
        ("log.user_id", old.log_user_id != new.log_user_id),
        ("server", old.server != new.server),
        ("upstream", old.upstream != new.upstream),
    ];
    parts.into_iter().filter(|(_, changed)| *changed).map(|(name, _)| name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[server]\nlisten = \"127.0.0.1:8080\"\nadmin_listen = \"127.0.0.1:9901\"\n\
                        [upstream]\nurl = \"http://127.0.0.1:3000\"\n[line]\nchannel_ids = [\"1234567890\"]\n";
    const ROUTE: &str = "[[routes]]\npath_prefix = \"/open/\"\nauth = \"none\"\n";

    fn running(text: &str) -> Config {
        super::super::load_str(text, std::iter::empty()).unwrap().config
    }

    /// `text` in a file of its own, read back by [`reload`].
    fn reload_text(text: &str, env: &[(String, String)], running: &Config) -> Result<Reloaded, Problems> {
        let path = std::env::temp_dir().join(format!("lap-reload-unit-{}.toml", rand::random::<u64>()));
        std::fs::write(&path, text).unwrap();
        let reloaded = reload(Some(&path), env, running);
        let _ = std::fs::remove_file(&path);
        reloaded
    }

    #[test]
    fn restart_only_settings_are_named_and_keep_their_running_values() {
        let before = running(BASE);
        let edited = format!(
            "{}{ROUTE}[log]\naudit_file = \"audit.log\"\n",
            BASE.replace("8080", "8081").replace("3000", "3001")
        );
        let r = reload_text(&edited, &[], &before).unwrap();
        assert_eq!(r.restart_needed, ["server.listen", "upstream.url", "log.audit_file"]);
        assert_eq!(r.config.server, before.server);
        assert_eq!(r.config.upstream, before.upstream);
        assert_eq!(r.config.audit_file, before.audit_file);
        assert_eq!(r.config.restart_only, before.restart_only);
        assert_eq!(r.config.routes.routes().len(), 1, "the route applies all the same");
        assert_eq!(changed_sections(&before, &r.config), ["routes"]);
    }

    #[test]
    fn a_file_changed_only_in_comments_and_layout_reloads_to_the_running_configuration() {
        let before = running(BASE);
        let r = reload_text(&format!("# edited\n\n{}", BASE.replace(" = ", "=")), &[], &before).unwrap();
        assert!(r.restart_needed.is_empty());
        assert_eq!(r.config, before);
    }

    #[test]
    fn every_problem_of_the_new_file_is_returned() {
        let before = running(BASE);
        let broken = format!("{BASE}[cache]\nttl_seconds = -3\ncolour = 1\n[[routes]]\nauth = \"none\"\n");
        let problems = reload_text(&broken, &[], &before).unwrap_err();
        let keys: Vec<&str> = problems.errors.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys.len(), 3, "{problems}");
        for key in ["cache.ttl_seconds", "cache.colour", "routes[0].path_prefix"] {
            assert!(keys.contains(&key), "{key} missing: {problems}");
        }
    }

    #[test]
    fn the_environment_overlay_is_applied_again() {
        let env = [("LINE_AUTH_PROXY__LINE__CHANNEL_IDS".to_owned(), "2222222222".to_owned())];
        let before = super::super::load_str(BASE, env.iter().cloned()).unwrap().config;
        let r = reload_text(&format!("{BASE}{ROUTE}"), &env, &before).unwrap();
        assert_eq!(r.config.line.channel_ids, ["2222222222"]);
    }
}
