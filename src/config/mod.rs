//! Configuration: `tripline.toml` as written (serde structs) and validated into [`Config`].
//!
//! Each configurable area owns its `FooConfig` type in its own module (`directory`,
//! `connection`, `scheduler`, `webhook`, `notification`); this module reads the file, resolves
//! relative folders against the file's own folder, and runs every section's check so that all
//! problems are reported at once, each as `path:line:col: message`.

pub mod secret;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::diag::Diagnostic;
pub use secret::{Secret, SecretRef};

/// `tripline.toml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub directories: BTreeMap<String, toml::Spanned<crate::directory::DirectoryConfig>>,
    #[serde(default)]
    pub connections: BTreeMap<String, toml::Spanned<crate::connection::ConnectionConfig>>,
    #[serde(default)]
    pub jobs: BTreeMap<String, toml::Spanned<crate::scheduler::JobConfig>>,
    #[serde(default)]
    pub server: Option<crate::webhook::ServerConfig>,
    #[serde(default)]
    pub webhooks: BTreeMap<String, toml::Spanned<crate::webhook::WebhookConfig>>,
    #[serde(default)]
    pub notify: BTreeMap<String, toml::Spanned<crate::notification::NotifyConfig>>,
}

/// `[engine]`: folders, the store and the dispatcher.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Folder of rule files (`*.toml`, subfolders included).
    pub rules_dir: PathBuf,
    /// Folder of scripts (`*.rhai`, subfolders included).
    pub scripts_dir: PathBuf,
    /// Folder of the SQLite store (`tripline.db`).
    pub data_dir: PathBuf,
    /// Runs executed at once by the daemon (events of one record stay in order).
    pub workers: usize,
    /// Largest record accepted, in bytes of JSON.
    pub max_record_bytes: usize,
    /// How many levels of events raised by scripts' own writes are followed before the chain
    /// is stopped with an error (a rule that updates the record it fires on would loop).
    pub max_chain_depth: u32,
    /// Attempts of a run that fails transiently (directory unreachable, HTTP 503, ...) before
    /// it is `dead`.
    pub max_attempts: u32,
    /// The first retry's delay, in milliseconds; each next one doubles, with jitter.
    pub retry_backoff_ms: u64,
    /// The longest delay between two attempts, in milliseconds.
    pub retry_max_backoff_ms: u64,
    /// What a record's later events do while one of its runs waits for a retry: `"wait"`
    /// (default: they run after it, keeping the record's events in order) or `"proceed"`.
    /// A dead run no longer holds anything back; it waits in `runs --failed` for a replay.
    pub after_failure: AfterFailure,
    /// Finished events and successful runs older than this many days are pruned by the
    /// daemon (0 keeps everything). Failed and dead runs are kept.
    pub retention_days: u32,
    /// Extra folders of rules and scripts that `tripline check` validates but the engine does
    /// not load (the shipped examples).
    pub check_dirs: Vec<PathBuf>,
    /// How many events one event from outside may cause in all, through every level of
    /// script writes: a rule that creates records of its own entity would otherwise multiply
    /// without end. The run that would cross it fails, naming this setting.
    pub max_fanout: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            rules_dir: "rules".into(),
            scripts_dir: "scripts".into(),
            data_dir: "data".into(),
            workers: 8,
            max_record_bytes: 1024 * 1024,
            max_chain_depth: 8,
            max_attempts: 8,
            retry_backoff_ms: 5_000,
            retry_max_backoff_ms: 3_600_000,
            after_failure: AfterFailure::Wait,
            retention_days: 30,
            check_dirs: Vec::new(),
            max_fanout: 10_000,
        }
    }
}

/// A TOML error with a suggestion when it is an unknown key (serde's "unknown field `x`,
/// expected one of `a`, `b`" gets "; did you mean `a`?" when one is close).
fn with_suggestion(message: &str) -> String {
    let suggestion = (|| {
        let rest = message.strip_prefix("unknown field `")?;
        let (field, rest) = rest.split_once('`')?;
        let expected = rest.split_once("expected ")?.1;
        let names: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        crate::diag::did_you_mean(field, names)
    })();
    match suggestion {
        Some(s) => format!("{message}; did you mean `{s}`?"),
        None => message.to_string(),
    }
}

/// Checks that a number setting is within `range`, at the setting's place.
fn check_range<T: PartialOrd + std::fmt::Display + Copy>(
    ctx: &mut CheckCtx,
    table: &str,
    key: &str,
    value: T,
    lo: T,
    hi: T,
    why: &str,
) {
    if value < lo || value > hi {
        ctx.error_at_key(
            table,
            key,
            format!("[{table}] {key} = {value} is out of range: it must be from {lo} to {hi}{why}"),
        );
    }
}

/// A day in milliseconds.
const DAY_MS: u64 = 86_400_000;

