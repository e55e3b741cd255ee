//! The daemon: one `tokio::select!` loop that dispatches stored events to rules, reloads rules
//! and scripts when their files change, reloads the configuration on SIGHUP and prunes old
//! history, beside two long-lived tasks (the job scheduler and the HTTP server for webhooks,
//! `/healthz` and `/metrics`), until a shutdown signal (Ctrl-C or SIGTERM).
//!
//! Each arm of the loop calls a named handler: `dispatch` starts a pass over the queue (as a
//! task of its own, so that nothing cancels runs half-way), `handle_reload` rebuilds the
//! catalog aside and swaps it in, `handle_signal` re-reads `tripline.toml`. Runs in progress
//! keep the catalog they started with (they hold an `Arc` of it), and the run ledger means no
//! event runs a rule twice, whatever a swap interleaves.
//!
//! Shutdown: the HTTP server stops accepting and finishes the requests in progress, the
//! scheduler starts no job and lets running ones finish, the dispatcher finishes the pass in
//! progress (runs in flight complete) and starts no other, then [`run`] returns. Events stored but not yet processed stay queued for the next start.
//!
//! What a SIGHUP applies at once: `[webhooks.*]` and `[notify.*]`, and the rules and scripts.
//! What needs a restart (a warning names the section when it changed): `[engine]`, `[limits]`,
//! `[server]`, `[console]`, `[directories.*]`, `[connections.*]` and `[jobs.*]`, because the runtime, the
//! script engine, the listener and the host connections were built from them.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::catalog::{Catalog, ReloadOutcome};
use crate::config::Config;
use crate::diag::Diagnostic;
use crate::runtime::Runtime;
use crate::scheduler::{BoxError, Job, JobRunner, Scheduler, StoreLastRuns};
use crate::server::{HealthReport, ServerState};
use crate::store::RunStatus;
use crate::watch::{Changes, FolderWatcher};

/// How long an idle dispatcher waits before looking at the queue again (events stored by
/// another process, retries coming due). Events from webhooks wake it at once.
pub const IDLE_POLL: Duration = Duration::from_millis(500);
/// How often old finished events and successful runs are pruned (`[engine] retention_days`);
/// also once at start.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How often jobs with `stale_after` are checked for a success that is too old.
const STALE_CHECK_EVERY: Duration = Duration::from_secs(60);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("{0}")]
    Config(String),
}

/// How the daemon runs; [`Options::default`] is what `tripline run` uses.
pub struct Options {
    /// The quiet time of file events before a reload.
    pub debounce: Duration,
    /// Watch the rules and scripts folders (otherwise only SIGHUP / [`Control`] reloads).
    pub watch: bool,
    /// Listen for SIGHUP.
    pub signals: bool,
    /// A listener bound already (tests bind port 0); otherwise `[server] listen` is bound.
    pub listener: Option<tokio::net::TcpListener>,
    /// See [`IDLE_POLL`].
    pub idle_poll: Duration,
    /// How long requests in progress may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// A listener bound already for the console (tests bind port 0); otherwise `[console]
    /// listen` is bound. Without `[console]`, no console.
    pub console_listener: Option<tokio::net::TcpListener>,
    control: Option<UnboundedReceiver<Control>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            debounce: crate::watch::DEFAULT_DEBOUNCE,
            watch: true,
            signals: true,
            listener: None,
            idle_poll: IDLE_POLL,
            shutdown_grace: Duration::from_secs(10),
            console_listener: None,
            control: None,
        }
    }
}

impl Options {
    /// A handle to request reloads from outside the process's signals (tests, embedders).
    pub fn control(&mut self) -> ControlHandle {
        let (tx, rx) = unbounded_channel();
        self.control = Some(rx);
        ControlHandle(tx)
    }
}

/// What a [`ControlHandle`] or a signal asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// What SIGHUP does: re-read `tripline.toml`, then the rules and scripts.
    ReloadConfig,
    /// Re-read the rules and scripts.
    ReloadFiles,
}

/// Sends [`Control`] requests to a running daemon.
#[derive(Clone)]
pub struct ControlHandle(UnboundedSender<Control>);

