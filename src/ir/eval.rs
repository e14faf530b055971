//! Evaluating the ruleset for one new outgoing connection: the engine behind
//! `egressc explain`.
//!
//! It walks the same [`Ruleset`] the backends render, rule by rule, so what it
//! says is what the rendered firewall does (for a new connection from this host;
//! conntrack state and interfaces other than loopback are not modelled).

use std::net::IpAddr;

use super::{Action, ChainId, Match, Origin, Rule, Ruleset};
use crate::policy::model::Protocol;

/// A new outgoing connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub addr: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
}

/// What the ruleset does with a probe, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The rule that decided: the accepting or dropping rule, or — when the packet
    /// was sent to the deny chain — the rule that sent it there (the DNS pin or the
    /// final catch-all), which is what a user needs to know.
    pub chain: ChainId,
    pub rule_index: usize,
    /// The policy origins behind the decision: for a set lookup, the entries of
    /// the matching element; otherwise the rule's own origin.
    pub origins: Vec<Origin>,
    /// Whether a log rule saw the packet on the way.
    pub logged: bool,
    /// Whether the packet went through the deny chain: in audit mode an accepted
    /// packet with this set is one that `default: deny` would drop.
    pub via_deny: bool,
}

impl Decision {
    pub fn rule<'r>(&self, ruleset: &'r Ruleset) -> &'r Rule {
        &ruleset.chain(self.chain)[self.rule_index]
    }
}

/// Decides what happens to `probe`.
pub fn evaluate(ruleset: &Ruleset, probe: &Probe) -> Decision {
    let mut chain = ChainId::Output;
    let mut logged = false;
    let mut index = 0;
    // Set when a rule sent the packet to the deny chain: (index, origins).
    let mut sent_by: Option<(usize, Vec<Origin>)> = None;
    loop {
        let rules = ruleset.chain(chain);
        let Some(rule) = rules.get(index) else {
            // Falling off a chain: the lowering always ends both chains with a
            // catch-all, so this is only reached for a hand-built ruleset; the base
            // chain policy then applies, which is the default verdict.
            return Decision {
                verdict: default_verdict(ruleset),
                chain,
                rule_index: rules.len().saturating_sub(1),
                origins: vec![Origin::Default],
                logged,
                via_deny: chain == ChainId::Deny,
            };
        };
        if let Some(origins) = matches(ruleset, rule, probe) {
            match &rule.action {
                Action::Accept | Action::Drop => {
                    let verdict = if rule.action == Action::Accept {
                        Verdict::Accept
                    } else {
                        Verdict::Drop
                    };
                    let via_deny = sent_by.is_some();
                    let (chain, rule_index, origins) = match sent_by {
                        Some((i, o)) => (ChainId::Output, i, o),
                        None => (chain, index, origins),
                    };
                    return Decision {
                        verdict,
                        chain,
                        rule_index,
                        origins,
                        logged,
                        via_deny,
                    };
                }
                Action::GotoDeny => {
                    sent_by = Some((index, origins));
                    chain = ChainId::Deny;
                    index = 0;
                    continue;
                }
                Action::Log(_) => logged = true,
            }
        }
        index += 1;
    }
}

fn default_verdict(ruleset: &Ruleset) -> Verdict {
    match ruleset.default {
        crate::policy::model::DefaultAction::Deny => Verdict::Drop,
        crate::policy::model::DefaultAction::Audit => Verdict::Accept,
    }
}

/// `Some(origins)` if `rule` matches `probe`.
fn matches(ruleset: &Ruleset, rule: &Rule, probe: &Probe) -> Option<Vec<Origin>> {
    let hit = |yes: bool| yes.then(|| vec![rule.origin]);
    match &rule.matches {
        // A probe is a new connection: never established, related or invalid.
        Match::EstablishedRelated | Match::Invalid => None,
        // Only ICMPv6 matches neighbour discovery; probes are TCP or UDP.
        Match::NeighbourDiscovery => None,
        Match::Loopback => hit(probe.addr.is_loopback()),
        Match::DnsPorts(ports) => hit(ports.contains(&probe.port)),
        Match::Any => hit(true),
        // A probe is a workload's connection: it never carries the DNS proxy's mark.
        Match::MarkedInSet { .. } => None,
        Match::InSet(id) => ruleset
            .set(*id)
            .elements
            .iter()
            .find(|e| e.contains(probe.addr, probe.protocol, probe.port))
            .map(|e| e.origins.clone()),
    }
}
