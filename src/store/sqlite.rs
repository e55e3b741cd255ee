//! The SQLite store: one file (`data_dir/tripline.db`) in WAL mode with a busy timeout,
//! migrated at start with `PRAGMA user_version`.
//!
//! Runs are committed in groups: a run that finishes while another thread is writing waits,
//! and the next writer commits every run that waits in one transaction (should one of them
//! fail, each is committed alone instead, so one run's refused write undoes no other). Many
//! workers finishing at once then cost one WAL append and one lock cycle instead of one each,
//! which is most of a short run's cost (see `benches/directory_flow.rs`). Directory changes
//! recorded at once ([`Store::record_audit`]) go through the same queue.
//!
//! A store file is checkpointed by a thread of its own (`checkpointer`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::{
    AuditEntry, AuditQuery, Change, Failing, FileKind, Ingest, MinuteCount, Result, Run, RunFilter, RunQuery,
    RunStatus, Store, StoreError, StoredFile, TickTaken, Worker, WorkerBeat, Write, SET_ASIDE,
};
use crate::record::{Comment, Event, EventKind, Fields, Record, Status};

/// Schema migrations, applied in order; `user_version` counts the ones applied.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE records (
    id TEXT PRIMARY KEY,
    entity TEXT NOT NULL,
    status TEXT NOT NULL,
    fields TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX records_entity ON records(entity, id);
CREATE TABLE comments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id TEXT NOT NULL REFERENCES records(id) ON DELETE CASCADE,
    text TEXT NOT NULL,
    at TEXT NOT NULL,
    key TEXT,
    UNIQUE (record_id, key)
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    record_id TEXT NOT NULL,
    record TEXT NOT NULL,
    previous TEXT,
    depth INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    idempotency_key TEXT UNIQUE
);
CREATE INDEX events_pending ON events(done, id);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id INTEGER,
    rule TEXT NOT NULL,
    record_id TEXT,
    event TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    duration_ms INTEGER NOT NULL,
    log TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    next_attempt_at TEXT
);
CREATE UNIQUE INDEX runs_ledger ON runs(event_id, rule) WHERE event_id IS NOT NULL;
CREATE INDEX runs_status ON runs(status, next_attempt_at);
CREATE TABLE kv (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
);
"#,
    // Claims: which process is working on an event, until when (a crashed owner's claims
    // expire or are released when its death is noticed).
    r#"
ALTER TABLE events ADD COLUMN claimed_by TEXT;
ALTER TABLE events ADD COLUMN claimed_until TEXT;
CREATE INDEX events_record ON events(record_id, done, id);
CREATE INDEX runs_record ON runs(record_id, status);
"#,
    // Partial indexes: a processed event and a run that ended leave them, so that committing a
    // run writes two pages fewer (about 7 -> 5 WAL frames per run).
    r#"
DROP INDEX events_pending;
CREATE INDEX events_pending ON events(id) WHERE done = 0;
DROP INDEX runs_status;
CREATE INDEX runs_retrying ON runs(next_attempt_at) WHERE status = 'retrying';
"#,
    // `tries`: claims of an event that did not end (a process that died with it, a lease
    // that ran out); an event claimed too often is set aside instead of stopping the
    // dispatcher again. `root_id` / `fanout`: the event from outside that a chain of script
    // writes started from, and how many events it has caused in all.
    r#"
ALTER TABLE events ADD COLUMN tries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN root_id INTEGER;
ALTER TABLE events ADD COLUMN fanout INTEGER NOT NULL DEFAULT 0;
"#,
    // The last good version of every rule and script file, so that a start with a broken
    // file runs the version that last loaded instead of leaving its rule out.
    r#"
CREATE TABLE catalog_files (
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    text TEXT NOT NULL,
    loaded_at TEXT NOT NULL,
    PRIMARY KEY (kind, path)
);
"#,
    // The console's run history: pages by rule (or job) and of the runs that did not end ok,
    // newest first, read from an index whatever the history's size. The second index is
    // partial, so that a run that ends ok writes only the first.
    r#"
CREATE INDEX runs_rule ON runs(rule, id);
CREATE INDEX runs_not_ok ON runs(status, id) WHERE status != 'ok';
"#,
    // Fewer index writes per event: the idempotency keys' unique index holds only the events
    // that have one (the column's UNIQUE held a NULL entry for every event; dropping it takes
    // rebuilding the table, whose id sequence is carried over, so that no id is used twice),
    // and an event leaves its record's index when it is done (every lookup by record asks
    // for unfinished events).
    r#"
CREATE TABLE events_new (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    record_id TEXT NOT NULL,
    record TEXT NOT NULL,
    previous TEXT,
    depth INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    idempotency_key TEXT,
    claimed_by TEXT,
    claimed_until TEXT,
    tries INTEGER NOT NULL DEFAULT 0,
    root_id INTEGER,
    fanout INTEGER NOT NULL DEFAULT 0
);
INSERT INTO events_new (id, kind, record_id, record, previous, depth, done, created_at, idempotency_key,
                        claimed_by, claimed_until, tries, root_id, fanout)
    SELECT id, kind, record_id, record, previous, depth, done, created_at, idempotency_key,
           claimed_by, claimed_until, tries, root_id, fanout FROM events;
DELETE FROM sqlite_sequence WHERE name = 'events_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'events_new', seq FROM sqlite_sequence WHERE name = 'events';
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;
CREATE UNIQUE INDEX events_idempotency ON events(idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX events_pending ON events(id) WHERE done = 0;
CREATE INDEX events_record ON events(record_id, id) WHERE done = 0;
"#,
    // The audit trail of directory changes: apart from the runs (its own retention), looked up
    // by DN, by record, by run (the console's run page) and by time (pruning, `--since`).
    // `run_token` ties the entries a run recorded while it ran to its commit, which sets
    // `run_id`; the partial index holds only entries still waiting for that.
    r#"
CREATE TABLE directory_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    directory TEXT NOT NULL,
    dn TEXT NOT NULL,
    dn_key TEXT NOT NULL,
    operation TEXT NOT NULL,
    attributes TEXT NOT NULL,
    detail TEXT,
    planned INTEGER NOT NULL,
    run_id INTEGER,
    run_token TEXT NOT NULL,
    rule TEXT NOT NULL,
    record_id TEXT,
    event_id INTEGER
);
CREATE INDEX directory_audit_dn ON directory_audit(dn_key, id);
CREATE INDEX directory_audit_record ON directory_audit(record_id, id);
CREATE INDEX directory_audit_run ON directory_audit(run_id);
CREATE INDEX directory_audit_at ON directory_audit(at);
CREATE INDEX directory_audit_unlinked ON directory_audit(run_token) WHERE run_id IS NULL;
"#,
    // What a run wrote, a line each, for its history (the console's run page).
    r#"
ALTER TABLE runs ADD COLUMN writes TEXT NOT NULL DEFAULT '[]';
"#,
    // Scheduled ticks taken in a transaction (the same rule as PostgreSQL's, where several
    // workers share the store), with the run that holds the job; the last ticks kept in the
    // key-value table until now move here. Workers and their heartbeats.
    r#"
CREATE TABLE job_ticks (
    job TEXT PRIMARY KEY,
    tick TEXT NOT NULL,
    runner TEXT,
    run_until TEXT
);
INSERT INTO job_ticks (job, tick) SELECT key, json_extract(value, '$') FROM kv
    WHERE namespace = 'scheduler' AND json_type(value) = 'text';
DELETE FROM kv WHERE namespace = 'scheduler';
CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at TEXT NOT NULL,
    seen_at TEXT NOT NULL,
    figures TEXT NOT NULL
);
"#,
];

/// The schema version this build migrates a store to (`PRAGMA user_version`).
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

pub use super::MAX_EVENT_TRIES;

/// The SQLite store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// The file (`None`: in memory), for [`Store::describe`].
    path: Option<std::path::PathBuf>,
    commits: CommitQueue,
    /// `[engine] max_fanout`.
    max_fanout: std::sync::atomic::AtomicU64,
    /// Stops the checkpointer thread of a store file when dropped.
    _checkpoints: Option<std::sync::mpsc::Sender<()>>,
}

/// Prepared statements kept per connection: more than the store's distinct statements.
const STATEMENT_CACHE: usize = 128;

/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// WAL pages past which a commit checkpoints by itself: about 64 MiB. Under a steady stream
/// of commits the WAL file grows to this size before it starts over (it restarts only after
/// a checkpoint that copied all of it, and writers keep appending), most of it copied by the
/// checkpointer already. A smaller backstop (4,000 pages) made 500,000 events through `fire`
/// about 10 % slower.
pub const CHECKPOINT_BACKSTOP: i64 = 16_000;

