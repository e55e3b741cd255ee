//! The runtime: configuration, store, script engine and the current catalog of rules and
//! scripts, and what one event does to them ([`crate::dispatch`] decides which events run
//! where; its drivers `fire` and `drain` are methods of [`Runtime`] too).
//!
//! An event (already stored) is matched natively against the rule set; each
//! matching rule whose `when` guard holds runs its script with a fresh [`RunCtx`]; the run,
//! its log and the writes it made are committed in one transaction, and the writes raise their
//! own events (followed up to `[engine] max_chain_depth`). A run ledger keyed by event and
//! rule means an event processed twice (after a crash) does not run a rule twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use rand::Rng;

use crate::catalog::Catalog;
use crate::class::Classify;
use crate::config::{AfterFailure, Config, EngineConfig};
use crate::connection::StoreTokens;
use crate::diag::Diagnostic;
use crate::notification::{unknown_contact, Notifier};
use crate::record::{Event, EventKind, Record, Submitted};
use crate::rule::Rule;
use crate::scheduler::Job;
use crate::script::{EngineHook, Hosts, Invocation, RunCtx, ScriptEngine};
use crate::secret::Secrets;
use crate::store::{AuditEntry, Commit, Ingest, Run, RunAudit, RunFilter, RunStatus, Store, StoreError, Write};

/// Why a job could not run.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Unknown(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a runtime could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{}", crate::diag::Diagnostics(.0.clone()))]
    Invalid(Vec<Diagnostic>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Builds a [`Runtime`] from a configuration file or programmatically.
#[derive(Default)]
pub struct RuntimeBuilder {
    config: Option<Config>,
    config_path: Option<PathBuf>,
    store: Option<Arc<dyn Store>>,
    hooks: Vec<EngineHook>,
    handle: Option<tokio::runtime::Handle>,
    secrets: Secrets,
}

impl RuntimeBuilder {
    /// Reads `tripline.toml` (relative folders resolve against its folder).
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_path = Some(path.into());
        self
    }

    /// Uses a configuration built in code.
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Uses this store instead of the SQLite file under `data_dir`.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Registers the embedding program's own functions on the script engine, e.g. methods on
    /// `api` (`engine.register_fn("hello", |api: &mut tripline::script::Api, who: &str| ...)`).
    pub fn register(mut self, hook: impl Fn(&mut rhai::Engine) + Send + Sync + 'static) -> Self {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// How the configuration file's secrets are handled: [`Secrets::Resolve`] (the default)
    /// refuses a configuration with an unset `${VAR}`; with [`Secrets::Defer`], a connection
    /// whose secrets cannot be resolved is left out, and the runs that use it fail saying
    /// why, while everything else works.
    ///
    /// [`Secrets::Resolve`]: crate::secret::Secrets::Resolve
    /// [`Secrets::Defer`]: crate::secret::Secrets::Defer
    pub fn secrets(mut self, secrets: Secrets) -> Self {
        self.secrets = secrets;
        self
    }

    /// Drives LDAP and HTTP calls on this tokio runtime. Without it, the runtime in whose
    /// context `build` is called is used, or else a small one of its own is started.
    pub fn handle(mut self, handle: tokio::runtime::Handle) -> Self {
        self.handle = Some(handle);
        self
    }

    /// Validates everything and opens the store. Every problem is returned at once.
    pub fn build(self) -> Result<Runtime, BuildError> {
        let config = match (self.config, &self.config_path) {
            (Some(c), _) => c,
            (None, Some(p)) => Config::load_with(p, self.secrets).map_err(BuildError::Invalid)?,
            (None, None) => Config::with_engine(EngineConfig::default()),
        };
        let scripts = Arc::new(ScriptEngine::new(&config.limits, &self.hooks));
        let store = match self.store {
            Some(s) => s,
            None => crate::store::open(config.store.as_ref(), &config.engine.data_dir)?,
        };
        store.set_max_fanout(config.engine.max_fanout);
        // A file that is broken now runs the version that last loaded, even after a restart;
        // a file that never loaded is left out. Either way every other rule runs, and the
        // problems are reported (`check` still fails on them).
        let (rules_dir, scripts_dir) = (&config.engine.rules_dir, &config.engine.scripts_dir);
        let stored = store.catalog_files().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "The last good versions of the rules and scripts cannot be read.");
            Vec::new()
        });
        let seed = Catalog::from_stored(&scripts, rules_dir, scripts_dir, &stored);
        let catalog = Catalog::reload(&scripts, rules_dir, scripts_dir, &seed, &config.known_names());
        let (jobs, start_problems) = wire(&config, &catalog);
        for d in config.warnings.iter().chain(&catalog.problems).chain(&start_problems) {
            tracing::warn!(problem = %d, "A problem in the configuration, rules or scripts; `tripline check` lists them all.");
        }
        // Likely mistakes that stop nothing (an entity nothing produces): `check` shows them.
        for d in &catalog.warnings {
            tracing::debug!(problem = %d, "A warning about the rules or scripts.");
        }
        let runtime_files = catalog.files(rules_dir);
        if runtime_files != stored {
            if let Err(e) = store.save_catalog_files(&runtime_files) {
                tracing::warn!(error = %e, "The rules and scripts in force cannot be kept as last good versions.");
            }
        }
        let (handle, owned) = match self.handle.or_else(|| tokio::runtime::Handle::try_current().ok()) {
            Some(h) => (h, None),
            None => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("tripline-io")
                    .enable_all()
                    .build()
                    .map_err(|e| StoreError::Io("the async runtime".into(), e))?;
                (rt.handle().clone(), Some(rt))
            }
        };
        // The connections were built with the configuration, before the store was open; their
        // OAuth2 tokens go to the store from now on.
        if !config.tokens.bind(Arc::new(StoreTokens(store.clone()))) {
            tracing::warn!("This configuration's connections already keep their tokens elsewhere.");
        }
        let hosts = hosts(&config, handle);
        Ok(Runtime {
            config: Arc::new(config),
            store,
            scripts,
            catalog: ArcSwap::from_pointee(catalog),
            hosts: Arc::new(hosts),
            jobs,
            start_problems,
            _io: owned.map(OwnedRuntime),
        })
    }
}

/// The host systems of the configuration, as scripts reach them.
fn hosts(config: &Config, handle: tokio::runtime::Handle) -> Hosts {
    Hosts {
        handle: Some(handle),
        directories: config.directories.clone(),
        // `tripline test` records what a run would change instead of changing it.
        dry_directories: config.directories.iter().map(|(n, d)| (n.clone(), Arc::new(d.dry_run_copy()))).collect(),
        connections: config.connections.clone(),
        unavailable_connections: config.unavailable_connections.clone(),
        notifier: Notifier::new(config.notify.clone()),
    }
}

/// Where the rules and jobs meet the configuration: the jobs whose script is loaded, and the
/// problems found there (a job's script that does not exist; a `notify_on_failure` of a rule
/// or a job naming no `[notify.NAME]`). What they name is left out; the rest runs.
pub fn wire(config: &Config, catalog: &Catalog) -> (BTreeMap<String, Job>, Vec<Diagnostic>) {
    let path = config.path.clone().unwrap_or_else(|| "tripline.toml".into());
    let mut problems = Vec::new();
    let channels = &config.known_names().notify.unwrap_or_default();
    for rule in catalog.rules.rules() {
        problems.extend(rule.notify_on_failure.iter().filter_map(|c| unknown_contact(channels, &rule.path, c)));
    }
    for job in config.jobs.values() {
        problems.extend(job.notify_on_failure.iter().filter_map(|c| unknown_contact(channels, &path, c)));
    }
    let mut jobs = BTreeMap::new();
    for (name, job) in &config.jobs {
        if catalog.scripts.contains_key(&job.script) {
            jobs.insert(name.clone(), job.clone());
            continue;
        }
        // A script that is there but in error (it does not compile, or fails the script
        // checks) has its own problem reported at its place.
        if config.engine.scripts_dir.join(&job.script).is_file() {
            continue;
        }
        // The text is read only to place a problem, which a start without problems never needs.
        let source = std::fs::read_to_string(&path).unwrap_or_default();
        problems.push(Diagnostic::span(
            &path,
            &source,
            crate::diag::span_of(&source, &["jobs", name, "script"]),
            format!("jobs.{name}: script {:?} does not exist in {}", job.script, config.engine.scripts_dir.display()),
        ));
    }
    (jobs, problems)
}

