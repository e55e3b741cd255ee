//! Records and events: what flows from ingress (the CLI, webhooks, jobs, scripts) to rules.
//!
//! A record is a ticket or any other entity: an id, its entity name, an open/closed status,
//! free-form JSON fields and comments. An event says what happened to a record (created,
//! updated, deleted, or a custom name) and carries the record as it was then, plus its previous
//! version on updates, so rules and scripts see a consistent snapshot.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A record's fields.
pub type Fields = serde_json::Map<String, Value>;

/// How deeply a record's field values may nest (an object or array inside another is one
/// level more; the fields themselves are level 1). Every way into the store checks it: input
/// records (CLI, webhooks), scripts' writes (including values an API answered), and the store
/// itself. The store wraps a record in two more levels, well within what its JSON reader
/// accepts (128), so a stored record can always be read back.
pub const MAX_DEPTH: usize = 64;

/// Checks [`MAX_DEPTH`]; the error names the limit.
pub fn check_depth(fields: &Fields) -> Result<(), String> {
    let mut stack: Vec<(&Value, usize)> = fields.values().map(|v| (v, 2)).collect();
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        if depth > MAX_DEPTH {
            return Err(format!("the record's values are nested more than {MAX_DEPTH} levels deep"));
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    Ok(())
}

/// About how many bytes a value takes as JSON (without walking it recursively).
pub fn approx_json_bytes(v: &Value) -> usize {
    let mut total = 0;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        total += match v {
            Value::Null | Value::Bool(_) => 5,
            Value::Number(_) => 12,
            Value::String(s) => s.len() + 2,
            Value::Array(a) => {
                stack.extend(a);
                2 + a.len()
            }
            Value::Object(o) => {
                stack.extend(o.values());
                2 + o.keys().map(|k| k.len() + 4).sum::<usize>()
            }
        };
    }
    total
}

/// [`approx_json_bytes`] of a record's fields.
pub fn approx_json_bytes_of(fields: &Fields) -> usize {
    fields.iter().map(|(k, v)| k.len() + 4 + approx_json_bytes(v)).sum()
}

/// Equality of field values as rules and `api.find` see it: numbers by value (`1` equals
/// `1.0`), everything else exactly.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Keys of the script's `record` map that are not fields.
pub const RESERVED_KEYS: [&str; 3] = ["id", "entity", "status"];

/// Whether a record is open or closed (tickets are closed when handled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Open,
    Closed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "open" => Some(Status::Open),
            "closed" => Some(Status::Closed),
            _ => None,
        }
    }
}

/// A comment on a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comment {
    pub text: String,
    pub at: DateTime<Utc>,
}

/// A stored record. Its JSON form is stable: `tripline records show --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub entity: String,
    pub status: Status,
    pub fields: Fields,
    #[serde(default)]
    pub comments: Vec<Comment>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Record {
    /// A new open record with a fresh, time-ordered id.
    pub fn new(entity: &str, fields: Fields) -> Record {
        let now = Utc::now();
        Record {
            id: new_id(),
            entity: entity.to_string(),
            status: Status::Open,
            fields,
            comments: Vec::new(),
            created_at: now,
            updated_at: now,
        }
    }

    /// The value at a dotted path of the fields (`manager.email`, `tags.0`).
    pub fn path(&self, path: &[String]) -> Option<&Value> {
        lookup(&self.fields, path)
    }

    /// Whether the record has every criterion (`api.find`'s): `status` and `id` compare with
    /// the record's own, any other key is a dotted field path whose value must equal the
    /// criterion's ([`json_eq`]).
    pub fn matches(&self, criteria: &Fields) -> bool {
        criteria.iter().all(|(k, v)| match k.as_str() {
            "status" => v.as_str() == Some(self.status.as_str()),
            "id" => v.as_str() == Some(self.id.as_str()),
            _ => {
                let path: Vec<String> = k.split('.').map(String::from).collect();
                lookup(&self.fields, &path).is_some_and(|x| json_eq(x, v))
            }
        })
    }
}

/// A new record id: a UUIDv7, so ids sort by creation time.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The value at a dotted path (already split) of a JSON object; numeric segments index arrays.
pub fn lookup<'a>(fields: &'a Fields, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut value = fields.get(first)?;
    for seg in rest {
        value = match value {
            Value::Object(map) => map.get(seg)?,
            Value::Array(items) => items.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(value)
}

/// What happened to a record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum EventKind {
    Created,
    Updated,
    Deleted,
    /// A custom event name (a webhook's `event`, a job's own events).
    Custom(String),
}

