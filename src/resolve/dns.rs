//! Resolving host names through the pinned resolvers, and nothing else.
//!
//! hickory is built with `default-features = false`, so it has no code to read
//! `/etc/resolv.conf`; the resolver configuration is built here from the policy's
//! `dns.resolvers` only, and the hosts file is switched off. A and AAAA are asked
//! separately (one may exist without the other) and their TTLs kept. Lookups run
//! with bounded concurrency: hickory queues at most 32 requests per TCP
//! connection, and a resolver flooded with thousands of parallel UDP queries drops
//! some. Failure is closed: a required host that does not resolve is an error, and
//! nothing downstream runs.
//!
//! A pinned resolver that is down must fail the run in the time of one lookup, not
//! one lookup per batch of hosts: with the default knobs a silent server costs
//! about 8 s per host, so 1,000 hosts would take over 8 minutes to fail. Once a
//! host has timed out before the resolvers sent any response at all, the hosts not
//! yet started are failed with a timeout instead of being asked.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use hickory_resolver::Resolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};

use super::marked::MarkedRuntime;

use super::{HostAnswer, LOCK_FORMAT, Resolution, ResolvedAddr};
use crate::policy::Policy;
use crate::policy::model::HostName;

/// How to reach the pinned resolvers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// UDP, falling back to TCP for truncated answers (the normal case).
    #[default]
    Udp,
    /// TCP only (for networks that drop UDP, and to test the TCP path).
    Tcp,
}

/// Knobs for [`resolve`]. The defaults suit a real resolver on a real network.
#[derive(Debug, Clone)]
pub struct ResolveOptions {
    /// Hosts looked up at the same time (each host asks A and AAAA).
    pub concurrency: usize,
    /// How long to wait for one answer.
    pub timeout: Duration,
    /// How many times to ask before giving up on a name.
    pub attempts: usize,
    pub transport: Transport,
    /// Overrides the policy's resolvers (tests and benchmarks only, never the CLI:
    /// the CLI always resolves through what the policy pins).
    pub servers_override: Option<Vec<SocketAddr>>,
    /// SO_MARK for every query socket: in DNS proxy mode only marked packets
    /// reach the pinned resolvers (see [`super::marked`]).
    pub mark: Option<u32>,
}

impl Default for ResolveOptions {
    fn default() -> Self {
        ResolveOptions {
            concurrency: 16,
            timeout: Duration::from_secs(2),
            attempts: 3,
            transport: Transport::Udp,
            servers_override: None,
            mark: None,
        }
    }
}

/// Why resolution failed. Each variant names the hosts involved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot start the DNS resolver: {0}")]
    Setup(String),
    /// One or more required hosts did not resolve; nothing may be rendered.
    #[error("{}", render_failures(.0))]
    Failed(Vec<HostFailure>),
}

/// A host that did not resolve, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFailure {
    pub host: HostName,
    pub reason: FailureReason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureReason {
    /// The name does not exist (NXDOMAIN).
    NoSuchName,
    /// The name exists but has neither A nor AAAA records.
    NoAddresses,
    /// The resolvers did not answer in time.
    Timeout,
    /// The resolvers answered with an error code (SERVFAIL, REFUSED, …) or the
    /// transport failed.
    Failure(String),
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailureReason::NoSuchName => f.write_str("no such name (NXDOMAIN)"),
            FailureReason::NoAddresses => f.write_str("no A or AAAA records"),
            FailureReason::Timeout => f.write_str("the pinned resolvers did not answer in time"),
            FailureReason::Failure(why) => write!(f, "resolver failure: {why}"),
        }
    }
}

fn render_failures(failures: &[HostFailure]) -> String {
    let mut out = String::from("required hosts did not resolve; nothing was rendered or applied:");
    for f in failures {
        out.push_str(&format!("\n  {}: {}", f.host, f.reason));
    }
    out.push_str("\n  help: check that the pinned resolvers are reachable and the names are right; mark an entry `optional: true` if it may be missing");
    out
}

/// The result of resolving a policy: the resolution, plus the optional hosts that
/// did not resolve (warnings).
#[derive(Debug)]
pub struct Resolved {
    pub resolution: Resolution,
    pub skipped: Vec<HostFailure>,
}