/// Copies the WAL into the database file every [`CHECKPOINT_EVERY`], on a connection of its
/// own, until `stop` is dropped. SQLite would otherwise do it in whichever commit finds the
/// WAL past 1,000 pages, holding the store's one connection through the copy and its
/// `fsync` while every run waits; a passive checkpoint blocks no writer.
fn checkpointer(path: &Path) -> Result<std::sync::mpsc::Sender<()>> {
    let conn = Connection::open(path)?;
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("tripline-checkpoint".into())
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::debug!(error = %e, "A checkpoint of the store did not run; the next one will.");
                }
            }
        })
        .map_err(|e| StoreError::Io("the store's checkpointer thread".into(), e))?;
    Ok(stop)
}

/// Runs waiting to be committed, and the results of those committed by another thread.
#[derive(Default)]
struct CommitQueue {
    state: Mutex<QueueState>,
    /// A group was written (results are in `done`, `writing` is false).
    changed: Condvar,
    /// Enough runs wait for a lingering writer to stop waiting.
    gathered: Condvar,
}

#[derive(Default)]
struct QueueState {
    /// A thread is writing a group.
    writing: bool,
    next_ticket: u64,
    waiting: Vec<(u64, Pending)>,
    done: HashMap<u64, Committed>,
    /// Runs inside `commit_run` now, the most at once since the last group was taken, and
    /// that most for each of the last groups: how many runs a group can expect.
    inside: usize,
    peak: usize,
    peaks: std::collections::VecDeque<usize>,
    /// A writer waits for more runs to join its group.
    lingering: bool,
}

/// While runs of several threads keep coming, a writer waits for as many runs as were lately
/// seen committing at once, but never longer than `LINGER` after its own run arrived. Each
/// run waits a little longer, and the store writes far fewer transactions. A single caller
/// (the CLI, a sequential embedder) writes at once.
const LINGER: Duration = Duration::from_millis(1);
/// How many groups the expected group size is remembered for.
const PEAKS: usize = 16;

impl QueueState {
    fn expected(&self) -> usize {
        self.peaks.iter().copied().max().unwrap_or(1)
    }
}

/// What committing a run gives: its id and the events its writes raised.
type Committed = Result<(i64, Vec<Event>)>;

/// What waits in the commit queue: a run, or directory changes to record at once
/// ([`Store::record_audit`]), which then share the transaction of what waits with them.
enum Pending {
    Run(Box<PendingRun>),
    Audit(Vec<AuditEntry>),
}

/// What a group commit writes, borrowed from the queue or from the caller.
#[derive(Clone, Copy)]
enum Item<'a> {
    Run(super::Commit<'a>),
    Audit(&'a [AuditEntry]),
}

impl Pending {
    fn item(&self) -> Item<'_> {
        match self {
            Pending::Run(p) => Item::Run(p.commit()),
            Pending::Audit(entries) => Item::Audit(entries),
        }
    }
}

/// A run to commit, with what `commit_run` was given.
struct PendingRun {
    run: Run,
    writes: Vec<Write>,
    depth: u32,
    finish_event: Option<i64>,
    claim_raised: Option<(String, DateTime<Utc>)>,
    /// The run's audit token and the entries to store with it.
    audit: Option<(Option<String>, Vec<AuditEntry>)>,
    fence: Option<String>,
}

impl PendingRun {
    /// An owned copy of what `commit_run` was given: the run waits in the queue beyond the
    /// borrow.
    fn new(c: &super::Commit<'_>) -> PendingRun {
        PendingRun {
            run: c.run.clone(),
            writes: c.writes.to_vec(),
            depth: c.depth,
            finish_event: c.finish_event,
            claim_raised: c.claim_raised.map(|(o, t)| (o.to_string(), t)),
            audit: c.audit.map(|a| (a.token.map(str::to_string), a.entries.to_vec())),
            fence: c.fence.map(str::to_string),
        }
    }

    fn commit(&self) -> super::Commit<'_> {
        super::Commit {
            run: &self.run,
            writes: &self.writes,
            depth: self.depth,
            finish_event: self.finish_event,
            claim_raised: self.claim_raised.as_ref().map(|(o, t)| (o.as_str(), *t)),
            audit: self.audit.as_ref().map(|(token, entries)| super::RunAudit { token: token.as_deref(), entries }),
            fence: self.fence.as_deref(),
        }
    }
}

/// Clears `writing` if the writer unwinds, so that the others do not wait forever.
struct WritingGuard<'a>(&'a CommitQueue);

impl Drop for WritingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).writing = false;
        self.0.changed.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("timestamp {s:?}: {e}")))
}

fn json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("values of the store serialize")
}

impl SqliteStore {
    /// Opens (creating when needed) `dir/tripline.db` and applies pending migrations.
    pub fn open_dir(dir: &Path) -> Result<SqliteStore> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(dir.display().to_string(), e))?;
        Self::open(&dir.join("tripline.db"))
    }

    /// Opens a database file.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let conn = Connection::open(path)?;
        let store = Self::init(conn)?;
        store.conn().pragma_update(None, "wal_autocheckpoint", CHECKPOINT_BACKSTOP)?;
        Ok(SqliteStore { path: Some(path.to_path_buf()), _checkpoints: Some(checkpointer(path)?), ..store })
    }

    /// A private in-memory store (tests, `tripline test`, embedding without persistence).
    pub fn in_memory() -> Result<SqliteStore> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<SqliteStore> {
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // Every statement the store runs stays prepared (rusqlite keeps 16 by default, fewer
        // than a run's commit and the dispatcher use in turn, so each was parsed again).
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Read the version inside a write transaction, so that two processes opening a new
        // store at once do not both migrate it.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: usize = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > MIGRATIONS.len() {
            return Err(StoreError::Newer { found: version, known: MIGRATIONS.len() });
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version) {
            tx.execute_batch(m)?;
            tx.pragma_update(None, "user_version", i + 1)?;
        }
        tx.commit()?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            path: None,
            commits: CommitQueue::default(),
            max_fanout: std::sync::atomic::AtomicU64::new(super::DEFAULT_MAX_FANOUT),
            _checkpoints: None,
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn load_record(tx: &Connection, id: &str) -> Result<Option<Record>> {
    // Prepared once per connection: `Connection::query_row` parses its statement every time,
    // and a run reads its record this way for every read and write of it.
    let row = tx
        .prepare_cached("SELECT entity, status, fields, created_at, updated_at FROM records WHERE id = ?1")?
        .query_row(params![id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })
        .optional()?;
    let Some((entity, status, fields, created, updated)) = row else { return Ok(None) };
    let mut stmt = tx.prepare_cached("SELECT text, at FROM comments WHERE record_id = ?1 ORDER BY id")?;
    let comments = stmt
        .query_map(params![id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .map(|c| {
            let (text, at) = c?;
            Ok(Comment { text, at: parse_ts(&at)? })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(Record {
        id: id.to_string(),
        entity,
        status: Status::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("status {status:?}")))?,
        fields: json(&fields)?,
        comments,
        created_at: parse_ts(&created)?,
        updated_at: parse_ts(&updated)?,
    }))
}

/// Stores a new record whose fields are written already ([`checked_fields`]). Records are
/// written with a plain INSERT ([`update_record`] with a plain UPDATE), not an upsert:
/// SQLite writes an upsert with a statement journal, which costs as much as the row.
fn write_record(tx: &Connection, r: &Record, fields: &str) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO records (id, entity, status, fields, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![r.id, r.entity, r.status.as_str(), fields, ts(r.created_at), ts(r.updated_at)])?;
    Ok(())
}

/// Stores a changed record (one already in the store).
fn update_record(tx: &Connection, r: &Record) -> Result<()> {
    let fields = checked_fields(r)?;
    tx.prepare_cached("UPDATE records SET status = ?2, fields = ?3, updated_at = ?4 WHERE id = ?1")?
        .execute(params![r.id, r.status.as_str(), fields, ts(r.updated_at)])?;
    Ok(())
}

/// The record's fields as stored. The last guard of the one depth limit: whatever way a
/// record came in, the store never keeps one it could not read back.
fn checked_fields(r: &Record) -> Result<String> {
    crate::record::check_depth(&r.fields).map_err(|e| StoreError::Invalid(format!("record {}: {e}", r.id)))?;
    Ok(to_json(&r.fields))
}

/// A record as an event carries it (without its comments, which only grow), with its JSON.
struct Snapshot {
    record: Record,
    json: String,
}

impl Snapshot {
    fn of(record: Record) -> Snapshot {
        let record = Record { comments: Vec::new(), ..record };
        Snapshot { json: to_json(&record), record }
    }
}

