//! Scheduled jobs: `[jobs.NAME]` and the loop that starts them on their cron schedules.
//!
//! The [`Scheduler`] decides *when*; the daemon's [`JobRunner`] decides *how* (run the
//! script, record the run). Two promises live here:
//!
//! - a job never overlaps itself: a tick that comes while the previous run is still going is
//!   skipped (and logged);
//! - a tick missed while the daemon was down runs once on start, not once per missed tick.
//!   The last handled tick of each job is kept in a [`LastRunStore`] for that.
//!
//! Time comes from a [`WallClock`]; [`TokioClock`] follows tokio's clock so that tests can
//! pause time and step through a day of ticks at once.

use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Local, SubsecRound, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::Value;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::de::{duration, toml_to_json};
use crate::diag::CheckCtx;
use crate::store::Store;
pub use crate::store::TickTaken;

/// Any error, as runners and stores report them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `[jobs.NAME]` as written.
///
/// ```toml
/// [jobs.flex_hr_sync]
/// schedule = "0 */2 * * * *"     # 6 fields: with seconds; 5 fields: minute-level
/// script = "flex_hr_job.rhai"
/// params = { modified_since_days = 30, instance_id = "ACME" }
/// enabled = true
/// notify_on_failure = ["it_ops"]
/// stale_after = "24h"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// A cron expression of 5 fields (minute hour day-of-month month day-of-week) or 6 (a
    /// seconds field first), evaluated in the scheduler's time zone (local by default).
    pub schedule: toml::Spanned<String>,
    /// The script to run, under `scripts_dir`.
    pub script: toml::Spanned<String>,
    /// What the script sees as `params`.
    #[serde(default)]
    pub params: toml::Table,
    #[serde(default = "crate::de::default_true")]
    pub enabled: bool,
    /// Notification channels told when a run fails.
    #[serde(default)]
    pub notify_on_failure: Vec<String>,
    /// How long without a successful run before the job counts as stale.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub stale_after: Option<Duration>,
}

impl JobConfig {
    /// `params` as JSON (TOML dates become RFC 3339 text).
    pub fn params_json(&self) -> Result<Value, String> {
        toml_to_json(&toml::Value::Table(self.params.clone()))
    }

    /// The runtime job; `None` when the section has a problem, which is recorded (every
    /// problem, each at its place). That its script is loaded is the runtime's to check: the
    /// scripts are not part of the configuration.
    pub fn build(&self, name: &str, span: Range<usize>, ctx: &mut CheckCtx) -> Option<Job> {
        let errors = ctx.errors();
        let schedule = Schedule::parse(self.schedule.get_ref())
            .map_err(|e| ctx.error(self.schedule.span(), format!("job {name}: {e}")))
            .ok();
        if self.script.get_ref().trim().is_empty() {
            ctx.error(self.script.span(), format!("job {name}: script is empty"));
        }
        if self.stale_after.is_some_and(|d| d.is_zero()) {
            ctx.error(span.clone(), format!("job {name}: stale_after must be more than zero"));
        }
        let params = self.params_json().map_err(|e| ctx.error(span, format!("job {name}: params: {e}"))).ok();
        if ctx.errors() > errors {
            return None;
        }
        Some(Job {
            name: name.to_string(),
            schedule: schedule?,
            script: self.script.get_ref().clone(),
            params: params?,
            enabled: self.enabled,
            notify_on_failure: self.notify_on_failure.clone(),
            stale_after: self.stale_after,
        })
    }
}

/// A schedule that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schedule `{schedule}`: {message}")]
pub struct ScheduleError {
    pub schedule: String,
    pub message: String,
}

/// A parsed cron expression.
#[derive(Debug, Clone)]
pub struct Schedule {
    text: String,
    cron: Cron,
}

/// The time zone cron expressions are read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Zone {
    /// The machine's local time (a daily `0 2 * * *` runs at 2 a.m. where the daemon is).
    #[default]
    Local,
    Utc,
}

