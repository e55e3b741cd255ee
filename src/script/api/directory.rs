//! `api.directory(name)` and the directory handle scripts call (the seed's
//! `api.ProcessFlexHrUserOnAD` is in [`super::flexhr`]).
//!
//! The handle ([`DirectoryHandle`], `Directory` in scripts) has one method per operation an
//! administrator automates, named as they would guess: `find_user`, `user_exists`,
//! `create_user`, `update_user`, `disable_user`, `enable_user`, `delete_user`, `move_user`,
//! `rename_user`, `reset_password`, `add_to_group`, `remove_from_group`, `groups_of`,
//! `group_members`, `set_manager`, `search`. A user is named by text (DN, UPN or mail, or the account name,
//! told apart by their shape) or by `#{by: "employeeID", value: "E1"}`; a group by DN or name.
//! Every value that reaches a DN or a filter is escaped by [`crate::directory`], never by the
//! script.
//!
//! Errors are script errors in plain sentences; those that may pass by themselves (server
//! down, bind refused, timeout) mark the run for a retry. Passwords given by scripts become
//! [`Secret`]s at once: never logged, and redacted from any error.
//!
//! Dry run (the directory's `dry_run = true`, or `tripline test`): each handle works on a
//! fresh dry-run copy of the directory, so the changes it would make are its own, and each
//! is logged on the run as a line "would create ...".

use std::sync::Arc;

use rhai::plugin::*;
use rhai::{Array, CustomType, Dynamic, Engine, EvalAltResult, ImmutableString, Map};
use serde_json::Value;

use super::{Res, RunCtx};
use crate::class::Classify;
use crate::directory::{Directory, DirectoryError, Entry, GroupId, PlannedChange, SearchRequest, SearchScope, UserId};
use crate::script::dynamic_to_json;
use crate::secret::Secret;

/// A configured directory (`api.directory("NAME")`), bound to the run that asked for it:
/// users and groups, every value escaped by the host. Its calls end at the run's time limit.
#[derive(Clone, CustomType)]
#[rhai_type(name = "Directory")]
pub struct DirectoryHandle {
    #[rhai_type(skip)]
    dir: Arc<Directory>,
    #[rhai_type(skip)]
    ctx: Arc<RunCtx>,
}

/// The directory a run uses under `name`: the configured one, or a fresh dry-run copy of it
/// when the directory or the run is a dry run. Unknown names are an error that lists the
/// configured ones.
pub(super) fn directory_for(ctx: &RunCtx, name: &str) -> Result<Arc<Directory>, String> {
    let hosts = &ctx.hosts;
    let map = if ctx.dry_run { &hosts.dry_directories } else { &hosts.directories };
    match map.get(name) {
        Some(d) if d.is_dry_run() => Ok(Arc::new(d.dry_run_copy())),
        Some(d) => Ok(d.clone()),
        None => {
            let names: Vec<&str> = hosts.directories.keys().map(String::as_str).collect();
            Err(match crate::diag::did_you_mean(name, names.iter().copied()) {
                Some(s) => format!("no directory named {name:?}; did you mean {s:?}?"),
                None if names.is_empty() => {
                    format!("no directory named {name:?}: tripline.toml has no [directories.{name}] section")
                }
                None => format!("no directory named {name:?}; configured: {}", names.join(", ")),
            })
        }
    }
}

impl DirectoryHandle {
    fn name(&self) -> &str {
        self.dir.name()
    }

    /// Runs one operation (`what`: the method's name), connect and bind included, at most
    /// until the run's deadline, and turns its error into a script error. The directory's own
    /// `connect_timeout` / `op_timeout` may be longer than the run's `[limits] timeout_ms`;
    /// the shorter one ends the wait (a deadline passed is transient: the run retries).
    fn call<T>(&self, what: &str, fut: impl std::future::Future<Output = Result<T, DirectoryError>>) -> Res<T> {
        let result = self.ctx.within_deadline(&format!("directory {}: {what}", self.name()), fut);
        self.log_planned(self.dir.take_planned_changes());
        result?.map_err(|e| self.error(&e))
    }

    fn log_planned(&self, planned: Vec<PlannedChange>) {
        for change in planned {
            self.ctx.plan(format!("dry run, directory {}: {change}", self.name()));
        }
    }

    fn error(&self, e: &DirectoryError) -> Box<EvalAltResult> {
        self.ctx.host_error(format!("directory {}: {e}", self.name()), e.class())
    }

