//! Resolution through the pinned resolvers, against a real unbound on loopback.
//!
//! Every test starts its own unbound (static local zones, so a name under a zone
//! with no data is NXDOMAIN) on a port of its own, or binds sockets that never
//! answer. Nothing is mocked: hickory talks to real servers over real UDP and TCP.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use egressc::policy::model::HostName;
use egressc::policy::{Policy, TargetFormat, load_bytes};
use egressc::resolve::HostAnswer;
use egressc::resolve::dns::{
    FailureReason, HostFailure, ResolveError, ResolveOptions, Transport, resolve, resolve_names,
};
use support::{Unbound, dns_packet, free_port, rr};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn policy_yaml(yaml: &str) -> Policy {
    load_bytes(yaml.as_bytes(), "test.yaml", TargetFormat::Nft)
        .unwrap_or_else(|e| panic!("valid policy expected: {e}\n{yaml}"))
        .policy
}

/// A policy pinned to 127.0.0.1:`port` allowing `hosts` (`name` or `name?` for an
/// optional entry) on port 443.
fn policy_for(port: u16, hosts: &[&str]) -> Policy {
    let mut yaml = format!("version: 1\ndns:\n  resolvers: [127.0.0.1]\n  port: {port}\nallow:\n");
    for h in hosts {
        match h.strip_suffix('?') {
            Some(h) => yaml.push_str(&format!(
                "  - host: {h}\n    ports: [443]\n    optional: true\n"
            )),
            None => yaml.push_str(&format!("  - host: {h}\n    ports: [443]\n")),
        }
    }
    policy_yaml(&yaml)
}

fn host(name: &str) -> HostName {
    HostName::parse(name).unwrap()
}

fn answer<'a>(resolved: &'a egressc::resolve::dns::Resolved, name: &str) -> &'a HostAnswer {
    resolved
        .resolution
        .hosts
        .get(&host(name))
        .unwrap_or_else(|| panic!("{name} missing from {:?}", resolved.resolution))
}

/// `addr/ttl` for every address, in the order the resolution holds them.
fn addr_ttls(answer: &HostAnswer) -> Vec<String> {
    answer
        .addresses
        .iter()
        .map(|a| format!("{}/{}", a.addr, a.ttl))
        .collect()
}

fn addrs(answer: &HostAnswer) -> Vec<IpAddr> {
    answer.addresses.iter().map(|a| a.addr).collect()
}

/// Quick options for tests that expect answers from a local server.
fn fast() -> ResolveOptions {
    ResolveOptions {
        timeout: Duration::from_secs(2),
        attempts: 2,
        ..ResolveOptions::default()
    }
}

fn failures(err: ResolveError) -> Vec<HostFailure> {
    match err {
        ResolveError::Failed(f) => f,
        other => panic!("expected ResolveError::Failed, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Raw DNS helpers: enough of the wire format to see what the server itself sent.

/// A query like `support::dns_packet`, plus an EDNS0 OPT record advertising a
/// `payload`-byte UDP buffer (hickory advertises EDNS too).
fn edns_packet(name: &str, qtype: u16, payload: u16) -> Vec<u8> {
    let mut p = dns_packet(name, qtype);
    p[11] = 1; // ARCOUNT = 1
    p.push(0); // root name
    p.extend_from_slice(&41u16.to_be_bytes()); // OPT
    p.extend_from_slice(&payload.to_be_bytes()); // "class" = UDP payload size
    p.extend_from_slice(&0u32.to_be_bytes()); // extended rcode, version, flags
    p.extend_from_slice(&0u16.to_be_bytes()); // rdlen
    p
}

fn udp_exchange(server: SocketAddr, packet: &[u8]) -> Vec<u8> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock.send_to(packet, server).unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = sock
        .recv_from(&mut buf)
        .expect("the server answers over UDP");
    buf.truncate(n);
    buf
}

fn skip_name(msg: &[u8], mut at: usize) -> usize {
    loop {
        let len = msg[at];
        if len & 0xc0 == 0xc0 {
            return at + 2;
        }
        at += 1;
        if len == 0 {
            return at;
        }
        at += len as usize;
    }
}

fn answer_count(msg: &[u8]) -> u16 {
    u16::from_be_bytes([msg[6], msg[7]])
}

fn truncated(msg: &[u8]) -> bool {
    msg[2] & 0x02 != 0
}

/// The A records of the answer section, in the order the server sent them.
fn a_records_in_order(msg: &[u8]) -> Vec<Ipv4Addr> {
    let mut at = skip_name(msg, 12) + 4; // the question
    let mut out = Vec::new();
    for _ in 0..answer_count(msg) {
        at = skip_name(msg, at);
        let rtype = u16::from_be_bytes([msg[at], msg[at + 1]]);
        let rdlen = u16::from_be_bytes([msg[at + 8], msg[at + 9]]) as usize;
        let rdata = &msg[at + 10..at + 10 + rdlen];
        if rtype == 1 {
            out.push(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]));
        }
        at += 10 + rdlen;
    }
    out
}

