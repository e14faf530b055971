//! End-to-end behaviour of the `egressc` binary, with no network at all: every
//! render and explain here reads a hand-written lock file (`--locked`).
//!
//! What is protected: policy text can never reach the firewall output unless it
//! passes the allowlist (and a refused policy prints nothing, writes nothing);
//! the exit codes scripts rely on; `explain` deciding like the rendered rules;
//! and output that does not depend on the order of the allow list.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::EGRESSC;

/// What one run of egressc did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs egressc in `dir`, so messages name files relative to it.
fn egressc(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(EGRESSC)
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run egressc");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Writes `<policy>.lock` for the policy file as it is now, with `hosts` as the
/// JSON object of answers (see `resolve::Resolution`).
fn write_lock(dir: &Path, policy: &str, hosts_json: &str) {
    let bytes = std::fs::read(dir.join(policy)).unwrap();
    let lock = format!(
        r#"{{
  "lock_format": 1,
  "policy_sha256": "{}",
  "resolved_at": "2026-01-01T00:00:00Z",
  "resolvers": ["192.0.2.53"],
  "port": 53,
  "hosts": {hosts_json}
}}
"#,
        egressc::policy::sha256_hex(&bytes)
    );
    write(dir, &format!("{policy}.lock"), &lock);
}

/// The files in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

const FORMATS: [&str; 3] = ["nft", "iptables", "ip6tables"];

// ---------------------------------------------------------------------------
// No injection
// ---------------------------------------------------------------------------

/// Known injection strings, as the inside of a YAML double-quoted scalar, and
/// how the diagnostic names the first refused character.
const INJECTIONS: [(&str, &str); 7] = [
    // Ends the nft string, starts a new line, and accepts everything.
    (r#"x\"\nip daddr 0.0.0.0/0 accept"#, "`\"`"),
    // The same without a quote: a newline alone starts a new statement.
    (r"x\nip daddr 0.0.0.0/0 accept", "newline"),
    // nft expands variables even inside quotes.
    ("$var", "`$`"),
    ("${var}", "`$`"),
    // NUL truncates the string in nft.
    (r"deny\0ip daddr 0.0.0.0/0 accept", "NUL"),
    // Ends the string and the command, then wipes every table on the host.
    (r#"\"; flush ruleset"#, "`\"`"),
    // Starts an nft/iptables-restore comment that swallows the rest of the line.
    ("x#rest", "`#`"),
];

/// A policy that needs no DNS (cidr entries only) with `field` set to `value`.
fn injection_policy(field: &str, value: &str) -> String {
    let (name, prefix) = match field {
        "name" => (format!("\"{value}\""), "\"[EGRESS-DENIED] \"".to_string()),
        "log.prefix" => ("safe-name".to_string(), format!("\"{value}\"")),
        _ => unreachable!(),
    };
    format!(
        "version: 1\nname: {name}\nlog:\n  prefix: {prefix}\nallow:\n  - cidr: 192.0.2.0/24\n    ports: [443]\n"
    )
}

fn assert_refused_without_output(run: &Run, what: &str, code: i32, expected: &[&str]) {
    assert_eq!(run.code, Some(code), "{what}: {}", run.describe());
    assert!(
        run.stdout.is_empty(),
        "{what}: a refused policy must print nothing on stdout: {}",
        run.describe()
    );
    for needle in expected {
        assert!(
            run.stderr.contains(needle),
            "{what}: stderr should contain {needle:?}: {}",
            run.describe()
        );
    }
    // The payload must not reach the terminal raw either.
    assert!(
        !run.stderr.contains('\0') && !run.stderr.contains("\nip daddr"),
        "{what}: the payload was echoed raw: {}",
        run.describe()
    );
}

#[test]
fn injection_strings_are_refused_by_every_command_and_format_with_empty_stdout() {
    for field in ["log.prefix", "name"] {
        let code = if field == "name" {
            "error[invalid-name]"
        } else {
            "error[unsafe-characters]"
        };
        for (payload, char_named) in INJECTIONS {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            write(d, "p.yaml", &injection_policy(field, payload));
            write_lock(d, "p.yaml", "{}");
            let what = |cmd: &str| format!("{field} = {payload:?}: {cmd}");
            let expected = [code, char_named, "p.yaml:"];

            let run = egressc(d, &["check", "p.yaml"]);
            assert_refused_without_output(&run, &what("check"), 1, &expected);
            let run = egressc(d, &["check", "--format", "iptables", "p.yaml"]);
            assert_refused_without_output(&run, &what("check --format iptables"), 1, &expected);

            for format in FORMATS {
                let run = egressc(d, &["render", "p.yaml", "--locked", "--format", format]);
                assert_refused_without_output(
                    &run,
                    &what(&format!("render {format}")),
                    1,
                    &expected,
                );

                let out = format!("rules.{format}");
                let run = egressc(
                    d,
                    &[
                        "render", "p.yaml", "--locked", "--format", format, "-o", &out,
                    ],
                );
                assert_refused_without_output(
                    &run,
                    &what(&format!("render {format} -o")),
                    1,
                    &expected,
                );
                assert_eq!(
                    listing(d),
                    ["p.yaml", "p.yaml.lock"],
                    "{}: a failed render must leave no output (or temporary) file behind",
                    what(&format!("render {format} -o"))
                );
            }

            // explain's 1 means "denied": a refused policy is exit 2, not a verdict.
            let run = egressc(d, &["explain", "p.yaml", "192.0.2.1:443", "--locked"]);
            assert_refused_without_output(&run, &what("explain"), 2, &expected);
        }
    }
}

/// The control for the test above: the same policy with the seed prefix renders,
/// so the refusals are about the payload and nothing else.
#[test]
fn the_seed_log_prefix_passes_and_reaches_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "p.yaml",
        &injection_policy("log.prefix", "[EGRESS-DENIED] "),
    );
    write_lock(d, "p.yaml", "{}");
    for format in FORMATS {
        let run = egressc(d, &["render", "p.yaml", "--locked", "--format", format]);
        assert_eq!(run.code, Some(0), "{format}: {}", run.describe());
        assert!(
            run.stdout.contains("\"[EGRESS-DENIED] \""),
            "{format}: the prefix is missing from the output: {}",
            run.describe()
        );
        assert!(
            run.stdout.contains("safe-name"),
            "{format}: {}",
            run.describe()
        );

        // -o writes exactly what stdout shows, and nothing else.
        let out = format!("rules.{format}");
        let written = egressc(
            d,
            &[
                "render", "p.yaml", "--locked", "--format", format, "-o", &out,
            ],
        );
        assert_eq!(written.code, Some(0), "{}", written.describe());
        assert!(written.stdout.is_empty(), "{}", written.describe());
        assert_eq!(std::fs::read_to_string(d.join(&out)).unwrap(), run.stdout);
    }
    assert_eq!(
        listing(d),
        [
            "p.yaml",
            "p.yaml.lock",
            "rules.ip6tables",
            "rules.iptables",
            "rules.nft"
        ]
    );
}

