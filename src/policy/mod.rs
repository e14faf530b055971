//! Stage 1 of the pipeline: read a policy file and check it.
//!
//! `load` → [`raw::RawPolicy`] (serde-saphyr, positions kept, unknown and duplicate
//! keys refused) → [`validate::validate`] → [`model::Policy`]. Nothing here touches
//! the network; `egressc check` stops after this stage.

pub mod diag;
pub mod model;
pub mod raw;
pub mod validate;

use std::path::Path;

use sha2::{Digest, Sha256};

pub use diag::{Diagnostic, Pos};
pub use model::Policy;
pub use validate::{TargetFormat, Validated};

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid policy; the diagnostics say why.
    #[error("{}", diag::render_all(.diagnostics, .file).trim_end())]
    Invalid {
        file: String,
        diagnostics: Vec<Diagnostic>,
    },
}

/// A policy read from a file, validated, with its warnings.
#[derive(Debug)]
pub struct Loaded {
    /// The file name used in messages.
    pub file: String,
    pub policy: Policy,
    pub warnings: Vec<Diagnostic>,
}

impl Loaded {
    pub fn render_warnings(&self) -> String {
        diag::render_all(&self.warnings, &self.file)
    }
}

/// Reads and validates the policy at `path`.
pub fn load(path: &Path, format: TargetFormat) -> Result<Loaded, PolicyError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| PolicyError::Io {
        path: file.clone(),
        source,
    })?;
    load_bytes(&bytes, &file, format)
}

/// Validates policy text; `file` is the name used in diagnostics.
pub fn load_bytes(bytes: &[u8], file: &str, format: TargetFormat) -> Result<Loaded, PolicyError> {
    let invalid = |diagnostics: Vec<Diagnostic>| PolicyError::Invalid {
        file: file.to_string(),
        diagnostics,
    };
    let source_hash = sha256_hex(bytes);
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count() as u64
                + 1;
            return Err(invalid(vec![
                Diagnostic::error(
                    "not-utf8",
                    Pos::new(line, 1),
                    "the policy file is not UTF-8 text",
                )
                .with_help("save the policy as UTF-8"),
            ]));
        }
    };
    let raw: raw::RawPolicy = parse_yaml(text).map_err(|d| invalid(vec![d]))?;
    let Validated { policy, warnings } =
        validate::validate(raw, source_hash, format).map_err(invalid)?;
    Ok(Loaded {
        file: file.to_string(),
        policy,
        warnings,
    })
}

/// Hex SHA-256, used to tie lock files to the policy bytes they were made from.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Parses YAML into the raw structs, turning serde-saphyr's error into one diagnostic.
fn parse_yaml(text: &str) -> Result<raw::RawPolicy, Diagnostic> {
    if text.trim().is_empty() {
        // serde-saphyr reads an empty document as "no keys"; the validator reports it.
        return Ok(raw::RawPolicy::default());
    }
    serde_saphyr::from_str::<raw::RawPolicy>(text).map_err(|e| {
        let at = e.location().map(|l| Pos::of(&l)).unwrap_or(Pos::START);
        let message = saphyr_message(&e);
        let (code, help) = classify_yaml_error(&message);
        Diagnostic::error(code, at, message).with_help(help)
    })
}

/// serde-saphyr's one-line message without its `error: line N column M:` lead-in.
fn saphyr_message(e: &serde_saphyr::Error) -> String {
    let full = e.without_snippet().to_string();
    let first = full.lines().next().unwrap_or("").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match first.split_once(": ") {
        Some((lead, rest)) if lead.starts_with("line ") => rest.to_string(),
        _ => first.to_string(),
    }
}

fn classify_yaml_error(message: &str) -> (&'static str, &'static str) {
    if message.contains("duplicate mapping key") {
        (
            "duplicate-key",
            "a key may appear once per mapping; merge the two, or make a second list entry",
        )
    } else if message.contains("unknown field") {
        (
            "unknown-key",
            "check the spelling; the policy reference is in README.md",
        )
    } else if message.contains("invalid")
        || message.contains("expected")
        || message.contains("did not match")
    {
        (
            "invalid-type",
            "the value has the wrong type here; the policy reference in README.md shows each key's type",
        )
    } else {
        (
            "yaml-syntax",
            "the file is not valid YAML; check indentation, colons and brackets near this point",
        )
    }
}