    fn invalid(&self, message: String) -> Box<EvalAltResult> {
        self.error(&DirectoryError::InvalidInput(message))
    }

    /// The password is a Secret from here on: redacted from errors and logs.
    fn reset_password(&self, id: Dynamic, password: ImmutableString, must_change: bool) -> Res<()> {
        let password = Secret::new(password.as_str());
        let id = self.user(&id)?;
        self.call("reset_password", self.dir.reset_password(&id, &password, must_change))
    }

    fn user(&self, id: &Dynamic) -> Res<UserId> {
        let json = dynamic_to_json(id).map_err(|e| self.invalid(format!("a user: {e}")))?;
        UserId::from_json(&json).map_err(|e| self.error(&e))
    }

    fn group(&self, id: &Dynamic) -> Res<GroupId> {
        let json = dynamic_to_json(id).map_err(|e| self.invalid(format!("a group: {e}")))?;
        GroupId::from_json(&json).map_err(|e| self.error(&e))
    }

    fn object(&self, what: &str, map: Map) -> Res<serde_json::Map<String, Value>> {
        match dynamic_to_json(&Dynamic::from_map(map)) {
            Ok(Value::Object(o)) => Ok(o),
            Ok(_) => unreachable!("a map is an object"),
            Err(e) => Err(self.invalid(format!("{what}: {e}"))),
        }
    }

    fn search(&self, filter: &str, values: Array, options: Option<Map>) -> Res<Array> {
        let values = values
            .iter()
            .map(|v| match dynamic_to_json(v) {
                Ok(Value::String(s)) => Ok(s),
                Ok(v @ (Value::Number(_) | Value::Bool(_))) => Ok(v.to_string()),
                _ => Err(self.invalid(format!("search values must be text or numbers, not {}", v.type_name()))),
            })
            .collect::<Res<Vec<String>>>()?;
        let mut request = SearchRequest::new(filter, values);
        if let Some(options) = options {
            for (key, value) in self.object("search options", options)? {
                match (key.as_str(), value) {
                    ("attributes", Value::Array(items)) => {
                        request.attributes = items
                            .into_iter()
                            .map(|i| match i {
                                Value::String(s) => Ok(s),
                                other => Err(self.invalid(format!("attributes must be names, not {other}"))),
                            })
                            .collect::<Res<_>>()?
                    }
                    ("attributes", Value::String(s)) => request.attributes = vec![s],
                    ("base", Value::String(s)) => request.base = Some(s),
                    ("scope", Value::String(s)) => {
                        request.scope = SearchScope::parse(&s).map_err(|e| self.error(&e))?
                    }
                    ("limit", Value::Number(n)) if n.as_u64().is_some_and(|n| n > 0) => {
                        request.limit = n.as_u64().map(|n| n as usize)
                    }
                    (key @ ("attributes" | "base" | "scope" | "limit"), value) => {
                        return Err(self.invalid(format!("search option {key} cannot be {value}")))
                    }
                    (other, _) => {
                        return Err(self.invalid(format!(
                            "unknown search option `{other}`: the options are attributes, base, scope and limit"
                        )))
                    }
                }
            }
        }
        let found = self.call("search", self.dir.search(&request))?;
        Ok(found.iter().map(|e| Dynamic::from_map(entry_map(e))).collect())
    }
}

/// An entry as a script sees it: `dn` and each attribute, one value as text, several as an
/// array of text.
fn entry_map(e: &Entry) -> Map {
    let mut m = Map::new();
    m.insert("dn".into(), Dynamic::from(e.dn.clone()));
    for (name, values) in &e.attributes {
        let value = match values.as_slice() {
            [one] => Dynamic::from(one.clone()),
            many => Dynamic::from_array(many.iter().cloned().map(Dynamic::from).collect()),
        };
        m.insert(name.as_str().into(), value);
    }
    m
}

fn names(list: Vec<String>) -> Array {
    list.into_iter().map(Dynamic::from).collect()
}

/// Registers the `Directory` handle, `api.directory` and the handle's methods.
pub fn register(engine: &mut Engine) {
    engine.build_type::<DirectoryHandle>();
    engine.register_global_module(exported_module!(functions).into());
}

#[export_module]
mod functions {
    use rhai::{Array, Dynamic, ImmutableString, Map};

