//! The validator: turns a `RawPolicy` into a typed `Policy`, or reports every
//! problem it finds at once.
//!
//! It never touches the network. Each check pushes a diagnostic and carries on, so
//! a user fixing a policy sees the whole list in one run, like a compiler.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_saphyr::Spanned;

use super::diag::{Diagnostic, Pos};
use super::model::{
    AllowEntry, DEFAULT_PROXY_MARK, DefaultAction, Dns, DnsProxy, HostName, Log, Policy, PortRange,
    Protocol, Rate, RateUnit, Target, normalize_ports,
};
use super::raw::{RawDns, RawEntry, RawLog, RawPolicy, RawPort, RawProxy};
use crate::proxy::Refusal;
use crate::text::{describe_char, first_unsafe_quoted};

/// The output format a policy is checked for: limits differ between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetFormat {
    #[default]
    Nft,
    Iptables,
}

/// nft's limit for `log prefix`.
pub const NFT_LOG_PREFIX_MAX: usize = 127;
/// iptables' limit for `--log-prefix` (the LOG target).
pub const IPTABLES_LOG_PREFIX_MAX: usize = 29;
/// iptables' limit for `--nflog-prefix` (the NFLOG target).
pub const IPTABLES_NFLOG_PREFIX_MAX: usize = 63;
const NAME_MAX: usize = 63;

/// A policy that passed validation, with the warnings found on the way.
#[derive(Debug)]
pub struct Validated {
    pub policy: Policy,
    pub warnings: Vec<Diagnostic>,
}

/// Validates a parsed policy. `source_hash` identifies the file's bytes.
pub fn validate(
    raw: RawPolicy,
    source_hash: String,
    format: TargetFormat,
) -> Result<Validated, Vec<Diagnostic>> {
    let proxy_mode = raw.dns.as_ref().is_some_and(|d| d.value.proxy.is_some());
    let mut v = Validator {
        diags: Vec::new(),
        proxy_mode,
    };
    let policy = v.policy(raw, source_hash, format);
    let (errors, warnings): (Vec<_>, Vec<_>) = v.diags.into_iter().partition(|d| d.is_error());
    match policy {
        Some(policy) if errors.is_empty() => Ok(Validated { policy, warnings }),
        _ => {
            // Warnings are shown with the errors: they may explain them.
            let mut all = errors;
            all.extend(warnings);
            Err(all)
        }
    }
}

struct Validator {
    diags: Vec<Diagnostic>,
    /// `dns.proxy` is present: wildcard hosts are allowed.
    proxy_mode: bool,
}

/// In proxy mode every learned address is added once per port of its entry
/// (hash sets with timeouts cannot hold ranges); more ports than this per
/// entry is almost certainly a mistake, and a cidr entry says it better.
const PROXY_PORTS_MAX: u32 = 64;

fn pos<T>(s: &Spanned<T>) -> Pos {
    Pos::of(&s.referenced)
}

impl Validator {
    fn error(&mut self, code: &'static str, at: Pos, msg: impl Into<String>, help: &str) {
        self.diags
            .push(Diagnostic::error(code, at, msg).with_help(help.to_string()));
    }

    fn warn(&mut self, code: &'static str, at: Pos, msg: impl Into<String>, help: &str) {
        self.diags
            .push(Diagnostic::warning(code, at, msg).with_help(help.to_string()));
    }

