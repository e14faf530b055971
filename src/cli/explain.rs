//! `egressc explain`: would the policy allow this destination, and which entry decides?
//!
//! It evaluates the compiled ruleset (the same IR the backends render) for every
//! address of the destination. Exit 0 when every address is allowed, 1 when any is
//! denied, 2 when it cannot decide (invalid policy, DNS failure, bad target).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use egressc::ir::eval::{Probe, Verdict, evaluate};
use egressc::ir::lower;
use egressc::policy::TargetFormat;
use egressc::policy::model::{HostName, Protocol};
use egressc::policy::validate::parse_url;
use egressc::resolve::dns::{ResolveOptions, Transport, resolve_names};

use super::{EXIT_OPERATIONAL, Failure, SourceArgs, load_policy, resolution};

#[derive(clap::Args)]
pub struct Args {
    /// The policy file.
    policy: PathBuf,
    /// A URL (https://api.github.com), host[:port][/udp] or address:port[/udp]
    /// ([2001:db8::1]:443 for IPv6). Without a port: 443/tcp.
    target: String,
    #[command(flatten)]
    source: SourceArgs,
}

/// A destination to explain, before resolution.
#[derive(Debug, PartialEq, Eq)]
struct Destination {
    host: DestHost,
    port: u16,
    protocol: Protocol,
}

#[derive(Debug, PartialEq, Eq)]
enum DestHost {
    Name(HostName),
    Addr(IpAddr),
}

