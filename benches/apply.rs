//! `egressc apply --locked --backend netlink` vs `nft -f` of the rendered script,
//! for 1,000 / 10,000 / 100,000 addresses.
//!
//! Both are whole processes, measured in the same run on the same machine, each in
//! a fresh network namespace per run (`ip netns add`, run through `ip netns exec`,
//! `ip netns del` after). egressc parses the policy and the lock, lowers, builds
//! the batch, commits it and reads the table back; nft parses the script rendered
//! beforehand (outside the timing) and commits it. Median of `RUNS` rounds, the
//! order of the two alternated every round. Peak RSS comes from wait4 on the
//! measured child, which is `ip netns exec` (it execs the command in place, so the
//! figure is the larger of ip's and the command's own peak).
//!
//! Then the phases of `netlink::apply` at each size, in-process (build the batch,
//! commit it, read it back), to show where egressc's time goes.
//!
//! Target at 100,000 addresses: egressc ≤ 0.5× nft -f. Needs root.
//!
//! `cargo bench --bench apply`

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Runs, measure, median, ms, print_ratio_row};
use support::{Netns, locked_ruleset};

const EGRESSC: &str = env!("CARGO_BIN_EXE_egressc");
const RUNS: usize = 7;
const SIZES: [usize; 3] = [1_000, 10_000, 100_000];

/// One whole-process run of egressc apply in a fresh namespace and state dir.
fn run_egressc(policy: &Path, state: &Path) -> (Duration, u64) {
    let _ = std::fs::remove_dir_all(state);
    std::fs::create_dir_all(state).unwrap();
    let ns = Netns::new("egressc");
    let mut cmd = ns.command(EGRESSC);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    cmd.arg("apply")
        .arg(policy)
        .args(["--locked", "--backend", "netlink"])
        .env("EGRESSC_STATE_DIR", state);
    measure(&mut cmd)
}

/// One whole-process run of nft -f in a fresh namespace.
fn run_nft(script: &Path) -> (Duration, u64) {
    let ns = Netns::new("nft");
    let mut cmd = ns.command("nft");
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    cmd.arg("-f").arg(script);
    measure(&mut cmd)
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("apply bench: needs root (network namespaces, nf_tables)");
        std::process::exit(1);
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // `cargo bench --bench apply -- phases`: only the in-process phases.
    let only_phases = std::env::args().any(|a| a == "phases");
    if !only_phases {
        println!(
            "egressc apply --locked --backend netlink vs nft -f of the rendered script\n\
             (median of {RUNS} runs, whole processes, a fresh network namespace per run; \
             RSS is that of the child `ip netns exec`, which execs the command)"
        );
        println!(
            "{:>9}  {:>12}  {:>11}  {:>12}  {:>11}  {:>7}",
            "addresses", "egressc ms", "egressc KiB", "nft -f ms", "nft KiB", "ratio"
        );
    }
    let mut policies = Vec::new();
    for addresses in SIZES {
        let policy = support::address_fixture(dir.path(), addresses, "");
        policies.push((addresses, policy.clone()));
        if only_phases {
            continue;
        }
        let script = dir.path().join(format!("bench-{addresses}.nft"));
        let ok = Command::new(EGRESSC)
            .args(["render", "--locked", "-o"])
            .arg(&script)
            .arg(&policy)
            .stderr(Stdio::null())
            .status()
            .expect("egressc render")
            .success();
        assert!(ok, "egressc render {policy:?}");
        // Warm the page cache and the binaries once.
        run_egressc(&policy, &state);
        run_nft(&script);
        let (mut e_runs, mut n_runs) = (Runs::default(), Runs::default());
        for round in 0..RUNS {
            let mut egressc = || e_runs.add(run_egressc(&policy, &state));
            let mut nft = || n_runs.add(run_nft(&script));
            if round % 2 == 0 {
                egressc();
                nft();
            } else {
                nft();
                egressc();
            }
        }
        print_ratio_row(addresses, e_runs, n_runs);
    }

    println!("\nphases of netlink::apply in-process (median of {RUNS}, fresh namespace per run)");
    println!(
        "{:>9}  {:>9}  {:>10}  {:>13}",
        "addresses", "build ms", "commit ms", "read-back ms"
    );
    for (addresses, policy) in policies {
        let rs = locked_ruleset(&policy);
        let (mut build, mut commit, mut read_back) = (vec![], vec![], vec![]);
        for _ in 0..RUNS {
            let ns = Netns::new("phases");
            let r = rs.clone();
            let applied = ns.run(move || egressc::backend::netlink::apply(&r).expect("apply"));
            build.push(applied.build_time);
            commit.push(applied.commit_time);
            read_back.push(applied.read_back_time);
        }
        println!(
            "{addresses:>9}  {:>9.1}  {:>10.1}  {:>13.1}",
            ms(median(build)),
            ms(median(commit)),
            ms(median(read_back))
        );
    }
}