    fn policy(
        &mut self,
        raw: RawPolicy,
        source_hash: String,
        format: TargetFormat,
    ) -> Option<Policy> {
        if raw.is_empty() {
            self.error(
                "empty-policy",
                Pos::START,
                "the policy file is empty",
                "start with `version: 1`, `dns:` and an `allow:` list; see examples/",
            );
            return None;
        }
        self.version(raw.version.as_ref());
        let name = raw.name.as_ref().and_then(|n| self.name(n));
        let (default, default_pos) = self.default_action(raw.default.as_ref());
        let allow = match &raw.allow {
            Some(list) => list
                .value
                .iter()
                .enumerate()
                .filter_map(|(i, e)| self.entry(i, e))
                .collect(),
            None => Vec::new(),
        };
        // Where the first host that needs resolving is written, if any.
        let needs_dns = allow
            .iter()
            .find(|e| matches!(e.target, Target::Host(_) | Target::Wildcard(_)))
            .map(|e| e.pos);
        let dns = self.dns(raw.dns.as_ref(), needs_dns, format);
        self.dns_ports_in_allow(&allow, dns.port);
        if dns.proxy.is_some() {
            self.proxy_port_counts(&allow);
        }
        let log = match &raw.log {
            Some(log) => self.log(log, format),
            None => Log::default(),
        };
        Some(Policy {
            name,
            default,
            default_pos,
            dns,
            log,
            allow,
            source_hash,
        })
    }

    /// DNS (53), DNS-over-TLS (853) and the pinned DNS port may only reach the
    /// pinned resolvers; the rules deny them before the allow list is consulted. An
    /// entry that names one of those ports explicitly would silently do nothing, so
    /// say so. (Ranges like "1-65535" that merely include them are not flagged.)
    fn dns_ports_in_allow(&mut self, allow: &[AllowEntry], dns_port: u16) {
        for entry in allow {
            let named = entry
                .ports
                .iter()
                .filter(|r| r.is_single())
                .map(|r| r.first)
                .find(|p| [53, 853, dns_port].contains(p));
            if let Some(port) = named {
                self.warn(
                    "dns-port-in-allow",
                    entry.pos,
                    format!("allow entry {} names port {port}, which only the pinned resolvers may receive", entry.index),
                    "DNS and DNS-over-TLS to anything but dns.resolvers is always denied, so this cannot take effect; add the server to dns.resolvers instead",
                );
            }
        }
    }

    fn version(&mut self, version: Option<&Spanned<i64>>) {
        match version {
            None => self.error(
                "missing-version",
                Pos::START,
                "the policy has no `version`",
                "add `version: 1` as the first line",
            ),
            Some(v) if v.value != 1 => self.error(
                "unknown-version",
                pos(v),
                format!("policy version {} is not known", v.value),
                "this egressc understands `version: 1`",
            ),
            Some(_) => {}
        }
    }

    fn name(&mut self, name: &Spanned<String>) -> Option<String> {
        let n = &name.value;
        let bad = n
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'));
        if let Some(c) = bad {
            self.error(
                "invalid-name",
                pos(name),
                format!("the policy name contains {}", describe_char(c)),
                "a name may use lowercase letters, digits and `-` only",
            );
            return None;
        }
        if n.is_empty() || n.len() > NAME_MAX {
            self.error(
                "invalid-name",
                pos(name),
                format!("the policy name must be 1 to {NAME_MAX} characters long"),
                "a name may use lowercase letters, digits and `-` only",
            );
            return None;
        }
        Some(n.clone())
    }

    fn default_action(&mut self, default: Option<&Spanned<String>>) -> (DefaultAction, Pos) {
        let Some(d) = default else {
            // Fail closed: no `default` means deny.
            return (DefaultAction::Deny, Pos::START);
        };
        let action = match d.value.as_str() {
            "deny" => DefaultAction::Deny,
            "audit" => DefaultAction::Audit,
            other => {
                self.error(
                    "invalid-default",
                    pos(d),
                    format!("`default: {}` is not known", printable(other)),
                    "use `deny` (drop what is not allowed) or `audit` (accept all, log what deny would drop)",
                );
                DefaultAction::Deny
            }
        };
        (action, pos(d))
    }

