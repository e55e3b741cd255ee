//! The dispatcher: stored events (and due retries) to worker threads that run their rules.
//!
//! One dispatcher for every driver. `tripline fire`, `job run` and `replay` ([`drain`]) and the
//! daemon ([`serve`]) differ only in where events come from and what is done with the runs:
//!
//! - a **feeder** thread takes what can run from the store (its own claimed events, and for
//!   the daemon every unclaimed event and the retries that came due), claims it in one
//!   transaction, and files it by record;
//! - **workers** (`[engine] workers` threads, with script stacks) each take a record whose
//!   turn it is and run its events in order, one at a time; the records of different events
//!   run at once. An idle worker takes the next record at once: no record waits for a slow
//!   run of another (only a record's own later events wait for it);
//! - a run's writes raise events that the store keeps **claimed by this dispatcher**, so the
//!   events a command's records cause run before the command ends, and the daemon goes on
//!   with what it started;
//! - events the dispatcher stored itself (a driver's through [`Control::submit`], those its
//!   runs raise) that wait for nothing (a new record's creation) are filed at once, without
//!   reading them back; the rest are read from the store in their record's order. A lock
//!   (`Shared::order`) keeps the two ways apart: the queue is never read between a commit
//!   and the filing of what it raised;
//! - an event's last run is committed by the **committer** thread, with every other that
//!   finished meanwhile, in one transaction; its worker goes on with another record at once
//!   (the record itself waits for the commit, so its next event sees what this one wrote).
//!   An event's earlier runs, when several rules match, are committed by the worker before
//!   the next rule runs. A run is reported, and its event finished, only once its commit is
//!   durable. Runs waiting for the committer hold at most `[limits] max_run_bytes` in all (a
//!   worker waits beyond it); failure notices are sent after the commit, holding nothing.
//!
//! A worker that fails on the store (a locked database) leaves the event claimed and cools
//! down before the feeder offers it again; the claim's tries count such rounds, so an event
//! that keeps failing is set aside (see [`crate::store::Store::pending_events`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, error, warn};

use crate::record::{Event, EventKind, Submitted};
use crate::runtime::Runtime;
use crate::store::{Feed, Ingest, Run, StoreError};

/// How long an event whose processing failed on the store waits before it is offered again.
const COOL_DOWN: Duration = Duration::from_secs(2);
/// Units queued or in flight at most before the feeder stops reading the store.
const MAX_QUEUED: usize = 2 * FETCH;
/// How often a dispatcher of its own events reads the store when nothing tells it to.
const OWN_READ_EVERY: Duration = Duration::from_secs(1);
/// Events fetched from the store at most per feeder round.
const FETCH: usize = 512;
/// How often a busy feeder sweeps the queue from the start at most (see [`Cursor`]).
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// What a dispatcher takes from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Only its own claimed events: those its driver stored claimed, and what they raise.
    Own,
    /// Its own, every event nobody holds a live claim on, and the retries that come due.
    Everything,
}

/// How a dispatcher runs.
#[derive(Clone)]
pub struct Options {
    pub workers: usize,
    pub source: Source,
    /// How long an idle feeder waits before looking at the store again (events stored by
    /// another process, retries coming due); [`Control::wake`] cuts it short.
    pub idle_poll: Duration,
    /// Called by a worker with each processed event and the runs it made (after their
    /// commit), and with each retried run (`event` is `None`).
    pub on_done: Option<OnDone>,
}

/// See [`Options::on_done`].
pub type OnDone = Arc<dyn Fn(Option<&Event>, &[Run]) + Send + Sync>;

impl Options {
    /// The runtime's `[engine] workers`, taking only its own events.
    pub fn own(runtime: &Runtime) -> Options {
        Options {
            workers: runtime.config().engine.workers,
            source: Source::Own,
            idle_poll: Duration::from_millis(500),
            on_done: None,
        }
    }

    pub fn on_done(mut self, f: impl Fn(Option<&Event>, &[Run]) + Send + Sync + 'static) -> Options {
        self.on_done = Some(Arc::new(f));
        self
    }
}

/// A unit of work of one record.
enum Unit {
    Event(Event),
    Retry(Run),
}

impl Unit {
    fn event_id(&self) -> Option<i64> {
        match self {
            Unit::Event(e) => Some(e.id),
            Unit::Retry(_) => None,
        }
    }
}

