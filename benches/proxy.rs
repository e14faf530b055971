//! The DNS proxy (src/proxy) in front of a local unbound, against the same
//! unbound asked directly, in the same run: (a) the latency a query gains by
//! going through the proxy, sequential queries, median and p90; (b) queries per
//! second with a pool of concurrent clients. Targets: ≤ 1 ms added to the
//! median, ≥ 5,000 queries/s through the proxy.
//!
//! The gate does what the real one does for every answer: as root (with the
//! netlink feature) it adds the answer's addresses, with the TTL as timeout, to
//! an nftables set in a network namespace of its own, one NEWSETELEM batch per
//! answer over one netlink socket, and waits for the kernel's ack. Without root
//! it does nothing, and says so. A second proxy with a gate that does nothing
//! shows what the kernel write costs.
//!
//! `cargo bench --bench proxy`        # as root, for the nftables gate

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{median, ms};
use egressc::proxy::{Gate, Proxy, ProxyConfig, Refusal, StatsSnapshot};
use egressc::resolve::ResolvedAddr;
use support::{Unbound, dns_packet, free_port, rcode, rr};

const NAMES: usize = 1000;
const LATENCY_QUERIES: usize = 3000;
const CLIENTS: usize = 16;
const QUERIES_PER_CLIENT: usize = 2500;
const RUNS: usize = 5;

/// Allows the bench's names; learns nothing.
struct NoopGate {
    allowed: HashSet<String>,
}

impl Gate for NoopGate {
    fn allows(&self, name: &str) -> bool {
        self.allowed.contains(name)
    }

    fn learn(&self, _name: &str, _addrs: &[ResolvedAddr]) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(feature = "netlink")]
mod nft {
    //! A gate that writes to a real nftables set, as `egressc watch`'s will.

    use std::collections::HashSet;
    use std::net::IpAddr;
    use std::sync::Mutex;

    use egressc::backend::netlink::raw::{NlSocket, Object, put_message, strv, u64v};
    use egressc::proxy::Gate;
    use egressc::resolve::ResolvedAddr;
    use nftnl_sys as sys;

    use super::support::Netns;

    pub const TABLE: &str = "proxybench";

    pub struct NftGate {
        pub allowed: HashSet<String>,
        /// One socket, one batch at a time (its acks are read by whoever sent).
        sock: Mutex<(NlSocket, u32)>,
    }

    impl NftGate {
        /// Creates table inet proxybench with sets v4 and v6 (flag timeout) in
        /// `ns`, and a netlink socket there.
        pub fn new(ns: &Netns, allowed: HashSet<String>) -> NftGate {
            ns.exec_ok("nft", &["add", "table", "inet", TABLE]);
            for (set, ty) in [("v4", "ipv4_addr"), ("v6", "ipv6_addr")] {
                let spec = format!("{{ type {ty}; flags timeout; }}");
                ns.exec_ok("nft", &["add", "set", "inet", TABLE, set, &spec]);
            }
            let sock = ns.run(|| NlSocket::open().expect("netlink socket"));
            NftGate {
                allowed,
                sock: Mutex::new((sock, 1)),
            }
        }
    }

    fn batch_marker(out: &mut Vec<u8>, msg_type: u16, seq: u32) {
        out.extend_from_slice(&20u32.to_ne_bytes());
        out.extend_from_slice(&msg_type.to_ne_bytes());
        out.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
        out.extend_from_slice(&(libc::NFNL_SUBSYS_NFTABLES as u16).to_be_bytes());
    }

    impl Gate for NftGate {
        fn allows(&self, name: &str) -> bool {
            self.allowed.contains(name)
        }

