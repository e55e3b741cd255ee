//! `[engine]`: the folders, the store and the dispatcher; the settings of the runtime that
//! [`Config`](super::Config) is the root of. Like every section, it imports only leaves (and
//! the store's own default).

use std::path::PathBuf;

use serde::Deserialize;

use crate::diag::CheckCtx;

/// A day in milliseconds.
const DAY_MS: u64 = 86_400_000;

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
    /// Entries of the directory audit trail older than this many days are pruned by the
    /// daemon (0 keeps everything); apart from `retention_days`, since an audit outlives
    /// the run history it points at.
    pub audit_retention_days: u32,
    /// Extra folders of rules and scripts that `tripline check` validates but the engine does
    /// not load (the shipped examples).
    pub check_dirs: Vec<PathBuf>,
    /// How many events one event from outside may cause in all, through every level of
    /// script writes: a rule that creates records of its own entity would otherwise multiply
    /// without end. The run that would cross it fails, naming this setting.
    pub max_fanout: u64,
    /// How long a worker's claim on an event (and on a job it runs) holds beyond twice
    /// `[limits] timeout_ms`, in milliseconds. The daemon's heartbeat renews its claims; when
    /// a worker dies, its claims come free after this long and another worker runs them.
    pub claim_lease_ms: u64,
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
            audit_retention_days: 365,
            check_dirs: Vec::new(),
            max_fanout: crate::store::DEFAULT_MAX_FANOUT,
            claim_lease_ms: 60_000,
        }
    }
}

/// See [`EngineConfig::after_failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterFailure {
    Wait,
    Proceed,
}

impl EngineConfig {
    /// The section with its folders resolved against the file's folder (`ctx.base_dir`),
    /// after recording every problem: numbers out of range (time settings stay within what
    /// dates can hold, a retention of 10^9 days would not be a time at all; counts within
    /// what a machine can do) and `check_dirs` that are not there.
    pub fn build(&self, ctx: &mut CheckCtx) -> EngineConfig {
        let t = "engine";
        ctx.in_range(t, "workers", self.workers, 1, 1024, "");
        ctx.in_range(t, "max_record_bytes", self.max_record_bytes, 2, 64 << 20, " (64 MiB)");
        ctx.in_range(t, "max_chain_depth", self.max_chain_depth, 0, 64, "");
        ctx.in_range(t, "max_attempts", self.max_attempts, 1, 1000, "");
        ctx.in_range(t, "retry_backoff_ms", self.retry_backoff_ms, 1, 30 * DAY_MS, " (30 days)");
        ctx.in_range(t, "retry_max_backoff_ms", self.retry_max_backoff_ms, 1, 30 * DAY_MS, " (30 days)");
        ctx.in_range(t, "retention_days", self.retention_days, 0, 36_500, " (100 years)");
        ctx.in_range(t, "audit_retention_days", self.audit_retention_days, 0, 36_500, " (100 years)");
        ctx.in_range(t, "max_fanout", self.max_fanout, 1, 10_000_000, "");
        ctx.in_range(t, "claim_lease_ms", self.claim_lease_ms, 1_000, DAY_MS, " (a day)");
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
        let base_dir = ctx.base_dir;
        EngineConfig {
            rules_dir: base_dir.join(&self.rules_dir),
            scripts_dir: base_dir.join(&self.scripts_dir),
            data_dir: base_dir.join(&self.data_dir),
            check_dirs: self.check_dirs.iter().map(|d| base_dir.join(d)).collect(),
            ..self.clone()
        }
    }
}
