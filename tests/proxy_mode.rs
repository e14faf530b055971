//! Proxy mode end to end: `egressc watch` with `dns.proxy` in a client
//! namespace, a real unbound (the pinned resolver) and TCP servers in a server
//! namespace, real queries and real connections from the client.
//!
//! What it proves (issue 4, item 4): an allowed name resolves through the proxy
//! and connects; a wildcard sub-name works, on the first SYN after the answer;
//! a name outside the allow list is REFUSED and logged; the workload's own DNS
//! to the upstream resolver is dropped; an address the proxy never returned is
//! dropped; an answer with 120 addresses is usable in full; the learned
//! elements carry TTL + grace; SIGTERM stops watch and leaves the rules.

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::{EGRESSC, Netns, Unbound, dns_query_tcp, dns_query_udp, rcode, rr, write_file};

const CLIENT: &str = "10.89.0.1";
const RESOLVER: &str = "10.89.0.53";
/// api.proxy.test (an exact host entry).
const API: &str = "10.89.0.10";
/// x.cdn.proxy.test (under the wildcard entry).
const CDN: &str = "10.89.0.20";
/// not.allowed.test: the resolver knows it, the policy does not.
const OTHER: &str = "10.89.0.30";
/// Serves port 443 but no name points at it.
const NEVER: &str = "10.89.0.40";
const PROXY: &str = "127.0.0.53";
/// Records' TTL and watch's grace: learned elements live TTL + grace.
const TTL: u32 = 30;
const GRACE: u64 = 7;
const BIG: usize = 120;
const PROBE: Duration = Duration::from_millis(700);

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// 10.89.1.1 …: the addresses of big.cdn.proxy.test.
fn big_addr(i: usize) -> String {
    format!("10.89.1.{}", i + 1)
}

/// 10.89.2.1 …: n<i>.cdn.proxy.test, one name per address.
fn race_addr(i: usize) -> String {
    format!("10.89.2.{}", i + 1)
}

struct World {
    client: Netns,
    _server: Netns,
    _dns: Unbound,
    dir: tempfile::TempDir,
    watch: Option<Child>,
    log: PathBuf,
}