impl EventKind {
    pub fn as_str(&self) -> &str {
        match self {
            EventKind::Created => "created",
            EventKind::Updated => "updated",
            EventKind::Deleted => "deleted",
            EventKind::Custom(s) => s,
        }
    }
}

impl From<String> for EventKind {
    fn from(s: String) -> Self {
        match s.as_str() {
            "created" => EventKind::Created,
            "updated" => EventKind::Updated,
            "deleted" => EventKind::Deleted,
            _ => EventKind::Custom(s),
        }
    }
}

impl From<EventKind> for String {
    fn from(k: EventKind) -> Self {
        k.as_str().to_string()
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored event: the record as it was when the event happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub kind: EventKind,
    pub record: Record,
    /// The record before an update.
    pub previous: Option<Record>,
    /// How many script writes led to this event (0 for events from outside).
    pub depth: u32,
    pub created_at: DateTime<Utc>,
    /// How many times a dispatcher claimed it, this claim included (1 the first time). Only
    /// an event claimed before can have runs already (a process died running it): the run
    /// ledger is read for those only.
    #[serde(skip)]
    pub claims: u32,
}

/// Why an input record was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// A record as submitted from outside: its fields, and the id / status when given.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub id: Option<String>,
    pub status: Option<Status>,
    pub fields: Fields,
}

/// Parses one submitted record: a JSON object whose keys are fields, except `id` (the record
/// to update) and `status` (`open` or `closed`). `max_bytes` caps the JSON size.
pub fn parse_submitted(json: &str, max_bytes: usize) -> Result<Submitted, String> {
    if json.len() > max_bytes {
        return Err(format!(
            "record is {} bytes, larger than the {max_bytes}-byte limit ([engine] max_record_bytes)",
            json.len()
        ));
    }
    let value: Value = serde_json::from_str(json).map_err(|e| format!("malformed JSON: {e}"))?;
    from_value(value)
}

/// Splits a JSON object into a submitted record.
pub fn from_value(value: Value) -> Result<Submitted, String> {
    let Value::Object(mut fields) = value else {
        return Err(format!("a record must be a JSON object, not {}", kind_of(&value)));
    };
    let id = match fields.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        Some(other) => return Err(format!("`id` must be a non-empty string, not {}", kind_of(&other))),
    };
    let status = match fields.remove("status") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            Some(Status::parse(&s).ok_or_else(|| format!("`status` must be \"open\" or \"closed\", not {s:?}"))?)
        }
        Some(other) => return Err(format!("`status` must be \"open\" or \"closed\", not {}", kind_of(&other))),
    };
    if fields.contains_key("entity") {
        return Err("`entity` is reserved: the entity is given on the command line".into());
    }
    check_depth(&fields)?;
    Ok(Submitted { id, status, fields })
}

/// "a string", "an array", ... for error messages.
pub fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_paths_reach_nested_values() {
        let Value::Object(f) = json!({"manager": {"email": "a@b"}, "tags": ["x", "y"]}) else { unreachable!() };
        let p = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
        assert_eq!(lookup(&f, &p("manager.email")), Some(&json!("a@b")));
        assert_eq!(lookup(&f, &p("tags.1")), Some(&json!("y")));
        assert_eq!(lookup(&f, &p("tags.9")), None);
        assert_eq!(lookup(&f, &p("manager.email.x")), None);
    }

    #[test]
    fn submitted_records_are_checked() {
        let s = parse_submitted(r#"{"id":"r1","status":"closed","Source":"FlexHR"}"#, 1000).unwrap();
        assert_eq!(s.id.as_deref(), Some("r1"));
        assert_eq!(s.status, Some(Status::Closed));
        assert_eq!(s.fields.len(), 1);
        assert!(parse_submitted("[1,2]", 1000).unwrap_err().contains("JSON object"));
        assert!(parse_submitted("{\"a\":", 1000).unwrap_err().starts_with("malformed JSON"));
        assert!(parse_submitted("{\"a\":\"xxxxxxxx\"}", 5).unwrap_err().contains("max_record_bytes"));
        assert!(parse_submitted(r#"{"status":"pending"}"#, 1000).is_err());
        assert!(parse_submitted(r#"{"entity":"x"}"#, 1000).is_err());
    }
}
