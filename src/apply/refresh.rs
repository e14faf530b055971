//! `egressc refresh`: follow the DNS answers of an applied policy by changing
//! set elements only.
//!
//! The applied ruleset is rebuilt from the record (lowering is deterministic);
//! the fresh answers, widened by the grace period, are lowered with the same
//! policy; the two rulesets must have the same rules, and only the elements
//! that differ are deleted and added, in one netlink batch
//! ([`netlink::update_elements`]). Rules, their counters and established
//! connections stay as they are.
//!
//! # Grace
//!
//! The record keeps, per host and address, when an answer last held it
//! ([`state::Seen`]). After a refresh a host's addresses are the fresh answer
//! plus every earlier address whose `last_seen + max(ttl, grace)` is still in
//! the future, so clients that cached an older answer keep working for as long
//! as they may use it. An address in the fresh answer is seen now.
//!
//! # Failing closed
//!
//! A required host that does not resolve stops the refresh before the kernel is
//! touched (the caller's resolution fails), so the addresses already in the sets
//! stay. An optional host that does not resolve keeps the addresses still in
//! grace; when none is left its entry is left out, as `apply` would.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::ApplyError;
use super::state::{Applied, Seen, SeenMap, seen_now};
use crate::backend::netlink::{self, ElementUpdate};
use crate::ir::Ruleset;
use crate::policy::Policy;
use crate::policy::model::HostName;
use crate::resolve::{Resolution, ResolvedAddr};

/// The grace period when none is given: 5 minutes.
pub const DEFAULT_GRACE: u64 = 300;

/// How one host's addresses changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostChange {
    pub host: HostName,
    /// In the effective list now, not before.
    pub added: Vec<IpAddr>,
    /// In the effective list before, not now (grace over).
    pub removed: Vec<IpAddr>,
    /// Not in the fresh answer but kept for grace, with the unix second the
    /// grace ends.
    pub in_grace: Vec<(IpAddr, u64)>,
}

/// The addresses to enforce after a refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// The fresh answers widened by the addresses still in grace.
    pub resolution: Resolution,
    /// When each effective address was last seen (expired ones dropped).
    pub seen: SeenMap,
    /// Hosts whose effective list changed or that hold addresses in grace.
    pub changes: Vec<HostChange>,
}