impl ControlHandle {
    /// Asks for a reload; false when the daemon has stopped.
    pub fn send(&self, c: Control) -> bool {
        self.0.send(c).is_ok()
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                warn!(%e, "Cannot listen for SIGTERM; only Ctrl-C stops the daemon.");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The daemon with default [`Options`], until `shutdown` resolves.
pub async fn run(runtime: Arc<Runtime>, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    run_with(runtime, Options::default(), shutdown).await
}

/// The last reload that changed the catalog (or was rejected), as `/healthz` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    pub at: DateTime<Utc>,
    /// `files` (a change under the folders), `signal` (SIGHUP) or `control`.
    pub trigger: &'static str,
    pub outcome: ReloadOutcome,
    pub duration_ms: u64,
    /// The problems of that reload, as `path:line:col: message`.
    pub problems: Vec<String>,
}

/// What the daemon knows about itself beyond the runtime: reloads and configuration problems.
#[derive(Default)]
struct Status {
    started_at: Option<DateTime<Utc>>,
    last_reload: Option<ReloadReport>,
    last_config_reload: Option<ReloadReport>,
    reloads: u64,
}

/// The daemon's state, owned by its loop.
struct Daemon {
    runtime: Arc<Runtime>,
    status: Arc<Mutex<Status>>,
    watcher: Option<FolderWatcher>,
    /// The dispatcher's handle (see [`crate::dispatch`]).
    dispatcher: crate::dispatch::Control,
    /// The webhooks in force (shared with the server).
    server: Option<Arc<ServerState>>,
    /// The text of the configuration in force, to tell which sections a SIGHUP changed.
    config_text: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The daemon's loop, until `shutdown` resolves.
pub async fn run_with(
    runtime: Arc<Runtime>,
    mut options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let status = Arc::new(Mutex::new(Status { started_at: Some(Utc::now()), ..Status::default() }));
    let wake = Arc::new(Notify::new());
    let config = runtime.config();

    // Watch first: once the server answers, every later change is seen. The sender stays
    // alive (here) even without a watcher, so the loop's receiver never reports closed.
    let (files_tx, mut files_rx) = unbounded_channel();
    let watcher = if options.watch { start_watcher(config, options.debounce, files_tx.clone()) } else { None };
    // A crash's unfinished events run at once; then the dispatcher starts on the queue, events
    // queued while the daemon was down first.
    release_dead_claims(&runtime).await;
    let dispatcher = {
        let mut o = crate::dispatch::Options::own(&runtime);
        o.source = crate::dispatch::Source::Everything;
        o.idle_poll = options.idle_poll;
        let rt = runtime.clone();
        tokio::task::spawn_blocking(move || crate::dispatch::serve(rt, o))
            .await
            .expect("starting the dispatcher does not panic")
            .map_err(|e| DaemonError::Config(format!("cannot start the dispatcher's threads: {e}")))?
    };
    let worker = dispatcher.control.owner().to_string();
    info!(store = %runtime.store().describe(), %worker, "Using the store.");
    // Events other workers store wake this one's dispatcher at once (a store several
    // workers share announces them); polling stays the fallback.
    let woken = dispatcher.control.clone();
    if let Err(e) = runtime.store().subscribe(Arc::new(move || woken.wake())) {
        warn!(error = %e, "Cannot listen for events stored by other workers; polling for them.");
    }
    let heartbeat = tokio::spawn(heartbeat_task(runtime.clone(), worker.clone()));
    let mut daemon = Daemon {
        runtime: runtime.clone(),
        status: status.clone(),
        watcher,
        dispatcher: dispatcher.control.clone(),
        server: None,
        config_text: config.path.as_deref().and_then(|p| std::fs::read_to_string(p).ok()),
    };
    let server = match start_server(&runtime, &mut options, &status, &wake, &daemon.dispatcher).await {
        Ok(s) => s,
        Err(e) => {
            let _ = tokio::task::spawn_blocking(move || dispatcher.stop()).await;
            return Err(e);
        }
    };
    daemon.server = server.as_ref().map(|s| s.state.clone());
    let console = match start_console(&runtime, &mut options, &status, &wake, &daemon.dispatcher).await {
        Ok(c) => c,
        Err(e) => {
            if let Some(server) = server {
                let _ = server.stop.send(());
                let _ = server.task.await;
            }
            let _ = tokio::task::spawn_blocking(move || dispatcher.stop()).await;
            return Err(e);
        }
    };
    let (_control_tx, mut control_rx) = controls(&mut options);
    let (scheduler_stop, scheduler_stopped) = tokio::sync::oneshot::channel::<()>();
    // Jobs' writes raise events claimed by the dispatcher, which goes on with them.
    let owner = daemon.dispatcher.owner().to_string();
    let scheduler = tokio::spawn(scheduler_task(runtime.clone(), owner, async {
        let _ = scheduler_stopped.await;
    }));
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    let mut stale_jobs = tokio::time::interval(STALE_CHECK_EVERY);

    let catalog = runtime.catalog();
    info!(rules = catalog.rules.rules().len(), scripts = catalog.scripts.len(), "tripline daemon started.");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(changes) = files_rx.recv() => daemon.handle_reload("files", Some(changes), &mut files_rx).await,
            Some(control) = control_rx.recv() => daemon.handle_signal(control, &mut files_rx).await,
            _ = wake.notified() => daemon.dispatcher.wake(),
            _ = prune.tick() => daemon.handle_prune().await,
            _ = stale_jobs.tick() => daemon.handle_stale_jobs().await,
        }
    }

