//! Shared test harness: real DNS servers, network namespaces, raw DNS probes.
//!
//! Nothing here is a mock. `Unbound` runs the real unbound from apt on real
//! sockets; `Netns` makes real network namespaces with `ip netns`; `dns_query`
//! sends a hand-built DNS packet so a test can tell "answered" from "dropped".
//! [`moving`] is the world of a name whose address changes (refresh, watch).
#![allow(dead_code)]

pub mod moving;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const EGRESSC: &str = env!("CARGO_BIN_EXE_egressc");

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this process and call, for namespaces and files.
pub fn unique(tag: &str) -> String {
    format!(
        "egc-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Whether this test should run its kernel part here (root, namespaces, nftables).
///
/// * root: yes.
/// * not root, but unprivileged user namespaces work: the test runs itself again
///   as root inside a private user + network + mount namespace (a tmpfs on /run
///   so `ip netns` works), asserts that run passed, and returns false here.
/// * neither: in CI (CI=true) that is a failure; elsewhere a visible notice.
pub fn kernel_available(test: &str) -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let userns = Command::new("unshare")
        .args(["-Urnm", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if userns {
        let exe = std::env::current_exe().expect("test binary path");
        let out = Command::new("unshare")
            .args(["-Urnm", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs tmpfs /run && exec \"$0\" --exact \"$1\" --nocapture --test-threads 1")
            .arg(exe)
            .arg(test)
            .output()
            .expect("run unshare");
        assert!(
            out.status.success(),
            "{test} failed inside an unprivileged user namespace:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let ran = String::from_utf8_lossy(&out.stdout).contains("1 passed");
        assert!(ran, "{test} did not run inside the user namespace");
        eprintln!("NOTICE: {test} ran as root inside an unprivileged user namespace");
        return false;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{test}: kernel tests must run in CI, but this is neither root nor allowed unprivileged user namespaces"
        );
    }
    eprintln!("NOTICE: {test} skipped: needs root or unprivileged user namespaces");
    false
}

/// Runs a command and returns its output, panicking with stderr if it cannot start.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

/// Runs a command that must succeed.
pub fn run_ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        run_ok("ip", &["netns", "add", &name]);
        run_ok("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// `ip netns exec NAME cmd args…`
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", self.name.as_str(), cmd];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    pub fn exec_ok(&self, cmd: &str, args: &[&str]) -> String {
        let out = self.exec(cmd, args);
        assert!(
            out.status.success(),
            "in {}: {cmd} {args:?} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command that will run inside the namespace.
    pub fn command(&self, cmd: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, cmd]);
        c
    }

    /// Runs `f` on a thread that has entered this namespace (network namespaces
    /// are per thread), so sockets it opens live there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// Joins two namespaces with a veth pair and brings both ends up with the given
/// addresses (`10.0.0.1/24`, `fd00::1/64`; IPv6 without duplicate address
/// detection, so it is usable at once). Returns the two interface names.
pub fn veth_pair(a: &Netns, a_addrs: &[&str], b: &Netns, b_addrs: &[&str]) -> (String, String) {
    // Interface names hold at most 15 characters; namespace names are unique, so
    // their counter suffix keeps the pair unique too.
    let id = a.name.rsplit('-').next().unwrap();
    let pid = std::process::id() % 10000;
    let (va, vb) = (format!("egc{pid}a{id}"), format!("egc{pid}b{id}"));
    run_ok(
        "ip",
        &[
            "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns",
            &b.name,
        ],
    );
    for (ns, dev, addrs) in [(a, &va, a_addrs), (b, &vb, b_addrs)] {
        for addr in addrs {
            let mut args = vec!["addr", "add", addr, "dev", dev.as_str()];
            if addr.contains(':') {
                args.push("nodad");
            }
            ns.exec_ok("ip", &args);
        }
        ns.exec_ok("ip", &["link", "set", dev, "up"]);
    }
    (va, vb)
}

/// examples/*/policy.yaml, sorted (tests run from the package root).
pub fn examples() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("examples")
        .expect("examples/")
        .filter_map(|e| {
            let p = e.ok()?.path().join("policy.yaml");
            p.exists().then_some(p)
        })
        .collect();
    found.sort();
    found
}

/// The ruleset of a policy with the lock file beside it (what
/// `render --locked` compiles).
pub fn locked_ruleset(policy: &Path) -> egressc::ir::Ruleset {
    let loaded = egressc::policy::load(policy, Default::default()).expect("policy loads");
    let lock = egressc::resolve::lock::lock_path(policy);
    let resolution =
        egressc::resolve::lock::read(&lock, policy, &loaded.policy).expect("lock reads");
    egressc::ir::lower::lower(&loaded.policy, &resolution).expect("lowers")
}

/// Whether an example runs in DNS proxy mode (which iptables cannot express).
pub fn uses_proxy(policy: &Path) -> bool {
    egressc::policy::load(policy, egressc::policy::TargetFormat::Nft)
        .expect("the examples are valid")
        .policy
        .dns
        .proxy
        .is_some()
}

/// Docker-like state egressc must never touch: nat and filter tables with
/// chains and rules, and another inet table with a set.
pub const FOREIGN_NFT: &str = "table ip nat {\n chain POSTROUTING { type nat hook postrouting priority srcnat; policy accept; oifname \"eth0\" masquerade; }\n}\n\
table ip filter {\n chain DOCKER-USER { return; }\n chain FORWARD { type filter hook forward priority filter; policy drop; jump DOCKER-USER; }\n}\n\
table inet other {\n set keep { type ipv4_addr; elements = { 192.0.2.99 }; }\n chain output { type filter hook output priority 10; policy accept; ip daddr @keep counter; }\n}\n";

/// Loads [`FOREIGN_NFT`] into `ns`.
pub fn add_foreign_nft(ns: &Netns, dir: &Path) {
    let path = write_file(dir, "foreign.nft", FOREIGN_NFT);
    ns.exec_ok("nft", &["-f", path.to_str().unwrap()]);
}

/// The listings of the tables in [`FOREIGN_NFT`], to compare before and after.
pub fn foreign_nft_listing(ns: &Netns) -> Vec<String> {
    ["ip nat", "ip filter", "inet other"]
        .iter()
        .map(|t| {
            let args: Vec<&str> = ["list", "table"].into_iter().chain(t.split(' ')).collect();
            ns.exec_ok("nft", &args)
        })
        .collect()
}

/// A free port on `ip` for both UDP and TCP (a DNS server needs both).
pub fn free_port(ip: IpAddr) -> u16 {
    for _ in 0..50 {
        let tcp = TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind tcp");
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(SocketAddr::new(ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip}");
}

/// A real unbound serving static local zones, killed on drop.
pub struct Unbound {
    child: Child,
    _dir: tempfile::TempDir,
    pub addrs: Vec<SocketAddr>,
    pub log: PathBuf,
}

/// One zone record in unbound's `local-data` syntax, e.g.
/// `a.test. 300 IN A 192.0.2.1`.
pub fn rr(name: &str, ttl: u32, rtype: &str, value: &str) -> String {
    format!("{name}. {ttl} IN {rtype} {value}")
}

impl Unbound {
    /// Starts unbound on `listen` (all on `port`), authoritative for `zones` (every
    /// other name under them is NXDOMAIN), inside `netns` if given. A zone written
    /// `"name type"` gets that local-zone type instead of `static`.
    pub fn start(
        listen: &[IpAddr],
        port: u16,
        zones: &[&str],
        records: &[String],
        netns: Option<&Netns>,
    ) -> Unbound {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("unbound.log");
        let mut conf = String::from("server:\n");
        for ip in listen {
            conf.push_str(&format!("  interface: {ip}\n"));
        }
        conf.push_str(&format!(
            "  port: {port}\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  directory: \"{dir}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"{log}\"\n  verbosity: 1\n  num-threads: 1\n  module-config: \"iterator\"\n  access-control: 0.0.0.0/0 allow\n  access-control: ::/0 allow\n  num-queries-per-thread: 4096\n  incoming-num-tcp: 512\n  outgoing-range: 1024\n  so-reuseport: no\n  do-ip6: yes\n  msg-buffer-size: 65552\n",
            dir = dir.path().display(),
            log = log.display(),
        ));
        for zone in zones {
            // `name` is a static zone; `name type` another local-zone type (e.g.
            // `deny`: queries are dropped, never answered).
            let (zone, kind) = zone.split_once(' ').unwrap_or((zone, "static"));
            conf.push_str(&format!("  local-zone: \"{zone}.\" {kind}\n"));
        }
        for r in records {
            conf.push_str(&format!("  local-data: \"{r}\"\n"));
        }
        let conf_path = dir.path().join("unbound.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let check = run("unbound-checkconf", &[conf_path.to_str().unwrap()]);
        assert!(
            check.status.success(),
            "unbound config: {}",
            String::from_utf8_lossy(&check.stdout)
        );
        let mut cmd = match netns {
            Some(ns) => ns.command("unbound"),
            None => Command::new("unbound"),
        };
        let child = cmd
            .args(["-d", "-c", conf_path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start unbound (apt-get install unbound)");
        let addrs: Vec<SocketAddr> = listen.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
        let unbound = Unbound {
            child,
            _dir: dir,
            addrs,
            log,
        };
        unbound.wait_ready(zones.first().copied().unwrap_or("test"), netns);
        unbound
    }

    fn wait_ready(&self, zone: &str, netns: Option<&Netns>) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let server = self.addrs[0];
        let name = format!("ready-probe.{zone}");
        loop {
            let name = name.clone();
            let answered = match netns {
                Some(ns) => {
                    ns.run(move || dns_query_udp(server, &name, 1, Duration::from_millis(300)))
                }
                None => dns_query_udp(server, &name, 1, Duration::from_millis(300)),
            };
            if answered.is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "unbound did not start on {server}: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds a DNS query for `name` with record type `qtype` (1 = A, 28 = AAAA).
pub fn dns_packet(name: &str, qtype: u16) -> Vec<u8> {
    let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p
}

/// Sends one DNS query over UDP; the response, or None if nothing came back.
pub fn dns_query_udp(
    server: SocketAddr,
    name: &str,
    qtype: u16,
    wait: Duration,
) -> Option<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let sock = UdpSocket::bind(bind).ok()?;
    sock.set_read_timeout(Some(wait)).ok()?;
    sock.send_to(&dns_packet(name, qtype), server).ok()?;
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

/// Sends one DNS query over TCP; the response, or None on any failure.
pub fn dns_query_tcp(
    server: SocketAddr,
    name: &str,
    qtype: u16,
    wait: Duration,
) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&server, wait).ok()?;
    stream.set_read_timeout(Some(wait)).ok()?;
    let packet = dns_packet(name, qtype);
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&packet);
    stream.write_all(&framed).ok()?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// The response code of a DNS response (0 NOERROR, 3 NXDOMAIN, 5 REFUSED).
pub fn rcode(response: &[u8]) -> u8 {
    response[3] & 0x0f
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs egressc with `args`, optionally inside a namespace.
pub fn egressc(args: &[&str], netns: Option<&Netns>) -> Output {
    let mut cmd = match netns {
        Some(ns) => ns.command(EGRESSC),
        None => Command::new(EGRESSC),
    };
    cmd.args(args).output().expect("run egressc")
}

const ADDRESSES_PER_HOST: usize = 1000;

/// Writes a policy with N/1000 hosts and a lock giving each host 1000 addresses
/// (spread out: nothing aggregates), plus `extra_entries` (YAML allow items).
pub fn address_fixture(
    dir: &std::path::Path,
    addresses: usize,
    extra_entries: &str,
) -> std::path::PathBuf {
    let hosts = addresses / ADDRESSES_PER_HOST;
    let mut policy = String::from(
        "version: 1\nname: bench\ndefault: deny\ndns:\n  resolvers: [127.0.0.1]\nallow:\n",
    );
    for h in 0..hosts {
        writeln!(policy, "  - host: h{h}.bench.test\n    ports: [443]").unwrap();
    }
    policy.push_str(extra_entries);
    let path = dir.join(format!("bench-{addresses}.yaml"));
    std::fs::write(&path, &policy).unwrap();
    let mut lock = format!(
        "{{\"lock_format\":1,\"policy_sha256\":\"{}\",\"resolved_at\":\"2026-01-01T00:00:00Z\",\"resolvers\":[\"127.0.0.1\"],\"port\":53,\"hosts\":{{",
        egressc::policy::sha256_hex(policy.as_bytes())
    );
    let base = u32::from(Ipv4Addr::new(10, 0, 0, 0));
    for h in 0..hosts {
        if h > 0 {
            lock.push(',');
        }
        write!(lock, "\"h{h}.bench.test\":{{\"addresses\":[").unwrap();
        for a in 0..ADDRESSES_PER_HOST {
            let n = (h * ADDRESSES_PER_HOST + a) as u32;
            if a > 0 {
                lock.push(',');
            }
            // Spread out so nothing aggregates: one hash-set element per address.
            write!(
                lock,
                "{{\"addr\":\"{}\",\"ttl\":300}}",
                Ipv4Addr::from(base + n * 3 + 1)
            )
            .unwrap();
        }
        lock.push_str("]}");
    }
    lock.push_str("}}\n");
    std::fs::write(dir.join(format!("bench-{addresses}.yaml.lock")), lock).unwrap();
    path
}
