//! The netlink backend against the kernel: every test runs in a fresh network
//! namespace, on a thread that entered it, so the netlink socket lives there.
//!
//! The yardstick is nft itself: after `netlink::apply` the kernel must list
//! table inet egressc exactly as after `nft -f` of the rendered script
//! (`nft -j list table inet egressc`, handles removed).
#![cfg(feature = "netlink")]

mod support;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use egressc::backend::netlink::{self, NetlinkError};
use egressc::ir::{Element, Origin, Ruleset, SetKind};
use egressc::policy::model::{DefaultAction, PortRange};
use support::{Netns, locked_ruleset, write_file};

fn nft_script(ruleset: &Ruleset, dir: &Path, name: &str) -> PathBuf {
    let text = egressc::backend::nft::render(ruleset).expect("renders");
    write_file(dir, name, &text)
}

/// Removes every "handle" key and the metainfo object: what differs between two
/// loads of the same ruleset.
fn strip(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.remove("handle");
            // A large hash set is listed by walking an rhashtable the kernel may
            // still be resizing, which can repeat elements; and hash order means
            // nothing. Compare the elements as a set.
            if let Some(serde_json::Value::Array(elems)) = map.get_mut("elem") {
                elems.sort_by_key(|e| e.to_string());
                elems.dedup();
            }
            map.values_mut().for_each(strip);
        }
        serde_json::Value::Array(items) => {
            items.retain(|i| i.get("metainfo").is_none());
            items.iter_mut().for_each(strip);
        }
        _ => {}
    }
}

fn listing(ns: &Netns) -> serde_json::Value {
    let out = ns.exec_ok("nft", &["-j", "list", "table", "inet", "egressc"]);
    let mut v: serde_json::Value = serde_json::from_str(&out).expect("nft -j output");
    strip(&mut v);
    v
}

