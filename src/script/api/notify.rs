//! `api.notify(channel, subject, body)`: a message to people through a `[notify.NAME]` channel
//! (a Teams / Slack / HTTP webhook, or email).
//!
//! The send completes before the script goes on, within the run's deadline (`[limits]
//! timeout_ms`) like every host call: a receiver that does not answer cannot hold the run
//! past it. A failure is a script error (transient when the receiver was unreachable, answered
//! 5xx or the deadline came first, so the run is retried). In a dry run the channel is
//! checked and the message is logged, not sent.

use rhai::plugin::*;
use rhai::Engine;

/// Registers `notify` on `api`.
pub(super) fn register(engine: &mut Engine) {
    engine.register_global_module(exported_module!(functions).into());
}

#[export_module]
mod functions {
    use rhai::Dynamic;

    use crate::script::api::{Api, RhaiResultOf};

    /// Sends a message with `subject` and `body` (a value other than a string is sent as Rhai
    /// prints it) through the `[notify.NAME]` channel `channel`, before the script goes on and
    /// within the run's time limit. A dry run checks the channel and logs the message instead.
    #[rhai_fn(pure, return_raw)]
    pub fn notify(api: &mut Api, channel: &str, subject: &str, body: Dynamic) -> RhaiResultOf<()> {
        let ctx = &api.0;
        let notifier = &ctx.hosts.notifier;
        let body = ctx.text_of(&body)?;
        if ctx.dry_run {
            notifier.check_channel(channel).map_err(|e| ctx.fail(&e))?;
            crate::metrics::notification(channel, "dry_run");
            ctx.log("info", &format!("notify {channel} (dry run, not sent): {subject}"));
            return Ok(());
        }
        let what = format!("notify {channel}");
        match ctx.within_deadline(&what, notifier.send_async(channel, subject, &body))? {
            Ok(()) => {
                ctx.log("info", &format!("notified {channel}: {subject}"));
                Ok(())
            }
            Err(e) => Err(ctx.fail(&e)),
        }
    }
}