/// `-o` must not clobber an existing file when the render fails.
#[test]
fn a_failed_render_leaves_an_existing_output_file_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "p.yaml",
        &injection_policy("log.prefix", r#"\"; flush ruleset"#),
    );
    write_lock(d, "p.yaml", "{}");
    write(d, "rules.nft", "previous rules\n");
    let run = egressc(d, &["render", "p.yaml", "--locked", "-o", "rules.nft"]);
    assert_eq!(run.code, Some(1), "{}", run.describe());
    assert_eq!(
        std::fs::read_to_string(d.join("rules.nft")).unwrap(),
        "previous rules\n"
    );
    assert_eq!(listing(d), ["p.yaml", "p.yaml.lock", "rules.nft"]);
}

// ---------------------------------------------------------------------------
// Exit codes
// ---------------------------------------------------------------------------

const HOST_POLICY: &str = "version: 1
dns:
  resolvers: [192.0.2.53]
allow:
  - host: api.example.com
    ports: [443]
  - cidr: 10.20.0.0/16
    ports: [5432]
";

const HOST_ANSWERS: &str = r#"{
    "api.example.com": {
      "addresses": [
        {"addr": "198.51.100.7", "ttl": 60},
        {"addr": "2001:db8::7", "ttl": 60}
      ]
    }
  }"#;

#[test]
fn check_exits_0_for_a_valid_policy_with_nothing_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.yaml", HOST_POLICY);
    let run = egressc(dir.path(), &["check", "p.yaml"]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(run.stdout.is_empty(), "{}", run.describe());
    assert!(run.stderr.contains("p.yaml: ok"), "{}", run.describe());
}

