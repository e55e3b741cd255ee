//! Notifications: the channels of `[notify.NAME]` (an outbound JSON webhook for Teams, Slack
//! or any HTTP receiver; email over SMTP) and the [`Notifier`] that sends through them.
//!
//! Scripts call `api.notify(channel, subject, body)`; the daemon tells a rule's or a job's
//! contacts when a run fails for good ([`Notifier::run_failed`]) and when a job has not
//! completed successfully for too long ([`Notifier::job_stale`], seed 001's "fails to complete
//! within 24 hours"). Sends are blocking for the caller (scripts and the dispatcher run on
//! blocking threads) but their I/O runs on one small runtime of its own, so the same HTTP
//! client and SMTP settings serve the daemon, the command line and embedders alike.
//!
//! ```toml
//! [notify.desk]
//! type = "webhook"
//! url = "${TEAMS_WEBHOOK_URL}"          # the URL is the credential of Teams and Slack webhooks
//! headers = { X-Api-Key = "${KEY}" }
//!
//! [notify.ops_mail]
//! type = "email"
//! smtp = "smtp://mail.example.com:587"  # smtps://... for implicit TLS
//! starttls = true                       # the default; credentials are refused without TLS
//! from = "tripline <tripline@example.com>"
//! to = ["servicedesk@example.com"]
//! username = "tripline"
//! password = "${SMTP_PASSWORD}"
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use toml::Spanned;
use tracing::{info, warn};

use crate::class::{Class, Classify};
use crate::diag::{CheckCtx, Diagnostic};
use crate::secret::redact;
use crate::secret::{Secret, SecretRef};
use crate::store::{Run, RunStatus, Store, StoreError};

/// How long one send may take before it fails (connect, TLS, the whole exchange).
const SEND_TIMEOUT: Duration = Duration::from_secs(15);

/// `[notify.NAME]` as written: `type = "webhook"` or `type = "email"`.
///
/// Read through a flat struct rather than `#[serde(tag = "type")]` because serde buffers
/// tagged enums, which loses the spans that [`SecretRef`] (a `toml::Spanned`) needs; the
/// conversion still rejects settings that belong to the other type.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawNotify")]
pub enum NotifyConfig {
    /// A JSON POST to a URL.
    Webhook(WebhookChannelConfig),
    /// An email over SMTP.
    Email(EmailChannelConfig),
}

/// `type = "webhook"`.
#[derive(Debug, Clone)]
pub struct WebhookChannelConfig {
    /// The receiver's URL; a secret, since Teams and Slack webhook URLs are credentials.
    pub url: SecretRef,
    /// Extra request headers; values may reference secrets.
    pub headers: BTreeMap<String, SecretRef>,
}

/// `type = "email"`.
#[derive(Debug, Clone)]
pub struct EmailChannelConfig {
    /// `smtp://host[:port]` (STARTTLS unless `starttls = false`; port 587, or 25 without TLS)
    /// or `smtps://host[:port]` (implicit TLS; port 465).
    pub smtp: Spanned<String>,
    pub from: Spanned<String>,
    pub to: Spanned<Vec<String>>,
    pub username: Option<SecretRef>,
    pub password: Option<SecretRef>,
    /// Require STARTTLS on `smtp://` (default true).
    pub starttls: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    #[serde(rename = "type")]
    kind: String,
    url: Option<SecretRef>,
    headers: Option<BTreeMap<String, SecretRef>>,
    smtp: Option<Spanned<String>>,
    from: Option<Spanned<String>>,
    to: Option<Spanned<Vec<String>>>,
    username: Option<SecretRef>,
    password: Option<SecretRef>,
    starttls: Option<bool>,
}

impl TryFrom<RawNotify> for NotifyConfig {
    type Error = String;

