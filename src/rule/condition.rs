//! Conditions: `{ field, op, value }` compiled at load time into native matchers.
//!
//! Operators, pseudo-fields and value types are checked when the rule is loaded, so a typo is
//! an error with a suggestion rather than a rule that silently never fires.

use std::cmp::Ordering;
use std::collections::HashSet;

use regex::Regex;
use serde_json::Value;

use crate::diag::did_you_mean;
use crate::record::{lookup, Event, EventKind};

/// The operators of a condition, by their names in rule files.
pub const OPERATORS: [&str; 16] = [
    "equals",
    "not_equals",
    "in",
    "not_in",
    "contains",
    "starts_with",
    "ends_with",
    "matches",
    "exists",
    "missing",
    "gt",
    "gte",
    "lt",
    "lte",
    "changed",
    // Accepted spellings of the ITSM consoles rules are copied from ("Created equal true").
    "equal",
];

/// Pseudo-fields: facts about the event rather than the record.
pub const PSEUDO_FIELDS: [&str; 5] = ["Created", "Updated", "Deleted", "Entity", "Event"];

/// What a condition looks at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FieldRef {
    /// True on created events.
    Created,
    /// True on updated events.
    Updated,
    /// True on deleted events.
    Deleted,
    /// The record's entity.
    Entity,
    /// The event's name.
    Event,
    /// A record field, by dotted path.
    Path(Vec<String>),
}

impl FieldRef {
    pub fn parse(name: &str) -> FieldRef {
        match name {
            "Created" => FieldRef::Created,
            "Updated" => FieldRef::Updated,
            "Deleted" => FieldRef::Deleted,
            "Entity" => FieldRef::Entity,
            "Event" => FieldRef::Event,
            _ => FieldRef::Path(name.split('.').map(String::from).collect()),
        }
    }

    fn is_bool_pseudo(&self) -> bool {
        matches!(self, FieldRef::Created | FieldRef::Updated | FieldRef::Deleted)
    }

    /// The value this field has in an event (pseudo-fields are computed).
    pub fn resolve<'e>(&self, event: &'e Event) -> Option<Resolved<'e>> {
        Some(match self {
            FieldRef::Created => Resolved::Bool(event.kind == EventKind::Created),
            FieldRef::Updated => Resolved::Bool(event.kind == EventKind::Updated),
            FieldRef::Deleted => Resolved::Bool(event.kind == EventKind::Deleted),
            FieldRef::Entity => Resolved::Str(&event.record.entity),
            FieldRef::Event => Resolved::Str(event.kind.as_str()),
            FieldRef::Path(p) => Resolved::Json(lookup(&event.record.fields, p)?),
        })
    }
}

/// A field's value in an event, borrowed.
#[derive(Debug, Clone, Copy)]
pub enum Resolved<'e> {
    Bool(bool),
    Str(&'e str),
    Json(&'e Value),
}

impl Resolved<'_> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Resolved::Str(s) => Some(s),
            Resolved::Json(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The index key of this value, when it has one.
    pub fn key(&self) -> Option<Key> {
        match self {
            Resolved::Bool(b) => Some(Key::Bool(*b)),
            Resolved::Str(s) => Some(Key::Str((*s).to_string())),
            Resolved::Json(v) => Key::of(v),
        }
    }

    fn to_value(self) -> Value {
        match self {
            Resolved::Bool(b) => Value::Bool(b),
            Resolved::Str(s) => Value::String(s.to_string()),
            Resolved::Json(v) => v.clone(),
        }
    }
}

/// A hashable scalar, for the equality index. Numbers compare by value (1 == 1.0).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Bool(bool),
    Num(u64),
    Str(String),
}

impl Key {
    pub fn of(v: &Value) -> Option<Key> {
        match v {
            Value::Bool(b) => Some(Key::Bool(*b)),
            Value::String(s) => Some(Key::Str(s.clone())),
            Value::Number(n) => n.as_f64().map(|f| Key::Num(if f == 0.0 { 0 } else { f.to_bits() })),
            _ => None,
        }
    }
}

