//! The admin console (`[console]`): server-rendered pages over the runtime, on an address of
//! its own, for people: what ran and why it failed, records and their comments, rules and
//! files in error, jobs, connections and directories; and, for operators, the few changes an
//! admin makes by hand (replay a run, run a job now, test a connection or a directory).
//!
//! Nothing is readable without a login (every route but `/login` redirects, and a POST
//! without a session is refused); every form carries its session's CSRF token; a viewer's
//! POST is refused by the server whatever the page showed. Pages are plain HTML compiled into
//! the binary (askama templates, one inline stylesheet, no script), readable without
//! JavaScript, and paged on the server: a list costs its page, not the history. Every page is
//! passed through [`crate::secret::redact`] before it leaves, so a configured secret that
//! reached a record or a log line by any way is still not shown.
//!
//! The console is the daemon's ingress for people: it sits above the dispatcher it wakes and
//! the runtime it runs replays and jobs on.

mod auth;
mod pages;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::config::ConsoleSettings;
use crate::runtime::Runtime;
use crate::server::HealthReport;
pub use auth::Session;

/// How long a client may take to send a request's headers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest form accepted (a record pasted into the rule test form included).
const MAX_FORM_BYTES: usize = 1024 * 1024;

/// What the console's handlers share.
pub struct ConsoleState {
    runtime: Arc<Runtime>,
    settings: ConsoleSettings,
    /// The daemon's dispatcher: replays and job runs store what they raise claimed by it.
    owner: String,
    /// Wakes the dispatcher after a replay or a job run raised events.
    wake: Arc<tokio::sync::Notify>,
    /// `/healthz`'s report, for the overview.
    health: HealthReport,
    sessions: auth::Sessions,
    throttle: auth::Throttle,
    /// The last Test of each connection (`connection:NAME`) and directory (`directory:NAME`).
    tests: Mutex<HashMap<String, pages::TestResult>>,
}

impl ConsoleState {
    pub fn new(
        runtime: Arc<Runtime>,
        settings: ConsoleSettings,
        owner: String,
        wake: Arc<tokio::sync::Notify>,
        health: HealthReport,
    ) -> ConsoleState {
        ConsoleState {
            runtime,
            settings,
            owner,
            wake,
            health,
            sessions: auth::Sessions::default(),
            throttle: auth::Throttle::default(),
            tests: Mutex::default(),
        }
    }
}

/// The console's routes, every one but `/login` behind [`require_session`].
pub fn router(state: Arc<ConsoleState>) -> Router {
    let pages = Router::new()
        .route("/", get(pages::overview))
        .route("/runs", get(pages::runs))
        .route("/runs/replay", post(pages::replay_many))
        .route("/runs/{id}", get(pages::run))
        .route("/runs/{id}/replay", post(pages::replay))
        .route("/records", get(pages::records))
        .route("/records/{id}", get(pages::record))
        .route("/rules", get(pages::rules))
        .route("/rules/test", post(pages::test_rule))
        .route("/jobs", get(pages::jobs))
        .route("/jobs/{name}/run", post(pages::run_job))
        .route("/connections", get(pages::connections))
        .route("/connections/{name}/test", post(pages::test_connection))
        .route("/directories", get(pages::directories))
        .route("/directories/{name}/test", post(pages::test_directory))
        .route("/logout", post(pages::logout))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_session));
    Router::new()
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/favicon.ico", get(pages::favicon))
        .merge(pages)
        .fallback(pages::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Serves the console on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ConsoleState>,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    crate::server::serve(listener, router(state), REQUEST_TIMEOUT, grace, shutdown).await
}

/// Lets a request through only with a session in force: a GET without one is sent to the
/// login page (and back after it), anything else is refused. The session goes into the
/// request's extensions for the handler.
async fn require_session(State(state): State<Arc<ConsoleState>>, mut req: Request, next: Next) -> Response {
    match state.sessions.find(req.headers()) {
        Some(session) => {
            req.extensions_mut().insert(session);
            next.run(req).await
        }
        None if req.method() == Method::GET || req.method() == Method::HEAD => {
            let back = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let to = format!(
                "/login?next={}",
                percent_encoding::utf8_percent_encode(back, percent_encoding::NON_ALPHANUMERIC)
            );
            (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
        }
        None => (StatusCode::FORBIDDEN, "log in first: this request changes nothing without a session").into_response(),
    }
}

/// Headers on every answer: no framing by other sites, no sniffing, no caching of pages that
/// show data, no scripts at all (the console has none).
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    let set = [
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "same-origin"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
        ),
    ];
    for (name, value) in set {
        h.insert(name, axum::http::HeaderValue::from_static(value));
    }
    res
}