/// An allow entry that names a DNS port can never take effect (DNS goes only to
/// the pinned resolvers, and that rule comes first): a warning says so, and the
/// policy stays valid.
#[test]
fn an_allow_entry_naming_a_dns_port_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "p.yaml",
        "version: 1\ndns:\n  resolvers: [1.1.1.1]\n  port: 5353\nallow:\n  - cidr: 10.0.0.0/8\n    ports: [443]\n  - cidr: 10.1.0.0/16\n    ports: [853]\n  - cidr: 10.2.0.0/16\n    ports: [5353]\n    protocol: udp\n  - cidr: 10.3.0.0/16\n    ports: [\"1-65535\"]\n",
    );
    let run = egressc(dir.path(), &["check", "p.yaml"]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("warning[dns-port-in-allow]"))
        .collect();
    assert_eq!(warnings.len(), 2, "{}", run.describe());
    assert!(warnings[0].starts_with("p.yaml:8:5:") && warnings[0].contains("port 853"));
    assert!(warnings[1].starts_with("p.yaml:10:5:") && warnings[1].contains("port 5353"));
}

#[test]
fn check_exits_1_for_an_invalid_policy() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "p.yaml",
        &HOST_POLICY.replace("ports: [443]", "ports: [0]"),
    );
    let run = egressc(dir.path(), &["check", "p.yaml"]);
    assert_eq!(run.code, Some(1), "{}", run.describe());
    assert!(
        run.stderr.contains("p.yaml:6:13: error[invalid-port]"),
        "{}",
        run.describe()
    );
}

#[test]
fn a_missing_policy_file_is_an_operational_failure_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["check", "absent.yaml"][..],
        &["render", "absent.yaml", "--locked"],
        &["explain", "absent.yaml", "192.0.2.1:443", "--locked"],
    ] {
        let run = egressc(dir.path(), args);
        assert_eq!(run.code, Some(2), "{args:?}: {}", run.describe());
        assert!(run.stdout.is_empty(), "{}", run.describe());
        assert!(
            run.stderr.contains("cannot read absent.yaml"),
            "{}",
            run.describe()
        );
        // The OS reason once, not twice.
        assert!(
            run.stderr.matches("No such file or directory").count() <= 1,
            "the reason is repeated: {}",
            run.describe()
        );
    }
}

#[test]
fn render_locked_without_a_lock_exits_2_and_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.yaml", HOST_POLICY);
    for format in FORMATS {
        let run = egressc(
            dir.path(),
            &["render", "p.yaml", "--locked", "--format", format],
        );
        assert_eq!(run.code, Some(2), "{}", run.describe());
        assert!(run.stdout.is_empty(), "{}", run.describe());
        assert!(run.stderr.contains("egressc lock"), "{}", run.describe());
        assert!(run.stderr.contains("p.yaml.lock"), "{}", run.describe());
    }
}

#[test]
fn a_lock_made_for_another_version_of_the_policy_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "p.yaml", HOST_POLICY);
    write_lock(d, "p.yaml", HOST_ANSWERS);
    assert_eq!(
        egressc(d, &["render", "p.yaml", "--locked"]).code,
        Some(0),
        "the fresh lock must work"
    );
    // Any edit after locking, even one that changes no rule, makes the lock stale.
    write(d, "p.yaml", &format!("{HOST_POLICY}# reviewed\n"));
    let run = egressc(d, &["render", "p.yaml", "--locked", "-o", "rules.nft"]);
    assert_eq!(run.code, Some(2), "{}", run.describe());
    assert!(run.stdout.is_empty(), "{}", run.describe());
    assert!(run.stderr.contains("another version"), "{}", run.describe());
    assert!(!d.join("rules.nft").exists(), "no output file on failure");
    let run = egressc(d, &["explain", "p.yaml", "198.51.100.7:443", "--locked"]);
    assert_eq!(run.code, Some(2), "{}", run.describe());
    assert!(run.stderr.contains("another version"), "{}", run.describe());
}

