//! `api.directory(name)`, the directory handle scripts call, and the seed's
//! `api.ProcessFlexHrUserOnAD(record, name)`.
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
use std::time::{Duration, Instant};

use chrono::Utc;
use rhai::{Array, Dynamic, Engine, EvalAltResult, ImmutableString, Map};
use serde_json::Value;

use super::{record_id, Api, RunCtx};
use crate::class::{Class, Classify};
use crate::directory::{
    attributes_from_json, Directory, DirectoryError, Entry, GroupId, ManagerOutcome, NewUser, PlannedChange,
    SearchRequest, SearchScope, SyncOptions, SyncOutcome, SyncStatus, UserId,
};
use crate::record::{Fields, Record, Status, RESERVED_KEYS};
use crate::script::{dynamic_to_json, json_to_dynamic, HostError};
use crate::secret::Secret;
use crate::store::{StoreError, Write};

type Res<T> = Result<T, Box<EvalAltResult>>;

/// `api.directory("NAME")`: one configured directory, bound to the run that asked for it.
#[derive(Clone)]
pub struct DirectoryHandle {
    dir: Arc<Directory>,
    ctx: Arc<RunCtx>,
}

/// The directory a run uses under `name`: the configured one, or a fresh dry-run copy of it
/// when the directory or the run is a dry run. Unknown names are an error that lists the
/// configured ones.
fn directory_for(ctx: &RunCtx, name: &str) -> Result<Arc<Directory>, String> {
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

/// Registers `api.directory`, the handle's methods and `api.ProcessFlexHrUserOnAD`.
pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<DirectoryHandle>("Directory");
    engine.register_fn("directory", |api: &mut Api, name: &str| -> Res<DirectoryHandle> {
        let dir = directory_for(&api.0, name).map_err(|e| api.0.host_error(e, Class::Permanent))?;
        Ok(DirectoryHandle { dir, ctx: api.0.clone() })
    });
    engine.register_fn("ProcessFlexHrUserOnAD", |api: &mut Api, record: Dynamic, directory: &str| {
        process_flexhr_user(api, record, directory, SyncOptions::default())
    });
    engine.register_fn("ProcessFlexHrUserOnAD", process_flexhr_user_with_options);

    engine.register_get("name", |d: &mut DirectoryHandle| d.name().to_string());
    engine.register_get("base_dn", |d: &mut DirectoryHandle| d.dir.base_dn());
    engine.register_get("users_ou", |d: &mut DirectoryHandle| d.dir.users_ou());
    engine.register_get("dry_run", |d: &mut DirectoryHandle| d.dir.is_dry_run());

    engine.register_fn("find_user", |d: &mut DirectoryHandle, id: Dynamic| -> Res<Dynamic> {
        let id = d.user(&id)?;
        Ok(d.call("find_user", d.dir.find_user(&id))?.map_or(Dynamic::UNIT, |e| Dynamic::from_map(entry_map(&e))))
    });
    engine.register_fn("user_exists", |d: &mut DirectoryHandle, id: Dynamic| -> Res<bool> {
        let id = d.user(&id)?;
        d.call("user_exists", d.dir.user_exists(&id))
    });
    engine.register_fn("create_user", |d: &mut DirectoryHandle, user: Map| -> Res<Map> {
        let user = NewUser::from_json(&d.object("create_user", user)?).map_err(|e| d.error(&e))?;
        Ok(entry_map(&d.call("create_user", d.dir.create_user(&user))?))
    });
    engine.register_fn("update_user", |d: &mut DirectoryHandle, id: Dynamic, changes: Map| -> Res<Array> {
        let id = d.user(&id)?;
        let changes = attributes_from_json(&d.object("update_user", changes)?).map_err(|e| d.error(&e))?;
        Ok(names(d.call("update_user", d.dir.update_user(&id, &changes))?))
    });
    engine.register_fn("disable_user", |d: &mut DirectoryHandle, id: Dynamic| -> Res<bool> {
        let id = d.user(&id)?;
        d.call("disable_user", d.dir.disable_user(&id))
    });
    engine.register_fn("enable_user", |d: &mut DirectoryHandle, id: Dynamic| -> Res<bool> {
        let id = d.user(&id)?;
        d.call("enable_user", d.dir.enable_user(&id))
    });
    engine.register_fn("delete_user", |d: &mut DirectoryHandle, id: Dynamic| -> Res<()> {
        let id = d.user(&id)?;
        d.call("delete_user", d.dir.delete_user(&id))
    });
    engine.register_fn("move_user", |d: &mut DirectoryHandle, id: Dynamic, ou: &str| -> Res<String> {
        let id = d.user(&id)?;
        d.call("move_user", d.dir.move_user(&id, ou))
    });
    engine.register_fn("rename_user", |d: &mut DirectoryHandle, id: Dynamic, new_name: &str| -> Res<String> {
        let id = d.user(&id)?;
        d.call("rename_user", d.dir.rename_user(&id, new_name))
    });
    // The password is a Secret from here on: redacted from errors and logs.
    let reset = |d: &mut DirectoryHandle, id: Dynamic, password: ImmutableString, must_change: bool| -> Res<()> {
        let password = Secret::new(password.as_str());
        let id = d.user(&id)?;
        d.call("reset_password", d.dir.reset_password(&id, &password, must_change))
    };
    engine.register_fn("reset_password", move |d: &mut DirectoryHandle, id: Dynamic, pw: ImmutableString| {
        reset(d, id, pw, false)
    });
    engine.register_fn("reset_password", reset);
    engine.register_fn("add_to_group", |d: &mut DirectoryHandle, id: Dynamic, group: Dynamic| -> Res<bool> {
        let (id, group) = (d.user(&id)?, d.group(&group)?);
        d.call("add_to_group", d.dir.add_to_group(&id, &group))
    });
    engine.register_fn("remove_from_group", |d: &mut DirectoryHandle, id: Dynamic, group: Dynamic| -> Res<bool> {
        let (id, group) = (d.user(&id)?, d.group(&group)?);
        d.call("remove_from_group", d.dir.remove_from_group(&id, &group))
    });
    engine.register_fn("groups_of", |d: &mut DirectoryHandle, id: Dynamic| -> Res<Array> {
        let id = d.user(&id)?;
        Ok(d.call("groups_of", d.dir.groups_of(&id))?.iter().map(|e| Dynamic::from_map(entry_map(e))).collect())
    });
    engine.register_fn("group_members", |d: &mut DirectoryHandle, group: Dynamic| -> Res<Array> {
        let group = d.group(&group)?;
        Ok(names(d.call("group_members", d.dir.group_members(&group))?))
    });
    engine.register_fn("set_manager", |d: &mut DirectoryHandle, id: Dynamic, manager: Dynamic| -> Res<Dynamic> {
        let id = d.user(&id)?;
        let manager = if manager.is_unit() { None } else { Some(d.user(&manager)?) };
        Ok(d.call("set_manager", d.dir.set_manager(&id, manager.as_ref()))?.map_or(Dynamic::UNIT, Dynamic::from))
    });
    engine.register_fn("search", |d: &mut DirectoryHandle, filter: &str| d.search(filter, Array::new(), None));
    engine.register_fn("search", |d: &mut DirectoryHandle, filter: &str, values: Array| d.search(filter, values, None));
    engine.register_fn("search", |d: &mut DirectoryHandle, filter: &str, values: Array, options: Map| {
        d.search(filter, values, Some(options))
    });
}