// ---------------------------------------------------------------------------

#[test]
fn a_and_aaaa_are_resolved_with_their_ttls_through_a_cname_chain() {
    let port = free_port(LO);
    let _dns = Unbound::start(
        &[LO],
        port,
        &["test"],
        &[
            rr("www.test", 300, "CNAME", "edge.test."),
            rr("edge.test", 30, "A", "192.0.2.1"),
            rr("edge.test", 30, "AAAA", "2001:db8::1"),
        ],
        None,
    );
    let policy = policy_for(port, &["www.test"]);
    let resolved = resolve(&policy, &ResolveOptions::default()).expect("resolves");
    let answer = answer(&resolved, "www.test");
    assert_eq!(addr_ttls(answer), ["192.0.2.1/30", "2001:db8::1/30"]);
    assert_eq!(answer.cnames, ["edge.test"]);
}

#[test]
fn a_cname_chain_of_several_links_is_followed_and_the_smallest_ttl_wins() {
    let port = free_port(LO);
    let _dns = Unbound::start(
        &[LO],
        port,
        &["test"],
        &[
            // The middle link has the smallest TTL: the final answer may be trusted
            // only as long as the weakest link of the chain.
            rr("start.test", 3600, "CNAME", "middle.test."),
            rr("middle.test", 45, "CNAME", "last.test."),
            rr("last.test", 600, "CNAME", "target.test."),
            rr("target.test", 900, "A", "192.0.2.77"),
            rr("target.test", 900, "AAAA", "2001:db8::77"),
            // A second chain whose final records are the shortest-lived.
            rr("other.test", 3600, "CNAME", "other-edge.test."),
            rr("other-edge.test", 3000, "CNAME", "other-final.test."),
            rr("other-final.test", 20, "A", "198.51.100.20"),
        ],
        None,
    );
    let policy = policy_for(port, &["start.test", "other.test"]);
    let resolved = resolve(&policy, &fast()).expect("resolves");

    let start = answer(&resolved, "start.test");
    assert_eq!(addr_ttls(start), ["192.0.2.77/45", "2001:db8::77/45"]);
    assert_eq!(start.cnames, ["middle.test", "last.test", "target.test"]);

    let other = answer(&resolved, "other.test");
    assert_eq!(addr_ttls(other), ["198.51.100.20/20"]);
    assert_eq!(other.cnames, ["other-edge.test", "other-final.test"]);
    assert!(resolved.skipped.is_empty());
}

#[test]
fn nxdomain_for_a_required_host_fails_naming_that_host() {
    let port = free_port(LO);
    let _dns = Unbound::start(
        &[LO],
        port,
        &["test"],
        &[rr("good.test", 300, "A", "192.0.2.1")],
        None,
    );
    let policy = policy_for(port, &["good.test", "missing.test"]);
    let err = resolve(&policy, &fast()).expect_err("a required NXDOMAIN host must fail");
    let message = err.to_string();
    let failures = failures(err);
    assert_eq!(
        failures,
        [HostFailure {
            host: host("missing.test"),
            reason: FailureReason::NoSuchName,
        }],
        "only the missing host fails, and as NXDOMAIN"
    );
    assert!(message.contains("missing.test"), "{message}");
    assert!(!message.contains("good.test"), "{message}");
}

