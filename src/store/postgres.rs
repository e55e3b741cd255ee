//! The PostgreSQL store: the same [`Store`] as SQLite's, for several `tripline run` workers
//! sharing one database (`[store] url`).
//!
//! What several workers need from it:
//! - **Claims** are taken with `FOR UPDATE SKIP LOCKED` (workers never wait on each other's
//!   rows), and an event is claimed only when every earlier unfinished event of its record is
//!   the claimer's already: per-record order holds across workers. A claim is a lease that the
//!   worker's heartbeat extends ([`Store::heartbeat`]); a dead worker's claims come free when
//!   their lease runs out.
//! - **Wake-ups**: storing events sends `NOTIFY tripline_events` in the storing transaction;
//!   [`Store::subscribe`] listens on a connection of its own, so that idle workers start at
//!   once. Polling stays the fallback.
//! - **Locks** across workers are advisory locks ([`Store::lock`]): one OAuth2 refresh at a
//!   time per connection. Migrations run under one too, so that workers starting together
//!   migrate once.
//! - **Scheduled ticks** are taken in a row lock of `job_ticks` (see [`super::decide_tick`]).
//!
//! The connections are driven by a small tokio runtime of the store's own; the store's
//! methods block the calling thread until their statements are answered (like SQLite's
//! file lock, never inside the runtime's threads). When the server cannot be reached the
//! operations fail with a transient error: the dispatcher and the webhook listener wait and
//! retry, and nothing accepted is lost (an event is accepted once its transaction commits).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Row, Statement, Transaction};

use super::{
    AuditEntry, AuditQuery, Change, Commit, Event, Failing, Feed, FileKind, Ingest, MinuteCount, Pending, Result, Run,
    RunFilter, RunQuery, RunStatus, Store, StoreError, StoredFile, TickTaken, Worker, WorkerBeat, Write, SET_ASIDE,
};
use crate::record::{Comment, EventKind, Fields, Record, Status};

/// Schema migrations, applied in order under an advisory lock; `tripline_schema` counts them.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE records (
    id TEXT PRIMARY KEY,
    entity TEXT NOT NULL,
    status TEXT NOT NULL,
    fields TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX records_entity ON records(entity, id);
CREATE TABLE comments (
    id BIGSERIAL PRIMARY KEY,
    record_id TEXT NOT NULL REFERENCES records(id) ON DELETE CASCADE,
    text TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL,
    key TEXT,
    UNIQUE (record_id, key)
);
CREATE INDEX comments_record ON comments(record_id, id);
CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    record_id TEXT NOT NULL,
    record TEXT NOT NULL,
    previous TEXT,
    depth BIGINT NOT NULL,
    done BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMPTZ NOT NULL,
    idempotency_key TEXT,
    claimed_by TEXT,
    claimed_until TIMESTAMPTZ,
    tries BIGINT NOT NULL DEFAULT 0,
    root_id BIGINT,
    fanout BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX events_idempotency ON events(idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX events_pending ON events(id) WHERE NOT done;
CREATE INDEX events_record ON events(record_id, id) WHERE NOT done;
CREATE INDEX events_claims ON events(claimed_by) WHERE NOT done;
CREATE TABLE runs (
    id BIGSERIAL PRIMARY KEY,
    event_id BIGINT,
    rule TEXT NOT NULL,
    record_id TEXT,
    event TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    duration_ms BIGINT NOT NULL,
    log TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL,
    next_attempt_at TIMESTAMPTZ,
    writes TEXT NOT NULL DEFAULT '[]'
);
CREATE UNIQUE INDEX runs_ledger ON runs(event_id, rule) WHERE event_id IS NOT NULL;
CREATE INDEX runs_retrying ON runs(next_attempt_at) WHERE status = 'retrying';
CREATE INDEX runs_record ON runs(record_id, status);
CREATE INDEX runs_rule ON runs(rule, id);
CREATE INDEX runs_not_ok ON runs(status, id) WHERE status <> 'ok';
CREATE TABLE kv (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
);
CREATE TABLE catalog_files (
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    text TEXT NOT NULL,
    loaded_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (kind, path)
);
CREATE TABLE directory_audit (
    id BIGSERIAL PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL,
    directory TEXT NOT NULL,
    dn TEXT NOT NULL,
    dn_key TEXT NOT NULL,
    operation TEXT NOT NULL,
    attributes TEXT NOT NULL,
    detail TEXT,
    planned BOOLEAN NOT NULL,
    run_id BIGINT,
    run_token TEXT NOT NULL,
    rule TEXT NOT NULL,
    record_id TEXT,
    event_id BIGINT
);
CREATE INDEX directory_audit_dn ON directory_audit(dn_key, id);
CREATE INDEX directory_audit_record ON directory_audit(record_id, id);
CREATE INDEX directory_audit_run ON directory_audit(run_id);
CREATE INDEX directory_audit_at ON directory_audit(at);
CREATE INDEX directory_audit_unlinked ON directory_audit(run_token) WHERE run_id IS NULL;
CREATE TABLE job_ticks (
    job TEXT PRIMARY KEY,
    tick TIMESTAMPTZ NOT NULL,
    runner TEXT,
    run_until TIMESTAMPTZ
);
CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    seen_at TIMESTAMPTZ NOT NULL,
    figures TEXT NOT NULL
);
"#];

/// The schema version this build migrates a PostgreSQL store to.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// The channel new events are announced on.
const CHANNEL: &str = "tripline_events";

/// The advisory lock migrations run under (any fixed number, the same in every worker).
const MIGRATION_LOCK: i64 = 0x7472_6970_6c69_6e65;

/// `[store]`: where the PostgreSQL store is.
#[derive(Clone)]
pub struct PgSettings {
    /// A `postgres://` URL (its password resolved from `${VAR}`).
    pub url: crate::secret::Secret,
    /// How many connections one worker opens at most.
    pub pool: usize,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings").field("url", &redacted_url(self.url.expose())).field("pool", &self.pool).finish()
    }
}

/// The URL without its password, for logs and errors.
fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            // A password given as a query parameter goes too.
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k.eq_ignore_ascii_case("password") { "***".to_string() } else { v.into_owned() };
                    (k.into_owned(), v)
                })
                .collect();
            if !pairs.is_empty() {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "(a URL that does not parse)".into(),
    }
}

/// The PostgreSQL store.
pub struct PgStore {
    /// Drives the connections' sockets; taken and shut down in the background on drop.
    io: Option<tokio::runtime::Runtime>,
    config: tokio_postgres::Config,
    tls: postgres_native_tls::MakeTlsConnector,
    pool: Arc<Pool>,
    max_fanout: std::sync::atomic::AtomicU64,
    /// What [`PgStore::describe`] says: host, port and database.
    target: String,
}

#[derive(Default)]
struct Pool {
    state: Mutex<PoolState>,
    freed: Condvar,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Conn>,
    open: usize,
    max: usize,
}

/// A connection of the pool, with the store's fixed statements prepared on it as they are
/// first used: each later use is one round trip to the server instead of two (prepare, then
/// run).
struct Conn {
    client: Client,
    prepared: Prepared,
}

type Prepared = RefCell<HashMap<&'static str, Statement>>;

/// A connection taken from the pool; back in it when dropped (unless it broke).
struct Pooled<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("a pooled connection is held until dropped")
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("a pooled connection is held until dropped")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.put_back(conn);
        }
    }
}

/// Statements on a connection (`C`: its client, or a transaction of it). The store's fixed
/// statements (`&'static str`) go through the connection's prepared ones; a statement
/// built for one call (`*_dyn`) is prepared for that call only.
struct Db<'a, C> {
    c: &'a C,
    prepared: &'a Prepared,
}

/// Statements in a transaction.
type Tx<'a> = Db<'a, Transaction<'a>>;

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

