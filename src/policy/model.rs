//! The checked policy: typed values that cannot hold anything invalid.
//!
//! Constructing these types is the validator's job; later stages rely on the
//! invariants documented on each type and never re-check them.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::diag::Pos;

/// A validated policy, ready to be resolved and lowered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Optional name, `[a-z0-9-]`, at most 63 characters.
    pub name: Option<String>,
    pub default: DefaultAction,
    pub default_pos: Pos,
    pub dns: Dns,
    pub log: Log,
    pub allow: Vec<AllowEntry>,
    /// SHA-256 of the file's bytes, hex: ties a lock file to this exact policy text.
    pub source_hash: String,
}

impl Policy {
    /// Every distinct host name the policy needs resolved, sorted.
    pub fn hosts(&self) -> Vec<&HostName> {
        let mut hosts: Vec<&HostName> = self
            .allow
            .iter()
            .filter_map(|e| match &e.target {
                Target::Host(h) => Some(h),
                Target::Wildcard(_) | Target::Net(_) => None,
            })
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }

    /// The allow entries a DNS name falls under in proxy mode: exact host entries
    /// naming it and wildcard entries it is below. `name` is lowercase without a
    /// trailing dot.
    pub fn entries_for_name<'p>(&'p self, name: &str) -> impl Iterator<Item = &'p AllowEntry> {
        let name = name.to_string();
        self.allow
            .iter()
            .filter(move |e| e.target.matches_name(&name))
    }

    /// Whether every entry naming `host` is optional (so a failed lookup only warns).
    pub fn host_is_optional(&self, host: &HostName) -> bool {
        self.allow
            .iter()
            .filter(|e| matches!(&e.target, Target::Host(h) if h == host))
            .all(|e| e.optional)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    /// Drop whatever the allow list does not accept.
    Deny,
    /// Accept everything, but log what `deny` would drop.
    Audit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// The pinned resolvers, deduplicated, in the order written.
    pub resolvers: Vec<IpAddr>,
    pub port: u16,
    /// Proxy mode: workloads resolve through egressc's DNS proxy, and only the
    /// proxy may reach the pinned resolvers.
    pub proxy: Option<DnsProxy>,
    /// Where `dns:` was written (for rule comments and explain).
    pub pos: Pos,
}

impl Dns {
    /// The pinned resolvers on the DNS port: where lookups and the proxy go.
    pub fn upstreams(&self) -> Vec<std::net::SocketAddr> {
        self.resolvers
            .iter()
            .map(|ip| std::net::SocketAddr::new(*ip, self.port))
            .collect()
    }
}

/// `dns.proxy`: where `egressc watch` serves DNS to the workloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsProxy {
    /// A local address (e.g. 127.0.0.53); served over UDP and TCP.
    pub listen: IpAddr,
    pub port: u16,
    /// What a query for a name outside the allow list gets.
    pub refusal: crate::proxy::Refusal,
    /// The socket mark (SO_MARK) of the proxy's upstream queries: the only DNS
    /// traffic the rules let reach the pinned resolvers. Setting a mark needs
    /// CAP_NET_ADMIN or (since Linux 5.17) CAP_NET_RAW, so a workload without
    /// both cannot forge it.
    pub mark: u32,
    pub pos: Pos,
}

/// The default proxy mark: "egre" in ASCII, unlikely to collide with the marks
/// of Kubernetes, WireGuard, Tailscale or Calico.
pub const DEFAULT_PROXY_MARK: u32 = 0x6567_7265;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Log {
    /// Passed the quoted-string allowlist; at most 127 characters.
    pub prefix: Option<String>,
    pub prefix_pos: Pos,
    pub rate: Option<Rate>,
    /// NFLOG group: logs reach userspace over netlink, also inside containers.
    pub group: Option<u16>,
    pub pos: Pos,
}

/// A log rate limit, `N/unit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub unit: RateUnit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateUnit {
    Second,
    Minute,
    Hour,
    Day,
}

impl RateUnit {
    pub fn as_str(self) -> &'static str {
        match self {
            RateUnit::Second => "second",
            RateUnit::Minute => "minute",
            RateUnit::Hour => "hour",
            RateUnit::Day => "day",
        }
    }
}