    info!("Shutdown requested: finishing requests and runs in progress.");
    let server_stopped = async {
        if let Some(server) = server {
            let _ = server.stop.send(());
            let _ = server.task.await;
        }
        if let Some((stop, task)) = console {
            let _ = stop.send(());
            let _ = task.await;
        }
    };
    // Runs in progress finish; events queued but not started are released for the next start.
    let runs_finished = async {
        if let Err(e) = tokio::task::spawn_blocking(move || dispatcher.stop()).await {
            error!(error = %e, "The dispatcher panicked while stopping.");
        }
    };
    let jobs_finished = async {
        let _ = scheduler_stop.send(());
        if let Err(e) = scheduler.await {
            error!(error = %e, "The scheduler panicked.");
        }
    };
    tokio::join!(server_stopped, runs_finished, jobs_finished);
    heartbeat.abort();
    let (rt, id) = (runtime.clone(), worker.clone());
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || rt.store().forget_worker(&id)).await {
        debug!(error = %e, "Cannot take this worker off the store's list; it ages out.");
    }
    drop(daemon.watcher.take());
    drop(files_tx);
    info!("tripline daemon stopped.");
    Ok(())
}

fn start_watcher(config: &Config, debounce: Duration, tx: UnboundedSender<Changes>) -> Option<FolderWatcher> {
    let folders = [config.engine.rules_dir.clone(), config.engine.scripts_dir.clone()];
    match FolderWatcher::start(&folders, debounce, tx) {
        Ok(w) => Some(w),
        Err(e) => {
            error!(error = %e, "Cannot watch the rules and scripts folders; reload them with SIGHUP.");
            None
        }
    }
}

