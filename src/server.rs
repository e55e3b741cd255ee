//! The daemon's HTTP server: the router, `GET /healthz`, `GET /metrics`, and the ingestion of
//! webhook deliveries (`[server]`; the webhooks themselves are [`crate::webhook`]).
//!
//! A valid delivery is stored (record and event, in one transaction) before it is answered
//! `202 {"event_id": ..., "record_id": ...}`; rules run afterwards on the dispatcher, which is
//! woken at once. Nothing is stored for a request that is refused: a bad signature or token
//! (401), a body that is not a JSON object (400), a body over `max_body_bytes` (413), a client
//! too slow to send its request (408). A redelivery with the same `Idempotency-Key` header
//! stores nothing and is answered `200` with the original ids. HTTP status codes are chosen
//! here and only here.
//!
//! The server is ingress: it stores what arrives and wakes the dispatcher. It knows the store,
//! not the runtime that runs rules.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use toml::Spanned;
use tracing::{debug, error, info, warn};

use crate::class::Classify;
use crate::diag::CheckCtx;
use crate::record::{from_value, EventKind};
use crate::store::{Ingest, Store, StoreError};
use crate::webhook::{Webhook, Webhooks};

/// The header of a delivery's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// The longest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY: usize = 256;
/// `request_timeout_ms` when not set.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// `max_queue_depth` when not set.
pub const DEFAULT_MAX_QUEUE_DEPTH: u64 = 10_000;
/// How long a delivery waits for room in a full queue before it is answered 503.
const QUEUE_WAIT: Duration = Duration::from_secs(2);
/// How often the ingest thread counts the queue while it is near full.
const DEPTH_EVERY: Duration = Duration::from_millis(50);

/// `[server]` as written: the daemon's HTTP listener (webhooks, `/healthz`, `/metrics`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The address to listen on, e.g. `127.0.0.1:8080` (`0.0.0.0:8080` for every interface).
    pub listen: Spanned<String>,
    /// How long a client may take to send a request's headers, and then its body, in
    /// milliseconds; a slower one is answered 408 (or cut off) so it cannot hold a connection.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Events waiting to run at most before deliveries wait for room (0: no bound).
    #[serde(default = "default_max_queue_depth")]
    pub max_queue_depth: u64,
}

fn default_max_queue_depth() -> u64 {
    DEFAULT_MAX_QUEUE_DEPTH
}

fn default_request_timeout_ms() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_MS
}

/// `[server]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSettings {
    /// Where the daemon listens.
    pub listen: SocketAddr,
    /// The longest a client may take to send a request's headers, and then its body.
    pub request_timeout: Duration,
    /// Events waiting to run at most before deliveries wait for room (0: no bound).
    pub max_queue_depth: u64,
}

impl Default for ServerSettings {
    /// What the server uses when it is given a listener but no `[server]` (tests).
    fn default() -> Self {
        ServerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            request_timeout: Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS),
            max_queue_depth: DEFAULT_MAX_QUEUE_DEPTH,
        }
    }
}

impl ServerConfig {
    /// The settings; `None` when the section has a problem, which is recorded.
    pub fn build(&self, ctx: &mut CheckCtx) -> Option<ServerSettings> {
        let Ok(listen) = self.listen.get_ref().parse() else {
            ctx.error(
                self.listen.span(),
                format!("[server] listen: {:?} is not an address such as 127.0.0.1:8080", self.listen.get_ref()),
            );
            return None;
        };
        ctx.in_range("server", "max_queue_depth", self.max_queue_depth, 0, 1 << 40, "");
        Some(ServerSettings {
            listen,
            request_timeout: Duration::from_millis(self.request_timeout_ms.max(1)),
            max_queue_depth: self.max_queue_depth,
        })
    }
}

/// What `/healthz` answers: the daemon's view of itself, built on a blocking thread.
pub type HealthReport = Arc<dyn Fn() -> Value + Send + Sync>;

