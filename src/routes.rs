//! Path normalisation and the route table: which credential a request needs.
//!
//! Pipeline position: right after identity stripping. Routing sees only the
//! normalised path of the request line (never the query, never a client header);
//! the upstream later receives exactly that normalised path.

use std::borrow::Cow;

use http::Method;

/// What a route requires of the client (`routes[].auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteAuth {
    /// No credential; identity headers are still stripped.
    None,
    /// `Authorization: Bearer <LINE access token>`, verified with the LINE Platform.
    AccessToken,
    /// Verified when present, anonymous when absent, 401 when invalid.
    Optional,
    /// `Authorization: Bearer <LINE ID token>`, with a single-use nonce unless
    /// the route sets `require_nonce = false`.
    IdToken,
    /// A proxy session cookie (`[session]`), or a Bearer access token.
    Session,
}

impl RouteAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteAuth::None => "none",
            RouteAuth::AccessToken => "access_token",
            RouteAuth::Optional => "optional",
            RouteAuth::IdToken => "id_token",
            RouteAuth::Session => "session",
        }
    }
}

/// One `[[routes]]` entry, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// Matched against the normalised path with `starts_with`.
    pub path_prefix: String,
    pub auth: RouteAuth,
    /// `None` matches every method.
    pub methods: Option<Vec<Method>>,
    /// Lets a CORS preflight (`OPTIONS` + `Origin` + `Access-Control-Request-Method`) through without a credential.
    pub allow_cors_preflight: bool,
    /// `id_token` routes: the token's nonce must be one this proxy issued, consumed once.
    pub require_nonce: bool,
    /// Origins (`https://app.example`, lower-case) whose browsers may read the
    /// proxy's own answers on this route.
    pub cors_allow_origins: Vec<String>,
}

impl Route {
    /// True when `origin` (a request's `Origin`) is one this route lets read
    /// the proxy's answers.
    pub fn allows_origin(&self, origin: &[u8]) -> bool {
        self.cors_allow_origins.iter().any(|o| o.as_bytes().eq_ignore_ascii_case(origin))
    }
}

/// The policy that applies to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub auth: RouteAuth,
    /// The request is a CORS preflight that its route lets through uncredentialed.
    pub preflight_pass: bool,
    pub require_nonce: bool,
    /// The matched route (an index into the table); `None`: the default route.
    pub route: Option<usize>,
}

/// Unmatched paths need an access token.
pub const DEFAULT_POLICY: Policy =
    Policy { auth: RouteAuth::AccessToken, preflight_pass: false, require_nonce: false, route: None };

/// Ordered routes; the first match wins.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        Self { routes }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route a policy came from.
    pub fn route(&self, policy: &Policy) -> Option<&Route> {
        policy.route.and_then(|i| self.routes.get(i))
    }

    /// True when some route requires `auth`.
    pub fn has(&self, auth: RouteAuth) -> bool {
        self.routes.iter().any(|r| r.auth == auth)
    }

    /// Finds the policy for a normalised path. `preflight_method` is the
    /// `Access-Control-Request-Method` of an `OPTIONS` request that also carries
    /// `Origin`; a preflight route matches when it allows the method being asked about.
    pub fn policy(&self, method: &Method, path: &str, preflight_method: Option<&[u8]>) -> Policy {
        for (index, route) in self.routes.iter().enumerate() {
            if !path.starts_with(route.path_prefix.as_str()) {
                continue;
            }
            let preflight = route.allow_cors_preflight && preflight_method.is_some();
            let method_ok = match &route.methods {
                None => true,
                Some(methods) => {
                    methods.contains(method)
                        || (preflight
                            && preflight_method.is_some_and(|asked| {
                                methods.iter().any(|m| m.as_str().as_bytes().eq_ignore_ascii_case(asked))
                            }))
                }
            };
            if method_ok {
                return Policy {
                    auth: route.auth,
                    preflight_pass: preflight,
                    require_nonce: route.require_nonce,
                    route: Some(index),
                };
            }
        }
        DEFAULT_POLICY
    }
}