/// The HTTP server task and how to stop it.
struct RunningServer {
    state: Arc<ServerState>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Starts the HTTP server on the given listener, or on `[server] listen`; `None` without either.
async fn start_server(
    runtime: &Arc<Runtime>,
    options: &mut Options,
    status: &Arc<Mutex<Status>>,
    wake: &Arc<Notify>,
    dispatcher: &crate::dispatch::Control,
) -> Result<Option<RunningServer>, DaemonError> {
    let config = runtime.config();
    let listener = match (options.listener.take(), &config.server) {
        (Some(l), _) => l,
        (None, Some(s)) => tokio::net::TcpListener::bind(s.listen)
            .await
            .map_err(|e| DaemonError::Bind { addr: s.listen.to_string(), source: e })?,
        (None, None) => return Ok(None),
    };
    let settings = config.server.unwrap_or_default();
    let request_timeout = settings.request_timeout;
    let state = Arc::new(ServerState::new(
        runtime.store().clone(),
        config.engine.max_record_bytes,
        config.webhooks.clone(),
        wake.clone(),
        health_report(runtime.clone(), status.clone(), dispatcher.clone()),
        settings,
    ));
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    info!(%addr, webhooks = state.webhooks.load().len(), "Listening for webhooks, /healthz and /metrics.");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = crate::server::router(state.clone());
    let task = tokio::spawn(crate::server::serve(listener, router, request_timeout, options.shutdown_grace, async {
        let _ = stopped.await;
    }));
    Ok(Some(RunningServer { state, stop, task }))
}

/// Starts the console on the given listener, or on `[console] listen`; `None` without
/// `[console]`. Replays and job runs from the console go to this daemon's dispatcher.
async fn start_console(
    runtime: &Arc<Runtime>,
    options: &mut Options,
    status: &Arc<Mutex<Status>>,
    wake: &Arc<Notify>,
    dispatcher: &crate::dispatch::Control,
) -> Result<Option<(tokio::sync::oneshot::Sender<()>, JoinHandle<()>)>, DaemonError> {
    let Some(settings) = runtime.config().console.clone() else { return Ok(None) };
    let listener = match options.console_listener.take() {
        Some(l) => l,
        None => tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|e| DaemonError::Bind { addr: settings.listen.to_string(), source: e })?,
    };
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    info!(%addr, users = settings.users.len(), "Serving the console.");
    let state = Arc::new(crate::console::ConsoleState::new(
        runtime.clone(),
        settings,
        dispatcher.owner().to_string(),
        wake.clone(),
        health_report(runtime.clone(), status.clone(), dispatcher.clone()),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(crate::console::serve(listener, state, options.shutdown_grace, async {
        let _ = stopped.await;
    }));
    Ok(Some((stop, task)))
}

/// Runs jobs on the runtime's blocking threads; their runs land in the run history and the
/// events their writes raise are claimed by the dispatcher named `.1`, which goes on with them.
#[derive(Clone)]
pub struct RuntimeJobs(pub Arc<Runtime>, pub Arc<str>);

impl JobRunner for RuntimeJobs {
    fn run_job(&self, job: &Job, tick: DateTime<Utc>) -> BoxFuture<'static, Result<(), BoxError>> {
        let rt = self.0.clone();
        let name = job.name.clone();
        let owner = self.1.clone();
        Box::pin(async move {
            let job_name = name.clone();
            let (run, raised) =
                tokio::task::spawn_blocking(move || rt.run_job(&job_name, "schedule", &owner)).await??;
            match run.status {
                RunStatus::Ok => {
                    info!(job = %name, %tick, ms = run.duration_ms, events = raised.len(), "Job ran.");
                    Ok(())
                }
                _ => {
                    let error = run.error.unwrap_or_default();
                    warn!(job = %name, %tick, %error, "Job failed.");
                    Err(error.into())
                }
            }
        })
    }
}

/// The scheduler over the runtime's enabled jobs, until `shutdown`; the events a job's writes
/// raise are claimed by `owner` (the daemon's dispatcher).
fn scheduler_task(
    runtime: Arc<Runtime>,
    owner: String,
    shutdown: impl Future<Output = ()> + Send,
) -> impl Future<Output = ()> + Send {
    let jobs: Vec<Job> = runtime.jobs().values().filter(|j| j.enabled).cloned().collect();
    let owner: Arc<str> = Arc::from(owner);
    let last_runs = StoreLastRuns { store: runtime.store().clone(), owner: owner.clone(), lease: runtime.lease() };
    let scheduler = Scheduler::new(jobs, Arc::new(last_runs));
    scheduler.run(RuntimeJobs(runtime, owner), shutdown)
}

/// One channel for every reload request: SIGHUP and the options' [`ControlHandle`]. The caller
/// keeps the sender so that the receiver never reports closed.
fn controls(options: &mut Options) -> (UnboundedSender<Control>, UnboundedReceiver<Control>) {
    let (tx, rx) = unbounded_channel();
    if let Some(mut external) = options.control.take() {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(c) = external.recv().await {
                if tx.send(c).is_err() {
                    break;
                }
            }
        });
    }
    #[cfg(unix)]
    if options.signals {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut hup) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        if tx.send(Control::ReloadConfig).is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) => warn!(error = %e, "Cannot listen for SIGHUP; the configuration reloads only with a restart."),
        }
    }
    (tx, rx)
}