        fn learn(&self, _name: &str, addrs: &[ResolvedAddr]) -> Result<(), String> {
            let mut guard = self.sock.lock().map_err(|_| "poisoned".to_string())?;
            let (sock, seq) = &mut *guard;
            let mut batch = Vec::new();
            batch_marker(&mut batch, libc::NFNL_MSG_BATCH_BEGIN as u16, *seq);
            let mut acks = Vec::new();
            for (set, v6) in [("v4", false), ("v6", true)] {
                let elements: Vec<Vec<(u32, Vec<u8>)>> = addrs
                    .iter()
                    .filter(|a| a.addr.is_ipv6() == v6)
                    .map(|a| {
                        let key = match a.addr {
                            IpAddr::V4(ip) => ip.octets().to_vec(),
                            IpAddr::V6(ip) => ip.octets().to_vec(),
                        };
                        let timeout_ms = u64::from(a.ttl.max(1)) * 1000;
                        vec![
                            (sys::NFTNL_SET_ELEM_KEY, key),
                            (sys::NFTNL_SET_ELEM_TIMEOUT, u64v(timeout_ms)),
                        ]
                    })
                    .collect();
                if elements.is_empty() {
                    continue;
                }
                let ident = vec![
                    (
                        sys::NFTNL_SET_TABLE,
                        strv(TABLE).map_err(|e| e.to_string())?,
                    ),
                    (sys::NFTNL_SET_NAME, strv(set).map_err(|e| e.to_string())?),
                ];
                *seq = seq.wrapping_add(1);
                put_message(
                    &mut batch,
                    libc::NFT_MSG_NEWSETELEM as u16,
                    libc::NFPROTO_INET as u16,
                    (libc::NLM_F_REQUEST | libc::NLM_F_CREATE | libc::NLM_F_ACK) as u16,
                    *seq,
                    &Object::Elements {
                        set: &ident,
                        elements: &elements,
                    },
                )
                .map_err(|e| e.to_string())?;
                acks.push(*seq);
            }
            *seq = seq.wrapping_add(1);
            batch_marker(&mut batch, libc::NFNL_MSG_BATCH_END as u16, *seq);
            *seq = seq.wrapping_add(1);
            sock.send(&batch).map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 8192];
            while !acks.is_empty() {
                let n = sock
                    .recv(&mut buf, true)
                    .map_err(|e| e.to_string())?
                    .ok_or("no ack")?;
                let mut at = 0;
                while at + 16 <= n {
                    let word =
                        |o: usize| u32::from_ne_bytes(buf[at + o..at + o + 4].try_into().unwrap());
                    let (len, ty, ack_seq) = (word(0) as usize, word(4) & 0xffff, word(8));
                    if ty == libc::NLMSG_ERROR as u32 && at + 20 <= n {
                        let errno = word(16) as i32;
                        if errno != 0 {
                            return Err(format!(
                                "NEWSETELEM: {}",
                                std::io::Error::from_raw_os_error(-errno)
                            ));
                        }
                        acks.retain(|&s| s != ack_seq);
                    }
                    if len < 16 {
                        break;
                    }
                    at += (len + 3) & !3;
                }
            }
            Ok(())
        }
    }
}

/// A proxy on its own runtime (as `egressc watch` would run it), for the rest
/// of the process.
fn start_proxy(
    upstream: SocketAddr,
    gate: Arc<dyn Gate>,
) -> (SocketAddr, Arc<egressc::proxy::Stats>) {
    let config = ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstreams: vec![upstream],
        mark: None,
        refusal: Refusal::Refused,
        upstream_timeout: Duration::from_secs(2),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let proxy = Proxy::bind(config, gate).await.expect("bind the proxy");
            tx.send((proxy.local_addr().unwrap(), proxy.stats()))
                .unwrap();
            proxy.run(std::future::pending()).await;
        });
    });
    rx.recv().unwrap()
}

/// One client: `count` queries, one after the other, on one socket, for
/// names from `first` on. Returns each query's round trip.
fn client(server: SocketAddr, packets: &[Vec<u8>], first: usize, count: usize) -> Vec<Duration> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock.connect(server).unwrap();
    let mut buf = [0u8; 4096];
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        let mut packet = packets[(first + i) % packets.len()].clone();
        let id = (i as u16).to_be_bytes();
        packet[..2].copy_from_slice(&id);
        let sent = Instant::now();
        sock.send(&packet).unwrap();
        loop {
            let n = sock.recv(&mut buf).expect("an answer within 2 s");
            if buf[..2] == id {
                assert_eq!(rcode(&buf[..n]), 0, "query {i} failed");
                break;
            }
        }
        times.push(sent.elapsed());
    }
    times
}

