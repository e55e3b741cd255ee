//! The store: records with comments, the event queue, runs with their log lines, and a
//! key-value table (job watermarks, OAuth2 tokens).
//!
//! Everything goes through the [`Store`] trait so that another database can stand behind it
//! without touching rules or scripts; SQLite ([`sqlite::SqliteStore`]) is the embedded default,
//! PostgreSQL ([`postgres::PgStore`], `[store] url`) lets several workers share one store.

pub mod postgres;
pub mod sqlite;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::class::{Class, Classify};
use crate::record::{Event, EventKind, Fields, Record, Status, Submitted};

/// `[engine] max_fanout` when not set: how many events one event from outside may cause.
pub const DEFAULT_MAX_FANOUT: u64 = 10_000;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no record with id {0}")]
    NoRecord(String),
    #[error("record {id} is a {actual}, not a {expected}")]
    WrongEntity { id: String, actual: String, expected: String },
    #[error("a record with id {0} already exists")]
    Exists(String),
    #[error("store: {0}")]
    Db(#[from] rusqlite::Error),
    /// PostgreSQL refused or could not be reached; `transient` when the same work can succeed
    /// later (the server is down or restarting, a serialization failure).
    #[error("store (PostgreSQL): {message}")]
    Postgres { message: String, transient: bool },
    #[error("store: cannot create {0}: {1}")]
    Io(String, std::io::Error),
    #[error("store: corrupt row: {0}")]
    Corrupt(String),
    /// A run of an event committed by a process that no longer holds the event's claim (it
    /// ran out, and another process took the event): the run is not kept, since the other
    /// process runs the event.
    #[error(
        "event {0} is no longer claimed by this process (its claim ran out and another took it): its run is not kept"
    )]
    ClaimLost(i64),
    /// A write the store refuses whatever the state (a value too deep, a chain too wide).
    #[error("{0}")]
    Invalid(String),
    /// The store was migrated by a newer tripline: this one would misread what it does not
    /// know, so it leaves the file alone.
    #[error(
        "store: the store's schema is version {found}, written by a newer tripline (this one knows up to {known}): \
         run that version, or restore a backup made before the upgrade"
    )]
    Newer { found: usize, known: usize },
}