    /// In proxy mode each name's answer is added per port: keep that bounded.
    fn proxy_port_counts(&mut self, allow: &[AllowEntry]) {
        for e in allow {
            if matches!(e.target, Target::Net(_)) {
                continue;
            }
            let count: u32 = e
                .ports
                .iter()
                .map(|p| u32::from(p.last) - u32::from(p.first) + 1)
                .sum();
            if count > PROXY_PORTS_MAX {
                self.error(
                    "proxy-too-many-ports",
                    e.pos,
                    format!(
                        "allow entry {} names {count} ports; in proxy mode a host entry may name at most {PROXY_PORTS_MAX}",
                        e.index
                    ),
                    "the proxy adds every answered address once per port; list the ports the service uses, or allow its network with a `cidr:` entry",
                );
            }
        }
    }

    fn proxy(&mut self, proxy: &Spanned<RawProxy>, format: TargetFormat) -> Option<DnsProxy> {
        let at = pos(proxy);
        let raw = &proxy.value;
        if format == TargetFormat::Iptables {
            self.error(
                "proxy-needs-nftables",
                at,
                "DNS proxy mode cannot be expressed in iptables rules",
                "the proxy adds addresses with timeouts to nftables sets: use the nft or netlink backend",
            );
        }
        let listen = match &raw.listen {
            None => {
                self.error(
                    "proxy-listen-missing",
                    at,
                    "`dns.proxy` has no `listen:` address",
                    "give the local address workloads will use as their resolver, e.g. `listen: 127.0.0.53`",
                );
                None
            }
            Some(l) => match l.value.trim().parse::<IpAddr>() {
                Ok(ip) if ip.is_unspecified() || ip.is_multicast() => {
                    self.error(
                        "invalid-proxy-listen",
                        pos(l),
                        format!("the proxy cannot listen on `{ip}`"),
                        "give one local unicast address, e.g. 127.0.0.53",
                    );
                    None
                }
                Ok(ip) => Some(ip),
                Err(_) => {
                    self.error(
                        "invalid-proxy-listen",
                        pos(l),
                        format!("`{}` is not an IP address", printable(&l.value)),
                        "give the local address to listen on, e.g. 127.0.0.53 (the port goes under `port:`)",
                    );
                    None
                }
            },
        };
        let port = match &raw.port {
            Some(p) => self.port_number(p.value, pos(p)),
            None => Some(53),
        };
        let refusal = match raw.refuse.as_ref().map(|r| (r.value.trim(), pos(r))) {
            None | Some(("refused", _)) => Some(Refusal::Refused),
            Some(("nxdomain", _)) => Some(Refusal::NxDomain),
            Some((other, at)) => {
                self.error(
                    "invalid-proxy-refuse",
                    at,
                    format!("`{}` is not a way to refuse a query", printable(other)),
                    "write `refuse: refused` (the default) or `refuse: nxdomain`",
                );
                None
            }
        };
        let mark = match &raw.mark {
            None => Some(DEFAULT_PROXY_MARK),
            Some(m) => match u32::try_from(m.value) {
                Ok(v) if v != 0 => Some(v),
                _ => {
                    self.error(
                        "invalid-proxy-mark",
                        pos(m),
                        format!("{} is not a usable packet mark", m.value),
                        "give a mark from 1 to 4294967295 (e.g. 0x65677265) that no other tool on the host sets",
                    );
                    None
                }
            },
        };
        Some(DnsProxy {
            listen: listen?,
            port: port?,
            refusal: refusal?,
            mark: mark?,
            pos: at,
        })
    }

