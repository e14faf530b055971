//! The policy file as written: serde structs with source positions kept.
//!
//! Everything here is deliberately loose in value (ports are numbers *or* strings,
//! numbers are signed) so that a wrong value becomes a precise diagnostic from the
//! validator instead of a generic type error, and strict in shape: unknown keys and
//! duplicate keys are rejected by the loader (serde-saphyr refuses duplicates; a
//! silently dropped rule is a security bug in a firewall policy).

use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub version: Option<Spanned<i64>>,
    pub name: Option<Spanned<String>>,
    pub default: Option<Spanned<String>>,
    pub dns: Option<Spanned<RawDns>>,
    pub log: Option<Spanned<RawLog>>,
    pub allow: Option<Spanned<Vec<Spanned<RawEntry>>>>,
}

impl RawPolicy {
    /// True when the document holds no keys at all (an empty file or only comments).
    pub fn is_empty(&self) -> bool {
        self.version.is_none()
            && self.name.is_none()
            && self.default.is_none()
            && self.dns.is_none()
            && self.log.is_none()
            && self.allow.is_none()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    pub resolvers: Option<Spanned<Vec<Spanned<String>>>>,
    pub port: Option<Spanned<i64>>,
    pub proxy: Option<Spanned<RawProxy>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub listen: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    /// `refused` or `nxdomain`.
    pub refuse: Option<Spanned<String>>,
    pub mark: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub prefix: Option<Spanned<String>>,
    pub rate: Option<Spanned<String>>,
    pub group: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEntry {
    pub host: Option<Spanned<String>>,
    pub url: Option<Spanned<String>>,
    pub cidr: Option<Spanned<String>>,
    pub ports: Option<Spanned<Vec<Spanned<RawPort>>>>,
    pub protocol: Option<Spanned<String>>,
    pub optional: Option<Spanned<bool>>,
}

/// A port as written: `443` or `"8000-8100"` (or `"443"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawPort {
    Number(i64),
    Text(String),
}
