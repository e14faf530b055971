//! Command-line interface: clap definitions, one file per subcommand, and the
//! mapping from errors to exit codes. `anyhow` is used here and nowhere else.
//!
//! Exit codes (also in README.md): 0 success (explain: allowed); 1 invalid policy
//! (explain: denied); 2 operational failure (DNS, I/O, lock file, rendering).

mod apply;
mod check;
mod diff;
mod exec;
mod explain;
mod lock;
#[cfg(feature = "netlink")]
mod refresh;
mod render;
mod status;
#[cfg(feature = "netlink")]
mod watch;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use egressc::backend::Format;
use egressc::ir::{self, Ruleset};
use egressc::policy::{self, Loaded, PolicyError, TargetFormat};
use egressc::resolve::dns::{self, ResolveOptions, Transport};
use egressc::resolve::{Resolution, lock as lockfile};

#[derive(Parser)]
#[command(
    name = "egressc",
    version,
    about = "Compile a default-deny egress policy into nftables or iptables rules"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a policy; no network. Exit 0 valid, 1 invalid.
    Check(check::Args),
    /// Resolve and compile a policy; print the rules.
    Render(render::Args),
    /// Resolve the policy's hosts now and write the lock file beside it.
    Lock(lock::Args),
    /// Say whether the policy allows a destination, and which entry decides.
    Explain(explain::Args),
    /// Resolve, compile and load the policy into the kernel; read it back.
    Apply(apply::Args),
    /// Keep the rules of a pending `apply --confirm`.
    Confirm,
    /// Re-resolve the applied policy's hosts; update only set elements (netlink).
    #[cfg(feature = "netlink")]
    Refresh(refresh::Args),
    /// Apply, then keep re-resolving each host at its TTL and update only set
    /// elements (netlink) until SIGTERM; the rules stay when it stops.
    #[cfg(feature = "netlink")]
    Watch(watch::Args),
    /// What is applied, pending rollbacks, counters and set sizes.
    Status(status::Args),
    /// What `apply` would change.
    Diff(diff::Args),
    /// Remove egressc's table or chains, and nothing else.
    Remove(RemoveArgs),
    /// Container entrypoint: apply the policy, give up CAP_NET_ADMIN, exec COMMAND.
    Exec(exec::Args),
    /// Internal: the detached worker behind `apply --confirm`.
    #[command(hide = true)]
    RollbackWorker { token: String },
}

#[derive(clap::Args)]
pub struct RemoveArgs {
    /// Which backend's state to remove (default: the one last applied, else the default backend).
    #[arg(long, value_enum)]
    backend: Option<BackendArg>,
}

/// How `apply` loads rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum BackendArg {
    /// one nf_tables batch over netlink (no nft binary needed)
    #[cfg(feature = "netlink")]
    #[default]
    Netlink,
    /// `nft -f` of the rendered script (one atomic transaction)
    #[cfg_attr(not(feature = "netlink"), default)]
    Nft,
    /// iptables-restore and ip6tables-restore of the rendered texts
    Iptables,
}

impl BackendArg {
    fn backend(self) -> egressc::apply::Backend {
        match self {
            #[cfg(feature = "netlink")]
            BackendArg::Netlink => egressc::apply::Backend::Netlink,
            BackendArg::Nft => egressc::apply::Backend::Nft,
            BackendArg::Iptables => egressc::apply::Backend::Iptables,
        }
    }

    fn target(self) -> TargetFormat {
        match self {
            BackendArg::Iptables => TargetFormat::Iptables,
            _ => TargetFormat::Nft,
        }
    }
}

/// Output format names on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum FormatArg {
    /// nft script for `nft -f` (IPv4 and IPv6 in one table)
    #[default]
    Nft,
    /// iptables-restore text (IPv4)
    Iptables,
    /// ip6tables-restore text (IPv6)
    Ip6tables,
}

impl FormatArg {
    fn format(self) -> Format {
        match self {
            FormatArg::Nft => Format::Nft,
            FormatArg::Iptables => Format::Iptables,
            FormatArg::Ip6tables => Format::Ip6tables,
        }
    }

    fn target(self) -> TargetFormat {
        match self {
            FormatArg::Nft => TargetFormat::Nft,
            FormatArg::Iptables | FormatArg::Ip6tables => TargetFormat::Iptables,
        }
    }
}

/// Where addresses come from, shared by render and explain.
#[derive(clap::Args, Debug, Clone)]
pub struct SourceArgs {
    /// Use the lock file instead of DNS; make no DNS query at all.
    #[arg(long)]
    locked: bool,
    /// The lock file (default: the policy path with `.lock` appended).
    #[arg(long, value_name = "PATH")]
    lock_file: Option<PathBuf>,
    /// Ask the pinned resolvers over TCP only.
    #[arg(long)]
    dns_tcp: bool,
}

/// A failure with its exit code.
pub struct Failure {
    code: u8,
    error: anyhow::Error,
}

pub const EXIT_INVALID: u8 = 1;
pub const EXIT_OPERATIONAL: u8 = 2;

impl Failure {
    pub fn operational(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: EXIT_OPERATIONAL,
            error: error.into(),
        }
    }
}

