//! The host object `api` that scripts call, and the context of one run behind it.
//!
//! One file per area, each a Rhai plugin module (`#[export_module]`) whose doc comments are
//! what `tripline definitions` writes and editors show: [`records`] (`api.create`, `update`,
//! `find`, `get`, `comment`, `close`), [`log`] (`api.info` / `warn` / `error` / `log`,
//! `retry_later`), [`time`] (`api.now()`, `api.days_ago(n)`, ...), [`state`] (`api.state_get` /
//! `state_set`, a key-value store per job or rule that survives restarts), [`directory`]
//! (`api.directory(name)` and its handle), [`flexhr`] (`api.ProcessFlexHrUserOnAD`),
//! [`connection`] (`api.connection(name)` and its handle, `api.sanitize`) and [`notify`].
//!
//! A run's writes are buffered in its [`RunCtx`] and committed with the run in one
//! transaction, so a failed run writes nothing half-way and a dry run writes nothing at all.
//! Reads within a run see the run's own buffered writes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::Utc;
use rhai::{CustomType, Dynamic, Engine, EvalAltResult, Map};

use super::HostError;
use crate::class::{Class, Classify};
use crate::record::{Fields, Record, Status};
use crate::store::{LogLine, Store, StoreError, Write};

pub mod connection;
pub mod directory;
mod flexhr;
mod log;
mod notify;
mod records;
mod state;
mod time;

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
            max_run_bytes: crate::script::LimitsConfig::default().max_run_bytes,
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
        let message = crate::secret::redact(message).into_owned();
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
            lock(&self.planned).push(crate::secret::redact(&line).into_owned());
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
        let message = crate::secret::redact(&message.into()).into_owned();
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

/// The host object: every call a script makes to tripline starts here (`api.create(...)`,
/// `api.directory("AD")`, ...). It is bound to the run: its log, its writes, its deadline and
/// its dry-run mode.
#[derive(Clone, CustomType)]
#[rhai_type(name = "Api")]
pub struct Api(#[rhai_type(skip)] pub Arc<RunCtx>);

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

/// What a fallible host function returns. Plugin modules spell it so: Rhai's definitions and
/// the checks read the `T` out of this name (it is Rhai's own, private, alias).
pub(crate) type RhaiResultOf<T> = Result<T, Box<EvalAltResult>>;

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

/// Registers `api` and its handles on the engine: one plugin module per area (see the module
/// docs of each), the handles as custom types. A host function is added in its area's plugin
/// module, and only there: lint, `tripline definitions` and the README check read the engine's
/// metadata.
pub fn register(engine: &mut Engine) {
    engine.build_type::<Api>();
    records::register(engine);
    log::register(engine);
    time::register(engine);
    state::register(engine);
    directory::register(engine);
    flexhr::register(engine);
    connection::register(engine);
    notify::register(engine);
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

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
