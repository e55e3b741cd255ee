//! `api.notify(channel, subject, body)`: a message to people through a `[notify.NAME]` channel
//! (a Teams / Slack / HTTP webhook, or email).
//!
//! The send completes before the script goes on; a failure is a script error (transient when
//! the receiver was unreachable or answered 5xx, so the run is retried). In a dry run the
//! channel is checked and the message is logged, not sent.

use rhai::{Dynamic, Engine};

use super::{Api, Res};

/// Registers `notify` on `api`.
pub(super) fn register(engine: &mut Engine) {
    engine.register_fn("notify", |api: &mut Api, channel: &str, subject: &str, body: Dynamic| -> Res<()> {
        let ctx = &api.0;
        let notifier = &ctx.hosts.notifier;
        let body = body.into_string().unwrap_or_else(|other| other.to_string());
        if ctx.dry_run {
            notifier.check_channel(channel).map_err(|e| ctx.fail(&e))?;
            crate::metrics::notification(channel, "dry_run");
            ctx.log("info", &format!("notify {channel} (dry run, not sent): {subject}"));
            return Ok(());
        }
        match notifier.send(channel, subject, &body) {
            Ok(()) => {
                ctx.log("info", &format!("notified {channel}: {subject}"));
                Ok(())
            }
            Err(e) => Err(ctx.fail(&e)),
        }
    });
}
