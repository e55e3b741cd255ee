//! Arguments of the directory operations from script values (as JSON), so that the script
//! layer binds each method with one conversion: `"jdoe"` or `#{by: "employeeID", value: "42"}`
//! for a user, a map of attributes for `create_user` and `update_user`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::error::DirectoryError;
use super::ident::{GroupId, UserId};
use super::users::NewUser;
use crate::secret::Secret;

fn invalid(msg: String) -> DirectoryError {
    DirectoryError::InvalidInput(msg)
}

fn scalar(key: &str, v: &Value) -> Result<Option<String>, DirectoryError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(if *b { "TRUE" } else { "FALSE" }.to_string())),
        _ => Err(invalid(format!("{key} must be text, a number or a boolean"))),
    }
}

impl UserId {
    /// A user from a script value: text (recognised by [`UserId::parse`]) or a map
    /// `{by: "employeeID", value: "42"}`.
    pub fn from_json(value: &Value) -> Result<UserId, DirectoryError> {
        match value {
            Value::String(s) => UserId::parse(s),
            Value::Object(m) => {
                let by = m.get("by").and_then(Value::as_str);
                let v = m.get("value").map(|v| scalar("value", v)).transpose()?.flatten();
                match (by, v) {
                    (Some(by), Some(v)) => UserId::by(by, &v),
                    _ => Err(invalid("a user given as a map needs `by` and `value`".into())),
                }
            }
            other => Err(invalid(format!("a user is named by text or #{{by, value}}, not {other}"))),
        }
    }
}

impl GroupId {
    /// A group from a script value: its DN or its name, as text.
    pub fn from_json(value: &Value) -> Result<GroupId, DirectoryError> {
        match value {
            Value::String(s) => GroupId::parse(s),
            other => Err(invalid(format!("a group is named by its DN or name, not {other}"))),
        }
    }
}

/// Attribute values from a script map: text, numbers and booleans are one value, arrays are
/// several, `()`/null or an empty array clears the attribute.
pub fn attributes_from_json(map: &Map<String, Value>) -> Result<BTreeMap<String, Vec<String>>, DirectoryError> {
    map.iter()
        .map(|(k, v)| {
            let values = match v {
                Value::Array(items) => {
                    items.iter().map(|i| scalar(k, i)).collect::<Result<Vec<_>, _>>()?.into_iter().flatten().collect()
                }
                other => scalar(k, other)?.into_iter().collect(),
            };
            Ok((k.clone(), values))
        })
        .collect()
}

impl NewUser {
    /// A new user from a script map: `name` (or `cn`), `sAMAccountName` (or `login`,
    /// `username`, `uid`), optional `ou`, `password`, `enabled`; every other key is an
    /// attribute.
    pub fn from_json(map: &Map<String, Value>) -> Result<NewUser, DirectoryError> {
        let mut user = NewUser::default();
        let mut rest = Map::new();
        for (k, v) in map {
            match k.to_ascii_lowercase().as_str() {
                "name" | "cn" => user.name = scalar(k, v)?.unwrap_or_default(),
                "samaccountname" | "login" | "username" | "uid" => user.login = scalar(k, v)?.unwrap_or_default(),
                "ou" => user.ou = scalar(k, v)?,
                "password" => user.password = scalar(k, v)?.map(Secret::new),
                "enabled" => {
                    user.enabled = match v {
                        Value::Bool(b) => Some(*b),
                        Value::Null => None,
                        _ => return Err(invalid("enabled must be true or false".into())),
                    }
                }
                _ => {
                    rest.insert(k.clone(), v.clone());
                }
            }
        }
        if user.name.trim().is_empty() {
            return Err(invalid("create_user needs a name (the CN)".into()));
        }
        if user.login.trim().is_empty() {
            return Err(invalid("create_user needs sAMAccountName (or login)".into()));
        }
        user.attributes = attributes_from_json(&rest)?;
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn users_from_text_or_map() {
        assert_eq!(UserId::from_json(&json!("jdoe")).unwrap(), UserId::Login("jdoe".into()));
        assert_eq!(
            UserId::from_json(&json!({"by": "employeeID", "value": 42})).unwrap(),
            UserId::EmployeeId("42".into())
        );
        assert!(UserId::from_json(&json!({"by": "employeeID"})).is_err());
        assert!(UserId::from_json(&json!(42)).is_err());
        assert_eq!(GroupId::from_json(&json!("Staff")).unwrap(), GroupId::Name("Staff".into()));
    }

    #[test]
    fn new_users_and_attributes_from_maps() {
        let m = json!({"name": "Jane Doe", "sAMAccountName": "jdoe", "password": "Pw!12345678", "enabled": true,
                       "givenName": "Jane", "otherTelephone": ["1", 2], "title": null});
        let u = NewUser::from_json(m.as_object().unwrap()).unwrap();
        assert_eq!((u.name.as_str(), u.login.as_str(), u.enabled), ("Jane Doe", "jdoe", Some(true)));
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("Pw!12345678"));
        assert_eq!(u.attributes["otherTelephone"], vec!["1", "2"]);
        assert!(u.attributes["title"].is_empty());
        assert!(!format!("{u:?}").contains("Pw!12345678"));
        assert!(NewUser::from_json(json!({"name": "x"}).as_object().unwrap()).is_err());
        assert!(attributes_from_json(json!({"a": {"b": 1}}).as_object().unwrap()).is_err());
    }
}
