//! Placeholder: inbound webhooks, filled by its own issue.

use serde::Deserialize;

use crate::config::CheckCtx;

/// `[server]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {}

/// `[webhooks.NAME]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {}

impl WebhookConfig {
    /// Records every problem of this section.
    pub fn check(&self, _name: &str, _span: std::ops::Range<usize>, _ctx: &mut CheckCtx) {}
}