/// Accepts and immediately drops connections on `0.0.0.0:443` in `ns`: a
/// completed handshake is what the probes look for.
fn accept_all(ns: &Netns) {
    let listener = ns.run(|| TcpListener::bind("0.0.0.0:443").unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
}

fn world() -> World {
    let client = Netns::new("pxclient");
    let server = Netns::new("pxserver");
    let server_addrs: Vec<String> = [RESOLVER, API, CDN, OTHER, NEVER]
        .iter()
        .map(|a| format!("{a}/16"))
        .collect();
    let refs: Vec<&str> = server_addrs.iter().map(String::as_str).collect();
    support::veth_pair(&client, &[&format!("{CLIENT}/16")], &server, &refs);
    // The 10.89.1.0/24 and 10.89.2.0/24 addresses all belong to the server
    // (a local route answers for every address in them); the client routes
    // them through the resolver's address, so no per-address ARP is needed.
    for net in ["10.89.1.0/24", "10.89.2.0/24"] {
        server.exec_ok("ip", &["route", "add", "local", net, "dev", "lo"]);
        client.exec_ok("ip", &["route", "add", net, "via", RESOLVER]);
    }
    accept_all(&server);

    let mut records = vec![
        rr("api.proxy.test", TTL, "A", API),
        rr("x.cdn.proxy.test", TTL, "A", CDN),
        rr("not.allowed.test", TTL, "A", OTHER),
    ];
    records.extend((0..BIG).map(|i| rr("big.cdn.proxy.test", TTL, "A", &big_addr(i))));
    records.extend((0..10).map(|i| rr(&format!("n{i}.cdn.proxy.test"), TTL, "A", &race_addr(i))));
    let dns = Unbound::start(
        &[RESOLVER.parse().unwrap()],
        53,
        &["proxy.test", "allowed.test"],
        &records,
        Some(&server),
    );

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("watch.log");
    let w = World {
        client,
        _server: server,
        _dns: dns,
        dir,
        watch: None,
        log,
    };
    // Everything is reachable before any firewall exists.
    for ip in [API, CDN, OTHER, NEVER, &big_addr(0), &race_addr(0)] {
        assert!(w.connects(ip), "the test network is down: {ip}");
    }
    w
}

/// The allow list of the main test: an exact host and a wildcard.
const BOTH_ENTRIES: &str = "  - host: api.proxy.test\n    ports: [443]\n  - host: \"*.cdn.proxy.test\"\n    ports: [443]\n";

impl World {
    fn policy(&self, allow: &str) -> PathBuf {
        write_file(
            self.dir.path(),
            "policy.yaml",
            &format!(
                "version: 1\nname: proxy-e2e\ndefault: deny\ndns:\n  resolvers: [{RESOLVER}]\n  proxy:\n    listen: {PROXY}\nlog:\n  prefix: \"egress-denied \"\nallow:\n{allow}"
            ),
        )
    }

    /// Starts `egressc watch` on a policy allowing `allow` (with `extra`
    /// arguments) and waits until the proxy answers.
    fn start_watch(&mut self, allow: &str, extra: &[&str]) {
        let policy = self.policy(allow);
        let child = self
            .client
            .command(EGRESSC)
            .env("EGRESSC_STATE_DIR", self.dir.path().join("state"))
            .args([
                "watch",
                policy.to_str().unwrap(),
                "--grace",
                &GRACE.to_string(),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .spawn()
            .expect("start egressc watch");
        self.watch = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.query_udp("x.cdn.proxy.test").is_none() {
            if let Some(status) = self.watch.as_mut().unwrap().try_wait().unwrap() {
                panic!("watch exited with {status}: {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "the proxy never answered: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn query_udp(&self, name: &str) -> Option<Vec<u8>> {
        self.query_udp_to(sa(PROXY, 53), name)
    }

    fn query_udp_to(&self, server: SocketAddr, name: &str) -> Option<Vec<u8>> {
        let name = name.to_string();
        self.client
            .run(move || dns_query_udp(server, &name, 1, Duration::from_millis(700)))
    }

    fn query_tcp_to(&self, server: SocketAddr, name: &str) -> Option<Vec<u8>> {
        let name = name.to_string();
        self.client
            .run(move || dns_query_tcp(server, &name, 1, Duration::from_millis(700)))
    }

    fn connects(&self, ip: &str) -> bool {
        let addr = sa(ip, 443);
        self.client
            .run(move || TcpStream::connect_timeout(&addr, PROBE).is_ok())
    }

    /// The learned IPv4 set: `(address, timeout in s)` per element.
    fn learned(&self) -> Vec<(String, u64)> {
        let out = self
            .client
            .exec_ok("nft", &["-j", "list", "set", "inet", "egressc", "proxy_v4"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut found = Vec::new();
        for item in v["nftables"].as_array().unwrap() {
            for e in item["set"]["elem"].as_array().into_iter().flatten() {
                let e = &e["elem"];
                let addr = e["val"]["concat"][0].as_str().unwrap().to_string();
                found.push((addr, e["timeout"].as_u64().unwrap()));
            }
        }
        found
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut child) = self.watch.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// ANCOUNT: how many answer records a DNS response holds.
fn answers(response: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([response[6], response[7]]))
}

fn truncated(response: &[u8]) -> bool {
    response[2] & 0x02 != 0
}

#[test]
fn proxy_mode_opens_exactly_what_it_answered_and_closes_dns() {
    if !support::kernel_available("proxy_mode_opens_exactly_what_it_answered_and_closes_dns") {
        return;
    }
    let mut w = world();
    w.start_watch(BOTH_ENTRIES, &[]);

    // An exact host: resolved through the proxy, and it connects.
    let r = w.query_udp("api.proxy.test").expect("the proxy answers");
    assert_eq!((rcode(&r), answers(&r)), (0, 1));
    assert!(w.connects(API));

    // A wildcard sub-name: open only once the proxy answered it (the readiness
    // probe asked x.cdn.proxy.test; a sibling name is still closed).
    assert!(
        !w.connects(&race_addr(9)),
        "an unanswered wildcard address is open"
    );
    let r = w.query_udp("x.cdn.proxy.test").expect("the proxy answers");
    assert_eq!((rcode(&r), answers(&r)), (0, 1));
    assert!(w.connects(CDN));
    // Its element lives for TTL + grace.
    let cdn = w
        .learned()
        .into_iter()
        .find(|(a, _)| a == CDN)
        .expect("the answered address is in proxy_v4");
    assert_eq!(cdn.1, u64::from(TTL) + GRACE);

    // The first SYN after the answer gets through: the elements are in the
    // kernel before the answer leaves the proxy. A dropped SYN would be
    // retransmitted only after 1 s.
    for i in 0..10 {
        let name = format!("n{i}.cdn.proxy.test");
        let addr = sa(&race_addr(i), 443);
        let took = w.client.run(move || {
            let r = dns_query_udp(sa(PROXY, 53), &name, 1, Duration::from_secs(2))
                .expect("the proxy answers");
            assert_eq!(rcode(&r), 0);
            let start = Instant::now();
            TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("connects");
            start.elapsed()
        });
        assert!(
            took < Duration::from_millis(500),
            "n{i}: the first SYN was dropped (connect took {took:?})"
        );
    }

    // A name outside the allow list: REFUSED, logged, and its address closed.
    let r = w.query_udp("not.allowed.test").expect("the proxy answers");
    assert_eq!(rcode(&r), 5, "REFUSED");
    assert_eq!(answers(&r), 0);
    let r = w
        .query_tcp_to(sa(PROXY, 53), "secret-data.not.allowed.test")
        .expect("the proxy answers over TCP too");
    assert_eq!(rcode(&r), 5);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !w.log_text().contains("not.allowed.test") {
        assert!(
            Instant::now() < deadline,
            "the refusal is not logged: {}",
            w.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!w.connects(OTHER));

    // The workload's own DNS to the upstream resolver is dropped, UDP and TCP.
    assert!(w.query_udp_to(sa(RESOLVER, 53), "api.proxy.test").is_none());
    assert!(w.query_tcp_to(sa(RESOLVER, 53), "api.proxy.test").is_none());

    // An address the proxy never returned stays closed.
    assert!(!w.connects(NEVER));
    assert!(!w.connects(&big_addr(0)), "answered before it was asked");

    // 120 addresses: over UDP the answer does not fit (TC), over TCP it comes
    // whole, and every one of the addresses connects.
    let r = w
        .query_udp("big.cdn.proxy.test")
        .expect("the proxy answers");
    assert_eq!(rcode(&r), 0);
    assert!(
        truncated(&r) || answers(&r) == BIG,
        "UDP answer neither truncated nor whole: {} answers",
        answers(&r)
    );
    let r = w
        .query_tcp_to(sa(PROXY, 53), "big.cdn.proxy.test")
        .expect("the proxy answers over TCP");
    assert_eq!((rcode(&r), answers(&r)), (0, BIG));
    let learned = w.learned();
    for i in 0..BIG {
        let a = big_addr(i);
        assert!(learned.iter().any(|(l, _)| *l == a), "{a} was not learned");
    }
    let unreachable: Vec<String> = (0..BIG).map(big_addr).filter(|a| !w.connects(a)).collect();
    assert!(unreachable.is_empty(), "not reachable: {unreachable:?}");

    // SIGTERM: watch stops cleanly and the rules stay (fail closed).
    let mut child = w.watch.take().unwrap();
    let pid = child.id() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "watch ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "watch exited with {status}: {}",
        w.log_text()
    );
    assert!(!w.connects(NEVER), "the rules left with watch");
    assert!(w.connects(API), "the applied rules left with watch");
}

/// With only wildcards no host is ever due, yet watch must still notice a
/// table deleted behind its back and load it again (fail closed), and the
/// proxy must keep opening what it answers in the new table.
#[test]
fn a_wildcard_only_watch_reloads_a_deleted_table() {
    if !support::kernel_available("a_wildcard_only_watch_reloads_a_deleted_table") {
        return;
    }
    let mut w = world();
    w.start_watch(
        "  - host: \"*.cdn.proxy.test\"\n    ports: [443]\n",
        &["--min-interval", "1"],
    );
    assert!(w.connects(CDN));
    assert!(!w.connects(NEVER));
    w.client
        .exec_ok("nft", &["delete", "table", "inet", "egressc"]);
    assert!(w.connects(NEVER), "the test did not open egress");
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.connects(NEVER) {
        assert!(
            Instant::now() < deadline,
            "the deleted table was not loaded again: {}",
            w.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The gate adopts the reloaded table: an answer opens its address again.
    assert!(
        !w.connects(CDN),
        "the reloaded table kept a learned element"
    );
    let r = w.query_udp("x.cdn.proxy.test").expect("the proxy answers");
    assert_eq!(rcode(&r), 0);
    assert!(w.connects(CDN), "{}", w.log_text());
}