impl Classify for StoreError {
    /// Transient when the database was busy or locked; everything else is permanent.
    fn class(&self) -> Class {
        match self {
            StoreError::Db(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
            {
                Class::Transient
            }
            StoreError::Postgres { transient: true, .. } => Class::Transient,
            _ => Class::Permanent,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How many times an event may be claimed without its processing ending before it is set
/// aside: each such claim is a process that died while running it (or a run that outlived
/// its lease). `tripline replay` of the set-aside run queues it again.
pub const MAX_EVENT_TRIES: u32 = 3;

/// An event [`Store::pending_events`] sets aside rather than returns.
struct Aside {
    id: i64,
    record_id: String,
    /// Why: the set-aside run's error.
    reason: String,
    /// The claims the event must still count when it is set aside: it was read outside the
    /// transaction that sets it aside, and a replay in between starts its count afresh.
    tries: u32,
}

impl Aside {
    /// An event whose row cannot be read.
    fn unreadable(id: i64, record_id: String, error: impl std::fmt::Display) -> Aside {
        Aside { id, record_id, reason: format!("event {id} cannot be read, so it is set aside: {error}"), tries: 0 }
    }

    /// Whether an event is to be set aside for its tries: claimed [`MAX_EVENT_TRIES`]
    /// times with no processing that ended, and not `held` by the caller (an event the
    /// caller holds is its own to run, on its last try).
    fn worn_out(tries: u32, held: bool) -> bool {
        tries >= MAX_EVENT_TRIES && !held
    }

    /// An event set aside for its tries (see [`Aside::worn_out`]).
    fn never_ended(id: i64, record_id: String, tries: u32) -> Aside {
        let reason = format!(
            "event {id} was claimed {tries} times and its processing never ended: running it stopped \
             tripline (or outlived its claim) each time, so it is set aside; fix the cause, then \
             `tripline replay` this run to queue it again"
        );
        Aside { id, record_id, reason, tries: MAX_EVENT_TRIES }
    }
}

/// The refusal of a run whose writes would raise more events than `[engine] max_fanout`.
fn fanout_exceeded(raised: usize, root: i64, total: i64, max: u64) -> StoreError {
    StoreError::Invalid(format!(
        "its writes would raise {raised} more events in the chain of event {root}, {total} in all: more than \
         [engine] max_fanout = {max}; a rule probably creates or updates records that trigger it again"
    ))
}

/// `[store]`: where the store is. Without the section, the SQLite file in `data_dir`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `postgres://user:${PGPASSWORD}@host:5432/db?sslmode=require`.
    pub url: crate::secret::SecretRef,
    /// How many connections one worker opens at most (default 8).
    #[serde(default)]
    pub pool: Option<usize>,
}

impl StoreConfig {
    /// Checks the section; its settings when they are usable.
    pub fn build(&self, ctx: &mut crate::diag::CheckCtx) -> Option<postgres::PgSettings> {
        let url = self.url.require(ctx, "[store] url")?;
        let text = url.expose();
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            ctx.error(
                self.url.span(),
                "[store] url must be a postgres:// URL (without [store], the SQLite file in data_dir is used)",
            );
            return None;
        }
        if let Err(e) = text.parse::<tokio_postgres::Config>() {
            ctx.error(self.url.span(), format!("[store] url: {e}"));
            return None;
        }
        let pool = self.pool.unwrap_or(8);
        if !(2..=256).contains(&pool) {
            ctx.error(self.url.span(), format!("[store] pool = {pool}: between 2 and 256 connections"));
            return None;
        }
        Some(postgres::PgSettings { url, pool })
    }
}

/// Opens the store a configuration names: PostgreSQL with `[store]`, else the SQLite file in
/// `data_dir`.
pub fn open(store: Option<&postgres::PgSettings>, data_dir: &std::path::Path) -> Result<std::sync::Arc<dyn Store>> {
    Ok(match store {
        Some(pg) => std::sync::Arc::new(postgres::PgStore::connect(pg)?),
        None => std::sync::Arc::new(sqlite::SqliteStore::open_dir(data_dir)?),
    })
}

/// What storing an ingested item does to its record: one rule for every store, decided from
/// the item and the stored record it names (see [`plan_ingest`]).
pub(crate) enum Change {
    /// A new record; `fresh` when the store made its id (no earlier event can name it).
    Create { record: Record, fresh: bool },
    /// The stored record goes; the event carries it as it was.
    Delete(Record),
    /// The record with the item's fields and status set; `previous` as it was.
    Update { record: Record, previous: Record },
}

/// How an ingested item changes `existing` (the stored record its id names), or why it
/// cannot: a record of another entity, a creation of an id that exists, an update or a
/// custom event of an id that does not.
pub(crate) fn plan_ingest(item: &Ingest, existing: Option<Record>, now: DateTime<Utc>) -> Result<Change> {
    if let Some(r) = &existing {
        if r.entity != item.entity {
            return Err(StoreError::WrongEntity {
                id: r.id.clone(),
                actual: r.entity.clone(),
                expected: item.entity.clone(),
            });
        }
    }
    match (&item.kind, existing) {
        (EventKind::Created, Some(r)) => Err(StoreError::Exists(r.id)),
        (EventKind::Custom(_), None) if item.record.id.is_some() => {
            Err(StoreError::NoRecord(item.record.id.clone().unwrap_or_default()))
        }
        (EventKind::Created, None) | (EventKind::Custom(_), None) => {
            let mut record = Record::new(&item.entity, item.record.fields.clone());
            if let Some(id) = &item.record.id {
                record.id = id.clone();
            }
            if let Some(s) = item.record.status {
                record.status = s;
            }
            Ok(Change::Create { record, fresh: item.record.id.is_none() })
        }
        (EventKind::Updated, None) | (EventKind::Deleted, None) => {
            Err(StoreError::NoRecord(item.record.id.clone().unwrap_or_else(|| "(none given)".into())))
        }
        (EventKind::Deleted, Some(r)) => Ok(Change::Delete(r)),
        (_, Some(previous)) => {
            let record = changed(&previous, &item.record.fields, item.record.status, now);
            Ok(Change::Update { record, previous })
        }
    }
}

/// `previous` with `fields` set (the others kept), and `status` when given, updated `now`.
pub(crate) fn changed(previous: &Record, fields: &Fields, status: Option<Status>, now: DateTime<Utc>) -> Record {
    let mut r = previous.clone();
    for (k, v) in fields {
        r.fields.insert(k.clone(), v.clone());
    }
    if let Some(s) = status {
        r.status = s;
    }
    r.updated_at = now;
    r
}

/// What [`Store::take_job_tick`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickTaken {
    /// This worker runs the tick (and holds the job until [`Store::end_job_run`]).
    Run,
    /// Another worker took this tick (or a later one) already.
    Taken,
    /// A run of the job by this owner is still going: the tick is skipped (jobs never
    /// overlap), and marked handled.
    Running(String),
}

/// Whether `tick` of a job can be run, given the job's last handled tick and the run that
/// holds it (its owner and lease): the same rule in every store.
pub fn decide_tick(
    last: Option<DateTime<Utc>>,
    runner: Option<&str>,
    run_until: Option<DateTime<Utc>>,
    tick: DateTime<Utc>,
    now: DateTime<Utc>,
) -> TickTaken {
    // Stores keep microseconds: a tick is compared at that precision.
    use chrono::SubsecRound;
    let tick = tick.trunc_subsecs(6);
    if last.is_some_and(|last| last.trunc_subsecs(6) >= tick) {
        return TickTaken::Taken;
    }
    match (runner, run_until) {
        (Some(runner), Some(until)) if until > now => TickTaken::Running(runner.to_string()),
        _ => TickTaken::Run,
    }
}

/// What a worker tells the store at each heartbeat.
#[derive(Debug, Clone)]
pub struct WorkerBeat<'a> {
    /// Its claim owner name.
    pub id: &'a str,
    pub host: &'a str,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    /// Its own figures (runs, failures, queue), shown by the console and `/healthz`.
    pub figures: &'a Value,
}