#[derive(Default)]
struct State {
    /// The units of each record with work, in order.
    queues: HashMap<String, VecDeque<Unit>>,
    /// Records with units whose turn it is (not in flight), oldest first.
    ready: VecDeque<String>,
    /// Records a worker is on.
    in_flight: HashSet<String>,
    /// Events queued or in flight (the feeder does not take them again).
    known: HashSet<i64>,
    /// Events finished since the feeder's round began: its read of the queue may predate
    /// their commit, so they are not taken again either.
    finished_this_round: HashSet<i64>,
    /// Retries queued or in flight, by run id.
    known_retries: HashSet<i64>,
    /// Records whose processing failed on the store, and when their events may be offered
    /// again (all of them: a record's events run in order).
    cooling: HashMap<String, Instant>,
    /// Units finished since the start.
    finished: u64,
    /// Set by [`Control::wake`]; the feeder clears it.
    woken: bool,
    /// The driver is done adding work: the feeder ends once nothing of its own is left.
    draining: bool,
    /// The feeder found nothing left (with `draining`): the workers end.
    drained: bool,
    /// Stop now: no new unit starts; units queued are released.
    stopping: bool,
    /// The last failure of a feeder round or a unit, while they keep failing.
    failure: Option<(chrono::DateTime<chrono::Utc>, u64, String)>,
    /// Events whose last run waits for the committer (their records stay in flight), and what
    /// their runs hold in memory.
    committing: Vec<Committing>,
    committing_bytes: u64,
    /// The committer thread runs: without it (it could not be started), workers commit their
    /// runs themselves.
    committer_running: bool,
    /// Worker threads not ended yet.
    workers_running: usize,
    /// While a driver waits in [`Control::wait_below`]: the count it waits to fall under.
    waiting_below: usize,
    /// While the feeder waits for progress: whether a queue running low is a reason for it
    /// to look again (its last round found something).
    feeder_waiting: Option<bool>,
}

impl State {
    /// Enough units are queued or in flight: the feeder reads no more until some finish.
    fn full(&self) -> bool {
        self.known.len() + self.known_retries.len() >= MAX_QUEUED
    }
}

struct Shared {
    owner: String,
    options: Options,
    state: Mutex<State>,
    /// Work was queued, or the dispatcher is ending (workers wait on it).
    work: Condvar,
    /// A unit finished, a wake or a stop (the feeder and waiting drivers wait on it).
    progress: Condvar,
    /// A run waits for the committer, or a worker ended (the committer waits on it).
    commit: Condvar,
    /// Held (shared) by a worker or the committer from a commit until the events its runs
    /// raised are filed, and (exclusive) by a driver from storing events until they are filed
    /// and by the feeder while it reads the queue: so no event is filed before an earlier one
    /// of its record that is already stored.
    order: std::sync::RwLock<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a driver holds while its dispatcher runs.
#[derive(Clone)]
pub struct Control {
    shared: Arc<Shared>,
}

impl Control {
    /// This dispatcher's name in claims: store events claimed by it to have it run them.
    pub fn owner(&self) -> &str {
        &self.shared.owner
    }

    /// Something was stored: look at once.
    pub fn wake(&self) {
        lock(&self.shared.state).woken = true;
        self.shared.progress.notify_all();
    }

    /// Stores work claimed by this dispatcher and hands it to the workers: `store` stores
    /// with the owner it is given and returns what it stored. A new record's creation runs at
    /// once; other events are read back from the store in their record's order. Returns what
    /// `store` returned.
    pub fn submit<T, E>(
        &self,
        runtime: &Runtime,
        store: impl FnOnce(&str) -> Result<(T, Vec<Event>), E>,
    ) -> Result<T, E> {
        let _order = self.shared.order.write().unwrap_or_else(|e| e.into_inner());
        let (result, events) = store(&self.shared.owner)?;
        hand_over(runtime, &self.shared, events);
        Ok(result)
    }

    /// Units queued or in flight.
    pub fn outstanding(&self) -> usize {
        let st = lock(&self.shared.state);
        st.known.len() + st.known_retries.len()
    }

    /// Waits until fewer than `n` units are queued or in flight (a driver feeding a large
    /// batch keeps its window bounded), or the dispatcher stops.
    pub fn wait_below(&self, n: usize) {
        let mut st = lock(&self.shared.state);
        while st.known.len() + st.known_retries.len() >= n && !st.stopping {
            st.waiting_below = n;
            st = self.shared.progress.wait_timeout(st, Duration::from_millis(200)).unwrap_or_else(|e| e.into_inner()).0;
        }
        st.waiting_below = 0;
    }

    /// Units finished so far.
    pub fn finished(&self) -> u64 {
        lock(&self.shared.state).finished
    }

    /// While the feeder or the workers keep failing: since when, how many times, the last
    /// error (for `/healthz`).
    pub fn failure(&self) -> Option<(chrono::DateTime<chrono::Utc>, u64, String)> {
        lock(&self.shared.state).failure.clone()
    }

