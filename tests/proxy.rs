//! The DNS proxy of `egressc watch` (src/proxy) over real sockets, in front of
//! a real unbound, and in front of small scripted servers where an answer must
//! be forged (unrelated records, wrong IDs) or never come.
//!
//! The gate here is a recording test double: it allows a fixed list (with
//! `*.suffix` wildcards) and notes every `learn` call and when it returned.
//! The kernel side of the gate is tested where it is built; what this file
//! proves is the proxy's side of the contract: what reaches the gate, what
//! reaches the upstream, what reaches the client, and in which order.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use egressc::proxy::{Gate, Limits, Proxy, ProxyConfig, Refusal, Stats, StatsSnapshot};
use egressc::resolve::ResolvedAddr;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use support::{Netns, Unbound, dns_packet, dns_query_tcp, dns_query_udp, free_port, rcode, rr};

const WAIT: Duration = Duration::from_secs(3);

fn lo() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

// ---------------------------------------------------------------- the gate

/// One `learn` call as the gate saw it.
#[derive(Debug, Clone)]
struct Learned {
    name: String,
    addrs: Vec<ResolvedAddr>,
    /// When `learn` returned (after its delay).
    done: Instant,
}

struct TestGate {
    allow: Vec<String>,
    /// How long `learn` takes (a stand-in for the netlink round trip).
    delay: Duration,
    fail: Option<String>,
    learned: Mutex<Vec<Learned>>,
}

impl TestGate {
    fn new(allow: &[&str]) -> TestGate {
        TestGate {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            delay: Duration::ZERO,
            fail: None,
            learned: Mutex::new(Vec::new()),
        }
    }

    fn learned(&self) -> Vec<Learned> {
        self.learned.lock().unwrap().clone()
    }
}

impl Gate for TestGate {
    fn allows(&self, name: &str) -> bool {
        self.allow
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                // `*.example.test` is every name strictly below example.test.
                Some(suffix) => name
                    .strip_suffix(suffix)
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                None => pattern == name,
            })
    }

    fn learn(&self, name: &str, addrs: &[ResolvedAddr]) -> Result<(), String> {
        std::thread::sleep(self.delay);
        if let Some(e) = &self.fail {
            return Err(e.clone());
        }
        self.learned.lock().unwrap().push(Learned {
            name: name.to_string(),
            addrs: addrs.to_vec(),
            done: Instant::now(),
        });
        Ok(())
    }
}

// --------------------------------------------------------------- the proxy

fn config(upstreams: Vec<SocketAddr>) -> ProxyConfig {
    ProxyConfig {
        listen: SocketAddr::new(lo(), 0),
        upstreams,
        mark: None,
        refusal: Refusal::Refused,
        upstream_timeout: Duration::from_millis(500),
    }
}

/// A proxy serving on its own runtime thread (inside `netns` if given), stopped
/// on drop.
struct Running {
    addr: SocketAddr,
    stats: Arc<Stats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

fn start(config: ProxyConfig, gate: Arc<TestGate>) -> Running {
    start_with(config, gate, Limits::default(), None)
}

fn start_with(
    config: ProxyConfig,
    gate: Arc<TestGate>,
    limits: Limits,
    netns: Option<&Netns>,
) -> Running {
    let netns_path = netns.map(|ns| format!("/run/netns/{}", ns.name));
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        if let Some(path) = netns_path {
            // Threads the runtime starts from here inherit the namespace.
            let file = std::fs::File::open(&path).expect("open netns");
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let proxy = Proxy::bind_with(config, gate, limits).await.expect("bind");
            ready_tx
                .send((proxy.local_addr().unwrap(), proxy.stats()))
                .unwrap();
            proxy
                .run(async {
                    let _ = stop_rx.await;
                })
                .await;
        });
    });
    let (addr, stats) = ready_rx.recv().expect("the proxy did not start");
    Running {
        addr,
        stats,
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

impl Running {
    fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ------------------------------------------------------------ DNS helpers

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

/// A query with a chosen ID, optionally with EDNS advertising `payload`.
fn query(id: u16, qname: &str, qtype: RecordType, payload: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name(qname), qtype));
    if let Some(payload) = payload {
        let mut edns = Edns::new();
        edns.set_max_payload(payload);
        m.set_edns(edns);
    }
    m.to_vec().unwrap()
}

fn udp_ask(server: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(wait)).unwrap();
    sock.send_to(packet, server).unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