impl Schedule {
    /// 5 fields (minute-level) or 6 (seconds first); `@hourly`-style nicknames too.
    pub fn parse(text: &str) -> Result<Schedule, ScheduleError> {
        let fail = |message: String| ScheduleError { schedule: text.to_string(), message };
        let fields = text.split_whitespace().count();
        if !text.trim_start().starts_with('@') && fields != 5 && fields != 6 {
            return Err(fail(format!(
                "a cron expression has 5 fields (minute hour day-of-month month day-of-week) \
                 or 6 (second first), not {fields}"
            )));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(text)
            .map_err(|e| fail(e.to_string()))?;
        Ok(Schedule { text: text.to_string(), cron })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first tick strictly after `t`. Ticks are whole seconds (the time's fraction of a
    /// second is not carried into them), so that every worker computes the same ticks.
    pub fn next_after(&self, t: DateTime<Utc>, zone: Zone) -> Option<DateTime<Utc>> {
        let t = t.trunc_subsecs(0);
        let next = match zone {
            Zone::Utc => self.cron.find_next_occurrence(&t, false).ok(),
            Zone::Local => {
                self.cron.find_next_occurrence(&t.with_timezone(&Local), false).ok().map(|d| d.with_timezone(&Utc))
            }
        };
        next.map(|d| d.trunc_subsecs(0))
    }

    /// The latest tick at or before `t` (a whole second).
    pub fn latest_until(&self, t: DateTime<Utc>, zone: Zone) -> Option<DateTime<Utc>> {
        let t = t.trunc_subsecs(0);
        let latest = match zone {
            Zone::Utc => self.cron.find_previous_occurrence(&t, true).ok(),
            Zone::Local => {
                self.cron.find_previous_occurrence(&t.with_timezone(&Local), true).ok().map(|d| d.with_timezone(&Utc))
            }
        };
        latest.map(|d| d.trunc_subsecs(0))
    }
}

/// A job ready to be scheduled.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub schedule: Schedule,
    pub script: String,
    pub params: Value,
    pub enabled: bool,
    pub notify_on_failure: Vec<String>,
    pub stale_after: Option<Duration>,
}

/// Runs one job once; the daemon's implementation runs the script and records the run.
pub trait JobRunner: Send + Sync + 'static {
    /// Runs `job` for the scheduled `tick`. The future must own what it needs.
    fn run_job(&self, job: &Job, tick: DateTime<Utc>) -> BoxFuture<'static, Result<(), BoxError>>;
}

/// The last handled tick of each job, kept across restarts.
///
/// "Handled" means started, or skipped because the previous run was still going. A job seen
/// for the first time gets the start time, so that a later outage is noticed even before
/// its first tick.
pub trait LastRunStore: Send + Sync {
    fn last_tick(&self, job: &str) -> Result<Option<DateTime<Utc>>, BoxError>;
    fn record_tick(&self, job: &str, tick: DateTime<Utc>) -> Result<(), BoxError>;
    /// Takes `tick` of `job` to run it. Where several workers share the store, one of those
    /// asking for the same tick is told [`TickTaken::Run`]; a scheduler alone runs every tick.
    fn take_tick(&self, job: &str, tick: DateTime<Utc>) -> Result<TickTaken, BoxError> {
        self.record_tick(job, tick)?;
        Ok(TickTaken::Run)
    }
    /// The run of a tick this scheduler took has ended.
    fn end_run(&self, _job: &str) {}
}

/// Last ticks in memory only.
#[derive(Debug, Default)]
pub struct MemoryLastRunStore {
    ticks: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl MemoryLastRunStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl LastRunStore for MemoryLastRunStore {
    fn last_tick(&self, job: &str) -> Result<Option<DateTime<Utc>>, BoxError> {
        Ok(self.ticks.lock().unwrap_or_else(|e| e.into_inner()).get(job).copied())
    }

    fn record_tick(&self, job: &str, tick: DateTime<Utc>) -> Result<(), BoxError> {
        self.ticks.lock().unwrap_or_else(|e| e.into_inner()).insert(job.to_string(), tick);
        Ok(())
    }
}

/// The last handled tick of each job in the store, so that a restart catches up on a missed
/// tick once, and each tick runs once across the workers sharing the store: `owner` (a
/// worker's claim name) holds the job while it runs, for `lease` at a time (its heartbeats
/// extend it), so that a worker that dies mid-run is replaced at the next tick.
pub struct StoreLastRuns {
    pub store: Arc<dyn Store>,
    pub owner: Arc<str>,
    pub lease: Duration,
}

impl LastRunStore for StoreLastRuns {
    fn last_tick(&self, job: &str) -> Result<Option<DateTime<Utc>>, BoxError> {
        Ok(self.store.last_job_tick(job)?)
    }

