//! The host object `api` that scripts call, and the context of one run behind it.
//!
//! Records and tickets: `api.create`, `api.update`, `api.find`, `api.get`, `api.comment`,
//! `api.close`. Logging: `api.log` / `api.info` / `api.warn` / `api.error` (and `print`), lines
//! attached to the run. Time: `api.now()`, `api.days_ago(n)`, ... State: `api.state_get` /
//! `api.state_set`, a key-value store per job or rule that survives restarts (watermarks).
//!
//! A run's writes are buffered in its [`RunCtx`] and committed with the run in one
//! transaction, so a failed run writes nothing half-way and a dry run writes nothing at all.
//! Reads within a run see the run's own buffered writes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rhai::{Array, Dynamic, Engine, EvalAltResult, Map};
use serde_json::Value;

use super::{dynamic_to_json, json_to_dynamic, record_to_map, HostError};
use crate::class::{Class, Classify};
use crate::record::{Fields, Record, Status, RESERVED_KEYS};
use crate::store::{LogLine, Store, StoreError, Write};

pub mod connection;
pub mod directory;
mod notify;

/// The host systems scripts reach through `api`: directories, connections, and the async
/// runtime their calls run on.
#[derive(Default)]
pub struct Hosts {
    /// The tokio runtime that drives LDAP and HTTP calls. Scripts run on blocking threads
    /// and wait on it (`block_on`); `None` when no host area needs one (tests, benches).
    pub handle: Option<tokio::runtime::Handle>,
    /// `[directories.NAME]`, connected lazily and shared by every run.
    pub directories: BTreeMap<String, Arc<crate::directory::Directory>>,
    /// The same directories in dry-run mode, for `tripline test`: they record the changes
    /// they would make.
    pub dry_directories: BTreeMap<String, Arc<crate::directory::Directory>>,
    /// `[connections.NAME]`.
    pub connections: BTreeMap<String, Arc<crate::connection::Connection>>,
    /// Connections configured but not usable now, with the reason (a secret that is not
    /// set, for a command that defers secrets): the runs that use them fail with it.
    pub unavailable_connections: BTreeMap<String, String>,
    /// The `[notify.NAME]` channels (`api.notify`).
    pub notifier: crate::notification::Notifier,
}

impl Hosts {
    /// Waits for a host call. Must be called from a blocking thread (scripts run on one).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> Result<F::Output, String> {
        match &self.handle {
            Some(h) => Ok(h.block_on(f)),
            None => Err("no async runtime is available to this runtime's host calls".into()),
        }
    }
}

/// The context of one run: where its log lines and writes go.
pub struct RunCtx {
    pub store: Arc<dyn Store>,
    pub hosts: Arc<Hosts>,
    /// The rule's (or job's) name.
    pub rule: String,
    /// The namespace of `api.state_get` / `state_set`.
    pub state_namespace: String,
    /// `tripline test`: nothing is written and host systems are not changed.
    pub dry_run: bool,
    /// The wall-clock limit of the run.
    pub deadline: Instant,
    /// The key of comments that must stay single across retries of this run.
    pub comment_key: String,
    /// Which attempt this run is (1 for the first; retries of a transient failure count up).
    pub attempt: u32,
    /// The attempt after which a transient failure is no longer retried (`dead`).
    pub max_attempts: u32,
    /// A record that exists for this run only: the record of a dry run's event, which is
    /// never stored.
    pub unstored: Option<Record>,
    /// `[limits] max_run_bytes`: what this run may hold (see [`RunCtx::over_budget`]).
    pub max_run_bytes: usize,
    log: Mutex<Vec<LogLine>>,
    /// What a dry run would have done to host systems (directory changes, requests not
    /// sent), one line each, for `tripline test`.
    planned: Mutex<Vec<String>>,
    writes: Mutex<Vec<Write>>,
    notes: Mutex<Vec<Write>>,
    /// Bytes of the log lines and writes buffered so far.
    held: AtomicUsize,
    /// The thread's allocation count when the script started (see [`crate::memory`]).
    mem_start: AtomicI64,
    /// Non-idempotent requests sent so far (their idempotency keys count them).
    unsafe_calls: std::sync::atomic::AtomicU64,
    /// Tells this run from every other (see [`RunCtx::idempotency_scope`]).
    nonce: uuid::Uuid,
}