/// `api.ProcessFlexHrUserOnAD(record, directory)`: the seed's function, on a ticket that
/// carries a Flex HR user's fields (SPEC.md, "The Flex HR contract").
///
/// It binds to the directory, then makes the directory match the user
/// ([`Directory::sync_flexhr_user`]), and tells the ticket how that went:
/// - full success (created, updated, already up to date, or a leaver disabled): the ticket is
///   closed with a comment naming the base DN and the username, the attributes that changed
///   and "account disabled" for a leaver;
/// - the manager was not found: a comment says it must be entered manually before the user
///   is processed in AD; the ticket stays open and the run succeeds;
/// - the directory cannot be reached, the bind is refused, or another failure that may pass
///   (timeout, busy): the error is logged, a comment "failed to synchronize with Flex HR:
///   <reason>; will retry (attempt N of M, time)" is left, the ticket stays open and the run
///   fails transiently, so the engine retries it with backoff. The comment is keyed by event
///   and rule: each retry updates it instead of adding one;
/// - any other failure (bad input, a constraint the directory refuses): the same comment
///   without the retry, the ticket stays open, the run fails.
///
/// Dry run (the directory's `dry_run = true`, as shipped, or `tripline test`): nothing is
/// read from or written to the directory. The ticket is closed as a full success would close
/// it, with a comment that lists the planned changes and says "dry run: nothing was changed
/// in the directory". Closing shows the whole flow as it will run, and leaves no ticket open
/// that nothing would ever process again; people seen during a dry run are synchronized
/// after going live by sending their records again.
///
/// Returns `#{status, dn, sAMAccountName, changes, manager, disabled, notes, dry_run,
/// base_dn, planned, closed}`.
fn process_flexhr_user(api: &mut Api, record: Dynamic, directory: &str, options: SyncOptions) -> Res<Map> {
    let ctx = api.0.clone();
    let id = record_id(&record)?;
    let stored = ctx.get_record(&id).map_err(|e| ctx.fail(&e))?;
    let Some(stored) = stored else {
        return Err(format!("ProcessFlexHrUserOnAD: no record with id {id}").into());
    };
    // The fields as the script holds them (it may have adjusted some), else as stored.
    let mut fields = match dynamic_to_json(&record) {
        Ok(Value::Object(o)) => o,
        _ => stored.fields.clone(),
    };
    for key in RESERVED_KEYS {
        fields.remove(key);
    }

    let fail = |reason: String, class: Class| -> Box<EvalAltResult> {
        let at = Utc::now().format("%Y-%m-%d %H:%M:%S UTC");
        let (attempt, max) = (ctx.attempt, ctx.max_attempts);
        let transient = class.is_transient();
        let then = match transient {
            true if attempt < max => format!("will retry (attempt {attempt} of {max}, {at})"),
            true => format!("gave up after {attempt} attempts ({at}); `tripline replay` runs it again"),
            false => format!("not retried ({at}); fix the cause, then `tripline replay` the run"),
        };
        let text = format!("failed to synchronize with Flex HR: {reason}; {then}");
        tracing::warn!(rule = %ctx.rule, record = %id, directory, %reason, transient, "Flex HR synchronization failed.");
        ctx.log("error", &text);
        // A note survives the run's failure; the key makes retries update one comment.
        ctx.note(Write::Comment { id: id.clone(), text: text.clone(), key: Some(ctx.comment_key.clone()) });
        ctx.host_error(format!("ProcessFlexHrUserOnAD: {text}"), class)
    };

    let dir = directory_for(&ctx, directory).map_err(|e| fail(e, Class::Permanent))?;
    wait_for_earlier_manager_ticket(&ctx, &stored, &fields).map_err(|e| fail(e.to_string(), e.class()))?;
    // The seed's first step is the bind: an unreachable server or a refused bind is reported
    // as such, before any lookup.
    // Bounded by the run's deadline like every host call; a sync cut short is completed by the
    // retry (it is idempotent), and the ticket says why it waits.
    let result = ctx
        .within_deadline(&format!("ProcessFlexHrUserOnAD on directory {directory}"), async {
            dir.connect().await?;
            dir.sync_flexhr_user_with(&fields, &options).await
        })
        .map_err(|e| {
            let (reason, class) = host_error_parts(&e);
            fail(reason, class)
        })?;
    let planned = dir.take_planned_changes();
    let outcome = result.map_err(|e| fail(format!("directory {directory}: {e}"), e.class()))?;
    for change in &planned {
        ctx.plan(format!("dry run, directory {directory}: {change}"));
    }

    let close = outcome.dry_run || outcome.is_complete();
    let text =
        if outcome.dry_run { dry_run_comment(&outcome, &planned, directory, ctx.dry_run) } else { comment(&outcome) };
    match (outcome.dry_run, close) {
        (true, _) => ctx.log("info", "dry run: closing the ticket with the planned changes"),
        (false, true) => ctx.log("info", &format!("closing the ticket: {text}")),
        (false, false) => ctx.log("warn", &format!("the ticket stays open: {text}")),
    }
    if close {
        ctx.write(Write::Close { id: id.clone(), text: Some(text) });
    } else {
        ctx.write(Write::Comment { id: id.clone(), text, key: None });
    }

    let mut result = match serde_json::to_value(&outcome) {
        Ok(Value::Object(o)) => crate::script::json_map_to_rhai(&o),
        _ => Map::new(),
    };
    result.insert("manager".into(), json_to_dynamic(&manager_json(&outcome.manager)));
    result
        .insert("planned".into(), Dynamic::from_array(planned.iter().map(|p| Dynamic::from(p.to_string())).collect()));
    result.insert("closed".into(), Dynamic::from_bool(close));
    Ok(result)
}

