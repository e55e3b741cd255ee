//! Secrets: passwords, keys and tokens as a type that never prints its value.
//!
//! Configuration names a secret as text with `${VAR}` (an environment variable) or
//! `${file:/path}` (a file's contents, trailing newline removed, as Docker and Kubernetes
//! mount them). The resolved value lives in [`Secret`], whose `Debug` and `Display` print
//! `**REDACTED**`; it is exposed only where a header or a bind is built. Every resolved value
//! is also remembered by [`redact`], which scrubs it from any text that leaves the process
//! (run errors, log lines) as a second line of defence.
//!
//! A leaf but for one import: a section's build resolves its secrets through
//! [`SecretRef::check`], which reports into `diag`'s [`CheckCtx`]. The edge points from here to
//! `diag` and never back, so that diagnostics know nothing of secrets; whether a check defers
//! secrets is said in `diag`'s own words ([`CheckCtx::deferred`]: problems that wait for a use).

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, RwLock};

use serde::Deserialize;

use crate::diag::CheckCtx;

/// Whether loading a configuration resolves its `${...}` secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Secrets {
    /// Every secret must resolve: an unset variable is a problem (`check`, the daemon).
    #[default]
    Resolve,
    /// Secrets are resolved by what uses them, when it does (`fire`, `test`, `replay`, ...):
    /// a connection whose password is not set fails the runs that use it, and nothing else.
    /// A reference that is not written right is still a problem.
    Defer,
}

/// A resolved secret value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a value and registers it for redaction.
    pub fn new(value: impl Into<String>) -> Self {
        let value: String = value.into();
        register(&value);
        Self(value.into())
    }

    /// The value, for the one place that builds a header or a bind.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("**REDACTED**")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("**REDACTED**")
    }
}

/// A secret as written in the configuration, before `${...}` references are resolved.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct SecretRef(pub toml::Spanned<String>);

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The template may be a literal password; never print it.
        f.write_str("SecretRef(**REDACTED**)")
    }
}

/// Why a secret could not be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    UnsetVariable(String),
    #[error("secret file {0} cannot be read: {1}")]
    File(String, String),
    #[error("unterminated `${{` in a secret reference")]
    Unterminated,
}

impl SecretRef {
    /// Resolves the references with the process environment.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        resolve_with(self.0.get_ref(), |name| std::env::var(name).ok()).map(Secret::new)
    }

    /// The byte span of the value in its file.
    pub fn span(&self) -> std::ops::Range<usize> {
        self.0.span()
    }

    /// Whether the value references anything (`${...}`), rather than being the secret itself.
    pub fn is_template(&self) -> bool {
        self.0.get_ref().contains("${")
    }

    /// The secret, for a section's build; `what` names it in the problem when it cannot be
    /// had. A reference that is not written right is an error. One that does not resolve here
    /// (an unset variable, an unreadable file) is an error too, unless the check defers such
    /// problems to the use of what needs the secret ([`CheckCtx::deferred`]).
    pub fn check(&self, ctx: &mut CheckCtx, what: &str) -> Option<Secret> {
        match self.resolve() {
            Ok(s) => Some(s),
            Err(e @ SecretError::Unterminated) => {
                ctx.error(self.span(), format!("{what}: {e}"));
                None
            }
            Err(e) => {
                ctx.defer(self.span(), format!("{what}: {e}"));
                None
            }
        }
    }

    /// Like [`SecretRef::check`], for a secret that is needed at once whatever the check
    /// defers: every problem is an error.
    pub fn require(&self, ctx: &mut CheckCtx, what: &str) -> Option<Secret> {
        match self.resolve() {
            Ok(s) => Some(s),
            Err(e) => {
                ctx.error(self.span(), format!("{what}: {e}"));
                None
            }
        }
    }

    /// Checks only how the references are written, resolving nothing (a secret of something
    /// switched off).
    pub fn check_syntax(&self, ctx: &mut CheckCtx, what: &str) {
        if let Err(e) = syntax(self.0.get_ref()) {
            ctx.error(self.span(), format!("{what}: {e}"));
        }
    }
}