/// A tokio runtime the tripline runtime started for itself, shut down without waiting when
/// it is dropped (dropping a runtime normally blocks, which is not allowed everywhere).
struct OwnedRuntime(tokio::runtime::Runtime);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        // Move the runtime out to shut it down in the background.
        let rt = std::mem::replace(
            &mut self.0,
            tokio::runtime::Builder::new_current_thread().build().expect("an empty runtime builds"),
        );
        rt.shutdown_background();
    }
}

/// The embedded rule engine.
pub struct Runtime {
    config: Arc<Config>,
    store: Arc<dyn Store>,
    scripts: Arc<ScriptEngine>,
    catalog: ArcSwap<Catalog>,
    hosts: Arc<Hosts>,
    jobs: BTreeMap<String, Job>,
    /// Problems found building the runtime beyond the catalog's (a job whose script is not
    /// loaded, a rule naming an unknown notification channel): what they name is left out.
    start_problems: Vec<Diagnostic>,
    _io: Option<OwnedRuntime>,
}

/// A dispatcher's name in event claims. The pid and host let a restarted daemon release the
/// claims of a process that died (`kill -9`) at once instead of waiting for them to expire.
pub(crate) fn claim_owner() -> String {
    let instance = uuid::Uuid::now_v7().simple().to_string();
    format!("{}@{}/{}", std::process::id(), hostname(), &instance[instance.len() - 8..])
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Whether a claim owner on this host is a process that no longer exists.
fn owner_is_gone(owner: &str) -> bool {
    let Some((pid, rest)) = owner.split_once('@') else { return false };
    let same_host = rest.split('/').next() == Some(hostname().as_str());
    same_host && pid.parse::<u32>().is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// How one rule fared on one event in a dry run.
#[derive(Debug, serde::Serialize)]
pub struct Explanation {
    pub rule: String,
    pub matched: bool,
    /// Each condition as written, with its verdict and the value it saw.
    pub conditions: Vec<ConditionVerdict>,
    /// The `when` guard's verdict, when the rule has one and the conditions held.
    pub when: Option<Result<bool, String>>,
    /// How the run would end: `ok`, `failed` or `retrying` (`None` when the rule does not
    /// match).
    pub outcome: Option<RunStatus>,
    /// What the run would write (nothing is written): everything when it would end `ok`;
    /// when it would fail, only what a failed run keeps (the failure comments the host adds).
    pub writes: Vec<serde_json::Value>,
    /// The same writes, one readable line each.
    pub write_lines: Vec<String>,
    /// What it would do to host systems: directory changes, requests it would send.
    pub planned: Vec<String>,
    /// The directory changes it would make, as the audit trail would record them (shown,
    /// never stored).
    pub directory_changes: Vec<AuditEntry>,
    pub log: Vec<crate::store::LogLine>,
    pub error: Option<String>,
}

/// One condition's verdict.
#[derive(Debug, serde::Serialize)]
pub struct ConditionVerdict {
    pub field: String,
    pub op: String,
    pub value: Option<serde_json::Value>,
    pub actual: Option<serde_json::Value>,
    pub holds: bool,
}

impl Runtime {
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The rules and scripts in force.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    /// The script engine.
    pub fn scripts(&self) -> &Arc<ScriptEngine> {
        &self.scripts
    }

    /// Reloads rules and scripts from their folders: files in error keep their last good
    /// version (see [`Catalog::reload`]); returns the problems.
    pub fn reload(&self) -> Vec<Diagnostic> {
        let engine = &self.config.engine;
        let next = Catalog::reload(
            &self.scripts,
            &engine.rules_dir,
            &engine.scripts_dir,
            &self.catalog(),
            &self.known_names(),
        );
        let problems = next.problems.clone();
        self.swap_catalog(next);
        problems
    }

    /// The names scripts are checked against: the configuration's, with the notification
    /// channels in force (a SIGHUP replaces those).
    pub fn known_names(&self) -> crate::script::lint::KnownNames {
        let mut names = self.config.known_names();
        names.notify = Some(self.hosts.notifier.channels().into_iter().collect());
        names
    }

    /// Puts a catalog in force (a reload built elsewhere) and keeps its files as the last good
    /// versions for the next start.
    pub fn swap_catalog(&self, catalog: Catalog) {
        let files = catalog.files(&self.config.engine.rules_dir);
        self.catalog.store(Arc::new(catalog));
        if let Err(e) = self.store.save_catalog_files(&files) {
            tracing::warn!(error = %e, "The rules and scripts in force cannot be kept as last good versions.");
        }
    }

    /// Problems found at start beyond the catalog's (see [`Catalog::problems`]).
    pub fn start_problems(&self) -> &[Diagnostic] {
        &self.start_problems
    }

    /// Stores events (nothing runs yet; a dispatcher picks them up); see [`Store::ingest`].
    pub fn submit(&self, items: &[Ingest]) -> Result<Vec<Option<Event>>, StoreError> {
        self.store.ingest(items, None)
    }

    /// Stores events claimed by `owner` (a dispatcher's [`Control::owner`]), for it to run.
    ///
    /// [`Control::owner`]: crate::dispatch::Control::owner
    pub fn submit_claimed(&self, items: &[Ingest], owner: &str) -> Result<Vec<Option<Event>>, StoreError> {
        self.store.ingest(items, Some((owner, self.lease_until())))
    }

    /// How long a claim holds: longer than a run can take (every host call stops at the run's
    /// `timeout_ms`), renewed before each rule, so that no run outlives its claim.
    fn lease_until(&self) -> chrono::DateTime<Utc> {
        Utc::now() + chrono::Duration::from_std(self.lease()).unwrap_or(chrono::Duration::MAX)
    }

    /// How long a claim holds: twice `[limits] timeout_ms` and `[engine] claim_lease_ms`.
    pub fn lease(&self) -> std::time::Duration {
        let ms = (self.scripts.limits().timeout_ms).saturating_mul(2).saturating_add(self.config.engine.claim_lease_ms);
        std::time::Duration::from_millis(ms)
    }

    /// Releases the claims of processes on this host that died; the daemon calls it at start
    /// so that a crash's unfinished events run at once.
    pub fn release_dead_claims(&self) -> Result<u64, StoreError> {
        let mut released = 0;
        for owner in self.store.claim_owners()? {
            if owner_is_gone(&owner) {
                released += self.store.release_claims(&owner)?;
            }
        }
        Ok(released)
    }

    /// Events that can run now for `feed`, oldest first, under `[engine] after_failure`.
    pub(crate) fn pending(
        &self,
        limit: usize,
        feed: crate::store::Feed<'_>,
        after: i64,
    ) -> Result<Vec<crate::store::Pending>, StoreError> {
        let wait = self.config.engine.after_failure == AfterFailure::Wait;
        self.store.pending_events(limit, wait, feed, after)
    }

    /// Whether an own claim held until `until` needs renewing before a worker takes the
    /// event: when less than half a lease is left.
    pub(crate) fn claim_needs_renewal(&self, until: chrono::DateTime<Utc>) -> bool {
        until < Utc::now() + chrono::Duration::from_std(self.lease() / 2).unwrap_or(chrono::Duration::MAX)
    }

    /// Whether any enabled rule matches the event (its `when` guard aside): an event none
    /// matches is finished without a worker.
    pub(crate) fn any_rule_matches(&self, event: &Event) -> bool {
        !self.catalog.load().rules.matching(event).is_empty()
    }

    /// Marks events processed that no rule matches.
    pub(crate) fn finish_unmatched(&self, ids: &[i64]) -> Result<(), StoreError> {
        self.store.finish_events(ids)
    }

    /// Whether a run that ended retrying holds its record's later events back
    /// (`[engine] after_failure = "wait"`).
    pub(crate) fn waits_behind_retries(&self) -> bool {
        self.config.engine.after_failure == AfterFailure::Wait
    }

    /// Claims events for `owner` in one transaction; returns the ids claimed.
    pub(crate) fn claim(&self, ids: &[i64], owner: &str) -> Result<Vec<i64>, StoreError> {
        self.store.claim(ids, owner, self.lease_until())
    }

    /// Gives up claims on events `owner` will not run now.
    pub(crate) fn unclaim(&self, ids: &[i64], owner: &str) -> Result<(), StoreError> {
        ids.iter().try_for_each(|id| self.store.unclaim(*id, owner))
    }

    /// The retries that came due, claimed for `owner`.
    pub(crate) fn claim_due_retries(&self, limit: usize, _owner: &str) -> Result<Vec<Run>, StoreError> {
        self.store.claim_due_retries(Utc::now(), limit, self.lease_until())
    }

    /// Prunes what `[engine] retention_days` (runs and events) and `[engine]
    /// audit_retention_days` (the directory audit trail) no longer keep.
    pub fn prune(&self) -> Result<u64, StoreError> {
        let ago = |days: u32| Utc::now() - chrono::Duration::days(days as i64);
        let runs = match self.config.engine.retention_days {
            0 => 0,
            days => self.store.prune(ago(days))?,
        };
        let audit = match self.config.engine.audit_retention_days {
            0 => 0,
            days => self.store.prune_audit(ago(days))?,
        };
        Ok(runs + audit)
    }

    /// Runs the rules an event claimed by `owner` triggers (skipping those the run ledger
    /// says already ran). Every run but the last is committed with its writes at once (the
    /// events they raise stay claimed by `owner`), since the next rule's script may read what
    /// it wrote; the last is returned uncommitted, as the event's [`Tail`], for the caller to
    /// commit with [`Runtime::commit_tails`] (with other events' tails, in one transaction),
    /// which also marks the event processed. Returns the runs committed and the tail.
    ///
    /// Each commit and the filing of what it raised (`raised`, called with the events right
    /// after the commit) happen while `order` is held shared: whoever reads the store's queue
    /// or stores events holding it exclusively never sees a raised event that is not filed yet.
    ///
    /// The dispatcher takes an event only when no earlier event of its record waits for a
    /// retry, and holds the record's later events back itself when one of its runs ends
    /// retrying (see [`crate::dispatch`]). `None` as the tail: the claim was lost to another
    /// process between two rules, which goes on with the event.
    pub(crate) fn process_claimed(
        &self,
        event: &Event,
        owner: &str,
        order: &std::sync::RwLock<()>,
        raised: &dyn Fn(Vec<Event>),
    ) -> Result<(Vec<Run>, Option<Tail>), StoreError> {
        let catalog = self.catalog.load_full();
        // An event claimed for the first time has no runs yet; one claimed before may (its
        // process died after committing some of them).
        let ledger = if event.claims > 1 { self.store.runs_of_event(event.id)? } else { Vec::new() };
        let mut rules = catalog.rules.matching(event);
        rules.retain(|r| !ledger.iter().any(|run| run.rule == r.name));
        let mut runs = Vec::new();
        let Some((last, earlier)) = rules.split_last() else {
            return Ok((
                runs,
                Some(Tail { outcome: None, bytes: 0, event_id: event.id, depth: event.depth, notify: Vec::new() }),
            ));
        };
        for (i, rule) in earlier.iter().enumerate() {
            // Renew the claim before each rule; one lost (expired and taken) is the other's.
            if i > 0 && self.claim(&[event.id], owner)?.is_empty() {
                return Ok((runs, None));
            }
            let Some(outcome) = self.execute(&catalog, rule, event, 1, false) else { continue };
            let run = {
                let _order = order.read().unwrap_or_else(|e| e.into_inner());
                match self.commit(outcome, event.depth, None, owner, true) {
                    Ok((run, r)) => {
                        raised(r);
                        run
                    }
                    // Taken by another process, which goes on with the event.
                    Err(StoreError::ClaimLost(_)) => return Ok((runs, None)),
                    Err(e) => return Err(e),
                }
            };
            self.hosts.notifier.run_failed(&rule.notify_on_failure, &run);
            runs.push(run);
        }
        if !earlier.is_empty() && self.claim(&[event.id], owner)?.is_empty() {
            return Ok((runs, None));
        }
        let before = crate::memory::thread_bytes();
        let outcome = self.execute(&catalog, last, event, 1, false);
        let bytes = crate::memory::thread_bytes().saturating_sub(before).max(0) as u64;
        let notify = last.notify_on_failure.clone();
        Ok((runs, Some(Tail { outcome, bytes, event_id: event.id, depth: event.depth, notify })))
    }

    /// Commits the tails of several events (see [`Runtime::process_claimed`]), in one
    /// transaction where the store can: each event is marked processed with its last run.
    /// Returns, for each tail in order, its run (none when its rule's `when` guard said no)
    /// and the events its writes raised (claimed by `owner`), or the store's error (a
    /// transient one: the event stays claimed and unfinished, to be offered again). The
    /// failure notices of the runs that failed are returned, not sent: the caller sends them
    /// ([`Runtime::send_notices`]) once it holds nothing others wait for.
    pub(crate) fn commit_tails(&self, tails: Vec<Tail>, owner: &str) -> (Vec<TailCommitted>, Vec<Notice>) {
        let mut notices = Vec::new();
        let claim_raised = Some((owner, self.lease_until()));
        let mut results: Vec<Option<TailCommitted>> = tails.iter().map(|_| None).collect();
        let mut with_runs = Vec::new();
        let mut bare = Vec::new();
        for (i, t) in tails.into_iter().enumerate() {
            match t.outcome {
                Some(o) => {
                    let writes = o.writes_to_commit();
                    with_runs.push((i, t.event_id, t.depth, t.notify, o, writes));
                }
                None => bare.push((i, t.event_id)),
            }
        }
        if !bare.is_empty() {
            // One transaction for them all; should it fail, each alone, for its own result.
            let ids: Vec<i64> = bare.iter().map(|(_, id)| *id).collect();
            let together = self.store.finish_events(&ids).is_ok();
            for (i, id) in bare {
                let finished = if together { Ok(()) } else { self.store.finish_event(id) };
                results[i] = Some(finished.map(|()| (None, Vec::new())));
            }
        }
        let commits: Vec<Commit<'_>> = with_runs
            .iter()
            .map(|(_, event_id, depth, _, o, writes)| Commit {
                run: &o.run,
                writes,
                depth: depth + 1,
                finish_event: Some(*event_id),
                claim_raised,
                audit: Some(RunAudit { token: o.audit_token.as_deref(), entries: &o.audit }),
                fence: Some(owner),
            })
            .collect();
        let committed = self.store.commit_runs(&commits);
        drop(commits);
        for ((i, event_id, depth, notify, o, writes), result) in with_runs.into_iter().zip(committed) {
            let audit = RunAudit { token: o.audit_token.as_deref(), entries: &o.audit };
            let done = match result {
                Ok((id, raised)) => Ok((Run { id, ..o.run.clone() }, raised)),
                // Busy: the event is offered again; taken by another process while it ran (its
                // claim ran out): the other runs it, and nothing of this run is kept.
                Err(e) if e.is_transient() || matches!(e, StoreError::ClaimLost(_)) => {
                    unrecorded(&o.audit, &e);
                    Err(e)
                }
                Err(e) => self.commit_refused(o.run.clone(), &writes, audit, depth, Some(event_id), Some(owner), e),
            };
            if let Ok((run, _)) = &done {
                if !notify.is_empty() && matches!(run.status, RunStatus::Failed | RunStatus::Dead) {
                    notices.push((notify, run.clone()));
                }
            }
            results[i] = Some(done.map(|(run, raised)| (Some(run), raised)));
        }
        (results.into_iter().map(|r| r.expect("every tail has a result")).collect(), notices)
    }

    /// Sends the failure notices [`Runtime::commit_tails`] returned (blocking; a failure to
    /// notify is logged).
    pub(crate) fn send_notices(&self, notices: Vec<Notice>) {
        for (contacts, run) in notices {
            self.hosts.notifier.run_failed(&contacts, &run);
        }
    }

    /// Runs a retry claimed with the due retries; the events it raises stay claimed by
    /// `owner`. Returns its run (none when its `when` guard no longer holds).
    pub(crate) fn retry(&self, previous: &Run, owner: &str) -> Result<Vec<Run>, StoreError> {
        Ok(self.rerun(previous, owner)?.into_iter().collect())
    }

    /// Runs a failed or dead run again, on its event as stored (`tripline replay`), as
    /// `owner`: a dispatcher of that owner then runs what it raises. The run of an event that
    /// was set aside ([`crate::store::SET_ASIDE`]) queues the event again instead, for the
    /// dispatcher: it returns `None`.
    pub fn replay(&self, run_id: i64, owner: &str) -> Result<Option<Run>, StoreError> {
        match self.store.get_run(run_id)? {
            Some(run) if run.rule == crate::store::SET_ASIDE => {
                if let Some(event) = run.event_id {
                    self.store.requeue_event(event)?;
                }
                Ok(None)
            }
            Some(run) => self.rerun(&Run { attempts: 0, ..run }, owner),
            None => Ok(None),
        }
    }

    fn rerun(&self, previous: &Run, owner: &str) -> Result<Option<Run>, StoreError> {
        let catalog = self.catalog.load_full();
        let event = match previous.event_id {
            Some(id) => self.store.get_event(id)?,
            None => None,
        };
        let rule = catalog.rules.get(&previous.rule).cloned();
        let (Some(event), Some(rule)) = (event, rule) else {
            let run = Run {
                status: RunStatus::Failed,
                error: Some(format!("cannot run again: rule {:?} or its event no longer exists", previous.rule)),
                next_attempt_at: None,
                finished_at: Utc::now(),
                ..previous.clone()
            };
            self.store.commit_run(Commit::bare(&run, None))?;
            return Ok(Some(run));
        };
        let Some(outcome) = self.execute(&catalog, &rule, &event, previous.attempts + 1, false) else {
            return Ok(None);
        };
        let (run, _raised) = self.commit(outcome, event.depth, None, owner, false)?;
        self.hosts.notifier.run_failed(&rule.notify_on_failure, &run);
        Ok(Some(run))
    }

    /// Commits a run; the events its writes raise are stored claimed by `owner`. `fenced`:
    /// only while `owner` still holds the run's event (see [`Commit::fence`]).
    fn commit(
        &self,
        o: Outcome,
        depth: u32,
        finish: Option<i64>,
        owner: &str,
        fenced: bool,
    ) -> Result<(Run, Vec<Event>), StoreError> {
        let fence = fenced.then_some(owner);
        let writes = o.writes_to_commit();
        let claim_raised = Some((owner, self.lease_until()));
        // The directory changes go with the run whatever becomes of its writes.
        let audit = RunAudit { token: o.audit_token.as_deref(), entries: &o.audit };
        match self.store.commit_run(Commit {
            run: &o.run,
            writes: &writes,
            depth: depth + 1,
            finish_event: finish,
            claim_raised,
            audit: Some(audit),
            fence,
        }) {
            Ok((id, raised)) => Ok((Run { id, ..o.run.clone() }, raised)),
            // Busy: the caller tries the whole event again later; taken: the other goes on.
            Err(e) if e.is_transient() || matches!(e, StoreError::ClaimLost(_)) => {
                unrecorded(&o.audit, &e);
                Err(e)
            }
            Err(e) => self.commit_refused(o.run.clone(), &writes, audit, depth, finish, fence, e),
        }
    }

    /// Commits a run whose commit with `writes` the store refused with `e` (the record
    /// vanished meanwhile, a chain too wide): the run fails, and nothing it wrote is kept; its
    /// directory changes are kept with it.
    #[allow(clippy::too_many_arguments)]
    fn commit_refused(
        &self,
        run: Run,
        writes: &[Write],
        audit: RunAudit<'_>,
        depth: u32,
        finish: Option<i64>,
        fence: Option<&str>,
        e: StoreError,
    ) -> Result<(Run, Vec<Event>), StoreError> {
        // A refused run writes nothing, so it raises nothing: no claim for raised events.
        let claim_raised = None;
        let audit = Some(audit);
        let entries = audit.map_or(&[][..], |a| a.entries);
        let mut why = e.to_string();
        if !writes.is_empty() {
            let run = Run {
                status: RunStatus::Failed,
                error: Some(format!("the run's writes were refused: {e}")),
                writes: Vec::new(),
                ..run.clone()
            };
            match self.store.commit_run(Commit {
                run: &run,
                writes: &[],
                depth: depth + 1,
                finish_event: finish,
                claim_raised,
                audit,
                fence,
            }) {
                Ok((id, raised)) => return Ok((Run { id, ..run }, raised)),
                Err(e) if e.is_transient() => {
                    unrecorded(entries, &e);
                    return Err(e);
                }
                // The run alone is refused too: that is the reason to give first.
                Err(alone) if alone.to_string() == why => {}
                Err(alone) => why = format!("{alone} (its writes were refused too: {e})"),
            }
        }
        // The run itself cannot be stored (its log, say): it is recorded without its log so
        // that the event ends, rather than running again (and repeating its effects) forever.
        let run = Run {
            status: RunStatus::Failed,
            error: Some(format!("the run could not be stored, so it was recorded without its log and writes: {why}")),
            log: Vec::new(),
            next_attempt_at: None,
            writes: Vec::new(),
            ..run
        };
        let commit =
            Commit { run: &run, writes: &[], depth: depth + 1, finish_event: finish, claim_raised, audit, fence };
        match self.store.commit_run(commit) {
            Ok((id, raised)) => Ok((Run { id, ..run }, raised)),
            Err(e) => {
                unrecorded(entries, &e);
                Err(e)
            }
        }
    }

    /// Executes one rule on one event. `None` when the `when` guard says no.
    fn execute(&self, catalog: &Catalog, rule: &Rule, event: &Event, attempt: u32, dry_run: bool) -> Option<Outcome> {
        let started_at = Utc::now();
        let start = Instant::now();
        let limits = self.scripts.limits();
        let mut ctx = RunCtx::new(
            self.store.clone(),
            self.hosts.clone(),
            &rule.name,
            start + Duration::from_millis(limits.timeout_ms),
            dry_run,
        );
        ctx.comment_key = format!("event:{}:rule:{}", event.id, rule.name);
        ctx.max_run_bytes = limits.max_run_bytes;
        ctx.attempt = attempt;
        ctx.max_attempts = self.config.engine.max_attempts;
        if dry_run {
            ctx.unstored = Some(event.record.clone());
        }
        let ctx = Arc::new(ctx);
        // `tripline test` shows the directory changes it plans and stores none.
        let trail = AuditTrail::new(&self.store, !dry_run, &rule.name, Some(&event.record.id), Some(event.id));
        let audit_guard = crate::directory::audit::install(trail.clone());
        let inv = Invocation {
            record: Some(&event.record),
            previous: event.previous.as_ref(),
            event: event.kind.as_str(),
            rule: &rule.name,
            params: &rule.params,
        };
        let engine_cfg = &self.config.engine;
        let result: Result<(), crate::script::ScriptError> = if event.depth > engine_cfg.max_chain_depth {
            Err(crate::script::ScriptError::permanent(format!(
                    "not run: this event was raised by a chain of {} script writes, more than [engine] max_chain_depth = {}; \
                     a rule probably updates the records that trigger it (add a condition such as `changed`)",
                    event.depth, engine_cfg.max_chain_depth
                )))
        } else {
            let guard = match &rule.when {
                Some((_, ast)) => self.scripts.eval_guard(ast, &inv, ctx.clone()).map_err(|mut e| {
                    e.message = format!("`when` guard failed: {}", e.message);
                    e
                }),
                None => Ok(true),
            };
            match guard {
                Ok(false) => return None,
                Err(e) => Err(e),
                Ok(true) => match catalog.scripts.get(&rule.script) {
                    Some(ast) => self.scripts.run(ast, &inv, ctx.clone()).map(|_| ()),
                    None => Err(crate::script::ScriptError::permanent(not_loaded(catalog, &rule.script))),
                },
            }
        };
        let (status, error, next_attempt_at) = match result {
            Ok(()) => (RunStatus::Ok, None, None),
            // A dry run is never retried, but says that the real run would be.
            Err(e) if e.class.is_transient() && dry_run => (RunStatus::Retrying, Some(e.message), None),
            Err(e) if e.class.is_transient() => {
                if attempt < engine_cfg.max_attempts {
                    let delay = backoff(engine_cfg, attempt);
                    (RunStatus::Retrying, Some(e.message), Some(Utc::now() + delay))
                } else {
                    let msg = format!("{} (gave up after {attempt} attempts)", e.message);
                    (RunStatus::Dead, Some(msg), None)
                }
            }
            Err(e) => (RunStatus::Failed, Some(e.message), None),
        };
        drop(audit_guard);
        let (writes, notes) = ctx.take_writes();
        let outcome = Outcome {
            audit: trail.take(),
            audit_token: trail.recorded_token(),
            planned: ctx.planned(),
            run: Run {
                id: 0,
                rule: rule.name.clone(),
                record_id: Some(event.record.id.clone()),
                event_id: Some(event.id),
                event: event.kind.as_str().to_string(),
                status,
                error,
                duration_ms: start.elapsed().as_millis() as u64,
                log: ctx.log_lines(),
                attempts: attempt,
                started_at,
                finished_at: Utc::now(),
                next_attempt_at,
                writes: Vec::new(),
            },
            writes,
            notes,
        };
        Some(outcome.with_written_lines(&event.record))
    }

    /// Which rules would match a record and why, and what their scripts would write, with
    /// nothing written. `only` limits the report to one rule.
    pub fn explain(
        &self,
        entity: &str,
        kind: EventKind,
        record: Submitted,
        only: Option<&str>,
    ) -> Result<Vec<Explanation>, String> {
        let previous = match &record.id {
            Some(id) => self.store.get_record(id).map_err(|e| e.to_string())?,
            None => None,
        };
        if kind == EventKind::Updated && previous.is_none() {
            return Err(format!(
                "an update needs the `id` of a stored record; {:?} is not one",
                record.id.unwrap_or_default()
            ));
        }
        let mut current = match &previous {
            Some(p) => p.clone(),
            None => Record::new(entity, Default::default()),
        };
        if let Some(id) = &record.id {
            current.id = id.clone();
        }
        current.entity = entity.to_string();
        current.fields.extend(record.fields);
        if let Some(s) = record.status {
            current.status = s;
        }
        self.explain_event(current, kind, previous, only)
    }

    /// Like [`Runtime::explain`], on a record and previous version given whole (nothing is
    /// read from the store but what the scripts read): `tripline test --cases`.
    pub fn explain_event(
        &self,
        record: Record,
        kind: EventKind,
        previous: Option<Record>,
        only: Option<&str>,
    ) -> Result<Vec<Explanation>, String> {
        let catalog = self.catalog.load_full();
        let entity = record.entity.clone();
        let event = Event {
            id: 0,
            kind,
            record,
            previous,
            depth: 0,
            created_at: Utc::now(),
            claims: 1,
            waits_for_nothing: false,
        };
        let rules: Vec<&Arc<Rule>> = match only {
            Some(name) => vec![catalog.rules.find(name).ok_or_else(|| {
                let names = catalog.rules.rules().iter().map(|r| r.name.as_str());
                match crate::diag::did_you_mean(name, names) {
                    Some(s) => format!("no rule named {name:?} (nor a rule file of that name); did you mean {s:?}?"),
                    None => format!("no rule named {name:?} (nor a rule file of that name)"),
                }
            })?],
            None => catalog.rules.rules().iter().filter(|r| r.entity == entity).collect(),
        };
        let mut out = Vec::new();
        for rule in rules {
            let conditions: Vec<ConditionVerdict> = rule
                .conditions
                .iter()
                .map(|c| ConditionVerdict {
                    field: c.field_name.clone(),
                    op: c.op_name.clone(),
                    value: condition_value(&c.op),
                    actual: c.actual(&event),
                    holds: c.eval(&event),
                })
                .collect();
            let mut ex = Explanation {
                rule: rule.name.clone(),
                matched: rule.enabled && rule.matches(&event),
                conditions,
                when: None,
                outcome: None,
                writes: Vec::new(),
                write_lines: Vec::new(),
                planned: Vec::new(),
                directory_changes: Vec::new(),
                log: Vec::new(),
                error: None,
            };
            if ex.matched {
                match self.execute(&catalog, rule, &event, 1, true) {
                    None => {
                        ex.matched = false;
                        ex.when = Some(Ok(false));
                    }
                    Some(o) => {
                        if rule.when.is_some() {
                            ex.when = Some(Ok(true));
                        }
                        // A failed run keeps only its notes: list what would really be written.
                        let kept = o.kept();
                        ex.writes = kept.iter().map(|w| describe_write(w)).collect();
                        ex.write_lines = kept.iter().map(|w| describe_write_line(w, &event.record)).collect();
                        ex.planned = o.planned;
                        ex.directory_changes = o.audit;
                        ex.outcome = Some(o.run.status);
                        ex.log = o.run.log;
                        ex.error = o.run.error;
                    }
                }
            }
            out.push(ex);
        }
        Ok(out)
    }

    /// Run history.
    pub fn runs(&self, filter: &RunFilter) -> Result<Vec<Run>, StoreError> {
        self.store.runs(filter)
    }

    /// The host systems (directories, connections).
    pub fn hosts(&self) -> &Arc<Hosts> {
        &self.hosts
    }

    /// The configured jobs.
    pub fn jobs(&self) -> &BTreeMap<String, Job> {
        &self.jobs
    }

    /// Runs a job's script once, now, and records the run (`rule` = `job:NAME`). `trigger` is
    /// what scripts see as `event`: "schedule" or "manual". Returns the run and the events its
    /// writes raised, stored claimed by `owner` (a dispatcher of that owner runs them).
    pub fn run_job(&self, name: &str, trigger: &str, owner: &str) -> Result<(Run, Vec<Event>), JobError> {
        let job = self.job(name)?;
        let outcome = self.execute_job(name, job, trigger, false);
        let (run, raised) = self.commit(outcome, 0, None, owner, false)?;
        crate::metrics::run_finished(&run);
        // Manual runs count too: a job's success resets its staleness clock.
        self.hosts.notifier.job_finished(self.store.as_ref(), &job.notify_on_failure, &run);
        Ok((run, raised))
    }

    fn job(&self, name: &str) -> Result<&Job, JobError> {
        self.jobs.get(name).ok_or_else(|| {
            let hint = crate::diag::did_you_mean(name, self.jobs.keys().map(String::as_str))
                .map(|s| format!("; did you mean {s:?}?"))
                .unwrap_or_default();
            JobError::Unknown(format!("no job named {name:?}{hint}"))
        })
    }

    /// A whole job as a dry run (`tripline job run NAME --dry-run`): its script runs as
    /// `tripline test` runs a rule's (GETs sent, writes and other requests planned, directories
    /// in dry-run mode), and each record it would create or update is passed, as the event
    /// its write would raise, to the rules that event would trigger, also dry. Nothing is
    /// written: no record, no run, no state (the job's watermark stays where it is). One
    /// level: what those rules would write is shown, not followed further; each record is
    /// tried on its own, so a rule does not see the job's other new records.
    pub fn dry_run_job(&self, name: &str) -> Result<JobDryRun, JobError> {
        let job = self.job(name)?;
        let o = self.execute_job(name, job, "manual", true);
        let event_record = Record::new("", Default::default());
        let mut triggered = Vec::new();
        let writes: &[Write] = if o.run.status == RunStatus::Ok { &o.writes } else { &[] };
        for w in writes {
            let (record, kind, previous) = match w {
                Write::Create(r) => (r.clone(), EventKind::Created, None),
                Write::Update { id, fields } => {
                    let Some(previous) = self.store.get_record(id)? else { continue };
                    let mut r = previous.clone();
                    r.fields.extend(fields.clone());
                    (r, EventKind::Updated, Some(previous))
                }
                _ => continue,
            };
            let (entity, record_id) = (record.entity.clone(), record.id.clone());
            let rules = self.explain_event(record, kind.clone(), previous, None).map_err(JobError::Unknown)?;
            let rules: Vec<Explanation> = rules.into_iter().filter(|ex| ex.matched).collect();
            if !rules.is_empty() {
                triggered.push(TriggeredRecord { entity, record_id, event: kind.as_str().to_string(), rules });
            }
        }
        let kept = o.kept();
        Ok(JobDryRun {
            job: name.to_string(),
            outcome: o.run.status,
            error: o.run.error.clone(),
            log: o.run.log.clone(),
            writes: kept.iter().map(|w| describe_write(w)).collect(),
            write_lines: kept.iter().map(|w| describe_write_line(w, &event_record)).collect(),
            planned: o.planned,
            directory_changes: o.audit,
            triggered,
        })
    }

    /// Runs a job's script once; `dry_run` as `tripline test` runs a rule.
    fn execute_job(&self, name: &str, job: &Job, trigger: &str, dry_run: bool) -> Outcome {
        let catalog = self.catalog.load_full();
        let rule_name = format!("job:{name}");
        let started_at = Utc::now();
        let start = Instant::now();
        let mut ctx = RunCtx::new(
            self.store.clone(),
            self.hosts.clone(),
            &rule_name,
            start + Duration::from_millis(self.scripts.limits().timeout_ms),
            dry_run,
        );
        ctx.state_namespace = rule_name.clone();
        ctx.comment_key = rule_name.clone();
        ctx.max_run_bytes = self.scripts.limits().max_run_bytes;
        let ctx = Arc::new(ctx);
        let params = match &job.params {
            serde_json::Value::Object(m) => m.clone(),
            _ => Default::default(),
        };
        let inv = Invocation { record: None, previous: None, event: trigger, rule: &rule_name, params: &params };
        let trail = AuditTrail::new(&self.store, !dry_run, &rule_name, None, None);
        let audit_guard = crate::directory::audit::install(trail.clone());
        let result = match catalog.scripts.get(&job.script) {
            Some(ast) => self.scripts.run(ast, &inv, ctx.clone()).map(|_| ()),
            None => Err(crate::script::ScriptError::permanent(not_loaded(&catalog, &job.script))),
        };
        drop(audit_guard);
        let (status, error) = match result {
            Ok(()) => (RunStatus::Ok, None),
            // A job is retried by its next tick, not by the run queue.
            Err(e) => (RunStatus::Failed, Some(e.message)),
        };
        let (writes, notes) = ctx.take_writes();
        let run = Run {
            id: 0,
            rule: rule_name,
            record_id: None,
            event_id: None,
            event: trigger.to_string(),
            status,
            error,
            duration_ms: start.elapsed().as_millis() as u64,
            log: ctx.log_lines(),
            attempts: 1,
            started_at,
            finished_at: Utc::now(),
            next_attempt_at: None,
            writes: Vec::new(),
        };
        Outcome { run, writes, notes, planned: ctx.planned(), audit: trail.take(), audit_token: trail.recorded_token() }
            .with_written_lines(&Record::new("", Default::default()))
    }

    /// Tells the contacts of every enabled job with `stale_after` that has gone that long
    /// without a successful run (once per stale period, see
    /// [`Notifier::check_stale`]). Blocking; returns how many jobs were reported.
    pub fn check_stale_jobs(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut reported = 0;
        for (name, job) in &self.jobs {
            let Some(stale_after) = job.stale_after.filter(|_| job.enabled && !job.notify_on_failure.is_empty()) else {
                continue;
            };
            if self.hosts.notifier.check_stale(self.store.as_ref(), name, &job.notify_on_failure, stale_after, now)? {
                reported += 1;
            }
        }
        Ok(reported)
    }

    /// The rules in force, in priority order (`tripline rules list`).
    pub fn rule_statuses(&self) -> Vec<RuleStatus> {
        let catalog = self.catalog();
        let mut rules: Vec<RuleStatus> = catalog
            .rules
            .rules()
            .iter()
            .map(|r| RuleStatus {
                name: r.name.clone(),
                entity: r.entity.clone(),
                file: r.path.display().to_string(),
                script: r.script.clone(),
                priority: r.priority,
                enabled: r.enabled,
                conditions: r
                    .conditions
                    .iter()
                    .map(|c| match condition_value(&c.op) {
                        Some(v) => format!("{} {} {v}", c.field_name, c.op_name),
                        None => format!("{} {}", c.field_name, c.op_name),
                    })
                    .collect(),
                when: r.when.as_ref().map(|(text, _)| text.clone()),
            })
            .collect();
        rules.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        rules
    }

    /// The configured jobs with their next and last runs (`tripline job list`, the console).
    pub fn job_statuses(&self, now: DateTime<Utc>) -> Result<Vec<JobStatus>, StoreError> {
        let mut out = Vec::new();
        for (name, job) in &self.jobs {
            let query = crate::store::RunQuery { rule: Some(format!("job:{name}")), limit: 1, ..Default::default() };
            let last = self.store.runs_page(&query)?.into_iter().next();
            out.push(JobStatus {
                name: name.clone(),
                schedule: job.schedule.as_str().to_string(),
                script: job.script.clone(),
                enabled: job.enabled,
                next_run: job
                    .enabled
                    .then(|| job.schedule.next_after(now, crate::scheduler::Zone::default()))
                    .flatten(),
                last_run: last.map(|r| LastRun { id: r.id, status: r.status, started_at: r.started_at }),
            });
        }
        Ok(out)
    }

    /// The configured connections: kind of authentication and, for OAuth2, the state of the
    /// stored tokens; never a secret (`tripline connection list`, the console).
    pub fn connection_statuses(&self) -> Vec<ConnectionStatus> {
        let mut out = Vec::new();
        for (name, c) in &self.hosts.connections {
            let token = (c.auth_type() == "oauth2").then(|| match self.store.kv_get("oauth2", name) {
                Ok(Some(serde_json::Value::String(text))) => match crate::connection::StoredToken::from_json(&text) {
                    Ok(t) => TokenState {
                        state: "stored",
                        expires_at: t.expires_at,
                        refresh_token: t.refresh_token.is_some(),
                        problem: None,
                    },
                    Err(_) => TokenState::problem("unreadable", "the stored token cannot be read".into()),
                },
                Ok(_) => TokenState { state: "none", expires_at: None, refresh_token: false, problem: None },
                Err(e) => TokenState::problem("unknown", e.to_string()),
            });
            out.push(ConnectionStatus {
                name: name.clone(),
                base_url: shown_url(c.base_url()),
                auth: c.auth_type().to_string(),
                enabled: c.is_enabled(),
                token,
                unavailable: None,
            });
        }
        for (name, why) in &self.hosts.unavailable_connections {
            out.push(ConnectionStatus {
                name: name.clone(),
                base_url: String::new(),
                auth: String::new(),
                enabled: false,
                token: None,
                unavailable: Some(crate::secret::redact(why).into_owned()),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The folder the configuration was read from.
    pub fn base_dir(&self) -> &Path {
        self.config.path.as_deref().and_then(Path::parent).unwrap_or(Path::new("."))
    }
}

/// What a job would do (see [`Runtime::dry_run_job`]). Its JSON form is `tripline job run
/// NAME --dry-run --json`.
#[derive(Debug, serde::Serialize)]
pub struct JobDryRun {
    pub job: String,
    /// How the job's run would end.
    pub outcome: RunStatus,
    pub error: Option<String>,
    pub log: Vec<crate::store::LogLine>,
    /// What the job's run would write (nothing is written), as `tripline test` shows it.
    pub writes: Vec<serde_json::Value>,
    pub write_lines: Vec<String>,
    /// Requests it would send (not GETs: those are sent) and directory changes.
    pub planned: Vec<String>,
    pub directory_changes: Vec<AuditEntry>,
    /// The records it would create or update whose events rules would run on, with those
    /// rules' dry runs.
    pub triggered: Vec<TriggeredRecord>,
}

/// A record a job's dry run would write, and the rules its event would run, dry.
#[derive(Debug, serde::Serialize)]
pub struct TriggeredRecord {
    pub entity: String,
    pub record_id: String,
    pub event: String,
    pub rules: Vec<Explanation>,
}

/// A rule in force, as `tripline rules list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RuleStatus {
    pub name: String,
    pub entity: String,
    pub file: String,
    pub script: String,
    pub priority: i64,
    pub enabled: bool,
    /// Each condition as `field op value`.
    pub conditions: Vec<String>,
    pub when: Option<String>,
}

/// A job, as `tripline job list` and the console show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobStatus {
    pub name: String,
    pub schedule: String,
    pub script: String,
    pub enabled: bool,
    /// When the scheduler runs it next (`None` while it is disabled).
    pub next_run: Option<DateTime<Utc>>,
    pub last_run: Option<LastRun>,
}

/// A job's latest run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastRun {
    pub id: i64,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
}

/// A connection, as `tripline connection list` and the console show it: nothing secret.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnectionStatus {
    pub name: String,
    /// Without user information or query (either may hold a key).
    pub base_url: String,
    /// `api_key`, `basic`, `bearer` or `oauth2`.
    pub auth: String,
    pub enabled: bool,
    /// OAuth2 only: what the store holds.
    pub token: Option<TokenState>,
    /// Configured but not usable by this command (a secret that is not set), and why.
    pub unavailable: Option<String>,
}

/// The OAuth2 tokens of a connection, without the tokens.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenState {
    /// `stored`, `none`, `unreadable` or `unknown` (the store could not be read).
    pub state: &'static str,
    pub expires_at: Option<DateTime<Utc>>,
    pub refresh_token: bool,
    pub problem: Option<String>,
}

impl std::fmt::Display for TokenState {
    /// In words: `access token stored, expires 2025-05-01 10:00:00 UTC; refresh token stored`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.state {
            "stored" => write!(
                f,
                "access token stored{}{}",
                self.expires_at.map(|e| format!(", expires {}", e.format("%Y-%m-%d %H:%M:%S UTC"))).unwrap_or_default(),
                if self.refresh_token { "; refresh token stored" } else { "" }
            ),
            "none" => f.write_str("no token stored yet"),
            "unreadable" => f.write_str("a stored token cannot be read"),
            _ => write!(f, "unknown: {}", self.problem.as_deref().unwrap_or_default()),
        }
    }
}