/// The servers `policy`'s lookups go to: its pinned resolvers, unless a test
/// overrides them.
pub fn servers(policy: &Policy, options: &ResolveOptions) -> Vec<SocketAddr> {
    options
        .servers_override
        .clone()
        .unwrap_or_else(|| policy.dns.upstreams())
}

/// Resolves every host of `policy` through its pinned resolvers.
pub fn resolve(policy: &Policy, options: &ResolveOptions) -> Result<Resolved, ResolveError> {
    let hosts: Vec<HostName> = policy.hosts().into_iter().cloned().collect();
    let answers = resolve_names(&hosts, &servers(policy, options), options)?;

    let mut failures = Vec::new();
    let mut skipped = Vec::new();
    let mut map = BTreeMap::new();
    for (host, answer) in hosts.into_iter().zip(answers) {
        match answer {
            Ok(answer) => {
                map.insert(host, answer);
            }
            Err(reason) => {
                let failure = HostFailure {
                    host: host.clone(),
                    reason,
                };
                if policy.host_is_optional(&host) {
                    map.insert(
                        host,
                        HostAnswer {
                            unresolved: Some(failure.reason.to_string()),
                            ..HostAnswer::default()
                        },
                    );
                    skipped.push(failure);
                } else {
                    failures.push(failure);
                }
            }
        }
    }
    if !failures.is_empty() {
        return Err(ResolveError::Failed(failures));
    }
    Ok(Resolved {
        resolution: Resolution {
            lock_format: LOCK_FORMAT,
            policy_sha256: policy.source_hash.clone(),
            resolved_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            resolvers: policy.dns.resolvers.clone(),
            port: policy.dns.port,
            hosts: map,
        },
        skipped,
    })
}

/// Resolves `hosts` against `servers`, one result per host in the same order.
pub fn resolve_names(
    hosts: &[HostName],
    servers: &[SocketAddr],
    options: &ResolveOptions,
) -> Result<Vec<Result<HostAnswer, FailureReason>>, ResolveError> {
    if hosts.is_empty() {
        return Ok(Vec::new());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ResolveError::Setup(e.to_string()))?;
    runtime.block_on(async {
        let resolver = build_resolver(servers, options)?;
        let resolver = &resolver;
        let health = &Health::default();
        let mut results: Vec<(usize, Result<HostAnswer, FailureReason>)> =
            futures_util::stream::iter(hosts.iter().enumerate())
                .map(|(i, host)| async move {
                    if health.down.load(Ordering::Relaxed) {
                        return (i, Err(FailureReason::Timeout));
                    }
                    let result = lookup_host(resolver, host, health).await;
                    if result == Err(FailureReason::Timeout)
                        && !health.answered.load(Ordering::Relaxed)
                    {
                        health.down.store(true, Ordering::Relaxed);
                    }
                    (i, result)
                })
                .buffer_unordered(options.concurrency.max(1))
                .collect()
                .await;
        results.sort_by_key(|(i, _)| *i);
        Ok(results.into_iter().map(|(_, r)| r).collect())
    })
}

/// The resolver type egressc uses: tokio sockets, marked in proxy mode.
type DnsResolver = Resolver<MarkedRuntime>;

fn build_resolver(
    servers: &[SocketAddr],
    options: &ResolveOptions,
) -> Result<DnsResolver, ResolveError> {
    let name_servers = servers
        .iter()
        .map(|server| {
            let mut connections = Vec::new();
            if options.transport == Transport::Udp {
                let mut udp = ConnectionConfig::udp();
                udp.port = server.port();
                connections.push(udp);
            }
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = server.port();
            connections.push(tcp);
            NameServerConfig::new(server.ip(), true, connections)
        })
        .collect();
    // No search domains: every name is looked up exactly as written (as an FQDN).
    let config = ResolverConfig::from_parts(None, Vec::new(), name_servers);
    let mut opts = ResolverOpts::default();
    opts.timeout = options.timeout;
    opts.attempts = options.attempts;
    opts.use_hosts_file = ResolveHosts::Never;
    // Every policy run wants fresh answers with the server's TTLs, not a cache's.
    opts.cache_size = 0;
    opts.edns0 = true;
    opts.preserve_intermediates = true;
    opts.try_tcp_on_error = true;
    Resolver::builder_with_config(config, MarkedRuntime::new(options.mark))
        .with_options(opts)
        .build()
        .map_err(|e| ResolveError::Setup(e.to_string()))
}

