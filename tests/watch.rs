//! `egressc watch` as a running daemon against the real kernel, a real unbound
//! whose answer moves (or that goes away), and real TCP traffic between two
//! namespaces (the world of `support::moving`).
//!
//! Nobody runs `egressc refresh` here: every change in what the client can
//! reach comes from the watch process re-resolving on its own. TTLs, floors
//! and grace periods are seconds long so the whole file runs in well under a
//! minute; every wait polls against a deadline, so a daemon that does not
//! react fails the test instead of hanging it.
// `egressc watch` exists only with the netlink backend.
#![cfg(feature = "netlink")]

mod support;

use std::fs::File;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use support::moving::{Monitor, NEW, OLD, World, echoes};

/// `egressc watch` running in the client namespace, its stderr in a file.
struct Watch {
    child: Child,
    log: PathBuf,
}

impl Watch {
    fn start(w: &World, extra: &[&str]) -> Watch {
        let log = w
            .dir
            .path()
            .join(format!("{}.log", support::unique("watch")));
        let mut args = vec!["watch", w.policy.to_str().unwrap(), "-v"];
        args.extend_from_slice(extra);
        let child = w
            .command(&args)
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("start egressc watch");
        let watch = Watch { child, log };
        watch.wait_log("watching 1 host:", Duration::from_secs(10));
        watch
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has a line containing `text`; panics with the log
    /// if it does not come in time.
    fn wait_log(&self, text: &str, within: Duration) {
        let ok = poll(within, || self.log().contains(text));
        assert!(ok, "no `{text}` within {within:?}; log:\n{}", self.log());
    }

    /// How many rounds asked the resolver so far (`-v` round lines).
    fn lookups(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.starts_with("round: ") && !l.starts_with("round: 0 hosts"))
            .count()
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM; the exit status must come within `within`.
    fn terminate(mut self, within: Duration) -> std::process::ExitStatus {
        let pid = self.child.id() as libc::pid_t;
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "watch did not stop within {within:?} of SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // A failed test must not leave the daemon behind (its own child).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls `check` every 100 ms until it holds or `within` has passed.
fn poll(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The record parses as egressc's record and allows exactly `addrs` for the
/// name.
fn assert_record_allows(w: &World, addrs: &[&str]) {
    let record: egressc::apply::state::Applied =
        serde_json::from_slice(&w.record()).expect("the record is whole and valid");
    let host = egressc::policy::model::HostName::parse(&w.name).unwrap();
    let held: Vec<String> = record
        .resolution
        .addresses(&host)
        .unwrap()
        .iter()
        .map(|a| a.addr.to_string())
        .collect();
    assert_eq!(held, addrs, "record");
}

/// The stop: SIGTERM is answered at once with exit 0, and the ruleset and a
/// record that describes it are left in place (fail closed).
fn stop_and_check_left_in_place(w: &World, watch: Watch, allowed: &[&str]) {
    let started = Instant::now();
    let log = watch.log.clone();
    let status = watch.terminate(Duration::from_secs(3));
    let text = std::fs::read_to_string(log).unwrap();
    assert!(status.success(), "{status}; log:\n{text}");
    assert!(text.contains("stopped; the rules stay in place"), "{text}");
    eprintln!("watch stopped {:?} after SIGTERM", started.elapsed());
    let set = w.set("allow_v4_addrs");
    for addr in [OLD, NEW] {
        assert_eq!(set.contains(addr), allowed.contains(&addr), "{set}");
    }
    assert_record_allows(w, allowed);
    // The other commands still read it.
    w.egressc_ok(&["status"]);
}

#[test]
fn watch_follows_a_moving_name_ending_the_old_address_at_its_grace() {
    if !support::kernel_available("watch_follows_a_moving_name_ending_the_old_address_at_its_grace")
    {
        return;
    }
    let t0 = Instant::now();
    // TTL 6, grace 9. The move happens just after a lookup at t; it is seen
    // at t+6; OLD's grace ends at t+9, and the lookup after that is at t+12.
    // So OLD must stop about 3 s after NEW is seen (the grace wake-up), not 6
    // (the next lookup).
    let mut w = World::new("wm", "svc.watch.test", 6);
    // Over TCP: the other tests ask over UDP.
    let watch = Watch::start(&w, &["--grace", "9", "--min-interval", "1", "--dns-tcp"]);
    assert!(w.connects(OLD), "the answered address is allowed");
    assert!(!w.connects(NEW), "an address never answered is dropped");
    let mut held = w.open(OLD);
    assert!(echoes(&mut held));
    let counted = w.allow_counter();
    assert!(counted >= 2, "allow rule counted {counted} packets");

    let monitor = Monitor::start(&w.client, w.dir.path());
    // Move right after a lookup, so no lookup meets unbound restarting.
    let lookups = watch.lookups();
    assert!(
        poll(Duration::from_secs(8), || watch.lookups() > lookups),
        "no lookup within TTL + floor; log:\n{}",
        watch.log()
    );
    w.answer(NEW);
    let moved = Instant::now();
    // Seen within TTL + floor, without anyone running refresh.
    assert!(
        poll(Duration::from_secs(6 + 1 + 1), || w.connects(NEW)),
        "the new address was not allowed within TTL + floor; log:\n{}",
        watch.log()
    );
    let seen_new = Instant::now();
    eprintln!("NEW allowed {:?} after the move", seen_new - moved);
    let text = watch.log();
    assert!(text.contains("svc.watch.test: + 10.88.0.3"), "{text}");
    assert!(
        text.contains("svc.watch.test: ~ 10.88.0.2 (no longer answered; kept for "),
        "{text}"
    );
    assert!(w.connects(OLD), "the old address works during its grace");
    assert!(echoes(&mut held), "the open connection survives the change");

    assert!(
        poll(Duration::from_millis(4500), || !w.connects(OLD)),
        "the old address was still allowed 4.5 s after NEW was seen: not dropped at the end of its grace; log:\n{}",
        watch.log()
    );
    eprintln!("OLD dropped {:?} after NEW was seen", seen_new.elapsed());
    watch.wait_log("svc.watch.test: - 10.88.0.2", Duration::from_secs(1));
    // Dropped by a round that asked nobody: the grace wake-up.
    watch.wait_log(
        "round: 0 hosts asked (0 failed), 0 set elements added, 1 deleted",
        Duration::ZERO,
    );
    let (events, _) = monitor.stop_counting();
    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .all(|e| e.starts_with("add element inet egressc ")
                || e.starts_with("delete element inet egressc ")),
        "only set elements change: {events:#?}"
    );
    assert!(w.connects(NEW));
    assert!(
        echoes(&mut held),
        "an established connection stays after its address is gone"
    );
    let after = w.allow_counter();
    assert!(
        after >= counted + 2,
        "the allow rule's counter went from {counted} to {after}: rules were reloaded"
    );

    stop_and_check_left_in_place(&w, watch, &[NEW]);
    assert!(
        w.connects(NEW) && !w.connects(OLD),
        "the rules stay after stop"
    );
    eprintln!("moving-name test took {:?}", t0.elapsed());
}

#[test]
fn a_resolver_outage_keeps_known_addresses_through_grace_then_fails_closed() {
    if !support::kernel_available(
        "a_resolver_outage_keeps_known_addresses_through_grace_then_fails_closed",
    ) {
        return;
    }
    let t0 = Instant::now();
    let mut w = World::new("wo", "svc.outage.test", 1);
    // A lookup to a killed unbound takes about 9 s to fail (hickory's
    // timeouts and attempts); grace 14 leaves the failure inside the grace.
    let mut watch = Watch::start(&w, &["--grace", "14", "--min-interval", "1"]);
    assert!(w.connects(OLD));
    let counted = w.allow_counter();

    // The resolver goes away. OLD was last seen at most ~1 s before (TTL 1,
    // floor 1), so its grace ends 13 to 14 s from now.
    drop(w.dns.take());
    let outage = Instant::now();
    watch.wait_log("svc.outage.test: lookup failed", Duration::from_secs(13));
    eprintln!("failure logged {:?} into the outage", outage.elapsed());
    assert!(watch.running(), "a resolver outage is not fatal");
    assert!(
        w.connects(OLD),
        "the known address keeps working while the lookups fail, through its grace; log:\n{}",
        watch.log()
    );
    watch.wait_log(
        "svc.outage.test: ~ 10.88.0.2 (lookup failing; kept for",
        Duration::ZERO,
    );

    // A longer outage: the grace ends and the address stops (fail closed).
    assert!(
        poll(Duration::from_secs(8), || !w.connects(OLD)),
        "the address outlived its grace during the outage; log:\n{}",
        watch.log()
    );
    let dropped = outage.elapsed();
    eprintln!("OLD dropped {dropped:?} into the outage");
    assert!(
        dropped >= Duration::from_secs(12),
        "dropped after {dropped:?}: before its grace ended"
    );
    watch.wait_log("svc.outage.test: - 10.88.0.2", Duration::from_secs(1));
    watch.wait_log(
        "svc.outage.test: no address left; its entries allow nothing",
        Duration::from_secs(1),
    );
    assert!(watch.running(), "still running with nothing left to allow");
    assert_record_allows(&w, &[]);
    // `status` (and any command rebuilding the table from the record) copes
    // with a required host that has nothing left.
    w.egressc_ok(&["status"]);

    // The resolver comes back: the name is allowed again without a restart
    // (once the lookup waiting on the dead one has given up).
    w.answer(OLD);
    assert!(
        poll(Duration::from_secs(12), || w.connects(OLD)),
        "the address did not come back; log:\n{}",
        watch.log()
    );
    watch.wait_log("svc.outage.test: resolves again", Duration::from_secs(1));
    assert!(w.allow_counter() > counted, "the counters were reset");

    stop_and_check_left_in_place(&w, watch, &[OLD]);
    eprintln!("outage test took {:?}", t0.elapsed());
}

#[test]
fn a_silent_resolver_ends_the_last_answer_at_its_grace_and_sigterm_stops_at_once() {
    if !support::kernel_available(
        "a_silent_resolver_ends_the_last_answer_at_its_grace_and_sigterm_stops_at_once",
    ) {
        return;
    }
    let w = World::new("ws", "svc.silent.test", 1);
    let mut watch = Watch::start(&w, &["--grace", "3", "--min-interval", "1"]);
    // The resolver's address drops every DNS packet: lookups hang until they
    // time out, about 9 s.
    w.server.exec_ok(
        "nft",
        &[
            "add table inet silence; add chain inet silence input { type filter hook input priority 0; udp dport 53 drop; tcp dport 53 drop; }",
        ],
    );
    let silent = Instant::now();
    assert!(w.connects(OLD));
    // OLD was last seen at most ~1 s before: its grace ends 2 to 3 s from now,
    // long before the hanging lookup gives up.
    assert!(
        poll(Duration::from_secs(5), || !w.connects(OLD)),
        "the last answer outlived its grace while the lookup hung; log:\n{}",
        watch.log()
    );
    eprintln!("OLD dropped {:?} into the silence", silent.elapsed());
    let text = watch.log();
    assert!(
        text.contains("svc.silent.test: its lookup has not answered yet"),
        "{text}"
    );
    assert!(text.contains("svc.silent.test: - 10.88.0.2"), "{text}");
    assert!(
        !text.contains("lookup failed"),
        "the lookup is still hanging: {text}"
    );
    assert!(watch.running());
    // SIGTERM while that lookup hangs: stop at once, record left as written.
    let record = w.record();
    stop_and_check_left_in_place(&w, watch, &[]);
    assert_eq!(w.record(), record, "stopping does not rewrite the record");
}

#[test]
fn a_table_deleted_behind_its_back_is_loaded_again() {
    if !support::kernel_available("a_table_deleted_behind_its_back_is_loaded_again") {
        return;
    }
    let w = World::new("wd", "svc.deleted.test", 1);
    let watch = Watch::start(&w, &["--min-interval", "1"]);
    w.client
        .exec_ok("nft", &["delete", "table", "inet", "egressc"]);
    assert!(w.connects(NEW), "egress is open without the table");
    // The next round (TTL 1, floor 1) finds nothing to change, looks, and
    // loads the table again rather than leave egress open.
    let back = poll(Duration::from_secs(4), || {
        w.client
            .exec("nft", &["list", "table", "inet", "egressc"])
            .status
            .success()
    });
    assert!(
        back,
        "the table was not loaded again; log:\n{}",
        watch.log()
    );
    watch.wait_log(
        "table inet egressc is gone; loaded the whole table again",
        Duration::from_secs(1),
    );
    assert!(
        w.connects(OLD) && !w.connects(NEW),
        "the policy is enforced again"
    );
    stop_and_check_left_in_place(&w, watch, &[OLD]);
}

#[test]
fn watch_carries_on_after_an_apply_of_its_policy_and_stops_when_the_rules_are_removed() {
    if !support::kernel_available(
        "watch_carries_on_after_an_apply_of_its_policy_and_stops_when_the_rules_are_removed",
    ) {
        return;
    }
    let w = World::new("wr", "svc.shared.test", 1);
    let mut watch = Watch::start(&w, &["--min-interval", "1"]);
    // Records hold whole seconds: an apply (or a refresh) within the second
    // of watch's own write records exactly what watch holds. A second later
    // its time differs, so the record really changes.
    std::thread::sleep(Duration::from_millis(1100));
    w.apply();
    watch.wait_log(
        "rewritten by another egressc command for this policy; continuing from it",
        Duration::from_secs(3),
    );
    assert!(watch.running());
    assert!(w.connects(OLD));

    // Removing the rules behind its back: watch stops with an error rather
    // than fight over the table (systemd's Restart= decides what happens next).
    w.egressc_ok(&["remove"]);
    let stopped = poll(Duration::from_secs(3), || !watch.running());
    assert!(stopped, "watch kept running; log:\n{}", watch.log());
    let status = watch.child.wait().unwrap();
    assert_eq!(status.code(), Some(2), "log:\n{}", watch.log());
    assert!(
        watch.log().contains("egressc's rules were removed"),
        "{}",
        watch.log()
    );
    assert!(
        !w.client
            .exec("nft", &["list", "table", "inet", "egressc"])
            .status
            .success(),
        "the removed table was loaded again"
    );
}

#[test]
fn watch_fails_like_apply_when_a_required_host_does_not_resolve_at_start() {
    if !support::kernel_available(
        "watch_fails_like_apply_when_a_required_host_does_not_resolve_at_start",
    ) {
        return;
    }
    let mut w = World::new("wf", "svc.fail.test", 1);
    drop(w.dns.take());
    let out = w.egressc(&["watch", w.policy.to_str().unwrap(), "--min-interval", "1"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("svc.fail.test"), "{text}");
    assert!(
        !w.client
            .exec("nft", &["list", "table", "inet", "egressc"])
            .status
            .success(),
        "nothing was loaded"
    );
    assert!(
        !w.state().join("applied.json").exists(),
        "nothing was recorded"
    );
    assert!(w.connects(OLD), "no firewall was loaded");
}

#[test]
fn watch_rejects_an_invalid_policy_and_bad_intervals_like_apply() {
    let dir = tempfile::tempdir().unwrap();
    let bad = support::write_file(dir.path(), "bad.yaml", "version: 1\nallow: 3\n");
    let out = support::egressc(&["watch", bad.to_str().unwrap()], None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = support::egressc(
        &[
            "watch",
            bad.to_str().unwrap(),
            "--min-interval",
            "60",
            "--max-interval",
            "30",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-interval"));
    let out = support::egressc(
        &["watch", bad.to_str().unwrap(), "--min-interval", "0"],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
}
