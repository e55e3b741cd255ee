//! Diagnostics: problems found in configuration, rule and script files, each with its place.
//!
//! `tripline check` and start-up share one code path that collects every problem into a
//! `Vec<Diagnostic>` instead of stopping at the first; each prints as `path:line:col: message`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in one file, at a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub path: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
    pub severity: Severity,
}

/// Whether a problem stops what it is found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Severity {
    /// The file (or setting) cannot be used: `check` exits 1, start-up refuses it.
    #[default]
    Error,
    /// Allowed, but probably not what the admin meant, or a risk they opted into: printed
    /// with `warning:` before the message; `check` still exits 0.
    Warning,
}

impl Diagnostic {
    /// A problem at a line and column.
    pub fn at(path: &Path, line: usize, col: usize, message: impl Into<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            line: line.max(1),
            col: col.max(1),
            message: message.into(),
            severity: Severity::Error,
        }
    }

    /// The same problem as a warning.
    pub fn warning(self) -> Self {
        Self { severity: Severity::Warning, ..self }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// A problem about a whole file (reported at 1:1).
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        Self::at(path, 1, 1, message)
    }

    /// A problem at a byte span of `source` (as TOML parsers report them).
    pub fn span(path: &Path, source: &str, span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        let (line, col) = span.map(|s| line_col(source, s.start)).unwrap_or((1, 1));
        Self::at(path, line, col, message)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        write!(f, "{}:{}:{}: {severity}{}", self.path.display(), self.line, self.col, self.message)
    }
}

/// The 1-based line and column (in characters) of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..floor_char_boundary(source, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// All problems found, printed one per line.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Whether any of the problems is an error (not only warnings).
pub fn any_error(diags: &[Diagnostic]) -> bool {
    diags.iter().any(Diagnostic::is_error)
}

/// The closest of `candidates` to `word`, when it is close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&word.to_ascii_lowercase(), c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_not_bytes() {
        let s = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(s, 0), (1, 1));
        assert_eq!(line_col(s, 6), (2, 1));
        let after_e = s.rfind(" =").unwrap();
        assert_eq!(line_col(s, after_e), (2, 3));
    }

    #[test]
    fn suggestions_pick_the_near_word() {
        let ops = ["equals", "not_equals", "contains", "starts_with"];
        assert_eq!(did_you_mean("equls", ops), Some("equals"));
        assert_eq!(did_you_mean("contians", ops), Some("contains"));
        assert_eq!(did_you_mean("zzz", ops), None);
    }
}
