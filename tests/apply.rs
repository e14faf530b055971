//! `egressc apply`, `confirm`, `status`, `diff` and `remove` against the real
//! kernel, each test in its own network namespace with its own state directory.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use support::{EGRESSC, Netns, write_file};

const FINANCE: &str = "examples/home-finance-agent/policy.yaml";
const FLEET: &str = "examples/agent-fleet/policy.yaml";

/// egressc inside `ns`, with its state kept in `state`.
fn egressc(ns: &Netns, state: &Path, args: &[&str]) -> Output {
    ns.command(EGRESSC)
        .env("EGRESSC_STATE_DIR", state)
        .args(args)
        .output()
        .expect("run egressc")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "egressc failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn status_json(ns: &Netns, state: &Path) -> serde_json::Value {
    let out = egressc(ns, state, &["status", "--json"]);
    serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
}

fn ruleset(ns: &Netns) -> String {
    ns.exec_ok("nft", &["list", "ruleset"])
}

#[test]
fn apply_reapply_and_remove_through_nft_touch_only_egressc() {
    if !support::kernel_available("apply_reapply_and_remove_through_nft_touch_only_egressc") {
        return;
    }
    let ns = Netns::new("apply");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    support::add_foreign_nft(&ns, dir.path());
    let foreign = support::foreign_nft_listing(&ns);

    assert_eq!(status_json(&ns, &state)["applied"], false);
    ok(egressc(
        &ns,
        &state,
        &["apply", FINANCE, "--locked", "--backend", "nft"],
    ));
    let status = status_json(&ns, &state);
    assert_eq!(status["applied"], true);
    assert_eq!(status["policy"]["backend"], "nft");
    assert_eq!(
        status["policy"]["sha256"],
        egressc::policy::sha256_hex(&std::fs::read(FINANCE).unwrap())
    );
    let size = |s: &serde_json::Value, name: &str| {
        s["sets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .unwrap()["elements"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(size(&status, "allow_v4_addrs"), 3);
    assert_eq!(size(&status, "dns_v4"), 2);
    assert_eq!(status["rules"].as_array().unwrap().len(), 14);

    // Re-apply another policy: replaced, not merged.
    ok(egressc(&ns, &state, &["apply", FLEET, "--locked"]));
    let listing = ns.exec_ok("nft", &["list", "table", "inet", "egressc"]);
    assert!(listing.contains("203.0.113.6"), "{listing}");
    assert!(
        !listing.contains("192.0.2.10"),
        "old addresses left behind:\n{listing}"
    );
    assert_eq!(
        foreign,
        support::foreign_nft_listing(&ns),
        "foreign tables changed by apply"
    );

    ok(egressc(&ns, &state, &["remove"]));
    assert!(!ns.exec_ok("nft", &["list", "tables"]).contains("egressc"));
    assert_eq!(
        foreign,
        support::foreign_nft_listing(&ns),
        "foreign tables changed by remove"
    );
    assert_eq!(status_json(&ns, &state)["applied"], false);
}

#[test]
fn apply_and_remove_through_iptables_touch_only_egressc_chains() {
    if !support::kernel_available("apply_and_remove_through_iptables_touch_only_egressc_chains") {
        return;
    }
    let ns = Netns::new("applyipt");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    for tool in ["iptables", "ip6tables"] {
        ns.exec_ok(tool, &["-N", "DOCKER-USER"]);
        ns.exec_ok(tool, &["-A", "DOCKER-USER", "-j", "RETURN"]);
        ns.exec_ok(
            tool,
            &["-A", "OUTPUT", "-p", "tcp", "--dport", "25", "-j", "DROP"],
        );
        ns.exec_ok(tool, &["-t", "nat", "-N", "DOCKER"]);
        ns.exec_ok(tool, &["-t", "nat", "-A", "OUTPUT", "-j", "DOCKER"]);
    }
    let foreign = || {
        ["iptables", "ip6tables"]
            .iter()
            .map(|tool| {
                let filter: String = ns
                    .exec_ok(tool, &["-S"])
                    .lines()
                    .filter(|l| !l.contains("EGRESSC"))
                    .collect::<Vec<_>>()
                    .join("\n");
                (filter, ns.exec_ok(tool, &["-t", "nat", "-S"]))
            })
            .collect::<Vec<_>>()
    };
    let before = foreign();
    for policy in [FINANCE, FLEET, FINANCE] {
        ok(egressc(
            &ns,
            &state,
            &["apply", policy, "--locked", "--backend", "iptables"],
        ));
        for tool in ["iptables", "ip6tables"] {
            let output = ns.exec_ok(tool, &["-S", "OUTPUT"]);
            assert_eq!(output.matches("-j EGRESSC").count(), 1, "{tool}:\n{output}");
        }
    }
    let v4 = ns.exec_ok("iptables", &["-S", "EGRESSC"]);
    assert!(
        v4.contains("192.0.2.10/32") && !v4.contains("203.0.113.6"),
        "{v4}"
    );
    let status = status_json(&ns, &state);
    assert_eq!(status["applied"], true);
    assert_eq!(status["policy"]["backend"], "iptables");
    assert_eq!(before, foreign(), "foreign chains changed by apply");

    ok(egressc(&ns, &state, &["remove"]));
    for tool in ["iptables", "ip6tables"] {
        assert!(
            !ns.exec_ok(tool, &["-S"]).contains("EGRESSC"),
            "{tool} chains left behind"
        );
    }
    assert_eq!(before, foreign(), "foreign chains changed by remove");
}

#[test]
fn a_failed_apply_leaves_the_old_ruleset_byte_identical() {
    if !support::kernel_available("a_failed_apply_leaves_the_old_ruleset_byte_identical") {
        return;
    }
    let ns = Netns::new("applyfail");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    support::add_foreign_nft(&ns, dir.path());
    ok(egressc(&ns, &state, &["apply", FINANCE, "--locked"]));
    let before = ruleset(&ns);

    // An invalid policy.
    let invalid = write_file(
        dir.path(),
        "invalid.yaml",
        "version: 1\nallow:\n  - cidr: 10.0.0.0/8\n    ports: [0]\n",
    );
    let out = egressc(&ns, &state, &["apply", invalid.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        before,
        ruleset(&ns),
        "an invalid policy changed the ruleset"
    );

    // DNS failure: the pinned resolver does not exist in this namespace.
    let unresolvable = write_file(
        dir.path(),
        "dns.yaml",
        "version: 1\ndns:\n  resolvers: [192.0.2.53]\nallow:\n  - host: api.example.com\n    ports: [443]\n",
    );
    let out = egressc(&ns, &state, &["apply", unresolvable.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(before, ruleset(&ns), "a DNS failure changed the ruleset");

    // A stale lock.
    let copy = write_file(
        dir.path(),
        "p.yaml",
        &(std::fs::read_to_string(FINANCE).unwrap() + "# edited\n"),
    );
    std::fs::copy(format!("{FINANCE}.lock"), dir.path().join("p.yaml.lock")).unwrap();
    let out = egressc(&ns, &state, &["apply", copy.to_str().unwrap(), "--locked"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(before, ruleset(&ns), "a stale lock changed the ruleset");
    // The record still names what is really applied.
    assert_eq!(
        status_json(&ns, &state)["policy"]["sha256"],
        egressc::policy::sha256_hex(&std::fs::read(FINANCE).unwrap())
    );
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_unconfirmed_apply_rolls_back_even_when_its_terminal_goes_away() {
    if !support::kernel_available(
        "an_unconfirmed_apply_rolls_back_even_when_its_terminal_goes_away",
    ) {
        return;
    }
    let ns = Netns::new("confirm");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    ok(egressc(&ns, &state, &["apply", FINANCE, "--locked"]));
    let before = ns.exec_ok("nft", &["list", "table", "inet", "egressc"]);

    // Run apply in its own session and then hang the whole session up, as a
    // closing terminal would: the rollback worker must survive it.
    let script = format!(
        "EGRESSC_STATE_DIR={} {EGRESSC} apply {FLEET} --locked --confirm 2; kill -HUP 0",
        state.display()
    );
    let out = ns
        .command("setsid")
        .args(["--wait", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("egressc confirm"));
    assert!(
        ns.exec_ok("nft", &["list", "table", "inet", "egressc"])
            .contains("203.0.113.6")
    );
    assert!(status_json(&ns, &state)["pending_rollback_seconds"].is_u64());

    wait_for("the rollback", || {
        ns.exec_ok("nft", &["list", "table", "inet", "egressc"]) == before
    });
    let status = status_json(&ns, &state);
    assert_eq!(
        status["policy"]["sha256"],
        egressc::policy::sha256_hex(&std::fs::read(FINANCE).unwrap()),
        "the record must name the restored policy"
    );
    assert!(status["pending_rollback_seconds"].is_null());
    // Too late to confirm now: exit 1, and it says so.
    let out = egressc(&ns, &state, &["confirm"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_confirmed_apply_stays_and_a_first_apply_rolls_back_to_nothing() {
    if !support::kernel_available("a_confirmed_apply_stays_and_a_first_apply_rolls_back_to_nothing")
    {
        return;
    }
    let ns = Netns::new("confirmok");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // No table before: the rollback must remove it again.
    ok(egressc(
        &ns,
        &state,
        &["apply", FINANCE, "--locked", "--confirm", "1"],
    ));
    wait_for("the table to go", || {
        !ns.exec_ok("nft", &["list", "tables"]).contains("egressc")
    });
    assert_eq!(status_json(&ns, &state)["applied"], false);

    ok(egressc(
        &ns,
        &state,
        &["apply", FLEET, "--locked", "--confirm", "2"],
    ));
    ok(egressc(&ns, &state, &["confirm"]));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        ns.exec_ok("nft", &["list", "table", "inet", "egressc"])
            .contains("203.0.113.6")
    );
    assert_eq!(status_json(&ns, &state)["applied"], true);
}

#[test]
fn diff_shows_rule_and_address_changes_and_exits_like_diff() {
    if !support::kernel_available("diff_shows_rule_and_address_changes_and_exits_like_diff") {
        return;
    }
    let ns = Netns::new("diff");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    ok(egressc(&ns, &state, &["apply", FINANCE, "--locked"]));
    let same = egressc(&ns, &state, &["diff", FINANCE, "--locked"]);
    assert_eq!(same.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&same.stdout), "no changes\n");

    // The same policy with one address changed in its lock.
    let policy = write_file(
        dir.path(),
        "p.yaml",
        &std::fs::read_to_string(FINANCE).unwrap(),
    );
    let lock = std::fs::read_to_string(format!("{FINANCE}.lock"))
        .unwrap()
        .replace("192.0.2.11", "192.0.2.12");
    write_file(dir.path(), "p.yaml.lock", &lock);
    let out = egressc(&ns, &state, &["diff", policy.to_str().unwrap(), "--locked"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("api.openclaw.security\n  - 192.0.2.11\n  + 192.0.2.12"),
        "{text}"
    );
    assert!(!text.contains("rules:"), "no rule changed:\n{text}");

    // Another policy: rules change too.
    let out = egressc(&ns, &state, &["diff", FLEET, "--locked"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rules:")
            && text.contains("+   counter log prefix \"egress-denied \" group 1"),
        "{text}"
    );
    assert!(text.contains("  + 203.0.113.6"), "{text}");
    // diff changes nothing.
    assert!(
        ns.exec_ok("nft", &["list", "table", "inet", "egressc"])
            .contains("192.0.2.11")
    );
}

/// examples/systemd/lockdown.nft (loaded when the boot-time apply fails) is valid,
/// closes egress, and a later apply replaces it.
#[test]
fn the_systemd_lockdown_table_loads_and_apply_replaces_it() {
    if !support::kernel_available("the_systemd_lockdown_table_loads_and_apply_replaces_it") {
        return;
    }
    let ns = Netns::new("lockdown");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    ns.exec_ok("nft", &["-f", "examples/systemd/lockdown.nft"]);
    let table = ns.exec_ok("nft", &["list", "table", "inet", "egressc"]);
    assert!(
        table.contains("policy drop;") && table.contains("lockdown"),
        "{table}"
    );
    ok(egressc(&ns, &state, &["apply", FINANCE, "--locked"]));
    let table = ns.exec_ok("nft", &["list", "table", "inet", "egressc"]);
    assert!(
        !table.contains("lockdown") && table.contains("192.0.2.10"),
        "{table}"
    );
    assert_eq!(
        ns.exec_ok("nft", &["list", "tables"])
            .matches("egressc")
            .count(),
        1
    );
}

/// Writes an executable script `name` into `dir`.
fn wrapper(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = write_file(dir, name, &format!("#!/bin/sh\n{body}"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn which(program: &str) -> String {
    support::run_ok("sh", &["-c", &format!("command -v {program}")])
        .trim()
        .to_string()
}

/// egressc with `bin` first on its PATH (to put a fault-injecting wrapper in
/// front of a real tool).
fn egressc_with_path(ns: &Netns, state: &Path, bin: &Path, args: &[&str]) -> Output {
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    ns.command(EGRESSC)
        .env("EGRESSC_STATE_DIR", state)
        .env("PATH", path)
        .args(args)
        .output()
        .expect("run egressc")
}

/// Killing egressc at any moment of an apply leaves the old table or the new one,
/// never a mix and never none: nft gets a complete file or does not run, and its
/// transaction is atomic.
#[test]
fn sigkill_at_any_moment_leaves_the_old_or_the_new_table() {
    if !support::kernel_available("sigkill_at_any_moment_leaves_the_old_or_the_new_table") {
        return;
    }
    let ns = Netns::new("sigkill");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let table = || ns.exec_ok("nft", &["list", "table", "inet", "egressc"]);
    // Reference listings (no traffic in this namespace: counters stay 0).
    ok(egressc(&ns, &state, &["apply", FLEET, "--locked"]));
    let fleet = table();
    ok(egressc(&ns, &state, &["apply", FINANCE, "--locked"]));
    let finance = table();
    let (mut old_seen, mut new_seen) = (0, 0);
    for round in 0..24u64 {
        let (target, other) = if round % 2 == 0 {
            (FLEET, &finance)
        } else {
            (FINANCE, &fleet)
        };
        let before = table();
        let mut child = ns
            .command(EGRESSC)
            .env("EGRESSC_STATE_DIR", &state)
            .args(["apply", target, "--locked"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Spread the kill over the whole apply (a debug build takes ~20-60 ms).
        std::thread::sleep(Duration::from_micros((round * 7919) % 60_000));
        let _ = child.kill();
        let _ = child.wait();
        // nft may still be finishing its (atomic) transaction.
        std::thread::sleep(Duration::from_millis(100));
        let after = table();
        let expected_new = if target == FLEET { &fleet } else { &finance };
        assert!(
            after == before || &after == expected_new,
            "round {round}: the table is neither the old nor the new one:\n{after}"
        );
        if &after == expected_new && &before == other {
            new_seen += 1;
        } else {
            old_seen += 1;
        }
    }
    eprintln!("sigkill: {old_seen} rounds kept the old table, {new_seen} got the new one");
}

/// The kernel rejecting an nft transaction (a wrapper appends overlapping interval
/// elements, which nf_tables refuses) leaves the old ruleset byte-identical. The
/// netlink equivalent is tested in tests/netlink.rs (an invalid batch).
#[test]
fn a_kernel_rejection_leaves_the_old_ruleset_byte_identical() {
    if !support::kernel_available("a_kernel_rejection_leaves_the_old_ruleset_byte_identical") {
        return;
    }
    let ns = Netns::new("reject");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    support::add_foreign_nft(&ns, dir.path());
    ok(egressc(&ns, &state, &["apply", FINANCE, "--locked"]));
    let before = ruleset(&ns);
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let real = which("nft");
    wrapper(
        &bin,
        "nft",
        &format!(
            "if [ \"$1\" = -f ]; then\n  cp \"$2\" \"$2.bad\"\n  echo 'add element inet egressc allow_v4_nets {{ 10.0.0.0/8 . tcp . 1-100, 10.0.0.0/8 . tcp . 50-60 }}' >> \"$2.bad\"\n  exec {real} -f \"$2.bad\"\nfi\nexec {real} \"$@\"\n"
        ),
    );
    let out = egressc_with_path(
        &ns,
        &state,
        &bin,
        &["apply", FLEET, "--locked", "--backend", "nft"],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("File exists"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        before,
        ruleset(&ns),
        "a rejected transaction changed the ruleset"
    );
}

/// iptables loads two families with two commands. If the IPv6 load fails after
/// the IPv4 one succeeded, IPv4 is restored: the families never disagree.
#[test]
fn a_failed_ipv6_load_restores_ipv4_so_the_families_agree() {
    if !support::kernel_available("a_failed_ipv6_load_restores_ipv4_so_the_families_agree") {
        return;
    }
    let ns = Netns::new("halfipt");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    ok(egressc(
        &ns,
        &state,
        &["apply", FINANCE, "--locked", "--backend", "iptables"],
    ));
    let chains = || {
        ["iptables", "ip6tables"]
            .map(|t| ns.exec_ok(t, &["-S", "EGRESSC"]))
            .join("\n")
    };
    let before = chains();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let real = which("ip6tables-restore");
    // Fails the real (not --test) load of the new IPv6 rules only.
    wrapper(
        &bin,
        "ip6tables-restore",
        &format!(
            "for last; do :; done\ncase \" $* \" in *\" --test \"*) exec {real} \"$@\";; esac\nif grep -q '2001:db8:6::6' \"$last\"; then echo 'injected failure' >&2; exit 1; fi\nexec {real} \"$@\"\n"
        ),
    );
    let out = egressc_with_path(
        &ns,
        &state,
        &bin,
        &["apply", FLEET, "--locked", "--backend", "iptables"],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("injected failure"));
    assert_eq!(before, chains(), "the families were left disagreeing");
}
