//! Records and tickets: `api.create`, `api.update`, `api.find`, `api.get`, `api.comment`,
//! `api.close`.
//!
//! Every write is buffered in the run's [`RunCtx`](super::RunCtx) and committed with the run;
//! reads see the run's own writes. A `record` argument is a record map (with its `id`) or an
//! id.

use rhai::plugin::*;
use rhai::{Engine, Map};
use serde_json::Value;

use super::{Api, Res};
use crate::record::{Fields, Record, RESERVED_KEYS};
use crate::script::dynamic_to_json;

/// Registers the record functions on `api`.
pub(super) fn register(engine: &mut Engine) {
    engine.register_global_module(exported_module!(functions).into());
}

#[export_module]
mod functions {
    use rhai::{Array, Dynamic, Map};
    use serde_json::Value;

    use super::{existing, fields_of};
    use crate::record::Record;
    use crate::script::api::{record_id, Api, RhaiResultOf};
    use crate::script::{dynamic_to_json, record_to_map};
    use crate::store::Write;

    /// Creates a record of `entity` with `fields` and returns it; its `id` is known at once.
    /// The record raises its own `created` event when the run commits.
    #[rhai_fn(pure, return_raw)]
    pub fn create(api: &mut Api, entity: &str, fields: Map) -> RhaiResultOf<Map> {
        if entity.trim().is_empty() {
            return Err("api.create needs an entity name".into());
        }
        let record = Record::new(entity, fields_of(fields)?);
        let map = record_to_map(&record);
        api.0.write(Write::Create(record));
        Ok(map)
    }

    /// Sets `fields` on a record (its other fields are kept) and returns the record.
    #[rhai_fn(pure, return_raw)]
    pub fn update(api: &mut Api, record: Dynamic, fields: Map) -> RhaiResultOf<Map> {
        let id = record_id(&record)?;
        existing(api, &id)?;
        api.0.write(Write::Update { id: id.clone(), fields: fields_of(fields)? });
        Ok(record_to_map(&existing(api, &id)?))
    }

    /// The records of `entity` whose fields equal every criterion (`#{Field: value, status:
    /// "open"}`; dotted paths reach nested fields), as an array of record maps.
    #[rhai_fn(pure, return_raw)]
    pub fn find(api: &mut Api, entity: &str, criteria: Map) -> RhaiResultOf<Array> {
        let criteria = match dynamic_to_json(&Dynamic::from_map(criteria))? {
            Value::Object(o) => o,
            _ => unreachable!("a map is an object"),
        };
        let found = api.0.find(entity, &criteria).map_err(|e| api.0.fail(&e))?;
        Ok(found.iter().map(|r| Dynamic::from_map(record_to_map(r))).collect())
    }

    /// The record with this id, or `()`.
    #[rhai_fn(pure, return_raw)]
    pub fn get(api: &mut Api, id: &str) -> RhaiResultOf<Dynamic> {
        Ok(match api.0.get_record(id).map_err(|e| api.0.fail(&e))? {
            Some(r) => Dynamic::from_map(record_to_map(&r)),
            None => Dynamic::UNIT,
        })
    }

    /// Adds a comment to a record.
    #[rhai_fn(pure, return_raw)]
    pub fn comment(api: &mut Api, record: Dynamic, text: &str) -> RhaiResultOf<()> {
        let id = record_id(&record)?;
        existing(api, &id)?;
        api.0.write(Write::Comment { id, text: text.to_string(), key: None });
        Ok(())
    }

    /// Closes a record with a comment.
    #[rhai_fn(name = "close", pure, return_raw)]
    pub fn close_with_comment(api: &mut Api, record: Dynamic, text: &str) -> RhaiResultOf<()> {
        let id = record_id(&record)?;
        existing(api, &id)?;
        api.0.write(Write::Close { id, text: Some(text.to_string()) });
        Ok(())
    }

    /// Closes a record.
    #[rhai_fn(pure, return_raw)]
    pub fn close(api: &mut Api, record: Dynamic) -> RhaiResultOf<()> {
        let id = record_id(&record)?;
        existing(api, &id)?;
        api.0.write(Write::Close { id, text: None });
        Ok(())
    }
}

/// Script fields as JSON, refusing the keys that are not fields.
fn fields_of(map: Map) -> Res<Fields> {
    for k in RESERVED_KEYS {
        if map.contains_key(k) {
            return Err(format!(
                "`{k}` is not a field: records have fixed `id`, `entity` and `status` (close a record with api.close)"
            )
            .into());
        }
    }
    match dynamic_to_json(&Dynamic::from_map(map)) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => unreachable!("a map is an object"),
        Err(e) => Err(e.into()),
    }
}

/// The record with this id as the run sees it, or an error saying there is none.
fn existing(api: &Api, id: &str) -> Res<Record> {
    api.0.get_record(id).map_err(|e| api.0.fail(&e))?.ok_or_else(|| format!("no record with id {id}").into())
}
