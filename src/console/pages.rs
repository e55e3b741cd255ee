//! The console's pages: each handler reads what it shows (on a blocking thread when it asks
//! the store or runs a script), fills a view of plain strings, and renders its template.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::Value;

use super::auth::{self, Session};
use super::ConsoleState;
use crate::record::EventKind;
use crate::store::{Run, RunQuery, RunStatus};

/// Rows per page of a list.
const PAGE: usize = 50;
/// The most runs one "Replay selected" replays.
const MAX_REPLAY_AT_ONCE: usize = 100;

type Shared = State<Arc<ConsoleState>>;

/// What every page's layout shows: who is logged in, the logout form's token, where we are.
pub struct Nav {
    pub user: String,
    pub role: &'static str,
    pub csrf: String,
    pub operator: bool,
    pub section: &'static str,
}

impl Nav {
    fn new(s: &Session, section: &'static str) -> Nav {
        Nav { user: s.user.clone(), role: s.role.as_str(), csrf: s.csrf.clone(), operator: s.is_operator(), section }
    }
}

/// The last Test of a connection or directory.
#[derive(Debug, Clone)]
pub struct TestResult {
    pub at: String,
    pub ok: bool,
    pub text: String,
}

/// Renders a page; every configured secret is scrubbed from it, whatever brought it there.
fn render<T: Template>(status: StatusCode, t: &T) -> Response {
    match t.render() {
        Ok(html) => (status, Html(crate::secret::redact(&html).into_owned())).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "A console page did not render.");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page did not render; the daemon's log says why").into_response()
        }
    }
}

fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    nav: Nav,
    title: String,
    message: String,
}

fn message(s: &Session, status: StatusCode, title: &str, text: impl Into<String>) -> Response {
    render(status, &MessagePage { nav: Nav::new(s, ""), title: title.to_string(), message: text.into() })
}

/// Runs blocking work (the store, scripts) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| format!("the request's work stopped: {e}"))
}

/// A form's fields (repeated names kept, for several runs at once).
fn form(body: &Bytes) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        out.entry(k.into_owned()).or_default().push(v.into_owned());
    }
    out
}

fn field<'a>(f: &'a HashMap<String, Vec<String>>, name: &str) -> &'a str {
    f.get(name).and_then(|v| v.first()).map(String::as_str).unwrap_or("")
}

/// What every POST passes before it does anything: its session's CSRF token, and the
/// operator role when it changes something. `Some` is the answer that refuses the request.
fn check_post(s: &Session, f: &HashMap<String, Vec<String>>, needs_operator: bool) -> Option<Response> {
    if !s.csrf_matches(field(f, "csrf")) {
        return Some(message(
            s,
            StatusCode::FORBIDDEN,
            "Refused",
            "The form's token is not this session's (a form from another site, or from before a restart): reload the page and try again.",
        ));
    }
    if needs_operator && !s.is_operator() {
        return Some(message(
            s,
            StatusCode::FORBIDDEN,
            "Refused",
            format!("{} is a viewer: only operators replay runs, run jobs and test connections.", s.user),
        ));
    }
    None
}

fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn short(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

fn pct(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

// ---------------------------------------------------------------------------------------
// Login and logout

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    error: Option<String>,
    next: String,
    csrf: String,
}

/// Only a path of this console is a place to go back to after the login.
fn safe_next(next: &str) -> String {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') && !next.starts_with("/login") {
        next.to_string()
    } else {
        "/".to_string()
    }
}