/// Sends every packet on one TCP connection, then reads one answer per packet.
fn tcp_ask(server: SocketAddr, packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&server, WAIT).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    for p in packets {
        let mut framed = (p.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(p);
        stream.write_all(&framed).unwrap();
    }
    packets
        .iter()
        .map(|_| {
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).unwrap();
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            stream.read_exact(&mut buf).unwrap();
            buf
        })
        .collect()
}

fn parse(bytes: &[u8]) -> Message {
    Message::from_vec(bytes).expect("a DNS message")
}

fn addresses(m: &Message) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn ra(addr: &str, ttl: u32) -> ResolvedAddr {
    ResolvedAddr {
        addr: addr.parse().unwrap(),
        ttl,
    }
}

fn unbound(records: &[String]) -> Unbound {
    Unbound::start(&[lo()], free_port(lo()), &["proxy.test"], records, None)
}

// ------------------------------------------------------- test upstreams

/// A UDP relay in front of `to` that records the name of every query it
/// passes on: what "reached the upstream".
fn recording_relay(to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65535];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let packet = buf[..n].to_vec();
            if let Ok(m) = Message::from_vec(&packet) {
                if let Some(q) = m.queries.first() {
                    log.lock().unwrap().push(q.name().to_ascii());
                }
            }
            if let Some(answer) = udp_ask(to, &packet, WAIT) {
                let _ = sock.send_to(&answer, from);
            }
        }
    });
    (addr, seen)
}

/// A UDP server that answers each query with whatever datagrams `script`
/// returns, in order; counts the queries.
fn scripted_upstream(
    script: impl Fn(&Message) -> Vec<Vec<u8>> + Send + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65535];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            for datagram in script(&q) {
                let _ = sock.send_to(&datagram, from);
            }
        }
    });
    (addr, count)
}

/// The response skeleton to `q`, with `id` and `records` in the answer section.
fn answer_to(q: &Message, id: u16, qname: &str, records: Vec<Record>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = q.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_query(Query::query(name(qname), RecordType::A));
    m.add_answers(records);
    m.to_vec().unwrap()
}

fn record(owner: &str, ttl: u32, data: RData) -> Record {
    Record::from_rdata(name(owner), ttl, data)
}

// ================================================================ tests