#[test]
fn nxdomain_for_an_optional_host_is_skipped_and_recorded_as_unresolved() {
    let port = free_port(LO);
    let _dns = Unbound::start(
        &[LO],
        port,
        &["test"],
        &[rr("good.test", 300, "A", "192.0.2.1")],
        None,
    );
    let policy = policy_for(port, &["good.test", "maybe.test?"]);
    let resolved = resolve(&policy, &fast()).expect("an optional host may be missing");
    assert_eq!(
        resolved.skipped,
        [HostFailure {
            host: host("maybe.test"),
            reason: FailureReason::NoSuchName,
        }]
    );
    let maybe = answer(&resolved, "maybe.test");
    assert!(maybe.addresses.is_empty(), "{maybe:?}");
    let why = maybe.unresolved.as_deref().expect("recorded as unresolved");
    assert!(why.contains("NXDOMAIN"), "{why}");
    assert_eq!(addr_ttls(answer(&resolved, "good.test")), ["192.0.2.1/300"]);
    assert!(answer(&resolved, "good.test").unresolved.is_none());
}

#[test]
fn a_host_that_is_required_by_one_entry_and_optional_in_another_is_required() {
    let port = free_port(LO);
    let _dns = Unbound::start(&[LO], port, &["test"], &[], None);
    let policy = policy_yaml(&format!(
        "version: 1\ndns:\n  resolvers: [127.0.0.1]\n  port: {port}\nallow:\n  - host: gone.test\n    ports: [443]\n    optional: true\n  - host: gone.test\n    ports: [80]\n"
    ));
    let failures = failures(resolve(&policy, &fast()).unwrap_err());
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].host, host("gone.test"));
}

/// UDP and TCP sockets on one loopback port that accept queries and never answer.
struct Silent {
    _udp: UdpSocket,
    _tcp: TcpListener,
    addr: SocketAddr,
}

impl Silent {
    fn bind() -> Silent {
        for _ in 0..50 {
            let tcp = TcpListener::bind((LO, 0)).unwrap();
            let addr = tcp.local_addr().unwrap();
            if let Ok(udp) = UdpSocket::bind(addr) {
                return Silent {
                    _udp: udp,
                    _tcp: tcp,
                    addr,
                };
            }
        }
        panic!("no free port for a silent server");
    }
}

#[test]
fn a_server_that_never_answers_times_out_within_a_bounded_time() {
    let silent = Silent::bind();
    for transport in [Transport::Udp, Transport::Tcp] {
        let policy = policy_for(silent.addr.port(), &["api.test", "other.test"]);
        let options = ResolveOptions {
            timeout: Duration::from_millis(300),
            attempts: 1,
            transport,
            ..ResolveOptions::default()
        };
        let started = Instant::now();
        let result = resolve(&policy, &options);
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "{transport:?}: took {took:?} with a 300 ms timeout"
        );
        let failures = failures(result.expect_err("nothing may be returned"));
        let hosts: Vec<&str> = failures.iter().map(|f| f.host.as_str()).collect();
        assert_eq!(hosts, ["api.test", "other.test"], "{transport:?}");
        for f in &failures {
            assert_eq!(f.reason, FailureReason::Timeout, "{transport:?}: {f:?}");
        }
    }
}

#[test]
fn an_optional_host_behind_a_silent_server_is_skipped_not_hung_on() {
    let silent = Silent::bind();
    let policy = policy_for(silent.addr.port(), &["maybe.test?"]);
    let options = ResolveOptions {
        timeout: Duration::from_millis(300),
        attempts: 1,
        ..ResolveOptions::default()
    };
    let started = Instant::now();
    let resolved = resolve(&policy, &options).expect("optional hosts may fail");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(resolved.skipped.len(), 1);
    assert_eq!(resolved.skipped[0].reason, FailureReason::Timeout);
    assert!(answer(&resolved, "maybe.test").addresses.is_empty());
}

#[test]
fn a_silent_resolver_fails_many_hosts_in_the_time_of_one_lookup() {
    // Regression: every batch of `concurrency` hosts used to wait out its own
    // timeouts, so with the default knobs (about 8 s per host against a silent
    // server) 1,000 hosts took over 8 minutes to fail. Here 200 hosts at 300 ms
    // would take 13 rounds of about 0.6 s, nearly 8 s.
    let silent = Silent::bind();
    let hosts: Vec<HostName> = (0..200).map(|i| host(&format!("h{i}.test"))).collect();
    for transport in [Transport::Udp, Transport::Tcp] {
        let options = ResolveOptions {
            timeout: Duration::from_millis(300),
            attempts: 1,
            transport,
            ..ResolveOptions::default()
        };
        let started = Instant::now();
        let results = resolve_names(&hosts, &[silent.addr], &options).expect("resolver starts");
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "{transport:?}: 200 hosts took {took:?} to fail"
        );
        assert_eq!(results.len(), 200);
        assert!(
            results.iter().all(|r| *r == Err(FailureReason::Timeout)),
            "{transport:?}: {results:?}"
        );
    }
}

