//! A daemon on loopback in a temp folder: its configuration, rules and scripts written by the
//! test, its webhook server on a free port, and helpers to edit files, post requests and wait.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;
use tripline::daemon::{Control, ControlHandle, DaemonError, Options};
use tripline::runtime::{Runtime, RuntimeBuilder};

/// The quiet time of file events in tests.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// A running daemon.
pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub runtime: Arc<Runtime>,
    pub addr: SocketAddr,
    /// The console's address, when the configuration has `[console]`.
    pub console: Option<SocketAddr>,
    pub control: ControlHandle,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), DaemonError>>>,
}

/// The configuration every test daemon starts from; `extra` is appended.
pub fn config(extra: &str) -> String {
    format!(
        "[engine]\nrules_dir = \"rules\"\nscripts_dir = \"scripts\"\ndata_dir = \"data\"\nworkers = 4\nretry_backoff_ms = 50\n\n\
         [server]\nlisten = \"127.0.0.1:0\"\nrequest_timeout_ms = 400\n\n{extra}"
    )
}

/// Writes `files` (relative path, text) under `dir`, creating folders.
pub fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (rel, text) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

impl TestDaemon {
    /// Starts a daemon on `config_text` with `files`.
    pub async fn start(config_text: &str, files: &[(&str, &str)]) -> TestDaemon {
        Self::start_with(config_text, files, |b| b).await
    }

    /// Starts a daemon, letting the test adjust the runtime builder (host functions).
    pub async fn start_with(
        config_text: &str,
        files: &[(&str, &str)],
        adjust: impl FnOnce(RuntimeBuilder) -> RuntimeBuilder,
    ) -> TestDaemon {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("rules")).unwrap();
        std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
        write_files(dir.path(), &[("tripline.toml", config_text)]);
        write_files(dir.path(), files);
        let runtime = adjust(Runtime::builder().config_file(dir.path().join("tripline.toml")))
            .build()
            .unwrap_or_else(|e| panic!("the test daemon's runtime builds: {e}"));
        Self::run(dir, Arc::new(runtime)).await
    }

    /// Runs the daemon on an already built runtime.
    pub async fn run(dir: tempfile::TempDir, runtime: Arc<Runtime>) -> TestDaemon {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut options = Options::default();
        options.debounce = DEBOUNCE;
        options.signals = false;
        options.listener = Some(listener);
        options.idle_poll = Duration::from_millis(20);
        options.shutdown_grace = Duration::from_secs(5);
        let mut console = None;
        if runtime.config().console.is_some() {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            console = Some(l.local_addr().unwrap());
            options.console_listener = Some(l);
        }
        let control = options.control();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(tripline::daemon::run_with(runtime.clone(), options, async {
            let _ = stopped.await;
        }));
        let d = TestDaemon {
            dir,
            runtime,
            addr,
            console,
            control,
            http: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
        };
        // The server answers once the watcher is set up.
        eventually("the daemon answers /healthz", || async { d.try_healthz().await.is_some() }).await;
        d
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Writes a file in place.
    pub fn write(&self, rel: &str, text: &str) {
        write_files(self.dir.path(), &[(rel, text)]);
    }

    /// Saves a file the way vim and VS Code do: a temporary file renamed over the original.
    pub fn save_by_rename(&self, rel: &str, text: &str) {
        let target = self.path(rel);
        let tmp = target.with_file_name(format!(".{}.swp", target.file_name().unwrap().to_string_lossy()));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &target).unwrap();
    }

    pub fn remove(&self, rel: &str) {
        std::fs::remove_file(self.path(rel)).unwrap();
    }

    async fn try_healthz(&self) -> Option<Value> {
        let r = self.http.get(self.url("/healthz")).send().await.ok()?;
        r.json().await.ok()
    }

    /// `GET /healthz`.
    pub async fn healthz(&self) -> Value {
        self.try_healthz().await.expect("/healthz answers")
    }

    /// How many reloads the daemon has done.
    pub async fn reloads(&self) -> u64 {
        self.healthz().await["reloads"].as_u64().unwrap()
    }

    /// Waits until the daemon has done more than `after` reloads.
    pub async fn wait_reload_after(&self, after: u64) -> Value {
        eventually("a reload", || async { self.reloads().await > after }).await;
        self.healthz().await
    }

    /// Asks for a configuration reload, as SIGHUP does.
    pub fn sighup(&self) {
        assert!(self.control.send(Control::ReloadConfig));
    }

    /// Stores a record as a created event (the dispatcher picks it up on its next poll).
    pub fn submit(&self, entity: &str, fields: Value) -> tripline::record::Event {
        let record = tripline::record::from_value(fields).unwrap();
        let item = tripline::store::Ingest {
            entity: entity.into(),
            kind: tripline::record::EventKind::Created,
            record,
            idempotency_key: None,
        };
        self.runtime.submit(&[item]).unwrap().pop().flatten().unwrap()
    }

    /// The runs of an event, once there is at least one.
    pub async fn runs_of(&self, event_id: i64) -> Vec<tripline::store::Run> {
        let store = self.runtime.store().clone();
        let mut runs = Vec::new();
        eventually("the event's runs", || {
            let found = store.runs_of_event(event_id).unwrap();
            let done = !found.is_empty();
            runs = found;
            async move { done }
        })
        .await;
        runs
    }

    /// Waits until the queue is empty.
    pub async fn drained(&self) {
        let store = self.runtime.store().clone();
        eventually("an empty queue", || {
            let depth = store.queue_depth().unwrap();
            async move { depth == 0 }
        })
        .await;
    }

    /// Stops the daemon and waits for it.
    pub async fn stop(mut self) {
        self.stop_in_place().await;
    }

    async fn stop_in_place(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Polls `cond` every few milliseconds until it holds, failing after a generous deadline.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