#[test]
fn a_lock_that_lacks_a_host_of_the_policy_exits_2_naming_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "p.yaml", HOST_POLICY);
    write_lock(
        d,
        "p.yaml",
        r#"{"other.example.com": {"addresses": [{"addr": "192.0.2.9", "ttl": 60}]}}"#,
    );
    for format in FORMATS {
        let run = egressc(d, &["render", "p.yaml", "--locked", "--format", format]);
        assert_eq!(run.code, Some(2), "{}", run.describe());
        assert!(run.stdout.is_empty(), "{}", run.describe());
        assert!(run.stderr.contains("api.example.com"), "{}", run.describe());
        assert!(run.stderr.contains("egressc lock"), "{}", run.describe());
    }
}

#[test]
fn a_damaged_lock_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "p.yaml", HOST_POLICY);
    write(d, "p.yaml.lock", "{ not json");
    let run = egressc(d, &["render", "p.yaml", "--locked"]);
    assert_eq!(run.code, Some(2), "{}", run.describe());
    assert!(run.stdout.is_empty(), "{}", run.describe());
    assert!(run.stderr.contains("damaged"), "{}", run.describe());
}

// ---------------------------------------------------------------------------
// explain
// ---------------------------------------------------------------------------

/// Line numbers matter: the tests check that explain points at them.
const EXPLAIN_POLICY: &str = "version: 1
dns:
  resolvers: [192.0.2.53]
allow:
  - host: api.example.com
    ports: [443]
  - cidr: 1.2.3.0/24
    ports: [53, 5000]
    protocol: udp
  - cidr: 10.0.0.0/8
    ports: [\"1-65535\"]
";

fn explain_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.yaml", EXPLAIN_POLICY);
    write_lock(dir.path(), "p.yaml", HOST_ANSWERS);
    dir
}

fn explain(dir: &Path, target: &str) -> Run {
    egressc(dir, &["explain", "p.yaml", target, "--locked"])
}

#[test]
fn explain_allows_a_listed_address_and_port_naming_the_entry_and_its_position() {
    let dir = explain_dir();
    let run = explain(dir.path(), "198.51.100.7:443");
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(
        run.stdout.starts_with("allow 198.51.100.7:443/tcp"),
        "{}",
        run.describe()
    );
    assert!(
        run.stdout
            .contains("allow[0] host api.example.com (p.yaml:5:5)"),
        "{}",
        run.describe()
    );
}

#[test]
fn explain_denies_the_same_address_on_another_port_naming_the_default() {
    let dir = explain_dir();
    let run = explain(dir.path(), "198.51.100.7:80");
    assert_eq!(run.code, Some(1), "{}", run.describe());
    assert!(
        run.stdout.starts_with("deny 198.51.100.7:80/tcp"),
        "{}",
        run.describe()
    );
    assert!(run.stdout.contains("default deny"), "{}", run.describe());
    assert!(!run.stdout.contains("allow["), "{}", run.describe());
}

#[test]
fn explain_denies_an_unlisted_address() {
    let dir = explain_dir();
    for target in ["203.0.113.9:443", "[2001:db8::8]:443", "2001:db8::8"] {
        let run = explain(dir.path(), target);
        assert_eq!(run.code, Some(1), "{target}: {}", run.describe());
        assert!(run.stdout.starts_with("deny "), "{}", run.describe());
        assert!(run.stdout.contains("default deny"), "{}", run.describe());
    }
}

#[test]
fn explain_tells_udp_from_tcp() {
    let dir = explain_dir();
    let udp = explain(dir.path(), "1.2.3.4:5000/udp");
    assert_eq!(udp.code, Some(0), "{}", udp.describe());
    assert!(
        udp.stdout.starts_with("allow 1.2.3.4:5000/udp"),
        "{}",
        udp.describe()
    );
    assert!(
        udp.stdout.contains("allow[1] cidr 1.2.3.0/24 (p.yaml:7:5)"),
        "{}",
        udp.describe()
    );
    for tcp in ["1.2.3.4:5000", "1.2.3.4:5000/tcp"] {
        let run = explain(dir.path(), tcp);
        assert_eq!(run.code, Some(1), "{tcp}: {}", run.describe());
        assert!(
            run.stdout.starts_with("deny 1.2.3.4:5000/tcp"),
            "{}",
            run.describe()
        );
    }
    // And the other way round: the tcp-only host entry does not allow udp.
    let run = explain(dir.path(), "198.51.100.7:443/udp");
    assert_eq!(run.code, Some(1), "{}", run.describe());
}

