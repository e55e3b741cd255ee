//! Inbound HTTP: webhooks that store records as events (`[webhooks.NAME]`), and the daemon's
//! `GET /healthz` and `GET /metrics`.
//!
//! A valid delivery is stored (record and event, in one transaction) before it is answered
//! `202 {"event_id": ..., "record_id": ...}`; rules run afterwards on the dispatcher, which is
//! woken at once. Nothing is stored for a request that is refused: a bad signature or token
//! (401), a body that is not a JSON object (400), a body over `max_body_bytes` (413), a client
//! too slow to send its request (408). A redelivery with the same `Idempotency-Key` header
//! stores nothing and is answered `200` with the original ids. HTTP status codes are chosen
//! here and only here.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:8080"
//!
//! [webhooks.nexthink]
//! path = "/hooks/nexthink"
//! entity = "ticket"
//! event = "created"                       # the default; or updated, deleted, a custom name
//! auth = { type = "hmac_sha256", header = "X-Signature", secret = "${NEXTHINK_HOOK_SECRET}" }
//! max_body_bytes = 65536
//! fields = { Device = "device.name", EmployeeId = "employee.id" }   # pick and rename
//! set = { Source = "Nexthink" }           # constant fields
//! ```

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use toml::Spanned;
use tracing::{debug, error, info, warn};

use crate::class::Classify;
use crate::diag::CheckCtx;
use crate::record::{from_value, lookup, EventKind, Fields};
use crate::runtime::Runtime;
use crate::secret::{Secret, SecretRef};
use crate::store::{Ingest, StoreError};

/// The header of a delivery's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// The longest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY: usize = 256;
/// `max_body_bytes` when not set.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// `request_timeout_ms` when not set.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Paths the server answers itself.
const RESERVED_PATHS: [&str; 2] = ["/healthz", "/metrics"];

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
}

fn default_request_timeout_ms() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_MS
}

impl ServerConfig {
    /// The listen address.
    pub fn addr(&self) -> Result<SocketAddr, String> {
        self.listen.get_ref().parse().map_err(|_| {
            format!("[server] listen: {:?} is not an address such as 127.0.0.1:8080", self.listen.get_ref())
        })
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.max(1))
    }
}

/// `[webhooks.NAME]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The URL path deliveries are POSTed to; starts with `/`, unique among webhooks.
    pub path: Spanned<String>,
    /// The entity of the records it stores.
    pub entity: Spanned<String>,
    /// The event stored (default `created`; `updated` and `deleted` need the record's `id`).
    #[serde(default)]
    pub event: Option<Spanned<String>>,
    /// How deliveries prove they come from the sender.
    pub auth: Spanned<AuthConfig>,
    /// The largest body accepted (default 1 MiB).
    #[serde(default)]
    pub max_body_bytes: Option<Spanned<usize>>,
    /// Picks and renames fields: record field -> dotted path in the body. Without it, the
    /// body's keys are the record's fields.
    #[serde(default)]
    pub fields: Option<Spanned<BTreeMap<String, String>>>,
    /// Constant fields added to every record (e.g. `Source = "Nexthink"` for rules to match).
    #[serde(default)]
    pub set: Option<Spanned<toml::Table>>,
}

/// `auth = { type = "...", ... }`.
///
/// Read through a flat struct rather than `#[serde(tag = "type")]` because serde buffers
/// tagged enums, which loses the spans that [`SecretRef`] needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawAuth")]
pub enum AuthConfig {
    /// The header carries the hex HMAC-SHA256 of the raw body under a shared secret,
    /// optionally prefixed `sha256=` (GitHub's style).
    HmacSha256 { header: String, secret: SecretRef },
    /// `Authorization: Bearer TOKEN`.
    Bearer { token: SecretRef },
    /// No authentication: only for a listener that nothing untrusted can reach.
    None,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(rename = "type")]
    kind: String,
    header: Option<String>,
    secret: Option<SecretRef>,
    token: Option<SecretRef>,
}

impl TryFrom<RawAuth> for AuthConfig {
    type Error = String;

