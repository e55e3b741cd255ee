//! The scheduler under tokio's paused clock: hours of ticks pass in an instant, exactly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use futures::future::BoxFuture;
use tripline::scheduler::{
    BoxError, Job, JobConfig, JobRunner, LastRunStore, MemoryLastRunStore, Scheduler, TokioClock, Zone,
};

fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 5, h, m, s).unwrap()
}

fn job(name: &str, schedule: &str) -> Job {
    let config: JobConfig =
        toml::from_str(&format!("schedule = \"{schedule}\"\nscript = \"{name}.rhai\"\nparams = {{ days = 30 }}\n"))
            .unwrap();
    let mut ctx = tripline::diag::CheckCtx::new(std::path::Path::new("tripline.toml"), "", std::path::Path::new("."));
    config.build(name, 0..0, &mut ctx).unwrap()
}

/// One started run: which job, for which tick, and the scheduler's time when it started.
#[derive(Debug, Clone, PartialEq)]
struct Started {
    job: String,
    tick: DateTime<Utc>,
    at: DateTime<Utc>,
}

/// Records every run; each takes `busy` and can be told to fail.
#[derive(Clone)]
struct Runner {
    clock: TokioClock,
    busy: Duration,
    fail: bool,
    started: Arc<Mutex<Vec<Started>>>,
    finished: Arc<AtomicUsize>,
    active: Arc<AtomicUsize>,
    most_active: Arc<AtomicUsize>,
}

impl Runner {
    fn new(clock: &TokioClock, busy: Duration) -> Self {
        Runner {
            clock: clock.clone(),
            busy,
            fail: false,
            started: Arc::default(),
            finished: Arc::default(),
            active: Arc::default(),
            most_active: Arc::default(),
        }
    }

    fn ticks(&self) -> Vec<DateTime<Utc>> {
        self.started.lock().unwrap().iter().map(|s| s.tick).collect()
    }
}

impl JobRunner for Runner {
    fn run_job(&self, job: &Job, tick: DateTime<Utc>) -> BoxFuture<'static, Result<(), BoxError>> {
        use tripline::scheduler::WallClock as _;
        assert_eq!(job.params["days"], 30);
        self.started.lock().unwrap().push(Started { job: job.name.clone(), tick, at: self.clock.now() });
        let runner = self.clone();
        Box::pin(async move {
            let now = runner.active.fetch_add(1, Ordering::SeqCst) + 1;
            runner.most_active.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(runner.busy).await;
            runner.active.fetch_sub(1, Ordering::SeqCst);
            runner.finished.fetch_add(1, Ordering::SeqCst);
            if runner.fail {
                Err("the HR API said no".into())
            } else {
                Ok(())
            }
        })
    }
}

fn scheduler(jobs: Vec<Job>, clock: &TokioClock, store: Arc<MemoryLastRunStore>) -> Scheduler {
    Scheduler::new(jobs, store).with_clock(Arc::new(clock.clone())).with_zone(Zone::Utc)
}

