//! A name whose address moves: the world of the refresh and watch tests.
//!
//! Two namespaces joined by a veth pair. The server side runs unbound (the
//! policy's pinned resolver, at [`RESOLVER`]) and TCP echo servers on port 443
//! of both addresses the name points at over a test ([`OLD`], then [`NEW`]);
//! the client side applies a policy allowing the name on port 443 and makes
//! real connections. [`World::answer`] restarts unbound with the name moved.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use super::{EGRESSC, Netns, Unbound, rr, write_file};

pub const CLIENT: &str = "10.88.0.1";
pub const OLD: &str = "10.88.0.2";
pub const NEW: &str = "10.88.0.3";
pub const RESOLVER: &str = "10.88.0.53";
const PROBE_TIMEOUT: Duration = Duration::from_millis(700);

pub fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

pub struct World {
    pub client: Netns,
    pub server: Netns,
    /// The resolver; `None` during an outage.
    pub dns: Option<Unbound>,
    pub dir: tempfile::TempDir,
    pub policy: PathBuf,
    /// The name that moves, and the TTL unbound gives it.
    pub name: String,
    pub ttl: u32,
}

/// unbound in the server namespace, answering `name A addr` with `ttl`.
fn start_dns(server: &Netns, name: &str, ttl: u32, addr: &str) -> Unbound {
    let zone = name.split_once('.').expect("a name with a zone").1;
    Unbound::start(
        &[RESOLVER.parse().unwrap()],
        53,
        &[zone],
        &[rr(name, ttl, "A", addr)],
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

impl World {
    /// The world with `name` (TTL `ttl`) pointing at [`OLD`], and a policy
    /// allowing it on port 443. `tag` names the namespaces.
    pub fn new(tag: &str, name: &str, ttl: u32) -> World {
        let client = Netns::new(&format!("{tag}c"));
        let server = Netns::new(&format!("{tag}s"));
        let server_addrs: Vec<String> = [OLD, NEW, RESOLVER]
            .iter()
            .map(|a| format!("{a}/24"))
            .collect();
        let refs: Vec<&str> = server_addrs.iter().map(String::as_str).collect();
        super::veth_pair(&client, &[&format!("{CLIENT}/24")], &server, &refs);
        let dns = start_dns(&server, name, ttl, OLD);
        echo_server(&server, sa(OLD, 443));
        echo_server(&server, sa(NEW, 443));
        let dir = tempfile::tempdir().unwrap();
        let policy = write_file(
            dir.path(),
            "policy.yaml",
            &format!(
                "version: 1\nname: moving\ndefault: deny\ndns:\n  resolvers: [{RESOLVER}]\nallow:\n  - host: {name}\n    ports: [443]\n"
            ),
        );
        let w = World {
            client,
            server,
            dns: Some(dns),
            dir,
            policy,
            name: name.to_string(),
            ttl,
        };
        // Both servers answer before any firewall exists.
        assert!(
            w.connects(OLD) && w.connects(NEW),
            "the test network is down"
        );
        w
    }

    /// The state directory egressc runs with (`EGRESSC_STATE_DIR`).
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `egressc ARGS` in the client namespace, with this world's state.
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = self.client.command(EGRESSC);
        cmd.env("EGRESSC_STATE_DIR", self.state()).args(args);
        cmd
    }

    pub fn egressc(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run egressc")
    }

    pub fn egressc_ok(&self, args: &[&str]) -> String {
        let out = self.egressc(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "egressc {args:?} failed: {stderr}");
        stderr
    }

    pub fn apply(&self) {
        self.egressc_ok(&["apply", self.policy.to_str().unwrap()]);
    }

    /// Whether a new TCP connection from the client to `ip:443` succeeds.
    pub fn connects(&self, ip: &str) -> bool {
        let addr = sa(ip, 443);
        self.client
            .run(move || TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok())
    }

    /// A connection opened now from the client, kept open by the caller.
    pub fn open(&self, ip: &str) -> TcpStream {
        let addr = sa(ip, 443);
        let s = self
            .client
            .run(move || TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).unwrap());
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    }

    /// `nft list set inet egressc NAME` in the client namespace.
    pub fn set(&self, name: &str) -> String {
        self.client
            .exec_ok("nft", &["list", "set", "inet", "egressc", name])
    }

    /// The record's bytes (`applied.json`).
    pub fn record(&self) -> Vec<u8> {
        std::fs::read(self.state().join("applied.json")).unwrap()
    }

    /// Packets counted by the allow-list rule for IPv4 addresses (new
    /// connections to allowed destinations).
    pub fn allow_counter(&self) -> u64 {
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

    /// Restarts the resolver with the name pointing at `addr`.
    pub fn answer(&mut self, addr: &str) {
        drop(self.dns.take());
        self.dns = Some(start_dns(&self.server, &self.name, self.ttl, addr));
    }
}

/// Sends a byte over `s` and expects it back.
pub fn echoes(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    s.write_all(b"x").is_ok() && s.read_exact(&mut b).is_ok() && b == *b"x"
}

/// `nft monitor` in a namespace: every ruleset change while it runs.
pub struct Monitor {
    child: Child,
    out: PathBuf,
}

impl Monitor {
    pub fn start(ns: &Netns, dir: &Path) -> Monitor {
        let out = dir.join(format!("monitor-{}.txt", super::unique("m")));
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
    pub fn stop(self) -> Vec<String> {
        self.stop_counting().0
    }

    /// The events seen, and how many commits (generations) there were.
    pub fn stop_counting(mut self) -> (Vec<String>, usize) {
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

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
