//! `egressc exec`: the workload runs behind the policy, without the power to
//! change it, in the same process — and never runs when a step fails.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::process::Output;

use support::{EGRESSC, Netns, write_file};

const SERVER: &str = "10.77.0.2";

/// A client namespace joined to a server namespace with TCP listeners on 443
/// (allowed by the policy) and 8443 (not).
struct World {
    client: Netns,
    _server: Netns,
    _listeners: Vec<TcpListener>,
    dir: tempfile::TempDir,
    policy: std::path::PathBuf,
}

fn world() -> World {
    let client = Netns::new("xc");
    let server = Netns::new("xs");
    support::veth_pair(
        &client,
        &["10.77.0.1/24"],
        &server,
        &[&format!("{SERVER}/24")],
    );
    let listeners = server.run(|| {
        [443u16, 8443]
            .into_iter()
            .map(|p| TcpListener::bind(SocketAddr::new(SERVER.parse().unwrap(), p)).unwrap())
            .collect::<Vec<_>>()
    });
    let dir = tempfile::tempdir().unwrap();
    let policy = write_file(
        dir.path(),
        "policy.yaml",
        &format!("version: 1\nname: exec-test\nallow:\n  - cidr: {SERVER}\n    ports: [443]\n"),
    );
    World {
        client,
        _server: server,
        _listeners: listeners,
        dir,
        policy,
    }
}

fn exec(world: &World, options: &[&str], script: &str) -> Output {
    let mut args = vec!["exec", world.policy.to_str().unwrap()];
    args.extend_from_slice(options);
    args.extend_from_slice(&["--", "bash", "-c", script]);
    world.client.command(EGRESSC).args(&args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A bash snippet that connects to host:port and prints `name=open|closed`.
fn probe(name: &str, port: u16) -> String {
    format!(
        "if timeout 2 bash -c 'exec 3<>/dev/tcp/{SERVER}/{port}' 2>/dev/null; then echo {name}=open; else echo {name}=closed; fi; "
    )
}

#[test]
fn the_child_runs_behind_the_policy_and_cannot_change_it() {
    if !support::kernel_available("the_child_runs_behind_the_policy_and_cannot_change_it") {
        return;
    }
    let world = world();
    // Control: without egressc, both ports are open and nft can change rules.
    let control = world
        .client
        .command("bash")
        .args(["-c", &(probe("allowed", 443) + &probe("other", 8443))])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&control.stdout),
        "allowed=open\nother=open\n"
    );

    let script = probe("allowed", 443)
        + &probe("other", 8443)
        + "nft flush ruleset 2>&1; echo nft=$?; "
        + EGRESSC
        + " remove 2>&1; echo netlink=$?; grep NoNewPrivs /proc/self/status; exit 7";
    let out = exec(&world, &[], &script);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(7), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("allowed=open\n"), "{all}");
    assert!(stdout.contains("other=closed\n"), "{all}");
    assert!(
        stdout.contains("nft=1\n") && stdout.contains("Operation not permitted"),
        "{all}"
    );
    assert!(stdout.contains("netlink=2\n"), "{all}");
    assert!(stdout.contains("NoNewPrivs:\t1"), "{all}");
    // The rules are still there after the child tried to remove them.
    let table = world
        .client
        .exec_ok("nft", &["list", "table", "inet", "egressc"]);
    assert!(table.contains("10.77.0.2 . tcp . 443"), "{table}");
}

