//! Placeholder: scheduled jobs, filled by its own issue.

use serde::Deserialize;

use crate::config::CheckCtx;

/// `[notify.NAME]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {}

impl NotifyConfig {
    /// Records every problem of this section.
    pub fn check(&self, _name: &str, _span: std::ops::Range<usize>, _ctx: &mut CheckCtx) {}
}