impl From<PolicyError> for Failure {
    fn from(e: PolicyError) -> Self {
        let code = match e {
            PolicyError::Invalid { .. } => EXIT_INVALID,
            PolicyError::Io { .. } => EXIT_OPERATIONAL,
        };
        Failure {
            code,
            error: e.into(),
        }
    }
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => check::run(args),
        Command::Render(args) => render::run(args),
        Command::Lock(args) => lock::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Apply(args) => apply::run(args),
        Command::Confirm => apply::confirm(),
        #[cfg(feature = "netlink")]
        Command::Refresh(args) => refresh::run(args),
        #[cfg(feature = "netlink")]
        Command::Watch(args) => watch::run(args),
        Command::Status(args) => status::run(args),
        Command::Diff(args) => diff::run(args),
        Command::Remove(args) => remove(args),
        Command::Exec(args) => exec::run(args),
        Command::RollbackWorker { token } => apply::rollback_worker(&token),
    };
    match result {
        Ok(code) => code,
        Err(Failure { code, error }) => {
            match error.downcast_ref::<PolicyError>() {
                // Diagnostics are printed as they are, so every line starts with
                // file:line:col (editors and CI annotators jump to it).
                Some(invalid @ PolicyError::Invalid { .. }) => eprintln!("{invalid}"),
                _ => eprintln!("egressc: {}", describe(&error)),
            }
            ExitCode::from(code)
        }
    }
}

/// `egressc remove`: delete egressc's table or chains, cancel pending rollbacks,
/// and forget what was applied.
fn remove(args: RemoveArgs) -> Result<ExitCode, Failure> {
    use egressc::apply::{self, state};
    let backend = match args.backend {
        Some(b) => b.backend(),
        None => state::read_applied()
            .map_err(Failure::operational)?
            .map_or(BackendArg::default().backend(), |a| a.backend),
    };
    state::cancel_rollbacks().map_err(Failure::operational)?;
    let removed = apply::remove(backend).map_err(Failure::operational)?;
    state::write_applied(None).map_err(Failure::operational)?;
    eprintln!(
        "{}",
        if removed {
            format!("removed egressc's {backend} rules")
        } else {
            format!("nothing to remove: egressc has no {backend} rules loaded")
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// The error and its causes, joined by ": ", leaving out a cause whose text is
/// already shown (some libraries repeat their source in their own message).
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Loads and validates a policy, printing its warnings to stderr.
pub fn load_policy(path: &Path, format: TargetFormat) -> Result<Loaded, Failure> {
    let loaded = policy::load(path, format)?;
    eprint!("{}", loaded.render_warnings());
    Ok(loaded)
}

/// Gets the addresses: from the lock file, or through the pinned resolvers.
pub fn resolution(
    path: &Path,
    loaded: &Loaded,
    source: &SourceArgs,
) -> Result<Resolution, Failure> {
    if source.locked {
        let lock = source
            .lock_file
            .clone()
            .unwrap_or_else(|| lockfile::lock_path(path));
        return lockfile::read(&lock, path, &loaded.policy).map_err(Failure::operational);
    }
    resolve_live(loaded, source.dns_tcp).map_err(Failure::operational)
}

/// Resolves the policy's hosts through its pinned resolvers, printing a warning
/// for each optional host that did not resolve.
pub fn resolve_live(loaded: &Loaded, dns_tcp: bool) -> Result<Resolution, dns::ResolveError> {
    let resolved = dns::resolve(&loaded.policy, &resolve_options(&loaded.policy, dns_tcp))?;
    for skipped in &resolved.skipped {
        eprintln!(
            "{}: warning[optional-host-skipped]: optional host {} did not resolve ({}); its entry is left out",
            loaded.file, skipped.host, skipped.reason
        );
    }
    Ok(resolved.resolution)
}

/// How the CLI asks the pinned resolvers: the library's defaults, over TCP
/// only with `--dns-tcp`.
///
/// In DNS proxy mode the queries carry the proxy's mark when this process may
/// set it: egressc's own rules let only marked DNS reach the resolvers. (A
/// process without CAP_NET_ADMIN cannot have applied those rules either, so
/// `egressc lock` on a workstation still works unmarked.)
pub fn resolve_options(policy: &egressc::policy::Policy, dns_tcp: bool) -> ResolveOptions {
    let mark = policy
        .dns
        .proxy
        .as_ref()
        .map(|p| p.mark)
        .filter(|_| egressc::resolve::marked::can_mark());
    ResolveOptions {
        transport: if dns_tcp {
            Transport::Tcp
        } else {
            Transport::Udp
        },
        mark,
        ..ResolveOptions::default()
    }
}

/// The whole pipeline up to the IR, with what it was built from.
pub struct Compiled {
    pub loaded: Loaded,
    pub resolution: Resolution,
    pub ruleset: Ruleset,
}

/// Load, resolve (or read the lock), lower.
pub fn compile(
    path: &Path,
    format: TargetFormat,
    source: &SourceArgs,
) -> Result<Compiled, Failure> {
    let loaded = load_policy(path, format)?;
    let resolution = resolution(path, &loaded, source)?;
    let ruleset = ir::lower::lower(&loaded.policy, &resolution).map_err(Failure::operational)?;
    Ok(Compiled {
        loaded,
        resolution,
        ruleset,
    })
}

/// Writes `bytes` to `path` atomically (temporary file, then rename), so a reader
/// never sees half a ruleset.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".egressc-tmp");
    let tmp = PathBuf::from(tmp);
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Failure::operational(anyhow::anyhow!("cannot write {}: {e}", path.display()))
    })
}
