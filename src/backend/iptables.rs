//! The iptables backend: iptables-restore (IPv4) and ip6tables-restore (IPv6) text.
//!
//! egressc's rules live in its own chains, `EGRESSC` and `EGRESSC-DENY`, in the
//! filter table. Loaded with `--noflush`, the restore flushes and refills only those
//! chains (declaring a user chain flushes it) in one commit; OUTPUT reaches them
//! through a single jump that the load command adds only when it is missing (see
//! the header of the rendered text). iptables has no sets in restore text, so each
//! set element becomes one rule; for large address lists prefer the nft output.
//!
//! Allowed traffic uses RETURN, not ACCEPT: ACCEPT would end the OUTPUT chain and
//! skip the rules other tools keep there after the jump. What egressc denies is
//! dropped; what it allows continues through the host's own rules.

use minijinja::context;
use minijinja::value::Serde;
use serde::Serialize;

use super::{BackendError, fit_comment, origins_comment, template};
use crate::ir::{Action, ChainId, Family, LogSpec, Match, Rule, Ruleset};

const TEMPLATE: &str = include_str!("../../templates/iptables.j2");

#[derive(Serialize)]
struct LineView {
    chain: &'static str,
    /// Match options, built from typed IR values; ends with a space when non-empty.
    text: String,
    comment: String,
    target: String,
    /// Policy text (allowlisted); printed inside quotes by the template.
    log_prefix: Option<String>,
    prefix_option: &'static str,
}

fn chain_name(chain: ChainId) -> &'static str {
    match chain {
        ChainId::Output => "EGRESSC",
        ChainId::Deny => "EGRESSC-DENY",
    }
}

/// Renders the restore text for one address family.
pub fn render(ruleset: &Ruleset, family: Family) -> Result<String, BackendError> {
    let (format, tool, restore, family_name) = match family {
        Family::V4 => ("iptables", "iptables", "iptables-restore", "IPv4"),
        Family::V6 => ("ip6tables", "ip6tables", "ip6tables-restore", "IPv6"),
    };
    let mut lines = Vec::new();
    for chain in [ChainId::Output, ChainId::Deny] {
        for rule in ruleset.chain(chain) {
            lines.extend(rule_lines(ruleset, rule, chain, family, format)?);
        }
    }
    let env = template::environment(&[("iptables", TEMPLATE)]);
    env.get_template("iptables")
        .and_then(|t| {
            t.render(context! {
                version => env!("CARGO_PKG_VERSION"),
                family => family_name,
                tool => tool,
                restore => restore,
                name => ruleset.policy_name.as_deref().unwrap_or("unnamed"),
                sha256 => &ruleset.policy_sha256,
                resolved_at => &ruleset.resolved_at,
                rules => Serde(&lines),
            })
        })
        .map_err(|source| BackendError::Template { format, source })
}

/// The lines for one IR rule in one family (none if the rule is for the other family).
fn rule_lines(
    ruleset: &Ruleset,
    rule: &Rule,
    chain: ChainId,
    family: Family,
    format: &'static str,
) -> Result<Vec<LineView>, BackendError> {
    let (target, log_prefix, prefix_option) = target(&rule.action, format)?;
    let line = |text: String, comment: String| LineView {
        chain: chain_name(chain),
        text,
        comment,
        target: target.clone(),
        log_prefix: log_prefix.clone(),
        prefix_option,
    };
    let comment = fit_comment(&rule.comment);
    let lines = match &rule.matches {
        Match::EstablishedRelated => {
            vec![line(
                "-m conntrack --ctstate ESTABLISHED,RELATED ".into(),
                comment,
            )]
        }
        Match::Loopback => vec![line("-o lo ".into(), comment)],
        Match::Invalid => vec![line("-m conntrack --ctstate INVALID ".into(), comment)],
        Match::NeighbourDiscovery => match family {
            Family::V4 => Vec::new(),
            Family::V6 => [
                "neighbour-solicitation",
                "neighbour-advertisement",
                "router-solicitation",
            ]
            .iter()
            .map(|t| {
                line(
                    format!("-p ipv6-icmp -m icmp6 --icmpv6-type {t} "),
                    comment.clone(),
                )
            })
            .collect(),
        },
        Match::DnsPorts(ports) => {
            let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
            ["tcp", "udp"]
                .iter()
                .map(|p| {
                    line(
                        format!("-p {p} -m multiport --dports {} ", ports.join(",")),
                        comment.clone(),
                    )
                })
                .collect()
        }
        // Proxy mode: iptables has no sets with per-element timeouts (the
        // validator refuses such a policy for iptables already).
        Match::MarkedInSet { .. } => {
            return Err(BackendError::Unsupported {
                format,
                what: "DNS proxy mode (packet marks and learned address sets)".into(),
            });
        }
        Match::InSet(id) => {
            let set = ruleset.set(*id);
            if set.kind == crate::ir::SetKind::Learned {
                return Err(BackendError::Unsupported {
                    format,
                    what: "DNS proxy mode (packet marks and learned address sets)".into(),
                });
            }
            if set.family != family {
                return Ok(Vec::new());
            }
            set.elements
                .iter()
                .map(|e| {
                    let ports = if e.ports.is_single() {
                        e.ports.first.to_string()
                    } else {
                        format!("{}:{}", e.ports.first, e.ports.last)
                    };
                    line(
                        format!(
                            "-d {} -p {p} -m {p} --dport {ports} ",
                            e.net,
                            p = e.protocol
                        ),
                        origins_comment(ruleset, &e.origins),
                    )
                })
                .collect()
        }
        Match::Any => vec![line(String::new(), comment)],
    };
    Ok(lines)
}

/// The `-j`/`-g` part of a line, and the log prefix with its option name.
fn target(
    action: &Action,
    format: &'static str,
) -> Result<(String, Option<String>, &'static str), BackendError> {
    Ok(match action {
        Action::Accept => ("-j RETURN".into(), None, ""),
        Action::Drop => ("-j DROP".into(), None, ""),
        Action::GotoDeny => (format!("-g {}", chain_name(ChainId::Deny)), None, ""),
        Action::Log(LogSpec {
            prefix,
            group,
            rate,
        }) => {
            let limit = match rate {
                Some((count, unit)) => format!("-m limit --limit {count}/{} ", unit.as_str()),
                None => String::new(),
            };
            let (jump, option, max) = match group {
                Some(g) => (
                    format!("{limit}-j NFLOG --nflog-group {g}"),
                    "--nflog-prefix",
                    crate::policy::validate::IPTABLES_NFLOG_PREFIX_MAX,
                ),
                None => (
                    format!("{limit}-j LOG"),
                    "--log-prefix",
                    crate::policy::validate::IPTABLES_LOG_PREFIX_MAX,
                ),
            };
            // The validator already refuses long prefixes for this format; this guards
            // a ruleset built without it (the kernel would truncate silently).
            if let Some(p) = prefix.as_ref().filter(|p| p.chars().count() > max) {
                return Err(BackendError::Unsupported {
                    format,
                    what: format!(
                        "a log prefix of {} characters ({option} allows {max})",
                        p.chars().count()
                    ),
                });
            }
            (jump, prefix.clone(), option)
        }
    })
}