/// The login page. Its token stays the one in the browser's login cookie when there is one,
/// so that another tab (or the browser fetching an icon) does not void the form at hand.
fn login_page(headers: &HeaderMap, status: StatusCode, error: Option<String>, next: &str) -> Response {
    let csrf = auth::cookie(headers, auth::LOGIN_COOKIE)
        .filter(|c| c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(auth::random_token);
    let mut res = render(status, &LoginPage { error, next: safe_next(next), csrf: csrf.clone() });
    if let Ok(v) = auth::set_cookie(auth::LOGIN_COOKIE, &csrf, std::time::Duration::from_secs(3600)).parse() {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

pub async fn login_form(headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    login_page(&headers, StatusCode::OK, None, q.get("next").map(String::as_str).unwrap_or("/"))
}

pub async fn login(
    State(state): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = form(&body);
    let (user, password, next) = (field(&f, "user").to_string(), field(&f, "password").to_string(), field(&f, "next"));
    let expected = auth::cookie(&headers, auth::LOGIN_COOKIE).unwrap_or_default();
    let given = field(&f, "csrf");
    if expected.is_empty() || expected.len() != given.len() || !constant_eq(&expected, given) {
        return login_page(
            &headers,
            StatusCode::FORBIDDEN,
            Some("The login form expired or came from elsewhere: log in again.".into()),
            next,
        );
    }
    // Each failure from this address or for this user makes the next attempt wait longer.
    let delay = state.throttle.delay(peer.ip(), &user);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let account = state.settings.users.get(&user).cloned();
    let pw = password.clone();
    let ok = blocking(move || auth::verify(account.as_ref(), &pw)).await.unwrap_or(false);
    let Some(account) = state.settings.users.get(&user).filter(|_| ok) else {
        state.throttle.failed(peer.ip(), &user);
        tracing::warn!(user = %short(&user, 64), client = %peer.ip(), "Console login failed.");
        return login_page(&headers, StatusCode::UNAUTHORIZED, Some("Wrong user name or password.".into()), next);
    };
    state.throttle.succeeded(peer.ip(), &user);
    let token = state.sessions.start(&user, account.role);
    tracing::info!(user = %user, role = account.role.as_str(), client = %peer.ip(), "Console login.");
    let mut res = redirect(&safe_next(next));
    for c in
        [auth::set_cookie(auth::SESSION_COOKIE, &token, auth::SESSION_LIFETIME), auth::clear_cookie(auth::LOGIN_COOKIE)]
    {
        if let Ok(v) = c.parse() {
            res.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    res
}

fn constant_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

pub async fn logout(State(state): Shared, Extension(s): Extension<Session>, body: Bytes) -> Response {
    if let Some(refused) = check_post(&s, &form(&body), false) {
        return refused;
    }
    state.sessions.end(&s);
    let mut res = redirect("/login");
    if let Ok(v) = auth::clear_cookie(auth::SESSION_COOKIE).parse() {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

/// Any other path: sent to the login page without a session (so that no path tells an
/// anonymous visitor whether it exists), "not found" with one.
/// The browser's icon request: nothing, and no redirect to the login page.
pub async fn favicon() -> StatusCode {
    StatusCode::NO_CONTENT
}

pub async fn not_found(State(state): Shared, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    match state.sessions.find(&headers) {
        Some(s) => message(&s, StatusCode::NOT_FOUND, "Not found", "There is no such page in the console."),
        None => redirect(&format!("/login?next={}", pct(uri.path()))),
    }
}

// ---------------------------------------------------------------------------------------
// Overview

struct Bar {
    x: usize,
    ok_y: u64,
    ok_h: u64,
    bad_y: u64,
    bad_h: u64,
    label: String,
}

struct ProblemRow {
    place: String,
    message: String,
}

struct FailingRow {
    rule: String,
    runs: u64,
    newest: i64,
    filter: String,
}

struct JobAlert {
    name: String,
    what: String,
    run: Option<i64>,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    nav: Nav,
    status: String,
    healthy: bool,
    queue_depth: String,
    in_flight: String,
    dispatcher_error: Option<String>,
    rules: String,
    scripts: String,
    bars: Vec<Bar>,
    chart_max: u64,
    runs_last_hour: u64,
    files_in_error: Vec<ProblemRow>,
    failing: Vec<FailingRow>,
    job_alerts: Vec<JobAlert>,
    store: String,
    worker: String,
    workers: Vec<WorkerRow>,
}

/// A worker of the store, on the overview.
struct WorkerRow {
    id: String,
    host: String,
    pid: String,
    started_at: String,
    seen_at: String,
    alive: bool,
    events: String,
    runs_ok: String,
    runs_not_ok: String,
}

/// Minutes shown in the runs-per-minute chart.
const CHART_MINUTES: i64 = 60;
/// The most recent runs the chart reads (a bound on its cost on a busy store).
const CHART_MAX_RUNS: usize = 50_000;
const CHART_HEIGHT: u64 = 80;

pub async fn overview(State(state): Shared, Extension(s): Extension<Session>) -> Response {
    let st = state.clone();
    let read = blocking(move || -> Result<_, String> {
        let health = (st.health)();
        let store = st.runtime.store();
        let now = Utc::now();
        let since = now - chrono::Duration::minutes(CHART_MINUTES);
        let minutes = store.runs_per_minute(since, CHART_MAX_RUNS).map_err(|e| e.to_string())?;
        let failing = store.failing_rules().map_err(|e| e.to_string())?;
        let mut alerts = Vec::new();
        for (name, job) in st.runtime.jobs() {
            let rule = format!("job:{name}");
            let last = store
                .runs_page(&RunQuery { rule: Some(rule.clone()), limit: 1, ..RunQuery::default() })
                .map_err(|e| e.to_string())?;
            if let Some(run) = last.first().filter(|r| r.status != RunStatus::Ok) {
                alerts.push(JobAlert {
                    name: name.clone(),
                    what: format!("last run {} at {}", run.status.as_str(), when(run.started_at)),
                    run: Some(run.id),
                });
            }
            if let Some(stale) = job.stale_after.filter(|_| job.enabled) {
                let ok = store
                    .runs_page(&RunQuery {
                        rule: Some(rule),
                        status: Some(RunStatus::Ok),
                        limit: 1,
                        ..RunQuery::default()
                    })
                    .map_err(|e| e.to_string())?;
                let limit = chrono::Duration::from_std(stale).unwrap_or(chrono::Duration::MAX);
                let fresh = ok.first().is_some_and(|r| now.signed_duration_since(r.finished_at) < limit);
                if !fresh {
                    alerts.push(JobAlert {
                        name: name.clone(),
                        what: format!(
                            "stale: no successful run for {} (stale_after)",
                            humantime::format_duration(stale)
                        ),
                        run: ok.first().map(|r| r.id),
                    });
                }
            }
        }
        Ok((health, minutes, failing, alerts, now))
    })
    .await;
    let (health, minutes, failing, job_alerts, now) = match read {
        Ok(Ok(x)) => x,
        Ok(Err(e)) | Err(e) => return message(&s, StatusCode::SERVICE_UNAVAILABLE, "Overview", e),
    };
    let by_minute: HashMap<String, (u64, u64)> = minutes.iter().map(|m| (m.minute.clone(), (m.ok, m.not_ok))).collect();
    let counts: Vec<(String, u64, u64)> = (0..CHART_MINUTES)
        .rev()
        .map(|ago| {
            let m = (now - chrono::Duration::minutes(ago)).format("%Y-%m-%dT%H:%M").to_string();
            let (ok, bad) = by_minute.get(&m).copied().unwrap_or((0, 0));
            (m, ok, bad)
        })
        .collect();
    let chart_max = counts.iter().map(|(_, ok, bad)| ok + bad).max().unwrap_or(0).max(1);
    let bars = counts
        .iter()
        .enumerate()
        .map(|(i, (m, ok, bad))| {
            let ok_h = ok * CHART_HEIGHT / chart_max;
            let bad_h = bad * CHART_HEIGHT / chart_max;
            Bar {
                x: i * 10,
                ok_y: CHART_HEIGHT - ok_h,
                ok_h,
                bad_y: CHART_HEIGHT - ok_h - bad_h,
                bad_h,
                label: format!("{} UTC: {ok} ok, {bad} not ok", &m[11..]),
            }
        })
        .collect();
    let text = |v: &Value| match v {
        Value::Null => "unknown".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let files_in_error = health["files_in_error"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| ProblemRow {
                    place: format!("{}:{}:{}", text(&d["path"]), text(&d["line"]), text(&d["col"])),
                    message: text(&d["message"]),
                })
                .collect()
        })
        .unwrap_or_default();
    let workers = health["workers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|w| WorkerRow {
                    id: text(&w["id"]),
                    host: text(&w["host"]),
                    pid: text(&w["pid"]),
                    started_at: text(&w["started_at"]),
                    seen_at: text(&w["seen_at"]),
                    alive: w["alive"] == true,
                    events: text(&w["figures"]["events_processed"]),
                    runs_ok: text(&w["figures"]["runs_ok"]),
                    runs_not_ok: text(&w["figures"]["runs_not_ok"]),
                })
                .collect()
        })
        .unwrap_or_default();
    let page = OverviewPage {
        store: text(&health["store"]),
        worker: text(&health["worker"]),
        workers,
        nav: Nav::new(&s, "overview"),
        status: text(&health["status"]),
        healthy: health["status"] == "ok",
        queue_depth: text(&health["queue_depth"]),
        in_flight: text(&health["dispatcher"]["in_flight"]),
        dispatcher_error: health["dispatcher"]["error"].as_str().map(str::to_string),
        rules: text(&health["rules"]),
        scripts: text(&health["scripts"]),
        runs_last_hour: counts.iter().map(|(_, ok, bad)| ok + bad).sum(),
        bars,
        chart_max,
        files_in_error,
        failing: failing
            .into_iter()
            .take(20)
            .map(|f| FailingRow {
                filter: match f.rule.strip_prefix("job:") {
                    Some(job) => format!("job={}", pct(job)),
                    None => format!("rule={}", pct(&f.rule)),
                },
                rule: f.rule,
                runs: f.runs,
                newest: f.newest_run,
            })
            .collect(),
        job_alerts,
    };
    render(StatusCode::OK, &page)
}

// ---------------------------------------------------------------------------------------
// Runs

struct RunRow {
    id: i64,
    rule: String,
    record_id: String,
    event: String,
    status: &'static str,
    error: String,
    started: String,
    duration_ms: u64,
    attempts: u32,
    replayable: bool,
}

fn replayable(run: &Run) -> bool {
    matches!(run.status, RunStatus::Failed | RunStatus::Dead)
}

impl RunRow {
    fn of(r: &Run) -> RunRow {
        RunRow {
            id: r.id,
            rule: r.rule.clone(),
            record_id: r.record_id.clone().unwrap_or_default(),
            event: r.event.clone(),
            status: r.status.as_str(),
            error: r.error.as_deref().map(|e| short(e, 160)).unwrap_or_default(),
            started: when(r.started_at),
            duration_ms: r.duration_ms,
            attempts: r.attempts,
            replayable: replayable(r),
        }
    }
}

#[derive(Template)]
#[template(path = "runs.html")]
struct RunsPage {
    nav: Nav,
    status: String,
    rule: String,
    job: String,
    record: String,
    since: String,
    until: String,
    problems: Vec<String>,
    rows: Vec<RunRow>,
    next: Option<String>,
    first: Option<String>,
    any_replayable: bool,
}

/// A time filter: RFC 3339, `YYYY-MM-DDTHH:MM` (what a browser's datetime field sends) or a
/// date, read as UTC.
fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let t = text.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Some(d.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(d) = NaiveDateTime::parse_from_str(t, f) {
            return Some(d.and_utc());
        }
    }
    NaiveDate::parse_from_str(t, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)).map(|d| d.and_utc())
}

pub async fn runs(
    State(state): Shared,
    Extension(s): Extension<Session>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| q.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
    let (status, rule, job, record, since, until) =
        (get("status"), get("rule"), get("job"), get("record"), get("since"), get("until"));
    let mut problems = Vec::new();
    let mut query = RunQuery { limit: PAGE + 1, ..RunQuery::default() };
    if !status.is_empty() {
        match RunStatus::parse(&status) {
            Some(st) => query.status = Some(st),
            None => problems.push(format!("status {status:?} is not one of ok, failed, retrying, dead")),
        }
    }
    match (rule.is_empty(), job.is_empty()) {
        (false, false) => problems.push("give a rule or a job, not both".into()),
        (false, true) => query.rule = Some(rule.clone()),
        (true, false) => query.rule = Some(format!("job:{job}")),
        (true, true) => {}
    }
    if !record.is_empty() {
        query.record_id = Some(record.clone());
    }
    for (name, text, slot) in [("since", &since, &mut query.since), ("until", &until, &mut query.until)] {
        if !text.is_empty() {
            match parse_time(text) {
                Some(t) => *slot = Some(t),
                None => problems.push(format!("{name} {text:?} is not a time such as 2026-12-01T09:30 (UTC)")),
            }
        }
    }
    let before = get("before");
    if !before.is_empty() {
        match before.parse::<i64>() {
            Ok(b) => query.before = Some(b),
            Err(_) => problems.push(format!("before {before:?} is not a run id")),
        }
    }
    let mut rows = Vec::new();
    let mut next = None;
    if problems.is_empty() {
        let st = state.clone();
        let q2 = query.clone();
        match blocking(move || st.runtime.store().runs_page(&q2)).await {
            Ok(Ok(runs)) => {
                rows = runs.iter().take(PAGE).map(RunRow::of).collect();
                if runs.len() > PAGE {
                    next = rows.last().map(|r: &RunRow| r.id);
                }
            }
            Ok(Err(e)) => problems.push(e.to_string()),
            Err(e) => problems.push(e),
        }
    }
    let filters: Vec<String> = [
        ("status", &status),
        ("rule", &rule),
        ("job", &job),
        ("record", &record),
        ("since", &since),
        ("until", &until),
    ]
    .iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| format!("{k}={}", pct(v)))
    .collect();
    let base = filters.join("&");
    let link = |extra: Option<String>| {
        let parts: Vec<String> = [Some(base.clone()).filter(|b| !b.is_empty()), extra].into_iter().flatten().collect();
        format!("/runs?{}", parts.join("&"))
    };
    let page = RunsPage {
        nav: Nav::new(&s, "runs"),
        any_replayable: s.is_operator() && rows.iter().any(|r| r.replayable),
        next: next.map(|id| link(Some(format!("before={id}")))),
        first: query.before.map(|_| link(None)),
        status,
        rule,
        job,
        record,
        since,
        until,
        problems,
        rows,
    };
    let code = if page.problems.is_empty() { StatusCode::OK } else { StatusCode::BAD_REQUEST };
    render(code, &page)
}

