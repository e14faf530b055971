//! Lowering: policy + resolution → [`Ruleset`].
//!
//! This is where meaning and order are decided; backends only format the result.
//! The output is deterministic: elements are aggregated and sorted, so the same
//! policy and the same addresses give the same ruleset whatever the order of the
//! allow list or of the DNS answers (only the origins named in comments follow the
//! entries).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::{
    Action, Element, EntryInfo, Family, LogSpec, Match, Origin, Rule, Ruleset, Set, SetId, SetKind,
    SetPurpose,
};
use crate::policy::Policy;
use crate::policy::model::{DefaultAction, HostName, PortRange, Protocol, Target};
use crate::resolve::Resolution;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LowerError {
    /// The resolution does not know a host the policy names.
    #[error("no addresses are known for host `{0}` (it is missing from the resolution)")]
    HostMissing(HostName),
    /// A required host has no addresses (an edited or damaged lock file).
    #[error(
        "required host `{0}` has no addresses\n  help: run `egressc lock` again, or mark the entry `optional: true`"
    )]
    HostWithoutAddresses(HostName),
}

/// The DNS ports that may only go to the pinned resolvers: DNS and DNS-over-TLS.
const DNS_PORTS: [u16; 2] = [53, 853];

/// Set layout, in the order backends print them. `sets[i]` has id `SetId(i)`.
/// The `Learned` sets come last and exist in proxy mode only, so the ids of the
/// others do not depend on the mode.
const SET_LAYOUT: [(&str, Family, SetKind, SetPurpose); 8] = [
    (
        "dns_v4",
        Family::V4,
        SetKind::Addresses,
        SetPurpose::Resolvers,
    ),
    (
        "dns_v6",
        Family::V6,
        SetKind::Addresses,
        SetPurpose::Resolvers,
    ),
    (
        "allow_v4_addrs",
        Family::V4,
        SetKind::Addresses,
        SetPurpose::Allow,
    ),
    (
        "allow_v4_nets",
        Family::V4,
        SetKind::Networks,
        SetPurpose::Allow,
    ),
    (
        "allow_v6_addrs",
        Family::V6,
        SetKind::Addresses,
        SetPurpose::Allow,
    ),
    (
        "allow_v6_nets",
        Family::V6,
        SetKind::Networks,
        SetPurpose::Allow,
    ),
    ("proxy_v4", Family::V4, SetKind::Learned, SetPurpose::Allow),
    ("proxy_v6", Family::V6, SetKind::Learned, SetPurpose::Allow),
];

fn set_id(family: Family, kind: SetKind, purpose: SetPurpose) -> SetId {
    let i = SET_LAYOUT
        .iter()
        .position(|(_, f, k, p)| *f == family && *k == kind && *p == purpose)
        .expect("every family/kind/purpose combination used is in SET_LAYOUT");
    SetId(i)
}

/// Builds the ruleset for `policy` with the addresses in `resolution`.
pub fn lower(policy: &Policy, resolution: &Resolution) -> Result<Ruleset, LowerError> {
    lower_inner(policy, resolution, false)
}

/// Like [`lower`], but a required host without addresses allows nothing instead
/// of being an error. For `watch`: when a required host's addresses run out of
/// grace during a resolver outage, its entries fail closed while the rest of the
/// policy keeps being enforced.
pub fn lower_allowing_empty(
    policy: &Policy,
    resolution: &Resolution,
) -> Result<Ruleset, LowerError> {
    lower_inner(policy, resolution, true)
}

