//! `[[routes]]`: the route table. What a route may say (a normalised prefix, a
//! method) is the `routes` module's rule; this reads the entries, reports each
//! problem by its index, and warns about settings that cannot take effect.

use super::keys::{choice, section};
use super::{FileConfig, Problems, variants};
use crate::routes::{Route, RouteAuth, RouteTable, check_path_prefix, parse_method};

choice!(RouteAuth);

section! {
    /// `[[routes]]`
    pub struct RouteSection("routes") {
        /// Matched against the normalised path with `starts_with`. Required.
        path_prefix: Option<String>,
        /// What the route requires. Required.
        auth: Option<RouteAuth>,
        /// Only these methods match (case-insensitive); default every method.
        methods: Option<Vec<String>>,
        /// `id_token` routes: the token's nonce must be one the proxy issued,
        /// consumed on first use (default `true`; `false` for LIFF).
        require_nonce: Option<bool>,
        /// `OPTIONS` with `Origin` and `Access-Control-Request-Method` passes
        /// without a credential.
        allow_cors_preflight: bool,
        /// Origins whose browsers may read the proxy's own answers (401, 503, …)
        /// on this route: `Access-Control-Allow-Origin` and friends on them.
        cors_allow_origins: Vec<String>,
    }
}

pub(super) fn validate(file: &FileConfig, p: &mut Problems) -> RouteTable {
    let mut routes = Vec::with_capacity(file.routes.len());
    for (i, r) in file.routes.iter().enumerate() {
        if p.is_refused(&format!("routes[{i}]")) && !file.wrote(&format!("routes[{i}]")) {
            // Not a table at all: nothing in it to validate.
            continue;
        }
        let key = |k: &str| format!("routes[{i}].{k}");
        let prefix = r.path_prefix.clone().unwrap_or_else(|| {
            p.error(key("path_prefix"), "is required, e.g. \"/public/\"");
            "/".into()
        });
        if let Err(why) = check_path_prefix(&prefix) {
            p.error(key("path_prefix"), why);
        }
        let auth = r.auth.unwrap_or_else(|| {
            p.error(key("auth"), format!("is required: {}", variants::<RouteAuth>()));
            RouteAuth::AccessToken
        });
        let require_nonce = match (auth, r.require_nonce) {
            (RouteAuth::IdToken, setting) => setting.unwrap_or(true),
            (_, Some(_)) => {
                p.warn(key("require_nonce"), "has no effect: it applies to auth = \"id_token\" routes only");
                false
            }
            (_, None) => false,
        };
        // A route without `methods` (or one with OPTIONS) matches the preflight anyway.
        let matches_options_anyway =
            r.methods.as_ref().is_none_or(|m| m.iter().any(|m| m.eq_ignore_ascii_case("OPTIONS")));
        if auth == RouteAuth::None && r.allow_cors_preflight && matches_options_anyway {
            p.warn(key("allow_cors_preflight"), "has no effect: auth = \"none\" lets every request through");
        }
        let methods = r.methods.as_ref().map(|list| {
            if list.is_empty() {
                p.error(key("methods"), "must name at least one method, or be left out to match every method");
            }
            list.iter()
                .enumerate()
                .filter_map(|(j, m)| {
                    parse_method(m)
                        .map_err(|why| p.error(format!("routes[{i}].methods[{j}]"), format!("{m:?} {why}")))
                        .ok()
                })
                .collect()
        });
        let mut cors_allow_origins = Vec::with_capacity(r.cors_allow_origins.len());
        for (j, origin) in r.cors_allow_origins.iter().enumerate() {
            match check_origin(origin) {
                Ok(origin) => cors_allow_origins.push(origin),
                Err(why) => p.error(format!("routes[{i}].cors_allow_origins[{j}]"), why),
            }
        }
        routes.push(Route {
            path_prefix: prefix,
            auth,
            methods,
            allow_cors_preflight: r.allow_cors_preflight,
            require_nonce,
            cors_allow_origins,
        });
    }
    warn_unreachable(&routes, p);
    RouteTable::new(routes)
}

/// A browser's `Origin`: `scheme://host[:port]`, nothing more, lower-cased as
/// browsers send it. `*` is refused: list the origins that may read the answers.
fn check_origin(origin: &str) -> Result<String, String> {
    let refuse =
        || format!("{origin:?} is not an origin such as \"https://app.example\" (scheme, host, port; no path)");
    let uri: http::Uri = origin.parse().map_err(|_| refuse())?;
    let authority_only = uri.authority().is_some_and(|a| !a.as_str().contains('@') && !a.host().is_empty());
    let no_path = uri.path_and_query().is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/");
    if !matches!(uri.scheme_str(), Some("http" | "https")) || !authority_only || !no_path || origin.ends_with('/') {
        return Err(refuse());
    }
    Ok(origin.to_ascii_lowercase())
}

/// A route that an earlier, method-less route with a shorter-or-equal prefix
/// always wins over can never match.
fn warn_unreachable(routes: &[Route], p: &mut Problems) {
    for (j, later) in routes.iter().enumerate() {
        if let Some(i) = routes[..j]
            .iter()
            .position(|r| r.methods.is_none() && later.path_prefix.starts_with(r.path_prefix.as_str()))
        {
            p.warn(
                format!("routes[{j}]"),
                format!(
                    "has no effect: routes[{i}] (path_prefix {:?}) matches every request it would",
                    routes[i].path_prefix
                ),
            );
        }
    }
}