/// A route's `path_prefix` must be what normalisation leaves unchanged:
/// requests are matched after normalisation, so anything else never matches.
pub fn check_path_prefix(prefix: &str) -> Result<(), &'static str> {
    if !prefix.starts_with('/') {
        return Err("must start with /");
    }
    // What a request path can hold as it arrives: visible ASCII without the
    // query or fragment delimiters. Anything else would never match a request
    // (`/café` arrives as `/caf%C3%A9`, which the prefix must say).
    if !prefix.bytes().all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#') {
        return Err(
            "must be visible ASCII without ? or #: percent-encode anything else, as requests arrive (\"/caf%C3%A9/\")",
        );
    }
    if normalize_path(prefix).ok().as_deref() != Some(prefix) {
        return Err(
            "must be a normalised path (no //, no . or .. segments, no percent-escapes): requests are matched after normalisation",
        );
    }
    Ok(())
}

/// A route's method name, matched case-insensitively.
pub fn parse_method(name: &str) -> Result<Method, &'static str> {
    match Method::from_bytes(name.to_ascii_uppercase().as_bytes()) {
        Ok(method) if !name.is_empty() => Ok(method),
        _ => Err("is not an HTTP method"),
    }
}

/// Why a request path was refused (400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not `origin-form` (`/…`): absolute-form, authority-form or `*`.
    NotOriginForm,
    /// `%2F`, `%5C` or `%00`: an encoded separator or NUL that backends disagree on.
    EncodedSeparator,
    /// A raw `\`, which some backends read as `/`.
    Backslash,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `;` or `%3B`: path parameters, which Java servers strip before routing
    /// (`/public/..;/admin` is `/admin` to Tomcat) and so would escape the route match.
    PathParameter,
}

impl PathError {
    pub fn describe(self) -> &'static str {
        match self {
            PathError::NotOriginForm => "the request target must be a path starting with /",
            PathError::EncodedSeparator => "the path contains an encoded /, \\ or NUL",
            PathError::Backslash => "the path contains a backslash",
            PathError::BadEscape => "the path contains a malformed percent-escape",
            PathError::PathParameter => "the path contains ';' (path parameters are refused)",
        }
    }
}

