//! `egressc refresh` against the real kernel, a real unbound whose answers
//! change during the test, and real TCP traffic between two namespaces.
//!
//! The client namespace applies a policy allowing `svc.refresh.test:443`; the
//! server namespace runs unbound (the pinned resolver) and TCP echo servers on
//! both addresses the name points at over the test.

mod support;

use std::time::Duration;

use support::moving::{Monitor, NEW, OLD, RESOLVER, World, echoes, stderr};
use support::write_file;

const NAME: &str = "svc.refresh.test";

/// The world with `svc.refresh.test` at OLD, TTL 1 s.
fn world() -> World {
    World::new("r", NAME, 1)
}

fn refresh(w: &World, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["refresh", w.policy.to_str().unwrap()];
    args.extend_from_slice(extra);
    w.egressc(&args)
}

#[test]
fn refresh_follows_changing_answers_with_grace_and_keeps_flows_and_counters() {
    if !support::kernel_available(
        "refresh_follows_changing_answers_with_grace_and_keeps_flows_and_counters",
    ) {
        return;
    }
    let mut w = world();
    w.apply();
    assert!(w.connects(OLD), "the answered address is allowed");
    assert!(!w.connects(NEW), "an address never answered is dropped");
    let mut held = w.open(OLD);
    assert!(echoes(&mut held));
    for _ in 0..5 {
        assert!(w.connects(OLD));
    }
    let counted = w.allow_counter();
    assert!(counted >= 7, "allow rule counted {counted} packets");

    // Same answer: the addresses are seen again now, the kernel is not touched.
    let monitor = Monitor::start(&w.client, w.dir.path());
    let out = refresh(&w, &["--grace", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing was sent"),
        "{}",
        stderr(&out)
    );
    assert_eq!(monitor.stop(), Vec::<String>::new());

    // The name moves.
    w.answer(NEW);
    let monitor = Monitor::start(&w.client, w.dir.path());
    let out = refresh(&w, &["--grace", "3"]);
    let (events, commits) = monitor.stop_counting();
    let text = stderr(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(commits, 1, "one batch: {events:#?}");
    assert!(text.contains(&format!("{NAME}: + {NEW}")), "{text}");
    assert!(text.contains(&format!("{NAME}: ~ {OLD}")), "{text}");
    // Only set elements changed: no table, chain, set or rule message.
    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .all(|e| e.starts_with("add element inet egressc ")),
        "{events:#?}"
    );
    assert!(w.connects(NEW), "the new address connects at once");
    assert!(w.connects(OLD), "the old address connects during its grace");
    assert!(
        echoes(&mut held),
        "the open connection survives the refresh"
    );
    let after = w.allow_counter();
    assert!(
        after >= counted + 2,
        "the allow rule's counter went from {counted} to {after}: rules were reloaded"
    );
    let record: serde_json::Value = serde_json::from_slice(&w.record()).unwrap();
    let seen = record["seen"][NAME].as_object().expect("seen per address");
    assert!(seen.contains_key(OLD) && seen.contains_key(NEW), "{seen:?}");

    // The grace (3 s, more than the TTL of 1 s) runs out.
    std::thread::sleep(Duration::from_millis(4200));
    let monitor = Monitor::start(&w.client, w.dir.path());
    let out = refresh(&w, &["--grace", "3"]);
    let events = monitor.stop();
    let text = stderr(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("{NAME}: - {OLD}")), "{text}");
    assert!(
        events
            .iter()
            .all(|e| e.starts_with("delete element inet egressc ")),
        "{events:#?}"
    );
    assert!(
        !w.connects(OLD),
        "the old address is dropped after its grace"
    );
    assert!(w.connects(NEW));
    assert!(
        echoes(&mut held),
        "an established connection stays (established flows are accepted first)"
    );
    assert!(w.allow_counter() > after);
    let set = w.set("allow_v4_addrs");
    assert!(set.contains(NEW) && !set.contains(OLD), "{set}");
}

#[test]
fn a_resolver_outage_fails_closed_and_changes_nothing() {
    if !support::kernel_available("a_resolver_outage_fails_closed_and_changes_nothing") {
        return;
    }
    let mut w = world();
    w.apply();
    let set = w.set("allow_v4_addrs");
    let record = w.record();
    assert!(set.contains(OLD), "{set}");
    drop(w.dns.take());
    let out = refresh(&w, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(NAME), "{}", stderr(&out));
    assert_eq!(w.set("allow_v4_addrs"), set, "the elements changed");
    assert_eq!(w.record(), record, "the record changed");
    assert!(w.connects(OLD), "the known address keeps working");
}

