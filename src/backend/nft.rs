//! The nft backend: one script that replaces `table inet egressc` atomically.
//!
//! The script declares the table, deletes it and defines it again; `nft -f` runs
//! all of it as one transaction, so the old table stays until the new one is
//! complete, and no other table (Docker's, the distribution's) is touched.
//! Address lists are sets with concatenated keys (address . protocol . port), so
//! one lookup decides a packet whatever the number of destinations. Hash sets
//! declare a `size` ([`super::set_size`]), as the netlink batch does, so both
//! build the same table.

use minijinja::context;
use minijinja::value::Serde;
use serde::Serialize;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use minijinja::Value;

use super::template::CheckedTextBuilder;
use super::{BackendError, CommentCache, fit_comment, template};
use crate::ir::{Action, ChainId, Family, Match, Rule, Ruleset, Set, SetId, SetKind};
use crate::policy::model::DefaultAction;

const TEMPLATE: &str = include_str!("../../templates/nft.j2");

#[derive(Serialize)]
struct ChainView {
    name: String,
    hook: bool,
    policy: &'static str,
    rules: Vec<RuleView>,
}

#[derive(Serialize)]
struct RuleView {
    /// Match expressions and the counter (and rate limit), built from typed IR values.
    text: String,
    log: bool,
    /// Policy text (allowlisted); printed inside quotes by the template.
    log_prefix: Option<String>,
    log_group: Option<u16>,
    verdict: &'static str,
    comment: String,
}

/// Renders the nft script.
pub fn render(ruleset: &Ruleset) -> Result<String, BackendError> {
    let template_error = |source| BackendError::Template {
        format: "nft",
        source,
    };
    let env = template::environment(&[("nft", TEMPLATE)]);
    let mut comments = CommentCache::default();
    let sets = ruleset
        .sets
        .iter()
        .map(|s| set_value(ruleset, s, &mut comments))
        .collect::<Result<Vec<Value>, _>>()
        .map_err(template_error)?;
    let policy = match ruleset.default {
        DefaultAction::Deny => "drop",
        DefaultAction::Audit => "accept",
    };
    let chains = vec![
        ChainView {
            name: ChainId::Output.to_string(),
            hook: true,
            policy,
            rules: ruleset
                .output
                .iter()
                .map(|r| rule_view(ruleset, r))
                .collect(),
        },
        ChainView {
            name: ChainId::Deny.to_string(),
            hook: false,
            policy,
            rules: ruleset.deny.iter().map(|r| rule_view(ruleset, r)).collect(),
        },
    ];
    let out = env
        .get_template("nft")
        .and_then(|t| {
            t.render(context! {
                version => env!("CARGO_PKG_VERSION"),
                name => ruleset.policy_name.as_deref().unwrap_or("unnamed"),
                sha256 => &ruleset.policy_sha256,
                resolved_at => &ruleset.resolved_at,
                sets => sets,
                chains => Serde(&chains),
            })
        })
        .map_err(template_error)?;
    Ok(out)
}

/// One set for the template: its header fields and its elements as one
/// [`template::CheckedText`] block (one line per element).
fn set_value<'r>(
    ruleset: &Ruleset,
    set: &'r Set,
    comments: &mut CommentCache<'r>,
) -> Result<Value, minijinja::Error> {
    let key_type = match set.family {
        Family::V4 => "ipv4_addr . inet_proto . inet_service",
        Family::V6 => "ipv6_addr . inet_proto . inet_service",
    };
    let interval = set.kind == SetKind::Networks;
    let mut block = CheckedTextBuilder::with_capacity(set.elements.len() * 64);
    let mut key = String::with_capacity(64);
    for (i, e) in set.elements.iter().enumerate() {
        if i > 0 {
            block.newline(3);
        }
        key.clear();
        // Hash sets hold single addresses; interval sets take prefixes and ranges.
        match (interval, e.net.addr()) {
            // The common case of a large render, without the formatting machinery.
            (false, IpAddr::V4(a)) => push_ipv4(&mut key, a),
            (false, a) => write!(key, "{a}").expect("writing to a String cannot fail"),
            (true, _) => write!(key, "{}", e.net).expect("writing to a String cannot fail"),
        }
        write!(key, " . {} . {} comment ", e.protocol, e.ports)
            .expect("writing to a String cannot fail");
        block
            .bare(&key)?
            .quoted(comments.get(ruleset, &e.origins))?
            .bare(",")?;
    }
    Ok(context! {
        name => set.name,
        type => key_type,
        // Before the flags, where `nft list` prints it.
        size => super::set_size(set),
        interval => interval,
        timeout => set.kind == SetKind::Learned,
        has_elements => !set.elements.is_empty(),
        elements => block.finish(),
    })
}

/// Appends an IPv4 address in dotted decimal (what `Display` prints), a few
/// times faster than `write!` for the 100,000 addresses of a large set.
fn push_ipv4(out: &mut String, addr: Ipv4Addr) {
    for (i, octet) in addr.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
}

/// `ip daddr . meta l4proto . th dport @set `: one lookup decides the packet.
fn set_lookup(ruleset: &Ruleset, id: SetId) -> String {
    let set = ruleset.set(id);
    let daddr = match set.family {
        Family::V4 => "ip daddr",
        Family::V6 => "ip6 daddr",
    };
    format!("{daddr} . meta l4proto . th dport @{} ", set.name)
}

fn rule_view(ruleset: &Ruleset, rule: &Rule) -> RuleView {
    let mut text = match &rule.matches {
        Match::EstablishedRelated => "ct state established,related ".to_string(),
        Match::Loopback => "oif lo ".to_string(),
        Match::Invalid => "ct state invalid ".to_string(),
        Match::NeighbourDiscovery => {
            "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } "
                .to_string()
        }
        Match::InSet(id) => set_lookup(ruleset, *id),
        Match::MarkedInSet { set, mark } => {
            format!("meta mark {mark:#010x} {}", set_lookup(ruleset, *set))
        }
        Match::DnsPorts(ports) => {
            let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
            format!(
                "meta l4proto {{ tcp, udp }} th dport {{ {} }} ",
                ports.join(", ")
            )
        }
        Match::Any => String::new(),
    };
    text.push_str("counter");
    let (log, log_prefix, log_group, verdict) = match &rule.action {
        Action::Accept => (false, None, None, "accept"),
        Action::Drop => (false, None, None, "drop"),
        Action::GotoDeny => (false, None, None, "goto deny"),
        Action::Log(spec) => {
            if let Some((count, unit)) = spec.rate {
                text.push_str(&format!(" limit rate {count}/{}", unit.as_str()));
            }
            (true, spec.prefix.clone(), spec.group, "")
        }
    };
    RuleView {
        text,
        log,
        log_prefix,
        log_group,
        verdict,
        comment: fit_comment(&rule.comment),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ipv4_addresses_print_as_display_does() {
        for a in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.0.255",
            "99.100.101.9",
            "255.255.255.255",
        ] {
            let addr: std::net::Ipv4Addr = a.parse().unwrap();
            let mut s = String::new();
            super::push_ipv4(&mut s, addr);
            assert_eq!(s, addr.to_string());
        }
    }
}