impl<C: GenericClient + Sync> Db<'_, C> {
    async fn statement(&self, sql: &'static str) -> Result<Statement> {
        if let Some(s) = self.prepared.borrow().get(sql) {
            return Ok(s.clone());
        }
        let s = self.c.prepare(sql).await?;
        self.prepared.borrow_mut().insert(sql, s.clone());
        Ok(s)
    }

    async fn query(&self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>> {
        let s = self.statement(sql).await?;
        Ok(self.c.query(&s, params).await?)
    }

    async fn query_one(&self, sql: &'static str, params: Params<'_>) -> Result<Row> {
        let s = self.statement(sql).await?;
        Ok(self.c.query_one(&s, params).await?)
    }

    async fn query_opt(&self, sql: &'static str, params: Params<'_>) -> Result<Option<Row>> {
        let s = self.statement(sql).await?;
        Ok(self.c.query_opt(&s, params).await?)
    }

    async fn execute(&self, sql: &'static str, params: Params<'_>) -> Result<u64> {
        let s = self.statement(sql).await?;
        Ok(self.c.execute(&s, params).await?)
    }

    async fn query_dyn(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>> {
        Ok(self.c.query(sql, params).await?)
    }

    async fn batch_execute(&self, sql: &str) -> Result<()> {
        Ok(self.c.batch_execute(sql).await?)
    }
}

impl Pool {
    /// Takes a connection back (or forgets it, when it broke).
    fn put_back(&self, conn: Conn) {
        let mut st = lock(&self.state);
        if conn.client.is_closed() {
            st.open -= 1;
        } else {
            st.idle.push(conn);
        }
        drop(st);
        self.freed.notify_one();
    }
}

/// Connects, and drives the connection on the current (the store's) runtime until it ends;
/// `on_message` sees what the server sends unasked (notifications). Returns the client and
/// the task that ends with the connection.
async fn connect(
    config: tokio_postgres::Config,
    tls: postgres_native_tls::MakeTlsConnector,
    on_message: Option<Arc<dyn Fn() + Send + Sync>>,
) -> Result<(Client, tokio::task::JoinHandle<()>)> {
    let (client, mut connection) = config.connect(tls).await?;
    let driven = tokio::spawn(async move {
        use futures::StreamExt;
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                    if let Some(wake) = &on_message {
                        wake()
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "A store connection ended.");
                    break;
                }
            }
        }
    });
    Ok((client, driven))
}

/// An advisory lock held on a connection of its own (see [`Store::lock`]).
struct HeldLock {
    pool: Arc<Pool>,
    conn: Option<Conn>,
    key: String,
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let unlocked = futures::executor::block_on(
            conn.client.execute("SELECT pg_advisory_unlock(hashtextextended($1, 11))", &[&self.key]),
        );
        match unlocked {
            Ok(_) => self.pool.put_back(conn),
            // Unknown state: the connection goes, and with it the lock.
            Err(e) => {
                tracing::debug!(error = %e, "A store lock could not be released; its connection is closed instead.");
                drop(conn);
                lock(&self.pool.state).open -= 1;
                self.pool.freed.notify_one();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a caller waits for a connection of a full pool, or for the server to answer a
/// connection, before the operation fails (transiently).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        let transient = match e.code() {
            // Serialization failures, deadlocks, a server shutting down or out of
            // connections, a lock wait that timed out: the same work can succeed later.
            Some(code) => {
                let c = code.code();
                c.starts_with("08")
                    || c.starts_with("53")
                    || c.starts_with("57P")
                    || ["40001", "40P01", "55P03"].contains(&c)
            }
            // No SQLSTATE: the connection failed (refused, closed, timed out), or the client
            // could not encode a value (permanent).
            None => {
                e.is_closed()
                    || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>())
                    || e.to_string().contains("timeout")
            }
        };
        // The server's own message and detail; never the connection's parameters.
        let message = match e.as_db_error() {
            Some(db) => match db.detail() {
                Some(d) => format!("{}: {d}", db.message()),
                None => db.message().to_string(),
            },
            None => e.to_string(),
        };
        StoreError::Postgres { message, transient }
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("values of the store serialize")
}

/// PostgreSQL text cannot hold a NUL character: such a value is refused with a clear error
/// instead of the server's.
fn no_nul(what: &str, s: &str) -> Result<()> {
    if s.contains('\0') {
        return Err(StoreError::Invalid(format!("{what} contains a NUL character, which the store cannot keep")));
    }
    Ok(())
}

/// Whether a value holds a NUL character in a string or a key.
fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

