//! Stage 3: the ruleset every backend renders, and the spec of what egressc enforces.
//!
//! A [`Ruleset`] is one firewall, independent of nft or iptables syntax. It has
//! address [`Set`]s and two chains:
//!
//! * `output` (hooked on the output path, base policy = the default verdict), in
//!   this order, which is the security spec:
//!   1. established/related flows: accept (replies and ongoing flows keep working);
//!   2. loopback: accept;
//!   3. conntrack state invalid: drop;
//!   4. IPv6 neighbour discovery (ICMPv6 NS, NA, RS): accept — IPv6 cannot work without it;
//!   5. DNS (udp and tcp) to the pinned resolvers: accept, looked up in the `dns_*` sets;
//!      in proxy mode (`dns.proxy`) only packets carrying the proxy's mark, so only
//!      the proxy's own queries reach them (workloads ask the proxy, over loopback);
//!   6. DNS and DNS-over-TLS (53, 853 and the policy's DNS port) to anyone else: go to
//!      `deny`, *before* the allow list, so no allow entry can reopen a DNS tunnel;
//!   7. the allow list: one lookup per set decides address + protocol + port at once
//!      (nft concatenations); single addresses with single ports live in hash sets,
//!      everything else (networks, port ranges) in interval sets; in proxy mode also
//!      the `proxy_*` sets, empty when rendered, which the proxy fills at run time
//!      with the addresses it answered, each with a timeout of TTL + grace;
//!   8. go to `deny`.
//! * `deny`: log what reaches it (if the policy has `log:`), then drop (`default:
//!   deny`) or accept (`default: audit`).
//!
//! IPv4 and IPv6 are always both covered: a family with no allowed destinations
//! still has its default drop. Backends only format this; [`eval`] interprets the
//! very same structure for `egressc explain`. Every rule and set element knows the
//! policy entry it came from ([`Origin`]).

pub mod eval;
pub mod lower;

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::policy::Pos;
use crate::policy::model::{DefaultAction, PortRange, Protocol, RateUnit};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];
}

/// How a set stores its elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetKind {
    /// Single addresses with single ports: a hash lookup (~75 ns at 100k elements,
    /// and adding one element is cheap).
    Addresses,
    /// Networks and/or port ranges: an interval set, non-overlapping elements
    /// (the kernel refuses overlaps), slower to load and look up.
    Networks,
    /// Proxy mode: single addresses with single ports that the DNS proxy adds
    /// at run time, each with its own timeout. Always empty in the ruleset:
    /// its contents are not the compiler's to know, so read-back, diff and
    /// refresh leave its elements alone.
    Learned,
}

/// What a set is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetPurpose {
    /// The pinned DNS resolvers (address . protocol . DNS port).
    Resolvers,
    /// Destinations from the allow list.
    Allow,
}

/// Where something in the ruleset came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// The allow entry with this index.
    Entry(usize),
    /// `dns.resolvers`.
    Resolvers,
    /// `log:`.
    Log,
    /// `default:`.
    Default,
    /// A rule egressc always adds (established, loopback, invalid, ND).
    Builtin,
}

/// An element: destination network (a /32 or /128 for single addresses),
/// protocol and destination port range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub net: IpNet,
    pub protocol: Protocol,
    pub ports: PortRange,
    /// The allow entries (or the resolvers) this element serves; sorted, unique.
    pub origins: Vec<Origin>,
}

impl Element {
    pub fn contains(&self, addr: IpAddr, protocol: Protocol, port: u16) -> bool {
        self.protocol == protocol && self.ports.contains(port) && self.net.contains(&addr)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    /// Name used by every backend; `[a-z0-9_]`.
    pub name: &'static str,
    pub family: Family,
    pub kind: SetKind,
    pub purpose: SetPurpose,
    /// Sorted; for `Networks`, non-overlapping.
    pub elements: Vec<Element>,
}

/// Index of a set in [`Ruleset::sets`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetId(pub usize);

/// What a rule matches. Each variant is something every backend must express
/// (or refuse with a typed error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// Conntrack state established or related.
    EstablishedRelated,
    /// Leaves through the loopback interface.
    Loopback,
    /// Conntrack state invalid.
    Invalid,
    /// ICMPv6 neighbour solicitation, neighbour advertisement, router solicitation.
    NeighbourDiscovery,
    /// Destination address . protocol . destination port is in the set.
    InSet(SetId),
    /// The packet carries this mark (SO_MARK of the DNS proxy's sockets) and
    /// its destination address . protocol . port is in the set.
    MarkedInSet { set: SetId, mark: u32 },
    /// TCP or UDP to any of these destination ports, any address.
    DnsPorts(Vec<u16>),
    /// Every packet.
    Any,
}

/// Logging of what reaches the deny chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSpec {
    /// Allowlisted characters only.
    pub prefix: Option<String>,
    /// NFLOG group (works inside containers, read over netlink).
    pub group: Option<u16>,
    pub rate: Option<(u32, RateUnit)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Accept,
    Drop,
    /// Continue in the `deny` chain (and never come back).
    GotoDeny,
    /// Log and continue with the next rule.
    Log(LogSpec),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: Match,
    pub action: Action,
    pub origin: Origin,
    /// Says which policy entry or built-in concern the rule serves. Allowlisted
    /// characters only.
    pub comment: String,
}

/// Which chain a rule is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainId {
    Output,
    Deny,
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChainId::Output => "output",
            ChainId::Deny => "deny",
        })
    }
}

/// A policy entry as the ruleset remembers it, for comments and `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    pub pos: Pos,
    /// `host api.github.com`, `cidr 10.0.0.0/8`, … (allowlisted characters only).
    pub label: String,
}

/// The whole firewall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub policy_name: Option<String>,
    pub policy_sha256: String,
    /// When the addresses were resolved (from the resolution or lock).
    pub resolved_at: String,
    pub default: DefaultAction,
    pub sets: Vec<Set>,
    pub output: Vec<Rule>,
    pub deny: Vec<Rule>,
    /// Indexed by allow entry index.
    pub entries: Vec<EntryInfo>,
    /// Where `dns:` and `default:` and `log:` were written.
    pub dns_pos: Pos,
    pub default_pos: Pos,
    pub log_pos: Pos,
}

impl Ruleset {
    pub fn set(&self, id: SetId) -> &Set {
        &self.sets[id.0]
    }

    pub fn chain(&self, id: ChainId) -> &[Rule] {
        match id {
            ChainId::Output => &self.output,
            ChainId::Deny => &self.deny,
        }
    }

    /// Where in the policy file an origin was written.
    pub fn origin_pos(&self, origin: Origin) -> Option<Pos> {
        match origin {
            Origin::Entry(i) => self.entries.get(i).map(|e| e.pos),
            Origin::Resolvers => Some(self.dns_pos),
            Origin::Log => Some(self.log_pos),
            Origin::Default => Some(self.default_pos),
            Origin::Builtin => None,
        }
    }

    /// Describes an origin in words (allowlisted characters only).
    pub fn origin_label(&self, origin: Origin) -> String {
        match origin {
            Origin::Entry(i) => match self.entries.get(i) {
                Some(e) => format!("allow[{i}] {}", e.label),
                None => format!("allow[{i}]"),
            },
            Origin::Resolvers => "dns.resolvers".to_string(),
            Origin::Log => "log".to_string(),
            Origin::Default => format!(
                "default {}",
                match self.default {
                    DefaultAction::Deny => "deny",
                    DefaultAction::Audit => "audit",
                }
            ),
            Origin::Builtin => "built-in".to_string(),
        }
    }
}
