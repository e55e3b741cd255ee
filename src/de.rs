//! Deserialisation helpers shared by the configuration sections and rule files: durations
//! written as text, TOML values as JSON, and serde defaults.
//!
//! A leaf: this module imports nothing of the crate, so that every section may use it.

use serde_json::Value;

/// `#[serde(default = "crate::de::default_true")]`: a switch that is on unless written off.
pub fn default_true() -> bool {
    true
}

/// A TOML value as JSON: tables become objects, dates RFC 3339 text. A float that JSON cannot
/// hold (NaN, infinity) is refused.
pub fn toml_to_json(v: &toml::Value) -> Result<Value, String> {
    Ok(match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => {
            serde_json::Number::from_f64(*f).map(Value::Number).ok_or("a number must be finite")?
        }
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(toml_to_json).collect::<Result<_, _>>()?),
        toml::Value::Table(t) => {
            Value::Object(t.iter().map(|(k, v)| Ok((k.clone(), toml_to_json(v)?))).collect::<Result<_, String>>()?)
        }
    })
}

/// Durations written as `"30s"`, `"500ms"`, `"24h"`, `"1h 30m"` or as whole seconds:
/// `#[serde(deserialize_with = "crate::de::duration::deserialize")]`.
pub mod duration {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as \"30s\", \"500ms\" or \"24h\", or whole seconds")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v).map(Duration::from_secs).map_err(|_| E::custom("a duration cannot be negative"))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse(v).map_err(E::custom)
        }
    }

    /// Parses `"30s"`, `"500ms"`, `"24h"`, `"1h 30m"`.
    pub fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text.trim())
            .map_err(|e| format!("invalid duration `{text}` ({e}); write e.g. \"30s\", \"500ms\" or \"24h\""))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    pub fn deserialize_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        d.deserialize_any(DurationVisitor).map(Some)
    }
}

/// TOML values of every kind, for the property tests of what reads TOML (rules, the
/// configuration).
#[cfg(test)]
pub(crate) fn toml_literal() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        Just("true".to_string()),
        any::<i32>().prop_map(|i| i.to_string()),
        "[a-zA-Z(*)\\\\.^$]{0,6}".prop_map(|s| format!("{s:?}")),
        prop::collection::vec(any::<i16>(), 0..3).prop_map(|v| format!("{v:?}")),
        Just("{ x = 1 }".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration::parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration::parse("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(duration::parse("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(duration::parse("5 parsecs").is_err());
    }

    #[test]
    fn toml_becomes_json() {
        let t: toml::Table = toml::from_str("a = 1\nb = [1.5, true]\nc = { d = 1979-05-27T07:32:00Z }\n").unwrap();
        assert_eq!(
            toml_to_json(&toml::Value::Table(t)).unwrap(),
            serde_json::json!({"a": 1, "b": [1.5, true], "c": {"d": "1979-05-27T07:32:00Z"}})
        );
        assert!(toml_to_json(&toml::Value::Float(f64::NAN)).is_err());
    }
}
