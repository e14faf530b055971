//! Measurement helpers shared by the benchmarks: run a process, take its wall time
//! and peak memory; summarize repeated runs by the median.
#![allow(dead_code)]

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

/// Repeated runs of one command: wall times and the largest peak RSS.
#[derive(Default)]
pub struct Runs {
    times: Vec<Duration>,
    peak_rss: u64,
}

impl Runs {
    /// Adds one `(time, peak RSS)` as [`measure`] returns it.
    pub fn add(&mut self, (time, rss): (Duration, u64)) {
        self.times.push(time);
        self.peak_rss = self.peak_rss.max(rss);
    }
}

/// One table row: egressc's median and peak RSS, the peer's, and their ratio.
pub fn print_ratio_row(addresses: usize, egressc: Runs, peer: Runs) {
    let (e, n) = (median(egressc.times), median(peer.times));
    println!(
        "{addresses:>9}  {:>12.1}  {:>11}  {:>12.1}  {:>11}  {:>7.3}",
        ms(e),
        egressc.peak_rss,
        ms(n),
        peer.peak_rss,
        e.as_secs_f64() / n.as_secs_f64()
    );
}
