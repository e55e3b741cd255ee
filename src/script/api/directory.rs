//! `api.directory(name)` and `api.ProcessFlexHrUserOnAD(record, name)`.

use rhai::Engine;

/// Registers the directory functions.
pub fn register(_engine: &mut Engine) {}