fn apply_in(ns: &Netns, ruleset: &Ruleset) -> Result<netlink::Applied, String> {
    let r = ruleset.clone();
    ns.run(move || netlink::apply(&r).map_err(|e| error_chain(&e)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        write!(text, ": {s}").unwrap();
        source = s.source();
    }
    text
}

/// Loads `ruleset` with nft -f and with netlink::apply, in two fresh namespaces,
/// and asserts both list the same.
fn assert_same_as_nft(ruleset: &Ruleset, dir: &Path, label: &str) -> std::time::Duration {
    let by_nft = Netns::new("nlnft");
    let script = nft_script(ruleset, dir, &format!("{label}.nft"));
    by_nft.exec_ok("nft", &["-f", script.to_str().unwrap()]);
    let by_netlink = Netns::new("nlapi");
    let start = Instant::now();
    let applied = apply_in(&by_netlink, ruleset).unwrap_or_else(|e| panic!("{label}: {e}"));
    let took = start.elapsed();
    eprintln!("{label}: {applied:?}");
    let (want, got) = (listing(&by_nft), listing(&by_netlink));
    if want != got {
        let w = serde_json::to_string_pretty(&want).unwrap();
        let g = serde_json::to_string_pretty(&got).unwrap();
        let first = w
            .lines()
            .zip(g.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!(
            "{label}: netlink state differs from nft -f at line {first}:\nnft:     {}\nnetlink: {}\n(nft listing has {} lines, netlink {})",
            w.lines().nth(first).unwrap_or(""),
            g.lines().nth(first).unwrap_or(""),
            w.lines().count(),
            g.lines().count()
        );
    }
    took
}

#[test]
fn every_example_applies_exactly_like_nft_f() {
    if !support::kernel_available("every_example_applies_exactly_like_nft_f") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for policy in support::examples() {
        let mut rs = locked_ruleset(&policy);
        let label = policy
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        assert_same_as_nft(&rs, dir.path(), label);
        // Audit mode: the same with policy accept.
        rs.default = DefaultAction::Audit;
        assert_same_as_nft(&rs, dir.path(), &format!("{label}-audit"));
    }
}

#[test]
fn hundred_thousand_addresses_apply_in_one_batch_like_nft_f() {
    if !support::kernel_available("hundred_thousand_addresses_apply_in_one_batch_like_nft_f") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = support::address_fixture(dir.path(), 100_000, "");
    let rs = locked_ruleset(&policy);
    let elements: usize = rs.sets.iter().map(|s| s.elements.len()).sum();
    assert!(elements >= 100_000, "{elements}");
    let took = assert_same_as_nft(&rs, dir.path(), "big-100k");
    eprintln!("netlink::apply of {elements} elements (with read-back): {took:?}");
}

#[test]
fn reapply_replaces_the_table() {
    if !support::kernel_available("reapply_replaces_the_table") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let policies = support::examples();
    let (a, b) = (locked_ruleset(&policies[0]), locked_ruleset(&policies[1]));
    let ns = Netns::new("nlre");
    apply_in(&ns, &a).unwrap();
    apply_in(&ns, &b).unwrap();
    let after_netlink = listing(&ns);
    let reference = Netns::new("nlref");
    let script = nft_script(&b, dir.path(), "b.nft");
    reference.exec_ok("nft", &["-f", script.to_str().unwrap()]);
    assert_eq!(
        after_netlink,
        listing(&reference),
        "A then B is not exactly B"
    );
}

#[test]
fn foreign_tables_stay_byte_identical_across_apply_reapply_and_remove() {
    if !support::kernel_available(
        "foreign_tables_stay_byte_identical_across_apply_reapply_and_remove",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::new("nlforeign");
    support::add_foreign_nft(&ns, dir.path());
    let before = support::foreign_nft_listing(&ns);
    let policies = support::examples();
    let (a, b) = (locked_ruleset(&policies[0]), locked_ruleset(&policies[1]));

    assert!(!ns.run(|| netlink::table_exists().unwrap()));
    apply_in(&ns, &a).unwrap();
    assert_eq!(before, support::foreign_nft_listing(&ns), "after apply");
    apply_in(&ns, &b).unwrap();
    assert_eq!(before, support::foreign_nft_listing(&ns), "after re-apply");
    assert!(ns.run(|| netlink::table_exists().unwrap()));

    assert!(
        ns.run(|| netlink::remove().unwrap()),
        "remove found no table"
    );
    assert_eq!(before, support::foreign_nft_listing(&ns), "after remove");
    let tables = ns.exec_ok("nft", &["list", "tables"]);
    assert!(!tables.contains("egressc"), "{tables}");
    assert_eq!(tables.lines().count(), 3, "{tables}");
    assert!(
        !ns.run(|| netlink::remove().unwrap()),
        "second remove found a table"
    );
    assert!(!ns.run(|| netlink::table_exists().unwrap()));
}

/// A ruleset whose first interval set gets an element overlapping another: the
/// kernel refuses overlapping intervals.
fn with_overlap(mut rs: Ruleset) -> Ruleset {
    let set = rs
        .sets
        .iter_mut()
        .find(|s| s.kind == SetKind::Networks && !s.elements.is_empty())
        .expect("an interval set with elements");
    let first = set.elements[0].clone();
    let index = rs.entries.len() - 1;
    set.elements.push(Element {
        net: first.net, // same network
        protocol: first.protocol,
        // Overlaps the first element's ports without being equal to them.
        ports: PortRange {
            first: first.ports.first,
            last: first
                .ports
                .last
                .saturating_add(1)
                .max(first.ports.first + 1),
        },
        origins: vec![Origin::Entry(index)],
    });
    rs
}

#[test]
fn rejected_batch_keeps_the_old_ruleset_and_names_the_culprit() {
    if !support::kernel_available("rejected_batch_keeps_the_old_ruleset_and_names_the_culprit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::new("nlreject");
    support::add_foreign_nft(&ns, dir.path());
    let policies = support::examples();
    let ci = policies
        .iter()
        .find(|p| p.to_str().unwrap().contains("ci-runner"))
        .expect("examples/ci-runner");
    let good = locked_ruleset(&policies[0]);
    apply_in(&ns, &good).unwrap();
    let before = ns.exec_ok("nft", &["list", "ruleset"]);

    let bad = with_overlap(locked_ruleset(ci));
    let set_name = bad
        .sets
        .iter()
        .find(|s| s.kind == SetKind::Networks && !s.elements.is_empty())
        .unwrap()
        .name;
    let label = bad.origin_label(Origin::Entry(bad.entries.len() - 1));
    let err = {
        let bad = bad.clone();
        ns.run(move || netlink::apply(&bad).unwrap_err())
    };
    assert!(matches!(err, NetlinkError::Rejected { .. }), "{err:?}");
    let text = error_chain(&err);
    eprintln!("rejected as expected: {text}");
    assert!(
        text.contains(set_name),
        "error does not name the set: {text}"
    );
    assert!(
        text.contains(&label),
        "error does not name the entry {label:?}: {text}"
    );
    assert_eq!(
        before,
        ns.exec_ok("nft", &["list", "ruleset"]),
        "a rejected batch changed the ruleset"
    );
}

/// A hash set is created with a size (room for twice its elements, at least
/// 1,024): the kernel refuses elements beyond it (ENFILE), which an element
/// update must report as a full set that `egressc apply` re-sizes, leaving the
/// set as it was.
#[test]
fn an_update_past_the_declared_size_is_refused_as_a_full_set() {
    if !support::kernel_available("an_update_past_the_declared_size_is_refused_as_a_full_set") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let old = locked_ruleset(&support::address_fixture(dir.path(), 1_000, ""));
    let index = old
        .sets
        .iter()
        .position(|s| s.kind == SetKind::Addresses && s.elements.len() == 1_000)
        .expect("a hash set of 1,000 addresses");
    let size = egressc::backend::set_size(&old.sets[index]).unwrap() as usize;
    assert_eq!(size, 2048);
    let ns = Netns::new("nlfull");
    apply_in(&ns, &old).unwrap();
    let listed = ns.exec_ok(
        "nft",
        &["list", "set", "inet", "egressc", old.sets[index].name],
    );
    assert!(listed.contains(&format!("size {size}")), "{listed}");

    // One element more than the set has room for, in one update.
    let mut new = old.clone();
    let template = new.sets[index].elements[0].clone();
    let set = &mut new.sets[index];
    for n in 0..(size + 1 - 1_000) as u32 {
        let addr = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(172, 16, 0, 0)) + n);
        set.elements.push(Element {
            net: ipnet::IpNet::from(std::net::IpAddr::V4(addr)),
            ..template.clone()
        });
    }
    let err = {
        let (old, new) = (old.clone(), new.clone());
        ns.run(move || netlink::update_elements(&old, &new).unwrap_err())
    };
    assert!(matches!(err, NetlinkError::Rejected { .. }), "{err:?}");
    let text = error_chain(&err);
    eprintln!("refused as expected: {text}");
    let name = old.sets[index].name;
    assert!(
        text.contains(&format!("set {name} is full"))
            && text.contains(&format!("at most {size} elements"))
            && text.contains("egressc apply"),
        "{text}"
    );
    // Nothing was added: the set reads back as before.
    let rs = old.clone();
    ns.run(move || netlink::read_back(&rs))
        .expect("the old set is intact");

    // Exactly as many as the size: accepted.
    new.sets[index].elements.pop();
    let (o, n) = (old.clone(), new.clone());
    let update = ns.run(move || netlink::update_elements(&o, &n)).unwrap();
    assert_eq!(update.added(), size - 1_000);
}

#[test]
fn read_back_notices_a_table_that_differs_from_the_ruleset() {
    if !support::kernel_available("read_back_notices_a_table_that_differs_from_the_ruleset") {
        return;
    }
    let ns = Netns::new("nlreadback");
    let rs = locked_ruleset(&support::examples()[0]);
    apply_in(&ns, &rs).unwrap();
    let again = rs.clone();
    ns.run(move || netlink::read_back(&again)).unwrap();
    // Someone adds an element behind egressc's back.
    let set = rs
        .sets
        .iter()
        .find(|s| s.kind == SetKind::Addresses && s.name.contains("v4"))
        .unwrap()
        .name;
    ns.exec_ok(
        "nft",
        &[
            "add",
            "element",
            "inet",
            "egressc",
            set,
            "{ 192.0.2.250 . tcp . 9 }",
        ],
    );
    let again = rs.clone();
    let err = ns.run(move || netlink::read_back(&again)).unwrap_err();
    assert!(matches!(err, NetlinkError::ReadBack(_)), "{err:?}");
    assert!(err.to_string().contains(set), "{err}");
    // A set declared with another size than the ruleset gives it (as for 600
    // elements): the size is compared before the elements.
    let mut bigger = rs.clone();
    let s = bigger.sets.iter_mut().find(|s| s.name == set).unwrap();
    let e = s.elements[0].clone();
    s.elements.resize(600, e);
    let err = ns.run(move || netlink::read_back(&bigger)).unwrap_err();
    assert!(matches!(err, NetlinkError::ReadBack(_)), "{err:?}");
    assert!(
        err.to_string().contains("size 1024") && err.to_string().contains("2048"),
        "{err}"
    );
    // And a removed rule.
    let mut fewer = rs.clone();
    fewer.deny.pop();
    let err = ns.run(move || netlink::read_back(&fewer)).unwrap_err();
    assert!(matches!(err, NetlinkError::ReadBack(_)), "{err:?}");
}

#[test]
fn read_back_notices_a_missing_or_changed_element_in_a_large_set() {
    if !support::kernel_available("read_back_notices_a_missing_or_changed_element_in_a_large_set") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = support::address_fixture(dir.path(), 20_000, "");
    let rs = locked_ruleset(&policy);
    // Large enough that elements are looked up one by one, not dumped.
    let set = rs
        .sets
        .iter()
        .find(|s| s.elements.len() >= 20_000)
        .expect("a set of 20,000 elements");
    let name = set.name;
    let e = &set.elements[12_345];
    let addr = e.net.addr().to_string();
    let elem = format!("{{ {addr} . {} . {} }}", e.protocol, e.ports);
    let ns = Netns::new("nlbigread");
    let ns_exec = |args: &[&str]| ns.exec_ok(args[0], &args[1..]);
    let nft_elem = |verb: &str, what: &str| {
        ns_exec(&["nft", verb, "element", "inet", "egressc", name, what]);
    };
    apply_in(&ns, &rs).unwrap();
    let read_back = |ns: &Netns| {
        let rs = rs.clone();
        ns.run(move || netlink::read_back(&rs))
    };
    read_back(&ns).expect("the table as applied reads back");
    // The comment the element carries, as nft lists it.
    let listed = ns_exec(&["nft", "get", "element", "inet", "egressc", name, &elem]);
    let comment = listed
        .split("comment \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no comment in {listed}"))
        .to_string();

    // Someone deletes it.
    nft_elem("delete", &elem);
    let err = read_back(&ns).unwrap_err();
    assert!(matches!(err, NetlinkError::ReadBack(_)), "{err:?}");
    let text = err.to_string();
    eprintln!("deleted element: {text}");
    assert!(
        text.contains("missing") && text.contains(&addr) && text.contains(name),
        "{text}"
    );

    // Someone puts it back with another comment.
    let tampered = elem.replace(" }", " comment \"tampered\" }");
    nft_elem("add", &tampered);
    let err = read_back(&ns).unwrap_err();
    assert!(matches!(err, NetlinkError::ReadBack(_)), "{err:?}");
    let text = err.to_string();
    eprintln!("changed comment: {text}");
    assert!(
        text.contains("tampered") && text.contains(&addr) && text.contains(&comment),
        "{text}"
    );

    // Exactly as it was: the read-back passes again.
    nft_elem("delete", &elem);
    nft_elem(
        "add",
        &elem.replace(" }", &format!(" comment \"{comment}\" }}")),
    );
    read_back(&ns).expect("restored element reads back");
}

/// A policy of `n` separate /24 networks (gaps between them, so nothing
/// aggregates), each to ports 8000-8100: one interval (pipapo) set of `n` elements.
fn networks_fixture(dir: &Path, n: usize) -> PathBuf {
    let mut policy = String::from(
        "version: 1\nname: nets\ndefault: deny\ndns:\n  resolvers: [127.0.0.1]\nallow:\n",
    );
    for i in 0..n {
        writeln!(
            policy,
            "  - cidr: 10.{}.{}.0/24\n    ports: [\"8000-8100\"]",
            i / 128,
            (i % 128) * 2
        )
        .unwrap();
    }
    let path = dir.join(format!("nets-{n}.yaml"));
    std::fs::write(&path, &policy).unwrap();
    let lock = format!(
        "{{\"lock_format\":1,\"policy_sha256\":\"{}\",\"resolved_at\":\"2026-01-01T00:00:00Z\",\"resolvers\":[\"127.0.0.1\"],\"port\":53,\"hosts\":{{}}}}\n",
        egressc::policy::sha256_hex(policy.as_bytes())
    );
    std::fs::write(dir.join(format!("nets-{n}.yaml.lock")), lock).unwrap();
    path
}

#[test]
fn read_back_looks_up_every_element_of_a_large_interval_set() {
    if !support::kernel_available("read_back_looks_up_every_element_of_a_large_interval_set") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rs = locked_ruleset(&networks_fixture(dir.path(), 6_000));
    let set = rs
        .sets
        .iter()
        .find(|s| s.kind == SetKind::Networks && s.elements.len() >= 6_000)
        .expect("an interval set of 6,000 elements");
    let name = set.name;
    let e = &set.elements[4_321];
    let elem = format!("{{ {} . {} . {} }}", e.net, e.protocol, e.ports);
    let ns = Netns::new("nlbignets");
    apply_in(&ns, &rs).unwrap();
    let read_back = |ns: &Netns| {
        let rs = rs.clone();
        ns.run(move || netlink::read_back(&rs))
    };
    read_back(&ns).expect("the table as applied reads back");
    ns.exec_ok(
        "nft",
        &["delete", "element", "inet", "egressc", name, &elem],
    );
    let err = read_back(&ns).unwrap_err();
    let text = err.to_string();
    eprintln!("deleted interval: {text}");
    assert!(matches!(err, NetlinkError::ReadBack(_)), "{err:?}");
    assert!(
        text.contains("missing") && text.contains(&e.net.to_string()),
        "{text}"
    );
}

/// Comments go into the kernel as userdata and come back out in `nft list`,
/// which is valid nft text: a comment that slipped past validation (here a
/// ruleset edited after lowering) is refused before anything is sent, and the
/// old ruleset stays as it was.
#[test]
fn comments_outside_the_allowlist_are_refused_before_the_kernel_sees_them() {
    if !support::kernel_available(
        "comments_outside_the_allowlist_are_refused_before_the_kernel_sees_them",
    ) {
        return;
    }
    let ns = Netns::new("nlcomment");
    let good = locked_ruleset(Path::new("examples/home-finance-agent/policy.yaml"));
    apply_in(&ns, &good).expect("the example applies");
    let before = ns.exec_ok("nft", &["list", "ruleset"]);
    for (what, tamper) in [
        (
            "element",
            Box::new(|rs: &mut Ruleset| {
                rs.entries[0].label = "host x\" ; flush ruleset ; \"".into()
            }) as Box<dyn Fn(&mut Ruleset)>,
        ),
        (
            "rule",
            Box::new(|rs: &mut Ruleset| rs.output[0].comment = "$evil".into()),
        ),
    ] {
        let mut bad = good.clone();
        tamper(&mut bad);
        let err = apply_in(&ns, &bad).expect_err("a tampered comment must be refused");
        assert!(err.contains("allowlist"), "{what}: {err}");
        assert_eq!(
            before,
            ns.exec_ok("nft", &["list", "ruleset"]),
            "{what}: the ruleset changed"
        );
    }
}

/// The proxy example's learned set in the kernel: (element, timeout in s, comment).
fn learned(ns: &Netns, set: &str) -> Vec<(String, u64, String)> {
    let out = ns.exec_ok("nft", &["-j", "list", "set", "inet", "egressc", set]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("nft -j output");
    let mut found = Vec::new();
    for item in v["nftables"].as_array().unwrap() {
        let Some(elems) = item["set"]["elem"].as_array() else {
            continue;
        };
        for e in elems {
            let e = &e["elem"];
            let key: Vec<String> = e["val"]["concat"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().map(String::from).unwrap_or(p.to_string()))
                .collect();
            found.push((
                key.join(" . "),
                e["timeout"].as_u64().unwrap(),
                e["comment"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    found.sort();
    found
}

#[test]
fn the_proxy_gate_adds_answers_with_ttl_plus_grace_and_never_shortens_them() {
    if !support::kernel_available(
        "the_proxy_gate_adds_answers_with_ttl_plus_grace_and_never_shortens_them",
    ) {
        return;
    }
    use egressc::apply::learn::PolicyGate;
    use egressc::proxy::Gate;
    use egressc::resolve::ResolvedAddr;
    use std::time::Duration;

    let policy_path = Path::new("examples/proxy-agent/policy.yaml");
    let rs = locked_ruleset(policy_path);
    let policy = egressc::policy::load(policy_path, Default::default())
        .unwrap()
        .policy;
    let ns = Netns::new("gate");
    apply_in(&ns, &rs).expect("applies");
    let (p, r) = (policy.clone(), rs.clone());
    let gate = ns.run(move || PolicyGate::new(p, r, Duration::from_secs(300)).expect("gate opens"));
    let gate = std::sync::Arc::new(gate);

    assert!(gate.allows("raw.githubusercontent.com"));
    assert!(gate.allows("a.b.files.pythonhosted.org"));
    assert!(gate.allows("api.github.com"));
    assert!(
        !gate.allows("githubusercontent.com"),
        "a wildcard is not its apex"
    );
    assert!(!gate.allows("exfil.attacker.example"));

    let addr = |a: &str, ttl| ResolvedAddr {
        addr: a.parse().unwrap(),
        ttl,
    };
    let g = gate.clone();
    let counts = ns.run(move || {
        g.learn_counted(
            "raw.githubusercontent.com",
            &[addr("192.0.2.80", 60), addr("2001:db8:80::1", 60)],
        )
    });
    assert_eq!(counts.unwrap().written, 2);
    let v4 = learned(&ns, "proxy_v4");
    assert_eq!(v4.len(), 1, "{v4:?}");
    assert_eq!(v4[0].0, "192.0.2.80 . tcp . 443");
    assert_eq!(v4[0].1, 360, "timeout = TTL 60 + grace 300");
    assert_eq!(
        v4[0].2,
        "proxy raw.githubusercontent.com: allow[1] host *.githubusercontent.com"
    );
    assert_eq!(learned(&ns, "proxy_v6")[0].0, "2001:db8:80::1 . tcp . 443");
    // The static sets are not touched.
    assert!(
        !ns.exec_ok("nft", &["list", "set", "inet", "egressc", "allow_v4_addrs"])
            .contains("192.0.2.80")
    );

    // A later answer with a smaller TTL (a cache counting down) writes nothing
    // and leaves the kernel's timeout alone; a larger one extends it.
    let g = gate.clone();
    let counts =
        ns.run(move || g.learn_counted("raw.githubusercontent.com", &[addr("192.0.2.80", 10)]));
    assert_eq!(counts.unwrap().written, 0);
    assert_eq!(learned(&ns, "proxy_v4")[0].1, 360);
    let g = gate.clone();
    let counts =
        ns.run(move || g.learn_counted("raw.githubusercontent.com", &[addr("192.0.2.80", 900)]));
    assert_eq!(counts.unwrap().written, 1);
    assert_eq!(learned(&ns, "proxy_v4")[0].1, 1200);

    // After the table is replaced the gate must not trust its memory: while no
    // record says this policy is applied (another policy's apply) it refuses,
    // and once the record is this policy's it writes again on its own.
    apply_in(&ns, &rs).expect("re-applies");
    assert!(learned(&ns, "proxy_v4").is_empty());
    let state = tempfile::tempdir().unwrap();
    // SAFETY: no other test of this binary reads the state directory.
    unsafe { std::env::set_var("EGRESSC_STATE_DIR", state.path()) };
    let g = gate.clone();
    let refused =
        ns.run(move || g.learn_counted("raw.githubusercontent.com", &[addr("192.0.2.80", 60)]));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("no longer the applied one")),
        "{refused:?}"
    );
    assert!(learned(&ns, "proxy_v4").is_empty());
    let lock = Path::new("examples/proxy-agent/policy.yaml.lock");
    let record = egressc::apply::state::Applied {
        policy_path: policy_path.display().to_string(),
        policy_sha256: policy.source_hash.clone(),
        applied_at: "2026-01-01T00:00:00Z".into(),
        backend: egressc::apply::Backend::Netlink,
        resolution: egressc::resolve::lock::read(lock, policy_path, &policy).unwrap(),
        policy_text: std::fs::read_to_string(policy_path).unwrap(),
        seen: Default::default(),
    };
    egressc::apply::state::write_applied(Some(&record)).unwrap();
    let g = gate.clone();
    let counts =
        ns.run(move || g.learn_counted("raw.githubusercontent.com", &[addr("192.0.2.80", 60)]));
    assert_eq!(counts.unwrap().written, 1);
    assert_eq!(learned(&ns, "proxy_v4").len(), 1);

    // An answer bigger than one netlink message (700 addresses, ~80 KiB of
    // elements) is learned whole, in one batch of several messages.
    let many: Vec<ResolvedAddr> = (0..700u32)
        .map(|i| ResolvedAddr {
            addr: std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a63_0000 + i)),
            ttl: 60,
        })
        .collect();
    let g = gate.clone();
    let counts = ns.run(move || g.learn_counted("big.githubusercontent.com", &many));
    assert_eq!(counts.unwrap().written, 700);
    assert_eq!(learned(&ns, "proxy_v4").len(), 701);

    // Without the table, learning fails (the proxy then answers SERVFAIL).
    ns.exec_ok("nft", &["delete", "table", "inet", "egressc"]);
    let g = gate.clone();
    let failed = ns.run(move || g.learn("raw.githubusercontent.com", &[addr("192.0.2.81", 60)]));
    assert!(failed.is_err(), "{failed:?}");
}