/// A worker as the store last heard of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Worker {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
    pub figures: Value,
}

/// A lock held across workers (see [`Store::lock`]); released when dropped.
pub struct StoreLock(#[allow(dead_code)] Option<Box<dyn Send>>);

impl StoreLock {
    pub fn new(held: impl Send + 'static) -> StoreLock {
        StoreLock(Some(Box::new(held)))
    }

    /// A lock nobody else can contend for (a store of one process).
    pub fn local() -> StoreLock {
        StoreLock(None)
    }
}

/// An event to store, from outside (CLI, webhook) or from a script's write.
#[derive(Debug, Clone)]
pub struct Ingest {
    pub entity: String,
    pub kind: EventKind,
    pub record: Submitted,
    /// A delivery key: an event with a key already stored is not stored again.
    pub idempotency_key: Option<String>,
}

/// A write a script asked for, applied with its run.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Insert a new record (its id is chosen by the script host).
    Create(Record),
    /// Set fields of a record (other fields are kept).
    Update { id: String, fields: Fields },
    /// Add a comment. With a key, a comment with the same key is replaced instead, so that a
    /// retried run leaves one comment, not one per attempt.
    Comment { id: String, text: String, key: Option<String> },
    /// Close a record, with a comment when given.
    Close { id: String, text: Option<String> },
    /// Set a key of the key-value table.
    SetState { namespace: String, key: String, value: Value },
}

impl Write {
    /// About how many bytes the write holds (its values' JSON size, give or take), for a
    /// run's memory budget.
    pub fn approx_bytes(&self) -> usize {
        64 + match self {
            Write::Create(r) => r.entity.len() + crate::record::approx_json_bytes_of(&r.fields),
            Write::Update { id, fields } => id.len() + crate::record::approx_json_bytes_of(fields),
            Write::Comment { id, text, key } => id.len() + text.len() + key.as_ref().map_or(0, String::len),
            Write::Close { id, text } => id.len() + text.as_ref().map_or(0, String::len),
            Write::SetState { namespace, key, value } => {
                namespace.len() + key.len() + crate::record::approx_json_bytes(value)
            }
        }
    }
}

/// A rule or script file in force, as the store keeps it (`path` relative to its folder).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFile {
    pub kind: FileKind,
    pub path: String,
    pub text: String,
    pub loaded_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Rule,
    Script,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Rule => "rule",
            FileKind::Script => "script",
        }
    }

    pub fn parse(s: &str) -> Option<FileKind> {
        match s {
            "rule" => Some(FileKind::Rule),
            "script" => Some(FileKind::Script),
            _ => None,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Ok,
    Failed,
    /// Failed transiently; scheduled to run again at `next_attempt_at`.
    Retrying,
    /// Failed transiently too many times; `tripline replay` runs it again.
    Dead,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Failed => "failed",
            RunStatus::Retrying => "retrying",
            RunStatus::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        Some(match s {
            "ok" => RunStatus::Ok,
            "failed" => RunStatus::Failed,
            "retrying" => RunStatus::Retrying,
            "dead" => RunStatus::Dead,
            _ => return None,
        })
    }
}

