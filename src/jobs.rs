//! Jobs in the runtime: building `[jobs.NAME]`, running them on the scheduler's ticks, and the
//! store-backed state the scheduler and OAuth2 connections keep across restarts.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde_json::Value;
use tracing::{info, warn};

use crate::catalog::Catalog;
use crate::config::Config;
use crate::connection::{StoredToken, TokenStore, TokenStoreError};
use crate::diag::Diagnostic;
use crate::runtime::Runtime;
use crate::scheduler::{BoxError, Job, JobRunner, LastRunStore, Scheduler};
use crate::store::{RunStatus, Store, StoreError};

/// Why a job could not run.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Unknown(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The jobs of the configuration, with a problem for each whose script is not loaded.
pub fn build_jobs(config: &Config, catalog: &Catalog, diags: &mut Vec<Diagnostic>) -> BTreeMap<String, Job> {
    diags.extend(check_contacts(config, catalog));
    let path = config.path.clone().unwrap_or_else(|| "tripline.toml".into());
    // The text is read only to place a problem, which start-up without problems never needs.
    let source = || std::fs::read_to_string(&path).unwrap_or_default();
    let mut jobs = BTreeMap::new();
    for (name, cfg) in &config.raw.jobs {
        let cfg = cfg.get_ref();
        if !catalog.scripts.contains_key(cfg.script.get_ref()) {
            // A script that is there but in error (it does not compile, or fails the script
            // checks) has its own problem reported at its place.
            if config.engine.scripts_dir.join(cfg.script.get_ref()).is_file() {
                continue;
            }
            diags.push(Diagnostic::span(
                &path,
                &source(),
                Some(cfg.script.span()),
                format!(
                    "jobs.{name}: script {:?} does not exist in {}",
                    cfg.script.get_ref(),
                    config.engine.scripts_dir.display()
                ),
            ));
            continue;
        }
        // The configuration's own check already reported a schedule that does not parse, at
        // its place; such a job is only left out here.
        if let Ok(job) = cfg.build(name) {
            jobs.insert(name.clone(), job);
        }
    }
    jobs
}

/// Problems with the notification channels that rules and jobs name in `notify_on_failure`:
/// each must be a `[notify.NAME]` of the configuration.
pub fn check_contacts(config: &Config, catalog: &Catalog) -> Vec<Diagnostic> {
    let known: Vec<&str> = config.raw.notify.keys().map(String::as_str).collect();
    let mut diags = Vec::new();
    let mut check = |path: &std::path::Path, name: &str| {
        if known.contains(&name) {
            return;
        }
        let source = std::fs::read_to_string(path).unwrap_or_default();
        let span = source.find(&format!("\"{name}\"")).map(|i| i..i + name.len() + 2);
        let hint = match crate::diag::did_you_mean(name, known.iter().copied()) {
            Some(s) => format!("; did you mean {s:?}?"),
            None if known.is_empty() => "; the configuration has no [notify] channels".into(),
            None => format!("; channels are {}", known.join(", ")),
        };
        diags.push(Diagnostic::span(
            path,
            &source,
            span,
            format!("notify_on_failure names unknown channel {name:?}{hint}"),
        ));
    };
    for rule in catalog.rules.rules() {
        for name in &rule.notify_on_failure {
            check(&rule.path, name);
        }
    }
    let config_path = config.path.clone().unwrap_or_else(|| "tripline.toml".into());
    for job in config.raw.jobs.values() {
        for name in &job.get_ref().notify_on_failure {
            check(&config_path, name);
        }
    }
    diags
}

/// OAuth2 tokens in the store's key-value table (namespace `oauth2`).
pub struct StoreTokens(pub Arc<dyn Store>);

const TOKENS: &str = "oauth2";

impl TokenStore for StoreTokens {
    fn load(&self, connection: &str) -> Result<Option<StoredToken>, TokenStoreError> {
        match self.0.kv_get(TOKENS, connection).map_err(TokenStoreError::new)? {
            Some(Value::String(text)) => StoredToken::from_json(&text).map(Some),
            Some(_) => Err(TokenStoreError::new("stored token is not text")),
            None => Ok(None),
        }
    }

    fn save(&self, connection: &str, token: &StoredToken) -> Result<(), TokenStoreError> {
        self.0.kv_set(TOKENS, connection, &Value::String(token.to_json())).map_err(TokenStoreError::new)
    }
}

/// The scheduler's last handled tick per job, in the key-value table (namespace `scheduler`).
pub struct StoreLastRuns(pub Arc<dyn Store>);

impl LastRunStore for StoreLastRuns {
    fn last_tick(&self, job: &str) -> Result<Option<DateTime<Utc>>, BoxError> {
        match self.0.kv_get("scheduler", job)? {
            Some(Value::String(s)) => Ok(Some(DateTime::parse_from_rfc3339(&s)?.with_timezone(&Utc))),
            _ => Ok(None),
        }
    }

    fn record_tick(&self, job: &str, tick: DateTime<Utc>) -> Result<(), BoxError> {
        Ok(self.0.kv_set("scheduler", job, &Value::String(tick.to_rfc3339()))?)
    }
}

/// Runs jobs on the runtime's blocking threads; their runs land in the run history and the
/// events their writes raise wait in the queue for the dispatcher.
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

/// The scheduler over the runtime's enabled jobs, until `shutdown`.
/// The events a job's writes raise are claimed by `owner` (the daemon's dispatcher).
pub fn scheduler_task(
    runtime: Arc<Runtime>,
    owner: String,
    shutdown: impl Future<Output = ()> + Send,
) -> impl Future<Output = ()> + Send {
    let jobs: Vec<Job> = runtime.jobs().values().filter(|j| j.enabled).cloned().collect();
    let scheduler = Scheduler::new(jobs, Arc::new(StoreLastRuns(runtime.store().clone())));
    scheduler.run(RuntimeJobs(runtime, Arc::from(owner)), shutdown)
}