/// A compiled operator with its checked value.
#[derive(Debug, Clone)]
pub enum Op {
    Equals(Value),
    NotEquals(Value),
    In(Vec<Value>, HashSet<Key>),
    NotIn(Vec<Value>, HashSet<Key>),
    Contains(Value),
    StartsWith(String),
    EndsWith(String),
    Matches(Regex),
    Exists,
    Missing,
    Gt(Value),
    Gte(Value),
    Lt(Value),
    Lte(Value),
    Changed,
}

/// A compile error: which part of the condition is wrong ("field", "op" or "value") and why.
pub type CompileError = (&'static str, String);

/// One compiled condition.
#[derive(Debug, Clone)]
pub struct Condition {
    /// The field as written.
    pub field_name: String,
    pub field: FieldRef,
    /// The operator as written.
    pub op_name: String,
    pub op: Op,
}

impl Condition {
    /// Compiles a condition, or says what is wrong with it (and where: `Err((part, message))`,
    /// `part` being "op", "value" or "field").
    pub fn compile(field: &str, op: &str, value: Option<Value>) -> Result<Condition, CompileError> {
        let field_ref = FieldRef::parse(field);
        if field.is_empty() || field.split('.').any(str::is_empty) {
            return Err(("field", format!("field {field:?} is not a name or a dotted path")));
        }
        if let Some(suggestion) = pseudo_typo(field) {
            return Err(("field", format!("unknown pseudo-field {field:?}; did you mean {suggestion:?}?")));
        }
        let op_canon = match op {
            "equal" => "equals",
            "not_equal" => "not_equals",
            other => other,
        };
        let need = |v: Option<Value>| v.ok_or(("op", format!("operator `{op}` needs a `value`")));
        let scalar = |v: Value| -> Result<Value, CompileError> {
            match v {
                Value::Array(_) | Value::Object(_) => Err((
                    "value",
                    format!(
                        "operator `{op}` compares with one value, not {}; use `in` for a list",
                        crate::record::kind_of(&v)
                    ),
                )),
                v => Ok(v),
            }
        };
        let string = |v: Value| -> Result<String, CompileError> {
            match v {
                Value::String(s) => Ok(s),
                other => Err((
                    "value",
                    format!("operator `{op}` needs a string value, not {}", crate::record::kind_of(&other)),
                )),
            }
        };
        let ordered = |v: Value| -> Result<Value, CompileError> {
            match v {
                Value::Number(_) | Value::String(_) => Ok(v),
                other => Err((
                    "value",
                    format!(
                        "operator `{op}` compares with a number or a string, not {}",
                        crate::record::kind_of(&other)
                    ),
                )),
            }
        };
        let list = |v: Value| -> Result<(Vec<Value>, HashSet<Key>), CompileError> {
            match v {
                Value::Array(items) => {
                    let mut keys = HashSet::new();
                    for item in &items {
                        keys.insert(Key::of(item).ok_or((
                            "value",
                            format!("operator `{op}` needs a list of strings, numbers or booleans"),
                        ))?);
                    }
                    Ok((items, keys))
                }
                other => Err((
                    "value",
                    format!("operator `{op}` needs a list value, not {}", crate::record::kind_of(&other)),
                )),
            }
        };
        let no_value = |v: &Option<Value>| -> Result<(), CompileError> {
            match v {
                Some(_) => Err(("value", format!("operator `{op}` takes no `value`"))),
                None => Ok(()),
            }
        };
        let compiled = match op_canon {
            "equals" => Op::Equals(scalar(need(value)?)?),
            "not_equals" => Op::NotEquals(scalar(need(value)?)?),
            "in" => {
                let (v, k) = list(need(value)?)?;
                Op::In(v, k)
            }
            "not_in" => {
                let (v, k) = list(need(value)?)?;
                Op::NotIn(v, k)
            }
            "contains" => Op::Contains(scalar(need(value)?)?),
            "starts_with" => Op::StartsWith(string(need(value)?)?),
            "ends_with" => Op::EndsWith(string(need(value)?)?),
            "matches" => {
                let pattern = string(need(value)?)?;
                Op::Matches(Regex::new(&pattern).map_err(|e| ("value", format!("invalid regular expression: {e}")))?)
            }
            "exists" => {
                no_value(&value)?;
                Op::Exists
            }
            "missing" => {
                no_value(&value)?;
                Op::Missing
            }
            "gt" => Op::Gt(ordered(need(value)?)?),
            "gte" => Op::Gte(ordered(need(value)?)?),
            "lt" => Op::Lt(ordered(need(value)?)?),
            "lte" => Op::Lte(ordered(need(value)?)?),
            "changed" => {
                no_value(&value)?;
                Op::Changed
            }
            unknown => {
                let hint = did_you_mean(unknown, OPERATORS.iter().copied().filter(|o| *o != "equal"))
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_else(|| format!("; operators are {}", OPERATORS[..15].join(", ")));
                return Err(("op", format!("unknown operator `{unknown}`{hint}")));
            }
        };
        check_pseudo_types(&field_ref, field, &compiled)?;
        Ok(Condition { field_name: field.to_string(), field: field_ref, op_name: op.to_string(), op: compiled })
    }

    /// The equality this condition demands, when it can be served by an index.
    pub fn index_key(&self) -> Option<Key> {
        match &self.op {
            Op::Equals(v) => Key::of(v),
            _ => None,
        }
    }

    /// Whether the event satisfies this condition.
    pub fn eval(&self, event: &Event) -> bool {
        let value = self.field.resolve(event);
        match &self.op {
            Op::Exists => matches!(value, Some(v) if !is_null(v)),
            Op::Missing => value.is_none_or(is_null),
            Op::Changed => match (&self.field, &event.previous) {
                (FieldRef::Path(p), Some(prev)) if event.kind == EventKind::Updated => {
                    !json_eq_opt(lookup(&event.record.fields, p), lookup(&prev.fields, p))
                }
                _ => false,
            },
            Op::NotEquals(expected) => !value.is_some_and(|v| resolved_eq(v, expected)),
            Op::NotIn(_, keys) => !value.and_then(|v| v.key()).is_some_and(|k| keys.contains(&k)),
            op => {
                let Some(v) = value else { return false };
                match op {
                    Op::Equals(expected) => resolved_eq(v, expected),
                    Op::In(_, keys) => v.key().is_some_and(|k| keys.contains(&k)),
                    Op::Contains(needle) => match v {
                        Resolved::Json(Value::Array(items)) => items.iter().any(|i| json_eq(i, needle)),
                        _ => match (v.as_str(), needle) {
                            (Some(hay), Value::String(n)) => hay.contains(n.as_str()),
                            _ => false,
                        },
                    },
                    Op::StartsWith(s) => v.as_str().is_some_and(|h| h.starts_with(s.as_str())),
                    Op::EndsWith(s) => v.as_str().is_some_and(|h| h.ends_with(s.as_str())),
                    Op::Matches(re) => v.as_str().is_some_and(|h| re.is_match(h)),
                    Op::Gt(b) => compare(v, b) == Some(Ordering::Greater),
                    Op::Gte(b) => matches!(compare(v, b), Some(Ordering::Greater | Ordering::Equal)),
                    Op::Lt(b) => compare(v, b) == Some(Ordering::Less),
                    Op::Lte(b) => matches!(compare(v, b), Some(Ordering::Less | Ordering::Equal)),
                    _ => unreachable!("handled above"),
                }
            }
        }
    }

    /// The field's value in the event, for explanations.
    pub fn actual(&self, event: &Event) -> Option<Value> {
        self.field.resolve(event).map(Resolved::to_value)
    }
}

fn pseudo_typo(field: &str) -> Option<&'static str> {
    // Only single capitalised words close to a pseudo-field are suspicious: "Crated", "Evnt".
    if PSEUDO_FIELDS.contains(&field) || field.contains('.') {
        return None;
    }
    PSEUDO_FIELDS.iter().copied().find(|p| strsim::damerau_levenshtein(p, field) == 1 && p.len() > 4)
}