    fn try_from(r: RawNotify) -> Result<Self, String> {
        let misplaced = |present: bool, key: &str, owner: &str| {
            if present {
                Err(format!("`{key}` belongs to type = \"{owner}\", not type = \"{}\"", r.kind))
            } else {
                Ok(())
            }
        };
        match r.kind.as_str() {
            "webhook" => {
                misplaced(r.smtp.is_some(), "smtp", "email")?;
                misplaced(r.from.is_some(), "from", "email")?;
                misplaced(r.to.is_some(), "to", "email")?;
                misplaced(r.username.is_some(), "username", "email")?;
                misplaced(r.password.is_some(), "password", "email")?;
                misplaced(r.starttls.is_some(), "starttls", "email")?;
                Ok(NotifyConfig::Webhook(WebhookChannelConfig {
                    url: r.url.ok_or("a webhook channel needs `url`")?,
                    headers: r.headers.unwrap_or_default(),
                }))
            }
            "email" => {
                misplaced(r.url.is_some(), "url", "webhook")?;
                misplaced(r.headers.is_some(), "headers", "webhook")?;
                Ok(NotifyConfig::Email(EmailChannelConfig {
                    smtp: r.smtp.ok_or("an email channel needs `smtp` (smtp://host:port)")?,
                    from: r.from.ok_or("an email channel needs `from`")?,
                    to: r.to.ok_or("an email channel needs `to` (a list of addresses)")?,
                    username: r.username,
                    password: r.password,
                    starttls: r.starttls.unwrap_or(true),
                }))
            }
            other => {
                let hint = match crate::diag::did_you_mean(other, ["webhook", "email"]) {
                    Some(s) => format!("; did you mean {s:?}?"),
                    None => String::new(),
                };
                Err(format!("notification `type` is \"webhook\" or \"email\", not {other:?}{hint}"))
            }
        }
    }
}

impl NotifyConfig {
    /// The channel, secrets resolved; `None` when the section has a problem, which is
    /// recorded (every problem, each at its place).
    pub fn build(&self, name: &str, span: std::ops::Range<usize>, ctx: &mut CheckCtx) -> Option<Channel> {
        let errors = ctx.errors();
        let deferred = ctx.deferrals();
        let channel = match self {
            NotifyConfig::Webhook(w) => {
                let url = w.url.check(ctx, &format!("[notify.{name}] url")).filter(|url| match webhook_url(url) {
                    Ok(_) => true,
                    Err(e) => {
                        ctx.error(w.url.span(), format!("[notify.{name}] url: {e}"));
                        false
                    }
                });
                let mut headers = Vec::new();
                for (header, value) in &w.headers {
                    let header_name = reqwest::header::HeaderName::from_bytes(header.as_bytes());
                    if header_name.is_err() {
                        ctx.error(value.span(), format!("[notify.{name}] headers: {header:?} is not a header name"));
                    }
                    let value = value.check(ctx, &format!("[notify.{name}] headers.{header}"));
                    if let (Ok(n), Some(v)) = (header_name, value) {
                        headers.push((n, v));
                    }
                }
                url.map(|url| Channel::Webhook { url, headers })
            }
            NotifyConfig::Email(e) => {
                let endpoint = match smtp_endpoint(e.smtp.get_ref(), e.starttls) {
                    Ok(endpoint) => {
                        if e.username.is_some() != e.password.is_some() {
                            ctx.error(
                                span.clone(),
                                format!("[notify.{name}] needs both `username` and `password`, or neither"),
                            );
                        }
                        if e.password.is_some() && matches!(endpoint.tls, TlsMode::None) {
                            ctx.error(
                                e.smtp.span(),
                                format!(
                                    "[notify.{name}]: an SMTP password is only sent over TLS; use smtps:// or starttls = true"
                                ),
                            );
                        }
                        Some(endpoint)
                    }
                    Err(m) => {
                        ctx.error(e.smtp.span(), format!("[notify.{name}] smtp: {m}"));
                        None
                    }
                };
                let from = e
                    .from
                    .get_ref()
                    .parse::<Mailbox>()
                    .map_err(|m| ctx.error(e.from.span(), format!("[notify.{name}] from: not an email address: {m}")))
                    .ok();
                if e.to.get_ref().is_empty() {
                    ctx.error(e.to.span(), format!("[notify.{name}] to: needs at least one address"));
                }
                let mut to = Vec::new();
                for t in e.to.get_ref() {
                    match t.parse::<Mailbox>() {
                        Ok(m) => to.push(m),
                        Err(m) => {
                            ctx.error(e.to.span(), format!("[notify.{name}] to: {t:?} is not an email address: {m}"))
                        }
                    }
                }
                let username = e.username.as_ref().and_then(|u| u.check(ctx, &format!("[notify.{name}] username")));
                let password = e.password.as_ref().and_then(|p| p.check(ctx, &format!("[notify.{name}] password")));
                let transport = endpoint.and_then(|endpoint| {
                    let tls = |host: &str| TlsParameters::new(host.to_string());
                    let tls = match endpoint.tls {
                        TlsMode::None => Ok(Tls::None),
                        TlsMode::StartTls => tls(&endpoint.host).map(Tls::Required),
                        TlsMode::Implicit => tls(&endpoint.host).map(Tls::Wrapper),
                    };
                    let tls = tls.map_err(|m| ctx.error(e.smtp.span(), format!("[notify.{name}] smtp: {m}"))).ok()?;
                    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(endpoint.host.clone())
                        .port(endpoint.port)
                        .timeout(Some(SEND_TIMEOUT))
                        .tls(tls);
                    if let (Some(u), Some(p)) = (&username, &password) {
                        builder = builder.credentials(Credentials::new(u.expose().to_string(), p.expose().to_string()));
                    }
                    Some(builder.build())
                });
                transport.zip(from).map(|(transport, from)| Channel::Email { transport: Box::new(transport), from, to })
            }
        };
        if ctx.errors() > errors || ctx.deferrals() > deferred {
            return None;
        }
        channel
    }
}

