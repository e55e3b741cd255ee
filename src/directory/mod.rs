//! Placeholder: filled by its own issue.

use serde::Deserialize;

use crate::config::CheckCtx;

/// `[directories.NAME]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {}

impl DirectoryConfig {
    /// Records every problem of this section.
    pub fn check(&self, _name: &str, _span: std::ops::Range<usize>, _ctx: &mut CheckCtx) {}
}