    fn try_from(r: RawAuth) -> Result<Self, String> {
        let not_for = |present: bool, key: &str| {
            if present {
                Err(format!("`{key}` does not apply to auth type {:?}", r.kind))
            } else {
                Ok(())
            }
        };
        match r.kind.as_str() {
            "hmac_sha256" => {
                not_for(r.token.is_some(), "token")?;
                Ok(AuthConfig::HmacSha256 {
                    header: r.header.unwrap_or_else(|| "X-Signature".into()),
                    secret: r.secret.ok_or("auth type \"hmac_sha256\" needs `secret`")?,
                })
            }
            "bearer" => {
                not_for(r.header.is_some(), "header")?;
                not_for(r.secret.is_some(), "secret")?;
                Ok(AuthConfig::Bearer { token: r.token.ok_or("auth type \"bearer\" needs `token`")? })
            }
            "none" => {
                not_for(r.header.is_some(), "header")?;
                not_for(r.secret.is_some(), "secret")?;
                not_for(r.token.is_some(), "token")?;
                Ok(AuthConfig::None)
            }
            other => {
                let hint = match crate::diag::did_you_mean(other, ["hmac_sha256", "bearer", "none"]) {
                    Some(s) => format!("; did you mean {s:?}?"),
                    None => String::new(),
                };
                Err(format!("auth `type` is \"hmac_sha256\", \"bearer\" or \"none\", not {other:?}{hint}"))
            }
        }
    }
}

/// Checks `[server]` and every `[webhooks.NAME]` (paths must be unique, so they are checked
/// together), recording every problem.
pub fn check(server: Option<&ServerConfig>, webhooks: &BTreeMap<String, Spanned<WebhookConfig>>, ctx: &mut CheckCtx) {
    if let Some(s) = server {
        if let Err(e) = s.addr() {
            ctx.error(s.listen.span(), e);
        }
    }
    let mut paths: HashMap<&str, &str> = HashMap::new();
    for (name, w) in webhooks {
        let cfg = w.get_ref();
        cfg.check(name, w.span(), ctx);
        let path = cfg.path.get_ref().as_str();
        if let Some(other) = paths.insert(path, name) {
            ctx.error(
                cfg.path.span(),
                format!("[webhooks.{name}] path {path:?} is already the path of [webhooks.{other}]"),
            );
        }
    }
    if server.is_none() {
        if let Some((name, w)) = webhooks.iter().next() {
            ctx.error(
                w.span(),
                format!("[webhooks.{name}] needs a [server] section with `listen` to receive requests"),
            );
        }
    }
}

impl WebhookConfig {
    /// Records every problem of this section.
    pub fn check(&self, name: &str, _span: std::ops::Range<usize>, ctx: &mut CheckCtx) {
        let path = self.path.get_ref();
        if !path.starts_with('/') {
            ctx.error(self.path.span(), format!("[webhooks.{name}] path must start with `/`, as in \"/hooks/{name}\""));
        } else if path.contains(['?', '#', ' ']) {
            ctx.error(
                self.path.span(),
                format!("[webhooks.{name}] path {path:?} must be a plain path (no query, fragment or space)"),
            );
        } else if RESERVED_PATHS.contains(&path.as_str()) {
            ctx.error(self.path.span(), format!("[webhooks.{name}] path {path:?} is the server's own"));
        }
        if self.entity.get_ref().trim().is_empty() {
            ctx.error(self.entity.span(), format!("[webhooks.{name}] needs an entity"));
        }
        if let Some(e) = &self.event {
            if let Err(m) = event_kind(e.get_ref()) {
                ctx.error(e.span(), format!("[webhooks.{name}] event: {m}"));
            }
        }
        if let Some(m) = &self.max_body_bytes {
            if *m.get_ref() == 0 {
                ctx.error(m.span(), format!("[webhooks.{name}] max_body_bytes must be at least 1"));
            }
        }
        match self.auth.get_ref() {
            AuthConfig::HmacSha256 { header, secret } => {
                if HeaderName::from_bytes(header.as_bytes()).is_err() {
                    ctx.error(self.auth.span(), format!("[webhooks.{name}] auth: {header:?} is not a header name"));
                }
                if let Some(s) = secret.check(ctx, &format!("[webhooks.{name}] auth secret")) {
                    if s.expose().is_empty() {
                        ctx.error(secret.span(), format!("[webhooks.{name}] auth secret is empty"));
                    }
                }
            }
            AuthConfig::Bearer { token } => {
                if let Some(s) = token.check(ctx, &format!("[webhooks.{name}] auth token")) {
                    if s.expose().is_empty() {
                        ctx.error(token.span(), format!("[webhooks.{name}] auth token is empty"));
                    }
                }
            }
            AuthConfig::None => {}
        }
        if let Some(fields) = &self.fields {
            for (target, source) in fields.get_ref() {
                if let Err(m) = field_mapping(target, source) {
                    ctx.error(fields.span(), format!("[webhooks.{name}] fields: {m}"));
                }
            }
        }
        if let Some(set) = &self.set {
            if let Err(m) = constant_fields(set.get_ref()) {
                ctx.error(set.span(), format!("[webhooks.{name}] set: {m}"));
            }
        }
    }

