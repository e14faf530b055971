//! Rendering from a lock of N addresses vs `nft -c -f` of the same output.
//!
//! Both are whole processes, measured in the same run on the same machine: egressc
//! reads the policy and the lock, validates, lowers and renders; nft parses the
//! script and checks it against the kernel. Target at 100,000 addresses: egressc
//! takes at most 0.1× the time of nft. Needs root (nft -c talks to the kernel).
//!
//! `cargo bench --bench render`

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};

use common::{measure, median, ms};

const EGRESSC: &str = env!("CARGO_BIN_EXE_egressc");
const RUNS: usize = 7;
fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("render bench: needs root for `nft -c` (it checks against the kernel)");
        std::process::exit(1);
    }
    let dir = tempfile::tempdir().unwrap();
    println!(
        "render from lock vs nft -c -f of the same script (median of {RUNS} runs, whole processes)"
    );
    println!(
        "{:>9}  {:>12}  {:>11}  {:>12}  {:>11}  {:>7}",
        "addresses", "egressc ms", "egressc KiB", "nft -c ms", "nft KiB", "ratio"
    );
    for addresses in [1_000, 10_000, 100_000] {
        let policy = support::address_fixture(dir.path(), addresses, "");
        let out = dir.path().join(format!("bench-{addresses}.nft"));
        let mut render = Command::new(EGRESSC);
        render
            .args(["render", "--locked", "-o"])
            .arg(&out)
            .arg(&policy)
            .stderr(Stdio::null());
        let mut check = Command::new("nft");
        check.args(["-c", "-f"]).arg(&out);
        // Warm the page cache and the binaries once.
        measure(&mut render);
        measure(&mut check);
        let (mut e_times, mut n_times, mut e_rss, mut n_rss) = (vec![], vec![], 0, 0);
        for _ in 0..RUNS {
            let (t, rss) = measure(&mut render);
            e_times.push(t);
            e_rss = e_rss.max(rss);
            let (t, rss) = measure(&mut check);
            n_times.push(t);
            n_rss = n_rss.max(rss);
        }
        let (e, n) = (median(e_times), median(n_times));
        println!(
            "{addresses:>9}  {:>12.1}  {e_rss:>11}  {:>12.1}  {n_rss:>11}  {:>7.3}",
            ms(e),
            ms(n),
            e.as_secs_f64() / n.as_secs_f64()
        );
    }
}