#[test]
fn a_setuid_root_helper_cannot_bring_the_capability_back() {
    if !support::kernel_available("a_setuid_root_helper_cannot_bring_the_capability_back") {
        return;
    }
    let world = world();
    // A setuid-root copy of egressc (nft itself refuses to run setuid), in a
    // directory every user can reach; `remove` deletes our table over netlink.
    let bin = world.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let suid = bin.join("egressc-suid");
    std::fs::copy(EGRESSC, &suid).unwrap();
    support::run_ok("chmod", &["4755", suid.to_str().unwrap()]);
    support::run_ok(
        "chmod",
        &[
            "755",
            world.dir.path().to_str().unwrap(),
            bin.to_str().unwrap(),
        ],
    );
    let suid = suid.to_str().unwrap();
    let state = format!("EGRESSC_STATE_DIR={}", bin.join("state").display());
    let has_table = || {
        world
            .client
            .exec_ok("nft", &["list", "tables"])
            .contains("egressc")
    };

    // Control: as nobody, outside egressc exec, the setuid bit does give the
    // helper its power here (the filesystem honours setuid; the test can fail).
    world
        .client
        .exec_ok("nft", &["-f", "examples/systemd/lockdown.nft"]);
    let control = world
        .client
        .command("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "env",
            &state,
            suid,
            "remove",
        ])
        .output()
        .unwrap();
    assert!(control.status.success(), "control: {}", text(&control));
    assert!(
        !has_table(),
        "control: the setuid helper did not remove the table"
    );

    for options in [&["--user", "nobody"][..], &[][..]] {
        let out = exec(
            &world,
            options,
            &format!("env {state} {suid} remove 2>&1; echo suid=$?"),
        );
        let all = text(&out);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("suid=2"),
            "{options:?}: {all}"
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Operation not permitted"),
            "{options:?}: {all}"
        );
        assert!(
            has_table(),
            "{options:?}: the setuid helper removed the firewall"
        );
    }
}

#[test]
fn exit_status_and_signals_pass_through_in_the_same_process() {
    if !support::kernel_available("exit_status_and_signals_pass_through_in_the_same_process") {
        return;
    }
    let world = world();
    let out = exec(&world, &[], "exit 42");
    assert_eq!(out.status.code(), Some(42), "{}", text(&out));

    // Same PID: `ip netns exec` and egressc both exec, so the pid we spawned is
    // the workload's.
    let child = world
        .client
        .command(EGRESSC)
        .args([
            "exec",
            world.policy.to_str().unwrap(),
            "--",
            "bash",
            "-c",
            "echo $$; kill -TERM $$",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), pid.to_string());
    assert_eq!(out.status.signal(), Some(libc::SIGTERM), "{:?}", out.status);
}

/// Every failure before the exec stops the workload, with the step's exit code.
#[test]
fn every_failing_step_stops_the_workload_with_its_exit_code() {
    if !support::kernel_available("every_failing_step_stops_the_workload_with_its_exit_code") {
        return;
    }
    let world = world();
    let marker = world.dir.path().join("ran");
    let touch = format!("touch {}", marker.display());
    let run = |args: Vec<String>, prefix: &[&str]| {
        let mut cmd = world
            .client
            .command(prefix.first().copied().unwrap_or(EGRESSC));
        if !prefix.is_empty() {
            cmd.args(&prefix[1..]).arg(EGRESSC);
        }
        cmd.args(&args)
            .args(["--", "bash", "-c", &touch])
            .output()
            .unwrap()
    };
    let policy = world.policy.to_str().unwrap().to_string();
    let invalid = write_file(
        world.dir.path(),
        "bad.yaml",
        "version: 1\nallow:\n  - cidr: 10.0.0.0/8\n    ports: [0]\n",
    );
    let no_dns = write_file(
        world.dir.path(),
        "dns.yaml",
        "version: 1\ndns:\n  resolvers: [192.0.2.53]\nallow:\n  - host: api.example.com\n    ports: [443]\n",
    );
    let cases: Vec<(&str, Vec<String>, &[&str], i32)> = vec![
        (
            "invalid policy",
            vec!["exec".into(), invalid.to_str().unwrap().into()],
            &[],
            1,
        ),
        (
            "DNS failure",
            vec!["exec".into(), no_dns.to_str().unwrap().into()],
            &[],
            2,
        ),
        (
            "no such user",
            vec![
                "exec".into(),
                policy.clone(),
                "--user".into(),
                "no-such-user-egc".into(),
            ],
            &[],
            5,
        ),
        // Not allowed to change the firewall at all: applying fails.
        (
            "firewall",
            vec!["exec".into(), policy.clone()],
            &[
                "setpriv",
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
            ],
            3,
        ),
        // CAP_SETPCAP gone: the bounding set cannot be reduced.
        (
            "capabilities",
            vec!["exec".into(), policy.clone()],
            &["setpriv", "--bounding-set", "-setpcap"],
            4,
        ),
    ];
    for (what, args, prefix, code) in cases {
        let out = run(args, prefix);
        assert_eq!(out.status.code(), Some(code), "{what}: {}", text(&out));
        assert!(!marker.exists(), "{what}: the workload ran");
    }
    let out = world
        .client
        .command(EGRESSC)
        .args(["exec", &policy, "--", "/no/such/command"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127), "{}", text(&out));
}