fn webhook_url(url: &Secret) -> Result<reqwest::Url, String> {
    // The message names no part of the URL: it may be the credential.
    let parsed = reqwest::Url::parse(url.expose()).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("the URL must be http:// or https://".into());
    }
    Ok(parsed)
}

#[derive(Debug, Clone, Copy)]
enum TlsMode {
    None,
    StartTls,
    Implicit,
}

struct SmtpEndpoint {
    host: String,
    port: u16,
    tls: TlsMode,
}

fn smtp_endpoint(text: &str, starttls: bool) -> Result<SmtpEndpoint, String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a URL ({e}); write smtp://host:port"))?;
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or("the URL has no host")?.to_string();
    let (tls, default_port) = match (url.scheme(), starttls) {
        ("smtps", _) => (TlsMode::Implicit, 465),
        ("smtp", true) => (TlsMode::StartTls, 587),
        ("smtp", false) => (TlsMode::None, 25),
        (other, _) => return Err(format!("the scheme is smtp:// or smtps://, not {other}://")),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err("put credentials in `username` and `password`, not in the URL".into());
    }
    Ok(SmtpEndpoint { host, port: url.port().unwrap_or(default_port), tls })
}

/// A channel ready to send.
pub enum Channel {
    Webhook { url: Secret, headers: Vec<(reqwest::header::HeaderName, Secret)> },
    Email { transport: Box<AsyncSmtpTransport<Tokio1Executor>>, from: Mailbox, to: Vec<Mailbox> },
}

/// Why a notification was not sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("no notification channel named {name:?}{hint}")]
    UnknownChannel { name: String, hint: String },
    #[error("notification channel {channel:?}: {message}")]
    Failed {
        channel: String,
        message: String,
        /// Transient when the receiver was unreachable or answered 408, 429 or 5xx.
        class: Class,
    },
}

impl Classify for NotifyError {
    fn class(&self) -> Class {
        match self {
            NotifyError::UnknownChannel { .. } => Class::Permanent,
            NotifyError::Failed { class, .. } => *class,
        }
    }
}

/// The runtime that performs notification I/O, whoever asks: one worker, started on first use.
static IO: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tripline-notify")
        .enable_all()
        .build()
        .expect("the notification runtime starts")
});