    /// `needs_dns` is where the first entry naming a host is written, if any.
    fn dns(
        &mut self,
        dns: Option<&Spanned<RawDns>>,
        needs_dns: Option<Pos>,
        format: TargetFormat,
    ) -> Dns {
        let at = dns.map(pos).unwrap_or(Pos::START);
        let mut out = Dns {
            resolvers: Vec::new(),
            port: 53,
            proxy: None,
            pos: at,
        };
        let proxy_at = dns.and_then(|d| d.value.proxy.as_ref()).map(pos);
        if let Some(proxy) = dns.and_then(|d| d.value.proxy.as_ref()) {
            out.proxy = self.proxy(proxy, format);
        }
        if let Some(dns) = dns {
            if let Some(p) = dns
                .value
                .port
                .as_ref()
                .and_then(|port| self.port_number(port.value, pos(port)))
            {
                out.port = p;
            }
            for r in dns.value.resolvers.iter().flat_map(|l| l.value.iter()) {
                match r.value.trim().parse::<IpAddr>() {
                    Ok(ip) if ip.is_unspecified() || ip.is_multicast() => self.error(
                        "invalid-resolver",
                        pos(r),
                        format!("`{ip}` cannot be a DNS resolver"),
                        "give the unicast address of the resolver to pin",
                    ),
                    Ok(ip) => {
                        if !out.resolvers.contains(&ip) {
                            out.resolvers.push(ip);
                        }
                    }
                    Err(_) => self.error(
                        "resolver-not-address",
                        pos(r),
                        format!("resolver `{}` is not an IP address", printable(&r.value)),
                        "write the resolver's address (e.g. 1.1.1.1): a pinned resolver cannot itself be found through DNS",
                    ),
                }
            }
        }
        let has_resolver_errors = self
            .diags
            .iter()
            .any(|d| d.code == "resolver-not-address" || d.code == "invalid-resolver");
        if let Some(proxy_at) = proxy_at
            && out.resolvers.is_empty()
            && !has_resolver_errors
        {
            self.error(
                "missing-resolvers",
                proxy_at,
                "the DNS proxy has no resolver to forward to: `dns.resolvers` is empty",
                "pin at least one resolver, e.g. `resolvers: [1.1.1.1]`; the proxy forwards only to it",
            );
        } else if let Some(host_at) = needs_dns
            && out.resolvers.is_empty()
            && !has_resolver_errors
        {
            // With no `dns:` at all, point at the host that needs it, not at line 1.
            self.error(
                "missing-resolvers",
                if dns.is_some() { at } else { host_at },
                "the allow list names hosts, but no resolver is pinned in `dns.resolvers`",
                "pin at least one resolver, e.g. `dns: { resolvers: [1.1.1.1] }`; hosts are resolved only through it",
            );
        }
        out
    }

    fn log(&mut self, log: &Spanned<RawLog>, format: TargetFormat) -> Log {
        let mut out = Log {
            pos: pos(log),
            ..Log::default()
        };
        let raw = &log.value;
        if let Some(group) = &raw.group {
            match u16::try_from(group.value) {
                Ok(g) => out.group = Some(g),
                Err(_) => self.error(
                    "invalid-log-group",
                    pos(group),
                    format!("NFLOG group {} is out of range", group.value),
                    "use a group number from 0 to 65535",
                ),
            }
        }
        if let Some(prefix) = &raw.prefix {
            out.prefix_pos = pos(prefix);
            if let Some((_, c)) = first_unsafe_quoted(&prefix.value) {
                self.error(
                    "unsafe-characters",
                    pos(prefix),
                    format!("the log prefix contains {}", describe_char(c)),
                    "a log prefix may use letters, digits, space and []()-_.:/,+=@ only; quotes, `\\`, `$`, `;`, `#` and control characters could change the rules",
                );
            } else {
                let len = prefix.value.chars().count();
                let (max, what) = match (format, out.group.is_some()) {
                    (TargetFormat::Nft, _) => (NFT_LOG_PREFIX_MAX, "nft"),
                    (TargetFormat::Iptables, false) => {
                        (IPTABLES_LOG_PREFIX_MAX, "iptables --log-prefix")
                    }
                    (TargetFormat::Iptables, true) => {
                        (IPTABLES_NFLOG_PREFIX_MAX, "iptables --nflog-prefix")
                    }
                };
                if len > max {
                    self.error(
                        "log-prefix-too-long",
                        pos(prefix),
                        format!(
                            "the log prefix is {len} characters long; {what} allows at most {max}"
                        ),
                        "shorten the prefix",
                    );
                } else {
                    out.prefix = Some(prefix.value.clone());
                }
            }
        }
        if let Some(rate) = &raw.rate {
            out.rate = self.rate(rate);
        }
        out
    }