#[test]
fn an_allowed_name_is_learned_before_the_client_gets_the_answer() {
    let dns = unbound(&[
        rr("web.proxy.test", 300, "A", "192.0.2.1"),
        rr("web.proxy.test", 200, "AAAA", "2001:db8::1"),
    ]);
    let mut gate = TestGate::new(&["web.proxy.test"]);
    gate.delay = Duration::from_millis(200);
    let gate = Arc::new(gate);
    let proxy = start(config(vec![dns.addrs[0]]), gate.clone());

    // Mixed case on the wire: the gate sees it lowercased, the client gets
    // its own spelling back.
    let sent = Instant::now();
    let reply = udp_ask(
        proxy.addr,
        &query(0xbeef, "Web.Proxy.TEST.", RecordType::A, None),
        WAIT,
    )
    .expect("an answer");
    let received = Instant::now();
    let m = parse(&reply);
    assert_eq!(m.id, 0xbeef, "the client's ID comes back");
    assert_eq!(m.response_code, ResponseCode::NoError);
    assert_eq!(m.queries[0].name().to_ascii(), "Web.Proxy.TEST.");
    assert_eq!(addresses(&m), vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);

    let learned = gate.learned();
    assert_eq!(learned.len(), 1, "{learned:?}");
    assert_eq!(learned[0].name, "web.proxy.test");
    assert_eq!(learned[0].addrs, vec![ra("192.0.2.1", 300)]);
    // The gate took 200 ms; the answer was held back until it had returned.
    assert!(
        learned[0].done <= received,
        "the client got the answer before the gate had learned the address"
    );
    assert!(received - sent >= Duration::from_millis(200));

    let reply = dns_query_tcp(proxy.addr, "web.proxy.test", 28, WAIT).expect("AAAA over TCP");
    assert_eq!(
        addresses(&parse(&reply)),
        vec!["2001:db8::1".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(gate.learned()[1].addrs, vec![ra("2001:db8::1", 200)]);

    let stats = proxy.stats();
    assert_eq!((stats.forwarded, stats.learned, stats.failed), (2, 2, 0));
}

#[test]
fn refused_names_get_the_configured_refusal_and_never_reach_the_upstream() {
    let dns = unbound(&[rr("api.ok.proxy.test", 300, "A", "192.0.2.7")]);
    let (relay, upstream_saw) = recording_relay(dns.addrs[0]);
    let gate = Arc::new(TestGate::new(&["*.ok.proxy.test"]));
    let proxy = start(config(vec![relay]), gate.clone());

    for refused in [
        "evil.proxy.test",
        // The wildcard covers names below ok.proxy.test, not the name itself.
        "ok.proxy.test",
        // A space and a dot inside a label under the allowed suffix: no host
        // name, whatever the gate would say.
        "a b.ok.proxy.test",
    ] {
        let reply = dns_query_udp(proxy.addr, refused, 1, WAIT).expect("an answer");
        assert_eq!(rcode(&reply), 5, "{refused}: REFUSED");
        let m = parse(&reply);
        assert_eq!(m.queries.len(), 1, "the question is echoed");
        assert_eq!(m.answers.len(), 0);
    }
    let reply = dns_query_tcp(proxy.addr, "evil.proxy.test", 28, WAIT).expect("over TCP");
    assert_eq!(rcode(&reply), 5);
    // Label "x.y" (a dot inside a label) is not the name x.y.ok.proxy.test.
    let mut with_dot = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in [&b"x.y"[..], b"ok", b"proxy", b"test"] {
        with_dot.push(label.len() as u8);
        with_dot.extend_from_slice(label);
    }
    with_dot.extend_from_slice(&[0, 0, 1, 0, 1]);
    let reply = udp_ask(proxy.addr, &with_dot, WAIT).expect("an answer");
    assert_eq!(rcode(&reply), 5, "a dot inside a label is refused");

    assert!(
        upstream_saw.lock().unwrap().is_empty(),
        "refused names reached the upstream: {:?}",
        upstream_saw.lock().unwrap()
    );
    assert!(gate.learned().is_empty());

    // The control: an allowed name does go through this relay.
    let reply = dns_query_udp(proxy.addr, "api.ok.proxy.test", 1, WAIT).expect("an answer");
    assert_eq!(rcode(&reply), 0);
    assert_eq!(
        *upstream_saw.lock().unwrap(),
        vec!["api.ok.proxy.test.".to_string()]
    );
    let stats = proxy.stats();
    assert_eq!((stats.refused, stats.forwarded), (5, 1));

    // NXDOMAIN when so configured.
    let mut nx = config(vec![relay]);
    nx.refusal = Refusal::NxDomain;
    let proxy = start(nx, gate);
    let reply = dns_query_udp(proxy.addr, "evil.proxy.test", 1, WAIT).expect("an answer");
    assert_eq!(rcode(&reply), 3, "NXDOMAIN");
    assert_eq!(upstream_saw.lock().unwrap().len(), 1);
}

#[test]
fn other_types_for_allowed_names_are_answered_empty_without_the_upstream() {
    let dns = unbound(&[
        rr("api.proxy.test", 300, "A", "192.0.2.7"),
        rr("api.proxy.test", 300, "TXT", "\\\"secret\\\""),
    ]);
    let (relay, upstream_saw) = recording_relay(dns.addrs[0]);
    let gate = Arc::new(TestGate::new(&["api.proxy.test"]));
    let proxy = start(config(vec![relay]), gate.clone());

    for qtype in [
        RecordType::TXT,
        RecordType::HTTPS,
        RecordType::SVCB,
        RecordType::MX,
        RecordType::ANY,
        RecordType::Unknown(65280),
    ] {
        let reply =
            udp_ask(proxy.addr, &query(9, "api.proxy.test", qtype, None), WAIT).expect("an answer");
        let m = parse(&reply);
        assert_eq!(m.response_code, ResponseCode::NoError, "{qtype}");
        assert!(m.answers.is_empty(), "{qtype}: no records");
        assert_eq!(m.queries[0].query_type(), qtype);
    }
    assert!(upstream_saw.lock().unwrap().is_empty());
    assert!(gate.learned().is_empty());
    assert_eq!(proxy.stats().nodata, 6);

    // A class other than IN is refused, also without the upstream.
    let mut chaos = dns_packet("version.bind", 16);
    let n = chaos.len();
    chaos[n - 1] = 3; // CH
    let reply = udp_ask(proxy.addr, &chaos, WAIT).expect("an answer");
    assert_eq!(rcode(&reply), 5);
    assert!(upstream_saw.lock().unwrap().is_empty());
}

#[test]
fn a_cname_chain_is_learned_with_its_smallest_ttl_and_nothing_else() {
    // The real unbound answers a CNAME of its local data without following
    // it: an answer without addresses, so the gate is not called at all.
    let dns = unbound(&[
        rr("alias.proxy.test", 300, "CNAME", "edge.proxy.test."),
        rr("edge.proxy.test", 120, "A", "192.0.2.20"),
    ]);
    let gate = Arc::new(TestGate::new(&["alias.proxy.test"]));
    let proxy = start(config(vec![dns.addrs[0]]), gate.clone());
    let reply = dns_query_udp(proxy.addr, "alias.proxy.test", 1, WAIT).expect("an answer");
    let m = parse(&reply);
    assert_eq!(m.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1, "{m}");
    assert!(gate.learned().is_empty());
    assert_eq!(proxy.stats().forwarded, 1);
    drop(proxy);

    // A recursive resolver's answer: the whole chain, here with records for
    // names nobody asked for in the answer and the additional section, as a
    // forged or poisoned answer would carry them.
    let (upstream, _) = scripted_upstream(|q| {
        let mut m = Message::new(q.id, MessageType::Response, OpCode::Query);
        m.metadata.recursion_available = true;
        m.add_query(q.queries[0].clone());
        m.add_answers([
            record(
                "svc.proxy.test.",
                300,
                RData::CNAME(CNAME(name("cdn.example.test."))),
            ),
            record(
                "cdn.example.test.",
                40,
                RData::CNAME(CNAME(name("edge.example.test."))),
            ),
            record("edge.example.test.", 120, RData::A(A::new(192, 0, 2, 30))),
            record(
                "edge.example.test.",
                20,
                RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x30)),
            ),
            record("evil.test.", 300, RData::A(A::new(198, 51, 100, 66))),
            record(
                "other.test.",
                300,
                RData::CNAME(CNAME(name("svc.proxy.test."))),
            ),
        ]);
        m.add_additional(record(
            "svc.proxy.test.",
            300,
            RData::A(A::new(203, 0, 113, 9)),
        ));
        vec![m.to_vec().unwrap()]
    });
    let gate = Arc::new(TestGate::new(&["svc.proxy.test"]));
    let proxy = start(config(vec![upstream]), gate.clone());
    let reply = dns_query_udp(proxy.addr, "svc.proxy.test", 1, WAIT).expect("an answer");
    assert_eq!(rcode(&reply), 0);
    let learned = gate.learned();
    assert_eq!(learned.len(), 1);
    assert_eq!(
        learned[0].addrs,
        vec![ra("192.0.2.30", 40), ra("2001:db8::30", 20)],
        "only the chain's addresses, each with the smallest TTL on its way"
    );
}

