//! `egressc status`: what is applied (policy, hash, time, backend), whether a
//! rollback is pending, and the live counters and set sizes read from the kernel.
//! Exit 0 when egressc's rules are in place, 1 when they are not.

use std::process::ExitCode;

use egressc::apply::{Backend, iptables_cli, nft_cli, state};
use serde::Serialize;

use super::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Status {
    /// egressc's table or chains are in the kernel.
    applied: bool,
    policy: Option<PolicyInfo>,
    pending_rollback_seconds: Option<u64>,
    sets: Vec<SetInfo>,
    rules: Vec<RuleInfo>,
}

#[derive(Serialize)]
struct PolicyInfo {
    path: String,
    sha256: String,
    applied_at: String,
    backend: Backend,
}

#[derive(Serialize)]
struct SetInfo {
    name: String,
    elements: usize,
}

#[derive(Serialize)]
struct RuleInfo {
    chain: String,
    comment: String,
    packets: u64,
    bytes: u64,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let record = state::read_applied().map_err(Failure::operational)?;
    let backend = record.as_ref().map_or(Backend::Nft, |r| r.backend);
    let pending = state::pending_rollbacks().map_err(Failure::operational)?;
    let mut status = Status {
        applied: false,
        policy: record.map(|r| PolicyInfo {
            path: r.policy_path,
            sha256: r.policy_sha256,
            applied_at: r.applied_at,
            backend: r.backend,
        }),
        pending_rollback_seconds: pending
            .first()
            .map(|r| r.deadline.saturating_sub(state::now())),
        sets: Vec::new(),
        rules: Vec::new(),
    };
    match backend {
        Backend::Iptables => read_iptables(&mut status)?,
        _ => read_nft(&mut status)?,
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).expect("status serializes")
        );
    } else {
        print_text(&status);
    }
    Ok(if status.applied {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Whether the table exists, and its counters and set sizes (those through
/// nft's JSON listing; without the nft binary, only whether it exists).
fn read_nft(status: &mut Status) -> Result<(), Failure> {
    #[cfg(feature = "netlink")]
    {
        status.applied = egressc::backend::netlink::table_exists().map_err(Failure::operational)?;
    }
    #[cfg(not(feature = "netlink"))]
    {
        status.applied = nft_cli::exists().map_err(Failure::operational)?;
    }
    if !status.applied {
        return Ok(());
    }
    let listing = match nft_cli::list_json() {
        Ok(listing) => listing,
        Err(egressc::apply::ApplyError::Spawn { .. }) => {
            eprintln!("egressc: nft is not installed: counters and set sizes are not shown");
            return Ok(());
        }
        Err(e) => return Err(Failure::operational(e)),
    };
    for item in listing["nftables"].as_array().into_iter().flatten() {
        if let Some(set) = item.get("set") {
            status.sets.push(SetInfo {
                name: set["name"].as_str().unwrap_or("").to_string(),
                elements: set["elem"].as_array().map_or(0, |e| e.len()),
            });
        }
        if let Some(rule) = item.get("rule") {
            let counter = rule["expr"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|e| e.get("counter"));
            status.rules.push(RuleInfo {
                chain: rule["chain"].as_str().unwrap_or("").to_string(),
                comment: rule["comment"].as_str().unwrap_or("").to_string(),
                packets: counter.and_then(|c| c["packets"].as_u64()).unwrap_or(0),
                bytes: counter.and_then(|c| c["bytes"].as_u64()).unwrap_or(0),
            });
        }
    }
    Ok(())
}

fn read_iptables(status: &mut Status) -> Result<(), Failure> {
    for family in [iptables_cli::Family::V4, iptables_cli::Family::V6] {
        let Some(rules) = iptables_cli::save_counted(family).map_err(Failure::operational)? else {
            continue;
        };
        status.applied = true;
        for rule in rules {
            status.rules.push(RuleInfo {
                chain: format!("{} {}", family.tool(), rule.chain),
                comment: rule.comment,
                packets: rule.packets,
                bytes: rule.bytes,
            });
        }
    }
    Ok(())
}

fn print_text(status: &Status) {
    match (&status.policy, status.applied) {
        (Some(p), true) => println!(
            "applied: {} (sha256 {}) at {} through {}",
            p.path, p.sha256, p.applied_at, p.backend
        ),
        (Some(p), false) => println!(
            "NOT applied: egressc's rules are missing from the kernel (last applied {} at {})",
            p.path, p.applied_at
        ),
        (None, true) => println!(
            "applied: egressc's rules are in the kernel, but there is no record of which policy"
        ),
        (None, false) => println!("not applied"),
    }
    if let Some(seconds) = status.pending_rollback_seconds {
        println!(
            "rollback pending: the previous state comes back in {seconds} s unless `egressc confirm`"
        );
    }
    if !status.sets.is_empty() {
        println!("sets:");
        for s in &status.sets {
            println!("  {:<16} {:>9} elements", s.name, s.elements);
        }
    }
    if !status.rules.is_empty() {
        println!("rules:  {:>12} {:>14}", "packets", "bytes");
        for r in &status.rules {
            println!(
                "  {:<14} {:>12} {:>14}  {}",
                r.chain, r.packets, r.bytes, r.comment
            );
        }
    }
}