#[tokio::test(start_paused = true)]
async fn ticks_with_seconds_run_on_time() {
    let clock = TokioClock::starting_at(at(10, 0, 5));
    let runner = Runner::new(&clock, Duration::from_secs(1));
    let store = Arc::new(MemoryLastRunStore::new());
    scheduler(vec![job("sync", "*/10 * * * * *")], &clock, store.clone())
        .run(runner.clone(), tokio::time::sleep(Duration::from_secs(36)))
        .await;
    let started = runner.started.lock().unwrap().clone();
    let expected: Vec<Started> = [10, 20, 30, 40]
        .into_iter()
        .map(|s| Started { job: "sync".into(), tick: at(10, 0, s), at: at(10, 0, s) })
        .collect();
    assert_eq!(started, expected);
    assert_eq!(store.last_tick("sync").unwrap(), Some(at(10, 0, 40)));
    assert_eq!(runner.finished.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn five_fields_tick_by_the_minute_and_jobs_keep_their_own_schedules() {
    let clock = TokioClock::starting_at(at(10, 0, 30));
    let runner = Runner::new(&clock, Duration::from_secs(5));
    let store = Arc::new(MemoryLastRunStore::new());
    let jobs = vec![job("every_two", "*/2 * * * *"), job("hourly", "0 * * * *")];
    scheduler(jobs, &clock, store).run(runner.clone(), tokio::time::sleep(Duration::from_secs(3600))).await;
    let started = runner.started.lock().unwrap().clone();
    let every_two: Vec<_> = started.iter().filter(|s| s.job == "every_two").map(|s| s.tick).collect();
    assert_eq!(every_two.len(), 30);
    assert_eq!(every_two[0], at(10, 2, 0));
    assert_eq!(every_two[29], at(11, 0, 0));
    let hourly: Vec<_> = started.iter().filter(|s| s.job == "hourly").map(|s| s.tick).collect();
    assert_eq!(hourly, [at(11, 0, 0)]);
}

#[tokio::test(start_paused = true)]
async fn a_job_never_overlaps_itself() {
    let clock = TokioClock::starting_at(at(10, 0, 5));
    // Every 10 s, but each run takes 25 s.
    let runner = Runner::new(&clock, Duration::from_secs(25));
    let store = Arc::new(MemoryLastRunStore::new());
    scheduler(vec![job("slow", "*/10 * * * * *")], &clock, store.clone())
        .run(runner.clone(), tokio::time::sleep(Duration::from_secs(60)))
        .await;
    // :10 runs until :35, so :20 and :30 are skipped; :40 runs until 1:05.
    assert_eq!(runner.ticks(), [at(10, 0, 10), at(10, 0, 40)]);
    assert_eq!(runner.most_active.load(Ordering::SeqCst), 1);
    // Skipped ticks count as handled: a restart does not run them again.
    assert_eq!(store.last_tick("slow").unwrap(), Some(at(10, 1, 0)));
    // Shutdown waited for the run in progress.
    assert_eq!(runner.finished.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn ticks_missed_while_down_run_once_on_start() {
    let clock = TokioClock::starting_at(at(10, 0, 30));
    let runner = Runner::new(&clock, Duration::from_secs(1));
    let store = Arc::new(MemoryLastRunStore::new());
    // Last handled at 9:00; thirty ticks of "every two minutes" were missed.
    store.record_tick("sync", at(9, 0, 0)).unwrap();
    scheduler(vec![job("sync", "*/2 * * * *")], &clock, store.clone())
        .run(runner.clone(), tokio::time::sleep(Duration::from_secs(100)))
        .await;
    let started = runner.started.lock().unwrap().clone();
    assert_eq!(
        started,
        [
            Started { job: "sync".into(), tick: at(10, 0, 0), at: at(10, 0, 30) },
            Started { job: "sync".into(), tick: at(10, 2, 0), at: at(10, 2, 0) },
        ]
    );
    assert_eq!(store.last_tick("sync").unwrap(), Some(at(10, 2, 0)));
}

#[tokio::test(start_paused = true)]
async fn nothing_is_caught_up_when_nothing_was_missed() {
    let clock = TokioClock::starting_at(at(10, 0, 30));
    let runner = Runner::new(&clock, Duration::from_secs(1));
    let store = Arc::new(MemoryLastRunStore::new());
    store.record_tick("up_to_date", at(10, 0, 0)).unwrap();
    let jobs = vec![job("up_to_date", "*/2 * * * *"), job("new_job", "*/2 * * * *")];
    scheduler(jobs, &clock, store.clone()).run(runner.clone(), tokio::time::sleep(Duration::from_secs(60))).await;
    assert!(runner.ticks().is_empty(), "{:?}", runner.started.lock().unwrap());
    // A job seen for the first time is remembered from now, so a later outage is noticed.
    assert_eq!(store.last_tick("new_job").unwrap(), Some(at(10, 0, 30)));
}

#[tokio::test(start_paused = true)]
async fn a_restart_after_an_outage_runs_a_new_job_once() {
    let store = Arc::new(MemoryLastRunStore::new());
    // First life: 10:00:30 to 10:01:00, no tick of "every two minutes" in it.
    let clock = TokioClock::starting_at(at(10, 0, 30));
    let runner = Runner::new(&clock, Duration::from_secs(1));
    scheduler(vec![job("sync", "*/2 * * * *")], &clock, store.clone())
        .run(runner.clone(), tokio::time::sleep(Duration::from_secs(30)))
        .await;
    assert!(runner.ticks().is_empty());
    // Down until 10:07:10: the ticks at 10:02, 10:04 and 10:06 were missed; one run.
    let clock = TokioClock::starting_at(at(10, 7, 10));
    let runner = Runner::new(&clock, Duration::from_secs(1));
    scheduler(vec![job("sync", "*/2 * * * *")], &clock, store.clone())
        .run(runner.clone(), tokio::time::sleep(Duration::from_secs(30)))
        .await;
    assert_eq!(runner.ticks(), [at(10, 6, 0)]);
}

#[tokio::test(start_paused = true)]
async fn disabled_jobs_never_run_and_failures_do_not_stop_the_schedule() {
    let clock = TokioClock::starting_at(at(10, 0, 5));
    let mut runner = Runner::new(&clock, Duration::from_secs(1));
    runner.fail = true;
    let store = Arc::new(MemoryLastRunStore::new());
    let mut off = job("off", "* * * * * *");
    off.enabled = false;
    scheduler(vec![off, job("flaky", "*/10 * * * * *")], &clock, store.clone())
        .run(runner.clone(), tokio::time::sleep(Duration::from_secs(30)))
        .await;
    let started = runner.started.lock().unwrap().clone();
    assert!(started.iter().all(|s| s.job == "flaky"));
    assert_eq!(runner.ticks(), [at(10, 0, 10), at(10, 0, 20), at(10, 0, 30)]);
    assert_eq!(store.last_tick("off").unwrap(), None);
}