impl EngineConfig {
    /// The ranges of the numbers. Time settings stay within what dates can hold (a retention
    /// of 10^9 days would not be a time at all), counts within what a machine can do.
    fn check(&self, ctx: &mut CheckCtx) {
        let t = "engine";
        check_range(ctx, t, "workers", self.workers, 1, 1024, "");
        check_range(ctx, t, "max_record_bytes", self.max_record_bytes, 2, 64 << 20, " (64 MiB)");
        check_range(ctx, t, "max_chain_depth", self.max_chain_depth, 0, 64, "");
        check_range(ctx, t, "max_attempts", self.max_attempts, 1, 1000, "");
        check_range(ctx, t, "retry_backoff_ms", self.retry_backoff_ms, 1, 30 * DAY_MS, " (30 days)");
        check_range(ctx, t, "retry_max_backoff_ms", self.retry_max_backoff_ms, 1, 30 * DAY_MS, " (30 days)");
        check_range(ctx, t, "retention_days", self.retention_days, 0, 36_500, " (100 years)");
        check_range(ctx, t, "max_fanout", self.max_fanout, 1, 10_000_000, "");
        for dir in &self.check_dirs {
            let full = ctx.base_dir.join(dir);
            if !full.join("rules").is_dir() && !full.join("scripts").is_dir() {
                let what = if full.is_dir() { "has no rules/ or scripts/ folder" } else { "does not exist" };
                ctx.error_at_key(
                    t,
                    "check_dirs",
                    format!(
                        "[engine] check_dirs: {} {what} (it is resolved against this file's folder)",
                        full.display()
                    ),
                );
            }
        }
        if self.retry_backoff_ms > self.retry_max_backoff_ms {
            ctx.error_at_key(
                t,
                "retry_backoff_ms",
                "[engine] retry_backoff_ms must not be larger than retry_max_backoff_ms",
            );
        }
    }
}

impl LimitsConfig {
    fn check(&self, ctx: &mut CheckCtx) {
        let t = "limits";
        check_range(ctx, t, "timeout_ms", self.timeout_ms, 1, DAY_MS, " (a day)");
        // 0 turns a count limit off (Rhai's convention); time and memory are always bounded.
        check_range(ctx, t, "max_operations", self.max_operations, 0, 1 << 40, "");
        check_range(ctx, t, "max_call_depth", self.max_call_depth, 1, 1024, "");
        check_range(ctx, t, "max_string_size", self.max_string_size, 0, 64 << 20, " (64 MiB)");
        check_range(ctx, t, "max_array_size", self.max_array_size, 0, 10_000_000, "");
        check_range(ctx, t, "max_map_size", self.max_map_size, 0, 10_000_000, "");
        // Script threads' stacks grow with the budget, up to a ceiling (see
        // `memory::MAX_RUN_BYTES`).
        check_range(ctx, t, "max_run_bytes", self.max_run_bytes, 1024, crate::memory::MAX_RUN_BYTES, " (512 MiB)");
    }
}

/// See [`EngineConfig::after_failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterFailure {
    Wait,
    Proceed,
}

/// `[limits]`: the script sandbox. All limits are on by default.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Rhai operations per run.
    pub max_operations: u64,
    /// Nested function calls.
    pub max_call_depth: usize,
    /// Characters in one string.
    pub max_string_size: usize,
    /// Elements in one array.
    pub max_array_size: usize,
    /// Entries in one map.
    pub max_map_size: usize,
    /// Wall-clock time of one run, in milliseconds (host calls included).
    pub timeout_ms: u64,
    /// Bytes tripline holds for one run: its log lines, the writes it has asked for (records,
    /// fields, comments) and the values they carry. A run over it fails, naming the limit.
    pub max_run_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_operations: 10_000_000,
            max_call_depth: 64,
            max_string_size: 1024 * 1024,
            max_array_size: 100_000,
            max_map_size: 100_000,
            timeout_ms: 30_000,
            max_run_bytes: 64 << 20,
        }
    }
}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The file it was read from (`None` when built in code).
    pub path: Option<PathBuf>,
    pub engine: EngineConfig,
    pub limits: LimitsConfig,
    pub raw: RawConfig,
    /// Problems of the file that do not stop it from being used (see [`Severity::Warning`]);
    /// `tripline run` logs them at start, `check` prints them.
    ///
    /// [`Severity::Warning`]: crate::diag::Severity::Warning
    pub warnings: Vec<Diagnostic>,
}

/// What a section check needs: the file, its text, and where to put problems.
pub struct CheckCtx<'a> {
    pub path: &'a Path,
    pub source: &'a str,
    /// The folder relative paths resolve against.
    pub base_dir: &'a Path,
    pub diags: Vec<Diagnostic>,
    pub secrets: Secrets,
}

/// Whether loading a configuration resolves its `${...}` secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Secrets {
    /// Every secret must resolve: an unset variable is a problem (`check`, the daemon).
    #[default]
    Resolve,
    /// Secrets are resolved by what uses them, when it does (`fire`, `test`, `replay`, ...):
    /// a connection whose password is not set fails the runs that use it, and nothing else.
    /// Only the syntax of the references is checked.
    Defer,
}

