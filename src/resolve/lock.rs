//! Lock files: a [`Resolution`] saved beside the policy as `<policy>.lock`.
//!
//! `egressc lock` writes one; `render --locked` reads it instead of asking DNS, so
//! CI output is reproducible and address churn shows up as a reviewable diff. A
//! lock belongs to exactly one version of the policy (by SHA-256 of its bytes) and
//! must name every host the policy needs.

use std::path::{Path, PathBuf};

use super::{LOCK_FORMAT, Resolution};
use crate::policy::Policy;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "no lock file at {path}\n  help: run `egressc lock {policy}` to resolve the hosts and write it"
    )]
    Missing { path: String, policy: String },
    #[error("cannot read the lock file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the lock file {path} is damaged: {why}\n  help: run `egressc lock` again")]
    Damaged { path: String, why: String },
    #[error(
        "the lock file {path} belongs to another version of the policy (policy sha256 {actual}, lock made for {locked})\n  help: run `egressc lock` again and review the diff"
    )]
    Stale {
        path: String,
        actual: String,
        locked: String,
    },
    #[error(
        "the lock file {path} has no answer for host `{host}`\n  help: run `egressc lock` again"
    )]
    MissingHost { path: String, host: String },
}

/// Where the lock file of `policy_path` lives: beside it, with `.lock` appended.
pub fn lock_path(policy_path: &Path) -> PathBuf {
    let mut name = policy_path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Serializes a resolution as the lock file's bytes: pretty JSON with sorted keys
/// and addresses, ending in a newline, so the same resolution is the same bytes.
pub fn to_bytes(resolution: &Resolution) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(resolution).expect("a Resolution always serializes");
    bytes.push(b'\n');
    bytes
}

/// Writes the lock file atomically (write to a temporary file, then rename), so a
/// crash never leaves a half-written lock.
pub fn write(path: &Path, resolution: &Resolution) -> Result<(), LockError> {
    let io = |source| LockError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, to_bytes(resolution)).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads the lock file at `path` and checks that it belongs to `policy` and
/// covers every host it names.
pub fn read(path: &Path, policy_path: &Path, policy: &Policy) -> Result<Resolution, LockError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            LockError::Missing {
                path: shown.clone(),
                policy: policy_path.display().to_string(),
            }
        } else {
            LockError::Io {
                path: shown.clone(),
                source,
            }
        }
    })?;
    let resolution: Resolution =
        serde_json::from_slice(&bytes).map_err(|e| LockError::Damaged {
            path: shown.clone(),
            why: e.to_string(),
        })?;
    if resolution.lock_format != LOCK_FORMAT {
        return Err(LockError::Damaged {
            path: shown,
            why: format!(
                "lock format {} is not known (this egressc writes {LOCK_FORMAT})",
                resolution.lock_format
            ),
        });
    }
    // The time is copied into the rendered header: anything but a timestamp here
    // means the file was damaged or edited, and must be reported as such rather
    // than surface later as a refusal to render.
    if humantime::parse_rfc3339(&resolution.resolved_at).is_err() {
        return Err(LockError::Damaged {
            path: shown,
            why: format!(
                "resolved_at {:?} is not an RFC 3339 UTC time",
                resolution.resolved_at
            ),
        });
    }
    if resolution.policy_sha256 != policy.source_hash {
        return Err(LockError::Stale {
            path: shown,
            actual: policy.source_hash.clone(),
            locked: resolution.policy_sha256,
        });
    }
    for host in policy.hosts() {
        if !resolution.hosts.contains_key(host) {
            return Err(LockError::MissingHost {
                path: shown,
                host: host.to_string(),
            });
        }
    }
    Ok(resolution)
}
