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
//!
//! In DNS proxy mode (`dns.proxy`) the proxy serves on the same runtime,
//! started once the table (with its learned sets) is in place, and stops with
//! the watcher. The two never write the same sets: the watcher keeps the
//! resolved addresses in the static sets, the proxy adds what it answered to
//! the `proxy_*` sets. When the table is loaded again (by the watcher after it
//! vanished, or by an `apply` of this policy) the learned sets start empty;
//! the gate sees the new table's handle at the next answer and writes again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use egressc::apply::learn::PolicyGate;
use egressc::apply::{Backend, refresh};
use egressc::policy::TargetFormat;
use egressc::proxy::{Proxy, ProxyConfig};
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
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Failure::operational)?;
    let verbose = args.verbose;
    let result = runtime.block_on(async move {
        let (stop, shutdown) = watch::shutdown_channel();
        watch::stop_on_signals(stop).map_err(Failure::operational)?;
        // Blocking (DNS through its own small runtime, netlink, files).
        let (watcher, proxy) = tokio::task::spawn_blocking(move || start(&args))
            .await
            .map_err(Failure::operational)??;
        // The proxy binds only now that its sets exist; a bind failure (the
        // address is taken, or not local) stops watch with the rules applied.
        let proxy_task = match proxy {
            None => None,
            Some((config, gate)) => {
                let listen = config.listen;
                let proxy = Proxy::bind(config, gate.clone()).await.map_err(|e| {
                    Failure::operational(anyhow!(
                        "cannot serve DNS on {listen}: {e}; the rules stay applied, and workloads cannot resolve until the proxy runs"
                    ))
                })?;
                eprintln!("DNS proxy serving on {listen} (udp and tcp)");
                let mut stop = shutdown.clone();
                let task = tokio::spawn(proxy.run(async move { watch::stopping(&mut stop).await }));
                Some(task)
            }
        };
        let result = watcher
            .run(shutdown, move |event| {
                if verbose || !event.is_verbose() {
                    eprintln!("{event}");
                }
            })
            .await
            .map_err(Failure::operational);
        if let Some(task) = proxy_task {
            if result.is_ok() {
                // Stopped by a signal: the proxy saw it too and finishes the
                // queries in flight.
                let _ = task.await;
            } else {
                task.abort();
            }
        }
        result
    });
    // A lookup abandoned at shutdown must not hold the exit; the record was
    // written before `run` returned.
    runtime.shutdown_background();
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Raises the soft limit on open files to the hard one: the proxy opens a
/// socket per query in flight (up to 1,024), and running out would also
/// starve watch's own netlink sockets and record writes. Best effort: a
/// failure leaves the limit as it was.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a pointer to a live rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The proxy's configuration and gate, in proxy mode.
type ProxyParts = (ProxyConfig, Arc<PolicyGate>);

/// How long the proxy waits for one pinned resolver before trying the next.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Compiles and applies the policy as `egressc apply` does; the watcher takes
/// over what was recorded. In proxy mode also opens the gate the proxy adds
/// its answers through.
fn start(args: &Args) -> Result<(Watcher, Option<ProxyParts>), Failure> {
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
        resolve: resolve_options(&policy, args.dns_tcp),
    };
    let proxy = match &policy.dns.proxy {
        None => None,
        Some(p) => {
            let gate = PolicyGate::new(
                policy.clone(),
                loaded.ruleset.clone(),
                Duration::from_secs(args.grace),
            )
            .map_err(Failure::operational)?;
            let config = ProxyConfig {
                listen: SocketAddr::new(p.listen, p.port),
                upstreams: policy.dns.upstreams(),
                mark: Some(p.mark),
                refusal: p.refusal,
                upstream_timeout: UPSTREAM_TIMEOUT,
            };
            Some((config, Arc::new(gate)))
        }
    };
    let watcher = Watcher::new(policy, loaded.record, loaded.ruleset, options)
        .map_err(Failure::operational)?;
    Ok((watcher, proxy))
}