fn lower_inner(
    policy: &Policy,
    resolution: &Resolution,
    allow_empty: bool,
) -> Result<Ruleset, LowerError> {
    let proxy_mode = policy.dns.proxy.is_some();
    let mut sets: Vec<Set> = SET_LAYOUT
        .iter()
        .filter(|(_, _, kind, _)| proxy_mode || *kind != SetKind::Learned)
        .map(|(name, family, kind, purpose)| Set {
            name,
            family: *family,
            kind: *kind,
            purpose: *purpose,
            elements: Vec::new(),
        })
        .collect();

    // The pinned resolvers, udp and tcp on the DNS port.
    for ip in &policy.dns.resolvers {
        let id = set_id(Family::of(*ip), SetKind::Addresses, SetPurpose::Resolvers);
        for protocol in Protocol::ALL {
            sets[id.0].elements.push(Element {
                net: IpNet::from(*ip),
                protocol,
                ports: PortRange::single(policy.dns.port),
                origins: vec![Origin::Resolvers],
            });
        }
    }

    // The allow list: every (address or network) × port range of every entry.
    // Single address + single port: collected flat, then sorted and grouped (a
    // sort of 100,000 tuples is several times cheaper than a BTreeMap of them).
    let mut singles: Vec<(IpAddr, Protocol, u16, Origin)> = Vec::new();
    let mut ranged: Vec<Candidate> = Vec::new();
    for entry in &policy.allow {
        let nets: Vec<IpNet> = match &entry.target {
            Target::Net(net) => vec![*net],
            // Only the proxy learns a wildcard's addresses, at run time.
            Target::Wildcard(_) => continue,
            Target::Host(host) => {
                let answer = resolution
                    .hosts
                    .get(host)
                    .ok_or_else(|| LowerError::HostMissing(host.clone()))?;
                if answer.addresses.is_empty() && !entry.optional && !allow_empty {
                    return Err(LowerError::HostWithoutAddresses(host.clone()));
                }
                answer
                    .addresses
                    .iter()
                    .map(|a| IpNet::from(a.addr))
                    .collect()
            }
        };
        let origin = Origin::Entry(entry.index);
        for net in nets {
            for ports in &entry.ports {
                let single_addr = net.prefix_len() == net.max_prefix_len();
                if single_addr && ports.is_single() {
                    singles.push((net.addr(), entry.protocol, ports.first, origin));
                } else {
                    ranged.push(Candidate {
                        net,
                        protocol: entry.protocol,
                        ports: *ports,
                        origin,
                    });
                }
            }
        }
    }
    singles.sort_unstable();
    singles.dedup();
    for group in singles.chunk_by(|a, b| (a.0, a.1, a.2) == (b.0, b.1, b.2)) {
        let (addr, protocol, port, _) = group[0];
        let id = set_id(Family::of(addr), SetKind::Addresses, SetPurpose::Allow);
        sets[id.0].elements.push(Element {
            net: IpNet::from(addr),
            protocol,
            ports: PortRange::single(port),
            // Sorted and unique: the group is sorted by origin after the key.
            origins: group.iter().map(|s| s.3).collect(),
        });
    }
    for family in Family::BOTH {
        let id = set_id(family, SetKind::Networks, SetPurpose::Allow);
        sets[id.0].elements = disjoint_elements(ranged.iter().filter(|c| c.family() == family));
    }
    for set in &mut sets {
        set.elements
            .sort_unstable_by_key(|e| (e.net.addr(), e.net.prefix_len(), e.protocol, e.ports));
    }

    let entries = policy
        .allow
        .iter()
        .map(|e| EntryInfo {
            pos: e.pos,
            label: e.label.clone(),
        })
        .collect();

    let mut ruleset = Ruleset {
        policy_name: policy.name.clone(),
        policy_sha256: policy.source_hash.clone(),
        resolved_at: resolution.resolved_at.clone(),
        default: policy.default,
        sets,
        output: Vec::new(),
        deny: Vec::new(),
        entries,
        dns_pos: policy.dns.pos,
        default_pos: policy.default_pos,
        log_pos: policy.log.pos,
    };
    ruleset.output = output_rules(policy, &ruleset);
    ruleset.deny = deny_rules(policy);
    Ok(ruleset)
}