#[test]
fn answers_with_the_wrong_id_or_question_are_ignored() {
    let (upstream, _) = scripted_upstream(|q| {
        let evil = || {
            vec![record(
                "pay.proxy.test.",
                300,
                RData::A(A::new(198, 51, 100, 1)),
            )]
        };
        let good = vec![record(
            "pay.proxy.test.",
            300,
            RData::A(A::new(192, 0, 2, 40)),
        )];
        vec![
            answer_to(q, q.id.wrapping_add(1), "pay.proxy.test.", evil()),
            answer_to(q, q.id, "other.proxy.test.", evil()),
            answer_to(q, q.id, "pay.proxy.test.", good),
        ]
    });
    let gate = Arc::new(TestGate::new(&["pay.proxy.test"]));
    let proxy = start(config(vec![upstream]), gate.clone());
    let reply = dns_query_udp(proxy.addr, "pay.proxy.test", 1, WAIT).expect("an answer");
    assert_eq!(
        addresses(&parse(&reply)),
        vec!["192.0.2.40".parse::<IpAddr>().unwrap()]
    );
    let learned = gate.learned();
    assert_eq!(learned.len(), 1);
    assert_eq!(learned[0].addrs, vec![ra("192.0.2.40", 300)]);
    assert_eq!(proxy.stats().mismatched, 2);
}

#[test]
fn a_gate_that_cannot_learn_makes_the_answer_servfail() {
    let dns = unbound(&[rr("db.proxy.test", 300, "A", "192.0.2.50")]);
    let mut gate = TestGate::new(&["db.proxy.test"]);
    gate.fail = Some("netlink: No buffer space available".into());
    let proxy = start(config(vec![dns.addrs[0]]), Arc::new(gate));
    for reply in [
        dns_query_udp(proxy.addr, "db.proxy.test", 1, WAIT),
        dns_query_tcp(proxy.addr, "db.proxy.test", 1, WAIT),
    ] {
        let m = parse(&reply.expect("an answer"));
        assert_eq!(m.response_code, ResponseCode::ServFail);
        assert!(m.answers.is_empty(), "no address the firewall would drop");
    }
    let stats = proxy.stats();
    assert_eq!((stats.failed, stats.forwarded, stats.learned), (2, 0, 0));
}

