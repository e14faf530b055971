//! `egressc apply`, `egressc confirm`, and the detached worker behind `--confirm`.
//!
//! apply resolves and compiles first (nothing touches the kernel until the new
//! rules exist in full), snapshots egressc's current state, loads the rules, reads
//! them back, and records what it applied. With `--confirm N` it leaves a rollback
//! behind: a detached process (its own session, so closing the terminal does not
//! kill it) restores the snapshot after N seconds unless `egressc confirm` comes.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::anyhow;
use egressc::apply::{self, Backend, Snapshot, state};
use egressc::ir::Ruleset;

use super::{BackendArg, Compiled, Failure, SourceArgs, compile};

#[derive(clap::Args)]
pub struct Args {
    /// The policy file.
    policy: PathBuf,
    /// How to load the rules.
    #[arg(long, value_enum, default_value_t)]
    backend: BackendArg,
    /// Roll back unless `egressc confirm` comes within this many seconds.
    #[arg(long, value_name = "SECONDS")]
    confirm: Option<u64>,
    #[command(flatten)]
    source: SourceArgs,
}

pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let backend = args.backend.backend();
    let compiled = compile(&args.policy, args.backend.target(), &args.source)?;
    let LoadOutcome {
        before,
        previous,
        cancelled,
        ..
    } = load(&args.policy, backend, compiled)?;
    if let Some(seconds) = args.confirm {
        let (snapshot, previous) = match cancelled.into_iter().next() {
            Some(oldest) => (oldest.snapshot, oldest.previous),
            None => (before, previous),
        };
        let token = format!("{}-{}", state::now(), std::process::id());
        state::write_rollback(&state::Rollback {
            token: token.clone(),
            deadline: state::now() + seconds,
            snapshot,
            previous,
        })
        .map_err(Failure::operational)?;
        spawn_rollback_worker(&token)?;
        eprintln!(
            "run `egressc confirm` within {seconds} s to keep these rules; otherwise the previous state comes back"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What [`load`] did.
// `record` and `ruleset` are for watch, which needs netlink.
#[cfg_attr(not(feature = "netlink"), allow(dead_code))]
pub struct LoadOutcome {
    /// The record written: what the kernel holds now.
    pub record: state::Applied,
    /// The ruleset loaded (what `record` describes).
    pub ruleset: Ruleset,
    /// egressc's state before, and the record of it (a rollback target).
    pub before: Snapshot,
    pub previous: Option<state::Applied>,
    /// Pending rollbacks this load superseded, oldest deadline first.
    pub cancelled: Vec<state::Rollback>,
}

/// Loads a compiled policy into the kernel the way `egressc apply` does, for
/// apply and for `egressc watch`'s start: refuses to mix backends with a
/// pending rollback, snapshots egressc's state, loads and reads back
/// (restoring the snapshot on failure), records what it loaded, supersedes
/// pending rollbacks, and prints one line saying what was applied.
pub fn load(path: &Path, backend: Backend, compiled: Compiled) -> Result<LoadOutcome, Failure> {
    let Compiled {
        loaded,
        resolution,
        ruleset,
    } = compiled;
    // An unconfirmed earlier apply: the rollback target stays the state before it.
    let pending = state::pending_rollbacks().map_err(Failure::operational)?;
    if let Some(p) = pending
        .iter()
        .find(|p| state::snapshot_backend(&p.snapshot) != backend)
    {
        return Err(Failure::operational(anyhow!(
            "a rollback for the {} backend is pending; run `egressc confirm` (or wait for the rollback) before applying through another backend",
            state::snapshot_backend(&p.snapshot)
        )));
    }
    // Read once: the snapshot and the rollback both need it.
    let previous = state::read_applied().map_err(Failure::operational)?;
    let before = apply::snapshot(backend, previous.as_ref()).map_err(Failure::operational)?;
    if !before.restorable() {
        // Without a way back, a failed read-back could not be undone either.
        return Err(Failure::operational(anyhow!(
            "table inet egressc exists but egressc has no record of it and nft is not installed to save it; remove it first (`egressc remove`) or install nft"
        )));
    }

    // The record is encoded on a second thread while this one applies: a
    // netlink commit is one sendmsg that keeps one core busy in the kernel
    // (about 110 ms at 100,000 addresses) while the other has nothing to do,
    // and encoding the record takes ~12 ms of it. It is written only once the
    // apply succeeded; its times are those of the start of the commit.
    let record = state::Applied {
        policy_path: std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string(),
        policy_sha256: loaded.policy.source_hash.clone(),
        applied_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        backend,
        seen: state::seen_from(&resolution, state::now()),
        resolution,
        policy_text: loaded.text.clone(),
    };
    let (applied, json) = std::thread::scope(|scope| {
        let json = scope.spawn(|| state::encode_applied(&record));
        let applied = apply::apply(backend, &ruleset, &before);
        let json = json
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (applied, json)
    });
    applied.map_err(Failure::operational)?;
    state::write_applied_encoded(&json).map_err(Failure::operational)?;
    // This apply supersedes pending rollbacks (their worker finds nothing to do).
    let cancelled = state::cancel_rollbacks().map_err(Failure::operational)?;

    let elements: usize = ruleset.sets.iter().map(|s| s.elements.len()).sum();
    eprintln!(
        "applied {} through {backend}: {} rules, {elements} set elements",
        loaded.file,
        ruleset.output.len() + ruleset.deny.len()
    );
    Ok(LoadOutcome {
        record,
        ruleset,
        before,
        previous,
        cancelled,
    })
}

/// Starts `egressc rollback-worker TOKEN` in a new session, detached from this
/// terminal, and does not wait for it.
fn spawn_rollback_worker(token: &str) -> Result<(), Failure> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(Failure::operational)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state::dir().join("rollback.log"))
        .map_err(Failure::operational)?;
    let mut cmd = Command::new(exe);
    cmd.args(["rollback-worker", token])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory of this process.
    // A new session has no controlling terminal, so a hangup does not reach it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    // The worker outlives this process on purpose; init reaps it.
    #[allow(clippy::zombie_processes)]
    cmd.spawn().map_err(Failure::operational)?;
    Ok(())
}