    fn rate(&mut self, rate: &Spanned<String>) -> Option<Rate> {
        let parsed = rate.value.split_once('/').and_then(|(n, unit)| {
            let count: u32 = n.trim().parse().ok().filter(|c| *c > 0)?;
            let unit = match unit.trim() {
                "second" => RateUnit::Second,
                "minute" => RateUnit::Minute,
                "hour" => RateUnit::Hour,
                "day" => RateUnit::Day,
                _ => return None,
            };
            Some(Rate { count, unit })
        });
        if parsed.is_none() {
            self.error(
                "invalid-rate",
                pos(rate),
                format!("`{}` is not a rate", printable(&rate.value)),
                "write a positive count and a unit, e.g. `10/second`, `100/minute`, `5/hour` or `1/day`",
            );
        }
        parsed
    }

    fn port_number(&mut self, n: i64, at: Pos) -> Option<u16> {
        match u16::try_from(n) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                self.error(
                    "invalid-port",
                    at,
                    format!("port {n} is out of range"),
                    "ports are numbers from 1 to 65535",
                );
                None
            }
        }
    }

    fn port(&mut self, port: &Spanned<RawPort>) -> Option<PortRange> {
        let at = pos(port);
        match &port.value {
            RawPort::Number(n) => self.port_number(*n, at).map(PortRange::single),
            RawPort::Text(text) => {
                let text = text.trim();
                let (first, last) = text.split_once('-').unwrap_or((text, text));
                let parse = |s: &str| s.trim().parse::<i64>().ok();
                match (parse(first), parse(last)) {
                    (Some(first), Some(last)) => {
                        let first = self.port_number(first, at)?;
                        let last = self.port_number(last, at)?;
                        if first > last {
                            self.error(
                                "reversed-port-range",
                                at,
                                format!("port range `{text}` runs backwards"),
                                &format!("write the lower port first: \"{last}-{first}\""),
                            );
                            return None;
                        }
                        Some(PortRange { first, last })
                    }
                    _ => {
                        self.error(
                            "invalid-port",
                            at,
                            format!("`{}` is not a port or port range", printable(text)),
                            "write a number (443) or a range in quotes (\"8000-8100\")",
                        );
                        None
                    }
                }
            }
        }
    }

    fn protocol(&mut self, protocol: Option<&Spanned<String>>) -> Option<Protocol> {
        match protocol {
            None => Some(Protocol::Tcp),
            Some(p) => match p.value.to_ascii_lowercase().as_str() {
                "tcp" => Some(Protocol::Tcp),
                "udp" => Some(Protocol::Udp),
                other => {
                    self.error(
                        "unknown-protocol",
                        pos(p),
                        format!("protocol `{}` is not known", printable(other)),
                        "use `tcp` (the default) or `udp`",
                    );
                    None
                }
            },
        }
    }

    fn entry(&mut self, index: usize, entry: &Spanned<RawEntry>) -> Option<AllowEntry> {
        let at = pos(entry);
        let raw = &entry.value;
        let targets = [raw.host.is_some(), raw.url.is_some(), raw.cidr.is_some()];
        match targets.iter().filter(|t| **t).count() {
            0 => {
                self.error(
                    "missing-target",
                    at,
                    format!("allow entry {index} names no destination"),
                    "give exactly one of `host:`, `url:` or `cidr:`",
                );
                return None;
            }
            1 => {}
            _ => {
                self.error(
                    "conflicting-targets",
                    at,
                    format!("allow entry {index} names more than one destination"),
                    "give exactly one of `host:`, `url:` or `cidr:`; split it into several entries",
                );
                return None;
            }
        }
        let optional = raw.optional.as_ref().is_some_and(|o| o.value);
        if let Some(url) = &raw.url {
            return self.url_entry(index, at, url, raw, optional);
        }
        let target = if let Some(host) = &raw.host {
            self.host(host)
        } else {
            raw.cidr
                .as_ref()
                .and_then(|c| self.cidr(c))
                .map(Target::Net)
        };
        let protocol = self.protocol(raw.protocol.as_ref());
        let ports = self.ports(raw, at, index);
        let (target, protocol, ports) = (target?, protocol?, ports?);
        let label = match &target {
            Target::Host(h) => format!("host {h}"),
            Target::Wildcard(suffix) => format!("host *.{suffix}"),
            Target::Net(n) => format!("cidr {n}"),
        };
        Some(AllowEntry {
            index,
            pos: at,
            target,
            protocol,
            ports,
            optional,
            label,
        })
    }

    fn ports(&mut self, raw: &RawEntry, at: Pos, index: usize) -> Option<Vec<PortRange>> {
        let Some(list) = raw.ports.as_ref().filter(|l| !l.value.is_empty()) else {
            self.error(
                "missing-ports",
                raw.ports.as_ref().map(pos).unwrap_or(at),
                format!("allow entry {index} lists no ports"),
                "list the ports, e.g. `ports: [443]`; to allow every port write `ports: [\"1-65535\"]`",
            );
            return None;
        };
        let parsed: Vec<Option<PortRange>> = list.value.iter().map(|p| self.port(p)).collect();
        let ports: Option<Vec<PortRange>> = parsed.into_iter().collect();
        ports.map(normalize_ports)
    }

    /// A `*.` name: a [`Target::Wildcard`] in proxy mode, an error otherwise.
    fn wildcard(&mut self, text: &str, at: Pos) -> Option<Target> {
        let Some(suffix) = text.strip_prefix("*.").filter(|s| !s.contains('*')) else {
            self.error(
                "invalid-wildcard",
                at,
                format!("`{}` is not a wildcard egressc understands", printable(text)),
                "a wildcard is `*.` followed by a name, e.g. `*.githubusercontent.com`; it covers every name below it",
            );
            return None;
        };
        if !self.proxy_mode {
            self.error(
                "wildcard-host",
                at,
                format!(
                    "wildcard host `{}` cannot be enforced by address",
                    printable(text)
                ),
                "wildcards need DNS proxy mode (`dns: { proxy: { listen: 127.0.0.53 } }` and `egressc watch`), which learns each name's addresses from its answers; or list each name you need",
            );
            return None;
        }
        match parse_host_name(suffix) {
            Ok(h) if h.as_str().contains('.') => Some(Target::Wildcard(h)),
            Ok(h) => {
                self.error(
                    "wildcard-too-broad",
                    at,
                    format!("`*.{h}` would allow every name under a top-level domain"),
                    "name the domain, e.g. `*.githubusercontent.com`",
                );
                None
            }
            Err(why) => {
                self.error(
                    "invalid-host",
                    at,
                    format!("`{}` is not a valid host name: {why}", printable(text)),
                    "a wildcard is `*.` followed by a name, e.g. `*.githubusercontent.com`",
                );
                None
            }
        }
    }

    fn host(&mut self, host: &Spanned<String>) -> Option<Target> {
        let text = host.value.trim();
        if text.contains('*') {
            return self.wildcard(text, pos(host));
        }
        if text.parse::<IpAddr>().is_ok() {
            self.error(
                "host-is-address",
                pos(host),
                format!("`{text}` is an address, not a host name"),
                &format!("write `cidr: {text}` for a single address"),
            );
            return None;
        }
        let help = if text.contains("://") {
            "a host is a DNS name like api.example.com; for a URL write `url:` instead of `host:`"
        } else if text.contains(':') {
            "a host is a DNS name like api.example.com; put the port under `ports:`"
        } else {
            "a host is a DNS name like api.example.com"
        };
        match parse_host_name(text) {
            Ok(h) => Some(Target::Host(h)),
            Err(why) => {
                self.error(
                    "invalid-host",
                    pos(host),
                    format!("`{}` is not a valid host name: {why}", printable(text)),
                    help,
                );
                None
            }
        }
    }

    fn cidr(&mut self, cidr: &Spanned<String>) -> Option<IpNet> {
        let text = cidr.value.trim();
        let net = match text.parse::<IpNet>() {
            Ok(n) => n,
            Err(_) => match text.parse::<IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => {
                    self.error(
                        "invalid-cidr",
                        pos(cidr),
                        format!("`{}` is not an address or network", printable(text)),
                        "write an address (192.0.2.7, 2001:db8::7) or a network (10.20.0.0/16, 2001:db8::/32)",
                    );
                    return None;
                }
            },
        };
        if net.trunc() != net {
            self.error(
                "cidr-host-bits",
                pos(cidr),
                format!("`{text}` has bits set after the prefix length"),
                &format!("did you mean `{}`?", net.trunc()),
            );
            return None;
        }
        if net.prefix_len() == 0 {
            self.warn(
                "allows-everything",
                pos(cidr),
                format!("`{net}` allows every address of its family"),
                "list the networks you need instead",
            );
        }
        Some(net)
    }

    fn url_entry(
        &mut self,
        index: usize,
        at: Pos,
        url: &Spanned<String>,
        raw: &RawEntry,
        optional: bool,
    ) -> Option<AllowEntry> {
        let mut conflict = false;
        for (key, key_at) in [
            ("ports", raw.ports.as_ref().map(pos)),
            ("protocol", raw.protocol.as_ref().map(pos)),
        ] {
            if let Some(key_at) = key_at {
                conflict = true;
                self.error(
                    "url-with-ports",
                    key_at,
                    format!("allow entry {index} has a `url:`, which cannot also have `{key}:`"),
                    "a URL carries its own port and protocol (tcp://, udp://): put the port in the URL, or use `host:` with `ports:`",
                );
            }
        }
        let upos = pos(url);
        let parsed = match parse_url(url.value.trim()) {
            Ok(p) => p,
            Err(UrlError {
                code,
                message,
                help,
            }) => {
                self.error(code, upos, message, &help);
                return None;
            }
        };
        if parsed.has_path {
            self.warn(
                "url-path-not-enforced",
                upos,
                "the URL's path, query or fragment cannot be enforced at the network layer",
                "egressc allows the whole host and port; enforce paths in an HTTP proxy",
            );
        }
        let target = if let Ok(ip) = parsed.host.parse::<IpAddr>() {
            Target::Net(IpNet::from(ip))
        } else if parsed.host.contains('*') {
            self.wildcard(&parsed.host, upos)?
        } else {
            match parse_host_name(&parsed.host) {
                Ok(h) => Target::Host(h),
                Err(why) => {
                    self.error(
                        "invalid-host",
                        upos,
                        format!("the URL's host is not valid: {why}"),
                        "a host is a DNS name like api.example.com",
                    );
                    return None;
                }
            }
        };
        if conflict {
            // The URL itself was checked above, so both problems are reported at once.
            return None;
        }
        let host_text = match &target {
            Target::Net(n) if n.addr().is_ipv6() => format!("[{}]", n.addr()),
            Target::Net(n) => n.addr().to_string(),
            Target::Host(h) => h.to_string(),
            Target::Wildcard(suffix) => format!("*.{suffix}"),
        };
        Some(AllowEntry {
            index,
            pos: at,
            target,
            protocol: parsed.protocol,
            ports: vec![PortRange::single(parsed.port)],
            optional,
            label: format!("url {}://{}:{}", parsed.scheme, host_text, parsed.port),
        })
    }
}