/// The configured channels, replaceable at runtime (a SIGHUP with new `[notify]` sections).
pub struct Notifier {
    channels: ArcSwap<HashMap<String, Arc<Channel>>>,
    /// Built on the first send: building one loads the system's CA certificates, a good part
    /// of a short command's start (`tripline fire` on a few records) when nothing is sent.
    http: std::sync::OnceLock<reqwest::Client>,
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier::new(BTreeMap::new())
    }
}

impl Notifier {
    /// A notifier with these channels (`[notify]`, built with the configuration).
    pub fn new(channels: BTreeMap<String, Arc<Channel>>) -> Notifier {
        Notifier { channels: ArcSwap::from_pointee(channels.into_iter().collect()), http: Default::default() }
    }

    fn http(&self) -> reqwest::Client {
        self.http
            .get_or_init(|| crate::tls::client_builder().timeout(SEND_TIMEOUT).build().expect("the HTTP client builds"))
            .clone()
    }

    /// Replaces the channels (configuration reload); sends in progress finish on the old ones.
    pub fn replace(&self, channels: BTreeMap<String, Arc<Channel>>) {
        self.channels.store(Arc::new(channels.into_iter().collect()));
    }

    /// The channel names, sorted.
    pub fn channels(&self) -> Vec<String> {
        let mut names: Vec<String> = self.channels.load().keys().cloned().collect();
        names.sort();
        names
    }

    /// Checks that a channel exists (a dry run's `notify` validates without sending).
    pub fn check_channel(&self, name: &str) -> Result<(), NotifyError> {
        self.channel(name).map(|_| ())
    }

    fn channel(&self, name: &str) -> Result<Arc<Channel>, NotifyError> {
        let channels = self.channels.load();
        channels.get(name).cloned().ok_or_else(|| NotifyError::UnknownChannel {
            name: name.to_string(),
            hint: match crate::diag::did_you_mean(name, channels.keys().map(String::as_str)) {
                Some(s) => format!("; did you mean {s:?}?"),
                None if channels.is_empty() => "; no [notify.NAME] channel is configured".into(),
                None => format!("; configured: {}", self.channels().join(", ")),
            },
        })
    }

    /// Sends, waiting for the outcome. Call it from a blocking thread (a script, the
    /// dispatcher's workers, the command line), never from an async task: those use
    /// [`Notifier::send_async`].
    pub fn send(&self, channel: &str, subject: &str, body: &str) -> Result<(), NotifyError> {
        let ch = self.channel(channel)?;
        let fut = deliver(self.http(), ch, channel.to_string(), subject.to_string(), body.to_string());
        let (tx, rx) = std::sync::mpsc::channel();
        IO.spawn(async move {
            let _ = tx.send(fut.await);
        });
        let outcome = rx.recv().unwrap_or_else(|_| {
            Err(NotifyError::Failed {
                channel: channel.into(),
                message: "the send was abandoned".into(),
                class: Class::Transient,
            })
        });
        record(channel, &outcome);
        outcome
    }

    /// Sends from an async task. Dropping the future (a run's deadline) abandons the send.
    pub async fn send_async(&self, channel: &str, subject: &str, body: &str) -> Result<(), NotifyError> {
        /// Aborts the delivery task when the waiting future is dropped, so that a deadline
        /// really ends the send instead of leaving it running behind the run.
        struct AbortOnDrop(tokio::task::AbortHandle);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let ch = self.channel(channel)?;
        let fut = deliver(self.http(), ch, channel.to_string(), subject.to_string(), body.to_string());
        let task = IO.spawn(fut);
        let _abort = AbortOnDrop(task.abort_handle());
        let outcome = task.await.unwrap_or_else(|e| {
            Err(NotifyError::Failed {
                channel: channel.into(),
                message: format!("the send failed: {e}"),
                class: Class::Transient,
            })
        });
        record(channel, &outcome);
        outcome
    }