    /// The runtime webhook. Secrets are resolved now.
    pub fn build(&self, name: &str) -> Result<Webhook, String> {
        let secret = |s: &SecretRef| s.resolve().map_err(|e| format!("[webhooks.{name}] auth: {e}"));
        let auth = match self.auth.get_ref() {
            AuthConfig::HmacSha256 { header, secret: s } => Auth::Hmac {
                header: HeaderName::from_bytes(header.as_bytes())
                    .map_err(|e| format!("[webhooks.{name}] auth: {e}"))?,
                key: secret(s)?,
            },
            AuthConfig::Bearer { token } => Auth::Bearer { token_hash: Sha256::digest(secret(token)?.expose()).into() },
            AuthConfig::None => Auth::None,
        };
        let kind = match &self.event {
            Some(e) => event_kind(e.get_ref()).map_err(|m| format!("[webhooks.{name}] event: {m}"))?,
            None => EventKind::Created,
        };
        let fields = match &self.fields {
            Some(f) => Some(
                f.get_ref()
                    .iter()
                    .map(|(t, s)| field_mapping(t, s).map_err(|m| format!("[webhooks.{name}] fields: {m}")))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        let set = match &self.set {
            Some(s) => constant_fields(s.get_ref()).map_err(|m| format!("[webhooks.{name}] set: {m}"))?,
            None => Fields::new(),
        };
        Ok(Webhook {
            name: name.to_string(),
            path: self.path.get_ref().clone(),
            entity: self.entity.get_ref().clone(),
            kind,
            auth,
            max_body_bytes: self.max_body_bytes.as_ref().map_or(DEFAULT_MAX_BODY_BYTES, |m| *m.get_ref()),
            fields,
            set,
        })
    }
}

fn event_kind(name: &str) -> Result<EventKind, String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(format!(
            "{name:?} is not an event name (created, updated, deleted, or lowercase_with_underscores)"
        ));
    }
    Ok(EventKind::from(name.to_string()))
}

fn field_mapping(target: &str, source: &str) -> Result<(String, Vec<String>), String> {
    if target.is_empty() || target == "entity" {
        return Err(format!("{target:?} cannot be a record field"));
    }
    let path: Vec<String> = source.split('.').map(String::from).collect();
    if path.iter().any(String::is_empty) {
        return Err(format!("{target} = {source:?}: not a dotted path such as \"employee.id\""));
    }
    Ok((target.to_string(), path))
}

fn constant_fields(table: &toml::Table) -> Result<Fields, String> {
    match crate::de::toml_to_json(&toml::Value::Table(table.clone()))? {
        Value::Object(o) if o.contains_key("entity") => Err("`entity` cannot be a record field".into()),
        Value::Object(o) => Ok(o),
        _ => unreachable!("a table is an object"),
    }
}

/// How a webhook authenticates deliveries.
enum Auth {
    Hmac {
        header: HeaderName,
        key: Secret,
    },
    /// The token's SHA-256: comparing digests in constant time leaks neither the token nor its
    /// length.
    Bearer {
        token_hash: [u8; 32],
    },
    None,
}

/// A webhook ready to receive.
pub struct Webhook {
    pub name: String,
    pub path: String,
    pub entity: String,
    pub kind: EventKind,
    auth: Auth,
    pub max_body_bytes: usize,
    fields: Option<Vec<(String, Vec<String>)>>,
    set: Fields,
}

impl Webhook {
    /// Whether the request carries valid credentials for `body`.
    fn authenticate(&self, headers: &HeaderMap, body: &[u8]) -> bool {
        match &self.auth {
            Auth::None => true,
            Auth::Hmac { header, key } => {
                let Some(value) = headers.get(header).and_then(|v| v.to_str().ok()) else { return false };
                let value = value.trim();
                let hex_sig = value.strip_prefix("sha256=").unwrap_or(value);
                let Ok(sig) = hex::decode(hex_sig) else { return false };
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()).expect("HMAC takes keys of any length");
                mac.update(body);
                mac.verify_slice(&sig).is_ok()
            }
            Auth::Bearer { token_hash } => {
                let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
                    return false;
                };
                let Some(token) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) else {
                    return false;
                };
                let given: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
                given.ct_eq(token_hash).into()
            }
        }
    }

    /// The record a body becomes: its fields picked and renamed by `fields`, plus `set`.
    fn record_of(&self, body: serde_json::Map<String, Value>) -> Fields {
        let mut out = match &self.fields {
            None => body,
            Some(mapping) => {
                let mut out = Fields::new();
                for (target, path) in mapping {
                    if let Some(v) = lookup(&body, path) {
                        out.insert(target.clone(), v.clone());
                    }
                }
                out
            }
        };
        for (k, v) in &self.set {
            out.insert(k.clone(), v.clone());
        }
        out
    }
}

