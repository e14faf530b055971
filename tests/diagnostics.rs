//! The diagnostics corpus: every policy in `tests/bad/` must be refused by
//! `egressc check` with exit 1, nothing on stdout, and exactly the diagnostics in
//! its snapshot (`snapshots/diagnostics-NN-name.snap`).
//!
//! A file named `*.iptables.yaml` is checked with `--format iptables`, for limits
//! that only that format has (the 29-character `--log-prefix`).
//!
//! To add a case: drop a file in `tests/bad/`, run `cargo insta test --accept`
//! (or `INSTA_UPDATE=always cargo test --test diagnostics`), then read the new
//! snapshot: it is the expected output, so check that it is right and helpful.

use std::path::Path;
use std::process::Command;

const EGRESSC: &str = env!("CARGO_BIN_EXE_egressc");

/// The corpus must not shrink unnoticed: the issue asks for at least 30 cases.
const MIN_CASES: usize = 32;

/// The bad policies, sorted, as paths relative to the package root (cargo runs
/// integration tests there), so snapshots hold no absolute paths.
fn corpus() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir("tests/bad")
        .expect("tests/bad exists (tests run from the package root)")
        .map(|e| e.expect("readable directory entry").file_name())
        .map(|n| n.into_string().expect("corpus file names are UTF-8"))
        .filter(|n| n.ends_with(".yaml"))
        .map(|n| format!("tests/bad/{n}"))
        .collect();
    files.sort();
    files
}

/// `file:line:col: error[code]: message` (the first line carries the CLI's
/// `egressc: ` lead-in), each followed by a `  help: ` line.
fn assert_diagnostic_shape(file: &str, stderr: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "{file}: no diagnostics at all");
    let mut errors = 0;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].strip_prefix("egressc: ").unwrap_or(lines[i]);
        let rest = line
            .strip_prefix(file)
            .and_then(|r| r.strip_prefix(':'))
            .unwrap_or_else(|| panic!("{file}: line does not start with the file name: {line:?}"));
        let mut parts = rest.splitn(3, ':');
        let (l, c, tail) = (parts.next(), parts.next(), parts.next());
        for (what, n) in [("line", l), ("column", c)] {
            let n: u64 = n
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{file}: no {what} number in {line:?}"));
            assert!(n >= 1, "{file}: {what} numbers start at 1: {line:?}");
        }
        let tail = tail.unwrap_or_default();
        let severity = if tail.starts_with(" error[") {
            errors += 1;
            "error"
        } else if tail.starts_with(" warning[") {
            "warning"
        } else {
            panic!("{file}: not `error[code]` or `warning[code]`: {line:?}")
        };
        let code = tail[severity.len() + 2..]
            .split_once("]: ")
            .map(|(code, _)| code)
            .unwrap_or_else(|| panic!("{file}: no `]: message` in {line:?}"));
        assert!(
            !code.is_empty()
                && code
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{file}: code `{code}` is not kebab-case"
        );
        let help = lines.get(i + 1).copied().unwrap_or_default();
        assert!(
            help.starts_with("  help: ") && help.len() > "  help: ".len(),
            "{file}: `{code}` has no help line (got {help:?})"
        );
        i += 2;
    }
    assert!(errors >= 1, "{file}: refused without a single error");
}

/// Checks one bad policy; panics (with the file name) if anything is off.
fn check_bad_policy(file: &str) {
    let mut cmd = Command::new(EGRESSC);
    cmd.arg("check");
    if file.ends_with(".iptables.yaml") {
        cmd.args(["--format", "iptables"]);
    }
    let out = cmd.arg(file).output().expect("run egressc");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8(out.stderr).expect("diagnostics are UTF-8");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{file}: expected exit 1 (invalid policy), got {:?}\n{stderr}",
        out.status.code()
    );
    assert!(
        stdout.is_empty(),
        "{file}: stdout must be empty: {stdout:?}"
    );
    assert!(
        !stderr.chars().any(|c| c.is_control() && c != '\n'),
        "{file}: raw control characters reached the terminal: {stderr:?}"
    );
    assert_diagnostic_shape(file, &stderr);

    let stem = Path::new(file)
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".yaml"))
        .expect("a .yaml file")
        .replace('.', "-");
    let name = format!("diagnostics-{stem}");
    insta::with_settings!({
        snapshot_path => "../snapshots",
        prepend_module_to_snapshot => false,
        description => format!("egressc check {file}"),
        omit_expression => true,
    }, {
        insta::assert_snapshot!(name, stderr);
    });
}

#[test]
fn every_bad_policy_is_refused_with_its_exact_diagnostics() {
    let files = corpus();
    assert!(
        files.len() >= MIN_CASES,
        "only {} bad policies in tests/bad; the corpus needs at least {MIN_CASES}",
        files.len()
    );
    // Every file is checked even when an earlier one fails, so one run reports
    // (and `cargo insta test` records) all of them.
    let failed: Vec<&String> = files
        .iter()
        .filter(|file| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check_bad_policy(file)))
                .is_err()
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} bad policies failed (details above): {failed:?}",
        failed.len(),
        files.len()
    );
}

/// The multiple-problems case is the point of the validator's design: one run
/// shows everything. Guard it beyond the snapshot, so an accidental re-accept
/// of a shorter list cannot hide a validator that stops at the first error.
#[test]
fn every_problem_in_a_file_is_reported_in_one_run() {
    let out = Command::new(EGRESSC)
        .args(["check", "tests/bad/60-many-problems.yaml"])
        .output()
        .expect("run egressc");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for code in [
        "unknown-version",
        "invalid-name",
        "invalid-default",
        "resolver-not-address",
        "invalid-port",
        "unsafe-characters",
        "invalid-rate",
        "invalid-log-group",
        "reversed-port-range",
        "unknown-protocol",
        "cidr-host-bits",
        "unsupported-scheme",
        "url-with-ports",
        "missing-ports",
        "wildcard-host",
        "missing-target",
        "conflicting-targets",
    ] {
        assert!(
            stderr.contains(&format!("error[{code}]")),
            "`{code}` missing from:\n{stderr}"
        );
    }
    let errors = stderr.matches(": error[").count();
    assert!(errors >= 18, "expected 18 errors, got {errors}:\n{stderr}");
}

/// The iptables-only limit must not leak into nft, whose limit is 127.
#[test]
fn the_iptables_prefix_limit_applies_to_iptables_only() {
    let file = "tests/bad/25-log-prefix-too-long.iptables.yaml";
    let nft = Command::new(EGRESSC)
        .args(["check", file])
        .output()
        .expect("run egressc");
    assert_eq!(
        nft.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&nft.stderr)
    );
    for format in ["iptables", "ip6tables"] {
        let out = Command::new(EGRESSC)
            .args(["check", "--format", format, file])
            .output()
            .expect("run egressc");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{format}: {stderr}");
        assert!(stderr.contains("error[log-prefix-too-long]"), "{stderr}");
    }
}
