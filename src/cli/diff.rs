//! `egressc diff`: what `apply` would change, against what egressc last applied —
//! the rules, and the addresses added and removed per host. Exit 0 when nothing
//! would change, 1 when something would (like diff(1)), 2 on failure.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use egressc::apply::state;
use egressc::policy::TargetFormat;

use super::{Compiled, Failure, SourceArgs, compile};

#[derive(clap::Args)]
pub struct Args {
    /// The policy file.
    policy: PathBuf,
    #[command(flatten)]
    source: SourceArgs,
}

/// The rule lines of an nft script (chain bodies, not set elements or headers).
fn rule_lines(script: &str) -> Vec<String> {
    let mut in_chain = false;
    let mut rules = Vec::new();
    for line in script.lines() {
        let t = line.trim();
        if t.starts_with("chain ") {
            in_chain = true;
            rules.push(t.to_string());
        } else if in_chain && t == "}" {
            in_chain = false;
        } else if in_chain && !t.is_empty() {
            rules.push(format!("  {t}"));
        }
    }
    rules
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let Compiled {
        resolution: new_resolution,
        ruleset,
        ..
    } = compile(&args.policy, TargetFormat::Nft, &args.source)?;
    let new_script = egressc::backend::nft::render(&ruleset).map_err(Failure::operational)?;
    let old = state::read_applied().map_err(Failure::operational)?;
    // The applied ruleset, rebuilt from the record and rendered the same way.
    let old_script = match &old {
        Some(record) => {
            let old_ruleset = record.ruleset().map_err(Failure::operational)?;
            egressc::backend::nft::render(&old_ruleset).map_err(Failure::operational)?
        }
        None => String::new(),
    };
    if old.is_none() {
        println!("nothing is applied: apply would load everything below");
    }

    let mut changed = false;
    let (old_rules, new_rules) = (rule_lines(&old_script), rule_lines(&new_script));
    let (old_set, new_set): (BTreeSet<&String>, BTreeSet<&String>) =
        (old_rules.iter().collect(), new_rules.iter().collect());
    let removed: Vec<&String> = old_rules.iter().filter(|r| !new_set.contains(r)).collect();
    let added: Vec<&String> = new_rules.iter().filter(|r| !old_set.contains(r)).collect();
    if !removed.is_empty() || !added.is_empty() || old_rules != new_rules {
        changed = true;
        println!("rules:");
        for r in &removed {
            println!("- {r}");
        }
        for r in &added {
            println!("+ {r}");
        }
        if removed.is_empty() && added.is_empty() {
            println!("  (same rules, new order)");
        }
    }

    let old_hosts = old.as_ref().map(|o| &o.resolution.hosts);
    let mut names: BTreeSet<&egressc::policy::model::HostName> =
        new_resolution.hosts.keys().collect();
    if let Some(h) = old_hosts {
        names.extend(h.keys());
    }
    let mut printed_header = false;
    for name in names {
        let addrs = |hosts: Option<
            &std::collections::BTreeMap<_, egressc::resolve::HostAnswer>,
        >|
         -> BTreeSet<IpAddr> {
            hosts
                .and_then(|h| h.get(name))
                .map(|a| a.addresses.iter().map(|a| a.addr).collect())
                .unwrap_or_default()
        };
        let (before, after) = (addrs(old_hosts), addrs(Some(&new_resolution.hosts)));
        if before == after {
            continue;
        }
        changed = true;
        if !printed_header {
            println!("addresses:");
            printed_header = true;
        }
        println!("  {name}");
        for a in before.difference(&after) {
            println!("  - {a}");
        }
        for a in after.difference(&before) {
            println!("  + {a}");
        }
    }
    if !changed {
        println!("no changes");
    }
    Ok(if changed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
