//! Diagnostics: what the loader and validator say about a policy file.
//!
//! Every problem is reported as `file:line:col: error[code]: message` followed by
//! a `help:` line. Codes are kebab-case and stable: tests and users grep for them.

use std::fmt;

/// A position in the policy file, 1-based, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    pub line: u64,
    pub col: u64,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };

    pub fn new(line: u64, col: u64) -> Self {
        Pos { line, col }
    }

    /// Where serde-saphyr says a value was written. Values that come from an
    /// alias are reported where they are used, which is where the user looks.
    pub fn of(location: &serde_saphyr::Location) -> Self {
        Pos {
            line: location.line().max(1),
            col: location.column().max(1),
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One finding about a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Stable kebab-case identifier, e.g. `invalid-port`.
    pub code: &'static str,
    pub message: String,
    pub pos: Pos,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(code: &'static str, pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            pos,
            help: None,
        }
    }

    pub fn warning(code: &'static str, pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, pos, message)
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Renders the diagnostic as the user sees it, naming `file`.
    pub fn render(&self, file: &str) -> String {
        let mut out = format!(
            "{file}:{}: {}[{}]: {}",
            self.pos, self.severity, self.code, self.message
        );
        if let Some(help) = &self.help {
            out.push_str("\n  help: ");
            out.push_str(help);
        }
        out
    }
}

/// Renders a list of diagnostics, one block per diagnostic, sorted by position
/// so the output reads top to bottom like the file.
pub fn render_all(diagnostics: &[Diagnostic], file: &str) -> String {
    let mut sorted: Vec<&Diagnostic> = diagnostics.iter().collect();
    sorted.sort_by_key(|d| (d.pos, d.severity, d.code));
    let mut out = String::new();
    for d in sorted {
        out.push_str(&d.render(file));
        out.push('\n');
    }
    out
}
