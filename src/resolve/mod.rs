//! Stage 2 of the pipeline: turn the policy's host names into addresses.
//!
//! Names are resolved only through the policy's pinned resolvers ([`dns`]), or read
//! from a lock file written earlier ([`lock`]) so that `render --locked` needs no DNS
//! at all. Either way the result is a [`Resolution`]: the lock file *is* a serialized
//! `Resolution`, so both paths feed the same bytes into the next stage.

pub mod dns;
pub mod lock;
pub mod marked;

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::policy::model::HostName;

/// The lock file format version written by this egressc.
pub const LOCK_FORMAT: u32 = 1;

/// What the pinned resolvers said about every host of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolution {
    /// Lock file format version.
    pub lock_format: u32,
    /// SHA-256 of the policy file this resolution belongs to.
    pub policy_sha256: String,
    /// When the answers were received (RFC 3339, UTC).
    pub resolved_at: String,
    /// The resolvers that were asked (the policy's pinned resolvers).
    pub resolvers: Vec<IpAddr>,
    pub port: u16,
    /// One answer per host, sorted by name.
    pub hosts: BTreeMap<HostName, HostAnswer>,
}

/// The addresses of one host, or why it has none (for optional hosts only: a
/// required host without addresses stops the pipeline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HostAnswer {
    /// Sorted by address; IPv4 first.
    pub addresses: Vec<ResolvedAddr>,
    /// The CNAME chain that was followed, in order, if any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cnames: Vec<String>,
    /// Set when the host did not resolve (it was optional, so this was a warning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unresolved: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolvedAddr {
    pub addr: IpAddr,
    /// Seconds the answer may be cached, as the resolver gave it (the smallest TTL
    /// along the CNAME chain).
    pub ttl: u32,
}

impl Resolution {
    /// The addresses of `host`, or `None` if this resolution does not know it.
    pub fn addresses(&self, host: &HostName) -> Option<&[ResolvedAddr]> {
        self.hosts.get(host).map(|a| a.addresses.as_slice())
    }
}
