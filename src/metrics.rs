//! Metrics: the process-wide counters, gauges and histograms that `GET /metrics` serves in the
//! Prometheus (OpenMetrics) text format.
//!
//! Every subsystem records through the small functions of this module (`metrics::run_finished`,
//! `metrics::connection_error`, `metrics::directory_error`, ...), so none of them needs to know
//! about the registry or the exporter. The registry is global because the things it counts are
//! (one process, one daemon); label values are names from the configuration and rule files,
//! never record data, so their number stays bounded.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::store::Run;

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    rule: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    trigger: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    connection: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectoryLabels {
    directory: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    webhook: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    channel: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
    host: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Run durations from 1 ms to about a minute, doubling.
fn run_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric tripline exports.
struct Metrics {
    registry: Registry,
    events_ingested: Family<SourceLabels, Counter>,
    events_processed: Counter,
    runs: Family<RunLabels, Counter>,
    run_duration: HistogramFamily<RuleLabels>,
    reloads: Family<ReloadLabels, Counter>,
    files_in_error: Gauge,
    queue_depth: Gauge,
    connection_errors: Family<ConnectionLabels, Counter>,
    directory_errors: Family<DirectoryLabels, Counter>,
    webhook_requests: Family<WebhookLabels, Counter>,
    notifications: Family<ChannelLabels, Counter>,
    /// Of every worker of the store (this one's figures as it last told the store).
    worker_seen_age: Family<WorkerLabels, Gauge>,
    worker_events_processed: Family<WorkerLabels, Gauge>,
    worker_runs_failed: Family<WorkerLabels, Gauge>,
    /// This worker's own totals, for its heartbeat.
    runs_ok: std::sync::atomic::AtomicU64,
    runs_not_ok: std::sync::atomic::AtomicU64,
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            events_ingested: Family::default(),
            events_processed: Counter::default(),
            runs: Family::default(),
            run_duration: Family::new_with_constructor(run_histogram),
            reloads: Family::default(),
            files_in_error: Gauge::default(),
            queue_depth: Gauge::default(),
            connection_errors: Family::default(),
            directory_errors: Family::default(),
            webhook_requests: Family::default(),
            notifications: Family::default(),
            worker_seen_age: Family::default(),
            worker_events_processed: Family::default(),
            worker_runs_failed: Family::default(),
            runs_ok: Default::default(),
            runs_not_ok: Default::default(),
            registry: Registry::with_prefix("tripline"),
        };
        let mut m = m;
        let registry = &mut m.registry;
        registry.register(
            "events_ingested",
            "Events stored from outside (webhooks, the command line), by source",
            m.events_ingested.clone(),
        );
        registry.register("events_processed", "Events the dispatcher has processed", m.events_processed.clone());
        registry.register("runs", "Runs of rules and jobs, by rule and status", m.runs.clone());
        registry.register_with_unit(
            "run_duration",
            "How long runs took, by rule",
            prometheus_client::registry::Unit::Seconds,
            m.run_duration.clone(),
        );
        registry.register(
            "reloads",
            "Reloads of rules, scripts and configuration, by trigger and outcome",
            m.reloads.clone(),
        );
        registry.register(
            "catalog_files_in_error",
            "Rule and script files whose last good version is running because the current one has problems",
            m.files_in_error.clone(),
        );
        registry.register("queue_depth", "Events stored and not yet processed", m.queue_depth.clone());
        registry.register(
            "connection_errors",
            "Failed calls of HTTP connections, by connection and kind",
            m.connection_errors.clone(),
        );
        registry.register(
            "directory_errors",
            "Failed directory (LDAP) operations, by directory and kind",
            m.directory_errors.clone(),
        );
        registry.register(
            "webhook_requests",
            "Inbound webhook requests, by webhook and HTTP status",
            m.webhook_requests.clone(),
        );
        registry.register("notifications", "Notifications, by channel and outcome", m.notifications.clone());
        registry.register_with_unit(
            "worker_last_seen_age",
            "How long ago each worker of the store last beat (a dead worker's age grows)",
            prometheus_client::registry::Unit::Seconds,
            m.worker_seen_age.clone(),
        );
        registry.register(
            "worker_events_processed",
            "Events each worker of the store has processed since it started, as of its last beat",
            m.worker_events_processed.clone(),
        );
        registry.register(
            "worker_runs_failed",
            "Runs that did not end ok on each worker since it started, as of its last beat",
            m.worker_runs_failed.clone(),
        );
        m
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

fn m() -> &'static Metrics {
    &METRICS
}

/// An event was stored from outside; `source` names where from (`webhook:NAME`, `cli`).
pub fn event_ingested(source: &str) {
    m().events_ingested.get_or_create(&SourceLabels { source: source.to_string() }).inc();
}

/// The dispatcher finished processing an event.
pub fn event_processed() {
    m().events_processed.inc();
}

