//! Diagnostics: problems found in configuration, rule and script files, each with its place.
//!
//! `tripline check` and start-up share one code path that collects every problem into a
//! `Vec<Diagnostic>` instead of stopping at the first; each prints as `path:line:col: message`.
//! A configuration section's build reports into a [`CheckCtx`].
//!
//! A leaf: this module imports nothing of the crate, so that every other module may report
//! through it.

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

/// What a configuration section's build needs to report its problems: the file, its text, the
/// folder relative paths resolve against, and where the problems go. The build that makes the
/// runtime thing is the code that reports, so `tripline check` and start-up say the same.
pub struct CheckCtx<'a> {
    pub path: &'a Path,
    pub source: &'a str,
    /// The folder relative paths resolve against.
    pub base_dir: &'a Path,
    pub diags: Vec<Diagnostic>,
    /// Problems that stop only what they are found in, and only once it is used: a secret that
    /// is not set in this shell, for the commands that resolve secrets by use. `Some` collects
    /// them here (see [`CheckCtx::defer`]); `None`, the default, makes them errors (`check`,
    /// the daemon).
    pub deferred: Option<Vec<Diagnostic>>,
}

impl<'a> CheckCtx<'a> {
    /// A context that reports every problem as an error.
    pub fn new(path: &'a Path, source: &'a str, base_dir: &'a Path) -> Self {
        CheckCtx { path, source, base_dir, diags: Vec::new(), deferred: None }
    }

    /// Records a problem at a byte span of the file.
    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.diags.push(Diagnostic::span(self.path, self.source, Some(span), message));
    }

    /// Records a warning at a byte span of the file.
    pub fn warning(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.diags.push(Diagnostic::span(self.path, self.source, Some(span), message).warning());
    }

    /// Records a problem that can wait until what it is found in is used: deferred when the
    /// context defers (see [`CheckCtx::deferred`]), an error otherwise.
    pub fn defer(&mut self, span: Range<usize>, message: impl Into<String>) {
        let d = Diagnostic::span(self.path, self.source, Some(span), message);
        match &mut self.deferred {
            Some(deferred) => deferred.push(d),
            None => self.diags.push(d),
        }
    }

    /// How many errors are recorded: a build compares the count before and after its section
    /// to know whether the section holds.
    pub fn errors(&self) -> usize {
        self.diags.iter().filter(|d| d.is_error()).count()
    }

    /// How many problems wait for a use (see [`CheckCtx::deferred`]).
    pub fn deferrals(&self) -> usize {
        self.deferred.as_ref().map_or(0, Vec::len)
    }

    /// Where `[table] key` is written in the file (its value), when it is.
    pub fn key_span(&self, table: &str, key: &str) -> Option<Range<usize>> {
        span_of(self.source, &[table, key])
    }

    /// Records a problem at `[table] key`, or at the file's start when the key is not written.
    pub fn error_at_key(&mut self, table: &str, key: &str, message: impl Into<String>) {
        let span = self.key_span(table, key);
        self.diags.push(Diagnostic::span(self.path, self.source, span, message));
    }

    /// Checks that the number `[table] key = value` is from `lo` to `hi`, at the setting's
    /// place; `why` follows the range in the message (" (a day)").
    #[allow(clippy::too_many_arguments)]
    pub fn in_range<T: PartialOrd + fmt::Display + Copy>(
        &mut self,
        table: &str,
        key: &str,
        value: T,
        lo: T,
        hi: T,
        why: &str,
    ) {
        if value < lo || value > hi {
            self.error_at_key(
                table,
                key,
                format!("[{table}] {key} = {value} is out of range: it must be from {lo} to {hi}{why}"),
            );
        }
    }
}

/// Where the value at `keys` (`["jobs", "sync", "script"]`) is written in a TOML text, when
/// it parses and the value is there.
pub fn span_of(source: &str, keys: &[&str]) -> Option<Range<usize>> {
    let doc = toml_edit::ImDocument::parse(source).ok()?;
    let (first, rest) = keys.split_first()?;
    let mut item = doc.get(first)?;
    for key in rest {
        item = item.get(key)?;
    }
    item.span()
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

    #[test]
    fn spans_of_nested_keys() {
        let s = "[jobs.sync]\nschedule = \"0 * * * *\"\nscript = \"s.rhai\"\n";
        let span = span_of(s, &["jobs", "sync", "script"]).unwrap();
        assert_eq!(&s[span], "\"s.rhai\"");
        assert_eq!(span_of(s, &["jobs", "other", "script"]), None);
        assert_eq!(span_of("not toml [", &["jobs"]), None);
    }
}