#[test]
fn a_resolver_that_drops_queries_for_some_names_still_answers_the_others() {
    // The other side of the previous test: a server that answers anything is up,
    // so names it drops time out one by one and the rest still resolve.
    let port = free_port(LO);
    let records: Vec<String> = (0..60)
        .filter(|i| i % 3 != 0)
        .map(|i| rr(&format!("h{i}.test"), 300, "A", &format!("192.0.2.{i}")))
        .collect();
    let _dns = Unbound::start(&[LO], port, &["test", "dropped.test deny"], &records, None);
    let hosts: Vec<HostName> = (0..60)
        .map(|i| match i % 3 {
            0 => host(&format!("h{i}.dropped.test")),
            _ => host(&format!("h{i}.test")),
        })
        .collect();
    let options = ResolveOptions {
        timeout: Duration::from_millis(300),
        attempts: 1,
        ..ResolveOptions::default()
    };
    let results = resolve_names(&hosts, &[SocketAddr::new(LO, port)], &options).unwrap();
    for (i, result) in results.iter().enumerate() {
        if i % 3 == 0 {
            assert_eq!(*result, Err(FailureReason::Timeout), "{}", hosts[i]);
        } else {
            let answer = result
                .as_ref()
                .unwrap_or_else(|e| panic!("{}: {e}", hosts[i]));
            assert_eq!(
                addrs(answer),
                [IpAddr::V4(Ipv4Addr::new(192, 0, 2, i as u8))]
            );
        }
    }
}

#[test]
fn ipv4_only_and_ipv6_only_names_resolve_with_only_their_family() {
    let port = free_port(LO);
    let _dns = Unbound::start(
        &[LO],
        port,
        &["test"],
        &[
            rr("v4.test", 120, "A", "192.0.2.4"),
            rr("v4.test", 120, "A", "192.0.2.5"),
            rr("v6.test", 240, "AAAA", "2001:db8::6"),
            rr("v6.test", 240, "AAAA", "2001:db8::7"),
            // A name that exists but has no address at all is not NXDOMAIN.
            rr("text.test", 300, "TXT", "no-addresses-here"),
        ],
        None,
    );
    let policy = policy_for(port, &["v4.test", "v6.test"]);
    let resolved = resolve(&policy, &fast()).expect("both resolve");
    let v4 = answer(&resolved, "v4.test");
    assert_eq!(addr_ttls(v4), ["192.0.2.4/120", "192.0.2.5/120"]);
    assert!(v4.addresses.iter().all(|a| a.addr.is_ipv4()));
    let v6 = answer(&resolved, "v6.test");
    assert_eq!(addr_ttls(v6), ["2001:db8::6/240", "2001:db8::7/240"]);
    assert!(v6.addresses.iter().all(|a| a.addr.is_ipv6()));

    let results = resolve_names(&[host("text.test")], &[SocketAddr::new(LO, port)], &fast())
        .expect("resolver starts");
    assert_eq!(results, [Err(FailureReason::NoAddresses)]);
}