/// The webhooks by path.
#[derive(Default)]
pub struct Webhooks {
    by_path: HashMap<String, Arc<Webhook>>,
}

impl Webhooks {
    /// Builds every `[webhooks.NAME]`; all problems are returned together.
    pub fn from_config(config: &BTreeMap<String, Spanned<WebhookConfig>>) -> Result<Webhooks, Vec<String>> {
        let mut by_path = HashMap::new();
        let mut problems = Vec::new();
        for (name, w) in config {
            match w.get_ref().build(name) {
                Ok(h) => {
                    by_path.insert(h.path.clone(), Arc::new(h));
                }
                Err(e) => problems.push(e),
            }
        }
        if problems.is_empty() {
            Ok(Webhooks { by_path })
        } else {
            Err(problems)
        }
    }

    /// The webhook of a path.
    pub fn get(&self, path: &str) -> Option<&Arc<Webhook>> {
        self.by_path.get(path)
    }

    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }
}

/// What `/healthz` answers: the daemon's view of itself, built on a blocking thread.
pub type HealthReport = Arc<dyn Fn() -> Value + Send + Sync>;

/// What the server's handlers share.
pub struct ServerState {
    pub runtime: Arc<Runtime>,
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
        runtime: Arc<Runtime>,
        webhooks: Webhooks,
        wake: Arc<tokio::sync::Notify>,
        health: HealthReport,
        request_timeout: Duration,
    ) -> ServerState {
        let ingester = Ingester::start(runtime.clone());
        ServerState { runtime, webhooks: ArcSwap::from_pointee(webhooks), wake, health, request_timeout, ingester }
    }
}

/// The most deliveries stored in one transaction.
const MAX_BATCH: usize = 256;

type IngestReply = tokio::sync::oneshot::Sender<Result<Option<crate::record::Event>, StoreError>>;

/// Stores deliveries with group commit: a thread takes every delivery waiting and stores them
/// in one transaction, because a commit costs far more than an insert (about 7,000 single
/// commits a second against 60,000 rows a second in batches, on SQLite). An idle server stores
/// a delivery at once; under load, batches form by themselves. A batch that fails is retried
/// one delivery at a time, so one bad delivery does not fail the others.
struct Ingester {
    tx: tokio::sync::mpsc::Sender<(Ingest, IngestReply)>,
}