struct Verdict {
    field: String,
    op: String,
    value: String,
    actual: String,
    holds: bool,
}

struct LogRow {
    at: String,
    level: String,
    message: String,
}

/// A directory change of a run, from the audit trail.
struct ChangeRow {
    at: String,
    directory: String,
    operation: String,
    dn: String,
    planned: bool,
    /// `attribute: before -> after`, one each.
    attributes: Vec<String>,
    detail: String,
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    nav: Nav,
    run: RunRow,
    changes: Vec<ChangeRow>,
    /// What the run wrote to the store, a line each.
    writes: Vec<String>,
    is_job: bool,
    job: String,
    error: Option<String>,
    /// The error's `path:line:col`, when it names one.
    error_place: Option<String>,
    error_file: String,
    log: Vec<LogRow>,
    verdicts: Vec<Verdict>,
    verdict_note: String,
    finished: String,
    next_attempt: String,
    event_id: String,
}

/// The `path:line:col` an error starts with, and the path.
fn error_place(error: &str) -> Option<(String, String)> {
    let re = regex::Regex::new(r"^([^\s:][^:\n]*):(\d+):(\d+):").ok()?;
    let c = re.captures(error)?;
    Some((format!("{}:{}:{}", &c[1], &c[2], &c[3]), c[1].to_string()))
}

