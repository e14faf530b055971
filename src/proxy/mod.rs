//! The DNS proxy of `egressc watch` (proxy mode): the only way a workload can
//! resolve names, and the step that opens the firewall for what it resolves.
//!
//! A query for a name the policy allows is forwarded to a pinned resolver from a
//! socket carrying the proxy's mark (SO_MARK needs CAP_NET_ADMIN or CAP_NET_RAW,
//! so a workload without both cannot forge it, even as the same user); the
//! addresses in the answer are handed
//! to the [`Gate`], which adds them to the firewall's sets, and only then is the
//! answer returned, so the client's first SYN cannot race the set update. A query
//! for any other name is answered REFUSED (or NXDOMAIN) and logged: no data leaves
//! through query names.
//!
//! This module knows DNS, not the policy or the kernel: the [`Gate`] says which
//! names are allowed and does the learning.
//!
//! ```no_run
//! # async fn example(gate: std::sync::Arc<dyn egressc::proxy::Gate>) -> std::io::Result<()> {
//! use std::time::Duration;
//! use egressc::proxy::{Proxy, ProxyConfig, Refusal};
//!
//! let config = ProxyConfig {
//!     listen: "127.0.0.53:53".parse().unwrap(),
//!     upstreams: vec!["192.0.2.53:53".parse().unwrap()],
//!     mark: Some(0xe9c),
//!     refusal: Refusal::Refused,
//!     upstream_timeout: Duration::from_secs(2),
//! };
//! // Binding first makes a taken port or a missing privilege an error here,
//! // before anything is served.
//! let proxy = Proxy::bind(config, gate).await?;
//! let stats = proxy.stats();
//! proxy.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! eprintln!("{:?}", stats.snapshot());
//! # Ok(())
//! # }
//! ```

pub mod server;

pub use server::{Limits, Proxy, Stats, StatsSnapshot};

use std::net::SocketAddr;
use std::time::Duration;

use crate::resolve::ResolvedAddr;

/// What a query for a name the policy does not allow gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Refusal {
    /// RCODE 5: the client knows it was refused and does not retry elsewhere.
    #[default]
    Refused,
    /// RCODE 3: the name "does not exist".
    NxDomain,
}

/// Where the proxy listens and where it forwards.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// UDP and TCP are both served on this address.
    pub listen: SocketAddr,
    /// The pinned resolvers (address and DNS port), tried in this order.
    pub upstreams: Vec<SocketAddr>,
    /// SO_MARK for every socket towards the upstreams; the firewall lets only
    /// packets with this mark reach them. `None` sends unmarked (tests without
    /// a firewall).
    pub mark: Option<u32>,
    pub refusal: Refusal,
    /// How long to wait for one upstream before trying the next.
    pub upstream_timeout: Duration,
}

/// The policy and firewall side of the proxy.
pub trait Gate: Send + Sync + 'static {
    /// Whether a query for `name` (lowercase, no trailing dot) may be forwarded.
    fn allows(&self, name: &str) -> bool;

    /// Called with every address an answer for the allowed `name` holds (A and
    /// AAAA records of the name or of its CNAME chain; TTL = the smallest along
    /// the chain), before the answer is returned. An error makes the proxy
    /// answer SERVFAIL instead: a client must not get an address the firewall
    /// would drop.
    ///
    /// It runs on tokio's blocking pool, so it may block (a netlink round
    /// trip, a lock), and several calls may run at once. It is not called for
    /// answers without addresses. The TTL may be 0, and a client may cache an
    /// address for the TTL of its own record, which can be longer than the
    /// chain's smallest: how long an element lives is the gate's decision.
    fn learn(&self, name: &str, addrs: &[ResolvedAddr]) -> Result<(), String>;
}
