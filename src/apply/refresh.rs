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
//!
//! `egressc watch` goes further ([`Lowering::AllowEmpty`]): a required host
//! whose lookups keep failing is passed in as unresolved too, keeps its
//! addresses through their grace like an optional one, and then allows
//! nothing, while the rest of the policy keeps being enforced.
//!
//! # Partial rounds
//!
//! The fresh resolution need not hold every host: `watch` asks each host at its
//! own TTL. A host absent from it was not asked this time and keeps its latest
//! answer (the addresses seen most recently, which all carry the same
//! `last_seen`) with their seen times unchanged; only its addresses that had
//! already left the answers can run out of grace.

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
///
/// A host of `previous` that `fresh` does not hold was not asked this time: its
/// latest answer stays as it was (same seen times), and its older addresses
/// stay while in grace. A host in `fresh` without addresses (`unresolved`) did
/// not resolve: it keeps only what is in grace.
pub fn effective(previous: &Applied, fresh: &Resolution, now: u64, grace: u64) -> Effective {
    let mut resolution = fresh.clone();
    let mut seen = SeenMap::new();
    let mut changes = Vec::new();
    for (host, answer) in &previous.resolution.hosts {
        if !resolution.hosts.contains_key(host) {
            resolution.hosts.insert(host.clone(), answer.clone());
        }
    }
    for (host, answer) in resolution.hosts.iter_mut() {
        let earlier = previously_seen(previous, host);
        let mut addrs: BTreeMap<IpAddr, Seen> = if fresh.hosts.contains_key(host) {
            seen_now(answer, now)
        } else {
            latest_answer(&earlier)
        };
        let mut in_grace = Vec::new();
        for (addr, s) in earlier {
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

/// The addresses of a host's latest answer: those seen most recently. An
/// answer marks all its addresses seen at the same second, and every earlier
/// address was seen before it (two answers within one second both count).
fn latest_answer(seen: &BTreeMap<IpAddr, Seen>) -> BTreeMap<IpAddr, Seen> {
    let Some(latest) = seen.values().map(|s| s.last_seen).max() else {
        return BTreeMap::new();
    };
    seen.iter()
        .filter(|(_, s)| s.last_seen == latest)
        .map(|(a, s)| (*a, *s))
        .collect()
}

/// The earliest end of grace among `changes`: when the next address held
/// only for grace must go.
pub fn next_grace_end(changes: &[HostChange]) -> Option<u64> {
    changes
        .iter()
        .flat_map(|c| c.in_grace.iter().map(|(_, until)| *until))
        .min()
}

/// How the refreshed addresses are compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lowering {
    /// As `apply`: a required host without addresses is an error (the fresh
    /// resolution already failed for it, so this cannot happen from the CLI).
    Strict,
    /// A required host without addresses allows nothing (`watch`, when its
    /// lookups keep failing past the grace of its known addresses).
    AllowEmpty,
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
    check_policy(previous, policy)?;
    let old = previous.ruleset()?;
    update(previous, &old, policy, fresh, now, grace, Lowering::Strict)
}

fn check_policy(previous: &Applied, policy: &Policy) -> Result<(), ApplyError> {
    if previous.policy_sha256 != policy.source_hash {
        return Err(ApplyError::State(
            "the applied policy is not this policy; apply this policy first".into(),
        ));
    }
    Ok(())
}

/// [`refresh`] for a caller that keeps the applied ruleset at hand (`old`,
/// what `previous` describes and the kernel holds), so a daemon refreshing
/// every few seconds does not rebuild it from the record each time. `fresh`
/// may hold only some hosts (see [`effective`]).
pub fn update(
    previous: &Applied,
    old: &Ruleset,
    policy: &Policy,
    fresh: &Resolution,
    now: u64,
    grace: u64,
    lowering: Lowering,
) -> Result<Refreshed, ApplyError> {
    check_policy(previous, policy)?;
    let eff = effective(previous, fresh, now, grace);
    let new = lower(policy, &eff.resolution, lowering)?;
    netlink::same_but_elements(old, &new).map_err(|why| {
        ApplyError::State(format!(
            "refreshing would change more than set elements ({why}); run `egressc apply`"
        ))
    })?;
    let update = netlink::update_elements(old, &new).map_err(|e| match e {
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

/// Compiles refreshed addresses.
pub fn lower(
    policy: &Policy,
    resolution: &Resolution,
    lowering: Lowering,
) -> Result<Ruleset, ApplyError> {
    match lowering {
        Lowering::Strict => crate::ir::lower::lower(policy, resolution),
        Lowering::AllowEmpty => crate::ir::lower::lower_allowing_empty(policy, resolution),
    }
    .map_err(|e| ApplyError::State(format!("cannot compile the refreshed addresses: {e}")))
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
        hosts.insert(host("a.test"), answer(addrs));
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

    fn answer(addrs: &[(&str, u32)]) -> HostAnswer {
        HostAnswer {
            addresses: addrs
                .iter()
                .map(|(a, ttl)| ResolvedAddr {
                    addr: a.parse().unwrap(),
                    ttl: *ttl,
                })
                .collect(),
            ..HostAnswer::default()
        }
    }

    /// a.test and b.test, as a round of `watch` may see them.
    fn two_hosts(a: &[(&str, u32)], b: &[(&str, u32)]) -> Resolution {
        let mut res = resolution(a);
        res.hosts.insert(host("b.test"), answer(b));
        res
    }

    fn addrs_of(e: &Effective, name: &str) -> Vec<String> {
        e.resolution.hosts[&host(name)]
            .addresses
            .iter()
            .map(|a| a.addr.to_string())
            .collect()
    }

    #[test]
    fn a_host_not_asked_keeps_its_answer_and_seen_times() {
        let old = two_hosts(&[("10.0.0.2", 1)], &[("10.0.1.2", 1)]);
        let prev = record(old.clone(), crate::apply::state::seen_from(&old, 1000));
        // Only a.test is asked, long after b.test's TTL and any grace: b.test's
        // answer still stands, because nobody asked again.
        let fresh = resolution(&[("10.0.0.3", 1)]);
        let e = effective(&prev, &fresh, 5000, 3);
        assert_eq!(addrs_of(&e, "b.test"), ["10.0.1.2"]);
        assert_eq!(
            e.seen[&host("b.test")][&"10.0.1.2".parse::<IpAddr>().unwrap()].last_seen,
            1000,
            "b.test was not seen again"
        );
        assert!(e.changes.iter().all(|c| c.host == host("a.test")));
        assert_eq!(addrs_of(&e, "a.test"), ["10.0.0.3"]);
        assert_eq!(e.resolution.resolved_at, fresh.resolved_at);
    }

    #[test]
    fn a_host_not_asked_still_loses_old_addresses_at_the_end_of_their_grace() {
        // b.test moved from .2 to .3 at 1000; .2 was last seen at 900.
        let res = two_hosts(&[("10.0.0.2", 1)], &[("10.0.1.2", 1), ("10.0.1.3", 1)]);
        let mut seen = crate::apply::state::seen_from(&res, 1000);
        seen.get_mut(&host("b.test"))
            .unwrap()
            .get_mut(&"10.0.1.2".parse::<IpAddr>().unwrap())
            .unwrap()
            .last_seen = 900;
        let prev = record(res, seen);
        let only_a = resolution(&[("10.0.0.2", 1)]);
        let e = effective(&prev, &only_a, 902, 3);
        assert_eq!(addrs_of(&e, "b.test"), ["10.0.1.2", "10.0.1.3"]);
        let b = e.changes.iter().find(|c| c.host == host("b.test")).unwrap();
        assert_eq!(b.in_grace, [("10.0.1.2".parse().unwrap(), 903)]);
        assert_eq!(next_grace_end(&e.changes), Some(903));
        let e = effective(&prev, &only_a, 903, 3);
        assert_eq!(addrs_of(&e, "b.test"), ["10.0.1.3"]);
        let b = e.changes.iter().find(|c| c.host == host("b.test")).unwrap();
        assert_eq!(b.removed, ["10.0.1.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(next_grace_end(&e.changes), None);
        // Its latest answer keeps its seen time.
        assert_eq!(
            e.seen[&host("b.test")][&"10.0.1.3".parse::<IpAddr>().unwrap()].last_seen,
            1000
        );
    }

    #[test]
    fn an_empty_round_only_expires_grace() {
        let old = resolution(&[("10.0.0.2", 1)]);
        let prev = record(old.clone(), crate::apply::state::seen_from(&old, 1000));
        let fresh = resolution(&[("10.0.0.3", 1)]);
        let moved = effective(&prev, &fresh, 1001, 3);
        let prev = record(moved.resolution, moved.seen);
        let mut nobody = resolution(&[]);
        nobody.hosts.clear();
        // 10.0.0.2 was last seen at 1000: its grace of 3 s ends at 1003.
        let e = effective(&prev, &nobody, 1002, 3);
        assert_eq!(addrs(&e), ["10.0.0.2", "10.0.0.3"]);
        let e = effective(&prev, &nobody, 1003, 3);
        assert_eq!(addrs(&e), ["10.0.0.3"]);
    }

    #[test]
    fn a_failing_required_host_keeps_its_addresses_through_grace_then_allows_nothing() {
        use crate::policy::TargetFormat;
        let text = "version: 1\nname: t\ndefault: deny\ndns:\n  resolvers: [10.0.0.53]\nallow:\n  - host: a.test\n    ports: [443]\n";
        let loaded = crate::policy::load_bytes(text.as_bytes(), "p", TargetFormat::Nft).unwrap();
        let old = resolution(&[("10.0.0.2", 1)]);
        let prev = record(old.clone(), crate::apply::state::seen_from(&old, 1000));
        let mut failed = resolution(&[]);
        failed.hosts.get_mut(&host("a.test")).unwrap().unresolved =
            Some("the pinned resolvers did not answer in time".into());
        let e = effective(&prev, &failed, 1002, 3);
        assert_eq!(addrs(&e), ["10.0.0.2"]);
        let e = effective(&prev, &failed, 1003, 3);
        assert!(addrs(&e).is_empty());
        assert!(lower(&loaded.policy, &e.resolution, Lowering::Strict).is_err());
        let rules = lower(&loaded.policy, &e.resolution, Lowering::AllowEmpty).unwrap();
        let allowed: usize = rules
            .sets
            .iter()
            .filter(|s| s.purpose == crate::ir::SetPurpose::Allow)
            .map(|s| s.elements.len())
            .sum();
        assert_eq!(allowed, 0, "the required host allows nothing");
        // The record of that state can be rebuilt (diff, refresh, rollback).
        let mut rec = record(e.resolution, e.seen);
        rec.policy_text = text.into();
        assert_eq!(rec.ruleset().unwrap(), rules);
    }
}