#[test]
fn explain_denies_dns_to_a_server_that_is_not_pinned_even_when_a_cidr_covers_it() {
    let dir = explain_dir();
    // 1.2.3.0/24 allows udp/53 and 10.0.0.0/8 allows every tcp port, but DNS
    // (53) and DNS over TLS (853) may only go to the pinned resolver.
    for target in ["1.2.3.4:53/udp", "10.1.2.3:53/tcp", "10.1.2.3:853"] {
        let run = explain(dir.path(), target);
        assert_eq!(run.code, Some(1), "{target}: {}", run.describe());
        assert!(
            run.stdout.starts_with("deny "),
            "{target}: {}",
            run.describe()
        );
        assert!(
            !run.stdout.contains("allow["),
            "{target}: {}",
            run.describe()
        );
    }
    // The same cidrs still allow other ports, and the pinned resolver answers.
    assert_eq!(explain(dir.path(), "10.1.2.3:22").code, Some(0));
    for target in ["192.0.2.53:53/udp", "192.0.2.53:53/tcp"] {
        let run = explain(dir.path(), target);
        assert_eq!(run.code, Some(0), "{target}: {}", run.describe());
        assert!(
            run.stdout.contains("dns.resolvers (p.yaml:3:3)"),
            "{}",
            run.describe()
        );
    }
}

/// explain must name the rule that decided. For DNS to a server that is not
/// pinned, that is the DNS rule (`goto deny` on ports 53/853), not the policy's
/// default: the default is where the packet ends up, not why.
#[test]
fn explain_names_the_dns_rule_when_it_decides() {
    let dir = explain_dir();
    let run = explain(dir.path(), "1.2.3.4:53/udp");
    assert_eq!(run.code, Some(1), "{}", run.describe());
    assert!(
        run.stdout.contains("dns.resolvers (p.yaml:3:3)"),
        "{}",
        run.describe()
    );
}

#[test]
fn explain_resolves_a_url_through_the_lock_and_checks_every_address() {
    let dir = explain_dir();
    let run = explain(dir.path(), "https://api.example.com");
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(
        run.stdout.starts_with("allow api.example.com:443/tcp"),
        "{}",
        run.describe()
    );
    for addr in ["198.51.100.7", "2001:db8::7"] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(addr) && l.contains("allow[0]")),
            "{addr} missing: {}",
            run.describe()
        );
    }
    // http:// is port 80, which the policy does not allow.
    let run = explain(dir.path(), "http://api.example.com");
    assert_eq!(run.code, Some(1), "{}", run.describe());
    assert!(
        run.stdout.starts_with("deny api.example.com:80/tcp"),
        "{}",
        run.describe()
    );
    // A name the lock does not know cannot be decided without DNS: exit 2.
    let run = explain(dir.path(), "https://unknown.example.com");
    assert_eq!(run.code, Some(2), "{}", run.describe());
    assert!(run.stdout.is_empty(), "{}", run.describe());
}

#[test]
fn explain_in_audit_mode_allows_and_notes_what_deny_would_drop() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "p.yaml",
        "version: 1\ndefault: audit\nlog:\n  prefix: \"[EGRESS-AUDIT] \"\nallow:\n  - cidr: 10.0.0.0/8\n    ports: [443]\n",
    );
    write_lock(d, "p.yaml", "{}");
    let run = explain(d, "203.0.113.9:443");
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(run.stdout.starts_with("allow "), "{}", run.describe());
    assert!(
        run.stdout.contains("default audit (p.yaml:2:10)"),
        "{}",
        run.describe()
    );
    assert!(run.stdout.contains("audit"), "{}", run.describe());
    assert!(
        run.stdout.contains("would be denied"),
        "the audit note is missing: {}",
        run.describe()
    );
    // What the allow list accepts carries no audit note.
    let run = explain(d, "10.0.0.1:443");
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(run.stdout.contains("allow[0]"), "{}", run.describe());
    assert!(
        !run.stdout.contains("would be denied"),
        "{}",
        run.describe()
    );
}

#[test]
fn explain_with_an_invalid_policy_exits_2_not_1() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "p.yaml",
        &EXPLAIN_POLICY.replace("protocol: udp", "protocol: icmp"),
    );
    write_lock(d, "p.yaml", HOST_ANSWERS);
    let run = explain(d, "198.51.100.7:443");
    assert_eq!(run.code, Some(2), "{}", run.describe());
    assert!(run.stdout.is_empty(), "{}", run.describe());
    assert!(
        run.stderr.contains("error[unknown-protocol]"),
        "{}",
        run.describe()
    );
}

