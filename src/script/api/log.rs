//! The run's log and its own "not now": `api.info` / `api.warn` / `api.error` / `api.log`
//! (lines attached to the run, secrets scrubbed) and `api.retry_later(reason)`.

use rhai::plugin::*;
use rhai::Engine;

/// Registers the log functions and `retry_later` on `api`.
pub(super) fn register(engine: &mut Engine) {
    engine.register_global_module(exported_module!(functions).into());
}

#[export_module]
mod functions {
    use rhai::Dynamic;

    use crate::class::Class;
    use crate::script::api::{Api, RhaiResultOf};

    /// Writes a line to the run's log at level `info` (shown by `fire` and `runs`); a value
    /// other than a string is written as Rhai prints it. Secrets are scrubbed.
    #[rhai_fn(pure, return_raw)]
    pub fn info(api: &mut Api, message: Dynamic) -> RhaiResultOf<()> {
        api.0.log("info", &api.0.text_of(&message)?);
        Ok(())
    }

    /// Writes a line to the run's log at level `warn`.
    #[rhai_fn(pure, return_raw)]
    pub fn warn(api: &mut Api, message: Dynamic) -> RhaiResultOf<()> {
        api.0.log("warn", &api.0.text_of(&message)?);
        Ok(())
    }

    /// Writes a line to the run's log at level `error` (the run goes on: `throw` ends it).
    #[rhai_fn(pure, return_raw)]
    pub fn error(api: &mut Api, message: Dynamic) -> RhaiResultOf<()> {
        api.0.log("error", &api.0.text_of(&message)?);
        Ok(())
    }

    /// Writes a line to the run's log at level `info`, like `api.info`.
    #[rhai_fn(pure, return_raw)]
    pub fn log(api: &mut Api, message: Dynamic) -> RhaiResultOf<()> {
        api.0.log("info", &api.0.text_of(&message)?);
        Ok(())
    }

    /// Ends the run as `retrying` with `reason`: it runs again after a backoff (e.g. a record
    /// waits for data another system has not delivered yet).
    #[rhai_fn(pure, return_raw)]
    pub fn retry_later(api: &mut Api, reason: &str) -> RhaiResultOf<()> {
        Err(api.0.host_error(reason, Class::Transient))
    }
}
