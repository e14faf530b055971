//! `egressc refresh` where 1 of 10,000 hosts changed vs a full `egressc apply`
//! of the same policy, in one run (issue 4, item 5).
//!
//! 1. In-process, the kernel part only: `netlink::update_elements(old, new)`
//!    (one host's address replaced: one element deleted, one added) against
//!    `netlink::apply(new)` (the whole table replaced), each on a table that
//!    holds `old`, in a fresh network namespace per run. Bytes are those of the
//!    one sendmsg; time is build + commit + read-back.
//! 2. Whole processes: `egressc apply POLICY` and `egressc refresh POLICY
//!    --grace 0` in one namespace, both resolving the 10,000 names live through
//!    a real unbound on 127.0.0.1 (records with TTL 0, so the old address goes
//!    at once), unbound restarted between them with one answer changed.
//!
//! Median of `RUNS`, the order of the two alternated every round where it can
//! be. Target: refresh ≤ 5% of the full apply. Needs root.
//!
//! `cargo bench --bench refresh`

// Until Cargo.toml has `[[bench]] name = "refresh" harness = false`, cargo builds
// this with the test harness, which ignores `main`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use egressc::backend::netlink;
use egressc::ir::Ruleset;
use egressc::policy::model::HostName;
use egressc::resolve::{HostAnswer, Resolution, ResolvedAddr};
use support::{EGRESSC, Netns, Unbound, rr};

const HOSTS: usize = 10_000;
const RUNS: usize = 7;

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn host(h: usize) -> String {
    format!("h{h}.bench.test")
}

fn addr(h: usize, changed: bool) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(10, 0, 0, 0));
    if changed && h == 0 {
        Ipv4Addr::new(10, 255, 0, 1)
    } else {
        Ipv4Addr::from(base + h as u32 + 1)
    }
}

fn policy_text() -> String {
    let mut p = String::from(
        "version: 1\nname: bench\ndefault: deny\ndns:\n  resolvers: [127.0.0.1]\nallow:\n",
    );
    for h in 0..HOSTS {
        writeln!(p, "  - host: {}\n    ports: [443]", host(h)).unwrap();
    }
    p
}

fn ruleset(policy: &egressc::policy::Policy, changed: bool) -> Ruleset {
    let hosts = (0..HOSTS)
        .map(|h| {
            (
                HostName::parse(&host(h)).unwrap(),
                HostAnswer {
                    addresses: vec![ResolvedAddr {
                        addr: IpAddr::V4(addr(h, changed)),
                        ttl: 0,
                    }],
                    ..HostAnswer::default()
                },
            )
        })
        .collect::<BTreeMap<_, _>>();
    let resolution = Resolution {
        lock_format: 1,
        policy_sha256: policy.source_hash.clone(),
        resolved_at: "2026-01-01T00:00:00Z".into(),
        resolvers: policy.dns.resolvers.clone(),
        port: 53,
        hosts,
    };
    egressc::ir::lower::lower(policy, &resolution).unwrap()
}

fn dns(ns: &Netns, changed: bool) -> Unbound {
    let records: Vec<String> = (0..HOSTS)
        .map(|h| rr(&host(h), 0, "A", &addr(h, changed).to_string()))
        .collect();
    Unbound::start(
        &["127.0.0.1".parse().unwrap()],
        53,
        &["bench.test"],
        &records,
        Some(ns),
    )
}