/// `api.ProcessFlexHrUserOnAD(record, directory, #{ mode: "update_only" })`: the call's
/// options over the directory's settings ([`SyncOptions`]). An unknown key or mode fails the
/// run for good, naming it, before the ticket or the directory is touched.
fn process_flexhr_user_with_options(api: &mut Api, record: Dynamic, directory: &str, options: Map) -> Res<Map> {
    let parsed = match dynamic_to_json(&Dynamic::from_map(options)) {
        Ok(Value::Object(o)) => SyncOptions::from_json(&o),
        Ok(_) => unreachable!("a map is an object"),
        Err(e) => Err(DirectoryError::InvalidInput(format!("the options: {e}"))),
    };
    let options = parsed.map_err(|e| api.0.host_error(format!("ProcessFlexHrUserOnAD: {e}"), Class::Permanent))?;
    process_flexhr_user(api, record, directory, options)
}

/// Tickets run concurrently, one record each, so a job that opens a ticket for a manager and
/// then one for their report may see the report's run start first. When the record names a
/// manager who has an *earlier* open ticket of the same entity still being processed (an
/// unfinished event ahead of this ticket's in the queue, or a run waiting for a retry; an
/// event queued after this ticket's is not the manager's creation), this waits for that
/// ticket, polling the store, until it is done or the run's deadline is near; the manager is
/// then looked up as it would be had the tickets run one after the other. Only earlier
/// tickets are waited for, so two tickets naming each other never wait on each other. A dry
/// run does not wait: it changes nothing for the manager's run to provide.
fn wait_for_earlier_manager_ticket(ctx: &RunCtx, ticket: &Record, fields: &Fields) -> Result<(), StoreError> {
    const POLL: Duration = Duration::from_millis(20);
    /// Left of the run's time for the sync itself after waiting.
    const KEEP: Duration = Duration::from_secs(1);
    let text = |key: &str| fields.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
    let Some(manager) = text("ManagerEmployeeId") else { return Ok(()) };
    if ctx.dry_run || text("EmployeeId") == Some(manager) {
        return Ok(());
    }
    let criteria: Fields = [("EmployeeId".to_string(), Value::from(manager))].into_iter().collect();
    // Only tickets with work ahead of this one's are read (not every ticket of the entity,
    // which would make each run cost more as the store grows).
    let earlier: Vec<Record> = ctx
        .store
        .find_busy_before(&ticket.entity, &criteria, &ticket.id, 16)?
        .into_iter()
        .filter(|r| r.status == Status::Open && (r.created_at, &r.id) < (ticket.created_at, &ticket.id))
        .collect();
    for other in &earlier {
        while ctx.store.record_busy(&other.id)? {
            if ctx.deadline.saturating_duration_since(Instant::now()) <= KEEP + POLL {
                tracing::info!(record = %ticket.id, manager_ticket = %other.id, "Stopped waiting for the manager's ticket: the run's time is nearly up.");
                return Ok(());
            }
            std::thread::sleep(POLL);
        }
    }
    Ok(())
}

