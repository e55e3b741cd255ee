//! Time helpers: `api.now()`, `api.now_unix()`, `api.days_ago(n)`, `api.hours_ago(n)`,
//! `api.minutes_ago(n)`, `api.parse_time(text)`, `api.format_time(unix)`.
//!
//! Times are RFC 3339 text in UTC, to the second, or Unix seconds. Every helper is total:
//! input out of the range of times is a script error, never a panic.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rhai::plugin::*;
use rhai::Engine;

use super::Res;

/// Registers the time helpers on `api`.
pub(super) fn register(engine: &mut Engine) {
    engine.register_global_module(exported_module!(functions).into());
}

#[export_module]
#[allow(unused_variables)]
mod functions {
    use chrono::{DateTime, Duration, Utc};

    use super::{ago, ts};
    use crate::script::api::{Api, RhaiResultOf};

    /// Now, as RFC 3339 text in UTC (`2024-05-01T12:00:00Z`).
    #[rhai_fn(pure, volatile)]
    pub fn now(api: &mut Api) -> String {
        ts(Utc::now())
    }

    /// Now, in Unix seconds.
    #[rhai_fn(pure, volatile)]
    pub fn now_unix(api: &mut Api) -> i64 {
        Utc::now().timestamp()
    }

    /// `n` days before now, as RFC 3339 text (a watermark: `modifiedSince`).
    #[rhai_fn(pure, volatile, return_raw)]
    pub fn days_ago(api: &mut Api, n: i64) -> RhaiResultOf<String> {
        ago(n, "days", Duration::try_days)
    }

    /// `n` hours before now, as RFC 3339 text.
    #[rhai_fn(pure, volatile, return_raw)]
    pub fn hours_ago(api: &mut Api, n: i64) -> RhaiResultOf<String> {
        ago(n, "hours", Duration::try_hours)
    }

    /// `n` minutes before now, as RFC 3339 text.
    #[rhai_fn(pure, volatile, return_raw)]
    pub fn minutes_ago(api: &mut Api, n: i64) -> RhaiResultOf<String> {
        ago(n, "minutes", Duration::try_minutes)
    }

    /// An RFC 3339 time (any offset) as Unix seconds.
    #[rhai_fn(pure, return_raw)]
    pub fn parse_time(api: &mut Api, text: &str) -> RhaiResultOf<i64> {
        DateTime::parse_from_rfc3339(text).map(|t| t.timestamp()).map_err(|e| {
            let shown: String = text.chars().take(64).collect();
            format!("not an RFC 3339 time {shown:?}: {e}").into()
        })
    }

    /// Unix seconds as RFC 3339 text in UTC.
    #[rhai_fn(pure, return_raw)]
    pub fn format_time(api: &mut Api, unix: i64) -> RhaiResultOf<String> {
        DateTime::from_timestamp(unix, 0).map(ts).ok_or_else(|| format!("{unix} is out of range").into())
    }
}

/// Now minus `n` units, or an error naming the call when that is not a time chrono can hold.
fn ago(n: i64, unit: &str, make: fn(i64) -> Option<Duration>) -> Res<String> {
    make(n)
        .and_then(|d| Utc::now().checked_sub_signed(d))
        .map(ts)
        .ok_or_else(|| format!("api.{unit}_ago({n}): out of the range of times").into())
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}