#[test]
fn a_name_with_150_addresses_comes_back_whole_through_the_tcp_fallback() {
    let port = free_port(LO);
    let mut records: Vec<String> = (0..150)
        .map(|i| {
            rr(
                "many.test",
                300,
                "A",
                &format!("198.51.{}.{}", 100 + i / 100, i % 100 + 1),
            )
        })
        .collect();
    records
        .extend((0..10).map(|i| rr("many.test", 300, "AAAA", &format!("2001:db8::{:x}", i + 1))));
    let dns = Unbound::start(&[LO], port, &["test"], &records, None);

    // The server really truncates over UDP: without EDNS (512 bytes) and with the
    // 1232-byte EDNS buffer hickory advertises (DEFAULT_MAX_PAYLOAD_LEN), the
    // 2.4 kB answer does not fit, so unbound sets TC and sends no answers at all.
    // Without the fallback to TCP the name would come back empty.
    for packet in [
        dns_packet("many.test", 1),
        edns_packet("many.test", 1, 1232),
    ] {
        let reply = udp_exchange(dns.addrs[0], &packet);
        assert!(truncated(&reply), "unbound did not set TC");
        assert!(answer_count(&reply) < 150, "{}", answer_count(&reply));
    }
    // (A client advertising 4096 bytes would get all 150 over UDP: the answer is
    // about 2,440 bytes. That is not the path hickory takes.)
    let big = udp_exchange(dns.addrs[0], &edns_packet("many.test", 1, 4096));
    assert!(!truncated(&big));
    assert_eq!(answer_count(&big), 150);

    let policy = policy_for(port, &["many.test"]);
    let resolved = resolve(&policy, &fast()).expect("resolves");
    let many = answer(&resolved, "many.test");
    let v4: Vec<IpAddr> = addrs(many).into_iter().filter(IpAddr::is_ipv4).collect();
    let v6: Vec<IpAddr> = addrs(many).into_iter().filter(IpAddr::is_ipv6).collect();
    assert_eq!(v4.len(), 150, "{v4:?}");
    assert_eq!(v6.len(), 10, "{v6:?}");
    let mut expected: Vec<IpAddr> = (0..150)
        .map(|i| IpAddr::V4(Ipv4Addr::new(198, 51, 100 + i / 100, i % 100 + 1)))
        .collect();
    expected.sort();
    assert_eq!(v4, expected);
}

fn bulk_records(count: usize) -> Vec<String> {
    (0..count)
        .flat_map(|i| {
            let name = format!("h{i:04}.bulk.test");
            [
                rr(&name, 300, "A", &format!("10.{}.{}.1", i / 256, i % 256)),
                rr(&name, 300, "AAAA", &format!("fd00::{i:x}")),
            ]
        })
        .collect()
}

fn resolve_thousand(transport: Transport, server: SocketAddr) {
    let hosts: Vec<HostName> = (0..1000)
        .map(|i| host(&format!("h{i:04}.bulk.test")))
        .collect();
    let options = ResolveOptions {
        transport,
        ..ResolveOptions::default()
    };
    let started = Instant::now();
    let results = resolve_names(&hosts, &[server], &options).expect("resolver starts");
    let took = started.elapsed();
    eprintln!("resolved 1000 hosts (2000 queries) over {transport:?} in {took:?}");
    let failed: Vec<(&HostName, &FailureReason)> = hosts
        .iter()
        .zip(&results)
        .filter_map(|(h, r)| r.as_ref().err().map(|e| (h, e)))
        .collect();
    assert!(
        failed.is_empty(),
        "{transport:?}: {} of 1000 hosts failed, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    for (i, result) in results.iter().enumerate() {
        let answer = result.as_ref().unwrap();
        assert_eq!(
            addrs(answer),
            [
                IpAddr::V4(Ipv4Addr::new(10, (i / 256) as u8, (i % 256) as u8, 1)),
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i as u16)),
            ],
            "host {i} got someone else's answer"
        );
    }
    assert!(
        took < Duration::from_secs(20),
        "{transport:?}: 1000 hosts took {took:?}"
    );
}

#[test]
fn a_thousand_hosts_resolve_without_failures_over_udp() {
    let port = free_port(LO);
    let dns = Unbound::start(&[LO], port, &["bulk.test"], &bulk_records(1000), None);
    resolve_thousand(Transport::Udp, dns.addrs[0]);
}

#[test]
fn a_thousand_hosts_resolve_without_failures_over_tcp() {
    let port = free_port(LO);
    let dns = Unbound::start(&[LO], port, &["bulk.test"], &bulk_records(1000), None);
    resolve_thousand(Transport::Tcp, dns.addrs[0]);
}