    /// Tells `contacts` that a run failed for good (status `failed` or `dead`; other statuses
    /// are ignored: a run that will be retried has not failed yet). Blocking; failures to
    /// notify are logged, never raised: the run's own failure is what matters.
    ///
    /// The runtime calls it after committing a rule's run, with the rule's
    /// `notify_on_failure` as `contacts`; jobs reach it through [`Notifier::job_finished`].
    pub fn run_failed(&self, contacts: &[String], run: &Run) {
        if contacts.is_empty() || !matches!(run.status, RunStatus::Failed | RunStatus::Dead) {
            return;
        }
        let (subject, body) = failure_message(run);
        for c in contacts {
            match self.send(c, &subject, &body) {
                Ok(()) => info!(channel = %c, rule = %run.rule, run = run.id, "Failure notification sent."),
                Err(e) => {
                    warn!(channel = %c, rule = %run.rule, run = run.id, error = %e, "Failure notification not sent.")
                }
            }
        }
    }

    /// Tells `contacts` that job `job` has not completed successfully for longer than
    /// `max_age` (seed 001: 24 hours), once per stale period: the period is remembered in the
    /// store, so neither the next tick nor a restart repeats the message, and a later success
    /// starts a new period. `last_success` is the end of the job's last `ok` run; `since` is
    /// when the job started being expected to run (the daemon's start, or the job's first
    /// schedule) and counts when it never succeeded. Returns whether contacts were notified.
    ///
    /// The daemon calls it every minute through [`Notifier::check_stale`].
    #[allow(clippy::too_many_arguments)]
    pub fn job_stale(
        &self,
        store: &dyn Store,
        job: &str,
        contacts: &[String],
        last_success: Option<DateTime<Utc>>,
        since: DateTime<Utc>,
        max_age: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let reference = last_success.unwrap_or(since);
        if contacts.is_empty() || now - reference < max_age {
            return Ok(false);
        }
        let key = format!("stale:{job}");
        let marker = serde_json::Value::String(reference.to_rfc3339());
        if store.kv_get(STATE, &key)?.as_ref() == Some(&marker) {
            return Ok(false);
        }
        let hours = (now - reference).num_minutes() as f64 / 60.0;
        let subject = format!("tripline: job {job:?} has not completed successfully for {hours:.1} hours");
        let body = match last_success {
            Some(t) => format!(
                "Job {job:?} last completed successfully at {t}. The limit is {} hours.\n\n\
                 Its recent runs: tripline runs --rule job:{job}",
                max_age.num_hours()
            ),
            None => format!(
                "Job {job:?} has not completed successfully since {since}. The limit is {} hours.\n\n\
                 Its recent runs: tripline runs --rule job:{job}",
                max_age.num_hours()
            ),
        };
        let mut sent = false;
        for c in contacts {
            match self.send(c, &subject, &body) {
                Ok(()) => sent = true,
                Err(e) => warn!(channel = %c, job, error = %e, "Stale job notification not sent."),
            }
        }
        // Remembered only once someone was told, so a channel that was down is tried again.
        if sent {
            store.kv_set(STATE, &key, &marker)?;
        }
        Ok(sent)
    }
}

/// The key-value namespace of the notifier's own state.
const STATE: &str = "notify";

/// The problem of a `notify_on_failure` entry of the file at `path` (a rule file, or the
/// configuration for a job) that names none of the `channels`, placed at the name in the file.
pub fn unknown_contact(channels: &BTreeSet<String>, path: &Path, name: &str) -> Option<Diagnostic> {
    if channels.contains(name) {
        return None;
    }
    let source = std::fs::read_to_string(path).unwrap_or_default();
    let span = source.find(&format!("\"{name}\"")).map(|i| i..i + name.len() + 2);
    let hint = match crate::diag::did_you_mean(name, channels.iter().map(String::as_str)) {
        Some(s) => format!("; did you mean {s:?}?"),
        None if channels.is_empty() => "; the configuration has no [notify] channels".into(),
        None => format!("; channels are {}", channels.iter().cloned().collect::<Vec<_>>().join(", ")),
    };
    Some(Diagnostic::span(path, &source, span, format!("notify_on_failure names unknown channel {name:?}{hint}")))
}

