//! `[limits]`: the script sandbox's settings.

use serde::Deserialize;

use crate::diag::CheckCtx;

/// A day in milliseconds.
const DAY_MS: u64 = 86_400_000;

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

impl LimitsConfig {
    /// Records every number out of its range, at its place. There is nothing to build: the
    /// [`ScriptEngine`](super::ScriptEngine) takes the limits as they are.
    pub fn check(&self, ctx: &mut CheckCtx) {
        let t = "limits";
        ctx.in_range(t, "timeout_ms", self.timeout_ms, 1, DAY_MS, " (a day)");
        // 0 turns a count limit off (Rhai's convention); time and memory are always bounded.
        ctx.in_range(t, "max_operations", self.max_operations, 0, 1 << 40, "");
        ctx.in_range(t, "max_call_depth", self.max_call_depth, 1, 1024, "");
        ctx.in_range(t, "max_string_size", self.max_string_size, 0, 64 << 20, " (64 MiB)");
        ctx.in_range(t, "max_array_size", self.max_array_size, 0, 10_000_000, "");
        ctx.in_range(t, "max_map_size", self.max_map_size, 0, 10_000_000, "");
        // Script threads' stacks grow with the budget, up to a ceiling (see
        // `memory::MAX_RUN_BYTES`).
        ctx.in_range(t, "max_run_bytes", self.max_run_bytes, 1024, crate::memory::MAX_RUN_BYTES, " (512 MiB)");
    }
}
