//! Resolution through the pinned resolvers, against a real unbound on loopback.

mod support;

use std::net::IpAddr;

use egressc::policy::{TargetFormat, load_bytes};
use egressc::resolve::dns::{ResolveOptions, resolve};
use support::{Unbound, free_port, rr};

fn policy_for(port: u16, hosts: &[&str]) -> egressc::policy::Policy {
    let mut yaml = format!("version: 1\ndns:\n  resolvers: [127.0.0.1]\n  port: {port}\nallow:\n");
    for h in hosts {
        yaml.push_str(&format!("  - host: {h}\n    ports: [443]\n"));
    }
    load_bytes(yaml.as_bytes(), "test.yaml", TargetFormat::Nft)
        .expect("valid policy")
        .policy
}

#[test]
fn a_and_aaaa_are_resolved_with_their_ttls_through_a_cname_chain() {
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let port = free_port(lo);
    let _dns = Unbound::start(
        &[lo],
        port,
        &["test"],
        &[
            rr("www.test", 300, "CNAME", "edge.test."),
            rr("edge.test", 30, "A", "192.0.2.1"),
            rr("edge.test", 30, "AAAA", "2001:db8::1"),
        ],
        None,
    );
    let policy = policy_for(port, &["www.test"]);
    let resolved = resolve(&policy, &ResolveOptions::default()).expect("resolves");
    let answer = &resolved.resolution.hosts.values().next().unwrap();
    let addrs: Vec<String> = answer.addresses.iter().map(|a| format!("{}/{}", a.addr, a.ttl)).collect();
    assert_eq!(addrs, ["192.0.2.1/30", "2001:db8::1/30"]);
    assert_eq!(answer.cnames, ["edge.test"]);
}
