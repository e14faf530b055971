//! What egressc has applied, and what it would roll back to: small files in the
//! state directory (`/run/egressc`, or `$EGRESSC_STATE_DIR`). `/run` is cleared at
//! boot, like the kernel's rules, so the record and the rules live and die together.
//!
//! * `applied.json`: the policy (path, SHA-256, text), when, through which
//!   backend, and the resolution used: enough to rebuild the applied ruleset
//!   exactly (lowering is deterministic) for `diff` and for restoring it.
//! * `rollback-<token>.json`: a pending `--confirm`: the snapshot to restore and
//!   the record to put back. Claiming it is an atomic rename, so a rollback and a
//!   `confirm` can never both win.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ApplyError, Backend, Snapshot};
use crate::policy::model::HostName;
use crate::resolve::{HostAnswer, Resolution};

/// The record of the last apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub policy_path: String,
    pub policy_sha256: String,
    /// When the rules went to the kernel (RFC 3339, seconds): `egressc apply`
    /// takes it as its commit starts.
    pub applied_at: String,
    pub backend: Backend,
    pub resolution: Resolution,
    /// The policy text, so the applied ruleset can be rebuilt exactly (lowering
    /// is deterministic) to restore it without any tool but egressc.
    pub policy_text: String,
    /// When each address of each host was last in an answer, for the grace
    /// period of `egressc refresh`. Absent in records of older versions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub seen: SeenMap,
}

/// The last answer that held an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// Unix seconds.
    pub last_seen: u64,
    /// The TTL that answer gave it.
    pub ttl: u32,
}

/// Per host, per address: when it was last seen.
pub type SeenMap = BTreeMap<HostName, BTreeMap<IpAddr, Seen>>;

/// The addresses of one answer, seen at `now`.
pub fn seen_now(answer: &HostAnswer, now: u64) -> BTreeMap<IpAddr, Seen> {
    answer
        .addresses
        .iter()
        .map(|a| {
            let seen = Seen {
                last_seen: now,
                ttl: a.ttl,
            };
            (a.addr, seen)
        })
        .collect()
}

/// Every address of `resolution`, seen at `now`.
pub fn seen_from(resolution: &Resolution, now: u64) -> SeenMap {
    resolution
        .hosts
        .iter()
        .map(|(host, answer)| (host.clone(), seen_now(answer, now)))
        .collect()
}

impl Applied {
    /// The ruleset this record describes.
    ///
    /// Lowered allowing required hosts without addresses: a record only exists
    /// for what was loaded, and `egressc watch` loads exactly that when a
    /// required host's lookups keep failing past the grace of its addresses
    /// (its entries allow nothing). Rebuilding strictly would make such a
    /// record unreadable for `diff`, `refresh` and rollback.
    pub fn ruleset(&self) -> Result<crate::ir::Ruleset, ApplyError> {
        let rebuild = |e: String| {
            ApplyError::State(format!(
                "cannot rebuild the applied ruleset of {}: {e}",
                self.policy_path
            ))
        };
        let loaded = crate::policy::load_bytes(
            self.policy_text.as_bytes(),
            &self.policy_path,
            crate::policy::TargetFormat::Nft,
        )
        .map_err(|e| rebuild(e.to_string()))?;
        crate::ir::lower::lower_allowing_empty(&loaded.policy, &self.resolution)
            .map_err(|e| rebuild(e.to_string()))
    }
}

/// A pending rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    pub token: String,
    /// Unix seconds after which the snapshot is restored unless confirmed.
    pub deadline: u64,
    pub snapshot: Snapshot,
    /// The record to put back with the snapshot (`None`: nothing was applied).
    pub previous: Option<Applied>,
}

pub fn dir() -> PathBuf {
    std::env::var_os("EGRESSC_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/egressc"))
}

fn state_error(what: &str, path: &Path, e: impl std::fmt::Display) -> ApplyError {
    ApplyError::State(format!("cannot {what} {}: {e}", path.display()))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ApplyError> {
    let parent = path.parent().expect("state files live in a directory");
    std::fs::create_dir_all(parent).map_err(|e| state_error("create", parent, e))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| state_error("write", path, e))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, ApplyError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| state_error("parse", path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(state_error("read", path, e)),
    }
}

pub fn read_applied() -> Result<Option<Applied>, ApplyError> {
    read_json(&dir().join("applied.json"))
}

/// Records an apply (or, with `None`, that nothing is applied).
pub fn write_applied(applied: Option<&Applied>) -> Result<(), ApplyError> {
    let json = dir().join("applied.json");
    match applied {
        Some(a) => write_atomic(&json, &encode_applied(a)),
        None => match std::fs::remove_file(&json) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(state_error("remove", &json, e)),
        },
    }
}

/// A record as [`write_applied`] writes it. Separate, so `egressc apply` can
/// encode it on another thread while the kernel commits.
pub fn encode_applied(applied: &Applied) -> Vec<u8> {
    // Compact: with 100,000 addresses, pretty-printing is measurable in apply.
    serde_json::to_vec(applied).expect("state serializes")
}

/// Writes a record encoded by [`encode_applied`].
pub fn write_applied_encoded(json: &[u8]) -> Result<(), ApplyError> {
    write_atomic(&dir().join("applied.json"), json)
}

fn rollback_path(token: &str) -> PathBuf {
    dir().join(format!("rollback-{token}.json"))
}

pub fn write_rollback(rollback: &Rollback) -> Result<(), ApplyError> {
    let bytes = serde_json::to_vec(rollback).expect("rollback serializes");
    write_atomic(&rollback_path(&rollback.token), &bytes)
}

/// Pending rollbacks, oldest deadline first.
pub fn pending_rollbacks() -> Result<Vec<Rollback>, ApplyError> {
    let dir = dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(state_error("read", &dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("rollback-") && name.ends_with(".json") {
            if let Some(r) = read_json::<Rollback>(&entry.path())? {
                out.push(r);
            }
        }
    }
    out.sort_by_key(|r| r.deadline);
    Ok(out)
}

/// Takes a pending rollback for execution. `None` if it was confirmed or
/// superseded meanwhile (someone else removed or claimed the file).
pub fn claim_rollback(token: &str) -> Result<Option<Rollback>, ApplyError> {
    let from = rollback_path(token);
    let to = dir().join(format!("rolling-{token}.json"));
    match std::fs::rename(&from, &to) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(state_error("claim", &from, e)),
    }
    let rollback = read_json(&to)?;
    let _ = std::fs::remove_file(&to);
    Ok(rollback)
}

/// Cancels every pending rollback (confirm, or a newer apply); returns them.
pub fn cancel_rollbacks() -> Result<Vec<Rollback>, ApplyError> {
    let mut cancelled = Vec::new();
    for r in pending_rollbacks()? {
        if let Some(r) = claim_rollback(&r.token)? {
            cancelled.push(r);
        }
    }
    Ok(cancelled)
}

/// Unix time now, in seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether a snapshot belongs to `backend`.
pub fn snapshot_backend(snapshot: &Snapshot) -> Backend {
    match snapshot {
        Snapshot::Nft { .. } => Backend::Nft,
        Snapshot::Iptables { .. } => Backend::Iptables,
        #[cfg(feature = "netlink")]
        Snapshot::Netlink { .. } => Backend::Netlink,
    }
}
