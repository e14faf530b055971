//! Stage 5: putting a ruleset into the running kernel, checking it, and undoing it.
//!
//! Everything that can fail without touching the kernel (policy, DNS, lowering,
//! rendering) has already happened before this stage runs, so a failure there
//! leaves the old rules in place. Here every change is all-or-nothing:
//!
//! * netlink (the default): one nf_tables batch, sent with one sendmsg, replaces
//!   `table inet egressc`; the kernel commits it whole or not at all.
//! * nft: one `nft -f` transaction does the same through the nft binary.
//! * iptables: both families are first dry-run with `--test`; if the IPv6 load
//!   still fails after the IPv4 one succeeded, the IPv4 state is restored from the
//!   snapshot, so the two families never disagree.
//!
//! After loading, the table is read back and compared with the ruleset (rule and
//! element counts per chain and set); a mismatch restores the previous state.
//! [`Snapshot`] is what egressc had before, so `--confirm` can roll back.

pub mod iptables_cli;
#[cfg(feature = "netlink")]
pub mod learn;
pub mod nft_cli;
#[cfg(feature = "netlink")]
pub mod refresh;
pub mod state;

use serde::{Deserialize, Serialize};

use crate::backend::BackendError;
use crate::ir::Ruleset;

/// How rules get into the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One nf_tables batch over netlink (no nft binary needed).
    #[cfg(feature = "netlink")]
    Netlink,
    /// The rendered nft script through `nft -f`.
    Nft,
    /// The rendered iptables/ip6tables text through `*-restore --noflush`.
    Iptables,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            #[cfg(feature = "netlink")]
            Backend::Netlink => "netlink",
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
    #[cfg(feature = "netlink")]
    #[error(transparent)]
    Netlink(#[from] crate::backend::netlink::NetlinkError),
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
    /// Whether the table existed and, if so, egressc's record of it (rebuilt and
    /// re-applied over netlink to restore it), or — for a table egressc has no
    /// record of — its `nft list` text when the nft binary is there.
    #[cfg(feature = "netlink")]
    Netlink {
        present: bool,
        previous: Option<Box<state::Applied>>,
        listing: Option<String>,
    },
}

impl Snapshot {
    /// Whether [`restore`] can put this state back.
    pub fn restorable(&self) -> bool {
        match self {
            #[cfg(feature = "netlink")]
            Snapshot::Netlink {
                present,
                previous,
                listing,
            } => !present || previous.is_some() || listing.is_some(),
            _ => true,
        }
    }
}

/// Reads egressc's current state for `backend`. `record` is egressc's record of
/// what it last applied (the caller has read it already).
// Only the netlink snapshot uses the record (nft and iptables list the kernel).
#[cfg_attr(not(feature = "netlink"), allow(unused_variables))]
pub fn snapshot(backend: Backend, record: Option<&state::Applied>) -> Result<Snapshot, ApplyError> {
    match backend {
        #[cfg(feature = "netlink")]
        Backend::Netlink => {
            use crate::backend::netlink;
            let present = netlink::table_exists()?;
            // nft and netlink build the same table, so a record from either fits.
            let previous = record
                .filter(|a| present && a.backend != Backend::Iptables)
                .cloned();
            let listing = if present && previous.is_none() {
                nft_cli::list_table().ok().flatten()
            } else {
                None
            };
            Ok(Snapshot::Netlink {
                present,
                previous: previous.map(Box::new),
                listing,
            })
        }
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
        #[cfg(feature = "netlink")]
        Backend::Netlink => crate::backend::netlink::apply(ruleset)
            .map(|_| ())
            .map_err(ApplyError::from),
        Backend::Nft => nft_cli::apply(ruleset),
        Backend::Iptables => iptables_cli::apply(ruleset),
    };
    if let Err(e) = result {
        if kernel_untouched(&e, backend) {
            return Err(e);
        }
        // A read-back mismatch, a lost acknowledgement or a half-applied
        // iptables load: put the old state back before reporting.
        if let Err(restore_error) = restore(before) {
            return Err(ApplyError::State(format!(
                "{e}; restoring the previous state failed too: {restore_error}"
            )));
        }
        return Err(e);
    }
    Ok(())
}

/// Errors after which the kernel is known to hold exactly what it held before:
/// a transaction the kernel refused whole, or a batch that was never sent.
fn kernel_untouched(error: &ApplyError, backend: Backend) -> bool {
    match error {
        ApplyError::Tool { .. } | ApplyError::Spawn { .. } => backend == Backend::Nft,
        ApplyError::Render(_) => true,
        #[cfg(feature = "netlink")]
        ApplyError::Netlink(e) => {
            use crate::backend::netlink::NetlinkError;
            matches!(e, NetlinkError::Rejected { .. } | NetlinkError::Encode(_))
        }
        _ => false,
    }
}

/// Puts a snapshot back: the old table or chains, or none if there were none.
pub fn restore(snapshot: &Snapshot) -> Result<(), ApplyError> {
    match snapshot {
        #[cfg(feature = "netlink")]
        Snapshot::Netlink {
            present,
            previous,
            listing,
        } => {
            use crate::backend::netlink;
            match (present, previous, listing) {
                (false, _, _) => netlink::remove().map(|_| ()).map_err(ApplyError::from),
                (true, Some(previous), _) => netlink::apply(&previous.ruleset()?)
                    .map(|_| ())
                    .map_err(ApplyError::from),
                (true, None, Some(text)) => nft_cli::restore(Some(text)),
                (true, None, None) => Err(ApplyError::State(
                    "cannot restore the previous table: egressc has no record of it and nft is not installed to save it".into(),
                )),
            }
        }
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
        #[cfg(feature = "netlink")]
        Backend::Netlink => crate::backend::netlink::remove().map_err(ApplyError::from),
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