/// What the server's handlers share.
pub struct ServerState {
    /// Where deliveries are stored.
    pub store: Arc<dyn Store>,
    /// `[engine] max_record_bytes`: the largest record a delivery may carry.
    pub max_record_bytes: usize,
    /// Replaced on a configuration reload.
    pub webhooks: ArcSwap<Webhooks>,
    /// Notified after an event is stored, so that the dispatcher picks it up at once.
    pub wake: Arc<tokio::sync::Notify>,
    pub health: HealthReport,
    /// The longest a client may take to send a request's headers, and then its body.
    pub request_timeout: Duration,
    ingester: Ingester,
}

impl ServerState {
    pub fn new(
        store: Arc<dyn Store>,
        max_record_bytes: usize,
        webhooks: Webhooks,
        wake: Arc<tokio::sync::Notify>,
        health: HealthReport,
        settings: ServerSettings,
    ) -> ServerState {
        let request_timeout = settings.request_timeout;
        let ingester = Ingester::start(store.clone(), settings.max_queue_depth);
        ServerState {
            store,
            max_record_bytes,
            webhooks: ArcSwap::from_pointee(webhooks),
            wake,
            health,
            request_timeout,
            ingester,
        }
    }
}

/// The most deliveries stored in one transaction.
const MAX_BATCH: usize = 256;

type IngestReply = tokio::sync::oneshot::Sender<Result<Option<crate::record::Event>, NotStored>>;

/// Why a delivery was not stored.
enum NotStored {
    Store(StoreError),
    /// `[server] max_queue_depth` events wait to run, and no room came within [`QUEUE_WAIT`].
    QueueFull {
        depth: u64,
        max: u64,
    },
}

/// The queue's depth as the ingest thread last counted it, plus what it stored since.
struct Depth {
    max: u64,
    value: u64,
    counted: Option<Instant>,
}

impl Depth {
    /// Waits, up to [`QUEUE_WAIT`], until the queue has room for a batch (the dispatcher
    /// runs what waits meanwhile); the depth when it has none. Counting the queue costs a
    /// scan of the pending index, so it is counted at most every [`DEPTH_EVERY`], and only
    /// once the estimate reaches the bound.
    fn wait_for_room(&mut self, store: &dyn Store) -> Result<(), u64> {
        if self.max == 0 {
            return Ok(());
        }
        let until = Instant::now() + QUEUE_WAIT;
        loop {
            if self.value < self.max {
                return Ok(());
            }
            if self.counted.is_none_or(|at| at.elapsed() >= DEPTH_EVERY) {
                // A store that cannot count lets the delivery try: its own error tells.
                let Ok(depth) = store.queue_depth() else { return Ok(()) };
                self.value = depth;
                self.counted = Some(Instant::now());
                continue;
            }
            if Instant::now() >= until {
                return Err(self.value);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Stores deliveries with group commit: a thread takes every delivery waiting and stores them
/// in one transaction, because a commit costs far more than an insert (about 7,000 single
/// commits a second against 60,000 rows a second in batches, on SQLite). An idle server stores
/// a delivery at once; under load, batches form by themselves. A batch that fails is retried
/// one delivery at a time, so one bad delivery does not fail the others.
struct Ingester {
    tx: tokio::sync::mpsc::Sender<(Ingest, IngestReply)>,
}

impl Ingester {
    fn start(store: Arc<dyn Store>, max_queue_depth: u64) -> Ingester {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Ingest, IngestReply)>(4 * MAX_BATCH);
        std::thread::Builder::new()
            .name("tripline-ingest".into())
            .spawn(move || {
                let mut depth = Depth { max: max_queue_depth, value: 0, counted: None };
                // Ends when the server state, and with it the sender, is dropped.
                while let Some(first) = rx.blocking_recv() {
                    // A full queue holds deliveries back (and the senders with them, through
                    // the bounded channel) until the dispatcher makes room.
                    if let Err(value) = depth.wait_for_room(store.as_ref()) {
                        let _ = first.1.send(Err(NotStored::QueueFull { depth: value, max: max_queue_depth }));
                        while let Ok((_, reply)) = rx.try_recv() {
                            let _ = reply.send(Err(NotStored::QueueFull { depth: value, max: max_queue_depth }));
                        }
                        continue;
                    }
                    let mut items = vec![first.0];
                    let mut replies = vec![first.1];
                    while items.len() < MAX_BATCH {
                        let Ok((item, reply)) = rx.try_recv() else { break };
                        items.push(item);
                        replies.push(reply);
                    }
                    match store.ingest(&items, None) {
                        Ok(events) => {
                            depth.value += events.iter().flatten().count() as u64;
                            for (reply, event) in replies.into_iter().zip(events) {
                                let _ = reply.send(Ok(event));
                            }
                        }
                        Err(_) => {
                            for (item, reply) in items.iter().zip(replies) {
                                let stored =
                                    store.ingest(std::slice::from_ref(item), None).map(|mut e| e.pop().flatten());
                                depth.value += stored.as_ref().is_ok_and(Option::is_some) as u64;
                                let _ = reply.send(stored.map_err(NotStored::Store));
                            }
                        }
                    }
                }
            })
            .expect("the ingest thread starts");
        Ingester { tx }
    }

    /// Stores one delivery: the event, or `None` when its idempotency key was seen before.
    /// The outer `None`: the ingest thread is gone (the server is stopping).
    async fn submit(&self, item: Ingest) -> Option<Result<Option<crate::record::Event>, NotStored>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx.send((item, reply)).await.ok()?;
        answer.await.ok()
    }
}

/// The server's routes.
pub fn router(state: Arc<ServerState>) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/metrics", get(metrics)).fallback(receive).with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, lets the
/// requests in progress finish (up to `grace`), and returns.
///
/// An accept loop of its own rather than `axum::serve`, which has no header read timeout: a
/// client that opens a connection and sends its headers slowly must not hold it forever.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    request_timeout: Duration,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    warn!(error = %e, "Cannot accept a connection.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req.map(Body::new))
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(request_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "Connection ended with an error.");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        warn!(grace_ms = grace.as_millis() as u64, "Requests still in progress after the grace period were dropped.");
    }
}