/// How often a worker beats at most: it says it is alive (with its figures) and extends its
/// claims on events and jobs, so that they hold while it lives and come free soon after it
/// dies.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);

/// How often this worker beats: every [`HEARTBEAT_EVERY`], or a third of the claim lease
/// when that is shorter.
fn heartbeat_every(runtime: &Runtime) -> Duration {
    HEARTBEAT_EVERY.min(runtime.lease() / 3).max(Duration::from_millis(100))
}

/// The worker's heartbeat, until aborted (see [`heartbeat_every`]).
async fn heartbeat_task(runtime: Arc<Runtime>, worker: String) {
    let lease = runtime.lease();
    let every = heartbeat_every(&runtime);
    let started_at = Utc::now();
    let host = crate::runtime::hostname();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let (rt, id, host) = (runtime.clone(), worker.clone(), host.clone());
        let beat = tokio::task::spawn_blocking(move || {
            let figures = crate::metrics::worker_figures();
            let beat = crate::store::WorkerBeat {
                id: &id,
                host: &host,
                pid: std::process::id(),
                started_at,
                figures: &figures,
            };
            let until = Utc::now() + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
            rt.store().heartbeat(&beat, until)
        })
        .await;
        match beat {
            Ok(Ok(())) => {
                if failing {
                    info!("The store hears this worker's heartbeat again.");
                }
                failing = false;
            }
            Ok(Err(e)) if !failing => {
                warn!(error = %e, "Cannot beat in the store; this worker's claims expire unless it comes back.");
                failing = true;
            }
            Ok(Err(_)) => {}
            Err(e) => error!(error = %e, "The heartbeat task panicked."),
        }
    }
}

/// Releases the event claims of processes on this host that died, so that a crash's
/// unfinished events run at once rather than when their leases expire.
async fn release_dead_claims(runtime: &Arc<Runtime>) {
    let rt = runtime.clone();
    match tokio::task::spawn_blocking(move || rt.release_dead_claims()).await.expect("release task panicked") {
        Ok(0) => {}
        Ok(n) => info!(events = n, "Released the claims of a process that died; its events run now."),
        Err(e) => warn!(%e, "Cannot release the claims of dead processes; they expire by themselves."),
    }
}