/// CLIENTS clients at once; queries per second over all of them.
fn throughput(server: SocketAddr, packets: &Arc<Vec<Vec<u8>>>) -> f64 {
    let start = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let packets = packets.clone();
            std::thread::spawn(move || {
                client(server, &packets, c * QUERIES_PER_CLIENT, QUERIES_PER_CLIENT)
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    (CLIENTS * QUERIES_PER_CLIENT) as f64 / start.elapsed().as_secs_f64()
}

fn percentile(mut xs: Vec<Duration>, p: f64) -> Duration {
    xs.sort();
    xs[((xs.len() as f64 * p) as usize).min(xs.len() - 1)]
}

/// egressc's own gate over a proxy-mode table (`*.bench.test`, port 443)
/// applied through netlink in `ns`.
#[cfg(feature = "netlink")]
fn policy_gate(ns: &support::Netns) -> Arc<egressc::apply::learn::PolicyGate> {
    let yaml = "version: 1\ndns:\n  resolvers: [127.0.0.1]\n  proxy:\n    listen: 127.0.0.53\nallow:\n  - host: \"*.bench.test\"\n    ports: [443]\n";
    let policy = egressc::policy::load_bytes(yaml.as_bytes(), "bench.yaml", Default::default())
        .expect("the bench policy is valid")
        .policy;
    let resolution = egressc::resolve::Resolution {
        lock_format: egressc::resolve::LOCK_FORMAT,
        policy_sha256: policy.source_hash.clone(),
        resolved_at: "2026-01-01T00:00:00Z".into(),
        resolvers: policy.dns.resolvers.clone(),
        port: 53,
        hosts: Default::default(),
    };
    let ruleset = egressc::ir::lower::lower(&policy, &resolution).expect("lowers");
    let gate = ns.run(move || {
        egressc::backend::netlink::apply(&ruleset).expect("the proxy-mode table applies");
        egressc::apply::learn::PolicyGate::new(policy, ruleset, Duration::from_secs(300))
            .expect("the gate opens")
    });
    Arc::new(gate)
}

/// `gate`, or a no-op gate allowing `names` where egressc's cannot run.
fn gate_or_noop(gate: Option<Arc<dyn Gate>>, names: &[String]) -> Arc<dyn Gate> {
    gate.unwrap_or_else(|| {
        Arc::new(NoopGate {
            allowed: names.iter().cloned().collect(),
        })
    })
}

fn main() {
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let names: Vec<String> = (0..NAMES).map(|i| format!("h{i}.bench.test")).collect();
    let records: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| rr(n, 300, "A", &format!("10.{}.{}.1", i / 250, i % 250)))
        .collect();
    let dns = Unbound::start(&[lo], free_port(lo), &["test"], &records, None);
    let unbound = dns.addrs[0];
    let allowed: HashSet<String> = names.iter().cloned().collect();
    let packets: Arc<Vec<Vec<u8>>> = Arc::new(names.iter().map(|n| dns_packet(n, 1)).collect());

    // Keeps the namespace (and the set the gate writes to) alive.
    #[cfg(feature = "netlink")]
    let mut nft_ns = None;
    let gate: Arc<dyn Gate>;
    let gate_says;
    #[cfg(feature = "netlink")]
    {
        if unsafe { libc::geteuid() } == 0 {
            let ns = support::Netns::new("proxybench");
            gate = Arc::new(nft::NftGate::new(&ns, allowed.clone()));
            nft_ns = Some(ns);
            gate_says = "nft gate: one NEWSETELEM batch per answer (timeout = TTL) into a set in a namespace, acked";
        } else {
            gate = Arc::new(NoopGate {
                allowed: allowed.clone(),
            });
            gate_says = "NOTICE: not root, the gate learns nothing";
        }
    }
    #[cfg(not(feature = "netlink"))]
    {
        gate = Arc::new(NoopGate {
            allowed: allowed.clone(),
        });
        gate_says = "NOTICE: built without netlink, the gate learns nothing";
    }
    let (proxy, stats) = start_proxy(unbound, gate);
    let (noop_proxy, _) = start_proxy(unbound, Arc::new(NoopGate { allowed }));
    println!("{gate_says}");
    // egressc's own gate, when it can run (root, netlink); else the no-op one
    // stands in and the row says so.
    #[cfg(feature = "netlink")]
    let egressc_ns = (unsafe { libc::geteuid() } == 0).then(|| support::Netns::new("proxygate"));
    #[cfg(feature = "netlink")]
    let own_gate: Option<Arc<dyn Gate>> = egressc_ns.as_ref().map(|ns| {
        let g: Arc<dyn Gate> = policy_gate(ns);
        g
    });
    #[cfg(not(feature = "netlink"))]
    let own_gate: Option<Arc<dyn Gate>> = None;
    let own_label = if own_gate.is_some() {
        "proxy (PolicyGate)"
    } else {
        "proxy (no PolicyGate)"
    };
    let (own_proxy, _) = start_proxy(unbound, gate_or_noop(own_gate, &names));

    // Warm up all paths (unbound's answers, sockets, the set's hash table).
    for server in [unbound, proxy, noop_proxy, own_proxy] {
        client(server, &packets, 0, NAMES);
    }

    // (a) Latency: one query at a time, the three paths interleaved query by
    // query so that drift in the machine's load hits them alike.
    let (mut direct, mut through, mut through_noop, mut through_own) =
        (vec![], vec![], vec![], vec![]);
    for i in 0..LATENCY_QUERIES {
        direct.extend(client(unbound, &packets, i, 1));
        through.extend(client(proxy, &packets, i, 1));
        through_noop.extend(client(noop_proxy, &packets, i, 1));
        through_own.extend(client(own_proxy, &packets, i, 1));
    }
    println!(
        "\nlatency: {LATENCY_QUERIES} sequential A queries (UDP, {NAMES} names, the proxy has no cache)"
    );
    println!(
        "{:>22}  {:>10}  {:>10}  {:>16}",
        "", "median ms", "p90 ms", "added median ms"
    );
    let base = median(direct.clone());
    for (label, xs) in [
        ("unbound alone", &direct),
        ("proxy (gate above)", &through),
        ("proxy (no-op gate)", &through_noop),
        (own_label, &through_own),
    ] {
        let m = median(xs.clone());
        println!(
            "{label:>22}  {:>10.3}  {:>10.3}  {:>16.3}",
            ms(m),
            ms(percentile(xs.clone(), 0.9)),
            ms(m) - ms(base)
        );
    }

    // (b) Throughput: CLIENTS clients, each one query outstanding; median of
    // RUNS, the three alternated every round.
    let (mut q_direct, mut q_proxy, mut q_noop, mut q_own) = (vec![], vec![], vec![], vec![]);
    for _ in 0..RUNS {
        q_direct.push(throughput(unbound, &packets));
        q_proxy.push(throughput(proxy, &packets));
        q_noop.push(throughput(noop_proxy, &packets));
        q_own.push(throughput(own_proxy, &packets));
    }
    let med = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let (d, p, n, o) = (med(q_direct), med(q_proxy), med(q_noop), med(q_own));
    println!(
        "\nthroughput: {CLIENTS} clients x {QUERIES_PER_CLIENT} queries, median of {RUNS} runs"
    );
    println!("{:>22}  {:>10}  {:>14}", "", "queries/s", "vs unbound");
    for (label, q) in [
        ("unbound alone", d),
        ("proxy (gate above)", p),
        ("proxy (no-op gate)", n),
        (own_label, o),
    ] {
        println!("{label:>22}  {q:>10.0}  {:>14.2}", q / d);
    }

    let s: StatsSnapshot = stats.snapshot();
    println!(
        "\nproxy counters: {} queries, {} forwarded, {} failed, {} addresses learned",
        s.queries, s.forwarded, s.failed, s.learned
    );
    assert_eq!(s.failed, 0);
    assert_eq!(s.learned, s.forwarded, "one address per answer");
    #[cfg(feature = "netlink")]
    if let Some(ns) = &nft_ns {
        let listing = ns.exec_ok("nft", &["list", "set", "inet", nft::TABLE, "v4"]);
        let elements = listing.matches("expires").count();
        println!("the nft set holds {elements} addresses (with timeouts)");
        assert_eq!(elements, NAMES, "every name's address is in the set");
    }
    #[cfg(feature = "netlink")]
    if let Some(ns) = &egressc_ns {
        let listing = ns.exec_ok("nft", &["list", "set", "inet", "egressc", "proxy_v4"]);
        let elements = listing.matches("expires").count();
        println!("egressc's proxy_v4 holds {elements} addresses (with timeouts)");
        assert_eq!(elements, NAMES, "every name's address is in proxy_v4");
    }
}