async fn healthz(State(state): State<Arc<ServerState>>) -> Response {
    let report = state.health.clone();
    match tokio::task::spawn_blocking(move || report()).await {
        Ok(body) => Json(body).into_response(),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, format!("health report failed: {e}")),
    }
}

async fn metrics(State(state): State<Arc<ServerState>>) -> Response {
    let store = state.store.clone();
    let read = tokio::task::spawn_blocking(move || (store.queue_depth(), store.workers())).await;
    if let Ok((depth, workers)) = read {
        if let Ok(depth) = depth {
            crate::metrics::set_queue_depth(depth);
        }
        if let Ok(workers) = workers {
            crate::metrics::set_workers(&workers);
        }
    }
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], crate::metrics::encode()).into_response()
}

fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Every request that is not `/healthz` or `/metrics`: a webhook delivery, or a 404 / 405.
async fn receive(State(state): State<Arc<ServerState>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let Some(hook) = state.webhooks.load().get(&path).cloned() else {
        crate::metrics::webhook_request("-", 404);
        return problem(StatusCode::NOT_FOUND, format!("no webhook at {path}"));
    };
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let response = deliver(&state, &hook, req).await;
    let status = response.status();
    crate::metrics::webhook_request(&hook.name, status.as_u16());
    match status {
        StatusCode::UNAUTHORIZED => warn!(webhook = %hook.name, ?peer, "Webhook delivery refused: bad credentials."),
        s if s.is_client_error() => {
            info!(webhook = %hook.name, ?peer, status = s.as_u16(), "Webhook delivery refused.")
        }
        s if s.is_server_error() => warn!(webhook = %hook.name, ?peer, status = s.as_u16(), "Webhook delivery failed."),
        s => debug!(webhook = %hook.name, ?peer, status = s.as_u16(), "Webhook delivery stored."),
    }
    response
}