    fn record_tick(&self, job: &str, tick: DateTime<Utc>) -> Result<(), BoxError> {
        Ok(self.store.record_job_tick(job, tick)?)
    }

    fn take_tick(&self, job: &str, tick: DateTime<Utc>) -> Result<TickTaken, BoxError> {
        let until = Utc::now() + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::MAX);
        Ok(self.store.take_job_tick(job, tick, &self.owner, until)?)
    }

    fn end_run(&self, job: &str) {
        if let Err(e) = self.store.end_job_run(job, &self.owner) {
            warn!(job, error = %e, "Cannot mark the job's run ended; other workers wait for its lease to run out.");
        }
    }
}

/// Where the scheduler reads the time.
pub trait WallClock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A wall clock that starts at a given time and advances with tokio's clock, so that a
/// paused test runtime controls it.
#[derive(Debug, Clone)]
pub struct TokioClock {
    wall: DateTime<Utc>,
    origin: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(wall: DateTime<Utc>) -> Self {
        Self { wall, origin: tokio::time::Instant::now() }
    }
}

impl WallClock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = chrono::Duration::from_std(self.origin.elapsed()).unwrap_or_default();
        self.wall + elapsed
    }
}

/// Starts jobs on their ticks.
pub struct Scheduler {
    jobs: Vec<Job>,
    last_runs: Arc<dyn LastRunStore>,
    clock: Arc<dyn WallClock>,
    zone: Zone,
}

struct Slot {
    job: Job,
    next: Option<DateTime<Utc>>,
    running: bool,
}

impl Scheduler {
    /// A scheduler for the enabled ones of `jobs`, on the system clock in local time.
    pub fn new(jobs: impl IntoIterator<Item = Job>, last_runs: Arc<dyn LastRunStore>) -> Self {
        Self {
            jobs: jobs.into_iter().filter(|j| j.enabled).collect(),
            last_runs,
            clock: Arc::new(SystemClock),
            zone: Zone::Local,
        }
    }

    /// Reads the time from `clock` instead of the system.
    pub fn with_clock(mut self, clock: Arc<dyn WallClock>) -> Self {
        self.clock = clock;
        self
    }

    /// Reads cron expressions in `zone`.
    pub fn with_zone(mut self, zone: Zone) -> Self {
        self.zone = zone;
        self
    }