/// A line a script logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub level: String,
    pub message: String,
    pub at: DateTime<Utc>,
}

/// A run of a rule on an event, or of a job. Its JSON form is stable (`tripline runs --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: i64,
    /// The rule's name, or `job:NAME` for a job's run.
    pub rule: String,
    pub record_id: Option<String>,
    pub event_id: Option<i64>,
    /// The event's name (`created`, ...), or `schedule` / `manual` for jobs.
    pub event: String,
    pub status: RunStatus,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub log: Vec<LogLine>,
    pub attempts: u32,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// What the run wrote to the store, a line each as `tripline test` prints them (fields
    /// set, comments, closes, records created): kept with the run for its history (the
    /// console's run page); empty when it wrote nothing or its writes were not kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writes: Vec<String>,
}

/// Which pending events a dispatcher takes (see [`Store::pending_events`]).
#[derive(Debug, Clone, Copy)]
pub enum Feed<'a> {
    /// Only the events this owner claimed (the events a command stored, and what their runs
    /// raised): `tripline fire`, `job run`, `replay`.
    Own(&'a str),
    /// Those, and every event nobody holds a live claim on: the daemon.
    OwnAndUnclaimed(&'a str),
}

/// An event [`Store::pending_events`] offers.
#[derive(Debug, Clone)]
pub struct Pending {
    pub event: Event,
    /// Until when the feed's owner holds a claim on it already (`None`: it is not the
    /// owner's yet).
    pub own_claim_until: Option<DateTime<Utc>>,
}

/// A run to commit with what it wrote.
#[derive(Debug, Clone, Copy)]
pub struct Commit<'a> {
    pub run: &'a Run,
    pub writes: &'a [Write],
    /// The depth of the events the writes raise (the run's event's depth + 1).
    pub depth: u32,
    /// Marks this event processed in the same transaction.
    pub finish_event: Option<i64>,
    /// Stores the raised events claimed by this owner until this time: the dispatcher that
    /// committed the run goes on with what it raised.
    pub claim_raised: Option<(&'a str, DateTime<Utc>)>,
    /// The run's directory changes (see [`RunAudit`]).
    pub audit: Option<RunAudit<'a>>,
    /// The run's event must still be unfinished and claimed by this owner, or the commit is
    /// refused ([`StoreError::ClaimLost`]) and changes nothing: a process whose claim ran out
    /// while it ran never commits over the process that took the event from it.
    pub fence: Option<&'a str>,
}

impl<'a> Commit<'a> {
    /// A run without writes, raising nothing.
    pub fn bare(run: &'a Run, finish_event: Option<i64>) -> Commit<'a> {
        Commit { run, writes: &[], depth: 0, finish_event, claim_raised: None, audit: None, fence: None }
    }
}

/// What a run's commit does to the audit trail, in the run's transaction: the entries the run
/// recorded already ([`Store::record_audit`], under `token`; `None` when it recorded none) get
/// the run's id, and `entries` (changes a dry-run directory planned, and changes whose own
/// write failed) are stored with it.
#[derive(Debug, Clone, Copy)]
pub struct RunAudit<'a> {
    pub token: Option<&'a str>,
    pub entries: &'a [AuditEntry],
}

/// One attribute of a directory change: its values before (`None`: not read, as in a dry
/// run, which reads nothing; empty: the attribute was absent) and after (empty: cleared).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditAttr {
    pub attribute: String,
    pub before: Option<Vec<String>>,
    pub after: Vec<String>,
}

impl std::fmt::Display for AuditAttr {
    /// `title: "Clerk" -> "Controller"`; `(absent)` and `(cleared)` for no values, `(not
    /// read)` for a dry run's before.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let values = |v: &[String], none: &str| match v {
            [] => none.to_string(),
            v => v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", "),
        };
        let before = self.before.as_deref().map_or_else(|| "(not read)".to_string(), |v| values(v, "(absent)"));
        write!(f, "{}: {before} -> {}", self.attribute, values(&self.after, "(cleared)"))
    }
}

