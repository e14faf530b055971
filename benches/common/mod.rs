//! Measurement helpers shared by the benchmarks: run a process, take its wall time
//! and peak memory; summarize repeated runs by the median.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

/// Wall time and peak resident memory (KiB) of one run of `cmd`, which must succeed.
// The child is reaped with wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
pub fn measure(cmd: &mut Command) -> (Duration, u64) {
    let start = Instant::now();
    let child = cmd.spawn().expect("spawn");
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let elapsed = start.elapsed();
    assert_eq!(rc, pid, "wait4");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed"
    );
    (elapsed, usage.ru_maxrss as u64)
}

pub fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

const ADDRESSES_PER_HOST: usize = 1000;

/// Writes a policy with N/1000 hosts and a lock giving each host 1000 addresses
/// (spread out: nothing aggregates), plus `extra_entries` (YAML allow items).
pub fn fixture(dir: &std::path::Path, addresses: usize, extra_entries: &str) -> std::path::PathBuf {
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