/// The message and class a host call's script error carries.
fn host_error_parts(e: &EvalAltResult) -> (String, Class) {
    match e {
        EvalAltResult::ErrorRuntime(value, _) => match value.read_lock::<HostError>() {
            Some(host) => (host.message.clone(), host.class),
            None => (value.to_string(), Class::Permanent),
        },
        other => (other.to_string(), Class::Permanent),
    }
}

/// The manager outcome as scripts see it: `#{status: "resolved", employee_id, dn}`,
/// `#{status: "unresolved", employee_id}` or `#{status: "not_given"}`.
fn manager_json(m: &ManagerOutcome) -> Value {
    serde_json::to_value(m).unwrap_or(Value::Null)
}

/// The ticket comment of a sync that ran against the directory.
fn comment(o: &SyncOutcome) -> String {
    let mut s = String::from("synchronized with Flex HR: ");
    match o.status {
        SyncStatus::Created => s.push_str(&format!("created user {} ({}) in {}", o.login, o.dn, o.base_dn)),
        SyncStatus::Updated => s.push_str(&format!(
            "updated user {} ({}) in {}; changed: {}",
            o.login,
            o.dn,
            o.base_dn,
            o.changes.join(", ")
        )),
        SyncStatus::Unchanged => {
            s.push_str(&format!("user {} ({}) in {} was already up to date", o.login, o.dn, o.base_dn))
        }
        SyncStatus::Skipped => s.push_str("nothing to do"),
        SyncStatus::NotCreated => s.push_str(&format!(
            "{}; the ticket stays open (create the account by hand, or process the ticket again in another mode)",
            o.decision().unwrap_or_default()
        )),
        SyncStatus::LeftAlone => s.push_str(&o.decision().unwrap_or_default()),
    }
    if o.disabled {
        s.push_str("; account disabled");
    }
    match &o.manager {
        ManagerOutcome::Resolved { dn, .. } => s.push_str(&format!("; manager: {dn}")),
        ManagerOutcome::Unresolved { employee_id } => s.push_str(&format!(
            "; the manager (employee ID {employee_id}) was not found in the directory: \
             the manager must be entered manually before the user is processed in AD; the ticket stays open"
        )),
        ManagerOutcome::NotGiven => {}
    }
    for note in &o.notes {
        s.push_str(&format!("; note: {note}"));
    }
    s
}