fn egressc(ns: &Netns, state: &std::path::Path, args: &[&str]) -> (Duration, String) {
    let start = Instant::now();
    let out = ns
        .command(EGRESSC)
        .env("EGRESSC_STATE_DIR", state)
        .args(args)
        .output()
        .unwrap();
    let t = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "egressc {args:?}: {err}");
    (t, err)
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("refresh bench: needs root (network namespaces, nf_tables)");
        std::process::exit(1);
    }
    let dir = tempfile::tempdir().unwrap();
    let text = policy_text();
    let loaded = egressc::policy::load_bytes(
        text.as_bytes(),
        "bench.yaml",
        egressc::policy::TargetFormat::Nft,
    )
    .unwrap();
    let old = ruleset(&loaded.policy, false);
    let new = ruleset(&loaded.policy, true);

    // 1. The kernel part, in-process.
    let (mut full, mut upd): (Vec<[Duration; 3]>, Vec<[Duration; 3]>) = (vec![], vec![]);
    let (mut full_bytes, mut upd_bytes, mut upd_msgs) = (0, 0, 0);
    for round in 0..RUNS {
        let mut run_full = || {
            let ns = Netns::new("bfull");
            let (o, n) = (old.clone(), new.clone());
            let a = ns.run(move || {
                netlink::apply(&o).unwrap();
                netlink::apply(&n).unwrap()
            });
            full_bytes = a.bytes;
            full.push([a.build_time, a.commit_time, a.read_back_time]);
        };
        let mut run_update = || {
            let ns = Netns::new("bupd");
            let (o, n) = (old.clone(), new.clone());
            let u = ns.run(move || {
                netlink::apply(&o).unwrap();
                netlink::update_elements(&o, &n).unwrap()
            });
            assert_eq!((u.added(), u.deleted()), (1, 1));
            upd_bytes = u.bytes;
            upd_msgs = u.messages;
            upd.push([u.build_time, u.commit_time, u.read_back_time]);
        };
        if round % 2 == 0 {
            run_full();
            run_update();
        } else {
            run_update();
            run_full();
        }
    }
    let total = |p: &[[Duration; 3]]| median(p.iter().map(|x| x[0] + x[1] + x[2]).collect());
    let phase = |p: &[[Duration; 3]], i: usize| median(p.iter().map(|x| x[i]).collect());
    println!(
        "kernel part, {HOSTS} hosts, 1 changed (in-process, median of {RUNS}, fresh namespace per run)"
    );
    println!(
        "{:<38} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "", "bytes sent", "total ms", "build", "commit", "read-back"
    );
    for (name, bytes, p) in [
        (
            "netlink::apply (whole table)".to_string(),
            full_bytes,
            &full,
        ),
        (
            format!("netlink::update_elements ({upd_msgs} msgs)"),
            upd_bytes,
            &upd,
        ),
    ] {
        println!(
            "{name:<38} {bytes:>10} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            ms(total(p)),
            ms(phase(p, 0)),
            ms(phase(p, 1)),
            ms(phase(p, 2))
        );
    }
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!(
        "{:<38} {:>10.5} {:>9.4} {:>9.4} {:>9.4} {:>9.4}",
        "ratio update/apply (target <= 0.05)",
        upd_bytes as f64 / full_bytes as f64,
        ratio(total(&upd), total(&full)),
        ratio(phase(&upd, 0), phase(&full, 0)),
        ratio(phase(&upd, 1), phase(&full, 1)),
        ratio(phase(&upd, 2), phase(&full, 2))
    );

    // `cargo bench --bench refresh -- kernel`: only the in-process part.
    if std::env::args().any(|a| a == "kernel") {
        return;
    }
    // 2. Whole processes, live DNS through unbound.
    let ns = Netns::new("bproc");
    let state = dir.path().join("state");
    let policy = dir.path().join("bench.yaml");
    std::fs::write(&policy, &text).unwrap();
    let p = policy.to_str().unwrap();
    let (mut apply_t, mut refresh_t) = (vec![], vec![]);
    let mut refresh_bytes = String::new();
    let mut server = dns(&ns, false);
    egressc(&ns, &state, &["apply", p]); // warm-up
    for _ in 0..RUNS.min(5) {
        drop(server);
        server = dns(&ns, false);
        apply_t.push(egressc(&ns, &state, &["apply", p]).0);
        drop(server);
        server = dns(&ns, true);
        let (t, err) = egressc(&ns, &state, &["refresh", p, "--grace", "0"]);
        assert!(err.contains("1 set elements added, 1 deleted"), "{err}");
        refresh_bytes = err
            .lines()
            .last()
            .unwrap_or_default()
            .split('(')
            .nth(1)
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string();
        refresh_t.push(t);
    }
    drop(server);
    let (a, r) = (median(apply_t), median(refresh_t));
    println!(
        "\nwhole processes, live DNS for {HOSTS} names through unbound on 127.0.0.1 (median of {})",
        RUNS.min(5)
    );
    println!("egressc apply    {:>9.1} ms", ms(a));
    println!("egressc refresh  {:>9.1} ms  ({refresh_bytes})", ms(r));
    println!(
        "ratio            {:>9.3}",
        r.as_secs_f64() / a.as_secs_f64()
    );
}
