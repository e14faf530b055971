//! `egressc refresh`: re-resolve the applied policy's hosts and update only the
//! set elements, in one netlink batch (see `egressc::apply::refresh`).
//!
//! Refuses (exit 2) unless this very policy is what is applied, through
//! netlink or nft (they build the same table); a required host that does not
//! resolve stops it before the kernel is touched. The record is rewritten only
//! after the kernel committed the change and the changed sets read back right.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use egressc::apply::{Backend, refresh, state};
use egressc::policy::TargetFormat;

use super::{Failure, load_policy, resolve_live};

#[derive(clap::Args)]
pub struct Args {
    /// The policy file (the one that is applied).
    policy: PathBuf,
    /// Keep an address that left the answers for the larger of its TTL and this
    /// many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = refresh::DEFAULT_GRACE)]
    grace: u64,
    /// Ask the pinned resolvers over TCP only.
    #[arg(long)]
    dns_tcp: bool,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let loaded = load_policy(&args.policy, TargetFormat::Nft)?;
    let Some(previous) = state::read_applied().map_err(Failure::operational)? else {
        return Err(Failure::operational(anyhow!(
            "nothing is applied; apply this policy first (`egressc apply {}`)",
            args.policy.display()
        )));
    };
    if previous.policy_sha256 != loaded.policy.source_hash {
        return Err(Failure::operational(anyhow!(
            "the applied policy ({}) is not {}; apply this policy first (`egressc apply {}`)",
            previous.policy_path,
            args.policy.display(),
            args.policy.display()
        )));
    }
    if previous.backend == Backend::Iptables {
        return Err(Failure::operational(anyhow!(
            "the policy was applied through iptables; refresh updates nftables sets only (apply it through netlink)"
        )));
    }
    if !state::pending_rollbacks()
        .map_err(Failure::operational)?
        .is_empty()
    {
        return Err(Failure::operational(anyhow!(
            "an `apply --confirm` is pending; run `egressc confirm` (or wait for the rollback) before refreshing"
        )));
    }

    // Fails closed: a required host that does not resolve stops here.
    let fresh = resolve_live(&loaded, args.dns_tcp).map_err(Failure::operational)?;
    let now = state::now();
    let done = refresh::refresh(&previous, &loaded.policy, &fresh, now, args.grace)
        .map_err(Failure::operational)?;
    state::write_applied(Some(&done.record)).map_err(Failure::operational)?;

    for change in &done.changes {
        for addr in &change.added {
            eprintln!("{}: + {addr}", change.host);
        }
        for addr in &change.removed {
            eprintln!("{}: - {addr}", change.host);
        }
        for (addr, until) in &change.in_grace {
            eprintln!(
                "{}: ~ {addr} (no longer answered; kept for {} s more)",
                change.host,
                until.saturating_sub(now)
            );
        }
    }
    let update = &done.update;
    if update.messages == 0 {
        eprintln!(
            "refreshed {}: no set element changed; nothing was sent",
            loaded.file
        );
    } else {
        eprintln!(
            "refreshed {}: {} set elements added, {} deleted ({} messages, {} bytes in one batch; rules and counters untouched)",
            loaded.file,
            update.added(),
            update.deleted(),
            update.messages,
            update.bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}
