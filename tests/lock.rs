//! `egressc lock` and `egressc render --locked`, through the real binary.
//!
//! Each test writes a policy pinned to a real unbound on 127.0.0.1:P into a
//! temporary directory. "No DNS at all" is proven, not assumed: the DNS server is
//! stopped and its port is taken over by sockets that record any query.

mod support;

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use sha2::Digest;
use support::{EGRESSC, Unbound, egressc, free_port, rr, write_file};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The three output formats, as command-line arguments.
const FORMATS: [&[&str]; 3] = [&[], &["--format", "iptables"], &["--format", "ip6tables"]];

/// The first answers: api.test (v4 + v6), www.test through a CNAME, v6.test
/// IPv6 only; maybe.test (optional) does not exist.
fn records_v1() -> Vec<String> {
    vec![
        rr("api.test", 300, "A", "192.0.2.10"),
        rr("api.test", 300, "A", "192.0.2.11"),
        rr("api.test", 300, "AAAA", "2001:db8::10"),
        rr("www.test", 300, "CNAME", "edge.test."),
        rr("edge.test", 60, "A", "198.51.100.5"),
        rr("v6.test", 120, "AAAA", "2001:db8:6::6"),
    ]
}

/// The same names after the operator moved them.
fn records_v2() -> Vec<String> {
    vec![
        rr("api.test", 300, "A", "203.0.113.10"),
        rr("api.test", 300, "AAAA", "2001:db8:2::10"),
        rr("www.test", 300, "CNAME", "edge.test."),
        rr("edge.test", 60, "A", "203.0.113.5"),
        rr("v6.test", 120, "AAAA", "2001:db8:2::6"),
    ]
}

const ENTRIES: [&str; 5] = [
    "  - host: api.test\n    ports: [443]\n",
    "  - host: www.test\n    ports: [443, \"8000-8100\"]\n",
    "  - host: v6.test\n    ports: [53]\n    protocol: udp\n",
    "  - host: maybe.test\n    ports: [443]\n    optional: true\n",
    "  - cidr: 10.20.0.0/16\n    ports: [5432]\n",
];