#[test]
fn only_the_pinned_resolver_is_asked() {
    let pinned_port = free_port(LO);
    let _pinned = Unbound::start(
        &[LO],
        pinned_port,
        &["test"],
        &[
            rr("api.test", 300, "A", "192.0.2.10"),
            rr("api.test", 300, "AAAA", "2001:db8::10"),
        ],
        None,
    );
    let other_port = free_port(LO);
    let _other = Unbound::start(
        &[LO],
        other_port,
        &["test"],
        &[
            rr("api.test", 300, "A", "203.0.113.66"),
            rr("api.test", 300, "AAAA", "2001:db8:bad::66"),
            rr("only-other.test", 300, "A", "203.0.113.67"),
        ],
        None,
    );

    for transport in [Transport::Udp, Transport::Tcp] {
        let options = ResolveOptions {
            transport,
            ..fast()
        };
        let resolved = resolve(&policy_for(pinned_port, &["api.test"]), &options).unwrap();
        assert_eq!(
            addr_ttls(answer(&resolved, "api.test")),
            ["192.0.2.10/300", "2001:db8::10/300"],
            "{transport:?}"
        );
        assert_eq!(resolved.resolution.resolvers, [LO]);
        assert_eq!(resolved.resolution.port, pinned_port);

        // A name only the other server knows is NXDOMAIN through the pinned one.
        let failures = failures(
            resolve(&policy_for(pinned_port, &["only-other.test"]), &options).unwrap_err(),
        );
        assert_eq!(failures[0].reason, FailureReason::NoSuchName);

        // And the policy pinned to the other server sees the other answers.
        let resolved = resolve(&policy_for(other_port, &["api.test"]), &options).unwrap();
        assert_eq!(
            addr_ttls(answer(&resolved, "api.test")),
            ["203.0.113.66/300", "2001:db8:bad::66/300"]
        );
    }
}

#[test]
fn a_dead_pinned_resolver_fails_even_when_another_server_would_answer() {
    let alive_port = free_port(LO);
    let _alive = Unbound::start(
        &[LO],
        alive_port,
        &["test"],
        &[rr("api.test", 300, "A", "192.0.2.10")],
        None,
    );
    // Sanity: the name does resolve through the live server.
    resolve(&policy_for(alive_port, &["api.test"]), &fast()).expect("the live server answers");

    let options = ResolveOptions {
        timeout: Duration::from_millis(300),
        attempts: 1,
        ..ResolveOptions::default()
    };
    // Nobody listens on the dead port (UDP: port unreachable; TCP: refused) …
    let dead_port = free_port(LO);
    // … and the silent server takes queries but never answers.
    let silent = Silent::bind();
    for port in [dead_port, silent.addr.port()] {
        for transport in [Transport::Udp, Transport::Tcp] {
            let started = Instant::now();
            let result = resolve(
                &policy_for(port, &["api.test"]),
                &ResolveOptions {
                    transport,
                    ..options.clone()
                },
            );
            assert!(started.elapsed() < Duration::from_secs(5));
            let failures = failures(result.expect_err("a dead pinned resolver must fail"));
            assert_eq!(failures.len(), 1);
            assert_eq!(failures[0].host, host("api.test"));
            assert_ne!(
                failures[0].reason,
                FailureReason::NoSuchName,
                "port {port} {transport:?}: a dead server is not NXDOMAIN"
            );
        }
    }
}

#[test]
fn answers_are_sorted_and_deduplicated_whatever_order_the_server_sends() {
    let v4 = [
        "203.0.113.9",
        "192.0.2.200",
        "198.51.100.1",
        "192.0.2.3",
        "10.0.0.1",
    ];
    let v6 = ["2001:db8::ff", "2001:db8::1", "fd00::2", "2001:db8:1::"];
    let forward: Vec<String> = v4
        .iter()
        .map(|a| rr("api.test", 300, "A", a))
        .chain(v6.iter().map(|a| rr("api.test", 300, "AAAA", a)))
        .collect();
    let mut backward = forward.clone();
    backward.reverse();
    // The same address listed twice (unbound keeps one; the resolution must too).
    backward.push(rr("api.test", 300, "A", "192.0.2.3"));

    let mut results = Vec::new();
    let mut orders = Vec::new();
    for records in [&forward, &backward] {
        let port = free_port(LO);
        let dns = Unbound::start(&[LO], port, &["test"], records, None);
        let reply = udp_exchange(dns.addrs[0], &dns_packet("api.test", 1));
        orders.push(a_records_in_order(&reply));
        // Another server order, same name: the server's own round-robin.
        let mut packet = dns_packet("api.test", 1);
        packet[0] = 0x77;
        orders.push(a_records_in_order(&udp_exchange(dns.addrs[0], &packet)));
        // The same host twice in the policy is asked and listed once.
        let policy = policy_for(port, &["api.test", "api.test"]);
        let resolved = resolve(&policy, &fast()).unwrap();
        assert_eq!(resolved.resolution.hosts.len(), 1);
        results.push(answer(&resolved, "api.test").clone());
    }
    let distinct_orders: std::collections::BTreeSet<&Vec<Ipv4Addr>> = orders.iter().collect();
    assert!(
        distinct_orders.len() > 1,
        "the servers sent one order only; the test proves nothing: {orders:?}"
    );
    for order in &orders {
        assert_eq!(order.len(), v4.len(), "{order:?}");
    }

    let mut expected: Vec<IpAddr> = v4
        .iter()
        .chain(v6.iter())
        .map(|a| a.parse().unwrap())
        .collect();
    expected.sort();
    assert!(
        expected[..v4.len()].iter().all(IpAddr::is_ipv4),
        "IPv4 first"
    );
    assert_eq!(addrs(&results[0]), expected);
    assert_eq!(results[0], results[1]);
}

