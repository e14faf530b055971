//! Resolving 1,000 hosts (A and AAAA: 2,000 queries) through a local unbound, vs a
//! minimal raw DNS client with the same concurrency against the same server in the
//! same run (the peer: what the server and the loopback path allow).
//! Target: egressc ≥ 10,000 queries/s on this machine.
//!
//! `cargo bench --bench resolve`

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{median, ms};
use egressc::policy::model::HostName;
use egressc::resolve::dns::{ResolveOptions, Transport, resolve_names};
use support::{Unbound, dns_query_tcp, dns_query_udp, free_port, rr};

const HOSTS: usize = 1000;
const RUNS: usize = 5;

fn raw_client(server: SocketAddr, names: &[String], concurrency: usize, tcp: bool) -> Duration {
    let names = Arc::new(names.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (names, next) = (names.clone(), next.clone());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(name) = names.get(i) else { break };
                    for qtype in [1, 28] {
                        let answer = if tcp {
                            dns_query_tcp(server, name, qtype, Duration::from_secs(2))
                        } else {
                            dns_query_udp(server, name, qtype, Duration::from_secs(2))
                        };
                        assert!(answer.is_some(), "raw client: no answer for {name}");
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    start.elapsed()
}

fn main() {
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let port = free_port(lo);
    let names: Vec<String> = (0..HOSTS).map(|i| format!("h{i}.bench.test")).collect();
    let records: Vec<String> = (0..HOSTS)
        .flat_map(|i| {
            [
                rr(
                    &names[i],
                    300,
                    "A",
                    &format!("10.{}.{}.1", i / 250, i % 250),
                ),
                rr(&names[i], 300, "AAAA", &format!("2001:db8::{i:x}")),
            ]
        })
        .collect();
    let dns = Unbound::start(&[lo], port, &["test"], &records, None);
    let server = dns.addrs[0];
    let hosts: Vec<HostName> = names.iter().map(|n| HostName::parse(n).unwrap()).collect();
    let queries = (HOSTS * 2) as f64;

    println!(
        "resolving {HOSTS} hosts ({} queries) against a local unbound, median of {RUNS} runs",
        HOSTS * 2
    );
    println!(
        "{:>9}  {:>11}  {:>10}  {:>11}  {:>10}  {:>6}",
        "transport", "egressc ms", "egressc q/s", "raw ms", "raw q/s", "ratio"
    );
    for transport in [Transport::Udp, Transport::Tcp] {
        let options = ResolveOptions {
            transport,
            ..ResolveOptions::default()
        };
        let (mut ours, mut raw) = (vec![], vec![]);
        for _ in 0..RUNS {
            let start = Instant::now();
            let answers = resolve_names(&hosts, &[server], &options).expect("resolve");
            ours.push(start.elapsed());
            assert!(
                answers
                    .iter()
                    .all(|a| a.as_ref().is_ok_and(|a| a.addresses.len() == 2)),
                "a lookup failed"
            );
            raw.push(raw_client(
                server,
                &names,
                options.concurrency,
                transport == Transport::Tcp,
            ));
        }
        let (o, r) = (median(ours), median(raw));
        println!(
            "{:>9}  {:>11.1}  {:>10.0}  {:>11.1}  {:>10.0}  {:>6.2}",
            format!("{transport:?}").to_lowercase(),
            ms(o),
            queries / o.as_secs_f64(),
            ms(r),
            queries / r.as_secs_f64(),
            (queries / o.as_secs_f64()) / (queries / r.as_secs_f64()),
        );
    }
}