/// One delivery: read, authenticate, parse, map, store, answer.
async fn deliver(state: &ServerState, hook: &Webhook, req: Request) -> Response {
    if req.method() != Method::POST {
        let mut r = problem(StatusCode::METHOD_NOT_ALLOWED, "webhooks take POST");
        r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return r;
    }
    let too_large = || {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than this webhook's {} bytes", hook.max_body_bytes),
        )
    };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > hook.max_body_bytes as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let body: Bytes =
        match tokio::time::timeout(state.request_timeout, axum::body::to_bytes(body, hook.max_body_bytes)).await {
            Err(_) => return problem(StatusCode::REQUEST_TIMEOUT, "the body took too long to arrive"),
            Ok(Err(e)) if is_length_limit(&e) => return too_large(),
            Ok(Err(e)) => return problem(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}")),
            Ok(Ok(b)) => b,
        };
    if !hook.authenticate(&parts.headers, &body) {
        let mut r = problem(StatusCode::UNAUTHORIZED, "missing or invalid credentials");
        if hook.takes_bearer() {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        return r;
    }
    let object = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(o)) => o,
        Ok(other) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("the body must be a JSON object, not {}", crate::record::kind_of(&other)),
            )
        }
        Err(e) => return problem(StatusCode::BAD_REQUEST, format!("the body is not JSON: {e}")),
    };
    let record = match from_value(Value::Object(hook.record_of(object))) {
        Ok(r) => r,
        Err(m) => return problem(StatusCode::BAD_REQUEST, m),
    };
    if matches!(hook.kind, EventKind::Updated | EventKind::Deleted) && record.id.is_none() {
        return problem(
            StatusCode::BAD_REQUEST,
            format!("this webhook stores {} events: the record needs its `id`", hook.kind),
        );
    }
    let max_record = state.max_record_bytes;
    if body.len() > max_record {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the record is larger than the {max_record}-byte limit ([engine] max_record_bytes)"),
        );
    }
    let key = match parts.headers.get(IDEMPOTENCY_HEADER).map(|v| v.to_str().map(str::trim)) {
        None => None,
        Some(Ok(k)) if !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY => Some(format!("webhook:{}:{k}", hook.name)),
        Some(_) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
            )
        }
    };
    let item = Ingest { entity: hook.entity.clone(), kind: hook.kind.clone(), record, idempotency_key: key.clone() };
    let ids = |e: &crate::record::Event| json!({ "event_id": e.id, "record_id": e.record.id });
    match state.ingester.submit(item).await {
        Some(Ok(Some(event))) => {
            crate::metrics::event_ingested(&format!("webhook:{}", hook.name));
            state.wake.notify_one();
            (StatusCode::ACCEPTED, Json(ids(&event))).into_response()
        }
        // A redelivery: nothing was stored; answer with the original ids.
        Some(Ok(None)) => {
            let store = state.store.clone();
            let key = key.unwrap_or_default();
            match tokio::task::spawn_blocking(move || store.event_by_idempotency_key(&key)).await {
                Ok(Ok(Some(original))) => {
                    let mut body = ids(&original);
                    body["duplicate"] = json!(true);
                    (StatusCode::OK, Json(body)).into_response()
                }
                Ok(Ok(None)) => (StatusCode::OK, Json(json!({ "duplicate": true }))).into_response(),
                Ok(Err(e)) => store_problem(hook, e),
                Err(e) => {
                    error!(webhook = %hook.name, error = %e, "The store task failed.");
                    problem(StatusCode::INTERNAL_SERVER_ERROR, "the delivery could not be looked up")
                }
            }
        }
        Some(Err(NotStored::Store(e))) => store_problem(hook, e),
        Some(Err(NotStored::QueueFull { depth, max })) => {
            let mut r = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{depth} events wait to run, more than [server] max_queue_depth = {max}: nothing was stored; try again later"
                ),
            );
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            r
        }
        None => problem(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping"),
    }
}

/// The HTTP answer to a store error.
fn store_problem(hook: &Webhook, e: StoreError) -> Response {
    match &e {
        StoreError::NoRecord(_) | StoreError::Invalid(_) => problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        StoreError::WrongEntity { .. } | StoreError::Exists(_) => problem(StatusCode::CONFLICT, e.to_string()),
        _ if e.is_transient() => {
            let mut r = problem(StatusCode::SERVICE_UNAVAILABLE, "the store is busy; try again");
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }
        _ => {
            error!(webhook = %hook.name, error = %e, "A webhook delivery could not be stored.");
            problem(StatusCode::INTERNAL_SERVER_ERROR, "the delivery could not be stored")
        }
    }
}

/// Whether reading a body failed on its size limit (axum wraps http-body-util's error).
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}
