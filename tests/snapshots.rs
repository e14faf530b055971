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
        let policy = policy.to_str().unwrap();
        for format in ["nft", "iptables", "ip6tables"] {
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