/// Unix seconds of an RFC 3339 time, if it parses.
fn unix_seconds(rfc3339: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(rfc3339).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// When the record last saw each address of `host`. A record written before
/// `seen` existed saw its addresses when its resolution was made.
fn previously_seen(previous: &Applied, host: &HostName) -> BTreeMap<IpAddr, Seen> {
    if let Some(seen) = previous.seen.get(host) {
        return seen.clone();
    }
    let at = unix_seconds(&previous.resolution.resolved_at).unwrap_or(0);
    previous
        .resolution
        .addresses(host)
        .unwrap_or_default()
        .iter()
        .map(|a| {
            (
                a.addr,
                Seen {
                    last_seen: at,
                    ttl: a.ttl,
                },
            )
        })
        .collect()
}

/// Merges the fresh answers with what `previous` saw: each host's effective
/// addresses are the fresh answer plus every earlier address whose
/// `last_seen + max(ttl, grace)` is after `now`.
pub fn effective(previous: &Applied, fresh: &Resolution, now: u64, grace: u64) -> Effective {
    let mut resolution = fresh.clone();
    let mut seen = SeenMap::new();
    let mut changes = Vec::new();
    for (host, answer) in resolution.hosts.iter_mut() {
        let mut addrs: BTreeMap<IpAddr, Seen> = seen_now(answer, now);
        let mut in_grace = Vec::new();
        for (addr, s) in previously_seen(previous, host) {
            if addrs.contains_key(&addr) {
                continue;
            }
            let until = s.last_seen.saturating_add(u64::from(s.ttl).max(grace));
            if until > now {
                addrs.insert(addr, s);
                in_grace.push((addr, until));
            }
        }
        // Sorted by address, IPv4 first (IpAddr's order), as the resolver sorts.
        answer.addresses = addrs
            .iter()
            .map(|(addr, s)| ResolvedAddr {
                addr: *addr,
                ttl: s.ttl,
            })
            .collect();
        if !answer.addresses.is_empty() {
            answer.unresolved = None;
        }
        let before: Vec<IpAddr> = previous
            .resolution
            .addresses(host)
            .unwrap_or_default()
            .iter()
            .map(|a| a.addr)
            .collect();
        let added: Vec<IpAddr> = addrs
            .keys()
            .filter(|a| !before.contains(a))
            .copied()
            .collect();
        let removed: Vec<IpAddr> = before
            .iter()
            .filter(|a| !addrs.contains_key(a))
            .copied()
            .collect();
        if !added.is_empty() || !removed.is_empty() || !in_grace.is_empty() {
            changes.push(HostChange {
                host: host.clone(),
                added,
                removed,
                in_grace,
            });
        }
        if !addrs.is_empty() {
            seen.insert(host.clone(), addrs);
        }
    }
    Effective {
        resolution,
        seen,
        changes,
    }
}

/// What [`refresh`] did.
#[derive(Debug)]
pub struct Refreshed {
    /// The record to write: the effective resolution and the updated `seen`.
    pub record: Applied,
    pub changes: Vec<HostChange>,
    /// What went to the kernel (nothing, if no element changed).
    pub update: ElementUpdate,
    pub ruleset: Ruleset,
}

/// Updates the kernel's set elements from `previous` (the record of what is
/// applied, for `policy`) to the fresh answers widened by the grace period.
/// Writes nothing: the caller records [`Refreshed::record`] once this
/// succeeded.
pub fn refresh(
    previous: &Applied,
    policy: &Policy,
    fresh: &Resolution,
    now: u64,
    grace: u64,
) -> Result<Refreshed, ApplyError> {
    if previous.policy_sha256 != policy.source_hash {
        return Err(ApplyError::State(
            "the applied policy is not this policy; apply this policy first".into(),
        ));
    }
    let old = previous.ruleset()?;
    let eff = effective(previous, fresh, now, grace);
    let new = crate::ir::lower::lower(policy, &eff.resolution)
        .map_err(|e| ApplyError::State(format!("cannot compile the refreshed addresses: {e}")))?;
    netlink::same_but_elements(&old, &new).map_err(|why| {
        ApplyError::State(format!(
            "refreshing would change more than set elements ({why}); run `egressc apply`"
        ))
    })?;
    let update = netlink::update_elements(&old, &new).map_err(|e| match e {
        // The batch was committed (or may have been) but the kernel does not
        // hold what it should: the record no longer describes the kernel.
        netlink::NetlinkError::ReadBack(_) | netlink::NetlinkError::Unacknowledged { .. } => {
            ApplyError::State(format!(
                "{e}; the record still describes the previous addresses: run `egressc apply {}` to reload the whole table",
                previous.policy_path
            ))
        }
        e => ApplyError::from(e),
    })?;
    let mut record = previous.clone();
    record.resolution = eff.resolution;
    record.seen = eff.seen;
    Ok(Refreshed {
        record,
        changes: eff.changes,
        update,
        ruleset: new,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::Backend;
    use crate::resolve::HostAnswer;

    fn host(name: &str) -> HostName {
        HostName::parse(name).unwrap()
    }

    fn resolution(addrs: &[(&str, u32)]) -> Resolution {
        let mut hosts = BTreeMap::new();
        hosts.insert(
            host("a.test"),
            HostAnswer {
                addresses: addrs
                    .iter()
                    .map(|(a, ttl)| ResolvedAddr {
                        addr: a.parse().unwrap(),
                        ttl: *ttl,
                    })
                    .collect(),
                ..HostAnswer::default()
            },
        );
        Resolution {
            lock_format: 1,
            policy_sha256: "x".into(),
            resolved_at: "2026-01-01T00:00:00Z".into(),
            resolvers: vec![],
            port: 53,
            hosts,
        }
    }

    fn record(res: Resolution, seen: SeenMap) -> Applied {
        Applied {
            policy_path: "p".into(),
            policy_sha256: "x".into(),
            applied_at: "2026-01-01T00:00:00Z".into(),
            backend: Backend::Netlink,
            resolution: res,
            policy_text: String::new(),
            seen,
        }
    }

    fn addrs(e: &Effective) -> Vec<String> {
        e.resolution.hosts[&host("a.test")]
            .addresses
            .iter()
            .map(|a| a.addr.to_string())
            .collect()
    }

    #[test]
    fn a_vanished_address_stays_for_the_larger_of_ttl_and_grace() {
        let old = resolution(&[("10.0.0.2", 1)]);
        let prev = record(old.clone(), crate::apply::state::seen_from(&old, 1000));
        let fresh = resolution(&[("10.0.0.3", 1)]);
        // grace 300: 10.0.0.2 stays until 1300.
        let e = effective(&prev, &fresh, 1299, 300);
        assert_eq!(addrs(&e), ["10.0.0.2", "10.0.0.3"]);
        assert_eq!(e.changes[0].added, ["10.0.0.3".parse::<IpAddr>().unwrap()]);
        assert!(e.changes[0].removed.is_empty());
        assert_eq!(e.seen[&host("a.test")].len(), 2);
        let e = effective(&prev, &fresh, 1300, 300);
        assert_eq!(addrs(&e), ["10.0.0.3"]);
        assert_eq!(
            e.changes[0].removed,
            ["10.0.0.2".parse::<IpAddr>().unwrap()]
        );
        // A TTL longer than the grace wins.
        let old = resolution(&[("10.0.0.2", 600)]);
        let prev = record(old.clone(), crate::apply::state::seen_from(&old, 1000));
        assert_eq!(
            addrs(&effective(&prev, &fresh, 1599, 300)),
            ["10.0.0.2", "10.0.0.3"]
        );
        assert_eq!(addrs(&effective(&prev, &fresh, 1600, 300)), ["10.0.0.3"]);
    }

    #[test]
    fn an_address_answered_again_is_seen_now() {
        let old = resolution(&[("10.0.0.2", 1)]);
        let prev = record(old.clone(), crate::apply::state::seen_from(&old, 1000));
        let e = effective(&prev, &old, 5000, 3);
        assert!(e.changes.is_empty());
        assert_eq!(
            e.seen[&host("a.test")].values().next().unwrap().last_seen,
            5000
        );
    }

    #[test]
    fn a_record_without_seen_dates_its_addresses_by_the_resolution() {
        let old = resolution(&[("10.0.0.2", 1)]);
        let prev = record(old, SeenMap::new());
        let fresh = resolution(&[("10.0.0.3", 1)]);
        let at = unix_seconds("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(
            addrs(&effective(&prev, &fresh, at + 10, 300)),
            ["10.0.0.2", "10.0.0.3"]
        );
        assert_eq!(
            addrs(&effective(&prev, &fresh, at + 300, 300)),
            ["10.0.0.3"]
        );
    }

    #[test]
    fn an_unresolved_optional_host_keeps_its_addresses_in_grace() {
        let old = resolution(&[("10.0.0.2", 1)]);
        let prev = record(old.clone(), crate::apply::state::seen_from(&old, 1000));
        let mut fresh = resolution(&[]);
        fresh.hosts.insert(
            host("a.test"),
            HostAnswer {
                unresolved: Some("no such name (NXDOMAIN)".into()),
                ..HostAnswer::default()
            },
        );
        let e = effective(&prev, &fresh, 1100, 300);
        assert_eq!(addrs(&e), ["10.0.0.2"]);
        assert_eq!(e.resolution.hosts[&host("a.test")].unresolved, None);
        let e = effective(&prev, &fresh, 1300, 300);
        assert!(addrs(&e).is_empty());
        assert!(e.resolution.hosts[&host("a.test")].unresolved.is_some());
    }
}