#[test]
fn a_large_answer_is_learned_whole_and_truncated_for_small_udp_clients() {
    let many: Vec<String> = (0..150)
        .map(|i| {
            rr(
                "many.proxy.test",
                300,
                "A",
                &format!("10.9.{}.{}", i / 100, i % 100 + 1),
            )
        })
        .collect();
    let dns = unbound(&many);
    let gate = Arc::new(TestGate::new(&["many.proxy.test"]));
    let proxy = start(config(vec![dns.addrs[0]]), gate.clone());

    // No EDNS: 512 bytes. The upstream's UDP answer is truncated too, so the
    // proxy had to ask over TCP to learn all 150.
    let reply = dns_query_udp(proxy.addr, "many.proxy.test", 1, WAIT).expect("an answer");
    let m = parse(&reply);
    assert!(m.truncation, "TC set");
    assert_eq!(m.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(m.queries.len(), 1);
    let learned = gate.learned();
    assert_eq!(learned.len(), 1);
    assert_eq!(learned[0].addrs.len(), 150);
    assert!(learned[0].addrs.iter().all(|a| a.ttl == 300));

    // The client's retry over TCP gets every record.
    let reply = dns_query_tcp(proxy.addr, "many.proxy.test", 1, WAIT).expect("over TCP");
    let m = parse(&reply);
    assert!(!m.truncation);
    assert_eq!(addresses(&m).len(), 150);

    // A client advertising 4096 bytes of EDNS gets all of it over UDP.
    let reply = udp_ask(
        proxy.addr,
        &query(77, "many.proxy.test", RecordType::A, Some(4096)),
        WAIT,
    )
    .expect("an answer");
    let m = parse(&reply);
    assert!(!m.truncation);
    assert_eq!(addresses(&m).len(), 150);
    assert!(m.edns.is_some(), "EDNS in, EDNS out");
    assert_eq!(proxy.stats().truncated, 1);
}

#[test]
fn several_queries_share_a_tcp_connection() {
    let dns = unbound(&[
        rr("one.proxy.test", 300, "A", "192.0.2.61"),
        rr("two.proxy.test", 300, "A", "192.0.2.62"),
    ]);
    let gate = Arc::new(TestGate::new(&["one.proxy.test", "two.proxy.test"]));
    let proxy = start(config(vec![dns.addrs[0]]), gate);
    let replies = tcp_ask(
        proxy.addr,
        &[
            query(1, "one.proxy.test", RecordType::A, None),
            query(2, "two.proxy.test", RecordType::A, None),
            query(3, "three.proxy.test", RecordType::A, None),
        ],
    );
    let got: Vec<(u16, ResponseCode, Vec<IpAddr>)> = replies
        .iter()
        .map(|r| {
            let m = parse(r);
            (m.id, m.response_code, addresses(&m))
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                1,
                ResponseCode::NoError,
                vec!["192.0.2.61".parse().unwrap()]
            ),
            (
                2,
                ResponseCode::NoError,
                vec!["192.0.2.62".parse().unwrap()]
            ),
            (3, ResponseCode::Refused, vec![]),
        ]
    );
}