/// Most records `api.find` returns.
const FIND_LIMIT: usize = 10_000;

impl RunCtx {
    pub fn new(store: Arc<dyn Store>, hosts: Arc<Hosts>, rule: &str, deadline: Instant, dry_run: bool) -> RunCtx {
        RunCtx {
            store,
            hosts,
            rule: rule.to_string(),
            state_namespace: format!("rule:{rule}"),
            dry_run,
            deadline,
            comment_key: format!("rule:{rule}"),
            attempt: 1,
            max_attempts: 1,
            unstored: None,
            log: Mutex::default(),
            planned: Mutex::default(),
            writes: Mutex::default(),
            notes: Mutex::default(),
            max_run_bytes: crate::config::LimitsConfig::default().max_run_bytes,
            held: AtomicUsize::new(0),
            mem_start: AtomicI64::new(crate::memory::thread_bytes()),
            unsafe_calls: Default::default(),
            nonce: uuid::Uuid::now_v7(),
        }
    }

    /// What stays the same across every attempt of this run and differs from every other
    /// run: the idempotency keys of its requests derive from it. A rule's run on an event
    /// (`comment_key` `event:ID:rule:NAME`) is retried and replayed as the same run, so the
    /// event and rule are the scope; any other run (a job's, whose next tick is a new run)
    /// is its own scope.
    pub fn idempotency_scope(&self) -> String {
        if self.comment_key.starts_with("event:") {
            self.comment_key.clone()
        } else {
            format!("{}:run:{}", self.comment_key, self.nonce)
        }
    }