#[test]
fn explain_with_an_unreadable_target_exits_2() {
    let dir = explain_dir();
    for target in [
        "1.2.3.4:0",
        "1.2.3.4:443/icmp",
        "ftp://api.example.com",
        "1.2.3.4:99999",
    ] {
        let run = explain(dir.path(), target);
        assert_eq!(run.code, Some(2), "{target}: {}", run.describe());
        assert!(run.stdout.is_empty(), "{target}: {}", run.describe());
    }
}

// ---------------------------------------------------------------------------
// Determinism
// ---------------------------------------------------------------------------

/// The same rules, written in another order (entries and ports shuffled), with
/// the lock's answers in another order too.
const ORDERED: &str = "version: 1
name: fleet
dns:
  resolvers: [192.0.2.53, \"2001:db8::53\"]
log:
  prefix: \"[EGRESS-DENIED] \"
  rate: 10/second
allow:
  - host: api.example.com
    ports: [443, 8443]
  - url: https://registry.example.com
  - url: udp://[2001:db8::99]:514
  - cidr: 10.20.0.0/16
    ports: [5432, \"8000-8100\"]
  - cidr: 10.20.5.0/24
    ports: [\"8050-9000\"]
  - cidr: 198.51.100.7
    ports: [443]
  - cidr: 2001:db8:1::/48
    ports: [22]
  - host: pkg.example.org
    ports: [443]
    protocol: udp
";

const SHUFFLED: &str = "version: 1
name: fleet
dns:
  resolvers: [192.0.2.53, \"2001:db8::53\"]
log:
  prefix: \"[EGRESS-DENIED] \"
  rate: 10/second
allow:
  - host: pkg.example.org
    protocol: udp
    ports: [443]
  - cidr: 2001:db8:1::/48
    ports: [22]
  - cidr: 10.20.5.0/24
    ports: [\"8050-9000\"]
  - url: udp://[2001:db8::99]:514
  - cidr: 198.51.100.7
    ports: [443]
  - host: api.example.com
    ports: [8443, 443]
  - cidr: 10.20.0.0/16
    ports: [\"8000-8100\", 5432]
  - url: https://registry.example.com
";

const ORDERED_ANSWERS: &str = r#"{
  "api.example.com": {"addresses": [
    {"addr": "198.51.100.7", "ttl": 60},
    {"addr": "198.51.100.8", "ttl": 60},
    {"addr": "2001:db8::7", "ttl": 60}
  ]},
  "pkg.example.org": {"addresses": [{"addr": "203.0.113.5", "ttl": 300}]},
  "registry.example.com": {"addresses": [
    {"addr": "10.20.1.1", "ttl": 30},
    {"addr": "2001:db8::443", "ttl": 30}
  ]}
}"#;

const SHUFFLED_ANSWERS: &str = r#"{
  "registry.example.com": {"addresses": [
    {"addr": "2001:db8::443", "ttl": 30},
    {"addr": "10.20.1.1", "ttl": 30}
  ]},
  "pkg.example.org": {"addresses": [{"addr": "203.0.113.5", "ttl": 300}]},
  "api.example.com": {"addresses": [
    {"addr": "2001:db8::7", "ttl": 60},
    {"addr": "198.51.100.8", "ttl": 60},
    {"addr": "198.51.100.7", "ttl": 60}
  ]}
}"#;

/// Removes what may legitimately differ: `comment "…"` / `--comment "…"` (they
/// name entries by position and line) and `#` header lines (they carry the
/// policy's sha256). Comment text is allowlisted, so it holds no `"`.
fn strip_comments(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(at) = rest.find("comment \"") {
            let mut keep = &rest[..at];
            keep = keep.strip_suffix("--").unwrap_or(keep);
            let keep = keep.strip_suffix(" -m comment ").unwrap_or(keep);
            out.push_str(keep.trim_end());
            let after = &rest[at + "comment \"".len()..];
            let close = after.find('"').expect("comments are closed");
            rest = &after[close + 1..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    out
}

#[test]
fn rendering_does_not_depend_on_the_order_of_the_allow_list_or_of_dns_answers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "a.yaml", ORDERED);
    write_lock(d, "a.yaml", ORDERED_ANSWERS);
    write(d, "b.yaml", SHUFFLED);
    write_lock(d, "b.yaml", SHUFFLED_ANSWERS);
    for format in FORMATS {
        let a = egressc(d, &["render", "a.yaml", "--locked", "--format", format]);
        let b = egressc(d, &["render", "b.yaml", "--locked", "--format", format]);
        assert_eq!(a.code, Some(0), "{format}: {}", a.describe());
        assert_eq!(b.code, Some(0), "{format}: {}", b.describe());
        assert_ne!(a.stdout, b.stdout, "{format}: the comments should differ");
        let (sa, sb) = (strip_comments(&a.stdout), strip_comments(&b.stdout));
        assert!(!sa.contains("comment"), "{format}: comments left in:\n{sa}");
        assert_eq!(
            sa, sb,
            "{format}: the rules differ with the order of the policy"
        );

        // The comparison is about real content, not two empty strings.
        let must_hold: &[&str] = match format {
            "ip6tables" => &[
                "2001:db8::7",
                "2001:db8::443",
                "2001:db8:1::/48",
                "2001:db8::99",
            ],
            _ => &["198.51.100.8", "10.20.1.1", "10.20.0.0/16", "203.0.113.5"],
        };
        for addr in must_hold {
            assert!(sa.contains(addr), "{format}: {addr} missing:\n{sa}");
        }

        // And the same inputs give the same bytes, run after run.
        let again = egressc(d, &["render", "a.yaml", "--locked", "--format", format]);
        assert_eq!(again.stdout, a.stdout, "{format}: not byte-stable");
    }
}

#[test]
fn strip_comments_removes_only_comments() {
    assert_eq!(
        strip_comments("# header\nip daddr 1.2.3.4 accept comment \"allow[0] x\"\n"),
        "ip daddr 1.2.3.4 accept\n"
    );
    assert_eq!(
        strip_comments("-A EGRESSC -o lo -m comment --comment \"loopback\" -j RETURN\n"),
        "-A EGRESSC -o lo -j RETURN\n"
    );
    assert_eq!(
        strip_comments("\t10.0.0.0/8 . tcp . 443 comment \"allow[0]\",\n"),
        "\t10.0.0.0/8 . tcp . 443,\n"
    );
}

/// A proxy-mode policy needs a running proxy: `exec` (which leaves no process
/// behind and drops the capability the proxy needs) refuses it before touching
/// anything, with the policy exit code and a pointer to `watch`.
#[test]
fn exec_refuses_a_proxy_mode_policy_before_touching_anything() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let run = egressc(
        dir.path(),
        &[
            "exec",
            &std::fs::canonicalize("examples/proxy-agent/policy.yaml")
                .unwrap()
                .to_string_lossy(),
            "--",
            "touch",
            marker.to_str().unwrap(),
        ],
    );
    assert_eq!(run.code, Some(1), "{}", run.describe());
    assert!(run.stderr.contains("DNS proxy mode"), "{}", run.describe());
    assert!(run.stderr.contains("egressc watch"), "{}", run.describe());
    assert!(!marker.exists(), "the workload ran");
}

/// In proxy mode a name is decided by the proxy (no address is known before it
/// answers): a name under an entry on that entry's port is allowed, another
/// port or an unlisted name is denied, and no DNS is needed to say so.
#[test]
fn explain_in_proxy_mode_decides_names_by_the_entries_the_proxy_serves() {
    let policy = std::fs::canonicalize("examples/proxy-agent/policy.yaml").unwrap();
    let policy = policy.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = egressc(
        dir.path(),
        &["explain", policy, "https://objects.githubusercontent.com"],
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(
        run.stdout.contains("allow[1] host *.githubusercontent.com"),
        "{}",
        run.describe()
    );
    let run = egressc(
        dir.path(),
        &["explain", policy, "objects.githubusercontent.com:22"],
    );
    assert_eq!(run.code, Some(1), "{}", run.describe());
    assert!(
        run.stdout.contains("no entry for it allows port 22/tcp"),
        "{}",
        run.describe()
    );
    let run = egressc(dir.path(), &["explain", policy, "githubusercontent.com"]);
    assert_eq!(
        run.code,
        Some(1),
        "a wildcard is not its apex: {}",
        run.describe()
    );
    assert!(
        run.stdout.contains("the DNS proxy refuses this name"),
        "{}",
        run.describe()
    );
}