/// An entry of the directory audit trail: one change a directory made (or, `planned`, one a
/// dry-run directory would have made), and the run that caused it. Passwords never appear:
/// a password reset is recorded as the fact. Its JSON form is stable (`tripline audit
/// --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// 0 until stored.
    pub id: i64,
    pub at: DateTime<Utc>,
    /// The `[directories.NAME]`.
    pub directory: String,
    /// The entry changed, as it was named when the change was made (a user's DN for group
    /// memberships too).
    pub dn: String,
    /// `create_user`, `update_user`, `set_manager`, `disable_user`, `enable_user`,
    /// `move_user`, `rename_user`, `delete_user`, `add_to_group`, `remove_from_group`,
    /// `reset_password`.
    pub operation: String,
    pub attributes: Vec<AuditAttr>,
    /// What the attributes do not say ("password reset; to be changed at next logon", a dry
    /// run's sentence).
    pub detail: Option<String>,
    /// A dry run's change: nothing was changed in the directory.
    pub planned: bool,
    /// The run (its id in `tripline runs`), once the run is committed; `None` when the process
    /// stopped before that.
    pub run_id: Option<i64>,
    /// The rule's name, or `job:NAME`.
    pub rule: String,
    pub record_id: Option<String>,
    pub event_id: Option<i64>,
    /// Ties entries recorded during a run to the run's commit; not shown.
    #[serde(skip)]
    pub run_token: String,
    /// `dn` in the form DNs are compared in (`Dn::key` of the directory module: lowercase,
    /// escapes normalised); what [`AuditQuery::dn`] is matched against. Not shown.
    #[serde(skip)]
    pub dn_key: String,
}

/// Which audit entries [`Store::audit`] lists, oldest first. Empty fields select everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditQuery {
    /// Entries of this DN, in its compared form (see [`AuditEntry::dn_key`]).
    pub dn: Option<String>,
    pub record_id: Option<String>,
    pub run_id: Option<i64>,
    /// Entries made at or after this.
    pub since: Option<DateTime<Utc>>,
    /// At most this many, the newest (0: all).
    pub limit: usize,
}

/// Which runs to list.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only runs that did not end `ok`.
    pub failed: bool,
    pub rule: Option<String>,
    pub record_id: Option<String>,
    pub limit: usize,
}