fn check_pseudo_types(field: &FieldRef, name: &str, op: &Op) -> Result<(), CompileError> {
    if field.is_bool_pseudo() {
        return match op {
            Op::Equals(Value::Bool(_)) | Op::NotEquals(Value::Bool(_)) => Ok(()),
            Op::Equals(_) | Op::NotEquals(_) => {
                Err(("value", format!("{name} is true or false; compare it with a boolean (`value = true`)")))
            }
            _ => Err(("op", format!("{name} is true or false; use `equals` or `not_equals`"))),
        };
    }
    if matches!(field, FieldRef::Entity | FieldRef::Event) {
        let ok = match op {
            Op::Equals(v) | Op::NotEquals(v) | Op::Contains(v) => v.is_string(),
            Op::In(items, _) | Op::NotIn(items, _) => items.iter().all(Value::is_string),
            Op::StartsWith(_) | Op::EndsWith(_) | Op::Matches(_) => true,
            _ => false,
        };
        if !ok {
            return Err(("value", format!("{name} is a name; compare it with strings")));
        }
    }
    if matches!(op, Op::Changed) && !matches!(field, FieldRef::Path(_)) {
        return Err(("op", format!("`changed` applies to record fields, not to {name}")));
    }
    Ok(())
}

fn is_null(v: Resolved) -> bool {
    matches!(v, Resolved::Json(Value::Null))
}