fn json_text(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

pub async fn run(State(state): Shared, Extension(s): Extension<Session>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.trim_start_matches('#').parse::<i64>() else {
        return message(&s, StatusCode::NOT_FOUND, "No such run", format!("{id:?} is not a run id"));
    };
    let st = state.clone();
    let read = blocking(move || -> Result<_, String> {
        let store = st.runtime.store();
        let Some(run) = store.get_run(id).map_err(|e| e.to_string())? else { return Ok(None) };
        let catalog = st.runtime.catalog();
        let event = match run.event_id {
            Some(e) => store.get_event(e).map_err(|e| e.to_string())?,
            None => None,
        };
        let rule = catalog.rules.get(&run.rule).cloned();
        let (verdicts, note) = match (&rule, &event) {
            (Some(rule), Some(event)) => (
                rule.conditions
                    .iter()
                    .map(|c| Verdict {
                        field: c.field_name.clone(),
                        op: c.op_name.clone(),
                        value: String::new(),
                        actual: c.actual(event).map(|v| json_text(&v)).unwrap_or_else(|| "(absent)".into()),
                        holds: c.eval(event),
                    })
                    .collect(),
                "The conditions of the rule in force, on the event as stored.".to_string(),
            ),
            _ if run.rule.starts_with("job:") => (Vec::new(), String::new()),
            (None, _) => (Vec::new(), format!("The rule {:?} is no longer loaded.", run.rule)),
            (_, None) => (Vec::new(), "The run's event is no longer stored (pruned).".to_string()),
        };
        let query = crate::store::AuditQuery { run_id: Some(run.id), ..Default::default() };
        let changes = store.audit(&query).map_err(|e| e.to_string())?;
        Ok(Some((run, verdicts, note, changes)))
    })
    .await;
    let (run, verdicts, verdict_note, changes) = match read {
        Ok(Ok(Some(x))) => x,
        Ok(Ok(None)) => return message(&s, StatusCode::NOT_FOUND, "No such run", format!("There is no run {id}.")),
        Ok(Err(e)) | Err(e) => return message(&s, StatusCode::SERVICE_UNAVAILABLE, "Run", e),
    };
    let place = run.error.as_deref().and_then(error_place);
    let page = RunPage {
        nav: Nav::new(&s, "runs"),
        is_job: run.rule.starts_with("job:"),
        job: run.rule.strip_prefix("job:").unwrap_or_default().to_string(),
        error: run.error.clone(),
        error_place: place.as_ref().map(|p| p.0.clone()),
        error_file: place.map(|p| p.1).unwrap_or_default(),
        log: run
            .log
            .iter()
            .map(|l| LogRow {
                at: l.at.format("%H:%M:%S%.3f").to_string(),
                level: l.level.clone(),
                message: l.message.clone(),
            })
            .collect(),
        verdicts,
        verdict_note,
        writes: run.writes.clone(),
        changes: changes
            .iter()
            .map(|c| ChangeRow {
                at: c.at.format("%H:%M:%S%.3f").to_string(),
                directory: c.directory.clone(),
                operation: c.operation.clone(),
                dn: c.dn.clone(),
                planned: c.planned,
                attributes: c.attributes.iter().map(ToString::to_string).collect(),
                detail: c.detail.clone().unwrap_or_default(),
            })
            .collect(),
        finished: when(run.finished_at),
        next_attempt: run.next_attempt_at.map(when).unwrap_or_default(),
        event_id: run.event_id.map(|e| e.to_string()).unwrap_or_default(),
        run: RunRow::of(&run),
    };
    render(StatusCode::OK, &page)
}

/// Replays one run on the runtime, as the daemon's dispatcher (which goes on with what the
/// replay raises); the run's id after it.
async fn replay_one(state: &Arc<ConsoleState>, id: i64) -> Result<i64, String> {
    let st = state.clone();
    let result = blocking(move || -> Result<i64, String> {
        let store = st.runtime.store();
        let Some(previous) = store.get_run(id).map_err(|e| e.to_string())? else {
            return Err(format!("there is no run {id}"));
        };
        if previous.status == RunStatus::Ok {
            return Err(format!("run {id} ended ok; only runs that did not are replayed"));
        }
        let run = st.runtime.replay(id, &st.owner).map_err(|e| e.to_string())?;
        Ok(run.map(|r| r.id).filter(|r| *r > 0).unwrap_or(id))
    })
    .await?;
    state.wake.notify_one();
    result
}

pub async fn replay(
    State(state): Shared,
    Extension(s): Extension<Session>,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    if let Some(refused) = check_post(&s, &form(&body), true) {
        return refused;
    }
    tracing::info!(user = %s.user, run = id, "Console: replay.");
    match replay_one(&state, id).await {
        Ok(new_id) => redirect(&format!("/runs/{new_id}")),
        Err(e) => message(&s, StatusCode::CONFLICT, "Replay", e),
    }
}

pub async fn replay_many(State(state): Shared, Extension(s): Extension<Session>, body: Bytes) -> Response {
    let f = form(&body);
    if let Some(refused) = check_post(&s, &f, true) {
        return refused;
    }
    let ids: Vec<i64> = f.get("run").into_iter().flatten().filter_map(|v| v.parse().ok()).collect();
    if ids.is_empty() {
        return message(&s, StatusCode::BAD_REQUEST, "Replay", "Select the runs to replay first.");
    }
    if ids.len() > MAX_REPLAY_AT_ONCE {
        return message(&s, StatusCode::BAD_REQUEST, "Replay", format!("At most {MAX_REPLAY_AT_ONCE} runs at once."));
    }
    tracing::info!(user = %s.user, runs = ids.len(), "Console: replay of several runs.");
    let mut problems = Vec::new();
    for id in &ids {
        if let Err(e) = replay_one(&state, *id).await {
            problems.push(format!("#{id}: {e}"));
        }
    }
    if problems.is_empty() {
        redirect(&safe_next(field(&f, "back")))
    } else {
        message(&s, StatusCode::CONFLICT, "Replay", format!("Some runs were not replayed: {}", problems.join("; ")))
    }
}

// ---------------------------------------------------------------------------------------
// Records

struct RecordRow {
    id: String,
    status: &'static str,
    summary: String,
    updated: String,
}

#[derive(Template)]
#[template(path = "records.html")]
struct RecordsPage {
    nav: Nav,
    entity: String,
    entities: Vec<String>,
    rows: Vec<RecordRow>,
    next: Option<String>,
    first: Option<String>,
}

/// A record in one line: its subject, or its first fields.
fn summary(fields: &crate::record::Fields) -> String {
    for key in ["Subject", "subject", "Title", "title", "Name", "name"] {
        if let Some(Value::String(s)) = fields.get(key) {
            return short(s, 120);
        }
    }
    let parts: Vec<String> = fields.iter().take(4).map(|(k, v)| format!("{k}={}", short(&json_text(v), 40))).collect();
    short(&parts.join(", "), 160)
}

pub async fn records(
    State(state): Shared,
    Extension(s): Extension<Session>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let entity = q.get("entity").map(|e| e.trim().to_string()).unwrap_or_default();
    let before = q.get("before").cloned().filter(|b| !b.is_empty());
    let st = state.clone();
    let (e2, b2) = (entity.clone(), before.clone());
    let read = blocking(move || -> Result<_, String> {
        let store = st.runtime.store();
        let entities = store.entities().map_err(|e| e.to_string())?;
        let records = if e2.is_empty() {
            Vec::new()
        } else {
            store.records_page(&e2, b2.as_deref(), PAGE + 1).map_err(|e| e.to_string())?
        };
        Ok((entities, records))
    })
    .await;
    let (entities, records) = match read {
        Ok(Ok(x)) => x,
        Ok(Err(e)) | Err(e) => return message(&s, StatusCode::SERVICE_UNAVAILABLE, "Records", e),
    };
    let rows: Vec<RecordRow> = records
        .iter()
        .take(PAGE)
        .map(|r| RecordRow {
            id: r.id.clone(),
            status: r.status.as_str(),
            summary: summary(&r.fields),
            updated: when(r.updated_at),
        })
        .collect();
    let next = (records.len() > PAGE)
        .then(|| rows.last().map(|r| format!("/records?entity={}&before={}", pct(&entity), pct(&r.id))))
        .flatten();
    let page = RecordsPage {
        nav: Nav::new(&s, "records"),
        first: before.map(|_| format!("/records?entity={}", pct(&entity))),
        entity,
        entities,
        rows,
        next,
    };
    render(StatusCode::OK, &page)
}

struct FieldRow {
    name: String,
    value: String,
}

struct CommentRow {
    at: String,
    text: String,
}

#[derive(Template)]
#[template(path = "record.html")]
struct RecordPage {
    nav: Nav,
    id: String,
    entity: String,
    status: &'static str,
    source: Option<String>,
    created: String,
    updated: String,
    fields: Vec<FieldRow>,
    comments: Vec<CommentRow>,
    runs: Vec<RunRow>,
}

pub async fn record(State(state): Shared, Extension(s): Extension<Session>, Path(id): Path<String>) -> Response {
    let st = state.clone();
    let id2 = id.clone();
    let read = blocking(move || -> Result<_, String> {
        let store = st.runtime.store();
        let Some(record) = store.get_record(&id2).map_err(|e| e.to_string())? else { return Ok(None) };
        let runs = store
            .runs_page(&RunQuery { record_id: Some(id2), limit: PAGE, ..RunQuery::default() })
            .map_err(|e| e.to_string())?;
        Ok(Some((record, runs)))
    })
    .await;
    let (record, runs) = match read {
        Ok(Ok(Some(x))) => x,
        Ok(Ok(None)) => {
            return message(&s, StatusCode::NOT_FOUND, "No such record", format!("There is no record {id:?}."))
        }
        Ok(Err(e)) | Err(e) => return message(&s, StatusCode::SERVICE_UNAVAILABLE, "Record", e),
    };
    let page = RecordPage {
        nav: Nav::new(&s, "records"),
        source: record.fields.get("Source").map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }),
        id: record.id.clone(),
        entity: record.entity.clone(),
        status: record.status.as_str(),
        created: when(record.created_at),
        updated: when(record.updated_at),
        fields: record
            .fields
            .iter()
            .map(|(k, v)| FieldRow {
                name: k.clone(),
                value: match v {
                    Value::String(s) => s.clone(),
                    other => serde_json::to_string_pretty(other).unwrap_or_default(),
                },
            })
            .collect(),
        comments: record.comments.iter().map(|c| CommentRow { at: when(c.at), text: c.text.clone() }).collect(),
        runs: runs.iter().map(RunRow::of).collect(),
    };
    render(StatusCode::OK, &page)
}