    /// Stops taking new units; runs in progress finish, units not started are released.
    pub fn stop(&self) {
        lock(&self.shared.state).stopping = true;
        self.shared.work.notify_all();
        self.shared.progress.notify_all();
        self.shared.commit.notify_all();
    }
}

/// Runs a dispatcher on `runtime` while `driver` stores work for it, then until everything
/// it owns is done (its events and what they raised): what `fire`, `job run` and `replay` do.
/// Returns the driver's result.
pub fn drain<R>(runtime: &Runtime, options: Options, driver: impl FnOnce(&Control) -> R) -> std::io::Result<R> {
    let control = Control { shared: new_shared(options) };
    let stack = crate::memory::script_stack_bytes(runtime.scripts().limits().max_run_bytes);
    let shared = &control.shared;
    std::thread::scope(|scope| {
        let (handles, failed) = start_threads(shared, |name, kind| {
            std::thread::Builder::new()
                .name(name)
                .stack_size(stack)
                .spawn_scoped(scope, move || kind.run(runtime, shared))
        });
        let result = match failed {
            None => Ok(driver(&control)),
            Some(e) => {
                control.stop();
                Err(e)
            }
        };
        {
            lock(&control.shared.state).draining = true;
            control.shared.progress.notify_all();
        }
        for h in handles {
            let _ = h.join();
        }
        result
    })
}

/// The embedding API's two drivers of the dispatcher. They are methods of [`Runtime`] for
/// embedders (`runtime.fire(...)`), and live here, beside the dispatcher they drive, so that
/// the runtime does not depend on its own dispatcher.
impl Runtime {
    /// Stores one record as an event of `kind` and runs every rule it triggers, and the rules
    /// the events its scripts' writes raise trigger, on a dispatcher of `[engine] workers`
    /// threads. Returns every run, in the order they finished.
    pub fn fire(&self, entity: &str, kind: EventKind, record: Submitted) -> Result<Vec<Run>, StoreError> {
        let item = Ingest { entity: entity.to_string(), kind, record, idempotency_key: None };
        let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let collected = runs.clone();
        let options = Options::own(self)
            .on_done(move |_, r| collected.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(r));
        drain(self, options, |d| {
            d.submit(self, |owner| {
                Ok::<_, StoreError>(((), self.submit_claimed(&[item], owner)?.into_iter().flatten().collect()))
            })
        })
        .map_err(no_threads)??;
        let runs = std::mem::take(&mut *runs.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(runs)
    }

    /// Processes every stored event that can run, and what they raise, until none is left
    /// (retries not yet due stay for later). Returns the runs.
    pub fn drain(&self) -> Result<Vec<Run>, StoreError> {
        let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let collected = runs.clone();
        let mut options = Options::own(self)
            .on_done(move |_, r| collected.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(r));
        options.source = Source::Everything;
        drain(self, options, |_| ()).map_err(no_threads)?;
        let runs = std::mem::take(&mut *runs.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(runs)
    }
}

/// The dispatcher's threads could not be started (the system is out of threads or memory).
fn no_threads(e: std::io::Error) -> StoreError {
    StoreError::Io("the dispatcher's threads".into(), e)
}

/// A dispatcher serving the store until [`Control::stop`]: the daemon's.
pub struct Serving {
    pub control: Control,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Serving {
    /// Stops and waits for the runs in progress.
    pub fn stop(self) {
        self.control.stop();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Starts a dispatcher that takes everything that can run (see [`Source::Everything`]).
pub fn serve(runtime: Arc<Runtime>, options: Options) -> std::io::Result<Serving> {
    let control = Control { shared: new_shared(options) };
    let stack = crate::memory::script_stack_bytes(runtime.scripts().limits().max_run_bytes);
    let (threads, failed) = start_threads(&control.shared, |name, kind| {
        let (rt, shared) = (runtime.clone(), control.shared.clone());
        std::thread::Builder::new().name(name).stack_size(stack).spawn(move || kind.run(&rt, &shared))
    });
    let serving = Serving { control, threads };
    match failed {
        None => Ok(serving),
        Some(e) => {
            serving.stop();
            Err(e)
        }
    }
}

fn new_shared(options: Options) -> Arc<Shared> {
    let workers = options.workers.max(1);
    Arc::new(Shared {
        owner: crate::runtime::claim_owner(),
        options,
        state: Mutex::new(State { workers_running: workers, ..State::default() }),
        work: Condvar::new(),
        commit: Condvar::new(),
        order: std::sync::RwLock::new(()),
        progress: Condvar::new(),
    })
}

enum Kind {
    Feeder,
    Committer,
    Worker,
}

fn thread_kinds(workers: usize) -> impl Iterator<Item = (String, Kind)> {
    [("tripline-feeder".to_string(), Kind::Feeder), ("tripline-committer".to_string(), Kind::Committer)]
        .into_iter()
        .chain((0..workers.max(1)).map(|i| (format!("tripline-worker-{i}"), Kind::Worker)))
}

impl Kind {
    fn run(self, runtime: &Runtime, shared: &Shared) {
        match self {
            Kind::Feeder => feeder(runtime, shared),
            Kind::Committer => committer(runtime, shared),
            Kind::Worker => worker(runtime, shared),
        }
    }
}

/// Starts the dispatcher's threads with `spawn` (scoped threads for [`drain`], owned ones for
/// [`serve`]). The feeder is required (without it nothing is read and a drain never ends), and
/// one worker at least; fewer workers than configured still work, and without the committer
/// the workers commit their runs themselves. Returns the threads started and, when a required
/// one could not be, the error: the caller then stops the others.
fn start_threads<H>(
    shared: &Shared,
    mut spawn: impl FnMut(String, Kind) -> std::io::Result<H>,
) -> (Vec<H>, Option<std::io::Error>) {
    let mut handles = Vec::new();
    let (mut feeder_failed, mut worker_failed, mut workers) = (None, None, 0);
    for (name, kind) in thread_kinds(shared.options.workers) {
        let (is_worker, is_feeder) = (matches!(kind, Kind::Worker), matches!(kind, Kind::Feeder));
        match spawn(name, kind) {
            Ok(h) => {
                handles.push(h);
                workers += is_worker as usize;
            }
            Err(e) => {
                error!(error = %e, "Cannot start a dispatcher thread.");
                if is_worker {
                    not_started(shared);
                    worker_failed = Some(e);
                } else if is_feeder {
                    feeder_failed = Some(e);
                }
            }
        }
    }
    let failed = feeder_failed.or(if workers == 0 { worker_failed } else { None });
    (handles, failed)
}

/// A worker thread could not be started: the committer does not wait for it.
fn not_started(shared: &Shared) {
    lock(&shared.state).workers_running -= 1;
    shared.commit.notify_all();
}

/// Records a failure for [`Control::failure`] (or clears it after a success).
fn note_failure(shared: &Shared, failure: Option<String>) {
    let mut st = lock(&shared.state);
    st.failure = match (failure, st.failure.take()) {
        (None, _) => None,
        (Some(e), None) => Some((chrono::Utc::now(), 1, e)),
        (Some(e), Some((since, n, _))) => Some((since, n + 1, e)),
    };
}

/// Fetch again when fewer records than this wait: enough to keep every worker busy until
/// the next round lands, few enough that a round is not made per finished run.
fn low_water(options: &Options) -> usize {
    options.workers.max(1) * 2
}

/// A unit finished or a record left the workers: wakes what waits on [`Shared::progress`]
/// when what it waits for may have come (a driver's window has room, the feeder has a reason
/// to look, nothing is left). Waking them on every finished unit cost a system call and
/// usually a switch of threads per run.
fn progressed(shared: &Shared, st: &State) {
    let count = st.known.len() + st.known_retries.len();
    let feeder = st.feeder_waiting.is_some_and(|after_finding| {
        !st.full() && (st.woken || after_finding && st.ready.len() < low_water(&shared.options))
    });
    if count == 0 || count < st.waiting_below || feeder {
        shared.progress.notify_all();
    }
}

/// The feeder's loop: fetch, claim and file work while the workers need it.
fn feeder(runtime: &Runtime, shared: &Shared) {
    let options = &shared.options;
    let low_water = low_water(options);
    let mut cursor = Cursor::default();
    // Whether the store may hold something of ours not filed yet (at the start, after a wake).
    let mut look = true;
    let mut last_read = Instant::now();
    loop {
        if lock(&shared.state).stopping {
            break;
        }
        // A dispatcher of its own events only is handed most of them directly (see
        // [`hand_over`]): it reads the store when told to, when it has nothing left (to know
        // it is done), when a record's cool-down ends, and now and then to renew its claims.
        // Nothing is read while enough is queued: the queue in memory stays bounded, and a
        // flood of deliveries waits in the store, not here.
        let read = {
            let st = lock(&shared.state);
            let now = Instant::now();
            !st.full()
                && (options.source == Source::Everything
                    || look
                    || last_read.elapsed() >= OWN_READ_EVERY
                    || (st.known.is_empty() && st.known_retries.is_empty())
                    || st.cooling.values().any(|until| *until <= now))
        };
        let fetched = if !read {
            0
        } else {
            last_read = Instant::now();
            match fetch(runtime, shared, &mut cursor) {
                Ok(n) => {
                    note_failure(shared, None);
                    n
                }
                Err(e) => {
                    error!(error = %e, "The dispatcher cannot read the queue; it tries again shortly.");
                    note_failure(shared, Some(crate::secret::redact(&e.to_string()).into_owned()));
                    cursor = Cursor::default();
                    0
                }
            }
        };
        look = fetched > 0;
        let mut st = lock(&shared.state);
        if fetched > 0 {
            shared.work.notify_all();
        }
        let idle = st.known.is_empty() && st.known_retries.is_empty();
        // A record that failed on the store is not waited for: its events stay claimed, and
        // whoever runs next (the daemon) takes them when the claims are released or expire.
        // Something stored after the round's read (a wake) needs another round.
        if st.draining && idle && fetched == 0 && cursor.swept && !st.woken {
            // Nothing of ours is left: a whole sweep found nothing and nothing runs.
            st.drained = true;
            shared.work.notify_all();
            shared.progress.notify_all();
            break;
        }
        if fetched > 0 && st.ready.len() < low_water {
            continue;
        }
        // Wait until the workers need more, a wake, or the poll.
        let poll = if st.draining { Duration::from_millis(20) } else { options.idle_poll };
        let until = Instant::now() + poll;
        // After a round that found something, a queue running low is a reason to look again
        // before the poll (there may be more); after one that found nothing, only a wake is.
        while !(st.stopping || st.draining && idle) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || !st.full() && (st.woken || fetched > 0 && st.ready.len() < low_water) {
                break;
            }
            st.feeder_waiting = Some(fetched > 0);
            st = shared.progress.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0;
            st.feeder_waiting = None;
        }
        if st.woken {
            // Something was stored: the next round looks for it.
            let idle = st.known.is_empty() && st.known_retries.is_empty();
            cursor.rewind(idle);
            look = true;
        }
        st.woken = false;
    }
    // Stopping: what was queued but not started is released for later (or for others).
    let released: Vec<i64> = {
        let mut st = lock(&shared.state);
        let queued: Vec<i64> = st.queues.values().flatten().filter_map(Unit::event_id).collect();
        st.queues.clear();
        st.ready.clear();
        queued
    };
    if !released.is_empty() {
        if let Err(e) = runtime.unclaim(&released, &shared.owner) {
            debug!(error = %e, "Queued events could not be released; their claims expire.");
        }
    }
    shared.work.notify_all();
}

/// Where the feeder looks in the queue. Rounds read on from the highest event id taken (the
/// store does not parse the events already queued again); once they find nothing new, one
/// round sweeps from the start, for events passed over before (claimed elsewhere then, or
/// waiting behind another record's event). A sweep reads every queued event again, so
/// while work is queued it comes at most every [`SWEEP_EVERY`]: runs whose writes raise
/// events wake the feeder once per run, and a sweep per wake would read a long queue once
/// per run. New events have higher ids, so reading on finds them.
#[derive(Default)]
struct Cursor {
    after: i64,
    /// The last round was a sweep from the start.
    swept: bool,
    /// When the last sweep was read.
    last_sweep: Option<Instant>,
}

impl Cursor {
    /// Makes the next round a sweep, if one is due: always when nothing is queued (a sweep
    /// is then cheap, and ends a drain), else at most every [`SWEEP_EVERY`]; otherwise the
    /// next round reads on.
    fn rewind(&mut self, idle: bool) {
        if idle || self.last_sweep.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) {
            *self = Cursor { last_sweep: self.last_sweep, ..Cursor::default() };
        }
    }
}

/// One round: due retries and pending events, claimed and filed; events no rule matches are
/// finished at once, in one transaction, without a worker. Returns how many units were
/// added (finished events count).
fn fetch(runtime: &Runtime, shared: &Shared, cursor: &mut Cursor) -> Result<usize, StoreError> {
    let options = &shared.options;
    // No commit is between storing raised events and filing them while the queue is read.
    let _order = shared.order.write().unwrap_or_else(|e| e.into_inner());
    let mut added = 0;
    if options.source == Source::Everything {
        let retries = runtime.claim_due_retries(FETCH, &shared.owner)?;
        let mut st = lock(&shared.state);
        for run in retries {
            if !st.known_retries.insert(run.id) {
                continue;
            }
            let record = run.record_id.clone().unwrap_or_else(|| format!("run:{}", run.id));
            enqueue(&mut st, record, Unit::Retry(run));
            added += 1;
        }
    }
    let feed = match options.source {
        Source::Own => Feed::Own(&shared.owner),
        Source::Everything => Feed::OwnAndUnclaimed(&shared.owner),
    };
    let sweep = cursor.after == 0;
    // A sweep reads the events already queued too (they come first): ask for that many more.
    let limit = {
        let mut st = lock(&shared.state);
        st.finished_this_round.clear();
        if sweep {
            st.known.len() + FETCH
        } else {
            FETCH
        }
    };
    let events = runtime.pending(limit, feed, cursor.after)?;
    if sweep {
        cursor.last_sweep = Some(Instant::now());
    }
    match events.last() {
        Some(last) => cursor.after = cursor.after.max(last.event.id),
        None if sweep => *cursor = Cursor { after: 0, swept: true, last_sweep: cursor.last_sweep },
        None => {}
    }
    if events.len() < limit && !sweep {
        // Caught up: the next round sweeps (when one is due).
        let idle = {
            let st = lock(&shared.state);
            st.known.is_empty() && st.known_retries.is_empty()
        };
        cursor.rewind(idle);
    } else if sweep {
        cursor.swept = events.len() < limit;
    }
    let now = Instant::now();
    let fresh: Vec<crate::store::Pending> = {
        let mut st = lock(&shared.state);
        st.cooling.retain(|_, until| *until > now);
        events
            .into_iter()
            .filter(|p| {
                let id = p.event.id;
                !st.known.contains(&id)
                    && !st.finished_this_round.contains(&id)
                    && !st.cooling.contains_key(&p.event.record.id)
            })
            .collect()
    };
    if fresh.is_empty() {
        return Ok(added);
    }
    // One transaction claims the round: the events not ours yet, and ours whose lease runs
    // low (an event a command stored claimed is ours already).
    let ids: Vec<i64> = fresh
        .iter()
        .filter(|p| p.own_claim_until.is_none_or(|until| runtime.claim_needs_renewal(until)))
        .map(|p| p.event.id)
        .collect();
    let mut claimed: HashSet<i64> =
        if ids.is_empty() { HashSet::new() } else { runtime.claim(&ids, &shared.owner)?.into_iter().collect() };
    let renewed: HashSet<i64> = ids.into_iter().collect();
    claimed.extend(
        fresh.iter().filter(|p| p.own_claim_until.is_some() && !renewed.contains(&p.event.id)).map(|p| p.event.id),
    );
    // A record whose event another process claimed meanwhile is that process's to go on.
    let mut lost_records = HashSet::new();
    let ours: Vec<Event> = fresh
        .into_iter()
        .map(|p| p.event)
        .filter(|e| {
            let lost = !claimed.contains(&e.id) || lost_records.contains(&e.record.id);
            if lost {
                lost_records.insert(e.record.id.clone());
            }
            !lost
        })
        .collect();
    Ok(added + file_events(runtime, shared, ours)?)
}

/// Files events this dispatcher holds the claims of: each to its record's queue, or, when no
/// rule matches it, finished at once (all of them in one transaction). Returns how many.
fn file_events(runtime: &Runtime, shared: &Shared, events: Vec<Event>) -> Result<usize, StoreError> {
    let options = &shared.options;
    let mut added = 0;
    let mut unmatched = Vec::new();
    {
        let mut st = lock(&shared.state);
        // Each event comes here once: the feeder files only events it does not hold yet, and
        // an event handed over is filed before the feeder can read it (`Shared::order`).
        for e in events {
            if !runtime.any_rule_matches(&e) {
                unmatched.push(e);
                continue;
            }
            st.known.insert(e.id);
            enqueue(&mut st, e.record.id.clone(), Unit::Event(e));
            added += 1;
        }
    }
    if added > 0 {
        shared.work.notify_all();
    }
    if !unmatched.is_empty() {
        let ids: Vec<i64> = unmatched.iter().map(|e| e.id).collect();
        runtime.finish_unmatched(&ids)?;
        for e in &unmatched {
            crate::metrics::event_processed();
            if let Some(f) = &options.on_done {
                f(Some(e), &[]);
            }
        }
        added += unmatched.len();
        lock(&shared.state).finished += unmatched.len() as u64;
    }
    Ok(added)
}

/// Hands over events this dispatcher stored claimed (a driver's, or those its runs raised):
/// those that wait for nothing are filed at once; the others (an update, or a creation
/// behind an unfinished event of its id) are left for the feeder, which reads them from the
/// store behind their record's earlier events. Called under [`Shared::order`]'s lock.
fn hand_over(runtime: &Runtime, shared: &Shared, events: Vec<Event>) {
    let (now, later): (Vec<Event>, Vec<Event>) = events.into_iter().partition(|e| e.waits_for_nothing);
    let mut look = !later.is_empty();
    if !now.is_empty() {
        if let Err(e) = file_events(runtime, shared, now) {
            // They stay claimed in the store: the feeder finds them there.
            debug!(error = %e, "Events could not be filed at once; the feeder reads them from the store.");
            look = true;
        }
    }
    if look {
        lock(&shared.state).woken = true;
        shared.progress.notify_all();
    }
}

fn enqueue(st: &mut State, record: String, unit: Unit) {
    let queue = st.queues.entry(record.clone()).or_default();
    let was_empty = queue.is_empty();
    queue.push_back(unit);
    if was_empty && !st.in_flight.contains(&record) {
        st.ready.push_back(record);
    }
}

/// A worker's loop: take a record whose turn it is, run its units in order, repeat.
fn worker(runtime: &Runtime, shared: &Shared) {
    let _alive = WorkerAlive(shared);
    loop {
        let record = {
            let mut st = lock(&shared.state);
            loop {
                if st.stopping || st.drained {
                    return;
                }
                if let Some(r) = st.ready.pop_front() {
                    st.in_flight.insert(r.clone());
                    break r;
                }
                st = shared.work.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        };
        run_record(runtime, shared, &record);
    }
}

/// Counts a worker out when it ends (or unwinds), so that the committer knows when no more
/// runs can come.
struct WorkerAlive<'a>(&'a Shared);

impl Drop for WorkerAlive<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).workers_running -= 1;
        self.0.commit.notify_all();
    }
}

/// Runs the units of one record in order, until its queue is empty (units the feeder adds
/// meanwhile included), or until a unit's last run goes to the committer: the record stays
/// in flight until that commit, and the committer hands it on.
fn run_record(runtime: &Runtime, shared: &Shared, record: &str) {
    loop {
        let unit = {
            let mut st = lock(&shared.state);
            let next = if st.stopping { None } else { st.queues.get_mut(record).and_then(VecDeque::pop_front) };
            match next {
                Some(u) => u,
                None => {
                    release(shared, &mut st, record);
                    return;
                }
            }
        };
        let outcome = match unit {
            Unit::Event(event) => {
                let owner = &shared.owner;
                let raised = |raised| hand_over(runtime, shared, raised);
                match runtime.process_claimed(&event, owner, &shared.order, &raised) {
                    Ok((runs, Some(tail))) => {
                        let item = Committing { record: record.to_string(), event, runs, tail };
                        if let Some(item) = to_committer(runtime, shared, item) {
                            commit_batch(runtime, shared, vec![item], &std::cell::Cell::new(0));
                        }
                        return;
                    }
                    Ok((runs, None)) => {
                        // The claim was lost between two rules: the process that took the
                        // event goes on with it, and the record's later events wait (as after
                        // a failure) until it is done, so that they never overtake it.
                        reported(shared, Some(&event), Ok(runs));
                        complete(runtime, shared, record, Unit::Event(event), None);
                        continue;
                    }
                    Err(e) => {
                        let outcome = reported(shared, Some(&event), Err(e));
                        complete(runtime, shared, record, Unit::Event(event), outcome);
                        continue;
                    }
                }
            }
            Unit::Retry(ref run) => reported(shared, None, runtime.retry(run, &shared.owner)),
        };
        complete(runtime, shared, record, unit, outcome);
    }
}

/// A record is done for now: it leaves the workers, to be taken again when it has units.
fn release(shared: &Shared, st: &mut State, record: &str) {
    if st.queues.get(record).is_some_and(VecDeque::is_empty) {
        st.queues.remove(record);
    }
    st.in_flight.remove(record);
    progressed(shared, st);
}

/// An event's last run, waiting for the committer, with the runs of the event before it.
struct Committing {
    record: String,
    event: Event,
    runs: Vec<Run>,
    tail: crate::runtime::Tail,
}

/// Queues an event's last run for the committer, waiting while what waits already holds more
/// than `[limits] max_run_bytes` (so that finished runs hold no more memory than running ones
/// do); gives the run back when there is no committer to take it.
fn to_committer(runtime: &Runtime, shared: &Shared, item: Committing) -> Option<Committing> {
    let budget = runtime.scripts().limits().max_run_bytes as u64;
    let mut st = lock(&shared.state);
    while st.committer_running && !st.committing.is_empty() && st.committing_bytes + item.tail.bytes > budget {
        st = shared.progress.wait(st).unwrap_or_else(|e| e.into_inner());
    }
    if !st.committer_running {
        return Some(item);
    }
    st.committing_bytes += item.tail.bytes;
    st.committing.push(item);
    // The committer waits for the first run, and while it gathers more only for what ends
    // its wait early (see [`gather`]): a wake-up per run would cost about what it saves.
    if st.committing.len() == 1 || gathered(&st, budget) {
        shared.commit.notify_one();
    }
    None
}

/// How long the committer waits for more runs to share a transaction with the ones waiting,
/// while workers are still on records (see [`gather`]).
const COMMIT_LINGER: Duration = Duration::from_millis(1);
/// Runs enough for one transaction: the committer waits for no more.
const COMMIT_GROUP: usize = 256;

/// Whether the runs waiting for the committer go now: enough of them, enough bytes held
/// (workers would soon wait for room), or no worker on a record that could add one (every
/// record in flight waits for this commit).
fn gathered(st: &State, budget: u64) -> bool {
    group_ready(st.committing.len(), st.committing_bytes, st.in_flight.len(), budget)
}

/// [`gathered`] on counts: `waiting` runs holding `bytes`, with `in_flight` records on the
/// workers or waiting for this commit.
fn group_ready(waiting: usize, bytes: u64, in_flight: usize, budget: u64) -> bool {
    waiting >= COMMIT_GROUP || bytes.saturating_mul(2) >= budget || in_flight <= waiting
}

/// Lets more finished runs join the ones waiting, for at most [`COMMIT_LINGER`]: a commit
/// costs about the same for one run as for dozens, and without the wait each transaction
/// holds the two or three runs that finished while the one before was written. An idle
/// dispatcher's run is not delayed: with no other record in flight, it goes at once.
fn gather<'a>(
    runtime: &Runtime,
    shared: &'a Shared,
    mut st: std::sync::MutexGuard<'a, State>,
) -> std::sync::MutexGuard<'a, State> {
    let budget = runtime.scripts().limits().max_run_bytes as u64;
    let until = Instant::now() + COMMIT_LINGER;
    while !st.stopping && !gathered(&st, budget) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        st = shared.commit.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0;
    }
    st
}