/// The output chain, in the order of the security spec (see the module docs of
/// [`crate::ir`]). The order is the point: changing it changes what is enforced.
fn output_rules(policy: &Policy, ruleset: &Ruleset) -> Vec<Rule> {
    let builtin = |matches, action, comment: &str| Rule {
        matches,
        action,
        origin: Origin::Builtin,
        comment: comment.to_string(),
    };
    let mut rules = vec![
        builtin(
            Match::EstablishedRelated,
            Action::Accept,
            "established and related flows",
        ),
        builtin(Match::Loopback, Action::Accept, "loopback"),
        builtin(Match::Invalid, Action::Drop, "conntrack state invalid"),
        builtin(
            Match::NeighbourDiscovery,
            Action::Accept,
            "IPv6 neighbour discovery",
        ),
    ];
    // Comments name where the resolvers were written, or say that none were.
    let dns_origin = if policy.dns.resolvers.is_empty() {
        "no resolvers pinned".to_string()
    } else {
        format!("dns.resolvers line {}", policy.dns.pos.line)
    };
    for family in Family::BOTH {
        let set = set_id(family, SetKind::Addresses, SetPurpose::Resolvers);
        rules.push(match &policy.dns.proxy {
            None => Rule {
                matches: Match::InSet(set),
                action: Action::Accept,
                origin: Origin::Resolvers,
                comment: format!("{dns_origin}: DNS to the pinned resolvers"),
            },
            // Workloads ask the proxy (over loopback, accepted above); only the
            // proxy's marked sockets may ask the pinned resolvers.
            Some(proxy) => Rule {
                matches: Match::MarkedInSet {
                    set,
                    mark: proxy.mark,
                },
                action: Action::Accept,
                origin: Origin::Resolvers,
                comment: format!(
                    "{dns_origin}: only the DNS proxy (dns.proxy line {}) asks the pinned resolvers",
                    proxy.pos.line
                ),
            },
        });
    }
    let mut dns_ports: Vec<u16> = DNS_PORTS.to_vec();
    dns_ports.push(policy.dns.port);
    dns_ports.sort_unstable();
    dns_ports.dedup();
    rules.push(Rule {
        matches: Match::DnsPorts(dns_ports),
        action: Action::GotoDeny,
        origin: Origin::Resolvers,
        comment: format!("{dns_origin}: DNS to any other server is denied"),
    });
    for (i, set) in ruleset.sets.iter().enumerate() {
        if set.purpose == SetPurpose::Allow {
            let comment = match set.kind {
                SetKind::Learned => format!(
                    "allow list: addresses the DNS proxy answered, {}",
                    set.name.trim_start_matches("proxy_")
                ),
                _ => format!("allow list: {}", set.name.replace('_', " ")),
            };
            rules.push(Rule {
                matches: Match::InSet(SetId(i)),
                action: Action::Accept,
                origin: Origin::Builtin,
                comment,
            });
        }
    }
    rules.push(Rule {
        matches: Match::Any,
        action: Action::GotoDeny,
        origin: Origin::Default,
        comment: "everything else".to_string(),
    });
    rules
}

/// The deny chain: log (if asked), then the default verdict.
fn deny_rules(policy: &Policy) -> Vec<Rule> {
    let mut rules = Vec::new();
    let log = &policy.log;
    if log.prefix.is_some() || log.group.is_some() || log.rate.is_some() {
        rules.push(Rule {
            matches: Match::Any,
            action: Action::Log(LogSpec {
                prefix: log.prefix.clone(),
                group: log.group,
                rate: log.rate.map(|r| (r.count, r.unit)),
            }),
            origin: Origin::Log,
            comment: format!("log line {}", log.pos.line),
        });
    }
    let (action, word) = match policy.default {
        DefaultAction::Deny => (Action::Drop, "deny"),
        DefaultAction::Audit => (Action::Accept, "audit, accept what deny would drop"),
    };
    rules.push(Rule {
        matches: Match::Any,
        action,
        origin: Origin::Default,
        comment: format!("default {word}"),
    });
    rules
}

/// An aggregated network and the origins of the candidates inside it.
type NetOrigins = (IpNet, Vec<Origin>);

/// One network × port range × protocol before normalization.
struct Candidate {
    net: IpNet,
    protocol: Protocol,
    ports: PortRange,
    origin: Origin,
}

impl Candidate {
    fn family(&self) -> Family {
        Family::of(self.net.addr())
    }
}