impl TokenState {
    fn problem(state: &'static str, problem: String) -> TokenState {
        TokenState { state, expires_at: None, refresh_token: false, problem: Some(problem) }
    }
}

/// A URL as shown: no user information, no query (either may hold a key).
pub fn shown_url(url: &url::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

struct Outcome {
    run: Run,
    writes: Vec<Write>,
    notes: Vec<Write>,
    /// A dry run's plans for host systems ([`RunCtx::plan`]).
    planned: Vec<String>,
    /// Directory changes to store with the run (see [`AuditTrail`]); for `tripline test`,
    /// every change it planned, to show.
    audit: Vec<AuditEntry>,
    /// The token of the entries stored at once, if any (see [`AuditTrail::recorded_token`]).
    audit_token: Option<String>,
}

/// The audit trail of one run: the directory changes made on its thread (see
/// [`crate::directory::audit`]).
///
/// A change the directory made is stored at once, in a transaction of its own, before the
/// script goes on: it is a fact whatever becomes of the run (a failure, a crash before the
/// commit), and the run's commit then adds its id to it. A change a dry-run directory
/// planned is only meaningful with its run, so it is stored in the run's transaction. A
/// change whose own write fails is kept and stored with the run too. With `keep` false
/// (`tripline test`) nothing is stored: the changes are shown.
struct AuditTrail {
    store: Arc<dyn Store>,
    keep: bool,
    rule: String,
    record_id: Option<String>,
    event_id: Option<i64>,
    token: String,
    /// Whether an entry was stored at once under `token`: only then has the run's commit
    /// entries to link.
    recorded: std::sync::atomic::AtomicBool,
    pending: std::sync::Mutex<Vec<AuditEntry>>,
}

impl AuditTrail {
    fn new(
        store: &Arc<dyn Store>,
        keep: bool,
        rule: &str,
        record_id: Option<&str>,
        event_id: Option<i64>,
    ) -> Arc<AuditTrail> {
        Arc::new(AuditTrail {
            store: store.clone(),
            keep,
            rule: rule.to_string(),
            record_id: record_id.map(str::to_string),
            event_id: event_id.filter(|id| *id > 0),
            token: uuid::Uuid::now_v7().simple().to_string(),
            recorded: Default::default(),
            pending: Default::default(),
        })
    }

    fn take(&self) -> Vec<AuditEntry> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The token to link at the run's commit: `None` when no entry was stored under it.
    fn recorded_token(&self) -> Option<String> {
        self.recorded.load(std::sync::atomic::Ordering::Acquire).then(|| self.token.clone())
    }
}

impl crate::directory::audit::Sink for AuditTrail {
    fn record(&self, c: crate::directory::audit::Change) {
        let entry = AuditEntry {
            id: 0,
            at: c.at,
            directory: c.directory,
            dn_key: crate::directory::dn::Dn::parse(&c.dn).map_or_else(|_| c.dn.to_lowercase(), |d| d.key()),
            dn: c.dn,
            operation: c.operation,
            attributes: c.attributes,
            detail: c.detail.map(|d| crate::secret::redact(&d).into_owned()),
            planned: c.planned,
            run_id: None,
            rule: self.rule.clone(),
            record_id: self.record_id.clone(),
            event_id: self.event_id,
            run_token: self.token.clone(),
        };
        if self.keep && !entry.planned {
            match self.store.record_audit(std::slice::from_ref(&entry)) {
                Ok(()) => {
                    self.recorded.store(true, std::sync::atomic::Ordering::Release);
                    return;
                }
                Err(e) => tracing::warn!(
                    error = %e, directory = %entry.directory, dn = %entry.dn, operation = %entry.operation,
                    "A directory change could not be recorded at once; it is recorded with its run."
                ),
            }
        }
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
    }
}

/// The last word on directory changes the store refused twice (at once and with the run):
/// they are logged whole, so that the log keeps what the audit trail could not.
fn unrecorded(entries: &[AuditEntry], error: &StoreError) {
    for e in entries.iter().filter(|e| !e.planned) {
        tracing::error!(
            %error, directory = %e.directory, dn = %e.dn, operation = %e.operation, rule = %e.rule,
            record = ?e.record_id, attributes = %serde_json::to_string(&e.attributes).unwrap_or_default(),
            "A directory change could not be stored in the audit trail."
        );
    }
}

impl Outcome {
    /// What the run keeps when committed: its writes, then its notes, when it ended ok; only
    /// its notes otherwise (a run that did not end ok writes nothing of its own). What a dry
    /// run lists and what a commit writes are this, so that they cannot differ.
    fn kept(&self) -> Vec<&Write> {
        match self.run.status {
            RunStatus::Ok => self.writes.iter().chain(&self.notes).collect(),
            _ => self.notes.iter().collect(),
        }
    }

    /// The run with the lines of what it keeps ([`describe_write_line`], `record` being the
    /// record it ran on), for its history.
    fn with_written_lines(mut self, record: &Record) -> Outcome {
        self.run.writes = self.kept().iter().map(|w| describe_write_line(w, record)).collect();
        self
    }

    /// [`Outcome::kept`], owned, for the store.
    fn writes_to_commit(&self) -> Vec<Write> {
        self.kept().into_iter().cloned().collect()
    }
}

/// A failed run and the contacts its rule's `notify_on_failure` names.
pub(crate) type Notice = (Vec<String>, Run);

/// What committing a [`Tail`] gives: its run (none when only the event was finished) and the
/// events the run's writes raised.
pub(crate) type TailCommitted = Result<(Option<Run>, Vec<Event>), StoreError>;

/// An event's last run, executed and not yet committed (see [`Runtime::process_claimed`]).
pub(crate) struct Tail {
    /// `None`: the last rule's `when` guard said no (or no rule matches any more): only the
    /// event is finished.
    outcome: Option<Outcome>,
    /// What the tail holds in memory, as the counting allocator saw it (0 without it): the
    /// dispatcher keeps what waits for the committer within `[limits] max_run_bytes`.
    pub(crate) bytes: u64,
    event_id: i64,
    depth: u32,
    /// The rule's `notify_on_failure`.
    notify: Vec<String>,
}

/// Why a script a rule or job names cannot run: its file's problem when it is in error (and
/// never loaded), so that the run's error says what to fix before the replay.
fn not_loaded(catalog: &Catalog, script: &str) -> String {
    let problem = catalog.problems.iter().find(|d| {
        let path = d.path.to_string_lossy();
        path.ends_with(&format!("/{script}")) || path == script
    });
    match problem {
        Some(d) => format!(
            "script {script:?} is in error and no version of it ever loaded: {d}; fix it, then `tripline replay` this run"
        ),
        None => format!("script {script:?} is not loaded"),
    }
}

/// Exponential backoff with full jitter in the upper half: base * 2^(attempt-1), capped.
fn backoff(cfg: &EngineConfig, attempt: u32) -> chrono::Duration {
    let exp = cfg.retry_backoff_ms.saturating_mul(1u64 << (attempt - 1).min(30));
    let capped = exp.min(cfg.retry_max_backoff_ms).max(1);
    let ms = rand::rng().random_range(capped / 2..=capped);
    chrono::Duration::milliseconds(ms as i64)
}

fn condition_value(op: &crate::rule::condition::Op) -> Option<serde_json::Value> {
    use crate::rule::condition::Op::*;
    match op {
        Equals(v) | NotEquals(v) | Contains(v) | Gt(v) | Gte(v) | Lt(v) | Lte(v) => Some(v.clone()),
        In(v, _) | NotIn(v, _) => Some(serde_json::Value::Array(v.clone())),
        StartsWith(s) | EndsWith(s) => Some(s.clone().into()),
        Matches(r) => Some(r.as_str().into()),
        Exists | Missing | Changed => None,
    }
}

/// A write on one line, as `tripline test` prints it: `record` is the event's record, so an
/// update of it shows each changed field's old and new value.
pub fn describe_write_line(w: &Write, record: &Record) -> String {
    let value = |v: &serde_json::Value| {
        let text = v.to_string();
        match text.char_indices().nth(120) {
            Some((i, _)) => format!("{}...", &text[..i]),
            None => text,
        }
    };
    let fields = |f: &crate::record::Fields| f.iter().map(|(k, v)| format!("{k} = {}", value(v))).collect::<Vec<_>>();
    let who = |id: &str| if id == record.id { "this record".to_string() } else { format!("record {id}") };
    match w {
        Write::Create(r) => format!("create {} {}: {}", r.entity, r.id, fields(&r.fields).join(", ")),
        Write::Update { id, fields: f } if *id == record.id => {
            let changes: Vec<String> = f
                .iter()
                .filter(|(k, v)| record.fields.get(*k) != Some(v))
                .map(|(k, v)| match record.fields.get(k) {
                    Some(old) => format!("{k}: {} -> {}", value(old), value(v)),
                    None => format!("{k}: (absent) -> {}", value(v)),
                })
                .collect();
            match changes.is_empty() {
                true => "update this record: no field changes".to_string(),
                false => format!("update this record: {}", changes.join(", ")),
            }
        }
        Write::Update { id, fields: f } => format!("update {}: {}", who(id), fields(f).join(", ")),
        Write::Comment { id, text, .. } => format!("comment on {}: {text}", who(id)),
        Write::Close { id, text: Some(text) } => format!("close {} with comment: {text}", who(id)),
        Write::Close { id, text: None } => format!("close {}", who(id)),
        Write::SetState { namespace, key, value: v } => format!("state {namespace} {key} = {}", value(v)),
    }
}

/// A write as `tripline test --json` shows it.
pub fn describe_write(w: &Write) -> serde_json::Value {
    use serde_json::json;
    match w {
        Write::Create(r) => json!({"create": {"entity": r.entity, "id": r.id, "fields": r.fields}}),
        Write::Update { id, fields } => json!({"update": {"id": id, "fields": fields}}),
        Write::Comment { id, text, .. } => json!({"comment": {"id": id, "text": text}}),
        Write::Close { id, text } => json!({"close": {"id": id, "text": text}}),
        Write::SetState { namespace, key, value } => {
            json!({"state": {"namespace": namespace, "key": key, "value": value}})
        }
    }
}
