//! `egressc exec`: the container entrypoint. Apply the policy in this network
//! namespace over netlink, give up the power to change it, then exec the
//! workload in this same process (same PID: signals and the exit status pass
//! through untouched).
//!
//! It fails closed: if any step before the exec fails, the workload never runs,
//! and the exit code names the step (see [`ExecStep`] and README.md).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use egressc::ir::lower;
use egressc::policy::{self, Loaded, PolicyError, TargetFormat};
use egressc::privileges::{self, Drop};
use egressc::resolve::lock as lockfile;

use super::{Failure, SourceArgs, resolve_live};

/// Exit codes of `egressc exec` when it stops before running the workload.
pub enum ExecStep {
    /// 1: the policy is invalid.
    Policy = 1,
    /// 2: resolving the hosts, reading the lock, or another operational failure.
    Resolve = 2,
    /// 3: applying or verifying the firewall failed.
    Firewall = 3,
    /// 4: dropping capabilities or setting no_new_privs failed.
    Capabilities = 4,
    /// 5: switching user failed.
    User = 5,
    /// 126: the command exists but cannot be executed.
    NotExecutable = 126,
    /// 127: the command was not found.
    NotFound = 127,
}

fn fail(step: ExecStep, error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: step as u8,
        error: error.into(),
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// The policy file; without it, the policy YAML is read from $EGRESSC_POLICY
    /// (then --locked needs --lock-file).
    policy: Option<PathBuf>,
    #[command(flatten)]
    source: SourceArgs,
    /// Run the command as this user (name or uid).
    #[arg(long, value_name = "NAME|UID")]
    user: Option<String>,
    /// Drop every capability, not only CAP_NET_ADMIN and CAP_NET_RAW.
    #[arg(long)]
    drop_all_caps: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

fn load(args: &Args) -> Result<Loaded, Failure> {
    let loaded = match &args.policy {
        Some(path) => policy::load(path, TargetFormat::Nft),
        None => match std::env::var("EGRESSC_POLICY") {
            Ok(text) => policy::load_bytes(text.as_bytes(), "$EGRESSC_POLICY", TargetFormat::Nft),
            Err(_) => {
                return Err(fail(
                    ExecStep::Resolve,
                    anyhow!("no policy: give a policy file, or the policy YAML in $EGRESSC_POLICY"),
                ));
            }
        },
    };
    let loaded = loaded.map_err(|e| match e {
        PolicyError::Invalid { .. } => fail(ExecStep::Policy, e),
        PolicyError::Io { .. } => fail(ExecStep::Resolve, e),
    })?;
    eprint!("{}", loaded.render_warnings());
    // exec leaves no process behind to serve DNS, and the workload must not
    // keep the capability the proxy needs: a proxy-mode policy belongs to
    // `egressc watch` (in a pod, a sidecar sharing the network namespace).
    if loaded.policy.dns.proxy.is_some() {
        return Err(fail(
            ExecStep::Policy,
            anyhow!(
                "{}: this policy uses DNS proxy mode (dns.proxy), which `egressc exec` cannot serve\n  help: run `egressc watch` with it in the workload's network namespace (in a pod: a sidecar with NET_ADMIN), and start the workload without egressc exec",
                loaded.file
            ),
        ));
    }
    Ok(loaded)
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let loaded = load(&args)?;
    let resolution = if args.source.locked {
        let lock = match (&args.source.lock_file, &args.policy) {
            (Some(lock), _) => lock.clone(),
            (None, Some(policy)) => lockfile::lock_path(policy),
            (None, None) => {
                return Err(fail(
                    ExecStep::Resolve,
                    anyhow!("--locked with a policy from $EGRESSC_POLICY needs --lock-file"),
                ));
            }
        };
        let shown = args
            .policy
            .clone()
            .unwrap_or_else(|| PathBuf::from("$EGRESSC_POLICY"));
        lockfile::read(&lock, &shown, &loaded.policy).map_err(|e| fail(ExecStep::Resolve, e))?
    } else {
        resolve_live(&loaded, args.source.dns_tcp).map_err(|e| fail(ExecStep::Resolve, e))?
    };
    let ruleset =
        lower::lower(&loaded.policy, &resolution).map_err(|e| fail(ExecStep::Resolve, e))?;
    let user = args
        .user
        .as_deref()
        .map(privileges::lookup_user)
        .transpose()
        .map_err(|e| fail(ExecStep::User, e))?;

    apply_firewall(&ruleset)?;

    let drop = if args.drop_all_caps {
        Drop::All
    } else {
        Drop::Network
    };
    privileges::confine(drop, user.as_ref()).map_err(|e| {
        let step = if e.is_user_switch() {
            ExecStep::User
        } else {
            ExecStep::Capabilities
        };
        fail(step, e)
    })?;

    use std::os::unix::process::CommandExt;
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    // exec only returns on failure.
    let error = std::process::Command::new(program).args(rest).exec();
    let step = match error.kind() {
        std::io::ErrorKind::NotFound => ExecStep::NotFound,
        _ => ExecStep::NotExecutable,
    };
    Err(fail(
        step,
        anyhow!("cannot run {}: {error}", program.to_string_lossy()),
    ))
}

#[cfg(feature = "netlink")]
fn apply_firewall(ruleset: &egressc::ir::Ruleset) -> Result<(), Failure> {
    egressc::backend::netlink::apply(ruleset)
        .map(|_| ())
        .map_err(|e| fail(ExecStep::Firewall, e))
}

#[cfg(not(feature = "netlink"))]
fn apply_firewall(_: &egressc::ir::Ruleset) -> Result<(), Failure> {
    Err(fail(
        ExecStep::Firewall,
        anyhow!("egressc was built without the netlink feature, which exec needs"),
    ))
}