#[test]
fn idle_tcp_connections_are_closed() {
    let gate = Arc::new(TestGate::new(&[]));
    let limits = Limits {
        tcp_idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let hole = UdpSocket::bind("127.0.0.1:0").unwrap();
    let proxy = start_with(config(vec![hole.local_addr().unwrap()]), gate, limits, None);
    let mut stream = TcpStream::connect(proxy.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let opened = Instant::now();
    // Half a length prefix, then silence.
    stream.write_all(&[0]).unwrap();
    let mut buf = [0u8; 1];
    let n = stream.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

#[test]
fn a_dead_upstream_gives_servfail_in_time_and_the_next_one_answers() {
    let dns = unbound(&[rr("up.proxy.test", 300, "A", "192.0.2.70")]);
    // Bound and never read: queries vanish, like a resolver that is down.
    let hole = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = hole.local_addr().unwrap();
    let gate = Arc::new(TestGate::new(&["up.proxy.test"]));
    let timeout = Duration::from_millis(300);

    let mut only_dead = config(vec![dead]);
    only_dead.upstream_timeout = timeout;
    let proxy = start(only_dead, gate.clone());
    let sent = Instant::now();
    let reply = dns_query_udp(proxy.addr, "up.proxy.test", 1, WAIT).expect("an answer");
    let took = sent.elapsed();
    assert_eq!(rcode(&reply), 2, "SERVFAIL");
    assert!(
        took >= timeout && took < timeout + Duration::from_millis(700),
        "SERVFAIL after {took:?}"
    );
    assert_eq!(proxy.stats().failed, 1);
    drop(proxy);

    let mut failover = config(vec![dead, dns.addrs[0]]);
    failover.upstream_timeout = timeout;
    let proxy = start(failover, gate.clone());
    let sent = Instant::now();
    let reply = dns_query_udp(proxy.addr, "up.proxy.test", 1, WAIT).expect("an answer");
    let took = sent.elapsed();
    assert_eq!(rcode(&reply), 0);
    assert_eq!(
        addresses(&parse(&reply)),
        vec!["192.0.2.70".parse::<IpAddr>().unwrap()]
    );
    assert!(took >= timeout, "the first upstream had its full timeout");
    drop(proxy);

    // A port nobody listens on answers with ICMP: no need to wait for it.
    let closed = SocketAddr::new(lo(), free_port(lo()));
    let mut refused = config(vec![closed, dns.addrs[0]]);
    refused.upstream_timeout = Duration::from_secs(2);
    let proxy = start(refused, gate);
    let sent = Instant::now();
    let reply = dns_query_udp(proxy.addr, "up.proxy.test", 1, WAIT).expect("an answer");
    assert_eq!(rcode(&reply), 0);
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
}

#[test]
fn malformed_packets_are_answered_or_dropped_and_the_proxy_keeps_serving() {
    let dns = unbound(&[rr("fine.proxy.test", 300, "A", "192.0.2.80")]);
    let gate = Arc::new(TestGate::new(&["fine.proxy.test"]));
    let proxy = start(config(vec![dns.addrs[0]]), gate);
    let short = Duration::from_millis(300);

    let good = dns_packet("fine.proxy.test", 1);
    let mut header_only = vec![0xab, 0xcd, 1, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0];
    // Claims 65,535 questions: FORMERR from the header alone.
    let reply = udp_ask(proxy.addr, &header_only, WAIT).expect("FORMERR");
    assert_eq!((reply[0], reply[1], rcode(&reply)), (0xab, 0xcd, 1));
    // One question that is not there.
    header_only[4..6].copy_from_slice(&[0, 1]);
    assert_eq!(rcode(&udp_ask(proxy.addr, &header_only, WAIT).unwrap()), 1);
    // A name that is a compression pointer to itself.
    let mut looped = header_only.clone();
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(rcode(&udp_ask(proxy.addr, &looped, WAIT).unwrap()), 1);
    // Two questions.
    let mut two = good.clone();
    two[5] = 2;
    two.extend_from_slice(&good[12..]);
    assert_eq!(rcode(&udp_ask(proxy.addr, &two, WAIT).unwrap()), 1);
    // A NOTIFY: not implemented.
    let mut notify = good.clone();
    notify[2] = 4 << 3;
    assert_eq!(rcode(&udp_ask(proxy.addr, &notify, WAIT).unwrap()), 4);
    // A response (QR=1) and runt packets get no answer at all.
    let mut response = good.clone();
    response[2] |= 0x80;
    for silent in [response, vec![], vec![1, 2, 3, 4, 5]] {
        assert!(udp_ask(proxy.addr, &silent, short).is_none());
    }
    // Random bytes.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..300 {
        let len = (state % 300) as usize;
        let packet: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.send_to(&packet, proxy.addr).unwrap();
    }
    // Over TCP: an empty message and a truncated one.
    let mut stream = TcpStream::connect(proxy.addr).unwrap();
    stream.write_all(&[0, 0, 0, 40, 1, 2]).unwrap();
    drop(stream);

    // Still answering, over both transports. The burst may have filled the
    // listener's socket buffer, which drops what arrives meanwhile: ask as a
    // stub resolver does, again after a second.
    let reply = (0..3)
        .find_map(|_| dns_query_udp(proxy.addr, "fine.proxy.test", 1, Duration::from_secs(1)))
        .expect("still serving UDP");
    assert_eq!(
        addresses(&parse(&reply)),
        vec!["192.0.2.80".parse::<IpAddr>().unwrap()]
    );
    let reply = dns_query_tcp(proxy.addr, "fine.proxy.test", 1, WAIT).expect("still serving TCP");
    assert_eq!(rcode(&reply), 0);
    assert!(proxy.stats().malformed >= 8);
}

#[test]
fn the_inflight_bound_holds_queries_back() {
    let dns = unbound(&[
        rr("s1.proxy.test", 300, "A", "192.0.2.91"),
        rr("s2.proxy.test", 300, "A", "192.0.2.92"),
    ]);
    let mut gate = TestGate::new(&["s1.proxy.test", "s2.proxy.test"]);
    gate.delay = Duration::from_millis(300);
    let gate = Arc::new(gate);
    let limits = Limits {
        max_inflight: 1,
        ..Limits::default()
    };
    let proxy = start_with(config(vec![dns.addrs[0]]), gate.clone(), limits, None);
    let addr = proxy.addr;
    let sent = Instant::now();
    let clients: Vec<_> = ["s1.proxy.test", "s2.proxy.test"]
        .into_iter()
        .map(|n| std::thread::spawn(move || dns_query_udp(addr, n, 1, WAIT).map(|r| rcode(&r))))
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), Some(0));
    }
    // One query at a time: two learns of 300 ms cannot overlap.
    assert!(
        sent.elapsed() >= Duration::from_millis(600),
        "{:?}",
        sent.elapsed()
    );
    let learned = gate.learned();
    assert_eq!(learned.len(), 2);
}

