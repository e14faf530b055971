//! Every example, rendered in every format from its committed lock file, pinned
//! by an insta snapshot (snapshots/). A change to the generated rules shows up
//! here as a reviewable diff.

mod support;

use support::egressc;

fn render(policy: &str, format: &str) -> String {
    let out = egressc(&["render", policy, "--locked", "--format", format], None);
    assert!(
        out.status.success(),
        "render {policy} {format}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_example_renders_in_every_format_as_snapshotted() {
    let examples = support::examples();
    assert!(examples.len() >= 3, "the examples are missing");
    for policy in examples {
        let name = policy
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let proxy_mode = support::uses_proxy(&policy);
        let policy = policy.to_str().unwrap();
        if proxy_mode {
            // Proxy mode needs nftables: iptables output is refused, with why.
            for format in ["iptables", "ip6tables"] {
                let out = egressc(&["render", policy, "--locked", "--format", format], None);
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert_eq!(out.status.code(), Some(1), "{policy} {format}: {stderr}");
                assert!(out.stdout.is_empty());
                assert!(stderr.contains("proxy-needs-nftables"), "{stderr}");
            }
        }
        let formats: &[&str] = if proxy_mode {
            &["nft"]
        } else {
            &["nft", "iptables", "ip6tables"]
        };
        for &format in formats {
            let text = render(policy, format);
            // Rendering from a lock is byte-stable.
            assert_eq!(
                text,
                render(policy, format),
                "{policy} {format} is not stable"
            );
            insta::with_settings!({snapshot_path => "../snapshots", prepend_module_to_snapshot => false}, {
                insta::assert_snapshot!(format!("example-{name}.{format}"), text);
            });
        }
    }
}