fn policy_text(port: u16, entries: &[&str]) -> String {
    format!(
        "version: 1\nname: lock-test\ndns:\n  resolvers: [127.0.0.1]\n  port: {port}\nallow:\n{}",
        entries.concat()
    )
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn lock_of(policy: &Path) -> PathBuf {
    PathBuf::from(format!("{}.lock", policy.display()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs egressc and requires success; returns stdout.
fn ok(args: &[&str]) -> String {
    let out = egressc(args, None);
    assert!(
        out.status.success(),
        "egressc {args:?} failed ({:?}): {}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs egressc and requires an operational failure (exit 2) that prints
/// nothing on stdout; returns stderr.
fn fails(args: &[&str]) -> String {
    let out = egressc(args, None);
    assert_eq!(
        out.status.code(),
        Some(2),
        "egressc {args:?}: expected exit 2; stdout {}\nstderr {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        out.stdout.is_empty(),
        "egressc {args:?} failed but printed: {}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

fn render(policy: &Path, format: &[&str], extra: &[&str]) -> String {
    let mut args = vec!["render", s(policy)];
    args.extend_from_slice(format);
    args.extend_from_slice(extra);
    ok(&args)
}

fn render_locked(policy: &Path, format: &[&str]) -> String {
    render(policy, format, &["--locked"])
}

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
}

/// `["addr/ttl", …]` of one host in a lock file, in the file's order.
fn locked_addresses(lock: &Value, host: &str) -> Vec<String> {
    lock["hosts"][host]["addresses"]
        .as_array()
        .unwrap_or_else(|| panic!("no addresses for {host} in {lock:#}"))
        .iter()
        .map(|a| format!("{}/{}", a["addr"].as_str().unwrap(), a["ttl"]))
        .collect()
}

/// UDP and TCP sockets on the resolver's port that record whether anyone asked.
struct Listener {
    udp: UdpSocket,
    tcp: TcpListener,
}

impl Listener {
    fn bind(addr: SocketAddr) -> Listener {
        let udp = UdpSocket::bind(addr).expect("the old resolver's UDP port is free");
        let tcp = TcpListener::bind(addr).expect("the old resolver's TCP port is free");
        udp.set_nonblocking(true).unwrap();
        tcp.set_nonblocking(true).unwrap();
        Listener { udp, tcp }
    }

    /// Whether a UDP datagram or a TCP connection has arrived.
    fn asked(&self) -> bool {
        let mut buf = [0u8; 512];
        let udp = match self.udp.recv_from(&mut buf) {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) => panic!("udp: {e}"),
        };
        let tcp = match self.tcp.accept() {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) => panic!("tcp: {e}"),
        };
        udp || tcp
    }
}

/// Removes what only names entries or versions: `#` lines (the header holds the
/// policy's hash and the resolution time) and every `comment "…"` text (nft
/// `comment "…"`, iptables `--comment "…"`).
fn strip_comments(rendered: &str) -> String {
    let mut out = String::new();
    for line in rendered.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("comment \"") {
            out.push_str(&rest[..at]);
            let after = &rest[at + "comment \"".len()..];
            let end = after.find('"').expect("comment closes on its line");
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    out
}

#[test]
fn lock_writes_hosts_addresses_ttls_resolvers_time_and_the_policy_hash() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port(LO);
    let _dns = Unbound::start(&[LO], port, &["test"], &records_v1(), None);
    let policy_text = policy_text(port, &ENTRIES);
    let policy = write_file(dir.path(), "p.yaml", &policy_text);

    let before = SystemTime::now();
    let out = egressc(&["lock", s(&policy)], None);
    let after = SystemTime::now();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "lock prints nothing on stdout");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("maybe.test"),
        "the skipped host is warned about: {stderr}"
    );

    let lock = read_json(&dir.path().join("p.yaml.lock"));
    assert_eq!(lock["lock_format"], 1);
    let sha: String = sha2::Sha256::digest(policy_text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(lock["policy_sha256"], sha.as_str());
    assert_eq!(lock["resolvers"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(lock["port"], port);

    let resolved_at = lock["resolved_at"].as_str().expect("resolved_at");
    let resolved_at = humantime::parse_rfc3339(resolved_at)
        .unwrap_or_else(|e| panic!("resolved_at {resolved_at:?}: {e}"));
    assert!(resolved_at + Duration::from_secs(1) >= before && resolved_at <= after);

    let hosts: Vec<&String> = lock["hosts"].as_object().unwrap().keys().collect();
    assert_eq!(hosts, ["api.test", "maybe.test", "v6.test", "www.test"]);
    assert_eq!(
        locked_addresses(&lock, "api.test"),
        ["192.0.2.10/300", "192.0.2.11/300", "2001:db8::10/300"]
    );
    // The CNAME chain is recorded, and its smallest TTL wins.
    assert_eq!(locked_addresses(&lock, "www.test"), ["198.51.100.5/60"]);
    assert_eq!(
        lock["hosts"]["www.test"]["cnames"],
        serde_json::json!(["edge.test"])
    );
    assert_eq!(locked_addresses(&lock, "v6.test"), ["2001:db8:6::6/120"]);
    // The optional host that does not exist is recorded as such, with no addresses.
    assert_eq!(locked_addresses(&lock, "maybe.test"), Vec::<String>::new());
    let why = lock["hosts"]["maybe.test"]["unresolved"].as_str().unwrap();
    assert!(why.contains("NXDOMAIN"), "{why}");

    // Nothing but the policy and its lock: the temporary file was renamed.
    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["p.yaml", "p.yaml.lock"]);
}

#[test]
fn render_locked_makes_no_dns_query_and_is_byte_stable() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port(LO);
    let policy = write_file(dir.path(), "p.yaml", &policy_text(port, &ENTRIES));
    let dns = Unbound::start(&[LO], port, &["test"], &records_v1(), None);
    ok(&["lock", s(&policy)]);
    let server = dns.addrs[0];
    drop(dns);

    // The resolver is gone; its port now only records whether anyone asks.
    let listener = Listener::bind(server);
    for format in FORMATS {
        let first = render_locked(&policy, format);
        let second = render_locked(&policy, format);
        assert!(!first.is_empty());
        assert_eq!(first, second, "{format:?}: two renders of one lock differ");
        match format {
            [] => {
                for addr in ["192.0.2.10", "192.0.2.11", "198.51.100.5", "2001:db8::10"] {
                    assert!(first.contains(addr), "nft lacks {addr}:\n{first}");
                }
            }
            [_, "iptables"] => {
                assert!(first.contains("192.0.2.10"), "{first}");
                assert!(!first.contains("2001:db8"), "{first}");
            }
            _ => {
                assert!(first.contains("2001:db8:6::6"), "{first}");
                assert!(!first.contains("192.0.2.10"), "{first}");
            }
        }
        // Written to a file, the bytes are the same as on stdout.
        let out = dir.path().join("out.txt");
        render(&policy, format, &["--locked", "-o", s(&out)]);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), first);
    }
    assert!(
        !listener.asked(),
        "render --locked sent a DNS query to the pinned resolver"
    );

    // The probe works: without --locked, egressc does ask on that port.
    let mut child = std::process::Command::new(EGRESSC)
        .args(["render", s(&policy)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listener.asked() {
        assert!(
            Instant::now() < deadline,
            "render without --locked never asked"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_lock_keeps_its_addresses_after_the_dns_data_changes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port(LO);
    let policy = write_file(dir.path(), "p.yaml", &policy_text(port, &ENTRIES));
    let dns = Unbound::start(&[LO], port, &["test"], &records_v1(), None);
    ok(&["lock", s(&policy)]);
    let locked: Vec<String> = FORMATS.iter().map(|f| render_locked(&policy, f)).collect();
    drop(dns);

    let _dns = Unbound::start(&[LO], port, &["test"], &records_v2(), None);
    for (format, before) in FORMATS.iter().zip(&locked) {
        let from_lock = render_locked(&policy, format);
        assert_eq!(&from_lock, before, "{format:?}: the lock no longer decides");
        let fresh = render(&policy, format, &[]);
        let (old, new) = match format {
            [_, "ip6tables"] => ("2001:db8::10", "2001:db8:2::10"),
            _ => ("192.0.2.10", "203.0.113.10"),
        };
        assert!(
            from_lock.contains(old) && !from_lock.contains(new),
            "{from_lock}"
        );
        assert!(fresh.contains(new) && !fresh.contains(old), "{fresh}");
    }
    // Locking again picks up the new answers.
    ok(&["lock", s(&policy)]);
    assert_eq!(
        locked_addresses(&read_json(&lock_of(&policy)), "api.test"),
        ["203.0.113.10/300", "2001:db8:2::10/300"]
    );
}

#[test]
fn renders_do_not_depend_on_the_order_of_dns_answers() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port(LO);
    let policy = write_file(dir.path(), "p.yaml", &policy_text(port, &ENTRIES));
    // Enough addresses, some adjacent (they may be aggregated), in two orders.
    let mut forward: Vec<String> = [
        "192.0.2.7",
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.3",
        "192.0.2.200",
        "192.0.2.9",
        "198.51.100.4",
        "198.51.100.5",
        "10.1.2.3",
        "203.0.113.250",
        "192.0.2.0",
        "192.0.2.8",
    ]
    .iter()
    .map(|a| rr("api.test", 300, "A", a))
    .collect();
    forward.extend(
        [
            "2001:db8::3",
            "2001:db8::1",
            "2001:db8::2",
            "2001:db8:ff::1",
        ]
        .iter()
        .map(|a| rr("api.test", 300, "AAAA", a)),
    );
    forward.extend(
        records_v1()
            .into_iter()
            .filter(|r| !r.starts_with("api.test")),
    );
    let mut backward = forward.clone();
    backward.reverse();

    let mut locks = Vec::new();
    for (name, records) in [("forward", &forward), ("backward", &backward)] {
        let _dns = Unbound::start(&[LO], port, &["test"], records, None);
        let lock = dir.path().join(format!("{name}.lock"));
        ok(&["lock", s(&policy), "--lock-file", s(&lock)]);
        locks.push(lock);
    }
    // The two locks differ only in when they were made.
    let mut a = read_json(&locks[0]);
    let mut b = read_json(&locks[1]);
    assert_eq!(a["hosts"], b["hosts"]);
    assert_eq!(locked_addresses(&a, "api.test").len(), 16);
    b["resolved_at"] = a["resolved_at"].clone();
    write_json(&locks[1], &b);

    // A hand-edited lock listing every host's addresses backwards.
    for host in a["hosts"].as_object_mut().unwrap().values_mut() {
        host["addresses"].as_array_mut().unwrap().reverse();
    }
    let shuffled = dir.path().join("shuffled.lock");
    write_json(&shuffled, &a);

    for format in FORMATS {
        let renders: Vec<String> = [&locks[0], &locks[1], &shuffled]
            .iter()
            .map(|lock| render(&policy, format, &["--locked", "--lock-file", s(lock)]))
            .collect();
        assert_eq!(
            renders[0], renders[1],
            "{format:?}: DNS answer order leaked"
        );
        assert_eq!(renders[0], renders[2], "{format:?}: lock order leaked");
    }
}

#[test]
fn renders_do_not_depend_on_the_order_of_the_allow_list_apart_from_comments() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port(LO);
    let _dns = Unbound::start(&[LO], port, &["test"], &records_v1(), None);
    let reordered = [
        ENTRIES[4],
        "  - host: www.test\n    ports: [\"8000-8100\", 443]\n",
        ENTRIES[3],
        ENTRIES[0],
        ENTRIES[2],
    ];
    let a = write_file(dir.path(), "a.yaml", &policy_text(port, &ENTRIES));
    let b = write_file(dir.path(), "b.yaml", &policy_text(port, &reordered));
    ok(&["lock", s(&a)]);
    ok(&["lock", s(&b)]);
    for format in FORMATS {
        let ra = render_locked(&a, format);
        let rb = render_locked(&b, format);
        assert_ne!(
            ra, rb,
            "{format:?}: the comments should name different entries"
        );
        assert_eq!(strip_comments(&ra), strip_comments(&rb), "{format:?}");
        assert!(
            strip_comments(&ra).contains("443"),
            "stripped too much: {ra}"
        );
    }
}

#[test]
fn render_locked_fails_clearly_when_the_lock_is_missing_stale_incomplete_or_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port(LO);
    let text = policy_text(port, &ENTRIES);
    let policy = write_file(dir.path(), "p.yaml", &text);
    let lock = lock_of(&policy);
    let out = dir.path().join("out.nft");

    // Every failure: exit 2, nothing on stdout, and no output file written. A
    // problem with the lock names the lock file.
    let check = |why: &str, expected: &[&str]| {
        for format in FORMATS {
            let mut args = vec!["render", s(&policy), "--locked"];
            args.extend_from_slice(format);
            let stderr = fails(&args);
            for e in expected {
                assert!(
                    stderr.contains(e),
                    "{why} {format:?}: stderr lacks {e:?}: {stderr}"
                );
            }
            args.extend_from_slice(&["-o", s(&out)]);
            fails(&args);
            assert!(!out.exists(), "{why}: an output file was written");
        }
    };

    check("missing", &["egressc lock", "p.yaml.lock"]);

    let dns = Unbound::start(&[LO], port, &["test"], &records_v1(), None);
    ok(&["lock", s(&policy)]);
    drop(dns);
    let good = std::fs::read(&lock).unwrap();
    render_locked(&policy, &[]);

    // The policy changed after locking (only a comment, but other bytes).
    std::fs::write(&policy, format!("{text}# reviewed\n")).unwrap();
    check("stale", &["p.yaml.lock", "another version", "egressc lock"]);
    std::fs::write(&policy, &text).unwrap();
    render_locked(&policy, &[]);

    // A lock that lacks one host.
    let mut json: Value = serde_json::from_slice(&good).unwrap();
    json["hosts"].as_object_mut().unwrap().remove("www.test");
    write_json(&lock, &json);
    check("lacks a host", &["p.yaml.lock", "www.test"]);
    // Even an optional host: a lock that never asked about it is not this policy's.
    let mut json: Value = serde_json::from_slice(&good).unwrap();
    json["hosts"].as_object_mut().unwrap().remove("maybe.test");
    write_json(&lock, &json);
    check("lacks an optional host", &["p.yaml.lock", "maybe.test"]);

    // Damaged: cut in half; not JSON at all; an address that is not one; a
    // field nobody knows; an unknown format version.
    std::fs::write(&lock, &good[..good.len() / 2]).unwrap();
    check("truncated", &["p.yaml.lock", "damaged"]);
    std::fs::write(&lock, "not json\n").unwrap();
    check("not json", &["damaged"]);
    let mut json: Value = serde_json::from_slice(&good).unwrap();
    json["hosts"]["api.test"]["addresses"][0]["addr"] = "192.0.2.300".into();
    write_json(&lock, &json);
    check("bad address", &["damaged"]);
    let mut json: Value = serde_json::from_slice(&good).unwrap();
    json["hosts"]["api.test"]["extra"] = true.into();
    write_json(&lock, &json);
    check("unknown field", &["damaged"]);
    let mut json: Value = serde_json::from_slice(&good).unwrap();
    json["lock_format"] = 99.into();
    write_json(&lock, &json);
    check("unknown format", &["damaged"]);
    // The time is copied into the rendered header: it must be a time.
    let mut json: Value = serde_json::from_slice(&good).unwrap();
    json["resolved_at"] = "2026-01-01\nflush ruleset".into();
    write_json(&lock, &json);
    check(
        "resolved_at is not a time",
        &["p.yaml.lock", "damaged", "resolved_at"],
    );

    // A required host whose addresses were deleted by hand.
    let mut json: Value = serde_json::from_slice(&good).unwrap();
    json["hosts"]["api.test"]["addresses"] = serde_json::json!([]);
    write_json(&lock, &json);
    check("required host without addresses", &["api.test"]);

    std::fs::write(&lock, &good).unwrap();
    render_locked(&policy, &[]);
}

#[test]
fn a_required_host_that_does_not_resolve_renders_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port(LO);
    let _dns = Unbound::start(&[LO], port, &["test"], &records_v1(), None);
    let mut entries = ENTRIES.to_vec();
    entries.push("  - host: gone.test\n    ports: [443]\n");
    let policy = write_file(dir.path(), "p.yaml", &policy_text(port, &entries));

    let out = dir.path().join("out.nft");
    for format in FORMATS {
        let mut args = vec!["render", s(&policy)];
        args.extend_from_slice(format);
        let stderr = fails(&args);
        assert!(stderr.contains("gone.test"), "{stderr}");
        assert!(stderr.contains("NXDOMAIN"), "{stderr}");
        args.extend_from_slice(&["-o", s(&out)]);
        fails(&args);
        assert!(!out.exists(), "{format:?}: an output file was written");
    }
    let stderr = fails(&["lock", s(&policy)]);
    assert!(stderr.contains("gone.test"), "{stderr}");
    assert!(
        !lock_of(&policy).exists(),
        "a lock was written for a failed resolution"
    );

    // Nothing at all was left behind (no temporary files either).
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, ["p.yaml"]);

    // The same policy with the host optional renders, and warns about it.
    entries.pop();
    entries.push("  - host: gone.test\n    ports: [443]\n    optional: true\n");
    std::fs::write(&policy, policy_text(port, &entries)).unwrap();
    let out = egressc(&["render", s(&policy)], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("gone.test") && stderr.contains("warning"),
        "{stderr}"
    );
    assert!(text(&out.stdout).contains("192.0.2.10"));
}