    /// The sequence number (from 1) of the next non-idempotent request this run sends: with
    /// [`RunCtx::idempotency_scope`], it names the request the same way on every attempt.
    pub fn next_unsafe_call(&self) -> u64 {
        self.unsafe_calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    /// Appends a line to the run's log (secrets redacted). A line that would take the run
    /// over its budget is not kept; the script stops at its next operation.
    pub fn log(&self, level: &str, message: &str) {
        if !self.hold(message.len() + 64) {
            return;
        }
        let message = crate::config::secret::redact(message).into_owned();
        lock(&self.log).push(LogLine { level: level.to_string(), message, at: Utc::now() });
    }

    /// A script value as the text of a log line or a message: a string as it is, another value
    /// as Rhai prints it, bounded by what the run may still hold (see
    /// [`crate::script::value_text`]); a text that would not fit fails the call, naming the
    /// limit.
    pub fn text_of(&self, value: &Dynamic) -> Result<String, Box<EvalAltResult>> {
        if let Some(s) = value.read_lock::<rhai::ImmutableString>() {
            return Ok(s.to_string());
        }
        let room = self.max_run_bytes.saturating_sub(self.held.load(Ordering::Relaxed));
        crate::script::value_text(value, false, room).ok_or_else(|| {
            format!(
                "the text of this {} is larger than the run may hold ([limits] max_run_bytes = {} bytes)",
                value.type_name(),
                self.max_run_bytes
            )
            .into()
        })
    }

    /// Counts `bytes` against the run's budget; false when the run is over it.
    fn hold(&self, bytes: usize) -> bool {
        self.held.fetch_add(bytes, Ordering::Relaxed).saturating_add(bytes) <= self.max_run_bytes
    }

    /// Marks the start of the script on this thread: what the thread allocates from now on is
    /// the run's.
    pub fn start_on_this_thread(&self) {
        self.mem_start.store(crate::memory::thread_bytes(), Ordering::Relaxed);
    }

    /// Whether the run holds more than `[limits] max_run_bytes`: its log lines and buffered
    /// writes, or (with the counting allocator) everything its thread allocated since the
    /// script started and still holds.
    pub fn over_budget(&self) -> bool {
        let max = self.max_run_bytes;
        let allocated = crate::memory::thread_bytes().saturating_sub(self.mem_start.load(Ordering::Relaxed));
        self.held.load(Ordering::Relaxed) > max || allocated > max as i64
    }

    /// The log so far.
    pub fn log_lines(&self) -> Vec<LogLine> {
        lock(&self.log).clone()
    }

    /// Notes what a dry run would do to a host system (and logs it): `tripline test` lists
    /// these with the planned writes.
    pub fn plan(&self, line: String) {
        self.log("info", &line);
        if self.hold(line.len() + 32) {
            lock(&self.planned).push(crate::config::secret::redact(&line).into_owned());
        }
    }

    /// What the run planned so far (see [`RunCtx::plan`]).
    pub fn planned(&self) -> Vec<String> {
        lock(&self.planned).clone()
    }

    /// Buffers a write, committed with the run when it succeeds. Its bytes count against the
    /// run's budget: a run over it stops at its next operation.
    pub fn write(&self, w: Write) {
        self.hold(w.approx_bytes());
        lock(&self.writes).push(w);
    }

    /// Buffers a write that is committed even when the run fails: the comment that tells the
    /// ticket's owner why synchronisation failed must survive the failure it describes.
    pub fn note(&self, w: Write) {
        self.hold(w.approx_bytes());
        lock(&self.notes).push(w);
    }

    /// The buffered writes and notes, taken out.
    pub fn take_writes(&self) -> (Vec<Write>, Vec<Write>) {
        (std::mem::take(&mut *lock(&self.writes)), std::mem::take(&mut *lock(&self.notes)))
    }

    /// The writes buffered so far (for `tripline test`).
    pub fn writes(&self) -> Vec<Write> {
        lock(&self.writes).clone()
    }

    /// A script error from a host call, of `class` (a transient one makes the run retry
    /// unless the script catches it), secrets redacted.
    pub fn host_error(&self, message: impl Into<String>, class: Class) -> Box<EvalAltResult> {
        let message = crate::config::secret::redact(&message.into()).into_owned();
        HostError { message, class }.raise()
    }

    /// Waits for a host call (LDAP, HTTP, a notification), at most until the run's deadline
    /// (`[limits] timeout_ms`); `what` names the call in the error. A call whose deadline has
    /// passed is not started at all. Every host call of a run goes through here, so that no
    /// run outlives its deadline, and so its claim on the event.
    pub fn within_deadline<F: std::future::Future>(
        &self,
        what: &str,
        call: F,
    ) -> Result<F::Output, Box<EvalAltResult>> {
        let over = || {
            self.host_error(
                format!("{what} did not finish within the run's time limit ([limits] timeout_ms)"),
                Class::Transient,
            )
        };
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(over());
        }
        // The timer is made inside the executor: tokio's timers need its context.
        match self.hosts.block_on(async move { tokio::time::timeout(left, call).await }) {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(_elapsed)) => Err(over()),
            Err(no_runtime) => Err(self.host_error(no_runtime, Class::Permanent)),
        }
    }

    /// A script error from a subsystem's error, of the error's own class.
    pub fn fail<E: Classify + std::fmt::Display>(&self, e: &E) -> Box<EvalAltResult> {
        self.host_error(e.to_string(), e.class())
    }

    /// A record as this run sees it: the store's version with the run's own writes applied.
    pub fn get_record(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let writes = lock(&self.writes);
        let created = writes.iter().find_map(|w| match w {
            Write::Create(r) if r.id == id => Some(r.clone()),
            _ => None,
        });
        let base = match (created, &self.unstored) {
            (Some(r), _) => Some(r),
            (None, Some(r)) if r.id == id => Some(r.clone()),
            (None, _) => self.store.get_record(id)?,
        };
        Ok(base.map(|r| overlay(r, writes.iter().filter(|w| write_target(w) == Some(id)))))
    }

    /// Records of an entity matching every criterion, as this run sees them.
    pub fn find(&self, entity: &str, criteria: &Fields) -> Result<Vec<Record>, StoreError> {
        let stored = self.store.find_records(entity, criteria, FIND_LIMIT)?;
        let writes = lock(&self.writes);
        // The run's writes by record, so that each record is overlaid with its own writes only
        // (a job that creates thousands of records and looks them up stays linear).
        let mut by_id: std::collections::HashMap<&str, Vec<&Write>> = std::collections::HashMap::new();
        for w in writes.iter() {
            if let Some(id) = write_target(w) {
                by_id.entry(id).or_default().push(w);
            }
        }
        let own = |r: Record| {
            let ws = by_id.get(r.id.as_str()).map(Vec::as_slice).unwrap_or_default();
            overlay(r, ws.iter().copied())
        };
        let mut seen: std::collections::HashSet<String> = stored.iter().map(|r| r.id.clone()).collect();
        let mut out: Vec<Record> = stored.into_iter().map(own).collect();
        for w in writes.iter() {
            match w {
                Write::Create(r) => {
                    seen.insert(r.id.clone());
                    // Only a record the run changed after creating it needs the overlay to decide.
                    let changed_since = by_id.get(r.id.as_str()).is_some_and(|ws| ws.len() > 1);
                    if r.entity == entity && (changed_since || r.matches(criteria)) {
                        out.push(own(r.clone()));
                    }
                }
                // A stored record the store's query did not return may match once the run's own
                // changes to the criteria's fields are applied.
                Write::Update { id, fields } if !seen.contains(id) && touches(criteria, fields.keys()) => {
                    seen.insert(id.clone());
                    if let Some(r) = self.store.get_record(id)?.filter(|r| r.entity == entity) {
                        out.push(own(r));
                    }
                }
                Write::Close { id, .. } if !seen.contains(id) && criteria.contains_key("status") => {
                    seen.insert(id.clone());
                    if let Some(r) = self.store.get_record(id)?.filter(|r| r.entity == entity) {
                        out.push(own(r));
                    }
                }
                _ => {}
            }
        }
        out.retain(|r| r.matches(criteria));
        Ok(out)
    }
}