/// The mark is what lets the proxy's queries through a firewall that drops
/// every other DNS packet: in a namespace whose output chain drops DNS
/// without the mark, the proxy with the mark is answered (over UDP, and over
/// TCP after a truncated answer) and the same proxy without it is not.
#[test]
fn only_marked_queries_pass_a_firewall_that_requires_the_mark() {
    if !support::kernel_available("only_marked_queries_pass_a_firewall_that_requires_the_mark") {
        return;
    }
    let ns = Netns::new("proxymark");
    let mut records = vec![rr("marked.proxy.test", 300, "A", "192.0.2.100")];
    records.extend((0..150).map(|i| {
        rr(
            "big.proxy.test",
            300,
            "A",
            &format!("10.8.{}.{}", i / 100, i % 100 + 1),
        )
    }));
    // Port 53 inside the namespace, so the rule's `dport 53` applies.
    let dns = Unbound::start(&[lo()], 53, &["proxy.test"], &records, Some(&ns));
    let upstream = dns.addrs[0];
    let mark = 0x2a;
    ns.exec_ok("nft", &["add", "table", "inet", "marktest"]);
    ns.exec_ok(
        "nft",
        &[
            "add",
            "chain",
            "inet",
            "marktest",
            "out",
            "{ type filter hook output priority 0; policy accept; }",
        ],
    );
    let mark_hex = format!("{mark:#x}");
    for proto in ["udp", "tcp"] {
        ns.exec_ok(
            "nft",
            &[
                "add", "rule", "inet", "marktest", "out", "meta", "mark", "!=", &mark_hex, proto,
                "dport", "53", "drop",
            ],
        );
    }
    // The control: unmarked queries straight to unbound are dropped.
    let direct = ns.run(move || {
        (
            dns_query_udp(upstream, "marked.proxy.test", 1, Duration::from_millis(500)),
            dns_query_tcp(upstream, "marked.proxy.test", 1, Duration::from_millis(500)),
        )
    });
    assert_eq!(
        direct,
        (None, None),
        "the firewall lets unmarked DNS through"
    );

    let gate = Arc::new(TestGate::new(&["marked.proxy.test", "big.proxy.test"]));
    let mut marked = config(vec![upstream]);
    marked.mark = Some(mark);
    let proxy = start_with(marked.clone(), gate.clone(), Limits::default(), Some(&ns));
    let addr = proxy.addr;
    let (udp, tcp_big) = ns.run(move || {
        (
            dns_query_udp(addr, "marked.proxy.test", 1, WAIT),
            dns_query_tcp(addr, "big.proxy.test", 1, WAIT),
        )
    });
    let udp = parse(&udp.expect("an answer"));
    assert_eq!(udp.response_code, ResponseCode::NoError);
    assert_eq!(
        addresses(&udp),
        vec!["192.0.2.100".parse::<IpAddr>().unwrap()]
    );
    // big.proxy.test does not fit a UDP answer: the proxy's own TCP
    // connection to unbound was marked too.
    let big = parse(&tcp_big.expect("an answer over TCP"));
    assert_eq!(addresses(&big).len(), 150);
    assert_eq!(gate.learned().len(), 2);
    drop(proxy);

    let mut unmarked = marked;
    unmarked.mark = None;
    unmarked.upstream_timeout = Duration::from_millis(300);
    let proxy = start_with(unmarked, gate.clone(), Limits::default(), Some(&ns));
    let addr = proxy.addr;
    let reply = ns.run(move || dns_query_udp(addr, "marked.proxy.test", 1, WAIT));
    assert_eq!(
        rcode(&reply.expect("an answer")),
        2,
        "SERVFAIL without the mark"
    );
    assert_eq!(gate.learned().len(), 2, "nothing learned without an answer");
}