impl Notifier {
    /// After a job's run: a success is remembered in `store` (for [`Notifier::check_stale`]);
    /// a failure is told to the job's `notify_on_failure` contacts. Blocking.
    pub fn job_finished(&self, store: &dyn Store, contacts: &[String], run: &Run) {
        let job = run.rule.strip_prefix("job:").unwrap_or(&run.rule);
        if run.status == RunStatus::Ok {
            let at = serde_json::Value::String(run.finished_at.to_rfc3339());
            if let Err(e) = store.kv_set(STATE, &format!("last_success:{job}"), &at) {
                warn!(job, error = %e, "Cannot record the job's success; its staleness check may notify early.");
            }
        } else {
            self.run_failed(contacts, run);
        }
    }

    /// Tells `contacts` (once per stale period, see [`Notifier::job_stale`]) when job `job` has
    /// gone without a successful run for `stale_after`. A job that never succeeded counts from
    /// when tripline first checked it. Blocking; returns whether contacts were told.
    pub fn check_stale(
        &self,
        store: &dyn Store,
        job: &str,
        contacts: &[String],
        stale_after: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let time = |key: &str| -> Result<Option<DateTime<Utc>>, StoreError> {
            Ok(match store.kv_get(STATE, key)? {
                Some(serde_json::Value::String(s)) => {
                    DateTime::parse_from_rfc3339(&s).ok().map(|t| t.with_timezone(&Utc))
                }
                _ => None,
            })
        };
        let since = match time(&format!("watched_since:{job}"))? {
            Some(t) => t,
            None => {
                store.kv_set(STATE, &format!("watched_since:{job}"), &serde_json::Value::String(now.to_rfc3339()))?;
                now
            }
        };
        let last_success = time(&format!("last_success:{job}"))?;
        let max_age = chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::MAX);
        self.job_stale(store, job, contacts, last_success, since, max_age, now)
    }
}

fn record(channel: &str, outcome: &Result<(), NotifyError>) {
    crate::metrics::notification(channel, if outcome.is_ok() { "sent" } else { "failed" });
}

/// The subject and body of a failure notification.
pub fn failure_message(run: &Run) -> (String, String) {
    let what = match run.rule.strip_prefix("job:") {
        Some(job) => format!("job {job:?}"),
        None => format!("rule {:?}", run.rule),
    };
    let subject = format!("tripline: {what} {}", if run.status == RunStatus::Dead { "gave up" } else { "failed" });
    let mut body = format!("Run #{} of {what} ended {}", run.id, run.status.as_str());
    if run.attempts > 1 {
        body.push_str(&format!(" after {} attempts", run.attempts));
    }
    body.push_str(&format!(" at {}.\n", run.finished_at.to_rfc3339()));
    if let Some(r) = &run.record_id {
        body.push_str(&format!("Record: {r} ({} event)\n", run.event));
    }
    if let Some(e) = &run.error {
        body.push_str(&format!("Error: {e}\n"));
    }
    body.push_str(&format!("\nDetails: tripline runs --failed\nRun it again: tripline replay {}\n", run.id));
    (subject, redact(&body).into_owned())
}