/// Turns overlapping (network, port range) candidates of one family into
/// non-overlapping elements covering exactly the same packets.
///
/// Per protocol, the port axis is cut at every range boundary into elementary
/// segments; within a segment the networks of all candidates covering it are
/// aggregated (so they no longer overlap); neighbouring segments with the same
/// networks are merged back together. Elements of different segments cannot
/// overlap, and within a segment aggregated networks cannot either.
fn disjoint_elements<'a>(candidates: impl Iterator<Item = &'a Candidate>) -> Vec<Element> {
    let mut by_protocol: BTreeMap<Protocol, Vec<&Candidate>> = BTreeMap::new();
    for c in candidates {
        by_protocol.entry(c.protocol).or_default().push(c);
    }
    let mut out = Vec::new();
    for (protocol, cands) in by_protocol {
        let mut cuts: BTreeSet<u32> = BTreeSet::new();
        for c in &cands {
            cuts.insert(u32::from(c.ports.first));
            cuts.insert(u32::from(c.ports.last) + 1);
        }
        let cuts: Vec<u32> = cuts.into_iter().collect();
        // (segment, aggregated networks with their origins)
        let mut segments: Vec<(PortRange, Vec<NetOrigins>)> = Vec::new();
        for w in cuts.windows(2) {
            let seg = PortRange {
                first: w[0] as u16,
                last: (w[1] - 1) as u16,
            };
            let covering: Vec<&&Candidate> = cands
                .iter()
                .filter(|c| c.ports.first <= seg.first && seg.last <= c.ports.last)
                .collect();
            if covering.is_empty() {
                continue;
            }
            let nets: Vec<IpNet> = covering.iter().map(|c| c.net).collect();
            let aggregated: Vec<NetOrigins> = IpNet::aggregate(&nets)
                .into_iter()
                .map(|agg| {
                    let origins: BTreeSet<Origin> = covering
                        .iter()
                        .filter(|c| agg.contains(&c.net))
                        .map(|c| c.origin)
                        .collect();
                    (agg, origins.into_iter().collect())
                })
                .collect();
            match segments.last_mut() {
                Some((prev, prev_nets))
                    if u32::from(prev.last) + 1 == u32::from(seg.first)
                        && prev_nets
                            .iter()
                            .map(|n| n.0)
                            .eq(aggregated.iter().map(|n| n.0)) =>
                {
                    prev.last = seg.last;
                    for ((_, prev_origins), (_, origins)) in prev_nets.iter_mut().zip(aggregated) {
                        let merged: BTreeSet<Origin> =
                            prev_origins.iter().copied().chain(origins).collect();
                        *prev_origins = merged.into_iter().collect();
                    }
                }
                _ => segments.push((seg, aggregated)),
            }
        }
        for (ports, nets) in segments {
            for (net, origins) in nets {
                out.push(Element {
                    net,
                    protocol,
                    ports,
                    origins,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(net: &str, first: u16, last: u16, entry: usize) -> Candidate {
        Candidate {
            net: net.parse().unwrap(),
            protocol: Protocol::Tcp,
            ports: PortRange { first, last },
            origin: Origin::Entry(entry),
        }
    }

    fn overlaps(a: &Element, b: &Element) -> bool {
        a.protocol == b.protocol
            && a.ports.first <= b.ports.last
            && b.ports.first <= a.ports.last
            && (a.net.contains(&b.net) || b.net.contains(&a.net))
    }

    #[test]
    fn overlapping_ranges_become_disjoint_and_cover_the_same_packets() {
        let cands = [
            cand("10.0.0.0/8", 1, 100, 0),
            cand("10.0.0.0/8", 50, 200, 1),
            cand("10.1.0.0/16", 150, 300, 2),
            cand("192.0.2.0/24", 443, 443, 3),
            cand("192.0.2.0/25", 443, 443, 4),
        ];
        let elements = disjoint_elements(cands.iter());
        for (i, a) in elements.iter().enumerate() {
            for b in &elements[i + 1..] {
                assert!(!overlaps(a, b), "{a:?} overlaps {b:?}");
            }
        }
        // Same coverage: probe addresses × ports.
        let probes: [IpAddr; 4] = [
            "10.0.0.1".parse().unwrap(),
            "10.1.2.3".parse().unwrap(),
            "192.0.2.200".parse().unwrap(),
            "11.0.0.1".parse().unwrap(),
        ];
        for addr in probes {
            for port in [1, 49, 50, 100, 101, 149, 150, 200, 201, 300, 301, 443, 444] {
                let want = cands
                    .iter()
                    .any(|c| c.net.contains(&addr) && c.ports.contains(port));
                let got = elements
                    .iter()
                    .any(|e| e.contains(addr, Protocol::Tcp, port));
                assert_eq!(want, got, "{addr} port {port}");
            }
        }
        // 10/8 over 1-200 is one element: the segments [1,49] … [150,200] were
        // merged because they hold the same networks (10.1/16 aggregates into 10/8).
        assert!(
            elements
                .iter()
                .any(|e| e.net == "10.0.0.0/8".parse::<IpNet>().unwrap()
                    && e.ports
                        == PortRange {
                            first: 1,
                            last: 200
                        })
        );
    }
}
