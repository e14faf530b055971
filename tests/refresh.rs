//! `egressc refresh` against the real kernel, a real unbound whose answers
//! change during the test, and real TCP traffic between two namespaces.
//!
//! The client namespace applies a policy allowing `svc.refresh.test:443`; the
//! server namespace runs unbound (the pinned resolver) and TCP echo servers on
//! both addresses the name points at over the test.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use support::{EGRESSC, Netns, Unbound, rr, write_file};

const CLIENT: &str = "10.88.0.1";
const OLD: &str = "10.88.0.2";
const NEW: &str = "10.88.0.3";
const RESOLVER: &str = "10.88.0.53";
const NAME: &str = "svc.refresh.test";
const PROBE_TIMEOUT: Duration = Duration::from_millis(700);

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

struct World {
    client: Netns,
    server: Netns,
    dns: Option<Unbound>,
    dir: tempfile::TempDir,
    policy: PathBuf,
}

/// unbound in the server namespace, answering `svc.refresh.test A addr` (TTL 1).
fn start_dns(server: &Netns, addr: &str) -> Unbound {
    Unbound::start(
        &[RESOLVER.parse().unwrap()],
        53,
        &["refresh.test"],
        &[rr(NAME, 1, "A", addr)],
        Some(server),
    )
}

/// A TCP server on `addr` in `ns` that echoes every byte back.
fn echo_server(ns: &Netns, addr: SocketAddr) {
    let listener = ns.run(move || TcpListener::bind(addr).unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

fn world() -> World {
    let client = Netns::new("rclient");
    let server = Netns::new("rserver");
    let server_addrs: Vec<String> = [OLD, NEW, RESOLVER]
        .iter()
        .map(|a| format!("{a}/24"))
        .collect();
    let refs: Vec<&str> = server_addrs.iter().map(String::as_str).collect();
    support::veth_pair(&client, &[&format!("{CLIENT}/24")], &server, &refs);
    let dns = start_dns(&server, OLD);
    echo_server(&server, sa(OLD, 443));
    echo_server(&server, sa(NEW, 443));
    let dir = tempfile::tempdir().unwrap();
    let policy = write_file(
        dir.path(),
        "policy.yaml",
        &format!(
            "version: 1\nname: refresh\ndefault: deny\ndns:\n  resolvers: [{RESOLVER}]\nallow:\n  - host: {NAME}\n    ports: [443]\n"
        ),
    );
    let w = World {
        client,
        server,
        dns: Some(dns),
        dir,
        policy,
    };
    // Both servers answer before any firewall exists.
    assert!(
        w.connects(OLD) && w.connects(NEW),
        "the test network is down"
    );
    w
}

impl World {
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn egressc(&self, args: &[&str]) -> Output {
        self.client
            .command(EGRESSC)
            .env("EGRESSC_STATE_DIR", self.state())
            .args(args)
            .output()
            .expect("run egressc")
    }

    fn egressc_ok(&self, args: &[&str]) -> String {
        let out = self.egressc(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "egressc {args:?} failed: {stderr}");
        stderr
    }

    fn apply(&self) {
        self.egressc_ok(&["apply", self.policy.to_str().unwrap()]);
    }

    fn refresh(&self, extra: &[&str]) -> Output {
        let mut args = vec!["refresh", self.policy.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.egressc(&args)
    }

    /// Whether a new TCP connection from the client to `ip:443` succeeds.
    fn connects(&self, ip: &str) -> bool {
        let addr = sa(ip, 443);
        self.client
            .run(move || TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok())
    }

    /// A connection opened now from the client, kept open by the caller.
    fn open(&self, ip: &str) -> TcpStream {
        let addr = sa(ip, 443);
        let s = self
            .client
            .run(move || TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).unwrap());
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    }

    fn set(&self, name: &str) -> String {
        self.client
            .exec_ok("nft", &["list", "set", "inet", "egressc", name])
    }

    fn record(&self) -> Vec<u8> {
        std::fs::read(self.state().join("applied.json")).unwrap()
    }

    /// Packets counted by the allow-list rule for IPv4 addresses (new
    /// connections to allowed destinations).
    fn allow_counter(&self) -> u64 {
        let json = self
            .client
            .exec_ok("nft", &["-j", "list", "table", "inet", "egressc"]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let rule = v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get("rule"))
            .find(|r| r.to_string().contains("@allow_v4_addrs"))
            .expect("an allow rule for allow_v4_addrs");
        rule["expr"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|e| e.get("counter"))
            .expect("the rule has a counter")["packets"]
            .as_u64()
            .unwrap()
    }

    /// Restarts the resolver with `svc.refresh.test` pointing at `addr`.
    fn answer(&mut self, addr: &str) {
        drop(self.dns.take());
        self.dns = Some(start_dns(&self.server, addr));
    }
}

/// Sends a byte over `s` and expects it back.
fn echoes(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    s.write_all(b"x").is_ok() && s.read_exact(&mut b).is_ok() && b == *b"x"
}

/// `nft monitor` in a namespace: every ruleset change while it runs.
struct Monitor {
    child: Child,
    out: PathBuf,
}

impl Monitor {
    fn start(ns: &Netns, dir: &Path) -> Monitor {
        let out = dir.join(format!("monitor-{}.txt", support::unique("m")));
        let child = ns
            .command("nft")
            .arg("monitor")
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("nft monitor");
        std::thread::sleep(Duration::from_millis(400));
        Monitor { child, out }
    }

    /// The events seen, without the `# new generation` lines.
    fn stop(self) -> Vec<String> {
        self.stop_counting().0
    }

    /// The events seen, and how many commits (generations) there were.
    fn stop_counting(mut self) -> (Vec<String>, usize) {
        std::thread::sleep(Duration::from_millis(400));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.out).unwrap();
        let generations = text
            .lines()
            .filter(|l| l.starts_with("# new generation"))
            .count();
        let events = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
        (events, generations)
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn refresh_follows_changing_answers_with_grace_and_keeps_flows_and_counters() {
    if !support::kernel_available(
        "refresh_follows_changing_answers_with_grace_and_keeps_flows_and_counters",
    ) {
        return;
    }
    let mut w = world();
    w.apply();
    assert!(w.connects(OLD), "the answered address is allowed");
    assert!(!w.connects(NEW), "an address never answered is dropped");
    let mut held = w.open(OLD);
    assert!(echoes(&mut held));
    for _ in 0..5 {
        assert!(w.connects(OLD));
    }
    let counted = w.allow_counter();
    assert!(counted >= 7, "allow rule counted {counted} packets");

    // Same answer: the addresses are seen again now, the kernel is not touched.
    let monitor = Monitor::start(&w.client, w.dir.path());
    let out = w.refresh(&["--grace", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing was sent"),
        "{}",
        stderr(&out)
    );
    assert_eq!(monitor.stop(), Vec::<String>::new());

    // The name moves.
    w.answer(NEW);
    let monitor = Monitor::start(&w.client, w.dir.path());
    let out = w.refresh(&["--grace", "3"]);
    let (events, commits) = monitor.stop_counting();
    let text = stderr(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(commits, 1, "one batch: {events:#?}");
    assert!(text.contains(&format!("{NAME}: + {NEW}")), "{text}");
    assert!(text.contains(&format!("{NAME}: ~ {OLD}")), "{text}");
    // Only set elements changed: no table, chain, set or rule message.
    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .all(|e| e.starts_with("add element inet egressc ")),
        "{events:#?}"
    );
    assert!(w.connects(NEW), "the new address connects at once");
    assert!(w.connects(OLD), "the old address connects during its grace");
    assert!(
        echoes(&mut held),
        "the open connection survives the refresh"
    );
    let after = w.allow_counter();
    assert!(
        after >= counted + 2,
        "the allow rule's counter went from {counted} to {after}: rules were reloaded"
    );
    let record: serde_json::Value = serde_json::from_slice(&w.record()).unwrap();
    let seen = record["seen"][NAME].as_object().expect("seen per address");
    assert!(seen.contains_key(OLD) && seen.contains_key(NEW), "{seen:?}");

    // The grace (3 s, more than the TTL of 1 s) runs out.
    std::thread::sleep(Duration::from_millis(4200));
    let monitor = Monitor::start(&w.client, w.dir.path());
    let out = w.refresh(&["--grace", "3"]);
    let events = monitor.stop();
    let text = stderr(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("{NAME}: - {OLD}")), "{text}");
    assert!(
        events
            .iter()
            .all(|e| e.starts_with("delete element inet egressc ")),
        "{events:#?}"
    );
    assert!(
        !w.connects(OLD),
        "the old address is dropped after its grace"
    );
    assert!(w.connects(NEW));
    assert!(
        echoes(&mut held),
        "an established connection stays (established flows are accepted first)"
    );
    assert!(w.allow_counter() > after);
    let set = w.set("allow_v4_addrs");
    assert!(set.contains(NEW) && !set.contains(OLD), "{set}");
}

#[test]
fn a_resolver_outage_fails_closed_and_changes_nothing() {
    if !support::kernel_available("a_resolver_outage_fails_closed_and_changes_nothing") {
        return;
    }
    let mut w = world();
    w.apply();
    let set = w.set("allow_v4_addrs");
    let record = w.record();
    assert!(set.contains(OLD), "{set}");
    drop(w.dns.take());
    let out = w.refresh(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(NAME), "{}", stderr(&out));
    assert_eq!(w.set("allow_v4_addrs"), set, "the elements changed");
    assert_eq!(w.record(), record, "the record changed");
    assert!(w.connects(OLD), "the known address keeps working");
}

#[test]
fn refresh_refuses_a_policy_that_is_not_the_applied_one() {
    if !support::kernel_available("refresh_refuses_a_policy_that_is_not_the_applied_one") {
        return;
    }
    let w = world();
    // Nothing applied yet.
    let out = w.refresh(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("apply this policy first"));

    w.apply();
    // Stateless (-s): the kernel's own IPv6 router solicitations on the veth
    // tick the neighbour-discovery counter at any time; the rules and elements
    // are what must not change.
    let table = w
        .client
        .exec_ok("nft", &["-s", "list", "table", "inet", "egressc"]);
    let other = write_file(
        w.dir.path(),
        "other.yaml",
        &format!(
            "version: 1\nname: refresh\ndefault: deny\ndns:\n  resolvers: [{RESOLVER}]\nallow:\n  - host: {NAME}\n    ports: [8443]\n"
        ),
    );
    let out = w.egressc(&["refresh", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("apply this policy first"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        w.client
            .exec_ok("nft", &["-s", "list", "table", "inet", "egressc"]),
        table
    );
}

#[test]
fn a_refresh_that_changes_nothing_sends_nothing() {
    if !support::kernel_available("a_refresh_that_changes_nothing_sends_nothing") {
        return;
    }
    let w = world();
    w.apply();
    let set = w.set("allow_v4_addrs");
    let monitor = Monitor::start(&w.client, w.dir.path());
    let out = w.refresh(&[]);
    let events = monitor.stop();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing was sent"),
        "{}",
        stderr(&out)
    );
    assert_eq!(events, Vec::<String>::new());
    assert_eq!(w.set("allow_v4_addrs"), set);
}

#[test]
fn an_element_whose_entries_change_is_deleted_and_added_in_one_batch() {
    if !support::kernel_available(
        "an_element_whose_entries_change_is_deleted_and_added_in_one_batch",
    ) {
        return;
    }
    let mut w = world();
    // NEW:443 is allowed by a second entry too: once the name points there,
    // the element serves both entries and its comment must say so.
    std::fs::write(
        &w.policy,
        format!(
            "version: 1\nname: refresh\ndefault: deny\ndns:\n  resolvers: [{RESOLVER}]\nallow:\n  - host: {NAME}\n    ports: [443]\n  - cidr: {NEW}\n    ports: [443]\n"
        ),
    )
    .unwrap();
    w.apply();
    let before = w.set("allow_v4_addrs");
    assert!(before.contains("comment \"allow[1] cidr"), "{before}");
    let mut held = w.open(NEW);
    w.answer(NEW);
    let monitor = Monitor::start(&w.client, w.dir.path());
    let out = w.refresh(&[]);
    let (events, commits) = monitor.stop_counting();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(commits, 1, "{events:#?}");
    let after = w.set("allow_v4_addrs");
    assert!(after.contains("comment \"allow[0,1]\""), "{after}");
    assert!(after.contains(OLD), "{after}");
    let replaced: Vec<&String> = events.iter().filter(|e| e.contains(NEW)).collect();
    assert!(
        replaced.len() == 2
            && replaced[0].starts_with("delete element")
            && replaced[1].starts_with("add element"),
        "{events:#?}"
    );
    assert!(w.connects(NEW) && w.connects(OLD));
    assert!(echoes(&mut held));
}

#[test]
fn a_large_set_is_updated_and_its_changes_read_back_element_by_element() {
    if !support::kernel_available(
        "a_large_set_is_updated_and_its_changes_read_back_element_by_element",
    ) {
        return;
    }
    let mut w = world();
    // 5,000 more single addresses: the hash set is past the size where the
    // read-back dumps it, so refresh looks its changes up one by one.
    let mut text = format!(
        "version: 1\nname: refresh\ndefault: deny\ndns:\n  resolvers: [{RESOLVER}]\nallow:\n  - host: {NAME}\n    ports: [443]\n"
    );
    for i in 0..5_000u32 {
        let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 77, 0, 0)) + i);
        text.push_str(&format!("  - cidr: {ip}\n    ports: [443]\n"));
    }
    std::fs::write(&w.policy, text).unwrap();
    w.apply();
    w.answer(NEW);
    let out = w.refresh(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 set elements added, 0 deleted"),
        "{}",
        stderr(&out)
    );
    assert!(w.connects(NEW) && w.connects(OLD));
    // OLD was last seen at the apply, with a TTL of 1 s: without grace it goes.
    std::thread::sleep(Duration::from_millis(2100));
    let out = w.refresh(&["--grace", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("0 set elements added, 1 deleted"),
        "{}",
        stderr(&out)
    );
    assert!(w.connects(NEW) && !w.connects(OLD));
    let set = w.set("allow_v4_addrs");
    assert_eq!(set.matches(" . tcp . 443").count(), 5_001, "{set}");
}