fn resolved_eq(v: Resolved, expected: &Value) -> bool {
    match (v, expected) {
        (Resolved::Bool(a), Value::Bool(b)) => a == *b,
        (Resolved::Str(a), Value::String(b)) => a == b,
        (Resolved::Json(a), b) => json_eq(a, b),
        _ => false,
    }
}

use crate::record::json_eq;

fn json_eq_opt(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => json_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

fn compare(v: Resolved, b: &Value) -> Option<Ordering> {
    match (v, b) {
        (Resolved::Json(Value::Number(x)), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (v, Value::String(y)) => Some(v.as_str()?.cmp(y.as_str())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;
    use serde_json::json;

    fn event(kind: EventKind, fields: Value, previous: Option<Value>) -> Event {
        let rec = |v: Value| {
            let mut r = Record::new("ticket", v.as_object().unwrap().clone());
            r.id = "r1".into();
            r
        };
        Event {
            id: 1,
            kind,
            record: rec(fields),
            previous: previous.map(rec),
            depth: 0,
            created_at: chrono::Utc::now(),
            claims: 1,
        }
    }

    fn check(field: &str, op: &str, value: Option<Value>, fields: Value) -> bool {
        Condition::compile(field, op, value).unwrap().eval(&event(EventKind::Created, fields, None))
    }

    #[test]
    fn every_operator() {
        let f = json!({"Source": "FlexHR", "n": 5, "tags": ["vip", "new"], "Dept": "Sales", "empty": null,
                       "when": "2026-01-02", "nested": {"a": {"b": 1}}});
        assert!(check("Source", "equals", Some(json!("FlexHR")), f.clone()));
        assert!(!check("Source", "equals", Some(json!("flexhr")), f.clone()));
        assert!(check("n", "equals", Some(json!(5.0)), f.clone()));
        assert!(check("Source", "not_equals", Some(json!("HR")), f.clone()));
        assert!(check("absent", "not_equals", Some(json!("HR")), f.clone()));
        assert!(check("Dept", "in", Some(json!(["IT", "Sales"])), f.clone()));
        assert!(!check("absent", "in", Some(json!(["IT"])), f.clone()));
        assert!(check("Dept", "not_in", Some(json!(["IT"])), f.clone()));
        assert!(!check("Dept", "not_in", Some(json!(["Sales"])), f.clone()));
        assert!(check("tags", "contains", Some(json!("vip")), f.clone()));
        assert!(check("Source", "contains", Some(json!("lex")), f.clone()));
        assert!(!check("tags", "contains", Some(json!("old")), f.clone()));
        assert!(check("Source", "starts_with", Some(json!("Flex")), f.clone()));
        assert!(check("Source", "ends_with", Some(json!("HR")), f.clone()));
        assert!(check("Source", "matches", Some(json!("^F.*R$")), f.clone()));
        assert!(!check("n", "matches", Some(json!("5")), f.clone()));
        assert!(check("Source", "exists", None, f.clone()));
        assert!(!check("empty", "exists", None, f.clone()));
        assert!(check("empty", "missing", None, f.clone()));
        assert!(check("nope", "missing", None, f.clone()));
        assert!(check("n", "gt", Some(json!(4)), f.clone()));
        assert!(!check("n", "gt", Some(json!(5)), f.clone()));
        assert!(check("n", "gte", Some(json!(5)), f.clone()));
        assert!(check("n", "lt", Some(json!(5.5)), f.clone()));
        assert!(check("n", "lte", Some(json!(5)), f.clone()));
        assert!(check("when", "gt", Some(json!("2026-01-01")), f.clone()));
        assert!(!check("Source", "gt", Some(json!(1)), f.clone()));
        assert!(check("nested.a.b", "equals", Some(json!(1)), f.clone()));
        assert!(check("tags.0", "equals", Some(json!("vip")), f));
    }

    #[test]
    fn pseudo_fields_and_the_seed_trigger() {
        let created = event(EventKind::Created, json!({"Source": "FlexHR"}), None);
        let c = Condition::compile("Created", "equal", Some(json!(true))).unwrap();
        assert!(c.eval(&created));
        let updated = event(EventKind::Updated, json!({"Source": "FlexHR"}), Some(json!({})));
        assert!(!c.eval(&updated));
        assert!(Condition::compile("Updated", "equals", Some(json!(true))).unwrap().eval(&updated));
        assert!(Condition::compile("Entity", "equals", Some(json!("ticket"))).unwrap().eval(&created));
        assert!(Condition::compile("Event", "in", Some(json!(["created", "updated"]))).unwrap().eval(&updated));
    }

    #[test]
    fn changed_compares_with_the_previous_version() {
        let c = Condition::compile("Dept", "changed", None).unwrap();
        assert!(c.eval(&event(EventKind::Updated, json!({"Dept": "IT"}), Some(json!({"Dept": "Sales"})))));
        assert!(!c.eval(&event(EventKind::Updated, json!({"Dept": "IT"}), Some(json!({"Dept": "IT"})))));
        assert!(c.eval(&event(EventKind::Updated, json!({"Dept": "IT"}), Some(json!({})))));
        assert!(!c.eval(&event(EventKind::Created, json!({"Dept": "IT"}), None)));
    }

    #[test]
    fn load_time_errors_say_what_to_do() {
        let err = |f: &str, o: &str, v: Option<Value>| Condition::compile(f, o, v).unwrap_err().1;
        assert_eq!(err("Source", "equls", Some(json!("x"))), "unknown operator `equls`; did you mean `equals`?");
        assert!(err("Source", "in", Some(json!("x"))).contains("list"));
        assert!(err("Created", "equals", Some(json!("true"))).contains("boolean"));
        assert!(err("Created", "contains", Some(json!(true))).contains("equals"));
        assert!(err("Crated", "equals", Some(json!(true))).contains("did you mean \"Created\""));
        assert!(err("Source", "matches", Some(json!("("))).contains("regular expression"));
        assert!(err("Source", "exists", Some(json!(1))).contains("takes no"));
        assert!(err("Source", "equals", None).contains("needs a `value`"));
        assert!(err("Source", "equals", Some(json!([1]))).contains("use `in`"));
        assert!(err("a..b", "exists", None).contains("dotted path"));
    }
}