impl Daemon {
    /// Rebuilds the catalog from the folders (after file changes, a SIGHUP or a control
    /// request) and swaps it in; files in error keep their last good version.
    async fn handle_reload(
        &mut self,
        trigger: &'static str,
        first: Option<Changes>,
        more: &mut UnboundedReceiver<Changes>,
    ) {
        // Coalesce: one re-scan covers every change already announced.
        let mut paths: Vec<PathBuf> = first.map(|c| c.paths).unwrap_or_default();
        while let Ok(c) = more.try_recv() {
            paths.extend(c.paths);
        }
        if let Some(w) = &mut self.watcher {
            w.refresh();
        }
        let started = Instant::now();
        let rt = self.runtime.clone();
        let built = tokio::task::spawn_blocking(move || {
            let previous = rt.catalog();
            let engine = &rt.config().engine;
            let next =
                Catalog::reload(rt.scripts(), &engine.rules_dir, &engine.scripts_dir, &previous, &rt.known_names());
            if next.same_files_as(&previous) {
                return (ReloadOutcome::Unchanged, next.problems.clone(), next.rules.rules().len(), next.scripts.len());
            }
            let outcome = if next.problems.is_empty() { ReloadOutcome::Applied } else { ReloadOutcome::Partial };
            let (problems, rules, scripts) = (next.problems.clone(), next.rules.rules().len(), next.scripts.len());
            rt.swap_catalog(next);
            (outcome, problems, rules, scripts)
        })
        .await;
        let (outcome, problems, rules, scripts) = match built {
            Ok(b) => b,
            Err(e) => {
                error!(error = %e, "The reload failed; the rules and scripts in force are kept.");
                return;
            }
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        crate::metrics::reload(trigger, outcome.as_str());
        crate::metrics::set_files_in_error(problems.len());
        let changed: Vec<String> = paths.iter().take(8).map(|p| p.display().to_string()).collect();
        match outcome {
            ReloadOutcome::Unchanged => debug!(trigger, ?changed, "Reload: no rule or script changed."),
            ReloadOutcome::Applied => {
                info!(
                    trigger,
                    outcome = outcome.as_str(),
                    rules,
                    scripts,
                    duration_ms,
                    ?changed,
                    "Rules and scripts reloaded."
                )
            }
            _ => {
                for p in &problems {
                    warn!(problem = %p, "A file is in error; its last good version, if any, keeps running.");
                }
                warn!(
                    trigger,
                    outcome = outcome.as_str(),
                    rules,
                    scripts,
                    files_in_error = problems.len(),
                    duration_ms,
                    ?changed,
                    "Rules and scripts reloaded with problems."
                );
            }
        }
        // A re-scan that found nothing new (late events of a save already applied) is no
        // reload to report: `/healthz` keeps describing the catalog in force.
        if outcome == ReloadOutcome::Unchanged {
            return;
        }
        let mut status = lock(&self.status);
        status.reloads += 1;
        status.last_reload = Some(ReloadReport {
            at: Utc::now(),
            trigger,
            outcome,
            duration_ms,
            problems: problems.iter().map(Diagnostic::to_string).collect(),
        });
    }

    /// Deletes what `[engine] retention_days` no longer keeps.
    async fn handle_prune(&mut self) {
        let rt = self.runtime.clone();
        match tokio::task::spawn_blocking(move || rt.prune()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => info!(rows = n, "Pruned finished events and successful runs past the retention."),
            Ok(Err(e)) => warn!(error = %e, "Pruning failed; it is tried again later."),
            Err(e) => error!(error = %e, "The pruning task panicked."),
        }
    }

    /// Tells the contacts of jobs that have not succeeded within their `stale_after`.
    async fn handle_stale_jobs(&mut self) {
        let rt = self.runtime.clone();
        match tokio::task::spawn_blocking(move || rt.check_stale_jobs(Utc::now())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "The stale job check failed; it is tried again later."),
            Err(e) => error!(error = %e, "The stale job check panicked."),
        }
    }

    /// SIGHUP (or a control request): re-read and validate `tripline.toml`, apply what can
    /// change at runtime, then reload the rules and scripts.
    async fn handle_signal(&mut self, control: Control, files: &mut UnboundedReceiver<Changes>) {
        if control == Control::ReloadConfig {
            self.reload_config().await;
        }
        let trigger = if control == Control::ReloadConfig { "signal" } else { "control" };
        self.handle_reload(trigger, None, files).await;
    }

    async fn reload_config(&mut self) {
        let Some(path) = self.runtime.config().path.clone() else {
            info!("The configuration was built in code; only rules and scripts are reloaded.");
            return;
        };
        let started = Instant::now();
        let loaded = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let text = Config::read(&path)?;
                Config::from_str(&text, &path).map(|c| (c, text))
            })
            .await
        };
        let loaded = loaded.unwrap_or_else(|e| Err(vec![Diagnostic::file(&path, format!("reading failed: {e}"))]));
        let report = |outcome: ReloadOutcome, problems: Vec<String>| {
            crate::metrics::reload("signal", outcome.as_str());
            lock(&self.status).last_config_reload = Some(ReloadReport {
                at: Utc::now(),
                trigger: "signal",
                outcome,
                duration_ms: started.elapsed().as_millis() as u64,
                problems,
            });
        };
        let (config, text) = match loaded {
            Ok(x) => x,
            Err(diags) => {
                for d in &diags {
                    warn!(problem = %d, "The configuration does not validate.");
                }
                warn!(path = %path.display(), problems = diags.len(), "Configuration reload rejected; the running one is kept.");
                report(ReloadOutcome::Rejected, diags.iter().map(Diagnostic::to_string).collect());
                return;
            }
        };
        let mut problems = Vec::new();
        match &self.server {
            Some(server) => server.webhooks.store(Arc::new(config.webhooks.clone())),
            None if !config.webhooks.is_empty() => {
                problems.push("webhooks were added but no server is listening: restart to start it".to_string())
            }
            None => {}
        }
        self.runtime.hosts().notifier.replace(config.notify.clone());
        let needs_restart = changed_sections(self.config_text.as_deref().unwrap_or(""), &text);
        for section in &needs_restart {
            warn!(section = %section, "This configuration section changed; restart the daemon to apply it.");
            problems.push(format!("[{section}] changed: restart the daemon to apply it"));
        }
        self.config_text = Some(text);
        let outcome = if problems.is_empty() { ReloadOutcome::Applied } else { ReloadOutcome::Partial };
        info!(path = %path.display(), outcome = outcome.as_str(), "Configuration reloaded (webhooks, notification channels).");
        report(outcome, problems);
    }
}