/// A run ended (any status): counted by rule and status, its duration observed.
pub fn run_finished(run: &Run) {
    let metrics = m();
    metrics.runs.get_or_create(&RunLabels { rule: run.rule.clone(), status: run.status.as_str().to_string() }).inc();
    metrics.run_duration.get_or_create(&RuleLabels { rule: run.rule.clone() }).observe(run.duration_ms as f64 / 1e3);
    let total = if run.status == crate::store::RunStatus::Ok { &metrics.runs_ok } else { &metrics.runs_not_ok };
    total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// This process's totals since it started, as its heartbeat tells the store.
pub fn worker_figures() -> serde_json::Value {
    let metrics = m();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    serde_json::json!({
        "events_processed": metrics.events_processed.get(),
        "runs_ok": load(&metrics.runs_ok),
        "runs_not_ok": load(&metrics.runs_not_ok),
    })
}

/// The store's workers as the store knows them (set when `/metrics` is scraped).
pub fn set_workers(workers: &[crate::store::Worker]) {
    let metrics = m();
    metrics.worker_seen_age.clear();
    metrics.worker_events_processed.clear();
    metrics.worker_runs_failed.clear();
    let now = chrono::Utc::now();
    for w in workers {
        let labels = WorkerLabels { worker: w.id.clone(), host: w.host.clone() };
        metrics.worker_seen_age.get_or_create(&labels).set((now - w.seen_at).num_seconds().max(0));
        let figure = |k: &str| w.figures.get(k).and_then(serde_json::Value::as_i64).unwrap_or(0);
        metrics.worker_events_processed.get_or_create(&labels).set(figure("events_processed"));
        metrics.worker_runs_failed.get_or_create(&labels).set(figure("runs_not_ok"));
    }
}

/// A reload was attempted. `trigger` is `files` or `signal`; `outcome` one of
/// [`crate::catalog::ReloadOutcome::as_str`]'s values.
pub fn reload(trigger: &str, outcome: &str) {
    m().reloads.get_or_create(&ReloadLabels { trigger: trigger.to_string(), outcome: outcome.to_string() }).inc();
}

/// How many rule and script files are in error now.
pub fn set_files_in_error(n: usize) {
    m().files_in_error.set(n as i64);
}

/// How many events wait (set when `/metrics` is scraped).
pub fn set_queue_depth(n: u64) {
    m().queue_depth.set(n.min(i64::MAX as u64) as i64);
}

/// A call through an HTTP connection failed. `kind` is short and fixed (`connect`, `timeout`,
/// `status_5xx`, `status_4xx`, `auth`, ...), never an error message.
pub fn connection_error(connection: &str, kind: &str) {
    m().connection_errors
        .get_or_create(&ConnectionLabels { connection: connection.to_string(), kind: kind.to_string() })
        .inc();
}

/// A directory operation failed. `kind` is short and fixed (`bind`, `connect`, `search`,
/// `modify`, ...), never an error message.
pub fn directory_error(directory: &str, kind: &str) {
    m().directory_errors
        .get_or_create(&DirectoryLabels { directory: directory.to_string(), kind: kind.to_string() })
        .inc();
}

/// An inbound webhook request was answered with `status` (`webhook` is `-` when no webhook has
/// the path).
pub fn webhook_request(webhook: &str, status: u16) {
    m().webhook_requests
        .get_or_create(&WebhookLabels { webhook: webhook.to_string(), status: status.to_string() })
        .inc();
}

/// A notification was sent, failed, or recorded in a dry run (`sent`, `failed`, `dry_run`).
pub fn notification(channel: &str, outcome: &str) {
    m().notifications
        .get_or_create(&ChannelLabels { channel: channel.to_string(), outcome: outcome.to_string() })
        .inc();
}

/// Every metric in the OpenMetrics text format ([`CONTENT_TYPE`]).
pub fn encode() -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &m().registry).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_in_the_text_format() {
        connection_error("metrics_unit_conn", "timeout");
        connection_error("metrics_unit_conn", "timeout");
        let now = chrono::Utc::now();
        run_finished(&Run {
            id: 1,
            rule: "metrics_unit_rule".into(),
            record_id: None,
            event_id: None,
            event: "created".into(),
            status: crate::store::RunStatus::Ok,
            error: None,
            duration_ms: 3,
            log: vec![],
            attempts: 1,
            started_at: now,
            finished_at: now,
            next_attempt_at: None,
            writes: Vec::new(),
        });
        let text = encode();
        assert!(
            text.contains(r#"tripline_connection_errors_total{connection="metrics_unit_conn",kind="timeout"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"tripline_runs_total{rule="metrics_unit_rule",status="ok"} 1"#), "{text}");
        assert!(
            text.contains(r#"tripline_run_duration_seconds_bucket{le="0.004",rule="metrics_unit_rule"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