impl PgStore {
    /// Connects to the database `settings` names and applies pending migrations (under an
    /// advisory lock: workers starting together migrate once).
    pub fn connect(settings: &PgSettings) -> Result<PgStore> {
        let mut config: tokio_postgres::Config =
            settings.url.expose().parse().map_err(|e| {
                StoreError::Invalid(format!("[store] url {}: {e}", redacted_url(settings.url.expose())))
            })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives_idle(Duration::from_secs(30));
        config.application_name("tripline");
        let tls = native_tls::TlsConnector::builder()
            .build()
            .map_err(|e| StoreError::Invalid(format!("[store]: cannot set up TLS: {e}")))?;
        let io = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tripline-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io("the store's connection thread".into(), e))?;
        let target = describe_target(&config);
        let store = PgStore {
            io: Some(io),
            config,
            tls: postgres_native_tls::MakeTlsConnector::new(tls),
            pool: Arc::new(Pool {
                state: Mutex::new(PoolState { max: settings.pool.max(2), ..PoolState::default() }),
                freed: Condvar::new(),
            }),
            max_fanout: std::sync::atomic::AtomicU64::new(super::DEFAULT_MAX_FANOUT),
            target,
        };
        store.migrate()?;
        Ok(store)
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.io.as_ref().expect("the store's runtime lives as long as the store").handle()
    }

    /// A new connection, its socket driven by the store's runtime.
    fn open(&self) -> Result<Conn> {
        let connect = self.handle().spawn(connect(self.config.clone(), self.tls.clone(), None));
        match futures::executor::block_on(connect) {
            Ok(connected) => Ok(Conn { client: connected?.0, prepared: Prepared::default() }),
            Err(e) => Err(StoreError::Postgres { message: format!("connecting: {e}"), transient: true }),
        }
    }

    /// A connection from the pool, opened when none is idle and the pool is not full.
    fn client(&self) -> Result<Pooled<'_>> {
        let deadline = std::time::Instant::now() + CONNECT_TIMEOUT;
        let mut st = lock(&self.pool.state);
        loop {
            while let Some(c) = st.idle.pop() {
                if c.client.is_closed() {
                    st.open -= 1;
                    continue;
                }
                return Ok(Pooled { pool: &self.pool, conn: Some(c) });
            }
            if st.open < st.max {
                st.open += 1;
                drop(st);
                return match self.open() {
                    Ok(c) => Ok(Pooled { pool: &self.pool, conn: Some(c) }),
                    Err(e) => {
                        lock(&self.pool.state).open -= 1;
                        self.pool.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(StoreError::Postgres {
                    message: format!("all {} connections of the pool stayed busy for {CONNECT_TIMEOUT:?}", st.max),
                    transient: true,
                });
            }
            st = self.pool.freed.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Runs `f` on a pooled connection, blocking this thread until it is done (see
    /// [`PgStore::retrying`]).
    fn run<T>(&self, f: impl AsyncFn(&Db<'_, Client>) -> Result<T>) -> Result<T> {
        self.retrying(|conn| futures::executor::block_on(f(&Db { c: &conn.client, prepared: &conn.prepared })))
    }

    /// Runs `f` in a transaction, committed when it returns `Ok`.
    fn tx<T>(&self, f: impl AsyncFn(&Tx<'_>) -> Result<T>) -> Result<T> {
        self.in_tx(true, f)
    }

    /// Runs `f` in a transaction, committed when it returns `Ok` and `commit` says so, else
    /// rolled back.
    fn in_tx<T>(&self, commit: bool, f: impl AsyncFn(&Tx<'_>) -> Result<T>) -> Result<T> {
        self.retrying(|conn| {
            let Conn { client, prepared } = conn;
            futures::executor::block_on(async {
                let tx = client.transaction().await?;
                let out = f(&Db { c: &tx, prepared }).await?;
                if commit {
                    tx.commit().await?;
                } else {
                    tx.rollback().await?;
                }
                Ok(out)
            })
        })
    }

    /// Runs `attempt` on a pooled connection; a serialization failure or deadlock (the
    /// transaction was rolled back whole) is run again, a few times.
    fn retrying<T>(&self, mut attempt: impl FnMut(&mut Conn) -> Result<T>) -> Result<T> {
        let mut tries = 0;
        loop {
            let mut conn = self.client()?;
            match attempt(&mut conn) {
                Err(StoreError::Postgres { ref message, transient: true }) if tries < 3 && retryable(message) => {
                    tries += 1;
                }
                out => return out,
            }
        }
    }

    fn migrate(&self) -> Result<()> {
        self.tx(async |tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
            tx.batch_execute("CREATE TABLE IF NOT EXISTS tripline_schema (version BIGINT NOT NULL)").await?;
            let version: i64 = match tx.query_opt("SELECT version FROM tripline_schema", &[]).await? {
                Some(row) => row.get(0),
                None => {
                    tx.execute("INSERT INTO tripline_schema (version) VALUES (0)", &[]).await?;
                    0
                }
            };
            let version = version as usize;
            if version > MIGRATIONS.len() {
                return Err(StoreError::Newer { found: version, known: MIGRATIONS.len() });
            }
            for m in &MIGRATIONS[version..] {
                tx.batch_execute(m).await?;
            }
            tx.execute("UPDATE tripline_schema SET version = $1", &[&(MIGRATIONS.len() as i64)]).await?;
            Ok(())
        })
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which is not allowed where the store may
        // be dropped (inside another runtime); the connections close as the runtime goes.
        if let Some(io) = self.io.take() {
            io.shutdown_background();
        }
    }
}

/// Whether a transient error is one PostgreSQL rolled back whole and asks to be run again.
fn retryable(message: &str) -> bool {
    message.contains("could not serialize access") || message.contains("deadlock detected")
}

fn describe_target(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("postgres://{host}:{port}/{}", config.get_dbname().unwrap_or("(the user's database)"))
}

async fn load_record(c: &Db<'_, impl GenericClient + Sync>, id: &str) -> Result<Option<Record>> {
    let Some(row) =
        c.query_opt("SELECT entity, status, fields, created_at, updated_at FROM records WHERE id = $1", &[&id]).await?
    else {
        return Ok(None);
    };
    let comments = c
        .query("SELECT text, at FROM comments WHERE record_id = $1 ORDER BY id", &[&id])
        .await?
        .into_iter()
        .map(|r| Comment { text: r.get(0), at: r.get(1) })
        .collect();
    let status: String = row.get(1);
    Ok(Some(Record {
        id: id.to_string(),
        entity: row.get(0),
        status: Status::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("status {status:?}")))?,
        fields: json(row.get::<_, &str>(2))?,
        comments,
        created_at: row.get(3),
        updated_at: row.get(4),
    }))
}

async fn save_record(tx: &Tx<'_>, r: &Record) -> Result<()> {
    crate::record::check_depth(&r.fields).map_err(|e| StoreError::Invalid(format!("record {}: {e}", r.id)))?;
    no_nul("a record id", &r.id)?;
    no_nul("an entity", &r.entity)?;
    if r.fields.iter().any(|(k, v)| k.contains('\0') || has_nul(v)) {
        return Err(StoreError::Invalid(format!(
            "record {}: a field holds a NUL character (\\u0000), which the PostgreSQL store cannot keep",
            r.id
        )));
    }
    tx.execute(
        "INSERT INTO records (id, entity, status, fields, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, fields = excluded.fields, updated_at = excluded.updated_at",
        &[&r.id, &r.entity, &r.status.as_str(), &to_json(&r.fields), &r.created_at, &r.updated_at],
    )
    .await?;
    Ok(())
}

type Claim<'a> = Option<(&'a str, DateTime<Utc>)>;

#[allow(clippy::too_many_arguments)]
async fn insert_event(
    tx: &Tx<'_>,
    kind: &EventKind,
    record: &Record,
    previous: Option<&Record>,
    depth: u32,
    key: Option<&str>,
    claim: Claim<'_>,
    fresh: bool,
) -> Result<Event> {
    let now = Utc::now();
    let record = Record { comments: Vec::new(), ..record.clone() };
    let previous = previous.map(|p| Record { comments: Vec::new(), ..p.clone() });
    let (owner, until) = claim.map_or((None, None), |(o, u)| (Some(o), Some(u)));
    let waits_for_nothing = *kind == EventKind::Created
        && claim.is_some()
        && (fresh
            || !tx
                .query_one("SELECT EXISTS (SELECT 1 FROM events WHERE record_id = $1 AND NOT done)", &[&record.id])
                .await?
                .get::<_, bool>(0));
    let row = tx
        .query_one(
            "INSERT INTO events (kind, record_id, record, previous, depth, created_at, idempotency_key, claimed_by, claimed_until, tries)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            &[
                &kind.as_str(),
                &record.id,
                &to_json(&record),
                &previous.as_ref().map(to_json),
                &(depth as i64),
                &now,
                &key,
                &owner,
                &until,
                &(claim.is_some() as i64),
            ],
        )
        .await?;
    Ok(Event {
        id: row.get(0),
        kind: kind.clone(),
        record,
        previous,
        depth,
        created_at: now,
        claims: 1,
        waits_for_nothing,
    })
}

async fn add_comment(tx: &Tx<'_>, id: &str, text: &str, key: Option<&str>, at: DateTime<Utc>) -> Result<()> {
    no_nul("a comment", text)?;
    if !tx.query_one("SELECT EXISTS (SELECT 1 FROM records WHERE id = $1)", &[&id]).await?.get::<_, bool>(0) {
        return Err(StoreError::NoRecord(id.to_string()));
    }
    tx.execute(
        "INSERT INTO comments (record_id, text, at, key) VALUES ($1, $2, $3, $4)
         ON CONFLICT (record_id, key) DO UPDATE SET text = excluded.text, at = excluded.at",
        &[&id, &text, &at, &key],
    )
    .await?;
    Ok(())
}

async fn ingest_one(tx: &Tx<'_>, item: &Ingest, claim: Claim<'_>) -> Result<Option<Event>> {
    if let Some(key) = &item.idempotency_key {
        no_nul("an idempotency key", key)?;
        // Two workers taking the same delivery at once: the second waits here for the first
        // to commit, then sees its event.
        tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", &[key]).await?;
        if tx.query_opt("SELECT id FROM events WHERE idempotency_key = $1", &[key]).await?.is_some() {
            return Ok(None);
        }
    }
    if let Some(id) = &item.record.id {
        no_nul("a record id", id)?;
    }
    let existing = match &item.record.id {
        Some(id) => load_record(tx, id).await?,
        None => None,
    };
    let (kind, key) = (&item.kind, item.idempotency_key.as_deref());
    let event = match super::plan_ingest(item, existing, Utc::now())? {
        Change::Create { record, fresh } => {
            save_record(tx, &record).await?;
            insert_event(tx, kind, &record, None, 0, key, claim, fresh).await?
        }
        Change::Delete(r) => {
            tx.execute("DELETE FROM records WHERE id = $1", &[&r.id]).await?;
            insert_event(tx, kind, &r, None, 0, key, claim, false).await?
        }
        Change::Update { record, previous } => {
            save_record(tx, &record).await?;
            insert_event(tx, kind, &record, Some(&previous), 0, key, claim, false).await?
        }
    };
    Ok(Some(event))
}

async fn notify(tx: &Tx<'_>) -> Result<()> {
    tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL]).await?;
    Ok(())
}

/// An event's columns as [`build_event`] reads them (a macro, for `concat!`).
macro_rules! event_columns {
    () => {
        "id, kind, record, previous, depth, created_at"
    };
}

