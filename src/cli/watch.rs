//! `egressc watch`: apply the policy exactly as `egressc apply` does, then keep
//! its set elements in step with DNS until SIGTERM or SIGINT (see
//! `egressc::watch`).
//!
//! Starting is strict, like apply: a policy that does not load, a required host
//! that does not resolve or a table that cannot be loaded exits with apply's
//! codes (1 invalid, 2 operational) and nothing is touched. Once running,
//! resolver trouble is never fatal. Stopping exits 0 and leaves the rules in
//! place: taking them away would open egress; `egressc remove` does that on
//! purpose.
//!
//! The runtime exists before the policy is applied, so a SIGTERM that arrives
//! while the table is loaded waits for the record to be written, and then stops.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use egressc::apply::{Backend, refresh};
use egressc::policy::TargetFormat;
use egressc::watch::{self, Watcher};

use super::{Failure, SourceArgs, apply, compile, resolve_options};

#[derive(clap::Args)]
pub struct Args {
    /// The policy file.
    policy: PathBuf,
    /// Keep an address that left the answers (or whose host stopped resolving)
    /// for the larger of its TTL and this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = refresh::DEFAULT_GRACE)]
    grace: u64,
    /// Ask no host more often than this, whatever its TTL; retry a failed
    /// lookup after this long.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = watch::DEFAULT_MIN_INTERVAL,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    min_interval: u64,
    /// Ask every host at least this often, whatever its TTL.
    #[arg(long, value_name = "SECONDS", default_value_t = watch::DEFAULT_MAX_INTERVAL)]
    max_interval: u64,
    /// Ask the pinned resolvers over TCP only.
    #[arg(long)]
    dns_tcp: bool,
    /// Also log one line per round (hosts asked, elements changed, next wake-up).
    #[arg(short, long)]
    verbose: bool,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    if args.max_interval < args.min_interval {
        return Err(Failure::operational(anyhow!(
            "--max-interval ({} s) is below --min-interval ({} s)",
            args.max_interval,
            args.min_interval
        )));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Failure::operational)?;
    let verbose = args.verbose;
    let result = runtime.block_on(async move {
        let (stop, shutdown) = watch::shutdown_channel();
        watch::stop_on_signals(stop).map_err(Failure::operational)?;
        // Blocking (DNS through its own small runtime, netlink, files).
        let watcher = tokio::task::spawn_blocking(move || start(&args))
            .await
            .map_err(Failure::operational)??;
        watcher
            .run(shutdown, move |event| {
                if verbose || !event.is_verbose() {
                    eprintln!("{event}");
                }
            })
            .await
            .map_err(Failure::operational)
    });
    // A lookup abandoned at shutdown must not hold the exit; the record was
    // written before `run` returned.
    runtime.shutdown_background();
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Compiles and applies the policy as `egressc apply` does; the watcher takes
/// over what was recorded.
fn start(args: &Args) -> Result<Watcher, Failure> {
    let source = SourceArgs {
        locked: false,
        lock_file: None,
        dns_tcp: args.dns_tcp,
    };
    let compiled = compile(&args.policy, TargetFormat::Nft, &source)?;
    let policy = compiled.loaded.policy.clone();
    let loaded = apply::load(&args.policy, Backend::Netlink, compiled)?;
    let options = watch::Options {
        grace: args.grace,
        min_interval: args.min_interval,
        max_interval: args.max_interval,
        resolve: resolve_options(args.dns_tcp),
    };
    Watcher::new(policy, loaded.record, loaded.ruleset, options).map_err(Failure::operational)
}