#[test]
fn refresh_refuses_a_policy_that_is_not_the_applied_one() {
    if !support::kernel_available("refresh_refuses_a_policy_that_is_not_the_applied_one") {
        return;
    }
    let w = world();
    // Nothing applied yet.
    let out = refresh(&w, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("apply this policy first"));

    w.apply();
    // Stateless (-s): the kernel's own IPv6 router solicitations on the veth
    // tick the neighbour-discovery counter at any time; the rules and elements
    // are what must not change.
    let table = w
        .client
        .exec_ok("nft", &["-s", "list", "table", "inet", "egressc"]);
    let other = write_file(
        w.dir.path(),
        "other.yaml",
        &format!(
            "version: 1\nname: refresh\ndefault: deny\ndns:\n  resolvers: [{RESOLVER}]\nallow:\n  - host: {NAME}\n    ports: [8443]\n"
        ),
    );
    let out = w.egressc(&["refresh", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("apply this policy first"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        w.client
            .exec_ok("nft", &["-s", "list", "table", "inet", "egressc"]),
        table
    );
}

#[test]
fn a_refresh_that_changes_nothing_sends_nothing() {
    if !support::kernel_available("a_refresh_that_changes_nothing_sends_nothing") {
        return;
    }
    let w = world();
    w.apply();
    let set = w.set("allow_v4_addrs");
    let monitor = Monitor::start(&w.client, w.dir.path());
    let out = refresh(&w, &[]);
    let events = monitor.stop();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing was sent"),
        "{}",
        stderr(&out)
    );
    assert_eq!(events, Vec::<String>::new());
    assert_eq!(w.set("allow_v4_addrs"), set);
}

#[test]
fn an_element_whose_entries_change_is_deleted_and_added_in_one_batch() {
    if !support::kernel_available(
        "an_element_whose_entries_change_is_deleted_and_added_in_one_batch",
    ) {
        return;
    }
    let mut w = world();
    // NEW:443 is allowed by a second entry too: once the name points there,
    // the element serves both entries and its comment must say so.
    std::fs::write(
        &w.policy,
        format!(
            "version: 1\nname: refresh\ndefault: deny\ndns:\n  resolvers: [{RESOLVER}]\nallow:\n  - host: {NAME}\n    ports: [443]\n  - cidr: {NEW}\n    ports: [443]\n"
        ),
    )
    .unwrap();
    w.apply();
    let before = w.set("allow_v4_addrs");
    assert!(before.contains("comment \"allow[1] cidr"), "{before}");
    let mut held = w.open(NEW);
    w.answer(NEW);
    let monitor = Monitor::start(&w.client, w.dir.path());
    let out = refresh(&w, &[]);
    let (events, commits) = monitor.stop_counting();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(commits, 1, "{events:#?}");
    let after = w.set("allow_v4_addrs");
    assert!(after.contains("comment \"allow[0,1]\""), "{after}");
    assert!(after.contains(OLD), "{after}");
    let replaced: Vec<&String> = events.iter().filter(|e| e.contains(NEW)).collect();
    assert!(
        replaced.len() == 2
            && replaced[0].starts_with("delete element")
            && replaced[1].starts_with("add element"),
        "{events:#?}"
    );
    assert!(w.connects(NEW) && w.connects(OLD));
    assert!(echoes(&mut held));
}

#[test]
fn a_large_set_is_updated_and_its_changes_read_back_element_by_element() {
    if !support::kernel_available(
        "a_large_set_is_updated_and_its_changes_read_back_element_by_element",
    ) {
        return;
    }
    let mut w = world();
    // 5,000 more single addresses: the hash set is past the size where the
    // read-back dumps it, so refresh looks its changes up one by one.
    let mut text = format!(
        "version: 1\nname: refresh\ndefault: deny\ndns:\n  resolvers: [{RESOLVER}]\nallow:\n  - host: {NAME}\n    ports: [443]\n"
    );
    for i in 0..5_000u32 {
        let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 77, 0, 0)) + i);
        text.push_str(&format!("  - cidr: {ip}\n    ports: [443]\n"));
    }
    std::fs::write(&w.policy, text).unwrap();
    w.apply();
    w.answer(NEW);
    let out = refresh(&w, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 set elements added, 0 deleted"),
        "{}",
        stderr(&out)
    );
    assert!(w.connects(NEW) && w.connects(OLD));
    // OLD was last seen at the apply, with a TTL of 1 s: without grace it goes.
    std::thread::sleep(Duration::from_millis(2100));
    let out = refresh(&w, &["--grace", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("0 set elements added, 1 deleted"),
        "{}",
        stderr(&out)
    );
    assert!(w.connects(NEW) && !w.connects(OLD));
    let set = w.set("allow_v4_addrs");
    assert_eq!(set.matches(" . tcp . 443").count(), 5_001, "{set}");
}