/// Normalises a request path: unreserved percent-escapes decoded (others kept,
/// upper-cased), repeated `/` collapsed, `.` and `..` resolved (never above the
/// root). Returns the input unchanged, without allocating, when it is already normal.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    if is_normal(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for raw_segment in raw[1..].split('/') {
        let segment = decode_segment(raw_segment)?;
        trailing_slash = matches!(segment.as_str(), "" | "." | "..");
        match segment.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(raw.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// True when no step of [`normalize_path`] would change the path.
fn is_normal(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    if bytes.iter().any(|&b| matches!(b, b'%' | b'\\' | b';') || !b.is_ascii()) {
        return false;
    }
    // Segments between slashes: none empty (except the last), none "." or "..".
    let mut segments = raw[1..].split('/').peekable();
    while let Some(s) = segments.next() {
        let last = segments.peek().is_none();
        if (s.is_empty() && !last) || s == "." || s == ".." {
            return false;
        }
    }
    true
}

fn decode_segment(segment: &str) -> Result<String, PathError> {
    let bytes = segment.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::PathParameter),
            b'%' => {
                // Two hex digits, nothing else: `from_str_radix` alone also
                // takes a sign ("%+f" would read as 0x0F).
                let value = match bytes.get(i + 1..i + 3) {
                    Some(&[hi, lo]) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
                        hex_value(hi) << 4 | hex_value(lo)
                    }
                    _ => return Err(PathError::BadEscape),
                };
                match value {
                    b'/' | b'\\' | 0 => return Err(PathError::EncodedSeparator),
                    b';' => return Err(PathError::PathParameter),
                    v if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') => out.push(v),
                    v => out.extend_from_slice(format!("%{v:02X}").as_bytes()),
                }
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    // Only ASCII was added to the input's (valid UTF-8) bytes, so this holds.
    String::from_utf8(out).map_err(|_| PathError::BadEscape)
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_cases() {
        let cases = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("//a///b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/../../a", "/a"),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/%61%62c", "/abc"),
            ("/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E/private", "/private"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/%7e", "/~"),
            ("/café/./x", "/café/x"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_path(raw).unwrap(), want, "{raw}");
        }
    }

    #[test]
    fn normal_paths_do_not_allocate() {
        assert!(matches!(normalize_path("/api/v1/items").unwrap(), Cow::Borrowed(_)));
        assert!(matches!(normalize_path("/api/").unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn dangerous_paths_are_refused() {
        assert_eq!(normalize_path("/a%2Fb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize_path("/a%2fb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize_path("/a%5cb"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize_path("/a%00b"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize_path("/a\\b"), Err(PathError::Backslash));
        assert_eq!(normalize_path("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize_path("/a%2"), Err(PathError::BadEscape));
        // A sign is not a hex digit (found by fuzz/fuzz_targets/routes.rs).
        assert_eq!(normalize_path("/a%+fq"), Err(PathError::BadEscape));
        assert_eq!(normalize_path("/a%-1"), Err(PathError::BadEscape));
        assert_eq!(normalize_path("*"), Err(PathError::NotOriginForm));
        assert_eq!(normalize_path("/public/..;/admin"), Err(PathError::PathParameter));
        assert_eq!(normalize_path("/admin;jsessionid=1/x"), Err(PathError::PathParameter));
        assert_eq!(normalize_path("/public/%2e%2e%3b/admin"), Err(PathError::PathParameter));
    }

    #[test]
    fn prefixes_must_be_what_requests_can_match() {
        for fine in ["/", "/public/", "/api", "/caf%C3%A9/", "/a%20b"] {
            assert_eq!(check_path_prefix(fine), Ok(()), "{fine}");
        }
        for never in ["public", "/a//b", "/a/./b", "/%61", "/caf\u{e9}/", "/a b", "/q?x=1", "/a#b", "/tab\t"] {
            assert!(check_path_prefix(never).is_err(), "{never:?} accepted");
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(vec![
            Route {
                path_prefix: "/public/".into(),
                auth: RouteAuth::None,
                methods: Some(vec![Method::GET]),
                allow_cors_preflight: false,
                require_nonce: false,
                cors_allow_origins: Vec::new(),
            },
            Route {
                path_prefix: "/api/".into(),
                auth: RouteAuth::AccessToken,
                methods: Some(vec![Method::POST]),
                allow_cors_preflight: true,
                require_nonce: false,
                cors_allow_origins: Vec::new(),
            },
            Route {
                path_prefix: "/".into(),
                auth: RouteAuth::Optional,
                methods: None,
                allow_cors_preflight: false,
                require_nonce: false,
                cors_allow_origins: Vec::new(),
            },
        ])
    }

    #[test]
    fn first_match_wins_and_methods_filter() {
        let t = table();
        assert_eq!(t.policy(&Method::GET, "/public/x", None).auth, RouteAuth::None);
        // POST skips the GET-only public route and falls through to "/".
        assert_eq!(t.policy(&Method::POST, "/public/x", None).auth, RouteAuth::Optional);
        assert_eq!(t.policy(&Method::GET, "/public", None).auth, RouteAuth::Optional);
        assert_eq!(RouteTable::default().policy(&Method::GET, "/x", None), DEFAULT_POLICY);
    }

    #[test]
    fn preflight_matches_the_method_asked_about() {
        let t = table();
        let p = t.policy(&Method::OPTIONS, "/api/x", Some(b"post"));
        assert_eq!(
            p,
            Policy { auth: RouteAuth::AccessToken, preflight_pass: true, require_nonce: false, route: Some(1) }
        );
        let p = t.policy(&Method::OPTIONS, "/api/x", Some(b"DELETE"));
        assert!(!p.preflight_pass);
        let p = t.policy(&Method::OPTIONS, "/api/x", None);
        assert!(!p.preflight_pass);
    }
}