/// Performs one send.
async fn deliver(
    http: reqwest::Client,
    channel: Arc<Channel>,
    name: String,
    subject: String,
    body: String,
) -> Result<(), NotifyError> {
    let fail = |message: String, class: Class| NotifyError::Failed {
        channel: name.clone(),
        message: redact(&message).into_owned(),
        class,
    };
    match &*channel {
        Channel::Webhook { url, headers } => {
            // `text` is what Slack and Teams show; `subject` and `body` are for receivers of
            // our own (a Power Automate flow, a ticketing system's inbound hook).
            let payload = serde_json::json!({
                "subject": subject,
                "body": body,
                "title": subject,
                "text": format!("{subject}\n\n{body}"),
            });
            let mut req = http.post(url.expose()).json(&payload);
            for (k, v) in headers {
                req = req.header(k, v.expose());
            }
            // reqwest's errors may quote the URL, which is a credential here: say only what
            // kind of failure it was.
            let resp = req.send().await.map_err(|e| {
                let kind = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "cannot connect"
                } else {
                    "request failed"
                };
                fail(format!("the receiver {kind}"), Class::Transient)
            })?;
            let status = resp.status();
            if status.is_success() {
                Ok(())
            } else {
                Err(fail(format!("the receiver answered HTTP {status}"), Class::of_http_status(status.as_u16())))
            }
        }
        Channel::Email { transport, from, to } => {
            let mut builder = Message::builder().from(from.clone()).subject(subject).header(ContentType::TEXT_PLAIN);
            for t in to {
                builder = builder.to(t.clone());
            }
            let message =
                builder.body(body).map_err(|e| fail(format!("cannot build the message: {e}"), Class::Permanent))?;
            match transport.send(message).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    let class = if e.is_permanent() { Class::Permanent } else { Class::Transient };
                    Err(fail(format!("SMTP: {e}"), class))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NotifyConfig, String> {
        toml::from_str::<BTreeMap<String, NotifyConfig>>(text)
            .map(|mut m| m.remove("n").unwrap())
            .map_err(|e| e.message().to_string())
    }

    #[test]
    fn channel_types_take_only_their_own_settings() {
        assert!(matches!(parse("n = { type = \"webhook\", url = \"http://x\" }"), Ok(NotifyConfig::Webhook(_))));
        let e = parse("n = { type = \"webhook\", url = \"http://x\", smtp = \"smtp://h\" }").unwrap_err();
        assert!(e.contains("`smtp` belongs to type = \"email\""), "{e}");
        let e = parse("n = { type = \"emial\" }").unwrap_err();
        assert!(e.contains("did you mean \"email\""), "{e}");
        let e = parse("n = { type = \"email\", smtp = \"smtp://h\", from = \"a@b\" }").unwrap_err();
        assert!(e.contains("needs `to`"), "{e}");
    }

    #[test]
    fn smtp_urls_choose_tls_and_ports() {
        let e = smtp_endpoint("smtp://mail.example.com", true).unwrap();
        assert!(matches!(e.tls, TlsMode::StartTls) && e.port == 587);
        let e = smtp_endpoint("smtp://127.0.0.1:2525", false).unwrap();
        assert!(matches!(e.tls, TlsMode::None) && e.port == 2525 && e.host == "127.0.0.1");
        let e = smtp_endpoint("smtps://mail.example.com", true).unwrap();
        assert!(matches!(e.tls, TlsMode::Implicit) && e.port == 465);
        assert!(smtp_endpoint("http://x", true).is_err());
        assert!(smtp_endpoint("smtp://u:p@x", true).is_err());
    }

    #[test]
    fn failure_messages_name_the_rule_and_the_way_back() {
        let now = Utc::now();
        let run = Run {
            id: 42,
            rule: "Process FlexHR user on AD".into(),
            record_id: Some("r1".into()),
            event_id: Some(7),
            event: "created".into(),
            status: RunStatus::Dead,
            error: Some("directory unreachable".into()),
            duration_ms: 3,
            log: vec![],
            attempts: 8,
            started_at: now,
            finished_at: now,
            next_attempt_at: None,
            writes: Vec::new(),
        };
        let (subject, body) = failure_message(&run);
        assert_eq!(subject, "tripline: rule \"Process FlexHR user on AD\" gave up");
        assert!(body.contains("after 8 attempts") && body.contains("directory unreachable"), "{body}");
        assert!(body.contains("tripline replay 42"), "{body}");
    }

    #[test]
    fn unknown_channels_suggest_the_near_name() {
        let mut channels = BTreeMap::new();
        let desk = Channel::Webhook { url: Secret::new("http://127.0.0.1:9"), headers: vec![] };
        channels.insert("desk".to_string(), Arc::new(desk));
        let n = Notifier::new(channels);
        let e = n.send("dsk", "s", "b").unwrap_err();
        assert!(e.to_string().contains("did you mean \"desk\""), "{e}");
    }
}