/// The store's operations. Implementations must be safe to share between threads.
pub trait Store: Send + Sync {
    /// Stores records and their events in one transaction; returns the events in order.
    /// Items with an idempotency key already seen are skipped (`None`). With `claim`, the
    /// events are stored already claimed by that owner until that time.
    fn ingest(&self, items: &[Ingest], claim: Option<(&str, DateTime<Utc>)>) -> Result<Vec<Option<Event>>>;
    /// Checks that an item could be ingested (the record exists for an update, ...), storing
    /// nothing.
    fn validate(&self, item: &Ingest) -> Result<()>;
    /// Events not yet processed that `feed` may run, oldest first, that can run now: no
    /// earlier event of the same record is still being processed by another owner, and with
    /// `wait_behind_retries`, the record has no run waiting for a retry. An event whose row
    /// cannot be read, or that the caller would claim for a time beyond [`MAX_EVENT_TRIES`]
    /// (each earlier processing of it never ended), is set aside instead (finished, with a
    /// failed [`SET_ASIDE`] run saying why), so that it never blocks the queue; an event
    /// the caller holds the claim of is its own to run, never set aside for its tries. An
    /// event is set aside only while no other process holds it and it is not done: another
    /// may have claimed or finished it since the queue was read. Only events with an id
    /// above `after` (a feeder's cursor; 0 for all). Each event's [`Event::claims`] counts
    /// the claim the caller is about to take.
    fn pending_events(
        &self,
        limit: usize,
        wait_behind_retries: bool,
        feed: Feed<'_>,
        after: i64,
    ) -> Result<Vec<Pending>>;
    /// Marks events processed (events no rule matches), in one transaction.
    fn finish_events(&self, event_ids: &[i64]) -> Result<()>;
    /// Claims events for `owner` until `until` (events already claimed by `owner` are
    /// re-claimed); returns the ids claimed. A claimed event is processed by its owner only.
    fn claim(&self, ids: &[i64], owner: &str, until: DateTime<Utc>) -> Result<Vec<i64>>;
    /// Gives up a claim (the event waits for a later pass).
    fn unclaim(&self, event_id: i64, owner: &str) -> Result<()>;
    /// Whether a record still has work ahead: an unfinished event, or a run waiting for a
    /// retry.
    fn record_busy(&self, record_id: &str) -> Result<bool>;
    /// The owners holding unexpired claims on unfinished events.
    fn claim_owners(&self) -> Result<Vec<String>>;
    /// Releases every claim of `owner` (an owner known to be gone).
    fn release_claims(&self, owner: &str) -> Result<u64>;
    /// Deletes finished events and runs that ended `ok` older than `before`; returns how many
    /// rows went. Failed and dead runs are kept for `runs --failed`.
    fn prune(&self, before: DateTime<Utc>) -> Result<u64>;
    /// How many events wait.
    fn queue_depth(&self) -> Result<u64>;
    /// The event stored with an idempotency key, to answer a redelivery with the original
    /// ids. Stores that cannot look keys up answer `None`.
    fn event_by_idempotency_key(&self, _key: &str) -> Result<Option<Event>> {
        Ok(None)
    }
    fn get_event(&self, id: i64) -> Result<Option<Event>>;
    fn get_record(&self, id: &str) -> Result<Option<Record>>;
    /// The entities that have records.
    fn entities(&self) -> Result<Vec<String>>;
    /// Records of an entity whose fields equal every criterion (`status` matches the status).
    fn find_records(&self, entity: &str, criteria: &Fields, limit: usize) -> Result<Vec<Record>>;
    /// Like [`Store::find_records`], among the records that have work ahead of record
    /// `before`'s: an unfinished event older than `before`'s oldest unfinished one, or a run
    /// waiting for a retry (`before` itself excluded). Its cost follows those events and
    /// runs, not the number of records.
    fn find_busy_before(&self, entity: &str, criteria: &Fields, before: &str, limit: usize) -> Result<Vec<Record>>;
    /// Rules that already have a run for this event, with its status (the run ledger).
    fn runs_of_event(&self, event_id: i64) -> Result<Vec<Run>>;
    /// Saves a run with the writes it made (see [`Commit`]); returns the run's id and the
    /// events the writes raised. Commits of concurrent callers may share a transaction, but
    /// each returns only once its own is durable.
    fn commit_run(&self, commit: Commit<'_>) -> Result<(i64, Vec<Event>)>;
    /// Commits several runs, in one transaction where it can (should one of them be refused,
    /// each is committed alone, so that one run's refused write undoes no other). Returns each
    /// run's result, in order, once all of them are durable.
    fn commit_runs(&self, commits: &[Commit<'_>]) -> Vec<Result<(i64, Vec<Event>)>> {
        commits.iter().map(|c| self.commit_run(*c)).collect()
    }
    /// Marks an event processed.
    fn finish_event(&self, event_id: i64) -> Result<()>;
    fn runs(&self, filter: &RunFilter) -> Result<Vec<Run>>;
    fn get_run(&self, id: i64) -> Result<Option<Run>>;
    /// Runs in `retrying` whose next attempt is due, claimed: their next attempt moves to
    /// `until`, so that no other dispatcher takes them meanwhile, and they come due again
    /// then should this one die before running them.
    fn claim_due_retries(&self, now: DateTime<Utc>, limit: usize, until: DateTime<Utc>) -> Result<Vec<Run>>;
    fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Value>>;
    fn kv_set(&self, namespace: &str, key: &str, value: &Value) -> Result<()>;
    /// Removes a key (none is no error).
    fn kv_delete(&self, namespace: &str, key: &str) -> Result<()>;
    /// `[engine] max_fanout`: how many events one event from outside may cause in all
    /// (see [`Store::commit_run`]: a run whose writes would cross it is refused).
    fn set_max_fanout(&self, max: u64);
    /// Queues a set-aside event again (the replay of its [`SET_ASIDE`] run).
    fn requeue_event(&self, event_id: i64) -> Result<()>;
    /// The rule and script files that were in force when the catalog last changed (their
    /// last good versions).
    fn catalog_files(&self) -> Result<Vec<StoredFile>>;
    /// Replaces the stored catalog files with these.
    fn save_catalog_files(&self, files: &[StoredFile]) -> Result<()>;
    /// Writes a consistent copy of the store to `to` while it is in use (`tripline backup`).
    fn backup(&self, to: &std::path::Path) -> Result<()>;
    /// One page of run history, newest first, for the console: the runs [`RunQuery`] selects
    /// with an id below its `before`. Its cost follows the page, not the history (keyset
    /// paging on indexed columns), so a million runs list as fast as a thousand.
    fn runs_page(&self, query: &RunQuery) -> Result<Vec<Run>>;
    /// How many runs started in each minute since `since`, ok and not ok, among the newest
    /// `max_runs` runs (a bound on the work for a busy store): minutes as `YYYY-MM-DDTHH:MM`.
    fn runs_per_minute(&self, since: DateTime<Utc>, max_runs: usize) -> Result<Vec<MinuteCount>>;
    /// Every rule (or `job:NAME`) with runs that did not end ok, with how many and the newest.
    fn failing_rules(&self) -> Result<Vec<Failing>>;
    /// One page of an entity's records, newest id first, with ids below `before`.
    fn records_page(&self, entity: &str, before: Option<&str>, limit: usize) -> Result<Vec<Record>>;
    /// Stores audit entries at once, in their own transaction: a change made to a directory
    /// is a fact whatever becomes of the run, so it is recorded before the run goes on (its
    /// commit then adds the run's id, see [`RunAudit`]).
    fn record_audit(&self, entries: &[AuditEntry]) -> Result<()>;
    /// The audit entries `query` selects, oldest first.
    fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>>;
    /// Deletes audit entries older than `before` (`[engine] audit_retention_days`); returns
    /// how many went.
    fn prune_audit(&self, before: DateTime<Utc>) -> Result<u64>;
    /// Takes a scheduled tick of a job for `owner` (see [`decide_tick`]): of all workers
    /// asking for the same tick, one gets [`TickTaken::Run`], and holds the job until
    /// [`Store::end_job_run`] or until `until` (extended by its heartbeats) runs out.
    fn take_job_tick(&self, job: &str, tick: DateTime<Utc>, owner: &str, until: DateTime<Utc>) -> Result<TickTaken>;
    /// The last handled tick of a job.
    fn last_job_tick(&self, job: &str) -> Result<Option<DateTime<Utc>>>;
    /// Marks a tick handled (a job seen for the first time), never moving it back.
    fn record_job_tick(&self, job: &str, tick: DateTime<Utc>) -> Result<()>;
    /// Lets go of a job `owner` ran.
    fn end_job_run(&self, job: &str, owner: &str) -> Result<()>;
    /// A worker's heartbeat: its figures are saved, and its event claims and job runs are
    /// held until `until`.
    fn heartbeat(&self, beat: &WorkerBeat<'_>, until: DateTime<Utc>) -> Result<()>;
    /// The workers that beat lately (a stopped worker leaves; a dead one stays until pruned).
    fn workers(&self) -> Result<Vec<Worker>>;
    /// A worker stopping leaves the list.
    fn forget_worker(&self, id: &str) -> Result<()>;
    /// Takes a lock named `name` across every worker of the store, waiting for it: one OAuth2
    /// refresh at a time per connection. A store only one process uses needs none.
    fn lock(&self, _name: &str) -> Result<StoreLock> {
        Ok(StoreLock::local())
    }
    /// Calls `wake` whenever another worker stores events (and after a lost connection is
    /// back), so that idle workers start at once; a store of one process has nothing to say.
    fn subscribe(&self, _wake: std::sync::Arc<dyn Fn() + Send + Sync>) -> Result<()> {
        Ok(())
    }
    /// Which store this is, for the log line at start (never a password).
    fn describe(&self) -> String;
}

/// Which runs [`Store::runs_page`] lists. Empty fields select everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunQuery {
    pub status: Option<RunStatus>,
    /// A rule's name, or `job:NAME`.
    pub rule: Option<String>,
    pub record_id: Option<String>,
    /// Runs that started at or after this.
    pub since: Option<DateTime<Utc>>,
    /// Runs that started before this.
    pub until: Option<DateTime<Utc>>,
    /// Runs with an id below this one (the last id of the page before).
    pub before: Option<i64>,
    pub limit: usize,
}

/// Runs started in one minute (see [`Store::runs_per_minute`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinuteCount {
    pub minute: String,
    pub ok: u64,
    pub not_ok: u64,
}

/// A rule with runs that did not end ok (see [`Store::failing_rules`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failing {
    pub rule: String,
    pub runs: u64,
    pub newest_run: i64,
}

/// The `rule` of the run that records an event set aside without running any rule: its row
/// could not be read, or processing it stopped tripline again and again
/// ([`MAX_EVENT_TRIES`]). `tripline replay` of that run queues the event again.
pub const SET_ASIDE: &str = "(set aside)";