/// One `allow:` entry after validation. URL entries are already turned into a
/// host or address with protocol and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    /// Position in the `allow:` list, from 0.
    pub index: usize,
    /// Where the entry starts in the file.
    pub pos: Pos,
    pub target: Target,
    pub protocol: Protocol,
    /// Non-empty, sorted, non-overlapping.
    pub ports: Vec<PortRange>,
    pub optional: bool,
    /// What the user wrote, for messages: `host api.github.com`, `url https://…`.
    /// Only allowlisted characters (it is built from validated parts).
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Host(HostName),
    /// `*.example.com` (proxy mode only): every name with at least one more
    /// label below the held suffix, not the suffix itself. Its addresses are only
    /// ever known from the proxy's answers.
    Wildcard(HostName),
    Net(IpNet),
}

impl Target {
    /// Whether a query for `name` (lowercase, no trailing dot) is for this target.
    pub fn matches_name(&self, name: &str) -> bool {
        match self {
            Target::Host(h) => h.as_str() == name,
            Target::Wildcard(suffix) => name
                .strip_suffix(suffix.as_str())
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(|below| !below.is_empty()),
            Target::Net(_) => false,
        }
    }
}

/// A DNS name: lowercase, no trailing dot, labels of `[a-z0-9-]` (1–63 characters,
/// no hyphen at either end), at most 253 characters in all.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HostName(String);

impl HostName {
    /// Checks and normalizes a name. The error says what is wrong, for diagnostics.
    pub fn parse(input: &str) -> Result<HostName, String> {
        let name = input
            .strip_suffix('.')
            .unwrap_or(input)
            .to_ascii_lowercase();
        if name.is_empty() {
            return Err("the host name is empty".into());
        }
        if name.len() > 253 {
            return Err(format!(
                "the host name is {} characters long; DNS allows at most 253",
                name.len()
            ));
        }
        for label in name.split('.') {
            if label.is_empty() {
                return Err("the host name has an empty label (two dots in a row?)".into());
            }
            if label.len() > 63 {
                return Err(format!(
                    "the label `{}…` is {} characters long; DNS allows at most 63",
                    label.chars().take(16).collect::<String>(),
                    label.len()
                ));
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
            {
                return Err(format!(
                    "the host name contains {}; only letters, digits, `-` and `.` are allowed",
                    crate::text::describe_char(c)
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(format!("the label `{label}` starts or ends with `-`"));
            }
        }
        Ok(HostName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    pub const ALL: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An inclusive port range, `first <= last`, both in 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    pub fn is_single(&self) -> bool {
        self.first == self.last
    }

    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_single() {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Sorts port ranges and merges those that overlap or touch.
pub fn normalize_ports(mut ranges: Vec<PortRange>) -> Vec<PortRange> {
    ranges.sort();
    let mut out: Vec<PortRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if u32::from(r.first) <= u32::from(last.last) + 1 => {
                last.last = last.last.max(r.last);
            }
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_normalized() {
        assert_eq!(
            HostName::parse("API.GitHub.com.").unwrap().as_str(),
            "api.github.com"
        );
    }

    #[test]
    fn bad_host_names_are_refused() {
        for bad in [
            "",
            "a..b",
            "-a.b",
            "a-.b",
            "a_b.c",
            "a b",
            "a\"b",
            &"x".repeat(64),
        ] {
            assert!(HostName::parse(bad).is_err(), "{bad:?} must be refused");
        }
        let long = ["abcdefghij"; 26].join(".");
        assert!(long.len() > 253);
        assert!(HostName::parse(&long).is_err());
    }

    #[test]
    fn wildcards_match_names_below_their_suffix_only() {
        let w = Target::Wildcard(HostName::parse("example.com").unwrap());
        assert!(w.matches_name("a.example.com"));
        assert!(w.matches_name("a.b.example.com"));
        assert!(!w.matches_name("example.com"));
        assert!(!w.matches_name("badexample.com"));
        assert!(!w.matches_name("a.example.com.evil"));
        assert!(!w.matches_name(".example.com"));
        let h = Target::Host(HostName::parse("example.com").unwrap());
        assert!(h.matches_name("example.com"));
        assert!(!h.matches_name("a.example.com"));
    }

    #[test]
    fn port_ranges_merge_when_they_touch() {
        let merged = normalize_ports(vec![
            PortRange {
                first: 10,
                last: 20,
            },
            PortRange::single(443),
            PortRange {
                first: 21,
                last: 30,
            },
            PortRange {
                first: 15,
                last: 16,
            },
        ]);
        assert_eq!(
            merged,
            vec![
                PortRange {
                    first: 10,
                    last: 30
                },
                PortRange::single(443)
            ]
        );
    }
}
