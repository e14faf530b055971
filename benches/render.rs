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

use common::{Runs, measure, print_ratio_row};

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
        let (mut egressc, mut nft) = (Runs::default(), Runs::default());
        for _ in 0..RUNS {
            egressc.add(measure(&mut render));
            nft.add(measure(&mut check));
        }
        print_ratio_row(addresses, egressc, nft);
    }
}