/// Marks the committer running while it lives (see [`State::committer_running`]).
struct CommitterRunning<'a>(&'a Shared);

impl Drop for CommitterRunning<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).committer_running = false;
        self.0.progress.notify_all();
    }
}

/// The committer's loop: commit the last runs the workers finished, all that wait in one
/// transaction ([`commit_batch`]). A worker does not wait for its run's commit: it takes the
/// next record meanwhile, so a commit is shared by as many runs as finished while the one
/// before was written.
fn committer(runtime: &Runtime, shared: &Shared) {
    lock(&shared.state).committer_running = true;
    let _running = CommitterRunning(shared);
    loop {
        let batch = {
            let mut st = lock(&shared.state);
            loop {
                if !st.committing.is_empty() {
                    st = gather(runtime, shared, st);
                    st.committing_bytes = 0;
                    shared.progress.notify_all();
                    break std::mem::take(&mut st.committing);
                }
                // Runs in progress finish and are committed even when stopping.
                if st.workers_running == 0 {
                    return;
                }
                st = shared.commit.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        };
        let keys: Vec<(String, i64)> = batch.iter().map(|c| (c.record.clone(), c.event.id)).collect();
        let done = std::cell::Cell::new(0);
        let batch = std::panic::AssertUnwindSafe(batch);
        let committed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| commit_batch(runtime, shared, batch.0, &done)));
        if committed.is_err() {
            // A panic (in a report callback, say): the events not handed on stay claimed and
            // unfinished, and are offered again after a cool-down, like a failed commit.
            error!("The dispatcher failed on a batch of finished runs; their events are offered again shortly.");
            note_failure(shared, Some("the dispatcher failed on a batch of finished runs (a panic)".into()));
            let mut st = lock(&shared.state);
            for (record, id) in &keys[done.get()..] {
                st.known.remove(id);
                st.finished += 1;
                cool_down(&mut st, record);
                release(shared, &mut st, record);
            }
        }
    }
}

