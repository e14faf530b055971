//! New TCP connections per second through egressc's rules at 100,000 addresses,
//! vs no rules at all, vs the same policy as an iptables linear chain — all in
//! the same run, across a veth pair between two network namespaces (loopback
//! would be accepted by rule 2 and never reach the sets).
//!
//! The allowed destination is one element among 100,000 in the hash set, so
//! every SYN walks the output chain to the set lookup. Target: nft sets ≥ 0.95×
//! the rate with no rules. Needs root. `cargo bench --bench connections`

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use support::Netns;

const EGRESSC: &str = env!("CARGO_BIN_EXE_egressc");
const SERVER: &str = "10.99.0.2:443";
const WINDOW: Duration = Duration::from_millis(1500);
const ROUNDS: usize = 6;

/// Connections per second from the client namespace to SERVER during WINDOW.
/// Each connection is closed with RST (linger 0) so no TIME_WAIT builds up.
fn rate(client: &Netns) -> f64 {
    client.run(|| {
        let server: SocketAddr = SERVER.parse().unwrap();
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < WINDOW {
            let stream = match TcpStream::connect_timeout(&server, Duration::from_secs(1)) {
                Ok(s) => s,
                Err(e) => panic!("connection {n} failed: {e}"),
            };
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            unsafe {
                libc::setsockopt(
                    stream.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    &linger as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            drop(stream);
            n += 1;
        }
        n as f64 / start.elapsed().as_secs_f64()
    })
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("connections bench: needs root (network namespaces, nftables)");
        std::process::exit(1);
    }
    let client = Netns::new("bclient");
    let server = Netns::new("bserver");
    support::veth_pair(&client, &["10.99.0.1/24"], &server, &["10.99.0.2/24"]);
    let listener = server.run(|| {
        let l = TcpListener::bind(SERVER).unwrap();
        // A deep accept queue: with std's default, a briefly descheduled accept
        // thread lets it overflow, a SYN is dropped, and the client waits 1 s.
        assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 4096) }, 0);
        l
    });
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let server_entry = "  - cidr: 10.99.0.2\n    ports: [443]\n";
    let policy = support::address_fixture(dir.path(), 100_000, server_entry);
    let small = support::address_fixture(dir.path(), 0, server_entry);
    let render_policy = |policy: &std::path::Path, format: &str, name: &str| {
        let out = dir.path().join(format!("{name}.{format}"));
        let status = Command::new(EGRESSC)
            .args(["render", "--locked", "--format", format, "-o"])
            .arg(&out)
            .arg(policy)
            .status()
            .unwrap();
        assert!(status.success());
        out
    };
    let nft = render_policy(&policy, "nft", "big");
    let nft_one = render_policy(&small, "nft", "one");
    let v4 = render_policy(&policy, "iptables", "big");
    let load = |script: &std::path::Path| client.exec_ok("nft", &["-f", script.to_str().unwrap()]);
    let unload_nft = || client.exec_ok("nft", &["delete", "table", "inet", "egressc"]);

    // Wait for the link (and neighbour discovery) before measuring anything.
    client.run(|| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&SERVER.parse().unwrap(), Duration::from_millis(200))
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the bench network did not come up"
            );
        }
    });
    rate(&client); // warm up conntrack and the listener
    let (mut empty, mut one, mut sets) = (Vec::new(), Vec::new(), Vec::new());
    // Alternate the order every round: conntrack entries from earlier windows
    // (10 s in CLOSE) and background load would otherwise bias the later ones.
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            empty.push(rate(&client));
            load(&nft_one);
            one.push(rate(&client));
            load(&nft);
            sets.push(rate(&client));
            unload_nft();
        } else {
            load(&nft);
            sets.push(rate(&client));
            load(&nft_one);
            one.push(rate(&client));
            unload_nft();
            empty.push(rate(&client));
        }
    }
    client.exec_ok("iptables-restore", &["--noflush", v4.to_str().unwrap()]);
    client.exec_ok("iptables", &["-I", "OUTPUT", "1", "-j", "EGRESSC"]);
    let linear: Vec<f64> = (0..3).map(|_| rate(&client)).collect();

    let (e, o, s, l) = (median(empty), median(one), median(sets), median(linear));
    println!(
        "new TCP connections/s across a veth pair, median of {ROUNDS} windows of {} ms",
        WINDOW.as_millis()
    );
    println!(
        "{:<46} {:>9} {:>13} {:>14}",
        "ruleset", "conn/s", "vs no rules", "vs 1 address"
    );
    println!(
        "{:<46} {:>9.0} {:>13.3} {:>14}",
        "no rules (conntrack off)", e, 1.0, ""
    );
    println!(
        "{:<46} {:>9.0} {:>13.3} {:>14.3}",
        "egressc nft, 1 address",
        o,
        o / e,
        1.0
    );
    println!(
        "{:<46} {:>9.0} {:>13.3} {:>14.3}",
        "egressc nft, 100,000 addresses (hash set)",
        s,
        s / e,
        s / o
    );
    println!(
        "{:<46} {:>9.0} {:>13.3} {:>14.3}",
        "egressc iptables, 100,000 rules (linear)",
        l,
        l / e,
        l / o
    );
}