// ---------------------------------------------------------------------------------------
// Rules

struct RuleRow {
    name: String,
    entity: String,
    file: String,
    script: String,
    enabled: bool,
    priority: i64,
    conditions: String,
    version: String,
    loaded: String,
    in_error: bool,
}

struct ScriptRow {
    path: String,
    version: String,
    loaded: String,
    in_error: bool,
}

struct ExplainView {
    rule: String,
    matched: bool,
    verdicts: Vec<Verdict>,
    when: Option<String>,
    outcome: String,
    error: Option<String>,
    writes: Vec<String>,
    planned: Vec<String>,
    log: Vec<LogRow>,
}

#[derive(Template)]
#[template(path = "rules.html")]
struct RulesPage {
    nav: Nav,
    rules: Vec<RuleRow>,
    scripts: Vec<ScriptRow>,
    problems: Vec<ProblemRow>,
    warnings: Vec<ProblemRow>,
    test_rule: String,
    test_record: String,
    test_event: String,
    test_error: Option<String>,
    results: Vec<ExplainView>,
}

/// What a file's version is shown as: the start of the SHA-256 of its text.
fn version_of(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(text.as_bytes())[..6])
}

struct TestInput {
    rule: String,
    record: String,
    event: String,
    error: Option<String>,
    results: Vec<ExplainView>,
}

