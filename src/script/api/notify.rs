//! `api.notify(channel, subject, body)`: a message to people through a `[notify.NAME]` channel
//! (a Teams / Slack / HTTP webhook, or email).
//!
//! The send completes before the script goes on, within the run's deadline (`[limits]
//! timeout_ms`) like every host call: a receiver that does not answer cannot hold the run
//! past it. A failure is a script error (transient when the receiver was unreachable, answered
//! 5xx or the deadline came first, so the run is retried). In a dry run the channel is
//! checked and the message is logged, not sent.

use rhai::{Dynamic, Engine};

use super::{Api, Res};

/// Registers `notify` on `api`.
pub(super) fn register(engine: &mut Engine) {
    engine.register_fn("notify", |api: &mut Api, channel: &str, subject: &str, body: Dynamic| -> Res<()> {
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
    });
}
