//! State that survives restarts, per rule or job (watermarks): `api.state_get(key)` and
//! `api.state_set(key, value)`, in the run's namespace (`rule:NAME` or `job:NAME`).
//!
//! A value set is a buffered write like any other: it is stored with the run, and the run's
//! own later `state_get` sees it.

use rhai::plugin::*;
use rhai::Engine;

/// Registers the state functions on `api`.
pub(super) fn register(engine: &mut Engine) {
    engine.register_global_module(exported_module!(functions).into());
}

#[export_module]
mod functions {
    use rhai::Dynamic;

    use crate::script::api::{lock, Api, RhaiResultOf};
    use crate::script::{dynamic_to_json, json_to_dynamic};
    use crate::store::Write;

    /// The value stored under `key` for this rule or job, or `()`.
    #[rhai_fn(pure, return_raw)]
    pub fn state_get(api: &mut Api, key: &str) -> RhaiResultOf<Dynamic> {
        let pending = lock(&api.0.writes).iter().rev().find_map(|w| match w {
            Write::SetState { namespace, key: k, value } if *namespace == api.0.state_namespace && k == key => {
                Some(value.clone())
            }
            _ => None,
        });
        let value = match pending {
            Some(v) => Some(v),
            None => api.0.store.kv_get(&api.0.state_namespace, key).map_err(|e| api.0.fail(&e))?,
        };
        Ok(value.as_ref().map_or(Dynamic::UNIT, json_to_dynamic))
    }

    /// Stores `value` (any JSON-like value) under `key` for this rule or job, with the run.
    #[rhai_fn(pure, return_raw)]
    pub fn state_set(api: &mut Api, key: &str, value: Dynamic) -> RhaiResultOf<()> {
        let value = dynamic_to_json(&value)?;
        api.0.write(Write::SetState { namespace: api.0.state_namespace.clone(), key: key.to_string(), value });
        Ok(())
    }
}