#[test]
fn one_silent_pinned_resolver_does_not_stop_another_that_answers() {
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    // 127.0.0.1:P takes queries and never answers; [::1]:P is a real server.
    let silent = Silent::bind();
    let port = silent.addr.port();
    let _dns = Unbound::start(
        &[v6],
        port,
        &["test"],
        &[rr("api.test", 300, "A", "192.0.2.10")],
        None,
    );
    for resolvers in ["127.0.0.1, \"::1\"", "\"::1\", 127.0.0.1"] {
        let policy = policy_yaml(&format!(
            "version: 1\ndns:\n  resolvers: [{resolvers}]\n  port: {port}\nallow:\n  - host: api.test\n    ports: [443]\n"
        ));
        for transport in [Transport::Udp, Transport::Tcp] {
            let options = ResolveOptions {
                transport,
                timeout: Duration::from_millis(500),
                ..ResolveOptions::default()
            };
            let started = Instant::now();
            let resolved = resolve(&policy, &options)
                .unwrap_or_else(|e| panic!("[{resolvers}] {transport:?}: {e}"));
            assert!(started.elapsed() < Duration::from_secs(5));
            assert_eq!(addr_ttls(answer(&resolved, "api.test")), ["192.0.2.10/300"]);
            assert_eq!(
                resolved.resolution.resolvers.len(),
                2,
                "the lock names both pinned resolvers"
            );
        }
    }
}

/// In DNS proxy mode egressc's own rules drop unmarked DNS to the pinned
/// resolvers; its lookups (apply, refresh, watch) must carry the mark, over
/// UDP and over TCP.
#[test]
fn lookups_carry_the_proxy_mark_when_asked() {
    if !support::kernel_available("lookups_carry_the_proxy_mark_when_asked") {
        return;
    }
    let ns = support::Netns::new("mark");
    let port = 5353;
    let _unbound = Unbound::start(
        &[LO],
        port,
        &["test"],
        &[rr("a.test", 300, "A", "192.0.2.1")],
        Some(&ns),
    );
    let rules = format!(
        "table inet marktest {{ chain out {{ type filter hook output priority 0; policy accept; \
         meta l4proto {{ tcp, udp }} th dport {port} meta mark != 0x65677265 drop; }}; }}"
    );
    ns.exec_ok("nft", &[&rules]);
    let servers = vec![SocketAddr::new(LO, port)];
    for transport in [Transport::Udp, Transport::Tcp] {
        for mark in [Some(0x6567_7265), None] {
            let servers = servers.clone();
            let options = ResolveOptions {
                timeout: Duration::from_millis(500),
                attempts: 1,
                transport,
                mark,
                ..ResolveOptions::default()
            };
            let got = ns
                .run(move || resolve_names(&[host("a.test")], &servers, &options))
                .expect("the resolver starts");
            match mark {
                Some(_) => assert_eq!(
                    got[0].as_ref().map(addrs),
                    Ok(vec!["192.0.2.1".parse::<IpAddr>().unwrap()]),
                    "{transport:?} marked"
                ),
                None => assert!(
                    got[0].is_err(),
                    "{transport:?} unmarked got through: {got:?}"
                ),
            }
        }
    }
}