/// A new record made ready to store: its fields checked and written, its snapshot taken.
struct NewRecord {
    fields: String,
    /// The record itself (a new record has no comments).
    snapshot: Snapshot,
}

impl NewRecord {
    fn new(record: Record) -> Result<NewRecord> {
        Ok(NewRecord { fields: checked_fields(&record)?, snapshot: Snapshot::of(record) })
    }

    /// An ingested item that needs nothing from the store (no id given, no idempotency key),
    /// made ready before the write lock is taken, so that a batch holds the lock only for its
    /// inserts. `None`: the item needs the store to be planned ([`ingest_one`]).
    fn prepare(item: &Ingest) -> Result<Option<NewRecord>> {
        if item.record.id.is_some() || item.idempotency_key.is_some() {
            return Ok(None);
        }
        let Change::Create { record, .. } = super::plan_ingest(item, None, Utc::now())? else {
            return Ok(None);
        };
        NewRecord::new(record).map(Some)
    }

    /// Stores the record and the event of its creation; `fresh`: the store made its id just
    /// now (see [`insert_event`]).
    fn insert(
        self,
        tx: &Connection,
        kind: &EventKind,
        depth: u32,
        key: Option<&str>,
        claim: Claim<'_>,
        fresh: bool,
    ) -> Result<Event> {
        write_record(tx, &self.snapshot.record, &self.fields)?;
        insert_event(tx, kind, self.snapshot, None, depth, key, claim, fresh)
    }
}

/// A claim to store an event with: its owner and until when.
type Claim<'a> = Option<(&'a str, DateTime<Utc>)>;

#[allow(clippy::too_many_arguments)]
fn insert_event(
    tx: &Connection,
    kind: &EventKind,
    record: Snapshot,
    previous: Option<Snapshot>,
    depth: u32,
    key: Option<&str>,
    claim: Claim<'_>,
    fresh: bool,
) -> Result<Event> {
    let now = Utc::now();
    let (owner, until) = claim.map_or((None, None), |(o, u)| (Some(o), Some(ts(u))));
    // A creation behind nothing (the usual case: a fresh id) can be run by whoever stored it
    // at once; an id reused while an event of its earlier record is unfinished waits for it.
    // An id the store made just now (`fresh`) has no earlier events to ask about.
    let waits_for_nothing = *kind == EventKind::Created
        && claim.is_some()
        && (fresh
            || !tx
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM events WHERE record_id = ?1 AND done = 0)")?
                .query_row(params![record.record.id], |r| r.get::<_, bool>(0))?);
    tx.prepare_cached(
        "INSERT INTO events (kind, record_id, record, previous, depth, created_at, idempotency_key, claimed_by, claimed_until, tries)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        kind.as_str(),
        record.record.id,
        record.json,
        previous.as_ref().map(|p| &p.json),
        depth,
        ts(now),
        key,
        owner,
        until,
        claim.is_some() as i64
    ])?;
    Ok(Event {
        id: tx.last_insert_rowid(),
        kind: kind.clone(),
        record: record.record,
        previous: previous.map(|p| p.record),
        depth,
        created_at: now,
        claims: 1,
        waits_for_nothing,
    })
}

/// Stores a change of a record (`r`, from `previous`) and its event of `kind`.
fn store_update(
    tx: &Connection,
    kind: &EventKind,
    r: Record,
    previous: Record,
    depth: u32,
    key: Option<&str>,
    claim: Claim<'_>,
) -> Result<Event> {
    update_record(tx, &r)?;
    insert_event(tx, kind, Snapshot::of(r), Some(Snapshot::of(previous)), depth, key, claim, false)
}

fn add_comment(tx: &Connection, id: &str, text: &str, key: Option<&str>, at: DateTime<Utc>) -> Result<()> {
    let n = tx
        .prepare_cached(
            "INSERT INTO comments (record_id, text, at, key) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(record_id, key) DO UPDATE SET text = excluded.text, at = excluded.at",
        )?
        .execute(params![id, text, ts(at), key])
        .map_err(|e| match e.sqlite_error() {
            // The record's foreign key: there is no such record.
            Some(f) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY => {
                StoreError::NoRecord(id.to_string())
            }
            _ => StoreError::Db(e),
        })?;
    if n == 0 {
        return Err(StoreError::NoRecord(id.to_string()));
    }
    Ok(())
}

/// Stores one ingested item: the record change and its event.
fn ingest_one(
    tx: &Connection,
    item: &Ingest,
    depth: u32,
    claim: Option<(&str, DateTime<Utc>)>,
) -> Result<Option<Event>> {
    if let Some(key) = &item.idempotency_key {
        let seen: Option<i64> = tx
            .prepare_cached("SELECT id FROM events WHERE idempotency_key = ?1")?
            .query_row(params![key], |r| r.get(0))
            .optional()?;
        if seen.is_some() {
            return Ok(None);
        }
    }
    let existing = match &item.record.id {
        Some(id) => load_record(tx, id)?,
        None => None,
    };
    let (kind, key) = (&item.kind, item.idempotency_key.as_deref());
    let event = match super::plan_ingest(item, existing, Utc::now())? {
        Change::Create { record, fresh } => NewRecord::new(record)?.insert(tx, kind, depth, key, claim, fresh)?,
        Change::Delete(r) => {
            tx.execute("DELETE FROM records WHERE id = ?1", params![r.id])?;
            insert_event(tx, kind, Snapshot::of(r), None, depth, key, claim, false)?
        }
        Change::Update { record, previous } => store_update(tx, kind, record, previous, depth, key, claim)?,
    };
    Ok(Some(event))
}

fn row_to_event(r: &rusqlite::Row) -> rusqlite::Result<(i64, String, String, Option<String>, u32, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
}

fn build_event(
    (id, kind, record, previous, depth, created): (i64, String, String, Option<String>, u32, String),
) -> Result<Event> {
    Ok(Event {
        id,
        kind: EventKind::from(kind),
        record: json(&record)?,
        previous: previous.as_deref().map(json).transpose()?,
        depth,
        created_at: parse_ts(&created)?,
        claims: 1,
        waits_for_nothing: false,
    })
}

const RUN_COLUMNS: &str = "id, rule, record_id, event_id, event, status, error, duration_ms, log, attempts, \
     started_at, finished_at, next_attempt_at, writes";

fn row_to_run(r: &rusqlite::Row) -> rusqlite::Result<Result<Run>> {
    let status: String = r.get(5)?;
    let log: String = r.get(8)?;
    let started: String = r.get(10)?;
    let finished: String = r.get(11)?;
    let next: Option<String> = r.get(12)?;
    let writes: String = r.get(13)?;
    let (id, rule, record_id, event_id, event, error, duration_ms, attempts) =
        (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(6)?, r.get::<_, i64>(7)?, r.get(9)?);
    Ok((|| {
        Ok(Run {
            id,
            rule,
            record_id,
            event_id,
            event,
            status: RunStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("run status {status:?}")))?,
            error,
            duration_ms: duration_ms as u64,
            log: json(&log)?,
            attempts,
            started_at: parse_ts(&started)?,
            finished_at: parse_ts(&finished)?,
            next_attempt_at: next.as_deref().map(parse_ts).transpose()?,
            writes: json(&writes)?,
        })
    })())
}

fn query_runs(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Run>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, row_to_run)?;
    rows.map(|r| r?).collect()
}

/// A JSON path for SQLite's `json_extract` from a dotted field path, when SQLite can express
/// it exactly: its quoted labels have no escapes (a key with `"` or `\\` cannot be written),
/// SQLite reads a path only up to a NUL, and a segment that reads as a number (`0`, `01`,
/// `+1`) means an array index or an object key to [`crate::record::lookup`], which one label
/// cannot say. Such criteria are checked on the loaded records instead.
fn json_path(field: &str) -> Option<String> {
    let mut p = String::from("$");
    for seg in field.split('.') {
        if seg.contains(['"', '\\', '\0']) || seg.parse::<usize>().is_ok() {
            return None;
        }
        p.push_str(".\"");
        p.push_str(seg);
        p.push('"');
    }
    Some(p)
}