/// A workload that starts many lookups at once must not lose any to a full
/// socket buffer: a lost query costs a glibc client its 5-second timeout.
#[test]
fn a_burst_of_queries_is_answered_in_full() {
    // Without root the buffers cannot be raised past net.core.rmem_max
    // (SO_RCVBUFFORCE), on the proxy's side or on this client's.
    let root = unsafe { libc::geteuid() } == 0;
    let burst: usize = if root { 1000 } else { 100 };
    let hole = UdpSocket::bind("127.0.0.1:0").unwrap();
    let gate = Arc::new(TestGate::new(&[]));
    let proxy = start(config(vec![hole.local_addr().unwrap()]), gate);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    // The client's own buffer must hold every answer.
    let size: libc::c_int = 8 << 20;
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    sock.set_read_timeout(Some(WAIT)).unwrap();
    for i in 0..burst {
        sock.send_to(
            &query(i as u16, &format!("n{i}.burst.test"), RecordType::A, None),
            proxy.addr,
        )
        .unwrap();
    }
    let mut seen = vec![false; burst];
    let mut buf = [0u8; 512];
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        let id = u16::from_be_bytes([buf[0], buf[1]]) as usize;
        assert_eq!(rcode(&buf[..n]), 5);
        seen[id] = true;
        if seen.iter().all(|s| *s) {
            break;
        }
    }
    let lost = seen.iter().filter(|s| !**s).count();
    assert_eq!(lost, 0, "{lost} of {burst} queries got no answer");
    assert_eq!(proxy.stats().refused, burst as u64);
}

/// What the upstream saw of a query: name, RD, CD, EDNS (payload, DO).
type Upstreamed = (String, bool, bool, Option<(u16, bool)>);

/// Of a client's query only the name (in lowercase) and type go upstream:
/// letter case, CD and DO bits and the EDNS buffer size could otherwise carry
/// bits of the client's choosing to the resolver. The client still gets its
/// own question back, letter case included.
#[test]
fn only_the_lowercased_name_and_type_go_upstream() {
    let seen: Arc<Mutex<Vec<Upstreamed>>> = Arc::default();
    let log = seen.clone();
    let (upstream, _) = scripted_upstream(move |q| {
        let question = q.queries[0].name().to_ascii();
        log.lock().unwrap().push((
            question.clone(),
            q.recursion_desired,
            q.checking_disabled,
            q.edns
                .as_ref()
                .map(|e| (e.max_payload(), e.flags().dnssec_ok)),
        ));
        vec![answer_to(
            q,
            q.id,
            &question,
            vec![record(&question, 60, RData::A(A::new(192, 0, 2, 7)))],
        )]
    });
    let gate = Arc::new(TestGate::new(&["web.proxy.test"]));
    let proxy = start(config(vec![upstream]), gate.clone());
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.metadata.checking_disabled = true;
    m.add_query(Query::query(name("WeB.PrOxY.tEsT."), RecordType::A));
    let mut edns = Edns::new();
    edns.set_max_payload(1400);
    edns.set_dnssec_ok(true);
    m.set_edns(edns);
    let answer = udp_ask(proxy.addr, &m.to_vec().unwrap(), WAIT).expect("an answer");
    let answer = parse(&answer);
    assert_eq!(answer.response_code, ResponseCode::NoError);
    assert_eq!(answer.id, 0x4242);
    assert_eq!(answer.queries[0].name().to_ascii(), "WeB.PrOxY.tEsT.");
    assert_eq!(
        addresses(&answer),
        vec!["192.0.2.7".parse::<IpAddr>().unwrap()]
    );
    let seen = seen.lock().unwrap();
    assert_eq!(
        *seen,
        vec![(
            "web.proxy.test.".to_string(),
            true,
            false,
            Some((4096, false))
        )]
    );
}