/// Commits events' last runs in one transaction, then files what they raised (under
/// [`Shared::order`]), reports them and hands each record its next unit; failure notices are
/// sent last, when nothing waits for them. `done` counts the events handed on.
fn commit_batch(runtime: &Runtime, shared: &Shared, batch: Vec<Committing>, done: &std::cell::Cell<usize>) {
    let mut tails = Vec::with_capacity(batch.len());
    let items: Vec<(String, Event, Vec<Run>)> = batch
        .into_iter()
        .map(|c| {
            tails.push(c.tail);
            (c.record, c.event, c.runs)
        })
        .collect();
    let (results, notices) = {
        let _order = shared.order.read().unwrap_or_else(|e| e.into_inner());
        let (mut results, notices) = runtime.commit_tails(tails, &shared.owner);
        for (_, raised) in results.iter_mut().flatten() {
            hand_over(runtime, shared, std::mem::take(raised));
        }
        (results, notices)
    };
    for ((record, event, mut runs), result) in items.into_iter().zip(results) {
        let result = match result {
            Ok((run, _)) => {
                runs.extend(run);
                Ok(runs)
            }
            Err(e) => {
                // The event's earlier runs are committed: they are reported now, and the
                // ledger keeps them from running again when the event is offered again.
                if !runs.is_empty() {
                    runs.iter().for_each(crate::metrics::run_finished);
                    if let Some(f) = &shared.options.on_done {
                        f(None, &runs);
                    }
                }
                Err(e)
            }
        };
        let outcome = reported(shared, Some(&event), result);
        complete(runtime, shared, &record, Unit::Event(event), outcome);
        // The record's next unit, if any, is for a worker.
        let mut st = lock(&shared.state);
        if st.queues.get(&record).is_some_and(|q| !q.is_empty()) && !st.stopping {
            st.in_flight.remove(&record);
            st.ready.push_back(record);
            shared.work.notify_one();
        } else {
            release(shared, &mut st, &record);
        }
        done.set(done.get() + 1);
    }
    runtime.send_notices(notices);
}