fn build_event(row: &Row) -> Result<Event> {
    Ok(Event {
        id: row.get(0),
        kind: EventKind::from(row.get::<_, String>(1)),
        record: json(row.get::<_, &str>(2))?,
        previous: row.get::<_, Option<&str>>(3).map(json).transpose()?,
        depth: u32::try_from(row.get::<_, i64>(4)).map_err(|e| corrupt("event depth", e))?,
        created_at: row.get(5),
        claims: 1,
        waits_for_nothing: false,
    })
}

/// A run's columns as [`build_run`] reads them (a macro, for `concat!`).
macro_rules! run_columns {
    () => {
        "id, rule, record_id, event_id, event, status, error, duration_ms, log, attempts, \
         started_at, finished_at, next_attempt_at, writes"
    };
}
const RUN_COLUMNS: &str = run_columns!();

fn build_run(row: &Row) -> Result<Run> {
    let status: &str = row.get(5);
    Ok(Run {
        id: row.get(0),
        rule: row.get(1),
        record_id: row.get(2),
        event_id: row.get(3),
        event: row.get(4),
        status: RunStatus::parse(status).ok_or_else(|| StoreError::Corrupt(format!("run status {status:?}")))?,
        error: row.get(6),
        duration_ms: row.get::<_, i64>(7).max(0) as u64,
        log: json(row.get::<_, &str>(8))?,
        attempts: u32::try_from(row.get::<_, i64>(9)).map_err(|e| corrupt("run attempts", e))?,
        started_at: row.get(10),
        finished_at: row.get(11),
        next_attempt_at: row.get(12),
        writes: json(row.get::<_, &str>(13))?,
    })
}

fn runs_of(rows: Vec<Row>) -> Result<Vec<Run>> {
    rows.iter().map(build_run).collect()
}

/// Query arguments built up with the SQL text: `$n` placeholders in order.
#[derive(Default)]
struct Args {
    values: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Args {
    /// Adds a value; returns its placeholder.
    fn push(&mut self, v: impl ToSql + Sync + Send + 'static) -> String {
        self.values.push(Box::new(v));
        format!("${}", self.values.len())
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.values.iter().map(|v| v.as_ref() as &(dyn ToSql + Sync)).collect()
    }
}

/// Adds `criteria` to a `SELECT id FROM records WHERE ...` query; returns the criteria
/// checked on the loaded records instead. Text and numbers are compared in SQL, on the JSON
/// text of the field (`json #>`, which reads a path segment as an array index or an object
/// key like [`crate::record::lookup`]): the store writes every value with serde_json, so the
/// same value has the same text. Numbers are compared as numbers (`1` and `1.0` are equal,
/// as in the SQLite store). Other values, and paths with a NUL, are checked on the loaded
/// records.
fn criteria_sql(criteria: &Fields, sql: &mut String, args: &mut Args) -> Fields {
    let mut in_rust = Fields::new();
    for (k, v) in criteria {
        match k.as_str() {
            "id" | "status" => {
                let p = args.push(v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
                sql.push_str(&format!(" AND {k} = {p}"));
            }
            _ if k.contains('\0') || k.split('.').any(|seg| seg.parse::<usize>().is_ok()) => {
                in_rust.insert(k.clone(), v.clone());
            }
            _ if v.is_string() => {
                let path = args.push(k.split('.').map(str::to_string).collect::<Vec<_>>());
                let value = args.push(v.to_string());
                sql.push_str(&format!(
                    " AND json_typeof(fields::json #> {path}::text[]) = 'string' AND (fields::json #> {path}::text[])::text = {value}"
                ));
            }
            _ if v.is_number() => {
                let path = args.push(k.split('.').map(str::to_string).collect::<Vec<_>>());
                let value = args.push(v.to_string());
                sql.push_str(&format!(
                    " AND CASE WHEN json_typeof(fields::json #> {path}::text[]) = 'number' \
                     THEN (fields::json #> {path}::text[])::text::numeric = {value}::text::numeric ELSE false END"
                ));
            }
            _ => {
                in_rust.insert(k.clone(), v.clone());
            }
        }
    }
    in_rust
}

/// Ends a query of record ids built with [`criteria_sql`]: in id order, limited in SQL
/// unless criteria are checked on the loaded records.
fn ordered(mut sql: String, args: &mut Args, in_rust: &Fields, limit: usize) -> String {
    sql.push_str(" ORDER BY id");
    if in_rust.is_empty() {
        let p = args.push(limit.min(i64::MAX as usize) as i64);
        sql.push_str(&format!(" LIMIT {p}"));
    }
    sql
}

/// Runs a query of [`ordered`] and loads at most `limit` of the records that also match
/// `in_rust`.
async fn load_matching(
    c: &Db<'_, impl GenericClient + Sync>,
    sql: &str,
    args: &Args,
    in_rust: &Fields,
    limit: usize,
) -> Result<Vec<Record>> {
    let ids: Vec<String> = c.query_dyn(sql, &args.refs()).await?.iter().map(|r| r.get(0)).collect();
    let mut found = Vec::new();
    for id in &ids {
        if found.len() >= limit {
            break;
        }
        match load_record(c, id).await? {
            Some(r) if r.matches(in_rust) => found.push(r),
            _ => {}
        }
    }
    Ok(found)
}

async fn apply_write(tx: &Tx<'_>, w: &Write, depth: u32, claim: Claim<'_>, raised: &mut Vec<Event>) -> Result<()> {
    let now = Utc::now();
    match w {
        Write::Create(r) => {
            if load_record(tx, &r.id).await?.is_some() {
                return Err(StoreError::Exists(r.id.clone()));
            }
            save_record(tx, r).await?;
            raised.push(insert_event(tx, &EventKind::Created, r, None, depth, None, claim, false).await?);
        }
        Write::Update { id, fields } => {
            let previous = load_record(tx, id).await?.ok_or_else(|| StoreError::NoRecord(id.clone()))?;
            let r = super::changed(&previous, fields, None, now);
            save_record(tx, &r).await?;
            raised.push(insert_event(tx, &EventKind::Updated, &r, Some(&previous), depth, None, claim, false).await?);
        }
        Write::Comment { id, text, key } => add_comment(tx, id, text, key.as_deref(), now).await?,
        Write::Close { id, text } => {
            let previous = load_record(tx, id).await?.ok_or_else(|| StoreError::NoRecord(id.clone()))?;
            if let Some(text) = text {
                add_comment(tx, id, text, None, now).await?;
            }
            if previous.status != Status::Closed {
                let r = super::changed(&previous, &Fields::new(), Some(Status::Closed), now);
                save_record(tx, &r).await?;
                raised
                    .push(insert_event(tx, &EventKind::Updated, &r, Some(&previous), depth, None, claim, false).await?);
            }
        }
        Write::SetState { namespace, key, value } => {
            no_nul("a state key", key)?;
            tx.execute(
                "INSERT INTO kv (namespace, key, value) VALUES ($1, $2, $3)
                 ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
                &[namespace, key, &to_json(value)],
            )
            .await?;
        }
    }
    Ok(())
}

async fn charge_fanout(tx: &Tx<'_>, cause: i64, raised: &[Event], max: u64) -> Result<()> {
    let Some(root) = tx.query_opt("SELECT COALESCE(root_id, id) FROM events WHERE id = $1", &[&cause]).await? else {
        return Ok(());
    };
    let root: i64 = root.get(0);
    let ids: Vec<i64> = raised.iter().map(|e| e.id).collect();
    tx.execute("UPDATE events SET root_id = $1 WHERE id = ANY($2)", &[&root, &ids]).await?;
    let total: i64 = tx
        .query_one(
            "UPDATE events SET fanout = fanout + $1 WHERE id = $2 RETURNING fanout",
            &[&(raised.len() as i64), &root],
        )
        .await?
        .get(0);
    if total as u64 > max {
        return Err(super::fanout_exceeded(raised.len(), root, total, max));
    }
    Ok(())
}

async fn write_run(tx: &Tx<'_>, p: &Commit<'_>, max_fanout: u64) -> Result<(i64, Vec<Event>)> {
    let (run, depth) = (p.run, p.depth);
    if let (Some(owner), Some(event)) = (p.fence, run.event_id) {
        // Locked until the commit: no other worker can take the event in between.
        let held = tx
            .query_opt(
                "SELECT 1 FROM events WHERE id = $1 AND NOT done AND claimed_by = $2 FOR UPDATE",
                &[&event, &owner],
            )
            .await?;
        if held.is_none() {
            return Err(StoreError::ClaimLost(event));
        }
    }
    let mut raised = Vec::new();
    for w in p.writes {
        apply_write(tx, w, depth, p.claim_raised, &mut raised).await?;
    }
    if let (Some(cause), false) = (run.event_id, raised.is_empty()) {
        charge_fanout(tx, cause, &raised, max_fanout).await?;
    }
    no_nul("a rule name", &run.rule)?;
    let error = run.error.as_deref().map(|e| e.replace('\0', "\u{FFFD}"));
    let id: i64 = tx
        .query_one(
            "INSERT INTO runs (event_id, rule, record_id, event, status, error, duration_ms, log, attempts, started_at, finished_at, next_attempt_at, writes)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (event_id, rule) WHERE event_id IS NOT NULL DO UPDATE SET
               status = excluded.status, error = excluded.error, duration_ms = excluded.duration_ms, log = excluded.log,
               attempts = excluded.attempts, started_at = excluded.started_at, finished_at = excluded.finished_at,
               next_attempt_at = excluded.next_attempt_at, writes = excluded.writes
             RETURNING id",
            &[
                &run.event_id,
                &run.rule,
                &run.record_id,
                &run.event,
                &run.status.as_str(),
                &error,
                &(run.duration_ms.min(i64::MAX as u64) as i64),
                &to_json(&run.log),
                &(run.attempts as i64),
                &run.started_at,
                &run.finished_at,
                &run.next_attempt_at,
                &to_json(&run.writes),
            ],
        )
        .await?
        .get(0);
    if let Some(e) = p.finish_event {
        tx.execute("UPDATE events SET done = true, claimed_by = NULL, claimed_until = NULL WHERE id = $1", &[&e])
            .await?;
    }
    if let Some(audit) = p.audit {
        if let Some(token) = audit.token {
            tx.execute(
                "UPDATE directory_audit SET run_id = $1 WHERE run_token = $2 AND run_id IS NULL",
                &[&id, &token],
            )
            .await?;
        }
        for entry in audit.entries {
            insert_audit(tx, entry, Some(id)).await?;
        }
    }
    if !raised.is_empty() {
        notify(tx).await?;
    }
    Ok((id, raised))
}

async fn insert_audit(tx: &Tx<'_>, e: &AuditEntry, run_id: Option<i64>) -> Result<()> {
    tx.execute(
        "INSERT INTO directory_audit (at, directory, dn, dn_key, operation, attributes, detail, planned, run_id, run_token, rule, record_id, event_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        &[
            &e.at,
            &e.directory,
            &e.dn,
            &e.dn_key,
            &e.operation,
            &to_json(&e.attributes),
            &e.detail,
            &e.planned,
            &run_id.or(e.run_id),
            &e.run_token,
            &e.rule,
            &e.record_id,
            &e.event_id,
        ],
    )
    .await?;
    Ok(())
}

const AUDIT_COLUMNS: &str =
    "id, at, directory, dn, operation, attributes, detail, planned, run_id, run_token, rule, record_id, event_id, dn_key";

fn build_audit(r: &Row) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.get(0),
        at: r.get(1),
        directory: r.get(2),
        dn: r.get(3),
        operation: r.get(4),
        attributes: json(r.get::<_, &str>(5))?,
        detail: r.get(6),
        planned: r.get(7),
        run_id: r.get(8),
        run_token: r.get(9),
        rule: r.get(10),
        record_id: r.get(11),
        event_id: r.get(12),
        dn_key: r.get(13),
    })
}