/// Whether every `${` of `template` is closed.
fn syntax(template: &str) -> Result<(), SecretError> {
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        let end = rest[start + 2..].find('}').ok_or(SecretError::Unterminated)?;
        rest = &rest[start + 2 + end + 1..];
    }
    Ok(())
}

/// Expands `${VAR}` and `${file:PATH}` in `template`, looking variables up with `lookup`.
pub fn resolve_with(template: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, SecretError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(SecretError::Unterminated)?;
        let name = &after[..end];
        if let Some(path) = name.strip_prefix("file:") {
            let text = std::fs::read_to_string(path).map_err(|e| SecretError::File(path.to_string(), e.to_string()))?;
            out.push_str(text.trim_end_matches(['\r', '\n']));
        } else {
            out.push_str(&lookup(name).ok_or_else(|| SecretError::UnsetVariable(name.to_string()))?);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

static KNOWN: RwLock<Vec<Arc<str>>> = RwLock::new(Vec::new());

/// Shorter values are not redacted: replacing every "a" in a log would help nobody, and a
/// secret of three characters is no secret.
const MIN_REDACTED_LEN: usize = 4;

fn register(value: &str) {
    if value.len() < MIN_REDACTED_LEN {
        return;
    }
    let mut known = KNOWN.write().unwrap_or_else(|e| e.into_inner());
    // The value as a JSON string holds it (`TRIPLINE_LOG_FORMAT=json`, `--json` output): a
    // secret with a quote, a backslash or a control character is escaped there, so that
    // spelling is scrubbed too.
    let escaped = serde_json::to_string(value).ok().map(|q| q[1..q.len() - 1].to_string());
    for v in std::iter::once(value.to_string()).chain(escaped.filter(|e| e != value)) {
        if !known.iter().any(|k| **k == *v) {
            known.push(v.into());
        }
    }
    // Longest first, so a secret containing another is replaced whole.
    known.sort_by_key(|k| std::cmp::Reverse(k.len()));
}

/// Replaces every known secret value in `text` with `**REDACTED**`.
pub fn redact(text: &str) -> Cow<'_, str> {
    let known = KNOWN.read().unwrap_or_else(|e| e.into_inner());
    let mut out = Cow::Borrowed(text);
    for secret in known.iter() {
        if out.contains(&**secret) {
            out = Cow::Owned(out.replace(&**secret, "**REDACTED**"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_variables_and_literals() {
        let lookup = |n: &str| (n == "PW").then(|| "s3cret".to_string());
        assert_eq!(resolve_with("${PW}", lookup).unwrap(), "s3cret");
        assert_eq!(resolve_with("pre-${PW}-post", lookup).unwrap(), "pre-s3cret-post");
        assert_eq!(resolve_with("plain", lookup).unwrap(), "plain");
        assert_eq!(resolve_with("${NOPE}", lookup), Err(SecretError::UnsetVariable("NOPE".into())));
        assert_eq!(resolve_with("${PW", lookup), Err(SecretError::Unterminated));
        assert_eq!(syntax("a${B}c${D}"), Ok(()));
        assert_eq!(syntax("a${B}c${D"), Err(SecretError::Unterminated));
    }

    #[test]
    fn never_prints_and_is_redacted() {
        let s = Secret::new("canary-7f3a9");
        assert_eq!(format!("{s} {s:?}"), "**REDACTED** **REDACTED**");
        assert_eq!(redact("bind failed for canary-7f3a9!"), "bind failed for **REDACTED**!");
    }

    #[test]
    fn json_escaped_spellings_are_redacted() {
        let _s = Secret::new("pa\"ss\\word-1\t2");
        let line = serde_json::json!({"message": "login with pa\"ss\\word-1\t2 failed"}).to_string();
        assert!(!redact(&line).contains("word-1"), "{}", redact(&line));
        assert_eq!(redact("pa\"ss\\word-1\t2"), "**REDACTED**");
    }
}
