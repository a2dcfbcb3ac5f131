//! The configuration loader: TOML text plus the environment overlay.
//!
//! Input (text): the configuration file, then optionally a line `#!env`
//! (a TOML comment) followed by `NAME=VALUE` environment lines.
//! ```text
//! [server]
//! listen = "0.0.0.0:8080"
//! ...
//! #!env
//! LINE_AUTH_PROXY__CACHE__REDIS_URL=redis://:s3cretPW@10.0.0.5/0
//! ```
//!
//! Asserts: `config::load_str` never panics and is deterministic; variables
//! outside `LINE_AUTH_PROXY__` change nothing but the errors that name them
//! (look-alikes of the prefix are refused by name); a refused configuration has at
//! least one error; an accepted one matches routes only on normal prefixes,
//! injects only headers its strip rule removes, and strips an assertion header
//! that is no standard header; no problem it reports (key or message) depends
//! on the password in the value of a URL key (file or environment).
#![no_main]

use fuzz_support::input::lines;
use libfuzzer_sys::fuzz_target;
use line_auth_proxy::config::{Loaded, Problems, load_str};
use line_auth_proxy::fuzzing::{channel_ids, check_path_prefix, identity_headers, routes, standard_request_headers};

const ENV_MARKER: &[u8] = b"\n#!env\n";
const PREFIX: &str = "LINE_AUTH_PROXY__";

fuzz_target!(|data: &[u8]| {
    let (text, env) = match data.windows(ENV_MARKER.len()).position(|w| w == ENV_MARKER) {
        Some(i) => (&data[..i + 1], &data[i + ENV_MARKER.len()..]),
        None => (data, &[][..]),
    };
    let text = String::from_utf8_lossy(text).into_owned();
    let env: Vec<(String, String)> = lines(env)
        .take(32)
        .filter_map(|l| {
            let l = String::from_utf8_lossy(l);
            let (name, value) = l.split_once('=')?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect();

    let loaded = load_str(&text, env.clone());
    assert_eq!(format!("{loaded:?}"), format!("{:?}", load_str(&text, env.clone())), "two loads differ");
    // A foreign variable matters only as a look-alike of ours (`LiNE_AUTH_PROXY__…`,
    // one underscore short), and then as an error naming it.
    let named = |n: &str| matches!(&loaded, Err(p) if p.errors.iter().any(|e| e.key == n));
    let kept: Vec<_> = env.iter().filter(|(n, _)| n.starts_with(PREFIX) || named(n)).cloned().collect();
    if kept.len() != env.len() {
        assert_eq!(format!("{loaded:?}"), format!("{:?}", load_str(&text, kept)), "a foreign variable mattered");
    }
    match &loaded {
        Err(problems) => assert!(problems.has_errors(), "refused without an error"),
        Ok(loaded) => check_accepted(loaded),
    }
    check_passwords(&text, &env, &loaded);
});

fn check_accepted(loaded: &Loaded) {
    let config = &loaded.config;
    for route in routes(config).routes() {
        assert_eq!(check_path_prefix(&route.path_prefix), Ok(()), "accepted prefix {:?}", route.path_prefix);
        assert!(route.methods.as_ref().is_none_or(|m| !m.is_empty()), "a route that matches no method");
    }
    let (names, assertion) = identity_headers(config);
    for name in [
        &names.user_id,
        &names.display_name,
        &names.picture_url,
        &names.email,
        &names.channel_id,
        &names.auth_method,
        &names.expires_at,
    ] {
        assert!(names.is_identity_header(name), "{name} is injected but not stripped");
    }
    let folded = assertion.as_str().replace(['_', '.'], "-");
    assert!(!standard_request_headers().contains(&folded.as_str()), "assertion header {assertion}");
    assert!(
        !channel_ids(config).is_empty() && channel_ids(config).iter().all(|c| c.bytes().all(|b| b.is_ascii_digit())),
        "channel ids {:?}",
        channel_ids(config)
    );
}

/// The password of every `scheme://user:password@…` value of a URL key (its
/// name says `url`) in the file or the environment, if it occurs exactly once
/// in the whole input.
fn passwords(text: &str, env: &[(String, String)]) -> Vec<String> {
    let mut values: Vec<String> =
        env.iter().filter(|(n, _)| n.to_ascii_lowercase().contains("url")).map(|(_, v)| v.clone()).collect();
    if let Ok(table) = text.parse::<toml::Table>() {
        collect_urls(&toml::Value::Table(table), false, &mut values);
    }
    let whole: String = std::iter::once(text.to_owned()).chain(env.iter().map(|(n, v)| format!("{n}={v}"))).collect();
    values
        .iter()
        .filter_map(|v| {
            let rest = v.split_once("://")?.1;
            let userinfo = rest.rsplit_once('@')?.0;
            let password = userinfo.split_once(':')?.1;
            Some(password.to_owned())
        })
        .filter(|p| {
            p.len() >= 4 && p.bytes().any(|b| b.is_ascii_alphanumeric()) && whole.matches(p.as_str()).count() == 1
        })
        .collect()
}

/// The strings under keys whose name has `url` in it.
fn collect_urls(value: &toml::Value, url_key: bool, out: &mut Vec<String>) {
    match value {
        toml::Value::String(s) if url_key => out.push(s.clone()),
        toml::Value::Array(items) => items.iter().for_each(|v| collect_urls(v, url_key, out)),
        toml::Value::Table(table) => {
            table.iter().for_each(|(k, v)| collect_urls(v, k.to_ascii_lowercase().contains("url"), out))
        }
        _ => {}
    }
}

/// The same characters, each letter and digit moved on by one.
fn another(password: &str) -> String {
    password
        .chars()
        .map(|c| match c {
            'a'..='y' | 'A'..='Y' | '0'..='8' => char::from(c as u8 + 1),
            'z' => 'a',
            'Z' => 'A',
            '9' => '0',
            c => c,
        })
        .collect()
}

/// Loading again with each password replaced must report the same problems,
/// except where the old report spelled out the password: that would be a leak.
fn check_passwords(text: &str, env: &[(String, String)], loaded: &Result<Loaded, Problems>) {
    let reported = |r: &Result<Loaded, Problems>| -> Vec<(String, String)> {
        let (errors, warnings) = match r {
            Ok(l) => (&[][..], l.warnings.as_slice()),
            Err(p) => (p.errors.as_slice(), p.warnings.as_slice()),
        };
        errors.iter().chain(warnings).map(|p| (p.key.clone(), p.message.clone())).collect()
    };
    let before = reported(loaded);
    for password in passwords(text, env) {
        let leaks = |r: &[(String, String)]| r.iter().any(|(k, m)| k.contains(&password) || m.contains(&password));
        if !leaks(&before) {
            continue;
        }
        let other = another(&password);
        let text2 = text.replace(&password, &other);
        let env2: Vec<_> =
            env.iter().map(|(n, v)| (n.replace(&password, &other), v.replace(&password, &other))).collect();
        let after = reported(&load_str(&text2, env2));
        // The password is in the report, and in the report only because it was in the input.
        assert!(leaks(&after), "a problem reveals the password {password:?}: {before:?}");
    }
}