/// Finishes events that cannot be processed, each with a failed [`SET_ASIDE`] run giving the
/// reason: those still undone, free for `owner`, and claimed often enough (see
/// [`Store::pending_events`]).
async fn set_aside(tx: &Tx<'_>, events: &[super::Aside], owner: &str) -> Result<()> {
    let now = Utc::now();
    for e in events {
        let taken = tx
            .execute(
                "UPDATE events SET done = true, claimed_by = NULL, claimed_until = NULL
                 WHERE id = $1 AND NOT done AND tries >= $2
                   AND (claimed_by IS NULL OR claimed_by = $3 OR claimed_until < $4)",
                &[&e.id, &(e.tries as i64), &owner, &now],
            )
            .await?;
        if taken == 0 {
            continue;
        }
        tracing::error!(event = e.id, reason = %e.reason, "An event is set aside.");
        tx.execute(
            "INSERT INTO runs (event_id, rule, record_id, event, status, error, duration_ms, log, attempts, started_at, finished_at)
             VALUES ($1, $2, $3, '', 'failed', $4, 0, '[]', 0, $5, $5)
             ON CONFLICT (event_id, rule) WHERE event_id IS NOT NULL DO UPDATE SET error = excluded.error, status = 'failed'",
            &[&e.id, &SET_ASIDE, &e.record_id, &e.reason, &now],
        )
        .await?;
    }
    Ok(())
}

impl Store for PgStore {
    fn ingest(&self, items: &[Ingest], claim: Option<(&str, DateTime<Utc>)>) -> Result<Vec<Option<Event>>> {
        self.tx(async |tx| {
            let mut events = Vec::with_capacity(items.len());
            for item in items {
                events.push(ingest_one(tx, item, claim).await?);
            }
            if events.iter().any(Option::is_some) {
                notify(tx).await?;
            }
            Ok(events)
        })
    }

    fn validate(&self, item: &Ingest) -> Result<()> {
        self.in_tx(false, async |tx| {
            ingest_one(tx, item, None).await?;
            Ok(())
        })
    }

    fn pending_events(
        &self,
        limit: usize,
        wait_behind_retries: bool,
        feed: Feed<'_>,
        after: i64,
    ) -> Result<Vec<Pending>> {
        let (owner, unclaimed) = match feed {
            Feed::Own(o) => (o, false),
            Feed::OwnAndUnclaimed(o) => (o, true),
        };
        self.run(async |c| {
            let rows = c
                .query(
                    "SELECT e.id, e.kind, e.record, e.previous, e.depth, e.created_at, e.tries, e.record_id,
                            CASE WHEN e.claimed_by = $4 THEN e.claimed_until END FROM events e
                     WHERE NOT e.done AND e.id > $6
                       AND (e.claimed_by = $4 OR ($5 AND (e.claimed_until IS NULL OR e.claimed_until < $1)))
                       AND NOT EXISTS (SELECT 1 FROM events p WHERE p.record_id = e.record_id AND NOT p.done AND p.id < e.id
                                       AND p.claimed_by IS DISTINCT FROM $4
                                       AND NOT ($5 AND (p.claimed_until IS NULL OR p.claimed_until < $1)))
                       AND (NOT $2 OR NOT EXISTS (SELECT 1 FROM runs r WHERE r.record_id = e.record_id AND r.status = 'retrying'))
                     ORDER BY e.id LIMIT $3",
                    &[&Utc::now(), &wait_behind_retries, &(limit.min(i64::MAX as usize) as i64), &owner, &unclaimed, &after],
                )
                .await?;
            let mut events = Vec::new();
            let mut aside = Vec::new();
            for row in &rows {
                let (id, tries, record_id): (i64, i64, String) = (row.get(0), row.get(6), row.get(7));
                let own_claim_until: Option<DateTime<Utc>> = row.get(8);
                let tries = u32::try_from(tries).unwrap_or(u32::MAX);
                if super::Aside::worn_out(tries, own_claim_until.is_some()) {
                    aside.push(super::Aside::never_ended(id, record_id, tries));
                    continue;
                }
                match build_event(row) {
                    Ok(e) => events.push(Pending {
                        event: Event {
                            claims: if own_claim_until.is_some() { tries } else { tries + 1 },
                            ..e
                        },
                        own_claim_until,
                    }),
                    Err(e) => aside.push(super::Aside::unreadable(id, record_id, e)),
                }
            }
            Ok((events, aside))
        })
        .and_then(|(events, aside)| {
            if !aside.is_empty() {
                self.tx(async |tx| set_aside(tx, &aside, owner).await)?;
            }
            Ok(events)
        })
    }

