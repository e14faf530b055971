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
    // The reason is the `source`, which error reporters print after this message;
    // repeating it here showed it twice ("cannot read x: No such file…: No such file…").
    #[error("cannot read {path}")]
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
    /// The policy text as read (UTF-8), kept so what was applied can be rebuilt.
    pub text: String,
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
///
/// ```
/// use egressc::policy::{TargetFormat, load_bytes};
///
/// let ok = b"version: 1\nallow:\n  - cidr: 10.0.0.0/8\n    ports: [443]\n";
/// let loaded = load_bytes(ok, "p.yaml", TargetFormat::Nft).unwrap();
/// assert_eq!(loaded.policy.allow.len(), 1);
///
/// // Every problem is reported at file:line:col with a code and a help line.
/// let bad = b"version: 1\nallow:\n  - cidr: 10.0.0.0/8\n    ports: [0]\n";
/// let error = load_bytes(bad, "p.yaml", TargetFormat::Nft).unwrap_err().to_string();
/// assert!(error.starts_with("p.yaml:4:13: error[invalid-port]"), "{error}");
/// ```
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
        text: text.to_string(),
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
    serde_saphyr::from_str::<raw::RawPolicy>(text).map_err(|e| yaml_diagnostic(&e))
}

/// One diagnostic for a YAML error, worded for someone editing a policy (not for
/// a Rust programmer: no type names, no library options, no repeated location).
fn yaml_diagnostic(e: &serde_saphyr::Error) -> Diagnostic {
    use serde_saphyr::Error as E;
    let at = e.location().map(|l| Pos::of(&l)).unwrap_or(Pos::START);
    let mut inner = e;
    while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = inner {
        inner = error;
    }
    const TYPE_HELP: &str = "the value has the wrong type here; the policy reference in README.md shows each key's type";
    let (code, message, help): (&'static str, String, String) = match inner {
        E::DuplicateMappingKey { key, .. } => (
            "duplicate-key",
            match key {
                Some(k) => format!("the key `{}` appears twice in the same mapping", printable(k)),
                None => "a key appears twice in the same mapping".to_string(),
            },
            "a key may appear once per mapping (YAML tools disagree on which copy wins, so egressc refuses both); merge the two, or make a second list entry".to_string(),
        ),
        E::SerdeUnknownField {
            field, expected, ..
        } => {
            // A typo is one or two edits away; anything further is another word.
            let near = |k: &str| edit_distance(k, field) <= if k.len() >= 7 { 2 } else { 1 };
            let guess = expected
                .iter()
                .filter(|k| near(k))
                .min_by_key(|k| edit_distance(k, field));
            (
                "unknown-key",
                match guess {
                    Some(g) => format!("unknown key `{}`; did you mean `{g}`?", printable(field)),
                    None => format!("unknown key `{}`", printable(field)),
                },
                format!(
                    "the keys allowed here are {}; the policy reference is in README.md",
                    expected
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        }
        E::MultipleDocuments { .. } => (
            "multiple-documents",
            "the file holds more than one YAML document".to_string(),
            "a policy is one document: remove the `---` line and merge what follows into the policy above it".to_string(),
        ),
        E::InvalidScalar { ty, .. } => (
            "invalid-type",
            format!("expected {} here", describe_type(ty)),
            TYPE_HELP.to_string(),
        ),
        E::Unexpected { expected, .. } => (
            "invalid-type",
            format!("expected {} here", describe_type(expected)),
            TYPE_HELP.to_string(),
        ),
        E::SerdeInvalidType {
            unexpected,
            expected,
            ..
        }
        | E::SerdeInvalidValue {
            unexpected,
            expected,
            ..
        } => (
            "invalid-type",
            format!(
                "expected {} here, found {}",
                describe_type(expected),
                printable(unexpected)
            ),
            TYPE_HELP.to_string(),
        ),
        E::NullIntoString { .. } => (
            "invalid-type",
            "a value is missing here".to_string(),
            TYPE_HELP.to_string(),
        ),
        E::Message { msg, .. } if msg.contains("untagged enum RawPort") => (
            "invalid-port",
            "a port must be a whole number or a range in quotes".to_string(),
            "write a number (443) or a range in quotes (\"8000-8100\")".to_string(),
        ),
        E::UnknownAnchor { .. } => (
            "yaml-syntax",
            "an alias (`*name`) refers to an anchor (`&name`) that is not defined above it".to_string(),
            "define the anchor before the alias, or write the value out".to_string(),
        ),
        E::Eof { .. } => (
            "yaml-syntax",
            "the file ends in the middle of a value".to_string(),
            "the file is not valid YAML; check for an unclosed bracket or quote".to_string(),
        ),
        other => {
            use serde_saphyr::MessageFormatter;
            let text = serde_saphyr::UserMessageFormatter.format_message(other);
            (
                "yaml-syntax",
                printable(&text),
                "the file is not valid YAML; check indentation, colons and brackets near this point"
                    .to_string(),
            )
        }
    };
    Diagnostic::error(code, at, message).with_help(help)
}

/// serde and serde-saphyr name types the Rust way; a policy author thinks in YAML.
fn describe_type(ty: &str) -> String {
    match ty {
        "i8" | "i16" | "i32" | "i64" | "i128" | "u8" | "u16" | "u32" | "u64" | "u128" | "isize"
        | "usize" => "a whole number".to_string(),
        "bool" | "boolean" | "a boolean" => "`true` or `false`".to_string(),
        "f32" | "f64" => "a number".to_string(),
        "sequence start" | "a sequence" => {
            "a list (`[a, b]`, or lines starting with `- `)".to_string()
        }
        "mapping start" | "a map" => "a mapping (`key: value` lines)".to_string(),
        "a string" | "string" | "string scalar" => "text".to_string(),
        s if s.starts_with("struct ") => "a mapping (`key: value` lines)".to_string(),
        s => printable(s),
    }
}

/// Edit distance counting a swap of two neighbours as one edit (optimal string
/// alignment), for "did you mean" on unknown keys: `prots` is one edit from `ports`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// User text in a message with control characters made visible.
fn printable(s: &str) -> String {
    validate::printable(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_a_swap_as_one_edit() {
        assert_eq!(edit_distance("prots", "ports"), 1);
        assert_eq!(edit_distance("protocl", "protocol"), 1);
        assert_eq!(edit_distance("base", "name"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