/// What one run has learned about the pinned resolvers, shared by all lookups.
#[derive(Default)]
struct Health {
    /// Some DNS response (records, NODATA, NXDOMAIN or an error code) has arrived:
    /// the resolvers are up, and a timeout is about one name only.
    answered: AtomicBool,
    /// A host timed out before any response arrived: the resolvers are down, and
    /// asking them about the remaining hosts would only wait out more timeouts.
    down: AtomicBool,
}

/// Outcome of one query type for one name.
enum TypeAnswer {
    Records {
        addrs: Vec<ResolvedAddr>,
        cnames: Vec<String>,
    },
    NoData,
    NxDomain,
}

async fn lookup_host(
    resolver: &DnsResolver,
    host: &HostName,
    health: &Health,
) -> Result<HostAnswer, FailureReason> {
    let fqdn = format!("{}.", host.as_str());
    let (v4, v6) = futures_util::join!(
        lookup_type(resolver, &fqdn, RecordType::A, health),
        lookup_type(resolver, &fqdn, RecordType::AAAA, health)
    );
    let (v4, v6) = (v4?, v6?);
    let mut answer = HostAnswer::default();
    let mut nx = 0;
    for part in [v4, v6] {
        match part {
            TypeAnswer::Records { addrs, cnames } => {
                answer.addresses.extend(addrs);
                if answer.cnames.is_empty() {
                    answer.cnames = cnames;
                }
            }
            TypeAnswer::NoData => {}
            TypeAnswer::NxDomain => nx += 1,
        }
    }
    if answer.addresses.is_empty() {
        return Err(if nx > 0 {
            FailureReason::NoSuchName
        } else {
            FailureReason::NoAddresses
        });
    }
    answer.addresses.sort();
    answer.addresses.dedup_by_key(|a| a.addr);
    Ok(answer)
}

async fn lookup_type(
    resolver: &DnsResolver,
    fqdn: &str,
    record_type: RecordType,
    health: &Health,
) -> Result<TypeAnswer, FailureReason> {
    let result = resolver.lookup(fqdn, record_type).await;
    // `NetError::Dns` is a response from the server (NXDOMAIN, NODATA, SERVFAIL…).
    if matches!(result, Ok(_) | Err(NetError::Dns(_))) {
        health.answered.store(true, Ordering::Relaxed);
    }
    match result {
        Ok(lookup) => {
            let records = lookup.answers();
            // A CNAME chain shortens how long the final answer may be trusted.
            let chain_ttl = records
                .iter()
                .filter(|r| matches!(r.data, RData::CNAME(_)))
                .map(|r| r.ttl)
                .min()
                .unwrap_or(u32::MAX);
            let cnames = records
                .iter()
                .filter_map(|r| match &r.data {
                    RData::CNAME(c) => Some(c.0.to_string().trim_end_matches('.').to_string()),
                    _ => None,
                })
                .collect();
            let addrs: Vec<ResolvedAddr> = records
                .iter()
                .filter_map(|r| {
                    let addr = match &r.data {
                        RData::A(a) if record_type == RecordType::A => IpAddr::V4(a.0),
                        RData::AAAA(a) if record_type == RecordType::AAAA => IpAddr::V6(a.0),
                        _ => return None,
                    };
                    Some(ResolvedAddr {
                        addr,
                        ttl: r.ttl.min(chain_ttl),
                    })
                })
                .collect();
            if addrs.is_empty() {
                Ok(TypeAnswer::NoData)
            } else {
                Ok(TypeAnswer::Records { addrs, cnames })
            }
        }
        Err(e) => classify(e),
    }
}

fn classify(e: NetError) -> Result<TypeAnswer, FailureReason> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(no)) => match no.response_code {
            ResponseCode::NXDomain => Ok(TypeAnswer::NxDomain),
            ResponseCode::NoError => Ok(TypeAnswer::NoData),
            other => Err(FailureReason::Failure(other.to_string())),
        },
        NetError::Timeout => Err(FailureReason::Timeout),
        other => {
            let text = other.to_string();
            if text.contains("timed out") {
                Err(FailureReason::Timeout)
            } else {
                Err(FailureReason::Failure(text))
            }
        }
    }
}