impl CheckCtx<'_> {
    /// Records a problem at a byte span of the file.
    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.diags.push(Diagnostic::span(self.path, self.source, Some(span), message));
    }

    /// Where `[table] key` is written in the file (its value), when it is.
    pub fn key_span(&self, table: &str, key: &str) -> Option<Range<usize>> {
        let doc = toml_edit::ImDocument::parse(self.source).ok()?;
        let item = doc.get(table)?.get(key)?;
        item.span()
    }

    /// Records a problem at `[table] key`, or at the file's start when the key is not written.
    pub fn error_at_key(&mut self, table: &str, key: &str, message: impl Into<String>) {
        let span = self.key_span(table, key);
        self.diags.push(Diagnostic::span(self.path, self.source, span, message));
    }

    /// Resolves a secret, recording a problem (naming `what`) when it cannot be.
    pub fn secret(&mut self, secret: &SecretRef, what: &str) -> Option<Secret> {
        if self.secrets == Secrets::Defer {
            if let Err(e) = secret::resolve_with(secret.0.get_ref(), |_| Some(String::new())) {
                if e == secret::SecretError::Unterminated {
                    self.error(secret.span(), format!("{what}: {e}"));
                }
            }
            return None;
        }
        match secret.resolve() {
            Ok(s) => Some(s),
            Err(e) => {
                self.error(secret.span(), format!("{what}: {e}"));
                None
            }
        }
    }
}

impl Config {
    /// Reads a configuration file's text.
    pub fn read(path: &Path) -> Result<String, Vec<Diagnostic>> {
        std::fs::read_to_string(path)
            .map_err(|e| vec![Diagnostic::file(path, format!("cannot read configuration: {e}"))])
    }

    /// Reads and validates a configuration file; every problem is returned at once.
    pub fn load(path: &Path) -> Result<Config, Vec<Diagnostic>> {
        Self::from_str(&Self::read(path)?, path)
    }

    /// [`Config::load`] with the given handling of secrets.
    pub fn load_with(path: &Path, secrets: Secrets) -> Result<Config, Vec<Diagnostic>> {
        Self::from_str_with(&Self::read(path)?, path, secrets)
    }

    /// Validates configuration text that was read from `path`. Warnings do not refuse it:
    /// they are kept in [`Config::warnings`].
    pub fn from_str(source: &str, path: &Path) -> Result<Config, Vec<Diagnostic>> {
        Self::from_str_with(source, path, Secrets::Resolve)
    }

    fn from_str_with(source: &str, path: &Path, secrets: Secrets) -> Result<Config, Vec<Diagnostic>> {
        match Self::parse_with(source, path, secrets) {
            Ok((config, diags)) if !crate::diag::any_error(&diags) => Ok(Config { warnings: diags, ..config }),
            Ok((_, diags)) | Err(diags) => Err(diags),
        }
    }

    /// Reads configuration text into a `Config` and the problems of its sections. `Err` only
    /// when the file does not parse at all; otherwise the config is usable for locating the
    /// rule and script folders even when sections have problems (so `check` reports those too).
    pub fn parse(source: &str, path: &Path) -> Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>> {
        Self::parse_with(source, path, Secrets::Resolve)
    }

    /// [`Config::parse`] with the given handling of secrets.
    pub fn parse_with(
        source: &str,
        path: &Path,
        secrets: Secrets,
    ) -> Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>> {
        let raw: RawConfig = toml::from_str(source)
            .map_err(|e| vec![Diagnostic::span(path, source, e.span(), with_suggestion(e.message().trim_end()))])?;
        // An empty parent (a bare file name) keeps paths relative to the working folder.
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut ctx = CheckCtx { path, source, base_dir: &base_dir, diags: Vec::new(), secrets };
        raw.check(&mut ctx);
        let diags = ctx.diags;
        let mut engine = raw.engine.clone();
        engine.rules_dir = base_dir.join(&engine.rules_dir);
        engine.scripts_dir = base_dir.join(&engine.scripts_dir);
        engine.data_dir = base_dir.join(&engine.data_dir);
        engine.check_dirs = engine.check_dirs.iter().map(|d| base_dir.join(d)).collect();
        Ok((
            Config { path: Some(path.to_path_buf()), engine, limits: raw.limits.clone(), raw, warnings: Vec::new() },
            diags,
        ))
    }

    /// A configuration built in code (embedding), with the given folders.
    pub fn with_engine(engine: EngineConfig) -> Config {
        Config { path: None, limits: LimitsConfig::default(), engine, raw: RawConfig::default(), warnings: Vec::new() }
    }
}

impl RawConfig {
    fn check(&self, ctx: &mut CheckCtx) {
        self.engine.check(ctx);
        self.limits.check(ctx);
        for (name, d) in &self.directories {
            d.get_ref().check(name, d.span(), ctx);
        }
        for (name, c) in &self.connections {
            c.get_ref().check(name, c.span(), ctx);
        }
        for (name, j) in &self.jobs {
            j.get_ref().check(name, j.span(), ctx);
        }
        crate::webhook::check(self.server.as_ref(), &self.webhooks, ctx);
        for (name, n) in &self.notify {
            n.get_ref().check(name, n.span(), ctx);
        }
    }
}