impl Ingester {
    fn start(runtime: Arc<Runtime>) -> Ingester {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Ingest, IngestReply)>(4 * MAX_BATCH);
        std::thread::Builder::new()
            .name("tripline-ingest".into())
            .spawn(move || {
                // Ends when the server state, and with it the sender, is dropped.
                while let Some(first) = rx.blocking_recv() {
                    let mut items = vec![first.0];
                    let mut replies = vec![first.1];
                    while items.len() < MAX_BATCH {
                        let Ok((item, reply)) = rx.try_recv() else { break };
                        items.push(item);
                        replies.push(reply);
                    }
                    match runtime.submit(&items) {
                        Ok(events) => {
                            for (reply, event) in replies.into_iter().zip(events) {
                                let _ = reply.send(Ok(event));
                            }
                        }
                        Err(_) => {
                            for (item, reply) in items.iter().zip(replies) {
                                let _ = reply
                                    .send(runtime.submit(std::slice::from_ref(item)).map(|mut e| e.pop().flatten()));
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
    async fn submit(&self, item: Ingest) -> Option<Result<Option<crate::record::Event>, StoreError>> {
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
    let rt = state.runtime.clone();
    if let Ok(Ok(depth)) = tokio::task::spawn_blocking(move || rt.store().queue_depth()).await {
        crate::metrics::set_queue_depth(depth);
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
        if matches!(hook.auth, Auth::Bearer { .. }) {
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
    let max_record = state.runtime.config().engine.max_record_bytes;
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
            let rt = state.runtime.clone();
            let key = key.unwrap_or_default();
            match tokio::task::spawn_blocking(move || rt.store().event_by_idempotency_key(&key)).await {
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
        Some(Err(e)) => store_problem(hook, e),
        None => problem(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping"),
    }
}

/// The HTTP answer to a store error.
fn store_problem(hook: &Webhook, e: StoreError) -> Response {
    match &e {
        StoreError::NoRecord(_) => problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(auth: &str, extra: &str) -> Webhook {
        let text = format!("path = \"/h\"\nentity = \"ticket\"\nauth = {auth}\n{extra}");
        toml::from_str::<WebhookConfig>(&text).unwrap().build("h").unwrap()
    }

    #[test]
    fn hmac_signatures_are_checked_with_or_without_prefix() {
        let h = hook("{ type = \"hmac_sha256\", header = \"X-Sig\", secret = \"k3y-webhook-unit\" }", "");
        let body = br#"{"a":1}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"k3y-webhook-unit").unwrap();
        mac.update(body);
        let sig = hex::encode(mac.finalize().into_bytes());
        let with = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert("x-sig", v.parse().unwrap());
            m
        };
        assert!(h.authenticate(&with(&sig), body));
        assert!(h.authenticate(&with(&format!("sha256={sig}")), body));
        assert!(!h.authenticate(&with(&sig), br#"{"a":2}"#));
        assert!(!h.authenticate(&with("zz"), body));
        assert!(!h.authenticate(&HeaderMap::new(), body));
    }

    #[test]
    fn bearer_tokens_are_compared() {
        let h = hook("{ type = \"bearer\", token = \"t0ken-webhook-unit\" }", "");
        let mut m = HeaderMap::new();
        m.insert(header::AUTHORIZATION, "Bearer t0ken-webhook-unit".parse().unwrap());
        assert!(h.authenticate(&m, b""));
        m.insert(header::AUTHORIZATION, "Bearer t0ken-webhook-uni".parse().unwrap());
        assert!(!h.authenticate(&m, b""));
    }

    #[test]
    fn fields_are_picked_renamed_and_set() {
        let h = hook(
            "{ type = \"none\" }",
            "fields = { Source = \"source\", EmployeeId = \"employee.id\", Missing = \"nope\" }\nset = { Kind = \"alert\" }",
        );
        let Value::Object(body) = json!({"source": "nx", "employee": {"id": 7}, "other": 1}) else { unreachable!() };
        let r = h.record_of(body);
        assert_eq!(Value::Object(r), json!({"Source": "nx", "EmployeeId": 7, "Kind": "alert"}));
    }

    #[test]
    fn check_reports_every_problem_with_its_place() {
        let text = "[server]\nlisten = \"localhost\"\n\n\
                    [webhooks.a]\npath = \"hooks/a\"\nentity = \"ticket\"\nauth = { type = \"bearer\", token = \"${TRIPLINE_UNIT_UNSET_VAR}\" }\n\n\
                    [webhooks.b]\npath = \"/metrics\"\nentity = \"ticket\"\nevent = \"Bad Name\"\nauth = { type = \"none\" }\n\n\
                    [webhooks.c]\npath = \"/metrics\"\nentity = \"ticket\"\nauth = { type = \"none\" }\nfields = { X = \"a..b\" }\n";
        let diags = crate::config::Config::from_str(text, std::path::Path::new("t.toml")).unwrap_err();
        let shown: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        let expect = [
            "t.toml:2:10: [server] listen: \"localhost\" is not an address",
            "t.toml:5:8: [webhooks.a] path must start with `/`",
            "t.toml:7:35: [webhooks.a] auth token: environment variable TRIPLINE_UNIT_UNSET_VAR is not set",
            "t.toml:10:8: [webhooks.b] path \"/metrics\" is the server's own",
            "t.toml:12:9: [webhooks.b] event: \"Bad Name\" is not an event name",
            "t.toml:16:8: [webhooks.c] path \"/metrics\" is already the path of [webhooks.b]",
            "t.toml:19:10: [webhooks.c] fields: X = \"a..b\": not a dotted path",
        ];
        for e in expect {
            assert!(shown.iter().any(|s| s.starts_with(e)), "{e:?} in {shown:#?}");
        }
        let no_server = "[webhooks.a]\npath = \"/a\"\nentity = \"t\"\nauth = { type = \"none\" }\n";
        let diags = crate::config::Config::from_str(no_server, std::path::Path::new("t.toml")).unwrap_err();
        assert!(diags[0].to_string().contains("needs a [server] section"), "{diags:?}");
    }

    #[test]
    fn auth_types_take_only_their_settings() {
        let e = toml::from_str::<WebhookConfig>(
            "path = \"/h\"\nentity = \"t\"\nauth = { type = \"bearer\", token = \"x\", secret = \"y\" }",
        )
        .unwrap_err();
        assert!(e.message().contains("`secret` does not apply"), "{e}");
        let e =
            toml::from_str::<WebhookConfig>("path = \"/h\"\nentity = \"t\"\nauth = { type = \"hmac\" }").unwrap_err();
        assert!(e.message().contains("did you mean \"hmac_sha256\""), "{e}");
    }
}