/// Whether fields named `changed` include one a criterion reads (its first dotted segment).
fn touches<'a>(criteria: &Fields, mut changed: impl Iterator<Item = &'a String>) -> bool {
    changed.any(|f| criteria.keys().any(|k| k.split('.').next() == Some(f.as_str())))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The record a write is about.
fn write_target(w: &Write) -> Option<&str> {
    match w {
        Write::Create(r) => Some(&r.id),
        Write::Update { id, .. } | Write::Comment { id, .. } | Write::Close { id, .. } => Some(id),
        Write::SetState { .. } => None,
    }
}

/// A record with a run's writes to it applied, in order.
fn overlay<'w>(mut r: Record, writes: impl IntoIterator<Item = &'w Write>) -> Record {
    for w in writes {
        match w {
            Write::Update { id, fields } if *id == r.id => {
                for (k, v) in fields {
                    r.fields.insert(k.clone(), v.clone());
                }
            }
            Write::Close { id, text } if *id == r.id => {
                r.status = Status::Closed;
                if let Some(t) = text {
                    r.comments.push(crate::record::Comment { text: t.clone(), at: Utc::now() });
                }
            }
            Write::Comment { id, text, .. } if *id == r.id => {
                r.comments.push(crate::record::Comment { text: text.clone(), at: Utc::now() })
            }
            _ => {}
        }
    }
    r
}

/// The `api` object in a script's scope.
#[derive(Clone)]
pub struct Api(pub Arc<RunCtx>);

impl Api {
    pub fn dynamic(ctx: Arc<RunCtx>) -> Dynamic {
        Dynamic::from(Api(ctx))
    }

    /// The run's context, for host functions registered by embedders.
    pub fn ctx(&self) -> &RunCtx {
        &self.0
    }
}

type Res<T> = Result<T, Box<EvalAltResult>>;