/// Adds `criteria` to a `SELECT id FROM records WHERE ...` query; returns the criteria
/// checked on the loaded records instead.
fn criteria_sql(criteria: &Fields, sql: &mut String, args: &mut Vec<String>) -> Fields {
    let mut in_rust = Fields::new();
    for (k, v) in criteria {
        match (k.as_str(), json_path(k)) {
            ("id" | "status", _) => {
                sql.push_str(&format!(" AND {k} = ?"));
                args.push(v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
            }
            // `json_extract` gives SQL values, which lose the JSON type: `true` reads as 1, an
            // object as its text, and a missing field as a null. Text and numbers are compared
            // with their type checked; other criteria are checked on the loaded records,
            // so that look-alikes never fill the limit.
            (_, Some(path)) if v.is_string() || v.is_number() => {
                let types = if v.is_string() { "'text'" } else { "'integer', 'real'" };
                sql.push_str(&format!(
                    " AND json_type(fields, ?) IN ({types}) AND json_extract(fields, ?) = json_extract(?, '$')"
                ));
                args.push(path.clone());
                args.push(path);
                args.push(v.to_string());
            }
            (_, _) => {
                in_rust.insert(k.clone(), v.clone());
            }
        }
    }
    in_rust
}

/// Runs a query of record ids built with [`criteria_sql`] and loads at most `limit` of the
/// records, in id order, that also match `in_rust`.
fn load_matching(
    conn: &Connection,
    mut sql: String,
    mut args: Vec<String>,
    in_rust: &Fields,
    limit: usize,
) -> Result<Vec<Record>> {
    sql.push_str(" ORDER BY id");
    // Criteria checked on the loaded records come before the limit.
    if in_rust.is_empty() {
        sql.push_str(" LIMIT ?");
        args.push(limit.to_string());
    }
    let ids: Vec<String> = {
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let mut found = Vec::new();
    for id in &ids {
        if found.len() >= limit {
            break;
        }
        match load_record(conn, id)? {
            Some(r) if r.matches(in_rust) => found.push(r),
            _ => {}
        }
    }
    Ok(found)
}

fn apply_write(tx: &Connection, w: &Write, depth: u32, claim: Claim<'_>, raised: &mut Vec<Event>) -> Result<()> {
    let now = Utc::now();
    match w {
        Write::Create(r) => {
            if load_record(tx, &r.id)?.is_some() {
                return Err(StoreError::Exists(r.id.clone()));
            }
            raised.push(NewRecord::new(r.clone())?.insert(tx, &EventKind::Created, depth, None, claim, false)?);
        }
        Write::Update { id, fields } => {
            let previous = load_record(tx, id)?.ok_or_else(|| StoreError::NoRecord(id.clone()))?;
            let r = super::changed(&previous, fields, None, now);
            raised.push(store_update(tx, &EventKind::Updated, r, previous, depth, None, claim)?);
        }
        Write::Comment { id, text, key } => add_comment(tx, id, text, key.as_deref(), now)?,
        Write::Close { id, text } => {
            let previous = load_record(tx, id)?.ok_or_else(|| StoreError::NoRecord(id.clone()))?;
            if let Some(text) = text {
                add_comment(tx, id, text, None, now)?;
            }
            if previous.status != Status::Closed {
                let r = super::changed(&previous, &Fields::new(), Some(Status::Closed), now);
                raised.push(store_update(tx, &EventKind::Updated, r, previous, depth, None, claim)?);
            }
        }
        Write::SetState { namespace, key, value } => {
            tx.prepare_cached(
                "INSERT INTO kv (namespace, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT(namespace, key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![namespace, key, to_json(value)])?;
        }
    }
    Ok(())
}

impl SqliteStore {
    /// Commits `pending` with whatever else waits in the queue (see [`CommitQueue`]).
    fn commit_queued(&self, pending: Pending) -> Committed {
        let q = &self.commits;
        let arrived = Instant::now();
        let mut st = lock(&q.state);
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.waiting.push((ticket, pending));
        st.inside += 1;
        st.peak = st.peak.max(st.inside);
        if st.lingering && st.waiting.len() >= st.expected() {
            q.gathered.notify_one();
        }
        let (mut st, result) = self.commit_waiting(st, ticket, arrived);
        st.inside -= 1;
        result
    }

    /// Waits until the run of `ticket` is written by another thread, or writes the group it
    /// belongs to. Returns the state lock, held again, with the run's result.
    fn commit_waiting<'a>(
        &'a self,
        mut st: std::sync::MutexGuard<'a, QueueState>,
        ticket: u64,
        arrived: Instant,
    ) -> (std::sync::MutexGuard<'a, QueueState>, Committed) {
        let q = &self.commits;
        while st.writing {
            st = q.changed.wait(st).unwrap_or_else(|e| e.into_inner());
            if let Some(result) = st.done.remove(&ticket) {
                return (st, result);
            }
        }
        if !st.waiting.iter().any(|(t, _)| *t == ticket) {
            let lost = StoreError::Corrupt("a run's commit was lost: the thread writing it panicked".into());
            return (st, Err(lost));
        }
        // Nobody is writing: gather, then write everything that waits, this run included.
        st.writing = true;
        let until = arrived + LINGER;
        while st.waiting.len() < st.expected() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st.lingering = true;
            st = q.gathered.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0;
            st.lingering = false;
        }
        let group = std::mem::take(&mut st.waiting);
        let inside = st.inside;
        let peak = std::mem::replace(&mut st.peak, inside);
        st.peaks.push_back(peak);
        if st.peaks.len() > PEAKS {
            st.peaks.pop_front();
        }
        drop(st);
        let unwinding = WritingGuard(q);
        let views: Vec<(u64, Item<'_>)> = group.iter().map(|(t, p)| (*t, p.item())).collect();
        let mut results = self.commit_group(&views);
        let mine = results.remove(&ticket).expect("the group holds this run");
        std::mem::forget(unwinding);
        let mut st = lock(&q.state);
        st.done.extend(results);
        st.writing = false;
        q.changed.notify_all();
        (st, mine)
    }

    /// Commits a group of runs in one transaction. When any of them fails (a write the
    /// store refuses), nothing of the group is kept and each run is committed alone, so that
    /// each gets its own result. The transactions take the write lock at once: a commit reads
    /// before it writes (its claim), and a read transaction that another process wrote past
    /// could not become a write one without failing busy.
    fn commit_group(&self, group: &[(u64, Item<'_>)]) -> HashMap<u64, Committed> {
        let max_fanout = self.max_fanout.load(std::sync::atomic::Ordering::Relaxed);
        let mut conn = self.conn();
        if group.len() > 1 {
            let together = (|| -> Result<Vec<(u64, Committed)>> {
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let mut out = Vec::with_capacity(group.len());
                for (ticket, item) in group {
                    out.push((*ticket, Ok(write_item(&tx, item, max_fanout)?)));
                }
                tx.commit()?;
                Ok(out)
            })();
            if let Ok(out) = together {
                return out.into_iter().collect();
            }
        }
        group
            .iter()
            .map(|(ticket, item)| {
                let one = (|| {
                    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    let done = write_item(&tx, item, max_fanout)?;
                    tx.commit()?;
                    Ok(done)
                })();
                (*ticket, one)
            })
            .collect()
    }
}

/// Files the events a run raised under the chain's root event (the event from outside the
/// chain started from) and counts them against `[engine] max_fanout`.
fn charge_fanout(tx: &Connection, cause: i64, raised: &[Event], max: u64) -> Result<()> {
    let root: Option<i64> = tx
        .prepare_cached("SELECT COALESCE(root_id, id) FROM events WHERE id = ?1")?
        .query_row(params![cause], |r| r.get(0))
        .optional()?;
    // The event is gone (pruned meanwhile): its chain is over.
    let Some(root) = root else { return Ok(()) };
    {
        let mut stmt = tx.prepare_cached("UPDATE events SET root_id = ?1 WHERE id = ?2")?;
        for e in raised {
            stmt.execute(params![root, e.id])?;
        }
    }
    let total: i64 = tx
        .prepare_cached("UPDATE events SET fanout = fanout + ?1 WHERE id = ?2 RETURNING fanout")?
        .query_row(params![raised.len() as i64, root], |r| r.get(0))?;
    if total as u64 > max {
        return Err(super::fanout_exceeded(raised.len(), root, total, max));
    }
    Ok(())
}

/// Writes one item of a group commit (within the caller's transaction); audit entries give
/// no run id and raise no events.
fn write_item(tx: &Connection, item: &Item<'_>, max_fanout: u64) -> Result<(i64, Vec<Event>)> {
    match item {
        Item::Run(c) => write_run(tx, c, max_fanout),
        Item::Audit(entries) => {
            for e in *entries {
                insert_audit(tx, e, None)?;
            }
            Ok((0, Vec::new()))
        }
    }
}

/// Saves a run with its writes and marks its event processed (within the caller's
/// transaction).
fn write_run(tx: &Connection, p: &super::Commit<'_>, max_fanout: u64) -> Result<(i64, Vec<Event>)> {
    let (run, depth) = (p.run, p.depth);
    // A fenced run that finishes its own event (every run of the dispatcher) checks the claim
    // and marks the event processed in one statement, before its writes: nothing in them
    // reads whether the event is done.
    let mut finish_event = p.finish_event;
    if let (Some(owner), Some(event)) = (p.fence, run.event_id) {
        let held = if finish_event == Some(event) {
            finish_event = None;
            tx.prepare_cached(
                "UPDATE events SET done = 1, claimed_by = NULL, claimed_until = NULL
                 WHERE id = ?1 AND done = 0 AND claimed_by = ?2",
            )?
            .execute(params![event, owner])?
                == 1
        } else {
            tx.prepare_cached("SELECT EXISTS (SELECT 1 FROM events WHERE id = ?1 AND done = 0 AND claimed_by = ?2)")?
                .query_row(params![event, owner], |r| r.get(0))?
        };
        if !held {
            return Err(StoreError::ClaimLost(event));
        }
    }
    let mut raised = Vec::new();
    for w in p.writes {
        apply_write(tx, w, depth, p.claim_raised, &mut raised)?;
    }
    if let (Some(cause), false) = (run.event_id, raised.is_empty()) {
        charge_fanout(tx, cause, &raised, max_fanout)?;
    }
    let args = params![
        run.event_id,
        run.rule,
        run.record_id,
        run.event,
        run.status.as_str(),
        run.error,
        run.duration_ms as i64,
        to_json(&run.log),
        run.attempts,
        ts(run.started_at),
        ts(run.finished_at),
        run.next_attempt_at.map(ts),
        to_json(&run.writes),
    ];
    // A plain INSERT, not an upsert with RETURNING (SQLite writes those with a statement
    // journal and an ephemeral table, which cost as much as the row): an event's rule has a
    // run already only when this is a later attempt, which then replaces it.
    let inserted = tx
        .prepare_cached(
            "INSERT INTO runs (event_id, rule, record_id, event, status, error, duration_ms, log, attempts, started_at, finished_at, next_attempt_at, writes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?
        .execute(args);
    let id = match inserted {
        Ok(_) => tx.last_insert_rowid(),
        Err(e) if e.sqlite_error().is_some_and(|f| f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE) => tx
            .prepare_cached(
                "UPDATE runs SET status = ?5, error = ?6, duration_ms = ?7, log = ?8, attempts = ?9, started_at = ?10,
                   finished_at = ?11, next_attempt_at = ?12, writes = ?13
                 WHERE event_id = ?1 AND rule = ?2 RETURNING id",
            )?
            .query_row(args, |r| r.get(0))?,
        Err(e) => return Err(e.into()),
    };
    if let Some(e) = finish_event {
        tx.prepare_cached("UPDATE events SET done = 1, claimed_by = NULL, claimed_until = NULL WHERE id = ?1")?
            .execute(params![e])?;
    }
    if let Some(audit) = p.audit {
        if let Some(token) = audit.token {
            tx.prepare_cached("UPDATE directory_audit SET run_id = ?1 WHERE run_token = ?2 AND run_id IS NULL")?
                .execute(params![id, token])?;
        }
        for entry in audit.entries {
            insert_audit(tx, entry, Some(id))?;
        }
    }
    Ok((id, raised))
}

fn insert_audit(tx: &Connection, e: &AuditEntry, run_id: Option<i64>) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO directory_audit (at, directory, dn, dn_key, operation, attributes, detail, planned, run_id, run_token, rule, record_id, event_id)
         VALUES (?1, ?2, ?3, ?13, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        ts(e.at),
        e.directory,
        e.dn,
        e.operation,
        to_json(&e.attributes),
        e.detail,
        e.planned,
        run_id.or(e.run_id),
        e.run_token,
        e.rule,
        e.record_id,
        e.event_id,
        e.dn_key,
    ])?;
    Ok(())
}

const AUDIT_COLUMNS: &str =
    "id, at, directory, dn, operation, attributes, detail, planned, run_id, run_token, rule, record_id, event_id, dn_key";

fn row_to_audit(r: &rusqlite::Row) -> rusqlite::Result<Result<AuditEntry>> {
    let at: String = r.get(1)?;
    let attributes: String = r.get(5)?;
    let entry = (|| -> Result<AuditEntry> {
        Ok(AuditEntry {
            id: r.get(0)?,
            at: parse_ts(&at)?,
            directory: r.get(2)?,
            dn: r.get(3)?,
            operation: r.get(4)?,
            attributes: json(&attributes)?,
            detail: r.get(6)?,
            planned: r.get(7)?,
            run_id: r.get(8)?,
            run_token: r.get(9)?,
            rule: r.get(10)?,
            record_id: r.get(11)?,
            event_id: r.get(12)?,
            dn_key: r.get(13)?,
        })
    })();
    Ok(entry)
}

/// Finishes events that cannot be processed, each with a failed [`SET_ASIDE`] run giving the
/// reason: those still undone, free for `owner`, and claimed often enough (see
/// [`Store::pending_events`]).
fn set_aside(conn: &mut Connection, events: &[super::Aside], owner: &str) -> Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let now = ts(Utc::now());
    for e in events {
        let taken = tx
            .prepare_cached(
                "UPDATE events SET done = 1, claimed_by = NULL, claimed_until = NULL
                 WHERE id = ?1 AND done = 0 AND tries >= ?2
                   AND (claimed_by IS NULL OR claimed_by = ?3 OR claimed_until < ?4)",
            )?
            .execute(params![e.id, e.tries, owner, now])?;
        if taken == 0 {
            continue;
        }
        tracing::error!(event = e.id, reason = %e.reason, "An event is set aside.");
        tx.prepare_cached(
            "INSERT INTO runs (event_id, rule, record_id, event, status, error, duration_ms, log, attempts, started_at, finished_at)
             VALUES (?1, ?2, ?3, '', 'failed', ?4, 0, '[]', 0, ?5, ?5)
             ON CONFLICT(event_id, rule) WHERE event_id IS NOT NULL DO UPDATE SET error = excluded.error, status = 'failed'",
        )?
        .execute(params![e.id, super::SET_ASIDE, e.record_id, e.reason, now])?;
    }
    tx.commit()?;
    Ok(())
}

impl Store for SqliteStore {
    fn ingest(&self, items: &[Ingest], claim: Option<(&str, DateTime<Utc>)>) -> Result<Vec<Option<Event>>> {
        let ready = items.iter().map(NewRecord::prepare).collect::<Result<Vec<_>>>()?;
        let mut conn = self.conn();
        // An ingest reads (the record, the key) before it writes: it takes the write lock at
        // once, like a commit.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let events = items
            .iter()
            .zip(ready)
            .map(|(i, ready)| match ready {
                // The id was made just now: no earlier event of it can be unfinished.
                Some(new) => new.insert(&tx, &i.kind, 0, None, claim, true).map(Some),
                None => ingest_one(&tx, i, 0, claim),
            })
            .collect::<Result<Vec<_>>>()?;
        tx.commit()?;
        Ok(events)
    }

    fn validate(&self, item: &Ingest) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        ingest_one(&tx, item, 0, None)?;
        tx.rollback()?;
        Ok(())
    }

    fn pending_events(
        &self,
        limit: usize,
        wait_behind_retries: bool,
        feed: super::Feed<'_>,
        after: i64,
    ) -> Result<Vec<super::Pending>> {
        let (owner, unclaimed) = match feed {
            super::Feed::Own(o) => (o, false),
            super::Feed::OwnAndUnclaimed(o) => (o, true),
        };
        let mut conn = self.conn();
        let (events, aside) = {
            // Own events (claimed by `owner`) use the partial index on claims; unclaimed ones
            // the pending index.
            let mut stmt = conn.prepare_cached(
                "SELECT e.id, e.kind, e.record, e.previous, e.depth, e.created_at, e.tries, e.record_id,
                        CASE WHEN e.claimed_by IS ?4 THEN e.claimed_until END FROM events e
                 WHERE e.done = 0 AND e.id > ?6
                   AND (e.claimed_by = ?4 OR (?5 AND (e.claimed_until IS NULL OR e.claimed_until < ?1)))
                   AND NOT EXISTS (SELECT 1 FROM events p WHERE p.record_id = e.record_id AND p.done = 0 AND p.id < e.id
                                   AND p.claimed_by IS NOT ?4
                                   AND NOT (?5 AND (p.claimed_until IS NULL OR p.claimed_until < ?1)))
                   AND (?2 = 0 OR NOT EXISTS (SELECT 1 FROM runs r WHERE r.record_id = e.record_id AND r.status = 'retrying'))
                 ORDER BY e.id LIMIT ?3",
            )?;
            // Only the id is read strictly: a column of the wrong type (a BLOB where text is
            // expected, a negative depth) is an event that cannot be read, set aside like one
            // that does not parse, rather than an error that would stop every pass.
            let rows = stmt.query_map(
                params![ts(Utc::now()), wait_behind_retries, limit as i64, owner, unclaimed, after],
                |r| {
                    let record_id = r.get::<_, String>(7).unwrap_or_else(|_| String::from("(unreadable)"));
                    let own_until = r.get::<_, Option<String>>(8);
                    Ok((r.get::<_, i64>(0)?, row_to_event(r), r.get::<_, u32>(6), record_id, own_until))
                },
            )?;
            let mut events = Vec::new();
            let mut aside = Vec::new();
            for row in rows {
                let (id, row, tries, record_id, own_until) = row?;
                let (row, tries, own_until) = match (row, tries, own_until) {
                    (Ok(row), Ok(tries), Ok(own_until)) => (row, tries, own_until),
                    (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                        aside.push(super::Aside::unreadable(id, record_id, e));
                        continue;
                    }
                };
                if super::Aside::worn_out(tries, own_until.is_some()) {
                    aside.push(super::Aside::never_ended(id, record_id, tries));
                    continue;
                }
                let own_claim_until = own_until.as_deref().map(parse_ts).transpose();
                match build_event(row).and_then(|e| Ok((e, own_claim_until?))) {
                    // An own event's claim is taken already; another's is about to be.
                    Ok((e, own_claim_until)) => events.push(super::Pending {
                        event: Event { claims: if own_claim_until.is_some() { tries } else { tries + 1 }, ..e },
                        own_claim_until,
                    }),
                    Err(e) => aside.push(super::Aside::unreadable(id, record_id, e)),
                }
            }
            (events, aside)
        };
        if !aside.is_empty() {
            set_aside(&mut conn, &aside, owner)?;
        }
        Ok(events)
    }

    fn claim(&self, ids: &[i64], owner: &str, until: DateTime<Utc>) -> Result<Vec<i64>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = ts(Utc::now());
        let mut claimed = Vec::with_capacity(ids.len());
        {
            // A claim that is not the renewal of the owner's own live claim is a try. An event
            // is taken only when every earlier unfinished event of its record is the owner's
            // (claimed in this batch, in id order, or before): a record's events run in order
            // whoever runs them.
            let mut stmt = tx.prepare_cached(
                "UPDATE events SET claimed_by = ?1, claimed_until = ?2,
                   tries = tries + CASE WHEN claimed_by = ?1 AND claimed_until >= ?4 THEN 0 ELSE 1 END
                 WHERE id = ?3 AND done = 0 AND (claimed_by IS NULL OR claimed_by = ?1 OR claimed_until < ?4)
                   AND NOT EXISTS (SELECT 1 FROM events p WHERE p.record_id = events.record_id AND p.done = 0
                                   AND p.id < events.id AND p.claimed_by IS NOT ?1)",
            )?;
            let mut ids = ids.to_vec();
            ids.sort_unstable();
            for id in &ids {
                if stmt.execute(params![owner, ts(until), id, now])? == 1 {
                    claimed.push(*id);
                }
            }
        }
        tx.commit()?;
        Ok(claimed)
    }

    fn unclaim(&self, event_id: i64, owner: &str) -> Result<()> {
        self.conn()
            .prepare_cached(
                "UPDATE events SET claimed_by = NULL, claimed_until = NULL, tries = max(tries - 1, 0)
                 WHERE id = ?1 AND claimed_by = ?2",
            )?
            .execute(params![event_id, owner])?;
        Ok(())
    }

    fn record_busy(&self, record_id: &str) -> Result<bool> {
        let conn = self.conn();
        let busy: bool = conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM events WHERE record_id = ?1 AND done = 0) \
                 OR EXISTS (SELECT 1 FROM runs WHERE record_id = ?1 AND status = 'retrying')",
            )?
            .query_row(params![record_id], |r| r.get(0))?;
        Ok(busy)
    }

    fn claim_owners(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT DISTINCT claimed_by FROM events WHERE done = 0 AND claimed_by IS NOT NULL AND claimed_until >= ?1",
        )?;
        let rows = stmt.query_map(params![ts(Utc::now())], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn release_claims(&self, owner: &str) -> Result<u64> {
        let n = self.conn().execute(
            "UPDATE events SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = ?1 AND done = 0",
            params![owner],
        )?;
        Ok(n as u64)
    }

    fn prune(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let cutoff = ts(before);
        let runs = tx.execute("DELETE FROM runs WHERE status = 'ok' AND finished_at < ?1", params![cutoff])?;
        // An event goes once it is finished, old, and none of its runs is kept.
        let events = tx.execute(
            "DELETE FROM events WHERE done = 1 AND created_at < ?1
             AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.event_id = events.id)",
            params![cutoff],
        )?;
        tx.execute("DELETE FROM workers WHERE seen_at < ?1", params![cutoff])?;
        tx.commit()?;
        Ok((runs + events) as u64)
    }

    fn queue_depth(&self) -> Result<u64> {
        Ok(self.conn().query_row("SELECT count(*) FROM events WHERE done = 0", [], |r| r.get::<_, i64>(0))? as u64)
    }

    fn event_by_idempotency_key(&self, key: &str) -> Result<Option<Event>> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT id, kind, record, previous, depth, created_at FROM events WHERE idempotency_key = ?1",
                params![key],
                row_to_event,
            )
            .optional()?;
        row.map(build_event).transpose()
    }

    fn get_event(&self, id: i64) -> Result<Option<Event>> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT id, kind, record, previous, depth, created_at FROM events WHERE id = ?1",
                params![id],
                row_to_event,
            )
            .optional()?;
        row.map(build_event).transpose()
    }

    fn get_record(&self, id: &str) -> Result<Option<Record>> {
        load_record(&self.conn(), id)
    }

    fn entities(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT DISTINCT entity FROM records ORDER BY entity")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn find_records(&self, entity: &str, criteria: &Fields, limit: usize) -> Result<Vec<Record>> {
        let mut sql = String::from("SELECT id FROM records WHERE entity = ?");
        let mut args: Vec<String> = vec![entity.to_string()];
        let in_rust = criteria_sql(criteria, &mut sql, &mut args);
        load_matching(&self.conn(), sql, args, &in_rust, limit)
    }

    fn find_busy_before(&self, entity: &str, criteria: &Fields, before: &str, limit: usize) -> Result<Vec<Record>> {
        // Candidates come from the unfinished events ahead of `before`'s (the partial index
        // `events_pending`: those in flight when the queue is run in order) and the runs
        // waiting for a retry (`runs_retrying`), never from a scan of the entity's records.
        let mut sql = String::from(
            "SELECT id FROM records WHERE entity = ? AND id IN (\
             SELECT e.record_id FROM events e WHERE e.done = 0 AND e.id < (\
             SELECT COALESCE(MIN(m.id), 9223372036854775807) FROM events m WHERE m.record_id = ? AND m.done = 0) \
             UNION SELECT r.record_id FROM runs r INDEXED BY runs_retrying WHERE r.status = 'retrying')",
        );
        let mut args: Vec<String> = vec![entity.to_string(), before.to_string()];
        let in_rust = criteria_sql(criteria, &mut sql, &mut args);
        let conn = self.conn();
        let found = load_matching(&conn, sql, args, &in_rust, limit)?;
        Ok(found.into_iter().filter(|r| r.id != before).collect())
    }

    fn runs_of_event(&self, event_id: i64) -> Result<Vec<Run>> {
        let conn = self.conn();
        // Sorted here: `ORDER BY id` would make SQLite build a sorter for every event, most of
        // which have no run yet.
        let mut runs =
            query_runs(&conn, &format!("SELECT {RUN_COLUMNS} FROM runs WHERE event_id = ?1"), params![event_id])?;
        runs.sort_by_key(|r| r.id);
        Ok(runs)
    }

    fn commit_run(&self, c: super::Commit<'_>) -> Result<(i64, Vec<Event>)> {
        self.commit_queued(Pending::Run(Box::new(PendingRun::new(&c))))
    }

    fn commit_runs(&self, commits: &[super::Commit<'_>]) -> Vec<Result<(i64, Vec<Event>)>> {
        // Written straight from the caller's borrows: nothing waits in the queue.
        let group: Vec<(u64, Item<'_>)> = commits.iter().enumerate().map(|(i, c)| (i as u64, Item::Run(*c))).collect();
        let mut results = self.commit_group(&group);
        (0..commits.len() as u64).map(|i| results.remove(&i).expect("the group holds every run")).collect()
    }

    fn finish_events(&self, event_ids: &[i64]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt =
                tx.prepare_cached("UPDATE events SET done = 1, claimed_by = NULL, claimed_until = NULL WHERE id = ?1")?;
            for id in event_ids {
                stmt.execute(params![id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn finish_event(&self, event_id: i64) -> Result<()> {
        self.conn()
            .prepare_cached("UPDATE events SET done = 1, claimed_by = NULL, claimed_until = NULL WHERE id = ?1")?
            .execute(params![event_id])?;
        Ok(())
    }

    fn runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        let mut sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE 1 = 1");
        let mut args: Vec<String> = Vec::new();
        if filter.failed {
            sql.push_str(" AND status != 'ok'");
        }
        if let Some(rule) = &filter.rule {
            sql.push_str(" AND rule = ?");
            args.push(rule.clone());
        }
        if let Some(record) = &filter.record_id {
            sql.push_str(" AND record_id = ?");
            args.push(record.clone());
        }
        let limit = if filter.limit == 0 { i64::MAX } else { filter.limit as i64 };
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
        let conn = self.conn();
        let mut runs = query_runs(&conn, &sql, rusqlite::params_from_iter(args.iter()))?;
        runs.reverse();
        Ok(runs)
    }

    fn get_run(&self, id: i64) -> Result<Option<Run>> {
        let conn = self.conn();
        Ok(query_runs(&conn, &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"), params![id])?.pop())
    }

    fn claim_due_retries(&self, now: DateTime<Utc>, limit: usize, until: DateTime<Utc>) -> Result<Vec<Run>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let runs = query_runs(
            &tx,
            &format!("SELECT {RUN_COLUMNS} FROM runs WHERE status = 'retrying' AND next_attempt_at <= ?1 ORDER BY next_attempt_at LIMIT ?2"),
            params![ts(now), limit as i64],
        )?;
        {
            let mut stmt = tx.prepare_cached("UPDATE runs SET next_attempt_at = ?1 WHERE id = ?2")?;
            for r in &runs {
                stmt.execute(params![ts(until), r.id])?;
            }
        }
        tx.commit()?;
        Ok(runs)
    }

    fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Value>> {
        let conn = self.conn();
        let v: Option<String> = conn
            .prepare_cached("SELECT value FROM kv WHERE namespace = ?1 AND key = ?2")?
            .query_row(params![namespace, key], |r| r.get(0))
            .optional()?;
        v.as_deref().map(json).transpose()
    }

    fn catalog_files(&self) -> Result<Vec<StoredFile>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT kind, path, text, loaded_at FROM catalog_files ORDER BY kind, path")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (kind, path, text, at) = row?;
            let kind =
                FileKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("catalog file kind {kind:?}")))?;
            out.push(StoredFile { kind, path, text, loaded_at: parse_ts(&at)? });
        }
        Ok(out)
    }

    fn save_catalog_files(&self, files: &[StoredFile]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM catalog_files", [])?;
        {
            let mut stmt =
                tx.prepare_cached("INSERT INTO catalog_files (kind, path, text, loaded_at) VALUES (?1, ?2, ?3, ?4)")?;
            for f in files {
                stmt.execute(params![f.kind.as_str(), f.path, f.text, ts(f.loaded_at)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn backup(&self, to: &Path) -> Result<()> {
        let conn = self.conn();
        conn.execute("VACUUM INTO ?1", params![to.to_string_lossy()])?;
        Ok(())
    }

    fn set_max_fanout(&self, max: u64) {
        self.max_fanout.store(max, std::sync::atomic::Ordering::Relaxed);
    }

    fn requeue_event(&self, event_id: i64) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE events SET done = 0, tries = 0, claimed_by = NULL, claimed_until = NULL WHERE id = ?1",
            params![event_id],
        )?;
        tx.execute("DELETE FROM runs WHERE event_id = ?1 AND rule = ?2", params![event_id, SET_ASIDE])?;
        tx.commit()?;
        Ok(())
    }

    fn kv_delete(&self, namespace: &str, key: &str) -> Result<()> {
        self.conn().execute("DELETE FROM kv WHERE namespace = ?1 AND key = ?2", params![namespace, key])?;
        Ok(())
    }

    fn kv_set(&self, namespace: &str, key: &str, value: &Value) -> Result<()> {
        self.conn()
            .prepare_cached(
                "INSERT INTO kv (namespace, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT(namespace, key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![namespace, key, to_json(value)])?;
        Ok(())
    }

    fn runs_page(&self, q: &RunQuery) -> Result<Vec<Run>> {
        let mut sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut arg = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
            sql.push_str(clause);
            args.push(v);
        };
        match q.status {
            // `status != 'ok'` repeated so that SQLite picks the partial index.
            Some(RunStatus::Ok) => arg(&mut sql, " AND status = ?", "ok".to_string().into()),
            Some(s) => arg(&mut sql, " AND status != 'ok' AND status = ?", s.as_str().to_string().into()),
            None => {}
        }
        if let Some(rule) = &q.rule {
            arg(&mut sql, " AND rule = ?", rule.clone().into());
        }
        if let Some(record) = &q.record_id {
            arg(&mut sql, " AND record_id = ?", record.clone().into());
        }
        if let Some(since) = q.since {
            arg(&mut sql, " AND started_at >= ?", ts(since).into());
        }
        if let Some(until) = q.until {
            arg(&mut sql, " AND started_at < ?", ts(until).into());
        }
        if let Some(before) = q.before {
            arg(&mut sql, " AND id < ?", before.into());
        }
        arg(&mut sql, " ORDER BY id DESC LIMIT ?", (q.limit.min(i64::MAX as usize) as i64).into());
        let conn = self.conn();
        query_runs(&conn, &sql, rusqlite::params_from_iter(args))
    }

    fn runs_per_minute(&self, since: DateTime<Utc>, max_runs: usize) -> Result<Vec<MinuteCount>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT substr(started_at, 1, 16) AS minute, SUM(status = 'ok'), SUM(status != 'ok')
             FROM (SELECT started_at, status FROM runs ORDER BY id DESC LIMIT ?1)
             WHERE started_at >= ?2 GROUP BY minute ORDER BY minute",
        )?;
        let rows = stmt.query_map(params![max_runs as i64, ts(since)], |r| {
            Ok(MinuteCount { minute: r.get(0)?, ok: r.get::<_, i64>(1)? as u64, not_ok: r.get::<_, i64>(2)? as u64 })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn failing_rules(&self) -> Result<Vec<Failing>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT rule, COUNT(*), MAX(id) FROM runs WHERE status != 'ok' GROUP BY rule ORDER BY MAX(id) DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Failing { rule: r.get(0)?, runs: r.get::<_, i64>(1)? as u64, newest_run: r.get(2)? })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn records_page(&self, entity: &str, before: Option<&str>, limit: usize) -> Result<Vec<Record>> {
        let conn = self.conn();
        let ids: Vec<String> = {
            // Two statements rather than `(?2 IS NULL OR id < ?2)`, which SQLite cannot read
            // as a range of the index.
            let limit = limit.min(i64::MAX as usize) as i64;
            let rows: rusqlite::Result<Vec<String>> = match before {
                Some(before) => conn
                    .prepare_cached("SELECT id FROM records WHERE entity = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3")?
                    .query_map(params![entity, before, limit], |r| r.get(0))?
                    .collect(),
                None => conn
                    .prepare_cached("SELECT id FROM records WHERE entity = ?1 ORDER BY id DESC LIMIT ?2")?
                    .query_map(params![entity, limit], |r| r.get(0))?
                    .collect(),
            };
            rows?
        };
        let mut found = Vec::with_capacity(ids.len());
        for id in &ids {
            if let Some(r) = load_record(&conn, id)? {
                found.push(r);
            }
        }
        Ok(found)
    }

    fn record_audit(&self, entries: &[AuditEntry]) -> Result<()> {
        self.commit_queued(Pending::Audit(entries.to_vec()))?;
        Ok(())
    }

    fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM directory_audit WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(dn) = &q.dn {
            sql.push_str(" AND dn_key = ?");
            args.push(dn.clone().into());
        }
        if let Some(record) = &q.record_id {
            sql.push_str(" AND record_id = ?");
            args.push(record.clone().into());
        }
        if let Some(run) = q.run_id {
            sql.push_str(" AND run_id = ?");
            args.push(run.into());
        }
        if let Some(since) = q.since {
            sql.push_str(" AND at >= ?");
            args.push(ts(since).into());
        }
        let limit = if q.limit == 0 { i64::MAX } else { q.limit as i64 };
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), row_to_audit)?;
        let mut out = rows.map(|r| r?).collect::<Result<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }

    fn prune_audit(&self, before: DateTime<Utc>) -> Result<u64> {
        Ok(self.conn().execute("DELETE FROM directory_audit WHERE at < ?1", params![ts(before)])? as u64)
    }

    fn take_job_tick(&self, job: &str, tick: DateTime<Utc>, owner: &str, until: DateTime<Utc>) -> Result<TickTaken> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let row: Option<(String, Option<String>, Option<String>)> = tx
            .query_row("SELECT tick, runner, run_until FROM job_ticks WHERE job = ?1", params![job], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let (last, runner, run_until) = match row {
            Some((tick, runner, until)) => {
                (Some(parse_ts(&tick)?), runner, until.as_deref().map(parse_ts).transpose()?)
            }
            None => (None, None, None),
        };
        let taken = super::decide_tick(last, runner.as_deref(), run_until, tick, Utc::now());
        match &taken {
            TickTaken::Run => tx.execute(
                "INSERT INTO job_ticks (job, tick, runner, run_until) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(job) DO UPDATE SET tick = excluded.tick, runner = excluded.runner, run_until = excluded.run_until",
                params![job, ts(tick), owner, ts(until)],
            )?,
            TickTaken::Running(_) => tx.execute("UPDATE job_ticks SET tick = ?2 WHERE job = ?1", params![job, ts(tick)])?,
            TickTaken::Taken => 0,
        };
        tx.commit()?;
        Ok(taken)
    }

    fn last_job_tick(&self, job: &str) -> Result<Option<DateTime<Utc>>> {
        let tick: Option<String> = self
            .conn()
            .query_row("SELECT tick FROM job_ticks WHERE job = ?1", params![job], |r| r.get(0))
            .optional()?;
        tick.as_deref().map(parse_ts).transpose()
    }

    fn record_job_tick(&self, job: &str, tick: DateTime<Utc>) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let last: Option<String> =
            tx.query_row("SELECT tick FROM job_ticks WHERE job = ?1", params![job], |r| r.get(0)).optional()?;
        if last.as_deref().map(parse_ts).transpose()?.is_none_or(|last| last < tick) {
            tx.execute(
                "INSERT INTO job_ticks (job, tick) VALUES (?1, ?2) ON CONFLICT(job) DO UPDATE SET tick = excluded.tick",
                params![job, ts(tick)],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn end_job_run(&self, job: &str, owner: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE job_ticks SET runner = NULL, run_until = NULL WHERE job = ?1 AND runner = ?2",
            params![job, owner],
        )?;
        Ok(())
    }

    fn heartbeat(&self, beat: &WorkerBeat<'_>, until: DateTime<Utc>) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO workers (id, host, pid, started_at, seen_at, figures) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(id) DO UPDATE SET seen_at = excluded.seen_at, figures = excluded.figures",
            params![beat.id, beat.host, beat.pid, ts(beat.started_at), ts(Utc::now()), to_json(beat.figures)],
        )?;
        let until = ts(until);
        tx.execute(
            "UPDATE events SET claimed_until = ?2 WHERE claimed_by = ?1 AND done = 0 AND claimed_until < ?2",
            params![beat.id, until],
        )?;
        tx.execute("UPDATE job_ticks SET run_until = ?2 WHERE runner = ?1", params![beat.id, until])?;
        tx.commit()?;
        Ok(())
    }

    fn workers(&self) -> Result<Vec<Worker>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, host, pid, started_at, seen_at, figures FROM workers ORDER BY started_at, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, host, pid, started, seen, figures) = row?;
            out.push(Worker {
                id,
                host,
                pid,
                started_at: parse_ts(&started)?,
                seen_at: parse_ts(&seen)?,
                figures: json(&figures)?,
            });
        }
        Ok(out)
    }

    fn forget_worker(&self, id: &str) -> Result<()> {
        self.conn().execute("DELETE FROM workers WHERE id = ?1", params![id])?;
        Ok(())
    }

    fn describe(&self) -> String {
        match &self.path {
            Some(p) => format!("sqlite:{}", p.display()),
            None => "sqlite (in memory)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Submitted;
    use serde_json::json;

    impl SqliteStore {
        fn ingest_all(&self, items: &[Ingest]) -> Result<Vec<Option<Event>>> {
            self.ingest(items, None)
        }
    }

    fn fields(v: Value) -> Fields {
        v.as_object().unwrap().clone()
    }

    fn ingest(entity: &str, kind: EventKind, id: Option<&str>, f: Value) -> Ingest {
        Ingest {
            entity: entity.into(),
            kind,
            record: Submitted { id: id.map(String::from), status: None, fields: fields(f) },
            idempotency_key: None,
        }
    }

    /// A store made before the events table was rebuilt (migration 7) keeps its events,
    /// their keys and its id sequence: an id freed at the end is not handed out again.
    #[test]
    fn rebuilding_the_events_table_keeps_events_keys_and_the_id_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tripline.db");
        {
            let conn = Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..6] {
                conn.execute_batch(m).unwrap();
            }
            conn.pragma_update(None, "user_version", 6).unwrap();
            for (n, key) in [(1, Some("k1")), (2, None), (3, Some("k3"))] {
                let record = Record::new("t", Fields::new());
                conn.execute(
                    "INSERT INTO events (kind, record_id, record, depth, created_at, idempotency_key, done)
                     VALUES ('created', ?1, ?2, 0, '2026-01-01T00:00:00Z', ?3, ?4)",
                    params![record.id, to_json(&record), key, (n == 1) as i64],
                )
                .unwrap();
            }
            conn.execute("DELETE FROM events WHERE id = 3", []).unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert!(s.event_by_idempotency_key("k1").unwrap().is_some());
        assert!(s.event_by_idempotency_key("k3").unwrap().is_none());
        assert_eq!(s.queue_depth().unwrap(), 1, "event 2 is still pending");
        let keyed = Ingest { idempotency_key: Some("k1".into()), ..ingest("t", EventKind::Created, None, json!({})) };
        assert!(s.ingest_all(&[keyed]).unwrap()[0].is_none(), "the key still dedupes");
        let next = s.ingest_all(&[ingest("t", EventKind::Created, None, json!({}))]).unwrap();
        assert_eq!(next[0].as_ref().unwrap().id, 4, "id 3 was used before the rebuild");
        let version: usize = s.conn().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len());
    }

    #[test]
    fn backup_is_a_consistent_copy() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open_dir(dir.path()).unwrap();
        s.ingest_all(&[ingest("ticket", EventKind::Created, None, json!({"a": 1}))]).unwrap();
        let copy = dir.path().join("copy.db");
        s.backup(&copy).unwrap();
        let c = SqliteStore::open(&copy).unwrap();
        assert_eq!(c.find_records("ticket", &Fields::new(), 10).unwrap().len(), 1);
        assert!(s.backup(&copy).is_err(), "an existing file is not overwritten");
    }

    /// `n` created events of `entity`, stored.
    fn created(s: &SqliteStore, entity: &str, n: usize) -> Vec<Event> {
        let items: Vec<Ingest> = (0..n).map(|_| ingest(entity, EventKind::Created, None, json!({}))).collect();
        s.ingest_all(&items).unwrap().into_iter().flatten().collect()
    }

    #[test]
    fn rows_that_cannot_be_read_are_set_aside_and_the_others_returned() {
        let s = SqliteStore::in_memory().unwrap();
        let events = created(&s, "t", 6);
        {
            let conn = s.conn();
            // Text that is not JSON, then columns of the wrong type: each is one event that
            // cannot be read, not a reason to stop every pass.
            conn.execute("UPDATE events SET record = '{not json' WHERE id = ?1", params![events[0].id]).unwrap();
            conn.execute("UPDATE events SET record = X'00FF' WHERE id = ?1", params![events[1].id]).unwrap();
            conn.execute("UPDATE events SET depth = -1 WHERE id = ?1", params![events[2].id]).unwrap();
            conn.execute("UPDATE events SET tries = 'many' WHERE id = ?1", params![events[3].id]).unwrap();
            conn.execute("UPDATE events SET kind = X'01', record_id = X'02' WHERE id = ?1", params![events[4].id])
                .unwrap();
        }
        let pending = s.pending_events(10, true, crate::store::Feed::OwnAndUnclaimed("test"), 0).unwrap();
        assert_eq!(pending.iter().map(|e| e.event.id).collect::<Vec<_>>(), [events[5].id]);
        for e in &events[..5] {
            let runs = s.runs_of_event(e.id).unwrap();
            assert_eq!(runs.len(), 1, "event {}", e.id);
            assert_eq!((runs[0].rule.as_str(), runs[0].status), (SET_ASIDE, RunStatus::Failed));
            assert!(runs[0].error.as_deref().unwrap().contains("cannot be read"), "{:?}", runs[0].error);
        }
        assert_eq!(s.queue_depth().unwrap(), 1, "the set-aside events are finished");
    }
}