#[test]
fn the_policy_can_come_from_the_environment() {
    if !support::kernel_available("the_policy_can_come_from_the_environment") {
        return;
    }
    let world = world();
    let yaml = std::fs::read_to_string(&world.policy).unwrap();
    let out = world
        .client
        .command(EGRESSC)
        .env("EGRESSC_POLICY", &yaml)
        .args([
            "exec",
            "--",
            "bash",
            "-c",
            &(probe("allowed", 443) + &probe("other", 8443)),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "allowed=open\nother=closed\n",
        "{}",
        text(&out)
    );
    // The same validation, with diagnostics naming the variable.
    let out = world
        .client
        .command(EGRESSC)
        .env(
            "EGRESSC_POLICY",
            "version: 1\nallow:\n  - cidr: 10.0.0.0/8\n    ports: [70000]\n",
        )
        .args(["exec", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("$EGRESSC_POLICY:4:13: error[invalid-port]"),
        "{stderr}"
    );
}

/// The capability sets the workload sees, from its own /proc/self/status.
fn child_caps(out: &Output) -> Vec<(String, u64)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(":\t")?;
            let name = name.strip_prefix("Cap")?;
            Some((
                name.to_string(),
                u64::from_str_radix(value.trim(), 16).ok()?,
            ))
        })
        .collect()
}

#[test]
fn the_workload_holds_neither_capability_in_any_set() {
    if !support::kernel_available("the_workload_holds_neither_capability_in_any_set") {
        return;
    }
    let world = world();
    const NET_ADMIN: u64 = 1 << 12;
    const NET_RAW: u64 = 1 << 13;
    const SYS_ADMIN: u64 = 1 << 21;
    let show = "grep ^Cap /proc/self/status";
    // Control: a shell started the same way without egressc holds them.
    let control = world
        .client
        .command("bash")
        .args(["-c", show])
        .output()
        .unwrap();
    let held = child_caps(&control);
    assert!(
        held.iter().any(|(n, v)| n == "Bnd" && v & NET_ADMIN != 0),
        "{held:?}"
    );

    let out = exec(&world, &[], show);
    let sets = child_caps(&out);
    assert_eq!(sets.len(), 5, "{}", text(&out));
    for (name, value) in &sets {
        assert_eq!(
            value & (NET_ADMIN | NET_RAW),
            0,
            "Cap{name} still holds NET_ADMIN or NET_RAW: {value:x}"
        );
    }
    // Only those two: root keeps the rest unless asked.
    assert!(
        sets.iter().any(|(n, v)| n == "Eff" && v & SYS_ADMIN != 0),
        "{sets:?}"
    );

    let out = exec(&world, &["--drop-all-caps"], show);
    let sets = child_caps(&out);
    assert_eq!(sets.len(), 5, "{}", text(&out));
    assert!(
        sets.iter().all(|(_, v)| *v == 0),
        "--drop-all-caps left {sets:?}"
    );
}