/// The id of a record given as a record map or as an id string.
pub fn record_id(record: &Dynamic) -> Res<String> {
    if let Some(m) = record.read_lock::<Map>() {
        return match m.get("id").and_then(|v| v.clone().into_immutable_string().ok()) {
            Some(id) => Ok(id.to_string()),
            None => Err("expected a record (a map with an `id`)".into()),
        };
    }
    record
        .clone()
        .into_immutable_string()
        .map(|s| s.to_string())
        .map_err(|t| format!("expected a record or a record id, not {t}").into())
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

fn existing(api: &Api, id: &str) -> Res<Record> {
    api.0.get_record(id).map_err(|e| api.0.fail(&e))?.ok_or_else(|| format!("no record with id {id}").into())
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

/// Registers `api`'s functions on the engine.
pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<Api>("Api");
    directory::register(engine);
    connection::register(engine);
    notify::register(engine);

    engine.register_fn("create", |api: &mut Api, entity: &str, fields: Map| -> Res<Map> {
        if entity.trim().is_empty() {
            return Err("api.create needs an entity name".into());
        }
        let record = Record::new(entity, fields_of(fields)?);
        let map = record_to_map(&record);
        api.0.write(Write::Create(record));
        Ok(map)
    });
    engine.register_fn("update", |api: &mut Api, record: Dynamic, fields: Map| -> Res<Map> {
        let id = record_id(&record)?;
        existing(api, &id)?;
        api.0.write(Write::Update { id: id.clone(), fields: fields_of(fields)? });
        Ok(record_to_map(&existing(api, &id)?))
    });
    engine.register_fn("find", |api: &mut Api, entity: &str, criteria: Map| -> Res<Array> {
        let criteria =
            match dynamic_to_json(&Dynamic::from_map(criteria)).map_err(|e| -> Box<EvalAltResult> { e.into() })? {
                Value::Object(o) => o,
                _ => unreachable!("a map is an object"),
            };
        let found = api.0.find(entity, &criteria).map_err(|e| api.0.fail(&e))?;
        Ok(found.iter().map(|r| Dynamic::from_map(record_to_map(r))).collect())
    });
    engine.register_fn("get", |api: &mut Api, id: &str| -> Res<Dynamic> {
        Ok(match api.0.get_record(id).map_err(|e| api.0.fail(&e))? {
            Some(r) => Dynamic::from_map(record_to_map(&r)),
            None => Dynamic::UNIT,
        })
    });
    engine.register_fn("comment", |api: &mut Api, record: Dynamic, text: &str| -> Res<()> {
        let id = record_id(&record)?;
        existing(api, &id)?;
        api.0.write(Write::Comment { id, text: text.to_string(), key: None });
        Ok(())
    });
    engine.register_fn("close", |api: &mut Api, record: Dynamic, text: &str| -> Res<()> {
        let id = record_id(&record)?;
        existing(api, &id)?;
        api.0.write(Write::Close { id, text: Some(text.to_string()) });
        Ok(())
    });
    engine.register_fn("close", |api: &mut Api, record: Dynamic| -> Res<()> {
        let id = record_id(&record)?;
        existing(api, &id)?;
        api.0.write(Write::Close { id, text: None });
        Ok(())
    });

    for (name, level) in [("info", "info"), ("warn", "warn"), ("error", "error"), ("log", "info")] {
        engine.register_fn(name, move |api: &mut Api, msg: Dynamic| -> Res<()> {
            api.0.log(level, &api.0.text_of(&msg)?);
            Ok(())
        });
    }
    // A script's own "not now": the run goes to `retrying` and runs again after a backoff
    // (e.g. a record waits for data another system has not delivered yet).
    engine.register_fn("retry_later", |api: &mut Api, reason: &str| -> Res<()> {
        Err(api.0.host_error(reason, Class::Transient))
    });

    engine.register_fn("now", |_: &mut Api| ts(Utc::now()));
    engine.register_fn("now_unix", |_: &mut Api| Utc::now().timestamp());
    // Every time helper is total: out-of-range input is a script error, never a panic.
    engine.register_fn("days_ago", |_: &mut Api, n: i64| ago(n, "days", Duration::try_days));
    engine.register_fn("hours_ago", |_: &mut Api, n: i64| ago(n, "hours", Duration::try_hours));
    engine.register_fn("minutes_ago", |_: &mut Api, n: i64| ago(n, "minutes", Duration::try_minutes));
    engine.register_fn("parse_time", |_: &mut Api, s: &str| -> Res<i64> {
        DateTime::parse_from_rfc3339(s).map(|t| t.timestamp()).map_err(|e| {
            let shown: String = s.chars().take(64).collect();
            format!("not an RFC 3339 time {shown:?}: {e}").into()
        })
    });
    engine.register_fn("format_time", |_: &mut Api, unix: i64| -> Res<String> {
        DateTime::from_timestamp(unix, 0).map(ts).ok_or_else(|| format!("{unix} is out of range").into())
    });

    engine.register_fn("state_get", |api: &mut Api, key: &str| -> Res<Dynamic> {
        let pending = lock(&api.0.writes).iter().rev().find_map(|w| match w {
            Write::SetState { namespace, key: k, value } if *namespace == api.0.state_namespace && k == key => {
                Some(value.clone())
            }
            _ => None,
        });
        let value = match pending {
            Some(v) => Some(v),
            None => api.0.store.kv_get(&api.0.state_namespace, key).map_err(|e| api.0.fail(&e))?,
        };
        Ok(value.as_ref().map_or(Dynamic::UNIT, json_to_dynamic))
    });
    engine.register_fn("state_set", |api: &mut Api, key: &str, value: Dynamic| -> Res<()> {
        let value = dynamic_to_json(&value).map_err(|e| -> Box<EvalAltResult> { e.into() })?;
        api.0.write(Write::SetState { namespace: api.0.state_namespace.clone(), key: key.to_string(), value });
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    fn ctx() -> RunCtx {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        RunCtx::new(store, Arc::new(Hosts::default()), "r", Instant::now() + std::time::Duration::from_secs(5), false)
    }

    fn fields(v: Value) -> Fields {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn reads_see_the_runs_own_writes() {
        let ctx = ctx();
        let a = Record::new("user", fields(serde_json::json!({"Id": 1, "Dept": "IT"})));
        let b = Record::new("user", fields(serde_json::json!({"Id": 2, "Dept": "HR"})));
        ctx.write(Write::Create(a.clone()));
        ctx.write(Write::Create(b.clone()));
        ctx.write(Write::Update { id: b.id.clone(), fields: fields(serde_json::json!({"Dept": "IT"})) });
        ctx.write(Write::Close { id: a.id.clone(), text: Some("done".into()) });
        let it = ctx.find("user", &fields(serde_json::json!({"Dept": "IT"}))).unwrap();
        assert_eq!(it.len(), 2, "b moved to IT within the run");
        let open = ctx.find("user", &fields(serde_json::json!({"status": "open"}))).unwrap();
        assert_eq!(open.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), [b.id.as_str()]);
        assert_eq!(ctx.find("user", &fields(serde_json::json!({"Dept": "HR"}))).unwrap().len(), 0);
        let got = ctx.get_record(&a.id).unwrap().unwrap();
        assert_eq!((got.status, got.comments.len()), (Status::Closed, 1));
        assert!(ctx.find("group", &Fields::new()).unwrap().is_empty());
    }

    #[test]
    fn find_sees_stored_records_the_run_changed_to_match() {
        let ctx = ctx();
        let item = |f: Value| crate::store::Ingest {
            entity: "user".into(),
            kind: crate::record::EventKind::Created,
            record: crate::record::Submitted { id: None, status: None, fields: fields(f) },
            idempotency_key: None,
        };
        let stored =
            ctx.store.ingest(&[item(serde_json::json!({"Dept": "HR"})), item(serde_json::json!({"Dept": "HR"}))], None);
        let ids: Vec<String> = stored.unwrap().into_iter().flatten().map(|e| e.record.id).collect();
        ctx.write(Write::Update { id: ids[0].clone(), fields: fields(serde_json::json!({"Dept": "IT"})) });
        ctx.write(Write::Close { id: ids[1].clone(), text: None });
        let it = ctx.find("user", &fields(serde_json::json!({"Dept": "IT"}))).unwrap();
        assert_eq!(it.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), [ids[0].as_str()]);
        assert!(ctx.find("user", &fields(serde_json::json!({"Dept": "IT", "status": "closed"}))).unwrap().is_empty());
        let closed = ctx.find("user", &fields(serde_json::json!({"status": "closed"}))).unwrap();
        assert_eq!(closed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), [ids[1].as_str()]);
        assert!(ctx.find("group", &fields(serde_json::json!({"Dept": "IT"}))).unwrap().is_empty());
    }
}