/// `egressc rollback-worker TOKEN` (internal): wait for the deadline, then
/// restore the snapshot unless the rollback was confirmed or superseded.
pub fn rollback_worker(token: &str) -> Result<ExitCode, Failure> {
    let pending = state::pending_rollbacks().map_err(Failure::operational)?;
    let Some(rollback) = pending.into_iter().find(|r| r.token == token) else {
        return Ok(ExitCode::SUCCESS);
    };
    let wait = rollback.deadline.saturating_sub(state::now());
    std::thread::sleep(Duration::from_secs(wait));
    let Some(rollback) = state::claim_rollback(token).map_err(Failure::operational)? else {
        return Ok(ExitCode::SUCCESS); // confirmed or superseded meanwhile
    };
    apply::restore(&rollback.snapshot).map_err(Failure::operational)?;
    state::write_applied(rollback.previous.as_ref()).map_err(Failure::operational)?;
    eprintln!("egressc: not confirmed in time: previous state restored (rollback {token})");
    Ok(ExitCode::SUCCESS)
}

/// `egressc confirm`: keep what the last `apply --confirm` loaded.
pub fn confirm() -> Result<ExitCode, Failure> {
    let cancelled = state::cancel_rollbacks().map_err(Failure::operational)?;
    if cancelled.is_empty() {
        eprintln!(
            "egressc: nothing to confirm: no `apply --confirm` is pending (if one was, its rollback already ran; see `egressc status`)"
        );
        return Ok(ExitCode::from(1));
    }
    eprintln!("confirmed: the applied rules stay");
    Ok(ExitCode::SUCCESS)
}