fn parse_target(text: &str) -> Result<Destination, String> {
    if text.contains("://") {
        let url = parse_url(text).map_err(|e| format!("{}; {}", e.message, e.help))?;
        let host = match url.host.parse::<IpAddr>() {
            Ok(ip) => DestHost::Addr(ip),
            Err(_) => DestHost::Name(HostName::parse(&url.host)?),
        };
        return Ok(Destination {
            host,
            port: url.port,
            protocol: url.protocol,
        });
    }
    let (rest, protocol) = match text.rsplit_once('/') {
        Some((rest, "udp")) => (rest, Protocol::Udp),
        Some((rest, "tcp")) => (rest, Protocol::Tcp),
        Some((_, other)) => return Err(format!("unknown protocol `{other}`; use /tcp or /udp")),
        None => (text, Protocol::Tcp),
    };
    // A bare IPv6 address has colons but no port.
    if let Ok(ip) = rest.parse::<IpAddr>() {
        return Ok(Destination {
            host: DestHost::Addr(ip),
            port: 443,
            protocol,
        });
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or("unclosed `[`: write [2001:db8::1]:443")?;
        (addr, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("`{p}` is not a port from 1 to 65535"))?,
        None => 443,
    };
    let host = match host.parse::<IpAddr>() {
        Ok(ip) => DestHost::Addr(ip),
        Err(_) => DestHost::Name(HostName::parse(host)?),
    };
    Ok(Destination {
        host,
        port,
        protocol,
    })
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let dest = parse_target(&args.target)
        .map_err(|e| Failure::operational(anyhow!("cannot read target `{}`: {e}", args.target)))?;
    let loaded = load_policy(&args.policy, TargetFormat::Nft).map_err(|mut f| {
        // explain's exit 1 means "denied"; a broken policy must not look like a decision.
        f.code = EXIT_OPERATIONAL;
        f
    })?;
    if loaded.policy.dns.proxy.is_some()
        && let DestHost::Name(name) = &dest.host
    {
        return Ok(explain_proxied(&loaded, name, &dest));
    }
    let resolution = resolution(&args.policy, &loaded, &args.source)?;
    let ruleset = lower::lower(&loaded.policy, &resolution).map_err(Failure::operational)?;

    let addrs: Vec<IpAddr> = match &dest.host {
        DestHost::Addr(ip) => vec![*ip],
        DestHost::Name(name) => match resolution.addresses(name) {
            Some(known) => known.iter().map(|a| a.addr).collect(),
            None if args.source.locked => {
                return Err(Failure::operational(anyhow!(
                    "`{name}` is not in the policy, so the lock file has no addresses for it; give an address, or drop --locked to resolve it through the pinned resolvers"
                )));
            }
            None => lookup(&loaded.policy, name, args.source.dns_tcp)?,
        },
    };
    if addrs.is_empty() {
        return Err(Failure::operational(anyhow!(
            "no addresses for {}",
            args.target
        )));
    }

    let shown_host = match &dest.host {
        DestHost::Name(n) => n.to_string(),
        DestHost::Addr(ip) => ip.to_string(),
    };
    let mut all_allowed = true;
    let mut lines = Vec::new();
    for addr in addrs {
        let probe = Probe {
            addr,
            protocol: dest.protocol,
            port: dest.port,
        };
        let decision = evaluate(&ruleset, &probe);
        let allowed = decision.verdict == Verdict::Accept;
        all_allowed &= allowed;
        let rule = decision.rule(&ruleset);
        let because: Vec<String> = decision
            .origins
            .iter()
            .map(|o| {
                let at = ruleset
                    .origin_pos(*o)
                    .map(|p| format!(" ({}:{})", loaded.file, p))
                    .unwrap_or_default();
                format!("{}{at}", ruleset.origin_label(*o))
            })
            .collect();
        let audit_note = if allowed && decision.via_deny {
            if decision.logged {
                " [audit: logged, would be denied]"
            } else {
                " [audit: not logged, would be denied]"
            }
        } else {
            ""
        };
        lines.push(format!(
            "  {addr:<39} {:<5}  {}  [{} rule {}: {}]{audit_note}",
            if allowed { "allow" } else { "deny" },
            because.join(", "),
            decision.chain,
            decision.rule_index + 1,
            rule.comment,
        ));
    }
    println!(
        "{} {}:{}/{}",
        if all_allowed { "allow" } else { "deny" },
        shown_host,
        dest.port,
        dest.protocol
    );
    for line in lines {
        println!("{line}");
    }
    Ok(if all_allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// In proxy mode a name is decided by the proxy: it resolves only names the
/// allow list names (exactly or under a wildcard), and what it answers is
/// allowed on those entries' ports for TTL + grace. No address is known
/// before it answers, so the decision is about the name.
fn explain_proxied(
    loaded: &egressc::policy::Loaded,
    name: &HostName,
    dest: &Destination,
) -> ExitCode {
    let entries: Vec<&egressc::policy::model::AllowEntry> =
        loaded.policy.entries_for_name(name.as_str()).collect();
    let covering: Vec<String> = entries
        .iter()
        .filter(|e| e.protocol == dest.protocol && e.ports.iter().any(|p| p.contains(dest.port)))
        .map(|e| format!("allow[{}] {} ({}:{})", e.index, e.label, loaded.file, e.pos))
        .collect();
    let shown = format!("{name}:{}/{}", dest.port, dest.protocol);
    if !covering.is_empty() {
        println!("allow {shown}");
        println!(
            "  addresses the DNS proxy answers  allow  {}  [learned for TTL + grace]",
            covering.join(", ")
        );
        return ExitCode::SUCCESS;
    }
    println!("deny {shown}");
    if entries.is_empty() {
        println!(
            "  the DNS proxy refuses this name: no allow entry names it, so nothing resolves it"
        );
    } else {
        let named: Vec<String> = entries
            .iter()
            .map(|e| format!("allow[{}] {}", e.index, e.label))
            .collect();
        println!(
            "  the name resolves ({}), but no entry for it allows port {}/{}",
            named.join(", "),
            dest.port,
            dest.protocol
        );
    }
    ExitCode::from(1)
}

/// Resolves a name that is not in the policy, through the policy's pinned resolvers.
fn lookup(
    policy: &egressc::policy::Policy,
    name: &HostName,
    tcp: bool,
) -> Result<Vec<IpAddr>, Failure> {
    let servers: Vec<std::net::SocketAddr> = policy
        .dns
        .resolvers
        .iter()
        .map(|ip| std::net::SocketAddr::new(*ip, policy.dns.port))
        .collect();
    if servers.is_empty() {
        return Err(Failure::operational(anyhow!(
            "the policy pins no resolvers, so `{name}` cannot be resolved; give an address instead"
        )));
    }
    let options = ResolveOptions {
        transport: if tcp { Transport::Tcp } else { Transport::Udp },
        ..ResolveOptions::default()
    };
    let mut answers = resolve_names(std::slice::from_ref(name), &servers, &options)
        .map_err(Failure::operational)?;
    match answers.pop() {
        Some(Ok(answer)) => Ok(answer.addresses.iter().map(|a| a.addr).collect()),
        Some(Err(reason)) => Err(Failure::operational(anyhow!("`{name}`: {reason}"))),
        None => Err(Failure::operational(anyhow!("`{name}`: no answer"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let d = parse_target("https://api.github.com").unwrap();
        assert_eq!((d.port, d.protocol), (443, Protocol::Tcp));
        let d = parse_target("10.0.0.1:53/udp").unwrap();
        assert_eq!(d.host, DestHost::Addr("10.0.0.1".parse().unwrap()));
        assert_eq!((d.port, d.protocol), (53, Protocol::Udp));
        let d = parse_target("[2001:db8::1]:8443").unwrap();
        assert_eq!(d.host, DestHost::Addr("2001:db8::1".parse().unwrap()));
        assert_eq!(d.port, 8443);
        let d = parse_target("2001:db8::1").unwrap();
        assert_eq!(d.port, 443);
        let d = parse_target("pkg.go.dev:80").unwrap();
        assert_eq!(
            d.host,
            DestHost::Name(HostName::parse("pkg.go.dev").unwrap())
        );
        assert!(parse_target("host:0").is_err());
        assert!(parse_target("host:1/icmp").is_err());
        assert!(parse_target("ftp://x").is_err());
    }
}