    use super::{directory_for, entry_map, names, DirectoryHandle as Directory};
    use crate::class::Class;
    use crate::directory::{attributes_from_json, NewUser};
    use crate::script::api::{Api, RhaiResultOf};

    /// The directory configured as `[directories.NAME]`, for this run (a dry-run copy when the
    /// directory or the run is a dry run). An unknown name is an error with a suggestion.
    #[rhai_fn(pure, return_raw)]
    pub fn directory(api: &mut Api, name: &str) -> RhaiResultOf<Directory> {
        let dir = directory_for(&api.0, name).map_err(|e| api.0.host_error(e, Class::Permanent))?;
        Ok(Directory { dir, ctx: api.0.clone() })
    }

    /// The directory's name in tripline.toml.
    #[rhai_fn(get = "name", pure)]
    pub fn name(d: &mut Directory) -> String {
        d.name().to_string()
    }

    /// The directory's `base_dn`.
    #[rhai_fn(get = "base_dn", pure)]
    pub fn base_dn(d: &mut Directory) -> String {
        d.dir.base_dn()
    }

    /// The directory's `users_ou`, where new users are created.
    #[rhai_fn(get = "users_ou", pure)]
    pub fn users_ou(d: &mut Directory) -> String {
        d.dir.users_ou()
    }

    /// Whether this handle only plans its changes (the directory's `dry_run = true`, or
    /// `tripline test`).
    #[rhai_fn(get = "dry_run", pure)]
    pub fn dry_run(d: &mut Directory) -> bool {
        d.dir.is_dry_run()
    }

    /// The user (a DN, a UPN or mail, an account name, or `#{by: "employeeID", value: "E1"}`)
    /// as a map of attributes with its `dn`, or `()` when there is none.
    #[rhai_fn(pure, return_raw)]
    pub fn find_user(d: &mut Directory, user: Dynamic) -> RhaiResultOf<Dynamic> {
        let id = d.user(&user)?;
        Ok(d.call("find_user", d.dir.find_user(&id))?.map_or(Dynamic::UNIT, |e| Dynamic::from_map(entry_map(&e))))
    }

    /// Whether the user exists.
    #[rhai_fn(pure, return_raw)]
    pub fn user_exists(d: &mut Directory, user: Dynamic) -> RhaiResultOf<bool> {
        let id = d.user(&user)?;
        d.call("user_exists", d.dir.user_exists(&id))
    }

    /// Creates a user from `#{name, sAMAccountName, ou, password, enabled, ...attributes}` and
    /// returns its entry.
    #[rhai_fn(pure, return_raw)]
    pub fn create_user(d: &mut Directory, user: Map) -> RhaiResultOf<Map> {
        let user = NewUser::from_json(&d.object("create_user", user)?).map_err(|e| d.error(&e))?;
        Ok(entry_map(&d.call("create_user", d.dir.create_user(&user))?))
    }

    /// Sets the attributes in `changes` (`()` clears one; protected attributes are refused) and
    /// returns the names of those that changed.
    #[rhai_fn(pure, return_raw)]
    pub fn update_user(d: &mut Directory, user: Dynamic, changes: Map) -> RhaiResultOf<Array> {
        let id = d.user(&user)?;
        let changes = attributes_from_json(&d.object("update_user", changes)?).map_err(|e| d.error(&e))?;
        Ok(names(d.call("update_user", d.dir.update_user(&id, &changes))?))
    }

    /// Disables the account (Active Directory: only the ACCOUNTDISABLE flag); whether it
    /// changed.
    #[rhai_fn(pure, return_raw)]
    pub fn disable_user(d: &mut Directory, user: Dynamic) -> RhaiResultOf<bool> {
        let id = d.user(&user)?;
        d.call("disable_user", d.dir.disable_user(&id))
    }

    /// Enables the account; whether it changed.
    #[rhai_fn(pure, return_raw)]
    pub fn enable_user(d: &mut Directory, user: Dynamic) -> RhaiResultOf<bool> {
        let id = d.user(&user)?;
        d.call("enable_user", d.dir.enable_user(&id))
    }

    /// Deletes the user.
    #[rhai_fn(pure, return_raw)]
    pub fn delete_user(d: &mut Directory, user: Dynamic) -> RhaiResultOf<()> {
        let id = d.user(&user)?;
        d.call("delete_user", d.dir.delete_user(&id))
    }

