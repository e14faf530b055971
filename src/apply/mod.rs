//! Stage 5: putting a ruleset into the running kernel, checking it, and undoing it.
//!
//! Everything that can fail without touching the kernel (policy, DNS, lowering,
//! rendering) has already happened before this stage runs, so a failure there
//! leaves the old rules in place. Here every change is all-or-nothing:
//!
//! * nft: one `nft -f` transaction replaces `table inet egressc`; the kernel
//!   rejects a bad script whole and the old table stays.
//! * iptables: both families are first dry-run with `--test`; if the IPv6 load
//!   still fails after the IPv4 one succeeded, the IPv4 state is restored from the
//!   snapshot, so the two families never disagree.
//!
//! After loading, the table is read back and compared with the ruleset (rule and
//! element counts per chain and set); a mismatch restores the previous state.
//! [`Snapshot`] is what egressc had before, so `--confirm` can roll back.

pub mod iptables_cli;
pub mod nft_cli;
pub mod state;

use serde::{Deserialize, Serialize};

use crate::backend::BackendError;
use crate::ir::Ruleset;

/// How rules get into the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The rendered nft script through `nft -f`.
    Nft,
    /// The rendered iptables/ip6tables text through `*-restore --noflush`.
    Iptables,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Nft => "nft",
            Backend::Iptables => "iptables",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Tool { command: String, stderr: String },
    #[error("cannot render the rules: {0}")]
    Render(#[from] BackendError),
    #[error("the rules read back from the kernel differ from what was applied: {0}")]
    ReadBack(String),
    #[error("cannot read egressc's table from the kernel: {0}")]
    Listing(String),
    #[error("{0}")]
    State(String),
}

/// egressc's kernel state before a change: enough to put it back exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum Snapshot {
    /// `nft list table inet egressc` as text (nft syntax, counters included), or
    /// `None` when there was no table.
    Nft { table: Option<String> },
    /// egressc's chains per family as iptables-save lines (`-A EGRESSC …`), or
    /// `None` when the family had none.
    Iptables {
        v4: Option<Vec<String>>,
        v6: Option<Vec<String>>,
    },
}

/// Reads egressc's current state for `backend`.
pub fn snapshot(backend: Backend) -> Result<Snapshot, ApplyError> {
    match backend {
        Backend::Nft => Ok(Snapshot::Nft {
            table: nft_cli::list_table()?,
        }),
        Backend::Iptables => Ok(Snapshot::Iptables {
            v4: iptables_cli::save_chains(iptables_cli::Family::V4)?,
            v6: iptables_cli::save_chains(iptables_cli::Family::V6)?,
        }),
    }
}

/// Applies `ruleset`, reads it back, and restores `before` if anything fails
/// after the kernel was touched.
pub fn apply(backend: Backend, ruleset: &Ruleset, before: &Snapshot) -> Result<(), ApplyError> {
    let result = match backend {
        Backend::Nft => nft_cli::apply(ruleset),
        Backend::Iptables => iptables_cli::apply(ruleset, before),
    };
    if let Err(e) = result {
        // nft rejects a bad script whole (nothing changed); for a read-back
        // mismatch or a half-applied iptables load, put the old state back.
        if !matches!(e, ApplyError::Tool { .. } if backend == Backend::Nft) {
            restore(before)?;
        }
        return Err(e);
    }
    Ok(())
}

/// Puts a snapshot back: the old table or chains, or none if there were none.
pub fn restore(snapshot: &Snapshot) -> Result<(), ApplyError> {
    match snapshot {
        Snapshot::Nft { table } => nft_cli::restore(table.as_deref()),
        Snapshot::Iptables { v4, v6 } => {
            iptables_cli::restore(iptables_cli::Family::V4, v4.as_deref())?;
            iptables_cli::restore(iptables_cli::Family::V6, v6.as_deref())
        }
    }
}

/// Removes egressc's table or chains, and nothing else. `Ok(false)` if there was
/// nothing to remove.
pub fn remove(backend: Backend) -> Result<bool, ApplyError> {
    match backend {
        Backend::Nft => nft_cli::remove(),
        Backend::Iptables => {
            let v4 = iptables_cli::remove(iptables_cli::Family::V4)?;
            let v6 = iptables_cli::remove(iptables_cli::Family::V6)?;
            Ok(v4 || v6)
        }
    }
}

/// Runs a command; its stdout, or a `Tool` error with its stderr.
pub(crate) fn run_tool(program: &str, args: &[&str]) -> Result<String, ApplyError> {
    use std::process::{Command, Stdio};
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ApplyError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(ApplyError::Tool {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program args… FILE` where FILE holds `text`, complete and synced before
/// the tool starts.
///
/// Never a pipe: if egressc were killed while writing into the tool's stdin, the
/// tool would read a truncated script, and a script cut right after `delete table
/// inet egressc` is valid nft — it would remove the firewall. A file is either
/// complete or the tool never runs.
pub(crate) fn run_tool_on(program: &str, args: &[&str], text: &str) -> Result<String, ApplyError> {
    use std::io::Write;
    let dir = state::dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| ApplyError::State(format!("cannot create {}: {e}", dir.display())))?;
    let path = dir.join(format!("input-{}-{program}.txt", std::process::id()));
    let written = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&path);
        return Err(ApplyError::State(format!(
            "cannot write {}: {e}",
            path.display()
        )));
    }
    let path_text = path.display().to_string();
    let mut full: Vec<&str> = args.to_vec();
    full.push(&path_text);
    let result = run_tool(program, &full);
    let _ = std::fs::remove_file(&path);
    result
}
