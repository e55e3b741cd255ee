//! `api.connection(name)`: HTTP calls to configured APIs.

use rhai::Engine;

/// Registers the connection functions.
pub fn register(_engine: &mut Engine) {}
