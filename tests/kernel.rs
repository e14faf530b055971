//! Kernel truth: the rendered rules are loaded into real nftables / iptables in
//! network namespaces, and real connections prove what they allow and deny.
//!
//! These tests need root (or they skip with a notice outside CI; in CI they must
//! run — see `support::kernel_available`).

mod support;

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{Netns, Unbound, dns_query_tcp, dns_query_udp, egressc, rr, write_file};

const PROBE_TIMEOUT: Duration = Duration::from_millis(700);

fn render_locked(policy: &Path, format: &str, dir: &Path) -> PathBuf {
    let out = egressc(
        &[
            "render",
            policy.to_str().unwrap(),
            "--locked",
            "--format",
            format,
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join(format!(
        "{}.{format}",
        policy
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
    ));
    std::fs::write(&path, out.stdout).unwrap();
    path
}

/// The load commands a rendered file documents in its header (`# Load …` block),
/// with THIS_FILE filled in: the tests run exactly what the user is told to run.
fn documented_load_commands(rendered: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(rendered).unwrap();
    let mut commands = Vec::new();
    let mut in_load = false;
    for line in text.lines() {
        if line.starts_with("# Load") {
            in_load = true;
            if let Some((_, cmd)) = line.split_once(':') {
                let cmd = cmd.trim();
                if let Some(cmd) = cmd.split("  ").next().filter(|c| c.contains("THIS_FILE")) {
                    commands.push(cmd.trim().to_string());
                }
            }
            continue;
        }
        if in_load {
            match line.strip_prefix("#   ") {
                Some(cmd) => commands.push(cmd.trim().to_string()),
                None if line.starts_with("# ") && !line.starts_with("# Check") => continue,
                None => break,
            }
        }
    }
    assert!(
        !commands.is_empty(),
        "no load command in {}",
        rendered.display()
    );
    commands
        .into_iter()
        .map(|c| c.replace("THIS_FILE", rendered.to_str().unwrap()))
        .collect()
}

fn load_documented(ns: &Netns, rendered: &Path) {
    for cmd in documented_load_commands(rendered) {
        ns.exec_ok("sh", &["-c", &cmd]);
    }
}

#[test]
fn every_example_passes_the_kernel_checkers() {
    if !support::kernel_available("every_example_passes_the_kernel_checkers") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::new("check");
    for policy in support::examples() {
        let nft = render_locked(&policy, "nft", dir.path());
        ns.exec_ok("nft", &["-c", "-f", nft.to_str().unwrap()]);
        if support::uses_proxy(&policy) {
            continue;
        }
        let v4 = render_locked(&policy, "iptables", dir.path());
        ns.exec_ok(
            "iptables-restore",
            &["--test", "--noflush", v4.to_str().unwrap()],
        );
        let v6 = render_locked(&policy, "ip6tables", dir.path());
        ns.exec_ok(
            "ip6tables-restore",
            &["--test", "--noflush", v6.to_str().unwrap()],
        );
    }
}

#[test]
fn nft_load_replaces_only_the_egressc_table() {
    if !support::kernel_available("nft_load_replaces_only_the_egressc_table") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::new("nftown");
    support::add_foreign_nft(&ns, dir.path());
    let list_foreign = || support::foreign_nft_listing(&ns);
    let before = list_foreign();
    let policies = support::examples();
    let first = render_locked(&policies[0], "nft", dir.path());
    let second = render_locked(&policies[1], "nft", dir.path());
    load_documented(&ns, &first);
    load_documented(&ns, &second);
    load_documented(&ns, &second);
    assert_eq!(before, list_foreign(), "foreign tables changed");
    // Exactly one egressc table, holding the second policy (loading replaced, not merged).
    let tables = ns.exec_ok("nft", &["list", "tables"]);
    assert_eq!(tables.matches("table inet egressc").count(), 1, "{tables}");
    let ours = ns.exec_ok("nft", &["list", "table", "inet", "egressc"]);
    let first_text = std::fs::read_to_string(&first).unwrap();
    assert!(!first_text.is_empty());
    for line in std::fs::read_to_string(&second).unwrap().lines() {
        if let Some(addr) = line
            .trim()
            .split(" . ")
            .next()
            .filter(|a| a.parse::<IpAddr>().is_ok())
        {
            assert!(ours.contains(addr), "{addr} missing after reload");
        }
    }
}

#[test]
fn iptables_load_is_idempotent_and_leaves_other_chains_alone() {
    if !support::kernel_available("iptables_load_is_idempotent_and_leaves_other_chains_alone") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::new("iptown");
    for (tool, format) in [("iptables", "iptables"), ("ip6tables", "ip6tables")] {
        let (foreign_dst, foreign_net) = if tool == "iptables" {
            ("192.0.2.99", "198.51.100.0/24")
        } else {
            ("2001:db8::99", "2001:db8:99::/48")
        };
        ns.exec_ok(tool, &["-N", "DOCKER-USER"]);
        ns.exec_ok(
            tool,
            &["-A", "DOCKER-USER", "-d", foreign_net, "-j", "RETURN"],
        );
        ns.exec_ok(tool, &["-A", "OUTPUT", "-d", foreign_dst, "-j", "DROP"]);
        ns.exec_ok(tool, &["-t", "nat", "-N", "DOCKER"]);
        ns.exec_ok(tool, &["-t", "nat", "-A", "OUTPUT", "-j", "DOCKER"]);
        let foreign = || {
            let filter: Vec<String> = ns
                .exec_ok(tool, &["-S"])
                .lines()
                .filter(|l| !l.contains("EGRESSC"))
                .map(String::from)
                .collect();
            (filter, ns.exec_ok(tool, &["-t", "nat", "-S"]))
        };
        let before = foreign();
        let policies = support::examples();
        let a = render_locked(&policies[0], format, dir.path());
        let b = render_locked(&policies[1], format, dir.path());
        load_documented(&ns, &a);
        let after_one = ns.exec_ok(tool, &["-S", "EGRESSC"]);
        load_documented(&ns, &b);
        load_documented(&ns, &a);
        assert_eq!(before, foreign(), "{tool}: foreign rules changed");
        let all = ns.exec_ok(tool, &["-S", "OUTPUT"]);
        assert_eq!(
            all.matches("-j EGRESSC").count(),
            1,
            "{tool}: jump duplicated:\n{all}"
        );
        assert_eq!(
            after_one,
            ns.exec_ok(tool, &["-S", "EGRESSC"]),
            "{tool}: reloading the same text gave different chain contents"
        );
    }
}

/// The two-namespace world of the end-to-end test.
struct World {
    client: Netns,
    _internet: Netns,
    _dns: Unbound,
    _listeners: Vec<TcpListener>,
    dir: tempfile::TempDir,
}

const CLIENT4: &str = "10.99.0.1";
const SERVER4: &str = "10.99.0.2";
const OTHER4: &str = "10.99.0.3";
const ROGUE_DNS4: &str = "10.99.0.53";
const CLIENT6: &str = "fd99::1";
const SERVER6: &str = "fd99::2";
const OTHER6: &str = "fd99::3";
const ROGUE_DNS6: &str = "fd99::53";

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn world() -> World {
    let client = Netns::new("client");
    let internet = Netns::new("inet");
    let client_addrs = [format!("{CLIENT4}/24"), format!("{CLIENT6}/64")];
    let internet_addrs: Vec<String> = [SERVER4, OTHER4, ROGUE_DNS4]
        .iter()
        .map(|a| format!("{a}/24"))
        .chain(
            [SERVER6, OTHER6, ROGUE_DNS6]
                .iter()
                .map(|a| format!("{a}/64")),
        )
        .collect();
    let client_refs: Vec<&str> = client_addrs.iter().map(String::as_str).collect();
    let internet_refs: Vec<&str> = internet_addrs.iter().map(String::as_str).collect();
    support::veth_pair(&client, &client_refs, &internet, &internet_refs);

    // One real unbound answers on the pinned resolver address and on two rogue ones.
    let dns = Unbound::start(
        &[
            SERVER4.parse().unwrap(),
            ROGUE_DNS4.parse().unwrap(),
            SERVER6.parse().unwrap(),
            ROGUE_DNS6.parse().unwrap(),
        ],
        53,
        &["e2e.test"],
        &[
            rr("svc.e2e.test", 300, "A", SERVER4),
            rr("svc.e2e.test", 300, "AAAA", SERVER6),
            rr("udp.e2e.test", 300, "A", SERVER4),
        ],
        Some(&internet),
    );
    // TCP listeners on the internet side: the kernel completes handshakes into the
    // backlog, so a connect succeeds iff the SYN got through.
    let listeners = internet.run(|| {
        [
            sa(SERVER4, 443),
            sa(SERVER4, 8443),
            sa(OTHER4, 443),
            sa(SERVER6, 443),
            sa(SERVER6, 8443),
            sa(OTHER6, 443),
        ]
        .into_iter()
        .map(|a| TcpListener::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}")))
        .collect::<Vec<_>>()
    });
    // UDP echo servers.
    let udp = internet.run(|| {
        [sa(SERVER4, 5000), sa(SERVER4, 5001)]
            .into_iter()
            .map(|a| UdpSocket::bind(a).unwrap())
            .collect::<Vec<_>>()
    });
    for sock in udp {
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        });
    }
    // A fresh veth needs a moment before IPv6 neighbour discovery completes; wait
    // until both families connect so the control probe below is not flaky.
    client.run(|| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !(tcp(sa(SERVER4, 443)) && tcp(sa(SERVER6, 443))) {
            assert!(
                std::time::Instant::now() < deadline,
                "the test network did not come up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    World {
        client,
        _internet: internet,
        _dns: dns,
        _listeners: listeners,
        dir: tempfile::tempdir().unwrap(),
    }
}

/// What the client can reach; each field is one probe.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Reach {
    allowed_v4: bool,
    allowed_v6: bool,
    other_port_v4: bool,
    other_port_v6: bool,
    unlisted_v4: bool,
    unlisted_v6: bool,
    udp_allowed: bool,
    udp_other_port: bool,
    pinned_dns_udp: bool,
    pinned_dns_tcp: bool,
    pinned_dns_v6: bool,
    rogue_dns_udp: bool,
    rogue_dns_tcp: bool,
    rogue_dns_v6: bool,
    loopback_v4: bool,
    loopback_v6: bool,
}

impl Reach {
    fn all(yes: bool) -> Reach {
        Reach {
            allowed_v4: yes,
            allowed_v6: yes,
            other_port_v4: yes,
            other_port_v6: yes,
            unlisted_v4: yes,
            unlisted_v6: yes,
            udp_allowed: yes,
            udp_other_port: yes,
            pinned_dns_udp: yes,
            pinned_dns_tcp: yes,
            pinned_dns_v6: yes,
            rogue_dns_udp: yes,
            rogue_dns_tcp: yes,
            rogue_dns_v6: yes,
            loopback_v4: yes,
            loopback_v6: yes,
        }
    }
}

fn tcp(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok()
}

fn udp_echo(addr: SocketAddr) -> bool {
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
    if sock.send_to(b"ping", addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(sock.recv_from(&mut buf), Ok((4, _)))
}

fn probe(world: &World) -> Reach {
    world.client.run(|| {
        // Loopback listeners live in the client namespace itself.
        let lo4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let lo6 = TcpListener::bind("[::1]:0").unwrap();
        let dns_ok = |r: Option<Vec<u8>>| r.is_some_and(|r| support::rcode(&r) == 0);
        Reach {
            allowed_v4: tcp(sa(SERVER4, 443)),
            allowed_v6: tcp(sa(SERVER6, 443)),
            other_port_v4: tcp(sa(SERVER4, 8443)),
            other_port_v6: tcp(sa(SERVER6, 8443)),
            unlisted_v4: tcp(sa(OTHER4, 443)),
            unlisted_v6: tcp(sa(OTHER6, 443)),
            udp_allowed: udp_echo(sa(SERVER4, 5000)),
            udp_other_port: udp_echo(sa(SERVER4, 5001)),
            pinned_dns_udp: dns_ok(dns_query_udp(
                sa(SERVER4, 53),
                "svc.e2e.test",
                1,
                PROBE_TIMEOUT,
            )),
            pinned_dns_tcp: dns_ok(dns_query_tcp(
                sa(SERVER4, 53),
                "svc.e2e.test",
                1,
                PROBE_TIMEOUT,
            )),
            pinned_dns_v6: dns_ok(dns_query_udp(
                sa(SERVER6, 53),
                "svc.e2e.test",
                28,
                PROBE_TIMEOUT,
            )),
            rogue_dns_udp: dns_ok(dns_query_udp(
                sa(ROGUE_DNS4, 53),
                "svc.e2e.test",
                1,
                PROBE_TIMEOUT,
            )),
            rogue_dns_tcp: dns_ok(dns_query_tcp(
                sa(ROGUE_DNS4, 53),
                "svc.e2e.test",
                1,
                PROBE_TIMEOUT,
            )),
            rogue_dns_v6: dns_ok(dns_query_udp(
                sa(ROGUE_DNS6, 53),
                "svc.e2e.test",
                1,
                PROBE_TIMEOUT,
            )),
            loopback_v4: tcp(lo4.local_addr().unwrap()),
            loopback_v6: tcp(lo6.local_addr().unwrap()),
        }
    })
}

/// The end-to-end policy. The last three entries allow the rogue DNS server's
/// addresses on every port: DNS to them must still be denied, because the
/// DNS-pinning rule comes before the allow list.
fn e2e_policy(default: &str) -> String {
    format!(
        "version: 1\nname: e2e\ndefault: {default}\ndns:\n  resolvers: [{SERVER4}, \"{SERVER6}\"]\nlog:\n  prefix: \"e2e-denied \"\n  group: 7\nallow:\n  - host: svc.e2e.test\n    ports: [443]\n  - host: udp.e2e.test\n    ports: [5000]\n    protocol: udp\n  - cidr: {ROGUE_DNS4}\n    ports: [\"1-65535\"]\n  - cidr: {ROGUE_DNS4}\n    ports: [\"1-65535\"]\n    protocol: udp\n  - cidr: {ROGUE_DNS6}\n    ports: [53]\n    protocol: udp\n"
    )
}

/// Renders the policy inside the client namespace, through the real DNS server,
/// then loads it with the documented commands for `backend` — or, for
/// `netlink`, with `egressc apply` itself.
fn apply(world: &World, policy_text: &str, backend: &str) {
    let policy = write_file(world.dir.path(), &format!("{backend}.yaml"), policy_text);
    if backend == "netlink" {
        let out = world
            .client
            .command(support::EGRESSC)
            .env("EGRESSC_STATE_DIR", world.dir.path().join("state"))
            .args(["apply", policy.to_str().unwrap(), "--backend", "netlink"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        world.client.exec_ok("ip", &["neigh", "flush", "all"]);
        return;
    }
    let formats: &[&str] = if backend == "nft" {
        &["nft"]
    } else {
        &["iptables", "ip6tables"]
    };
    for format in formats {
        let out_path = world.dir.path().join(format!("rules.{format}"));
        let out = egressc(
            &[
                "render",
                policy.to_str().unwrap(),
                "--format",
                format,
                "-o",
                out_path.to_str().unwrap(),
            ],
            Some(&world.client),
        );
        assert!(
            out.status.success(),
            "render: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        load_documented(&world.client, &out_path);
    }
    // Forget the neighbours learned so far, so IPv6 must do neighbour discovery
    // again under the new rules (a ruleset that blocks ND breaks IPv6 here).
    world.client.exec_ok("ip", &["neigh", "flush", "all"]);
}

fn enforce_and_audit(backend: &str) {
    let world = world();
    // Control: with no rules, every probe succeeds, so each "false" below is the
    // firewall's doing.
    assert_eq!(
        probe(&world),
        Reach::all(true),
        "the test network itself is broken"
    );

    apply(&world, &e2e_policy("deny"), backend);
    let nflog = world.client.run(|| NflogListener::bind(7));
    let expected = Reach {
        other_port_v4: false,
        other_port_v6: false,
        unlisted_v4: false,
        unlisted_v6: false,
        udp_other_port: false,
        rogue_dns_udp: false,
        rogue_dns_tcp: false,
        rogue_dns_v6: false,
        ..Reach::all(true)
    };
    assert_eq!(probe(&world), expected, "{backend}: enforce mode");
    // The denied connections were logged to NFLOG group 7 with the policy's prefix.
    let logged = nflog.prefixes_for(OTHER4.parse().unwrap());
    assert!(
        logged.iter().any(|p| p == "e2e-denied "),
        "{backend}: no NFLOG message with the prefix for a denied connection to {OTHER4}: {logged:?}"
    );

    // Audit: the same allow list, but nothing is dropped.
    apply(&world, &e2e_policy("audit"), backend);
    assert_eq!(
        probe(&world),
        Reach::all(true),
        "{backend}: audit mode must accept everything"
    );
}

/// A subscriber to an NFLOG group over netlink (NETLINK_NETFILTER), opened in
/// the namespace where it is created: what a log collector in a container reads.
struct NflogListener {
    fd: std::os::fd::OwnedFd,
}

const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NFULA_CFG_CMD: u16 = 1;
const NFULNL_CFG_CMD_BIND: u8 = 1;

impl NflogListener {
    fn bind(group: u16) -> NflogListener {
        use std::os::fd::FromRawFd;
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        assert!(
            raw >= 0,
            "netlink socket: {}",
            std::io::Error::last_os_error()
        );
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        let rc = unsafe {
            libc::bind(
                raw,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        // nlmsghdr + nfgenmsg (family AF_UNSPEC, version 0, res_id = group, big-endian)
        // + attribute NFULA_CFG_CMD { BIND } padded to 4 bytes.
        let mut msg = Vec::new();
        let len: u32 = 16 + 4 + 8;
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG).to_ne_bytes());
        msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
        msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // pid
        msg.extend_from_slice(&[0, 0]);
        msg.extend_from_slice(&group.to_be_bytes());
        msg.extend_from_slice(&5u16.to_ne_bytes());
        msg.extend_from_slice(&NFULA_CFG_CMD.to_ne_bytes());
        msg.extend_from_slice(&[NFULNL_CFG_CMD_BIND, 0, 0, 0]);
        let sent = unsafe { libc::send(raw, msg.as_ptr() as *const libc::c_void, msg.len(), 0) };
        assert_eq!(sent as usize, msg.len());
        let listener = NflogListener { fd };
        let ack = listener
            .recv(Duration::from_secs(2))
            .expect("NFLOG bind: no ack");
        let error = i32::from_ne_bytes(ack[16..20].try_into().unwrap());
        assert_eq!(error, 0, "NFLOG bind refused: errno {}", -error);
        listener
    }

    fn recv(&self, wait: Duration) -> Option<Vec<u8>> {
        use std::os::fd::AsRawFd;
        let tv = libc::timeval {
            tv_sec: wait.as_secs() as i64,
            tv_usec: wait.subsec_micros() as i64,
        };
        unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        let mut buf = vec![0u8; 65536];
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
            )
        };
        (n > 0).then(|| {
            buf.truncate(n as usize);
            buf
        })
    }

    /// The prefixes of the logged packets (already queued) going to `dst`.
    fn prefixes_for(&self, dst: std::net::Ipv4Addr) -> Vec<String> {
        let mut prefixes = Vec::new();
        while let Some(buf) = self.recv(Duration::from_millis(500)) {
            let mut off = 0;
            while off + 16 <= buf.len() {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
                let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
                if len < 16 || off + len > buf.len() {
                    break;
                }
                if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET {
                    let (mut prefix, mut to_dst) = (None, false);
                    let mut a = off + 20;
                    while a + 4 <= off + len {
                        let alen = u16::from_ne_bytes(buf[a..a + 2].try_into().unwrap()) as usize;
                        let atype =
                            u16::from_ne_bytes(buf[a + 2..a + 4].try_into().unwrap()) & 0x7fff;
                        if alen < 4 || a + alen > off + len {
                            break;
                        }
                        let data = &buf[a + 4..a + alen];
                        match atype {
                            NFULA_PREFIX => {
                                prefix = Some(
                                    String::from_utf8_lossy(data)
                                        .trim_end_matches('\0')
                                        .to_string(),
                                )
                            }
                            NFULA_PAYLOAD if data.len() >= 20 && data[0] >> 4 == 4 => {
                                to_dst = data[16..20] == dst.octets();
                            }
                            _ => {}
                        }
                        a += (alen + 3) & !3;
                    }
                    if let (Some(p), true) = (prefix, to_dst) {
                        prefixes.push(p);
                    }
                }
                off += (len + 3) & !3;
            }
        }
        prefixes
    }
}

#[test]
fn end_to_end_with_netlink() {
    if !support::kernel_available("end_to_end_with_netlink") {
        return;
    }
    enforce_and_audit("netlink");
}

#[test]
fn end_to_end_with_nft() {
    if !support::kernel_available("end_to_end_with_nft") {
        return;
    }
    enforce_and_audit("nft");
}

#[test]
fn end_to_end_with_iptables() {
    if !support::kernel_available("end_to_end_with_iptables") {
        return;
    }
    enforce_and_audit("iptables");
}
