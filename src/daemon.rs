//! The daemon: one loop that drains the event queue and retries due runs until a shutdown
//! signal (Ctrl-C or SIGTERM); runs in flight finish before it returns.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{error, info, warn};

use crate::record::Event;
use crate::runtime::Runtime;

/// How long the dispatcher sleeps when the queue is empty.
const IDLE_POLL: Duration = Duration::from_millis(200);

/// Runs the daemon on the given tokio runtime until a signal; the CLI's `tripline run`.
pub fn run_blocking(io: tokio::runtime::Runtime, runtime: Runtime) -> Result<u8, crate::cli::Failure> {
    io.block_on(run(Arc::new(runtime), shutdown_signal()))?;
    Ok(0)
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

/// The daemon's loop, until `shutdown` resolves.
pub async fn run(runtime: Arc<Runtime>, shutdown: impl Future<Output = ()>) -> Result<(), crate::store::StoreError> {
    let catalog = runtime.catalog();
    info!(rules = catalog.rules.rules().len(), scripts = catalog.scripts.len(), "tripline daemon started.");
    let workers = runtime.config().engine.workers;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => {
                info!("Shutdown requested; runs in flight have finished.");
                return Ok(());
            }
            busy = dispatch_once(runtime.clone(), workers) => {
                match busy {
                    Ok(true) => {}
                    Ok(false) => tokio::time::sleep(IDLE_POLL).await,
                    Err(e) => {
                        error!(%e, "Dispatch failed; retrying shortly.");
                        tokio::time::sleep(IDLE_POLL).await;
                    }
                }
            }
        }
    }
}

/// One pass: due retries, then a batch of pending events, events of one record in order and
/// records in parallel up to `[engine] workers`. Returns whether there was work.
///
/// The pass runs to its end even when shutdown is requested meanwhile: `select!` only checks
/// shutdown between passes, so runs in flight are never cut.
async fn dispatch_once(runtime: Arc<Runtime>, workers: usize) -> Result<bool, crate::store::StoreError> {
    let rt = runtime.clone();
    let retried = tokio::task::spawn_blocking(move || rt.retry_due()).await.expect("retry task panicked")?;
    let rt = runtime.clone();
    let events =
        tokio::task::spawn_blocking(move || rt.store().pending_events(0, 512)).await.expect("queue task panicked")?;
    if events.is_empty() {
        return Ok(!retried.is_empty());
    }
    let mut by_record: HashMap<String, Vec<Event>> = HashMap::new();
    let mut order = Vec::new();
    for e in events {
        let id = e.record.id.clone();
        if !by_record.contains_key(&id) {
            order.push(id.clone());
        }
        by_record.entry(id).or_default().push(e);
    }
    // A few long-lived blocking tasks take records from a shared queue, rather than one task
    // per record: handing each record to a fresh task cost more CPU than a short run itself
    // (see benches/directory_flow.rs).
    let queue: VecDeque<Vec<Event>> = order.into_iter().map(|id| by_record.remove(&id).unwrap_or_default()).collect();
    let workers = workers.min(queue.len());
    let queue = Arc::new(Mutex::new(queue));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (rt, queue) = (runtime.clone(), queue.clone());
        tasks.spawn_blocking(move || loop {
            let Some(events) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front() else { return };
            for e in events {
                if let Err(err) = rt.process_event(&e) {
                    error!(event = e.id, %err, "Event processing failed; it stays queued.");
                    break;
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            error!(%e, "A dispatch task panicked.");
        }
    }
    Ok(true)
}
