//! The seed's function, `api.ProcessFlexHrUserOnAD(record, directory)`: a Flex HR user's
//! ticket made true in a directory, and the ticket told how that went.
//!
//! The work itself is [`crate::directory::Directory::sync_flexhr_user`]; this file binds it to the run (its
//! deadline, its notes that survive a failure, its writes) and words the ticket's comments.

use std::time::{Duration, Instant};

use chrono::Utc;
use rhai::plugin::*;
use rhai::{Dynamic, Engine, EvalAltResult, Map};
use serde_json::Value;

use super::{record_id, Api, Res, RunCtx};
use crate::class::{Class, Classify};
use crate::directory::{DirectoryError, ManagerOutcome, PlannedChange, SyncOptions, SyncOutcome, SyncStatus, UserId};
use crate::record::{Fields, Record, Status, RESERVED_KEYS};
use crate::script::{dynamic_to_json, json_to_dynamic, HostError};
use crate::store::{StoreError, Write};

/// Registers `api.ProcessFlexHrUserOnAD`.
pub(super) fn register(engine: &mut Engine) {
    engine.register_global_module(exported_module!(functions).into());
}

#[export_module]
mod functions {
    use rhai::{Dynamic, Map};

    use crate::script::api::{Api, RhaiResultOf};

    /// The seed's function: makes the directory `directory` match the Flex HR user on the
    /// ticket `record` (binds, finds the user by employeeID, creates or updates it, disables a
    /// leaver, sets the manager), then closes the ticket with a comment naming the user and the
    /// base DN, or comments why it stays open. A failure that may pass (bind refused, server
    /// down) is commented on the ticket and retried. Returns `#{status, dn, sAMAccountName,
    /// changes, manager, disabled, notes, dry_run, base_dn, planned, closed}`.
    #[rhai_fn(name = "ProcessFlexHrUserOnAD", pure, return_raw)]
    pub fn process_flexhr_user_on_ad(api: &mut Api, record: Dynamic, directory: &str) -> RhaiResultOf<Map> {
        super::process_flexhr_user(api, record, directory, super::SyncOptions::default())
    }

    /// The same with the call's options over the directory's settings: `#{ mode:
    /// "create_and_update" | "create_only" | "update_only" }`. An unknown key or mode fails
    /// the run for good, naming it, before the ticket or the directory is touched.
    #[rhai_fn(name = "ProcessFlexHrUserOnAD", pure, return_raw)]
    pub fn process_flexhr_user_on_ad_with(
        api: &mut Api,
        record: Dynamic,
        directory: &str,
        options: Map,
    ) -> RhaiResultOf<Map> {
        super::process_flexhr_user_with_options(api, record, directory, options)
    }
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

    let dir = super::directory::directory_for(&ctx, directory).map_err(|e| fail(e, Class::Permanent))?;
    // The seed's first step is the bind: an unreachable server or a refused bind is reported
    // as such, before any lookup.
    // Bounded by the run's deadline like every host call; a sync cut short is completed by the
    // retry (it is idempotent), and the ticket says why it waits.
    let cut_short = |e: Box<EvalAltResult>| {
        let (reason, class) = host_error_parts(&e);
        fail(reason, class)
    };
    let what = format!("ProcessFlexHrUserOnAD on directory {directory}");
    // A manager the directory has already needs no waiting for their ticket (see
    // `wait_for_earlier_manager_ticket`).
    if let Some(manager) = manager_to_wait_for(&ctx, &fields) {
        let id = UserId::EmployeeId(manager.to_string());
        let has_manager = ctx
            .within_deadline(&what, async {
                dir.connect().await?;
                dir.user_exists(&id).await
            })
            .map_err(&cut_short)?
            .map_err(|e| fail(format!("directory {directory}: {e}"), e.class()))?;
        if !has_manager {
            wait_for_earlier_manager_ticket(&ctx, &stored, manager).map_err(|e| fail(e.to_string(), e.class()))?;
        }
    }
    let result = ctx
        .within_deadline(&what, async {
            dir.connect().await?;
            dir.sync_flexhr_user_with(&fields, &options).await
        })
        .map_err(&cut_short)?;
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
/// options over the directory's settings ([`SyncOptions`]).
fn process_flexhr_user_with_options(api: &mut Api, record: Dynamic, directory: &str, options: Map) -> Res<Map> {
    let parsed = match dynamic_to_json(&Dynamic::from_map(options)) {
        Ok(Value::Object(o)) => SyncOptions::from_json(&o),
        Ok(_) => unreachable!("a map is an object"),
        Err(e) => Err(DirectoryError::InvalidInput(format!("the options: {e}"))),
    };
    let options = parsed.map_err(|e| api.0.host_error(format!("ProcessFlexHrUserOnAD: {e}"), Class::Permanent))?;
    process_flexhr_user(api, record, directory, options)
}

/// The manager whose earlier ticket a run may wait for ([`wait_for_earlier_manager_ticket`]):
/// the one the record names, unless it names the person themself or the run is a dry run.
fn manager_to_wait_for<'a>(ctx: &RunCtx, fields: &'a Fields) -> Option<&'a str> {
    let text = |key: &str| fields.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
    let manager = text("ManagerEmployeeId")?;
    (!ctx.dry_run && text("EmployeeId") != Some(manager)).then_some(manager)
}

/// Tickets run concurrently, one record each, so a job that opens a ticket for a manager and
/// then one for their report may see the report's run start first. When the record names a
/// manager who has an *earlier* open ticket of the same entity still being processed (an
/// unfinished event ahead of this ticket's in the queue, or a run waiting for a retry; an
/// event queued after this ticket's is not the manager's creation), this waits for that
/// ticket, polling the store, until it is done or the run's deadline is near; the manager is
/// then looked up as it would be had the tickets run one after the other. Only earlier
/// tickets are waited for, so two tickets naming each other never wait on each other. A dry
/// run does not wait: it changes nothing for the manager's run to provide. Nor does a run
/// whose manager the directory has already (the usual case, looked up first: one batched
/// look-up costs less than reading the tickets in flight ahead of this one).
fn wait_for_earlier_manager_ticket(ctx: &RunCtx, ticket: &Record, manager: &str) -> Result<(), StoreError> {
    const POLL: Duration = Duration::from_millis(20);
    /// Left of the run's time for the sync itself after waiting.
    const KEEP: Duration = Duration::from_secs(1);
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