/// The top-level sections that cannot change at runtime and differ between two texts.
fn changed_sections(old: &str, new: &str) -> Vec<String> {
    let parse = |t: &str| t.parse::<toml::Table>().unwrap_or_default();
    let (old, new) = (parse(old), parse(new));
    ["engine", "limits", "server", "directories", "connections", "jobs", "console"]
        .into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .map(String::from)
        .collect()
}

/// `/healthz`'s report: rules and scripts in force, files in error, the last reloads, the
/// queue.
fn health_report(
    runtime: Arc<Runtime>,
    status: Arc<Mutex<Status>>,
    dispatcher: crate::dispatch::Control,
) -> HealthReport {
    Arc::new(move || {
        let catalog = runtime.catalog();
        let (errors, warnings): (Vec<_>, Vec<_>) =
            catalog.problems.iter().chain(runtime.start_problems()).partition(|d| d.is_error());
        let listed = |ds: Vec<&crate::diag::Diagnostic>| -> Vec<Value> {
            ds.into_iter()
                .map(|d| {
                    json!({
                        "path": d.path.display().to_string(),
                        "line": d.line,
                        "col": d.col,
                        "message": d.message,
                        "diagnostic": d.to_string(),
                    })
                })
                .collect()
        };
        let files_in_error = listed(errors);
        let queue_depth = runtime.store().queue_depth().ok();
        let now = Utc::now();
        // A worker that missed three heartbeats is shown as not alive.
        let alive_within = chrono::Duration::from_std(heartbeat_every(&runtime) * 3).unwrap_or_default();
        let workers: Option<Vec<Value>> = runtime.store().workers().ok().map(|ws| {
            ws.into_iter()
                .map(|w| {
                    let alive = now - w.seen_at <= alive_within;
                    json!({
                        "id": w.id, "host": w.host, "pid": w.pid, "started_at": w.started_at,
                        "seen_at": w.seen_at, "alive": alive, "figures": w.figures,
                    })
                })
                .collect()
        });
        let s = lock(&status);
        let config_rejected = s.last_config_reload.as_ref().is_some_and(|r| r.outcome == ReloadOutcome::Rejected);
        let failure = dispatcher.failure();
        let healthy = files_in_error.is_empty() && !config_rejected && queue_depth.is_some() && failure.is_none();
        json!({
            "status": if healthy { "ok" } else { "degraded" },
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": s.started_at,
            "rules": catalog.rules.rules().len(),
            "scripts": catalog.scripts.len(),
            "files_in_error": files_in_error,
            "warnings": listed(warnings),
            "last_reload": s.last_reload,
            "last_config_reload": s.last_config_reload,
            "reloads": s.reloads,
            "queue_depth": queue_depth,
            "dispatcher": match &failure {
                None => json!({"ok": true, "in_flight": dispatcher.outstanding()}),
                Some((since, n, error)) => json!({"ok": false, "failing_since": since, "failures": n, "error": error}),
            },
            "notify_channels": runtime.hosts().notifier.channels(),
            "store": runtime.store().describe(),
            "worker": dispatcher.owner(),
            "figures": crate::metrics::worker_figures(),
            "workers": workers,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_that_need_a_restart_are_named() {
        let old = "[engine]\nworkers = 2\n[webhooks.a]\npath = \"/a\"\n";
        let new = "[engine]\nworkers = 4\n[webhooks.a]\npath = \"/b\"\n";
        assert_eq!(changed_sections(old, new), vec!["engine"]);
        assert!(changed_sections(old, old).is_empty());
    }
}
