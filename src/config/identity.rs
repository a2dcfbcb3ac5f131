//! `[identity]`: the names of the headers the upstream can trust. The header
//! rules themselves belong to the `headers` module; this only reports them.

use http::HeaderName;

use super::Problems;
use super::assertion::AssertionSection;
use super::keys::section;
use crate::headers::{IdentityHeaderNames, parse_header_name};

/// `identity.header_prefix`.
pub const DEFAULT_HEADER_PREFIX: &str = "X-Line-";

section! {
    /// `[identity]`
    pub struct IdentitySection("identity") {
        /// Prefix of the identity headers sent upstream. Every incoming header whose
        /// name, lower-cased and with `_` and `.` read as `-`, starts with it is
        /// removed first.
        header_prefix: String = DEFAULT_HEADER_PREFIX,
        /// Pass the client's `Authorization` header to the upstream.
        forward_authorization: bool,
    }
}

/// `[identity]`, validated: the keys as declared, and the header names they make.
#[derive(Clone, Debug, PartialEq)]
pub struct IdentityConfig {
    pub keys: IdentitySection,
    pub names: IdentityHeaderNames,
    /// Stripped from every client request, enabled or not.
    pub assertion_header: HeaderName,
}

impl IdentitySection {
    pub(super) fn validate(&self, assertion: &AssertionSection, p: &mut Problems) -> IdentityConfig {
        let names = IdentityHeaderNames::new(&self.header_prefix).unwrap_or_else(|why| {
            p.error("identity.header_prefix", why);
            IdentityHeaderNames::new(DEFAULT_HEADER_PREFIX).expect("the default prefix is valid")
        });
        let assertion_header = parse_header_name(&assertion.header).unwrap_or_else(|why| {
            p.error("assertion.header", why);
            HeaderName::from_static("x-line-identity-jwt")
        });
        IdentityConfig { keys: self.clone(), names, assertion_header }
    }
}