    /// Moves the user to the OU `ou` and returns its new DN.
    #[rhai_fn(pure, return_raw)]
    pub fn move_user(d: &mut Directory, user: Dynamic, ou: &str) -> RhaiResultOf<String> {
        let id = d.user(&user)?;
        d.call("move_user", d.dir.move_user(&id, ou))
    }

    /// Gives the user a new CN and returns its new DN.
    #[rhai_fn(pure, return_raw)]
    pub fn rename_user(d: &mut Directory, user: Dynamic, new_name: &str) -> RhaiResultOf<String> {
        let id = d.user(&user)?;
        d.call("rename_user", d.dir.rename_user(&id, new_name))
    }

    /// Sets the user's password (only over LDAPS or StartTLS; never logged).
    #[rhai_fn(name = "reset_password", pure, return_raw)]
    pub fn reset_password(d: &mut Directory, user: Dynamic, password: ImmutableString) -> RhaiResultOf<()> {
        d.reset_password(user, password, false)
    }

    /// Sets the user's password; `must_change`: the user must change it at the next logon.
    #[rhai_fn(name = "reset_password", pure, return_raw)]
    pub fn reset_password_must_change(
        d: &mut Directory,
        user: Dynamic,
        password: ImmutableString,
        must_change: bool,
    ) -> RhaiResultOf<()> {
        d.reset_password(user, password, must_change)
    }

    /// Adds the user to the group (a DN or a name); whether it changed.
    #[rhai_fn(pure, return_raw)]
    pub fn add_to_group(d: &mut Directory, user: Dynamic, group: Dynamic) -> RhaiResultOf<bool> {
        let (id, group) = (d.user(&user)?, d.group(&group)?);
        d.call("add_to_group", d.dir.add_to_group(&id, &group))
    }

    /// Removes the user from the group; whether it changed.
    #[rhai_fn(pure, return_raw)]
    pub fn remove_from_group(d: &mut Directory, user: Dynamic, group: Dynamic) -> RhaiResultOf<bool> {
        let (id, group) = (d.user(&user)?, d.group(&group)?);
        d.call("remove_from_group", d.dir.remove_from_group(&id, &group))
    }

    /// The groups the user is a member of, as an array of entries.
    #[rhai_fn(pure, return_raw)]
    pub fn groups_of(d: &mut Directory, user: Dynamic) -> RhaiResultOf<Array> {
        let id = d.user(&user)?;
        Ok(d.call("groups_of", d.dir.groups_of(&id))?.iter().map(|e| Dynamic::from_map(entry_map(e))).collect())
    }

    /// The members of a group (a DN or a name), as DNs: read whole, by ranges of the server's
    /// size (`member;range=0-1499`, ...), however large the group.
    #[rhai_fn(pure, return_raw)]
    pub fn group_members(d: &mut Directory, group: Dynamic) -> RhaiResultOf<Array> {
        let group = d.group(&group)?;
        Ok(names(d.call("group_members", d.dir.group_members(&group))?))
    }

    /// Sets the user's manager (a user as for `find_user`; `()` clears it) and returns the
    /// manager's DN, or `()`.
    #[rhai_fn(pure, return_raw)]
    pub fn set_manager(d: &mut Directory, user: Dynamic, manager: Dynamic) -> RhaiResultOf<Dynamic> {
        let id = d.user(&user)?;
        let manager = if manager.is_unit() { None } else { Some(d.user(&manager)?) };
        Ok(d.call("set_manager", d.dir.set_manager(&id, manager.as_ref()))?.map_or(Dynamic::UNIT, Dynamic::from))
    }

    /// The entries matching an LDAP filter, under `base_dn`, paged.
    #[rhai_fn(name = "search", pure, return_raw)]
    pub fn search(d: &mut Directory, filter: &str) -> RhaiResultOf<Array> {
        d.search(filter, Array::new(), None)
    }

    /// The entries matching an LDAP filter whose `{}` holes are filled with `values`, escaped
    /// (RFC 4515).
    #[rhai_fn(name = "search", pure, return_raw)]
    pub fn search_with_values(d: &mut Directory, filter: &str, values: Array) -> RhaiResultOf<Array> {
        d.search(filter, values, None)
    }

    /// The entries matching a filter with `values`, with options `#{attributes, base, scope,
    /// limit}`.
    #[rhai_fn(name = "search", pure, return_raw)]
    pub fn search_with_options(d: &mut Directory, filter: &str, values: Array, options: Map) -> RhaiResultOf<Array> {
        d.search(filter, values, Some(options))
    }
}