/// The ticket comment of a dry run: what would be done.
fn dry_run_comment(o: &SyncOutcome, planned: &[PlannedChange], directory: &str, run_is_dry: bool) -> String {
    let mut s = format!("dry run: nothing was changed in the directory {directory}.\n");
    if planned.is_empty() {
        s.push_str("Synchronizing this Flex HR user would change nothing.\n");
    } else {
        s.push_str("Planned changes:\n");
        for change in planned {
            s.push_str(&format!("- {change}\n"));
        }
    }
    if !o.login.is_empty() {
        s.push_str(&format!("Username {} in {}. ", o.login, o.base_dn));
    }
    if let ManagerOutcome::Unresolved { employee_id } | ManagerOutcome::Resolved { employee_id, .. } = &o.manager {
        s.push_str(&format!("The manager (employee ID {employee_id}) is looked up only when live. "));
    }
    s.push_str("A dry run reads nothing from the directory, so every person looks new");
    if let Some(decision) = o.decision() {
        let then = match o.status {
            SyncStatus::NotCreated => " (a live run would leave the ticket open)",
            _ => "",
        };
        s.push_str(&format!("; {decision}{then}"));
    }
    for note in o.notes.iter().filter(|n| !n.starts_with("IsNewUser was 0")) {
        s.push_str(&format!("; note: {note}"));
    }
    if !run_is_dry {
        s.push_str(&format!(". To apply changes, set dry_run = false in [directories.{directory}]"));
    }
    s.push('.');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: SyncStatus) -> SyncOutcome {
        SyncOutcome {
            status,
            dn: "CN=Jane Doe,OU=Staff,DC=example,DC=com".into(),
            login: "jane.doe".into(),
            changes: vec!["title".into(), "department".into()],
            manager: ManagerOutcome::NotGiven,
            disabled: false,
            base_dn: "DC=example,DC=com".into(),
            employee_id: "E7".into(),
            notes: vec![],
            dry_run: false,
            mode: Default::default(),
        }
    }

    #[test]
    fn comments_name_the_base_dn_and_the_username() {
        let c = comment(&outcome(SyncStatus::Created));
        assert_eq!(
            c,
            "synchronized with Flex HR: created user jane.doe (CN=Jane Doe,OU=Staff,DC=example,DC=com) in DC=example,DC=com"
        );
        let mut o = outcome(SyncStatus::Updated);
        o.disabled = true;
        o.manager = ManagerOutcome::Unresolved { employee_id: "E9".into() };
        let c = comment(&o);
        assert!(c.contains("changed: title, department; account disabled"), "{c}");
        assert!(c.contains("must be entered manually before the user is processed in AD"), "{c}");
    }

    #[test]
    fn dry_run_comments_list_the_planned_changes() {
        let mut o = outcome(SyncStatus::Created);
        o.dry_run = true;
        o.manager = ManagerOutcome::Unresolved { employee_id: "E1".into() };
        o.notes = vec!["IsNewUser was 0 but no account had employee ID E7: created one".into()];
        let planned = vec![PlannedChange {
            operation: "create_user".into(),
            target: o.dn.clone(),
            attributes: Default::default(),
            description: "would create CN=Jane Doe,OU=Staff,DC=example,DC=com with attributes sn: Doe".into(),
        }];
        let c = dry_run_comment(&o, &planned, "ActiveDirectory", false);
        assert!(
            c.starts_with(
                "dry run: nothing was changed in the directory ActiveDirectory.\nPlanned changes:\n- would create CN=Jane Doe"
            ),
            "{c}"
        );
        assert!(c.contains("Username jane.doe in DC=example,DC=com"), "{c}");
        assert!(c.contains("employee ID E1") && !c.contains("IsNewUser"), "{c}");
        assert!(c.ends_with("set dry_run = false in [directories.ActiveDirectory]."), "{c}");
        assert!(!dry_run_comment(&o, &planned, "ActiveDirectory", true).contains("set dry_run"));
    }
}