/// [`HostName::parse`], after refusing characters no host name can hold: the
/// message then names the character, and the length checks never see text that
/// is not ASCII (a label of multi-byte characters once made them slice through a
/// character and panic).
fn parse_host_name(text: &str) -> Result<HostName, String> {
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(format!(
            "the host name contains {}; only letters, digits, `-` and `.` are allowed",
            describe_char(c)
        ));
    }
    HostName::parse(text)
}

/// Shows user text in a message with control characters made visible, so a
/// diagnostic can never write raw control bytes to the terminal.
pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// A URL reduced to what a firewall can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedUrl {
    pub scheme: &'static str,
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
    /// A path, query or fragment was given (and cannot be enforced).
    pub has_path: bool,
}

/// Why a URL was refused: a diagnostic code, message and help line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError {
    pub code: &'static str,
    pub message: String,
    pub help: String,
}

fn url_error(code: &'static str, message: impl Into<String>, help: impl Into<String>) -> UrlError {
    UrlError {
        code,
        message: message.into(),
        help: help.into(),
    }
}

/// Parses the small URL subset a firewall can act on: `scheme://host[:port][/…]`.
pub fn parse_url(url: &str) -> Result<ParsedUrl, UrlError> {
    const SCHEMES: &str = "https, http, wss, ws, tcp and udp";
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(url_error(
            "invalid-url",
            format!("`{}` is not a URL", printable(url)),
            "write scheme://host[:port], e.g. https://api.example.com",
        ));
    };
    let (scheme, default_port, protocol): (&'static str, Option<u16>, Protocol) =
        match scheme.to_ascii_lowercase().as_str() {
            "https" => ("https", Some(443), Protocol::Tcp),
            "http" => ("http", Some(80), Protocol::Tcp),
            "wss" => ("wss", Some(443), Protocol::Tcp),
            "ws" => ("ws", Some(80), Protocol::Tcp),
            "tcp" => ("tcp", None, Protocol::Tcp),
            "udp" => ("udp", None, Protocol::Udp),
            other => {
                return Err(url_error(
                    "unsupported-scheme",
                    format!("URL scheme `{}` is not supported", printable(other)),
                    format!(
                        "egressc understands {SCHEMES}; for anything else use `host:` with `ports:`"
                    ),
                ));
            }
        };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let has_path = !(tail.is_empty() || tail == "/");
    if authority.contains('@') {
        return Err(url_error(
            "url-userinfo",
            "the URL contains a user name or password",
            "remove `user:password@`: credentials do not belong in a firewall policy, and the firewall cannot check them",
        ));
    }
    let (host, port_text) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return Err(url_error(
                "invalid-url",
                "unclosed `[` in the URL's host",
                "write IPv6 hosts as [2001:db8::1]",
            ));
        };
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => {
                    return Err(url_error(
                        "invalid-url",
                        "unexpected text after `]` in the URL",
                        "write [2001:db8::1]:443",
                    ));
                }
            },
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(url_error(
                "invalid-url",
                format!("`{}` is not an IPv6 address", printable(host)),
                "write IPv6 hosts as [2001:db8::1]",
            ));
        }
        (host.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(url_error(
            "invalid-url",
            "the URL has no host",
            "write scheme://host[:port]",
        ));
    }
    let port = match (port_text, default_port) {
        (Some(p), _) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(url_error(
                    "invalid-port",
                    format!(
                        "`{}` in the URL is not a port from 1 to 65535",
                        printable(p)
                    ),
                    "write the port as a number after the host, e.g. tcp://collector.internal:10514",
                ));
            }
        },
        (None, Some(default)) => default,
        (None, None) => {
            return Err(url_error(
                "url-missing-port",
                format!("a {scheme}:// URL needs a port"),
                format!("write {scheme}://host:port"),
            ));
        }
    };
    Ok(ParsedUrl {
        scheme,
        host,
        port,
        protocol,
        has_path,
    })
}