    fn finish_events(&self, event_ids: &[i64]) -> Result<()> {
        self.run(async |c| {
            c.execute(
                "UPDATE events SET done = true, claimed_by = NULL, claimed_until = NULL WHERE id = ANY($1)",
                &[&event_ids],
            )
            .await?;
            Ok(())
        })
    }

    fn claim(&self, ids: &[i64], owner: &str, until: DateTime<Utc>) -> Result<Vec<i64>> {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        self.tx(async |tx| {
            let now = Utc::now();
            // The events no other live claim holds, locked; those another worker is locking
            // now are skipped rather than waited for.
            let free: Vec<i64> = tx
                .query(
                    "SELECT id FROM events WHERE id = ANY($1) AND NOT done
                       AND (claimed_by IS NULL OR claimed_by = $2 OR claimed_until < $3)
                     ORDER BY id FOR UPDATE SKIP LOCKED",
                    &[&ids, &owner, &now],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if free.is_empty() {
                return Ok(Vec::new());
            }
            // Of those, the ones whose record has no earlier unfinished event held by anyone
            // else (or free but not locked here): a record's events run in order, whichever
            // worker runs them.
            let claimed = tx
                .query(
                    "UPDATE events e SET claimed_by = $2, claimed_until = $3,
                       tries = e.tries + CASE WHEN e.claimed_by = $2 AND e.claimed_until >= $4 THEN 0 ELSE 1 END
                     WHERE e.id = ANY($1)
                       AND NOT EXISTS (SELECT 1 FROM events p WHERE p.record_id = e.record_id AND NOT p.done AND p.id < e.id
                                       AND p.claimed_by IS DISTINCT FROM $2 AND NOT (p.id = ANY($1)))
                     RETURNING e.id",
                    &[&free, &owner, &until, &now],
                )
                .await?;
            let mut claimed: Vec<i64> = claimed.iter().map(|r| r.get(0)).collect();
            claimed.sort_unstable();
            Ok(claimed)
        })
    }

    fn unclaim(&self, event_id: i64, owner: &str) -> Result<()> {
        self.run(async |c| {
            c.execute(
                "UPDATE events SET claimed_by = NULL, claimed_until = NULL, tries = GREATEST(tries - 1, 0)
                 WHERE id = $1 AND claimed_by = $2",
                &[&event_id, &owner],
            )
            .await?;
            Ok(())
        })
    }

    fn record_busy(&self, record_id: &str) -> Result<bool> {
        self.run(async |c| {
            Ok(c.query_one(
                "SELECT EXISTS (SELECT 1 FROM events WHERE record_id = $1 AND NOT done)
                     OR EXISTS (SELECT 1 FROM runs WHERE record_id = $1 AND status = 'retrying')",
                &[&record_id],
            )
            .await?
            .get(0))
        })
    }

    fn claim_owners(&self) -> Result<Vec<String>> {
        self.run(async |c| {
            Ok(c.query(
                "SELECT DISTINCT claimed_by FROM events WHERE NOT done AND claimed_by IS NOT NULL AND claimed_until >= $1",
                &[&Utc::now()],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
        })
    }

    fn release_claims(&self, owner: &str) -> Result<u64> {
        self.run(async |c| {
            c.execute(
                "UPDATE events SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = $1 AND NOT done",
                &[&owner],
            )
            .await
        })
    }

    fn prune(&self, before: DateTime<Utc>) -> Result<u64> {
        self.tx(async |tx| {
            let runs = tx.execute("DELETE FROM runs WHERE status = 'ok' AND finished_at < $1", &[&before]).await?;
            let events = tx
                .execute(
                    "DELETE FROM events WHERE done AND created_at < $1
                     AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.event_id = events.id)",
                    &[&before],
                )
                .await?;
            // Workers not seen since: stopped or gone for good.
            tx.execute("DELETE FROM workers WHERE seen_at < $1", &[&before]).await?;
            Ok(runs + events)
        })
    }

    fn queue_depth(&self) -> Result<u64> {
        self.run(async |c| {
            Ok(c.query_one("SELECT count(*) FROM events WHERE NOT done", &[]).await?.get::<_, i64>(0) as u64)
        })
    }

    fn event_by_idempotency_key(&self, key: &str) -> Result<Option<Event>> {
        if key.contains('\0') {
            return Ok(None);
        }
        self.run(async |c| {
            const SQL: &str = concat!("SELECT ", event_columns!(), " FROM events WHERE idempotency_key = $1");
            c.query_opt(SQL, &[&key]).await?.as_ref().map(build_event).transpose()
        })
    }

    fn get_event(&self, id: i64) -> Result<Option<Event>> {
        self.run(async |c| {
            const SQL: &str = concat!("SELECT ", event_columns!(), " FROM events WHERE id = $1");
            c.query_opt(SQL, &[&id]).await?.as_ref().map(build_event).transpose()
        })
    }

    fn get_record(&self, id: &str) -> Result<Option<Record>> {
        if id.contains('\0') {
            return Ok(None);
        }
        self.run(async |c| load_record(c, id).await)
    }

    fn entities(&self) -> Result<Vec<String>> {
        self.run(async |c| {
            Ok(c.query("SELECT DISTINCT entity FROM records ORDER BY entity", &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })
    }

    fn find_records(&self, entity: &str, criteria: &Fields, limit: usize) -> Result<Vec<Record>> {
        if entity.contains('\0') {
            return Ok(Vec::new());
        }
        let mut args = Args::default();
        let mut sql = format!("SELECT id FROM records WHERE entity = {}", args.push(entity.to_string()));
        let in_rust = criteria_sql(criteria, &mut sql, &mut args);
        let sql = ordered(sql, &mut args, &in_rust, limit);
        self.run(async |c| load_matching(c, &sql, &args, &in_rust, limit).await)
    }

    fn find_busy_before(&self, entity: &str, criteria: &Fields, before: &str, limit: usize) -> Result<Vec<Record>> {
        if entity.contains('\0') || before.contains('\0') {
            return Ok(Vec::new());
        }
        let mut args = Args::default();
        let e = args.push(entity.to_string());
        let b = args.push(before.to_string());
        let mut sql = format!(
            "SELECT id FROM records WHERE entity = {e} AND id IN (\
             SELECT ev.record_id FROM events ev WHERE NOT ev.done AND ev.id < (\
             SELECT COALESCE(MIN(m.id), 9223372036854775807) FROM events m WHERE m.record_id = {b} AND NOT m.done) \
             UNION SELECT r.record_id FROM runs r WHERE r.status = 'retrying')"
        );
        let in_rust = criteria_sql(criteria, &mut sql, &mut args);
        let sql = ordered(sql, &mut args, &in_rust, limit);
        let found = self.run(async |c| load_matching(c, &sql, &args, &in_rust, limit).await)?;
        Ok(found.into_iter().filter(|r| r.id != before).collect())
    }

    fn runs_of_event(&self, event_id: i64) -> Result<Vec<Run>> {
        self.run(async |c| {
            runs_of(
                c.query(concat!("SELECT ", run_columns!(), " FROM runs WHERE event_id = $1 ORDER BY id"), &[&event_id])
                    .await?,
            )
        })
    }

    fn commit_run(&self, commit: Commit<'_>) -> Result<(i64, Vec<Event>)> {
        let max = self.max_fanout.load(std::sync::atomic::Ordering::Relaxed);
        self.tx(async |tx| write_run(tx, &commit, max).await)
    }

    fn commit_runs(&self, commits: &[Commit<'_>]) -> Vec<Result<(i64, Vec<Event>)>> {
        let max = self.max_fanout.load(std::sync::atomic::Ordering::Relaxed);
        if commits.len() > 1 {
            let together = self.tx(async |tx| {
                let mut out = Vec::with_capacity(commits.len());
                for c in commits {
                    out.push(Ok(write_run(tx, c, max).await?));
                }
                Ok(out)
            });
            if let Ok(out) = together {
                return out;
            }
        }
        commits.iter().map(|c| self.commit_run(*c)).collect()
    }

    fn finish_event(&self, event_id: i64) -> Result<()> {
        self.finish_events(&[event_id])
    }

    fn runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        let mut args = Args::default();
        let mut sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE true");
        if filter.failed {
            sql.push_str(" AND status <> 'ok'");
        }
        if let Some(rule) = &filter.rule {
            sql.push_str(&format!(" AND rule = {}", args.push(rule.clone())));
        }
        if let Some(record) = &filter.record_id {
            sql.push_str(&format!(" AND record_id = {}", args.push(record.clone())));
        }
        let limit = if filter.limit == 0 { i64::MAX } else { filter.limit.min(i64::MAX as usize) as i64 };
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
        let mut runs = self.run(async |c| runs_of(c.query_dyn(&sql, &args.refs()).await?))?;
        runs.reverse();
        Ok(runs)
    }

    fn get_run(&self, id: i64) -> Result<Option<Run>> {
        self.run(async |c| {
            c.query_opt(concat!("SELECT ", run_columns!(), " FROM runs WHERE id = $1"), &[&id])
                .await?
                .as_ref()
                .map(build_run)
                .transpose()
        })
    }

    fn claim_due_retries(&self, now: DateTime<Utc>, limit: usize, until: DateTime<Utc>) -> Result<Vec<Run>> {
        self.tx(async |tx| {
            // The runs as they were (their next attempt before the claim moved it), like SQLite's.
            const DUE: &str = "WITH due AS (SELECT id, next_attempt_at AS was FROM runs
                                   WHERE status = 'retrying' AND next_attempt_at <= $1
                                   ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                 UPDATE runs r SET next_attempt_at = $3 FROM due WHERE r.id = due.id
                 RETURNING r.id, r.rule, r.record_id, r.event_id, r.event, r.status, r.error, r.duration_ms, r.log,
                           r.attempts, r.started_at, r.finished_at, due.was, r.writes";
            let mut runs = runs_of(tx.query(DUE, &[&now, &(limit.min(i64::MAX as usize) as i64), &until]).await?)?;
            runs.sort_by_key(|r| (r.next_attempt_at, r.id));
            Ok(runs)
        })
    }

    fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Value>> {
        if key.contains('\0') || namespace.contains('\0') {
            return Ok(None);
        }
        self.run(async |c| {
            c.query_opt("SELECT value FROM kv WHERE namespace = $1 AND key = $2", &[&namespace, &key])
                .await?
                .map(|r| json(r.get::<_, &str>(0)))
                .transpose()
        })
    }

    fn kv_set(&self, namespace: &str, key: &str, value: &Value) -> Result<()> {
        no_nul("a state key", key)?;
        no_nul("a state namespace", namespace)?;
        self.run(async |c| {
            c.execute(
                "INSERT INTO kv (namespace, key, value) VALUES ($1, $2, $3)
                 ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
                &[&namespace, &key, &to_json(value)],
            )
            .await?;
            Ok(())
        })
    }

    fn kv_delete(&self, namespace: &str, key: &str) -> Result<()> {
        if key.contains('\0') || namespace.contains('\0') {
            return Ok(());
        }
        self.run(async |c| {
            c.execute("DELETE FROM kv WHERE namespace = $1 AND key = $2", &[&namespace, &key]).await?;
            Ok(())
        })
    }

    fn set_max_fanout(&self, max: u64) {
        self.max_fanout.store(max, std::sync::atomic::Ordering::Relaxed);
    }

    fn requeue_event(&self, event_id: i64) -> Result<()> {
        self.tx(async |tx| {
            tx.execute(
                "UPDATE events SET done = false, tries = 0, claimed_by = NULL, claimed_until = NULL WHERE id = $1",
                &[&event_id],
            )
            .await?;
            tx.execute("DELETE FROM runs WHERE event_id = $1 AND rule = $2", &[&event_id, &SET_ASIDE]).await?;
            notify(tx).await
        })
    }

    fn catalog_files(&self) -> Result<Vec<StoredFile>> {
        self.run(async |c| {
            c.query("SELECT kind, path, text, loaded_at FROM catalog_files ORDER BY kind, path", &[])
                .await?
                .iter()
                .map(|r| {
                    let kind: &str = r.get(0);
                    Ok(StoredFile {
                        kind: FileKind::parse(kind)
                            .ok_or_else(|| StoreError::Corrupt(format!("catalog file kind {kind:?}")))?,
                        path: r.get(1),
                        text: r.get(2),
                        loaded_at: r.get(3),
                    })
                })
                .collect()
        })
    }

    fn save_catalog_files(&self, files: &[StoredFile]) -> Result<()> {
        for f in files {
            no_nul("a rule or script file", &f.text)?;
            no_nul("a rule or script file's name", &f.path)?;
        }
        self.tx(async |tx| {
            tx.execute("DELETE FROM catalog_files", &[]).await?;
            for f in files {
                tx.execute(
                    "INSERT INTO catalog_files (kind, path, text, loaded_at) VALUES ($1, $2, $3, $4)",
                    &[&f.kind.as_str(), &f.path, &f.text, &f.loaded_at],
                )
                .await?;
            }
            Ok(())
        })
    }

    fn backup(&self, _to: &std::path::Path) -> Result<()> {
        Err(StoreError::Invalid(format!(
            "a PostgreSQL store is backed up with PostgreSQL's own tools: `pg_dump --format=custom --file=FILE {}` \
             while the workers run (a consistent snapshot), `pg_restore` to restore it",
            self.target
        )))
    }

    fn runs_page(&self, q: &RunQuery) -> Result<Vec<Run>> {
        let mut args = Args::default();
        let mut sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE true");
        match q.status {
            Some(RunStatus::Ok) => sql.push_str(" AND status = 'ok'"),
            Some(s) => sql.push_str(&format!(" AND status <> 'ok' AND status = {}", args.push(s.as_str().to_string()))),
            None => {}
        }
        if let Some(rule) = &q.rule {
            sql.push_str(&format!(" AND rule = {}", args.push(rule.clone())));
        }
        if let Some(record) = &q.record_id {
            sql.push_str(&format!(" AND record_id = {}", args.push(record.clone())));
        }
        if let Some(since) = q.since {
            sql.push_str(&format!(" AND started_at >= {}", args.push(since)));
        }
        if let Some(until) = q.until {
            sql.push_str(&format!(" AND started_at < {}", args.push(until)));
        }
        if let Some(before) = q.before {
            sql.push_str(&format!(" AND id < {}", args.push(before)));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", args.push(q.limit.min(i64::MAX as usize) as i64)));
        self.run(async |c| runs_of(c.query_dyn(&sql, &args.refs()).await?))
    }

    fn runs_per_minute(&self, since: DateTime<Utc>, max_runs: usize) -> Result<Vec<MinuteCount>> {
        self.run(async |c| {
            Ok(c.query(
                "SELECT to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI') AS minute,
                        count(*) FILTER (WHERE status = 'ok'), count(*) FILTER (WHERE status <> 'ok')
                 FROM (SELECT started_at, status FROM runs ORDER BY id DESC LIMIT $1) recent
                 WHERE started_at >= $2 GROUP BY minute ORDER BY minute",
                &[&(max_runs.min(i64::MAX as usize) as i64), &since],
            )
            .await?
            .iter()
            .map(|r| MinuteCount { minute: r.get(0), ok: r.get::<_, i64>(1) as u64, not_ok: r.get::<_, i64>(2) as u64 })
            .collect())
        })
    }

    fn failing_rules(&self) -> Result<Vec<Failing>> {
        self.run(async |c| {
            Ok(c.query(
                "SELECT rule, count(*), max(id) FROM runs WHERE status <> 'ok' GROUP BY rule ORDER BY max(id) DESC",
                &[],
            )
            .await?
            .iter()
            .map(|r| Failing { rule: r.get(0), runs: r.get::<_, i64>(1) as u64, newest_run: r.get(2) })
            .collect())
        })
    }

    fn records_page(&self, entity: &str, before: Option<&str>, limit: usize) -> Result<Vec<Record>> {
        let limit = limit.min(i64::MAX as usize) as i64;
        self.run(async |c| {
            let rows = match before {
                Some(before) => {
                    c.query(
                        "SELECT id FROM records WHERE entity = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                        &[&entity, &before, &limit],
                    )
                    .await?
                }
                None => {
                    c.query("SELECT id FROM records WHERE entity = $1 ORDER BY id DESC LIMIT $2", &[&entity, &limit])
                        .await?
                }
            };
            let mut found = Vec::with_capacity(rows.len());
            for row in &rows {
                if let Some(r) = load_record(c, row.get(0)).await? {
                    found.push(r);
                }
            }
            Ok(found)
        })
    }

    fn record_audit(&self, entries: &[AuditEntry]) -> Result<()> {
        self.tx(async |tx| {
            for e in entries {
                insert_audit(tx, e, None).await?;
            }
            Ok(())
        })
    }

    fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let mut args = Args::default();
        let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM directory_audit WHERE true");
        if let Some(dn) = &q.dn {
            sql.push_str(&format!(" AND dn_key = {}", args.push(dn.clone())));
        }
        if let Some(record) = &q.record_id {
            sql.push_str(&format!(" AND record_id = {}", args.push(record.clone())));
        }
        if let Some(run) = q.run_id {
            sql.push_str(&format!(" AND run_id = {}", args.push(run)));
        }
        if let Some(since) = q.since {
            sql.push_str(&format!(" AND at >= {}", args.push(since)));
        }
        let limit = if q.limit == 0 { i64::MAX } else { q.limit.min(i64::MAX as usize) as i64 };
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
        let mut out = self.run(async |c| {
            c.query_dyn(&sql, &args.refs()).await?.iter().map(build_audit).collect::<Result<Vec<_>>>()
        })?;
        out.reverse();
        Ok(out)
    }

    fn prune_audit(&self, before: DateTime<Utc>) -> Result<u64> {
        self.run(async |c| Ok(c.execute("DELETE FROM directory_audit WHERE at < $1", &[&before]).await?))
    }

    fn take_job_tick(&self, job: &str, tick: DateTime<Utc>, owner: &str, until: DateTime<Utc>) -> Result<TickTaken> {
        self.tx(async |tx| {
            tx.execute(
                "INSERT INTO job_ticks (job, tick) VALUES ($1, '-infinity') ON CONFLICT (job) DO NOTHING",
                &[&job],
            )
            .await?;
            let row = tx
                .query_one("SELECT tick, runner, run_until FROM job_ticks WHERE job = $1 FOR UPDATE", &[&job])
                .await?;
            let last: Option<DateTime<Utc>> = row.try_get(0).ok();
            let runner: Option<String> = row.get(1);
            let run_until: Option<DateTime<Utc>> = row.get(2);
            let taken = super::decide_tick(last, runner.as_deref(), run_until, tick, Utc::now());
            match taken {
                TickTaken::Run => {
                    tx.execute(
                        "UPDATE job_ticks SET tick = $2, runner = $3, run_until = $4 WHERE job = $1",
                        &[&job, &tick, &owner, &until],
                    )
                    .await?;
                }
                TickTaken::Running(_) => {
                    tx.execute("UPDATE job_ticks SET tick = $2 WHERE job = $1", &[&job, &tick]).await?;
                }
                TickTaken::Taken => {}
            }
            Ok(taken)
        })
    }

    fn last_job_tick(&self, job: &str) -> Result<Option<DateTime<Utc>>> {
        self.run(async |c| {
            Ok(c.query_opt("SELECT tick FROM job_ticks WHERE job = $1 AND tick > '-infinity'", &[&job])
                .await?
                .map(|r| r.get(0)))
        })
    }

    fn record_job_tick(&self, job: &str, tick: DateTime<Utc>) -> Result<()> {
        self.run(async |c| {
            c.execute(
                "INSERT INTO job_ticks (job, tick) VALUES ($1, $2) ON CONFLICT (job) DO UPDATE SET tick = GREATEST(job_ticks.tick, excluded.tick)",
                &[&job, &tick],
            )
            .await?;
            Ok(())
        })
    }

    fn end_job_run(&self, job: &str, owner: &str) -> Result<()> {
        self.run(async |c| {
            c.execute(
                "UPDATE job_ticks SET runner = NULL, run_until = NULL WHERE job = $1 AND runner = $2",
                &[&job, &owner],
            )
            .await?;
            Ok(())
        })
    }

    fn heartbeat(&self, beat: &WorkerBeat<'_>, until: DateTime<Utc>) -> Result<()> {
        self.tx(async |tx| {
            tx.execute(
                "INSERT INTO workers (id, host, pid, started_at, seen_at, figures) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at, figures = excluded.figures",
                &[&beat.id, &beat.host, &(beat.pid as i64), &beat.started_at, &Utc::now(), &to_json(beat.figures)],
            )
            .await?;
            tx.execute(
                "UPDATE events SET claimed_until = $2 WHERE claimed_by = $1 AND NOT done AND claimed_until < $2",
                &[&beat.id, &until],
            )
            .await?;
            tx.execute("UPDATE job_ticks SET run_until = $2 WHERE runner = $1", &[&beat.id, &until]).await?;
            Ok(())
        })
    }

    fn workers(&self) -> Result<Vec<Worker>> {
        self.run(async |c| {
            c.query("SELECT id, host, pid, started_at, seen_at, figures FROM workers ORDER BY started_at, id", &[])
                .await?
                .iter()
                .map(|r| {
                    Ok(Worker {
                        id: r.get(0),
                        host: r.get(1),
                        pid: r.get::<_, i64>(2) as u32,
                        started_at: r.get(3),
                        seen_at: r.get(4),
                        figures: json(r.get::<_, &str>(5))?,
                    })
                })
                .collect()
        })
    }

    fn forget_worker(&self, id: &str) -> Result<()> {
        self.run(async |c| {
            c.execute("DELETE FROM workers WHERE id = $1", &[&id]).await?;
            Ok(())
        })
    }

    fn lock(&self, name: &str) -> Result<super::StoreLock> {
        let mut pooled = self.client()?;
        futures::executor::block_on(
            pooled.client.execute("SELECT pg_advisory_lock(hashtextextended($1, 11))", &[&name]),
        )?;
        // The lock is the connection's: held until unlocked, or until the connection closes
        // (a worker that dies lets it go with its connection).
        let conn = pooled.conn.take();
        Ok(super::StoreLock::new(HeldLock { pool: self.pool.clone(), conn, key: name.to_string() }))
    }

    fn subscribe(&self, wake: Arc<dyn Fn() + Send + Sync>) -> Result<()> {
        let (config, tls) = (self.config.clone(), self.tls.clone());
        // Listens for as long as the store lives: after a lost connection (a server restart),
        // it connects again and wakes the dispatcher, which reads what came meanwhile.
        self.handle().spawn(async move {
            let mut failing = false;
            loop {
                match connect(config.clone(), tls.clone(), Some(wake.clone())).await {
                    Ok((client, driven)) => match client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                        Ok(()) => {
                            if failing {
                                tracing::info!("Listening for new events again.");
                            }
                            failing = false;
                            wake();
                            let _ = driven.await;
                            drop(client);
                        }
                        Err(e) => tracing::debug!(error = %e, "Cannot listen for new events."),
                    },
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "Cannot listen for new events; polling meanwhile, trying again.");
                        }
                        failing = true;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Ok(())
    }

    fn describe(&self) -> String {
        self.target.clone()
    }
}