/// Counts a unit finished with its `outcome` (see [`reported`]), and, when it failed on the
/// store or left a retry that holds its record back, takes the record's later units out of
/// the queue.
fn complete(runtime: &Runtime, shared: &Shared, record: &str, unit: Unit, outcome: Option<bool>) {
    let ok = outcome.is_some();
    // A run that waits for a retry holds its record's later events back (after_failure =
    // "wait"): they go back to the queue, which offers them once the retry is over.
    let held_back = outcome.is_some_and(|retrying| retrying) && runtime.waits_behind_retries();
    let mut st = lock(&shared.state);
    st.finished += 1;
    if held_back {
        let later: Vec<i64> = st.queues.remove(record).into_iter().flatten().filter_map(|u| u.event_id()).collect();
        for id in &later {
            st.known.remove(id);
        }
        if !later.is_empty() {
            drop(st);
            if let Err(e) = runtime.unclaim(&later, &shared.owner) {
                debug!(error = %e, "Held-back events could not be released; their claims expire.");
            }
            st = lock(&shared.state);
        }
    }
    match unit {
        Unit::Event(e) => {
            st.known.remove(&e.id);
            st.finished_this_round.insert(e.id);
            if !ok {
                cool_down(&mut st, record);
            }
        }
        Unit::Retry(r) => {
            st.known_retries.remove(&r.id);
        }
    }
    progressed(shared, &st);
}