async fn rules_page(state: &Arc<ConsoleState>, s: &Session, test: TestInput) -> Response {
    let st = state.clone();
    let read = blocking(move || {
        let catalog = st.runtime.catalog();
        let engine = &st.runtime.config().engine;
        let files = catalog.files(&engine.rules_dir);
        let rules_dir = engine.rules_dir.clone();
        let scripts_dir = engine.scripts_dir.clone();
        let all: Vec<crate::diag::Diagnostic> =
            catalog.problems.iter().chain(st.runtime.start_problems()).chain(&catalog.warnings).cloned().collect();
        (catalog, files, rules_dir, scripts_dir, all)
    })
    .await;
    let Ok((catalog, files, rules_dir, scripts_dir, diags)) = read else {
        return message(s, StatusCode::SERVICE_UNAVAILABLE, "Rules", "the rules could not be read");
    };
    let row = |d: &crate::diag::Diagnostic| ProblemRow {
        place: format!("{}:{}:{}", d.path.display(), d.line, d.col),
        message: d.message.clone(),
    };
    let in_error = |path: &std::path::Path| diags.iter().any(|d| d.is_error() && d.path == path);
    let stored: HashMap<(&'static str, String), &crate::store::StoredFile> =
        files.iter().map(|f| ((f.kind.as_str(), f.path.clone()), f)).collect();
    let mut rules: Vec<RuleRow> = catalog
        .rules
        .rules()
        .iter()
        .map(|r| {
            let rel = r.path.strip_prefix(&rules_dir).unwrap_or(&r.path).to_string_lossy().replace('\\', "/");
            let file = stored.get(&(crate::store::FileKind::Rule.as_str(), rel.clone()));
            RuleRow {
                name: r.name.clone(),
                entity: r.entity.clone(),
                file: r.path.display().to_string(),
                script: r.script.clone(),
                enabled: r.enabled,
                priority: r.priority,
                conditions: r
                    .conditions
                    .iter()
                    .map(|c| format!("{} {}", c.field_name, c.op_name))
                    .collect::<Vec<_>>()
                    .join(", "),
                version: file.map(|f| version_of(&f.text)).unwrap_or_default(),
                loaded: file.map(|f| when(f.loaded_at)).unwrap_or_default(),
                in_error: in_error(&r.path),
            }
        })
        .collect();
    rules.sort_by(|a, b| a.name.cmp(&b.name));
    let mut scripts: Vec<ScriptRow> = catalog
        .scripts
        .keys()
        .map(|p| {
            let file = stored.get(&(crate::store::FileKind::Script.as_str(), p.clone()));
            ScriptRow {
                path: scripts_dir.join(p).display().to_string(),
                version: file.map(|f| version_of(&f.text)).unwrap_or_default(),
                loaded: file.map(|f| when(f.loaded_at)).unwrap_or_default(),
                in_error: in_error(&scripts_dir.join(p)),
            }
        })
        .collect();
    scripts.sort_by(|a, b| a.path.cmp(&b.path));
    let page = RulesPage {
        nav: Nav::new(s, "rules"),
        rules,
        scripts,
        problems: diags.iter().filter(|d| d.is_error()).map(row).collect(),
        warnings: diags.iter().filter(|d| !d.is_error()).map(row).collect(),
        test_rule: test.rule,
        test_record: test.record,
        test_event: if test.event.is_empty() { "created".into() } else { test.event },
        test_error: test.error,
        results: test.results,
    };
    render(StatusCode::OK, &page)
}

pub async fn rules(State(state): Shared, Extension(s): Extension<Session>) -> Response {
    let none = TestInput {
        rule: String::new(),
        record: String::new(),
        event: String::new(),
        error: None,
        results: Vec::new(),
    };
    rules_page(&state, &s, none).await
}

/// The rule test form: `tripline test RULE --record ...`, on a pasted record. Nothing is
/// written or sent but reads (a dry run's GETs); operators only, since it runs scripts.
pub async fn test_rule(State(state): Shared, Extension(s): Extension<Session>, body: Bytes) -> Response {
    let f = form(&body);
    if let Some(refused) = check_post(&s, &f, true) {
        return refused;
    }
    let mut input = TestInput {
        rule: field(&f, "rule").to_string(),
        record: field(&f, "record").to_string(),
        event: field(&f, "event").to_string(),
        error: None,
        results: Vec::new(),
    };
    let value: Result<Value, String> = if input.record.trim().is_empty() {
        Ok(Value::Object(Default::default()))
    } else {
        serde_json::from_str(&input.record).map_err(|e| format!("the record is not JSON: {e}"))
    };
    let submitted = value.and_then(crate::record::from_value);
    match submitted {
        Err(e) => input.error = Some(e),
        Ok(record) => {
            let st = state.clone();
            let (rule, event) = (input.rule.clone(), input.event.clone());
            let explained = blocking(move || {
                let entity = st.runtime.catalog().rules.find(&rule).map(|r| r.entity.clone()).unwrap_or_default();
                let kind = EventKind::from(if event.is_empty() { "created".to_string() } else { event });
                st.runtime.explain(&entity, kind, record, Some(&rule))
            })
            .await;
            match explained {
                Ok(Ok(report)) => {
                    input.results = report
                        .into_iter()
                        .map(|ex| ExplainView {
                            rule: ex.rule,
                            matched: ex.matched,
                            verdicts: ex
                                .conditions
                                .iter()
                                .map(|c| Verdict {
                                    field: c.field.clone(),
                                    op: c.op.clone(),
                                    value: c.value.as_ref().map(json_text).unwrap_or_default(),
                                    actual: c.actual.as_ref().map(json_text).unwrap_or_else(|| "(absent)".into()),
                                    holds: c.holds,
                                })
                                .collect(),
                            when: ex.when.map(|w| match w {
                                Ok(true) => "holds".to_string(),
                                Ok(false) => "does not hold".to_string(),
                                Err(e) => format!("error: {e}"),
                            }),
                            outcome: ex.outcome.map(|o| o.as_str().to_string()).unwrap_or_default(),
                            error: ex.error,
                            writes: ex.write_lines,
                            planned: ex.planned,
                            log: ex
                                .log
                                .iter()
                                .map(|l| LogRow {
                                    at: String::new(),
                                    level: l.level.clone(),
                                    message: l.message.clone(),
                                })
                                .collect(),
                        })
                        .collect()
                }
                Ok(Err(e)) | Err(e) => input.error = Some(e),
            }
        }
    }
    rules_page(&state, &s, input).await
}

// ---------------------------------------------------------------------------------------
// Jobs

struct JobRow {
    name: String,
    schedule: String,
    script: String,
    enabled: bool,
    next_run: String,
    last_run: Option<i64>,
    last_status: String,
    last_at: String,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    nav: Nav,
    jobs: Vec<JobRow>,
}

pub async fn jobs(State(state): Shared, Extension(s): Extension<Session>) -> Response {
    let st = state.clone();
    let read = blocking(move || -> Result<Vec<JobRow>, String> {
        let jobs = st.runtime.job_statuses(Utc::now()).map_err(|e| e.to_string())?;
        Ok(jobs
            .into_iter()
            .map(|job| JobRow {
                next_run: match (job.enabled, job.next_run) {
                    (false, _) => "(disabled)".into(),
                    (true, next) => next.map(when).unwrap_or_default(),
                },
                last_run: job.last_run.as_ref().map(|r| r.id),
                last_status: job.last_run.as_ref().map(|r| r.status.as_str().to_string()).unwrap_or_default(),
                last_at: job.last_run.as_ref().map(|r| when(r.started_at)).unwrap_or_default(),
                name: job.name,
                schedule: job.schedule,
                script: job.script,
                enabled: job.enabled,
            })
            .collect())
    })
    .await;
    match read {
        Ok(Ok(jobs)) => render(StatusCode::OK, &JobsPage { nav: Nav::new(&s, "jobs"), jobs }),
        Ok(Err(e)) | Err(e) => message(&s, StatusCode::SERVICE_UNAVAILABLE, "Jobs", e),
    }
}

pub async fn run_job(
    State(state): Shared,
    Extension(s): Extension<Session>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if let Some(refused) = check_post(&s, &form(&body), true) {
        return refused;
    }
    if !state.runtime.jobs().contains_key(&name) {
        return message(&s, StatusCode::NOT_FOUND, "Run now", format!("There is no job {name:?}."));
    }
    tracing::info!(user = %s.user, job = %name, "Console: run a job now.");
    let st = state.clone();
    let ran = blocking(move || st.runtime.run_job(&name, "manual", &st.owner).map_err(|e| e.to_string())).await;
    state.wake.notify_one();
    match ran {
        Ok(Ok((run, _))) => redirect(&format!("/runs/{}", run.id)),
        Ok(Err(e)) | Err(e) => message(&s, StatusCode::CONFLICT, "Run now", e),
    }
}

// ---------------------------------------------------------------------------------------
// Connections and directories

struct ConnectionRow {
    name: String,
    base_url: String,
    auth: String,
    enabled: bool,
    token: String,
    unavailable: Option<String>,
    test: Option<TestResult>,
}

#[derive(Template)]
#[template(path = "connections.html")]
struct ConnectionsPage {
    nav: Nav,
    connections: Vec<ConnectionRow>,
}

fn last_test(state: &ConsoleState, key: &str) -> Option<TestResult> {
    state.tests.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
}

pub async fn connections(State(state): Shared, Extension(s): Extension<Session>) -> Response {
    let st = state.clone();
    let read = blocking(move || {
        st.runtime
            .connection_statuses()
            .into_iter()
            .map(|c| ConnectionRow {
                test: c.unavailable.is_none().then(|| last_test(&st, &format!("connection:{}", c.name))).flatten(),
                token: match (&c.token, &c.unavailable) {
                    (_, Some(_)) => String::new(),
                    (None, None) => "—".into(),
                    (Some(t), None) => t.to_string(),
                },
                name: c.name,
                base_url: c.base_url,
                auth: c.auth,
                enabled: c.enabled,
                unavailable: c.unavailable,
            })
            .collect::<Vec<_>>()
    })
    .await;
    match read {
        Ok(connections) => render(StatusCode::OK, &ConnectionsPage { nav: Nav::new(&s, "connections"), connections }),
        Err(e) => message(&s, StatusCode::SERVICE_UNAVAILABLE, "Connections", e),
    }
}

fn record_test(state: &ConsoleState, key: String, ok: bool, text: String) {
    let result = TestResult { at: when(Utc::now()), ok, text: crate::secret::redact(&text).into_owned() };
    state.tests.lock().unwrap_or_else(|e| e.into_inner()).insert(key, result);
}

pub async fn test_connection(
    State(state): Shared,
    Extension(s): Extension<Session>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if let Some(refused) = check_post(&s, &form(&body), true) {
        return refused;
    }
    let Some(conn) = state.runtime.hosts().connections.get(&name).cloned() else {
        return message(&s, StatusCode::NOT_FOUND, "Test", format!("There is no usable connection {name:?}."));
    };
    tracing::info!(user = %s.user, connection = %name, "Console: test a connection.");
    let st = state.clone();
    let outcome = blocking(move || st.runtime.hosts().block_on(conn.test_connection())).await;
    let (ok, text) = match outcome {
        Ok(Ok(Ok(o))) => (
            o.is_success(),
            format!(
                "{} {} -> {} in {} ms {}",
                o.method,
                o.path,
                o.status,
                o.elapsed.as_millis(),
                short(&o.body_excerpt, 200)
            ),
        ),
        Ok(Ok(Err(e))) => (false, e.to_string()),
        Ok(Err(e)) | Err(e) => (false, e),
    };
    record_test(&state, format!("connection:{name}"), ok, text);
    redirect("/connections")
}

struct DirectoryRow {
    name: String,
    kind: String,
    base_dn: String,
    users_ou: String,
    dry_run: bool,
    connections_opened: u64,
    test: Option<TestResult>,
}

#[derive(Template)]
#[template(path = "directories.html")]
struct DirectoriesPage {
    nav: Nav,
    directories: Vec<DirectoryRow>,
}

pub async fn directories(State(state): Shared, Extension(s): Extension<Session>) -> Response {
    let rows: Vec<DirectoryRow> = state
        .runtime
        .hosts()
        .directories
        .iter()
        .map(|(name, d)| DirectoryRow {
            name: name.clone(),
            kind: match d.kind() {
                crate::directory::DirectoryKind::ActiveDirectory => "active_directory".into(),
                crate::directory::DirectoryKind::Ldap => "ldap".into(),
            },
            base_dn: d.base_dn(),
            users_ou: d.users_ou(),
            dry_run: d.is_dry_run(),
            connections_opened: d.connections_opened(),
            test: last_test(&state, &format!("directory:{name}")),
        })
        .collect();
    render(StatusCode::OK, &DirectoriesPage { nav: Nav::new(&s, "directories"), directories: rows })
}

pub async fn test_directory(
    State(state): Shared,
    Extension(s): Extension<Session>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if let Some(refused) = check_post(&s, &form(&body), true) {
        return refused;
    }
    let Some(dir) = state.runtime.hosts().directories.get(&name).cloned() else {
        return message(&s, StatusCode::NOT_FOUND, "Test", format!("There is no directory {name:?}."));
    };
    tracing::info!(user = %s.user, directory = %name, "Console: test a directory.");
    let (ok, text) = if dir.is_dry_run() {
        (true, "dry run: nothing is connected (dry_run = true)".to_string())
    } else {
        let st = state.clone();
        let started = std::time::Instant::now();
        match blocking(move || st.runtime.hosts().block_on(dir.connect())).await {
            Ok(Ok(Ok(()))) => (true, format!("connected and bound in {} ms", started.elapsed().as_millis())),
            Ok(Ok(Err(e))) => (false, e.to_string()),
            Ok(Err(e)) | Err(e) => (false, e),
        }
    };
    record_test(&state, format!("directory:{name}"), ok, text);
    redirect("/directories")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_consoles_paths_are_places_to_go_back_to() {
        assert_eq!(safe_next("/runs?status=failed"), "/runs?status=failed");
        for bad in ["//evil.example.com/", "https://evil.example.com/", "/\\evil", "", "runs", "/login?next=/x"] {
            assert_eq!(safe_next(bad), "/", "{bad:?}");
        }
    }

    #[test]
    fn an_error_names_its_place() {
        assert_eq!(
            error_place("scripts/a.rhai:2:5: Function not found: coment"),
            Some(("scripts/a.rhai:2:5".into(), "scripts/a.rhai".into()))
        );
        assert_eq!(error_place("connection hr: GET /x answered 500"), None);
    }

    #[test]
    fn time_filters_read_the_usual_spellings() {
        let t = |s: &str| parse_time(s).map(|t| t.to_rfc3339());
        assert_eq!(t("2026-12-01T09:30"), Some("2026-12-01T09:30:00+00:00".into()));
        assert_eq!(t("2026-12-01"), Some("2026-12-01T00:00:00+00:00".into()));
        assert_eq!(t("2026-12-01T09:30:00+01:00"), Some("2026-12-01T08:30:00+00:00".into()));
        assert_eq!(t("yesterday"), None);
    }
}