    /// Starts jobs until `shutdown` completes, then waits for the runs in progress. (Dropping
    /// the future instead aborts them.)
    pub async fn run(self, runner: impl JobRunner, shutdown: impl Future<Output = ()>) {
        let Scheduler { jobs, last_runs, clock, zone } = self;
        let runner = Arc::new(runner);
        let mut running: JoinSet<Result<(), BoxError>> = JoinSet::new();
        let mut tasks: HashMap<tokio::task::Id, (usize, DateTime<Utc>)> = HashMap::new();
        let mut slots: Vec<Slot> = jobs.into_iter().map(|job| Slot { job, next: None, running: false }).collect();

        let start = |slot: &mut Slot,
                     index: usize,
                     tick: DateTime<Utc>,
                     running: &mut JoinSet<Result<(), BoxError>>,
                     tasks: &mut HashMap<tokio::task::Id, (usize, DateTime<Utc>)>| {
            info!(job = %slot.job.name, %tick, "Starting job.");
            let handle = running.spawn(runner.run_job(&slot.job, tick));
            tasks.insert(handle.id(), (index, tick));
            slot.running = true;
        };
        let record = |job: &str, tick: DateTime<Utc>| {
            if let Err(e) = last_runs.record_tick(job, tick) {
                warn!(job, %tick, error = %e, "Cannot record the job's last tick; a restart may run it once more.");
            }
        };
        // A tick runs here when the store gives it to this scheduler: once across the workers
        // sharing the store, and never while a run of the job is going anywhere.
        let take = |slot: &Slot, tick: DateTime<Utc>| match last_runs.take_tick(&slot.job.name, tick) {
            Ok(TickTaken::Run) => true,
            Ok(TickTaken::Taken) => {
                debug!(job = %slot.job.name, %tick, "Another worker took the tick.");
                false
            }
            Ok(TickTaken::Running(owner)) => {
                info!(job = %slot.job.name, %tick, worker = %owner, "Skipping the tick: the previous run is still going.");
                false
            }
            Err(e) => {
                warn!(job = %slot.job.name, %tick, error = %e, "Cannot take the tick from the store; it is skipped.");
                false
            }
        };

        let now = clock.now();
        for (index, slot) in slots.iter_mut().enumerate() {
            match last_runs.last_tick(&slot.job.name) {
                Ok(Some(last)) => {
                    if let Some(missed) = slot.job.schedule.latest_until(now, zone) {
                        if missed > last && take(slot, missed) {
                            info!(job = %slot.job.name, tick = %missed, last = %last, "Running the tick missed while the daemon was down.");
                            start(slot, index, missed, &mut running, &mut tasks);
                        }
                    }
                }
                Ok(None) => record(&slot.job.name, now),
                Err(e) => {
                    warn!(job = %slot.job.name, error = %e, "Cannot read the job's last tick; missed ticks are not caught up.")
                }
            }
            slot.next = slot.job.schedule.next_after(now, zone);
            if slot.next.is_none() {
                warn!(job = %slot.job.name, schedule = slot.job.schedule.as_str(), "The schedule has no future tick.");
            }
        }

        tokio::pin!(shutdown);
        loop {
            let next = slots.iter().filter_map(|s| s.next).min();
            let wait = async {
                match next {
                    Some(at) => {
                        let delay = (at - clock.now()).to_std().unwrap_or(Duration::ZERO);
                        tokio::time::sleep(delay).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                    finished(done, &mut slots, &mut tasks, last_runs.as_ref());
                    continue;
                }
                _ = wait => {}
            }
            let now = clock.now();
            for (index, slot) in slots.iter_mut().enumerate() {
                let Some(tick) = slot.next else { continue };
                if tick > now {
                    continue;
                }
                if slot.running {
                    info!(job = %slot.job.name, %tick, "Skipping the tick: the previous run is still going.");
                    record(&slot.job.name, tick);
                } else if take(slot, tick) {
                    start(slot, index, tick, &mut running, &mut tasks);
                }
                // From now, not from the tick: ticks passed while asleep (a suspended
                // machine) are not run one after another.
                slot.next = slot.job.schedule.next_after(now, zone);
            }
        }
        if !running.is_empty() {
            info!(runs = running.len(), "Scheduler stopping; waiting for the runs in progress.");
        }
        while let Some(done) = running.join_next_with_id().await {
            finished(done, &mut slots, &mut tasks, last_runs.as_ref());
        }
    }
}

type Finished = Result<(tokio::task::Id, Result<(), BoxError>), tokio::task::JoinError>;

fn finished(
    done: Finished,
    slots: &mut [Slot],
    tasks: &mut HashMap<tokio::task::Id, (usize, DateTime<Utc>)>,
    last_runs: &dyn LastRunStore,
) {
    let id = match &done {
        Ok((id, _)) => *id,
        Err(e) => e.id(),
    };
    let Some((index, tick)) = tasks.remove(&id) else {
        return;
    };
    let slot = &mut slots[index];
    slot.running = false;
    let job = &slot.job.name;
    last_runs.end_run(job);
    match done {
        Ok((_, Ok(()))) => info!(job = %job, %tick, "Job finished."),
        Ok((_, Err(e))) => warn!(job = %job, %tick, error = %e, "Job failed."),
        Err(e) => error!(job = %job, %tick, error = %e, "Job run panicked or was aborted."),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    /// The daemon spawns the scheduler on tokio's worker threads.
    #[allow(dead_code)]
    fn the_loop_can_move_between_threads(s: Scheduler, r: impl JobRunner) {
        fn send<T: Send>(_: T) {}
        send(s.run(r, async {}));
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    /// Two workers started at different fractions of a second compute the same ticks.
    #[test]
    fn ticks_are_whole_seconds_whenever_they_are_asked_for() {
        let s = Schedule::parse("*/2 * * * * *").unwrap();
        let a = utc(2026, 1, 1, 0, 0, 1) + chrono::Duration::milliseconds(120);
        let b = utc(2026, 1, 1, 0, 0, 1) + chrono::Duration::milliseconds(870);
        for zone in [Zone::Utc, Zone::Local] {
            assert_eq!(s.next_after(a, zone), Some(utc(2026, 1, 1, 0, 0, 2)));
            assert_eq!(s.next_after(a, zone), s.next_after(b, zone));
            assert_eq!(s.latest_until(b, zone), Some(utc(2026, 1, 1, 0, 0, 0)));
        }
    }

    #[test]
    fn five_and_six_fields() {
        let t = utc(2026, 1, 5, 10, 0, 30);
        let five = Schedule::parse("*/2 * * * *").unwrap();
        assert_eq!(five.next_after(t, Zone::Utc), Some(utc(2026, 1, 5, 10, 2, 0)));
        assert_eq!(five.latest_until(t, Zone::Utc), Some(utc(2026, 1, 5, 10, 0, 0)));
        let six = Schedule::parse("15 */2 * * * *").unwrap();
        assert_eq!(six.next_after(t, Zone::Utc), Some(utc(2026, 1, 5, 10, 2, 15)));
        let exact = Schedule::parse("30 0 10 * * *").unwrap();
        assert_eq!(exact.latest_until(t, Zone::Utc), Some(t));
        assert!(Schedule::parse("@hourly").is_ok());
    }

    #[test]
    fn bad_schedules_say_why() {
        let e = Schedule::parse("* * * *").unwrap_err().to_string();
        assert!(e.contains("5 fields") && e.contains("not 4"), "{e}");
        let e = Schedule::parse("0 0 0 * * * 2030").unwrap_err().to_string();
        assert!(e.contains("not 7"), "{e}");
        let e = Schedule::parse("61 * * * *").unwrap_err().to_string();
        assert!(e.starts_with("schedule `61 * * * *`: "), "{e}");
    }

    #[test]
    fn params_become_json() {
        let job: JobConfig = toml::from_str(
            r#"
schedule = "0 */2 * * * *"
script = "flex_hr_job.rhai"
params = { modified_since_days = 30, instance_id = "ACME", since = 2026-01-01T00:00:00Z, nested = { a = [1.5, true] } }
notify_on_failure = ["it_ops"]
stale_after = "24h"
"#,
        )
        .unwrap();
        assert_eq!(
            job.params_json().unwrap(),
            serde_json::json!({
                "modified_since_days": 30, "instance_id": "ACME",
                "since": "2026-01-01T00:00:00Z", "nested": {"a": [1.5, true]}
            })
        );
        assert!(job.enabled);
        assert_eq!(job.stale_after, Some(Duration::from_secs(86400)));
        assert_eq!(job.notify_on_failure, ["it_ops"]);
        let mut ctx = CheckCtx::new(std::path::Path::new("t.toml"), "", std::path::Path::new("."));
        let built = job.build("flex_hr_sync", 0..0, &mut ctx).unwrap();
        assert_eq!(built.schedule.as_str(), "0 */2 * * * *");
    }

    #[test]
    fn check_reports_the_schedule_at_its_place() {
        let source = "[jobs.sync]\nschedule = \"0 0 * *\"\nscript = \"x.rhai\"\n";
        #[derive(Deserialize)]
        struct File {
            jobs: std::collections::BTreeMap<String, toml::Spanned<JobConfig>>,
        }
        let file: File = toml::from_str(source).unwrap();
        let path = std::path::Path::new("tripline.toml");
        let mut ctx = CheckCtx::new(path, source, std::path::Path::new("."));
        for (name, job) in &file.jobs {
            assert!(job.get_ref().build(name, job.span(), &mut ctx).is_none());
        }
        let messages: Vec<String> = ctx.diags.iter().map(|d| d.to_string()).collect();
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(
            messages[0].starts_with("tripline.toml:2:12: job sync: schedule `0 0 * *`: a cron expression has 5 fields"),
            "{messages:?}"
        );
        let e = toml::from_str::<JobConfig>("schedule = \"* * * * *\"\nscript = \"x\"\ncron = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `cron`"), "{e}");
    }
}