/// A record's unit failed on the store: the record's later events wait behind it, so all of
/// them leave the queue and cool down before the feeder offers them again.
fn cool_down(st: &mut State, record: &str) {
    st.cooling.insert(record.to_string(), Instant::now() + COOL_DOWN);
    let later: Vec<i64> = st.queues.remove(record).into_iter().flatten().filter_map(|u| u.event_id()).collect();
    for id in later {
        st.known.remove(&id);
    }
}

/// Reports a unit's runs (metrics, `on_done`): whether one of them ended retrying, or `None`
/// when it failed on the store (it is offered again) or another process took its event (it
/// runs it): either way the record's later events wait.
fn reported(shared: &Shared, event: Option<&Event>, result: Result<Vec<Run>, StoreError>) -> Option<bool> {
    match result {
        Ok(runs) => {
            runs.iter().for_each(crate::metrics::run_finished);
            if event.is_some() {
                crate::metrics::event_processed();
            }
            if let Some(f) = &shared.options.on_done {
                f(event, &runs);
            }
            note_failure(shared, None);
            Some(runs.iter().any(|r| r.status == crate::store::RunStatus::Retrying))
        }
        // Not a failure: another process holds the event now and runs it.
        Err(err @ StoreError::ClaimLost(_)) => {
            warn!(%err, "An event was taken by another process while it ran here; that process goes on with it.");
            None
        }
        Err(err) => {
            let what = event.map_or_else(|| "a retry".to_string(), |e| format!("event {}", e.id));
            error!(%err, "Processing {what} failed on the store; it is tried again shortly.");
            note_failure(shared, Some(crate::secret::redact(&err.to_string()).into_owned()));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_waits_for_company_only_while_workers_can_still_add_to_it() {
        let budget = 1 << 20;
        // Alone, or with every record in flight waiting for it: at once.
        assert!(group_ready(1, 10, 1, budget));
        assert!(group_ready(5, 10, 5, budget));
        // Other records on the workers: it waits, until the group is full or holds half the
        // bytes finished runs may hold.
        assert!(!group_ready(1, 10, 8, budget));
        assert!(!group_ready(COMMIT_GROUP - 1, 10, COMMIT_GROUP + 8, budget));
        assert!(group_ready(COMMIT_GROUP, 10, COMMIT_GROUP + 8, budget));
        assert!(group_ready(2, budget / 2, 8, budget));
        assert!(group_ready(2, u64::MAX, 8, budget));
    }
}
