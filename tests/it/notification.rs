//! Notifications against real receivers on loopback: an HTTP receiver (wiremock) and an SMTP
//! sink. Scripts' `api.notify`, dry runs, failing receivers, failure and stale-job notices.

use std::sync::Arc;

use chrono::{Duration, Utc};
use serde_json::json;
use tripline::record::{from_value, EventKind};
use tripline::runtime::Runtime;
use tripline::store::{Run, RunStatus};
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::daemon::{config, write_files};
use crate::common::smtp::SmtpSink;

/// The path part of the receiver URL is its credential, as with Teams and Slack.
const HOOK_PATH: &str = "/hook/it-url-token-7731";

const RULE: &str = "name = \"Alert desk\"\nentity = \"ticket\"\nscript = \"alert.rhai\"\n\
                    conditions = [{ field = \"Created\", op = \"equals\", value = true }]\n";

fn runtime(extra: &str, script: &str) -> (tempfile::TempDir, Arc<Runtime>) {
    let dir = tempfile::tempdir().unwrap();
    write_files(
        dir.path(),
        &[("tripline.toml", &config(extra)), ("rules/alert.toml", RULE), ("scripts/alert.rhai", script)],
    );
    let rt = Runtime::builder().config_file(dir.path().join("tripline.toml")).build().unwrap();
    (dir, Arc::new(rt))
}

fn webhook_channel(server: &MockServer) -> String {
    format!(
        "[notify.desk]\ntype = \"webhook\"\nurl = \"{}{HOOK_PATH}\"\nheaders = {{ X-Api-Key = \"it-key-5512\" }}\n",
        server.uri()
    )
}

const NOTIFY_SCRIPT: &str = "api.notify(\"desk\", \"Disk full\", `${record.Device} is out of space`);";

/// Fires a created ticket on a blocking thread (sends block the caller) and returns its runs.
async fn fire(rt: &Arc<Runtime>, fields: serde_json::Value) -> Vec<Run> {
    let rt = rt.clone();
    tokio::task::spawn_blocking(move || rt.fire("ticket", EventKind::Created, from_value(fields).unwrap()).unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_notifies_a_webhook_channel() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(HOOK_PATH))
        .and(header("X-Api-Key", "it-key-5512"))
        .and(body_partial_json(json!({"subject": "Disk full", "body": "PC-17 is out of space"})))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let (_dir, rt) = runtime(&webhook_channel(&server), NOTIFY_SCRIPT);
    let runs = fire(&rt, json!({"Device": "PC-17"})).await;
    assert_eq!(runs[0].status, RunStatus::Ok, "{:?}", runs[0].error);
    assert_eq!(runs[0].log[0].message, "notified desk: Disk full");
    let received = server.received_requests().await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&received[0].body).unwrap();
    assert_eq!(body["text"], "Disk full\n\nPC-17 is out of space", "what Slack and Teams show");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_channel_delivers_over_smtp() {
    let sink = SmtpSink::start().await;
    let channel = format!(
        "[notify.desk]\ntype = \"email\"\nsmtp = \"smtp://{}\"\nstarttls = false\n\
         from = \"tripline <tripline@example.com>\"\nto = [\"desk@example.com\", \"ops@example.com\"]\n",
        sink.addr
    );
    let (_dir, rt) = runtime(&channel, NOTIFY_SCRIPT);
    let runs = fire(&rt, json!({"Device": "PC-3"})).await;
    assert_eq!(runs[0].status, RunStatus::Ok, "{:?}", runs[0].error);
    let mails = sink.mails();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail.from, "<tripline@example.com>");
    assert_eq!(mail.to, ["<desk@example.com>", "<ops@example.com>"]);
    assert!(mail.data.contains("Subject: Disk full\n"), "{}", mail.data);
    assert!(mail.data.contains("PC-3 is out of space"), "{}", mail.data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_record_the_notification_without_sending_it() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).expect(0).mount(&server).await;
    let (_dir, rt) = runtime(&webhook_channel(&server), NOTIFY_SCRIPT);
    let rt2 = rt.clone();
    let report = tokio::task::spawn_blocking(move || {
        rt2.explain("ticket", EventKind::Created, from_value(json!({"Device": "PC-1"})).unwrap(), None).unwrap()
    })
    .await
    .unwrap();
    assert!(report[0].matched && report[0].error.is_none(), "{:?}", report[0]);
    assert_eq!(report[0].log[0].message, "notify desk (dry run, not sent): Disk full");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_fails_the_run_for_a_retry_without_leaking_the_url() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(503)).mount(&server).await;
    let (_dir, rt) = runtime(&webhook_channel(&server), NOTIFY_SCRIPT);
    let runs = fire(&rt, json!({"Device": "PC-2"})).await;
    let run = &runs[0];
    assert_eq!(run.status, RunStatus::Retrying, "a 503 is worth another try");
    let error = run.error.as_deref().unwrap();
    assert!(error.contains("notification channel \"desk\"") && error.contains("503"), "{error}");
    assert!(!error.contains("it-url-token-7731"), "the URL is a credential: {error}");

    // An unknown channel is a plain failure that names the near miss.
    // A name computed at run time: a literal one is refused when the script loads.
    let (_dir, rt) = runtime(&webhook_channel(&server), "let channel = \"dsek\";\napi.notify(channel, \"s\", \"b\");");
    let runs = fire(&rt, json!({})).await;
    assert_eq!(runs[0].status, RunStatus::Failed);
    assert!(runs[0].error.as_deref().unwrap().contains("did you mean \"desk\""), "{:?}", runs[0].error);
}

fn failed_run(status: RunStatus) -> Run {
    let now = Utc::now();
    Run {
        id: 31,
        rule: "Process FlexHR user on AD".into(),
        record_id: Some("rec-1".into()),
        event_id: Some(5),
        event: "created".into(),
        status,
        error: Some("cannot bind to ActiveDirectory".into()),
        duration_ms: 12,
        log: vec![],
        attempts: 1,
        started_at: now,
        finished_at: now,
        next_attempt_at: None,
        writes: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_runs_notify_their_contacts_once_they_have_failed_for_good() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_partial_json(json!({"subject": "tripline: rule \"Process FlexHR user on AD\" failed"})))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let (_dir, rt) = runtime(&webhook_channel(&server), "1");
    let rt2 = rt.clone();
    tokio::task::spawn_blocking(move || {
        let contacts = ["desk".to_string()];
        rt2.hosts().notifier.run_failed(&contacts, &failed_run(RunStatus::Retrying));
        rt2.hosts().notifier.run_failed(&contacts, &failed_run(RunStatus::Failed));
    })
    .await
    .unwrap();
    let received = server.received_requests().await.unwrap();
    assert_eq!(received.len(), 1, "a run that will be retried has not failed yet");
    let body: serde_json::Value = serde_json::from_slice(&received[0].body).unwrap();
    let text = body["body"].as_str().unwrap();
    assert!(text.contains("cannot bind to ActiveDirectory") && text.contains("tripline replay 31"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_job_notifies_once_per_stale_period() {
    let sink = SmtpSink::start().await;
    let channel = format!(
        "[notify.contacts]\ntype = \"email\"\nsmtp = \"smtp://{}\"\nstarttls = false\n\
         from = \"tripline@example.com\"\nto = [\"integration-owner@example.com\"]\n",
        sink.addr
    );
    let (_dir, rt) = runtime(&channel, "1");
    let rt2 = rt.clone();
    let outcomes = tokio::task::spawn_blocking(move || {
        let notifier = &rt2.hosts().notifier;
        let store = rt2.store().as_ref();
        let contacts = ["contacts".to_string()];
        let day = Duration::hours(24);
        let now = Utc::now();
        let last_ok = now - Duration::hours(25);
        let check = |last: Option<chrono::DateTime<Utc>>, at| {
            notifier.job_stale(store, "flex_hr_sync", &contacts, last, now - Duration::hours(100), day, at).unwrap()
        };
        vec![
            check(Some(now - Duration::hours(2)), now),       // fresh: nothing
            check(Some(last_ok), now),                        // stale: notified
            check(Some(last_ok), now + Duration::minutes(5)), // still the same period: not again
            check(Some(now), now + Duration::hours(1)),       // a success ends the period
            check(Some(now), now + Duration::hours(30)),      // stale again: notified
        ]
    })
    .await
    .unwrap();
    assert_eq!(outcomes, [false, true, false, false, true]);
    let mails = sink.mails();
    assert_eq!(mails.len(), 2);
    assert!(
        mails[0].data.contains("Subject: tripline: job \"flex_hr_sync\" has not completed successfully"),
        "{}",
        mails[0].data
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_tell_their_contacts_when_they_fail_or_go_stale() {
    let sink = SmtpSink::start().await;
    let extra = format!(
        "[notify.contacts]\ntype = \"email\"\nsmtp = \"smtp://{}\"\nstarttls = false\n\
         from = \"tripline@example.com\"\nto = [\"integration-owner@example.com\"]\n\n\
         [jobs.sync_ok]\nschedule = \"0 0 1 1 *\"\nscript = \"job_ok.rhai\"\nnotify_on_failure = [\"contacts\"]\nstale_after = \"24h\"\n\n\
         [jobs.sync_bad]\nschedule = \"0 0 1 1 *\"\nscript = \"job_bad.rhai\"\nnotify_on_failure = [\"contacts\"]\n",
        sink.addr
    );
    let dir = tempfile::tempdir().unwrap();
    write_files(
        dir.path(),
        &[
            ("tripline.toml", &config(&extra)),
            ("rules/alert.toml", RULE),
            ("scripts/alert.rhai", "1"),
            ("scripts/job_ok.rhai", "1"),
            ("scripts/job_bad.rhai", "throw \"the HR API is down\";"),
        ],
    );
    let rt = Arc::new(Runtime::builder().config_file(dir.path().join("tripline.toml")).build().unwrap());

    // A failed scheduled run is told to the contacts; a successful one is remembered.
    let runner = tripline::daemon::RuntimeJobs(rt.clone(), "test-owner".into());
    use tripline::scheduler::JobRunner;
    assert!(runner.run_job(&rt.jobs()["sync_bad"], Utc::now()).await.is_err());
    assert!(runner.run_job(&rt.jobs()["sync_ok"], Utc::now()).await.is_ok());
    let mails = sink.mails();
    assert_eq!(mails.len(), 1);
    assert!(mails[0].data.contains("Subject: tripline: job \"sync_bad\" failed"), "{}", mails[0].data);
    assert!(mails[0].data.contains("the HR API is down"), "{}", mails[0].data);

    // Staleness, counted from that success: only sync_ok has `stale_after`.
    let rt2 = rt.clone();
    let reported = tokio::task::spawn_blocking(move || {
        let now = Utc::now();
        [now + Duration::hours(1), now + Duration::hours(25), now + Duration::hours(26)]
            .map(|at| rt2.check_stale_jobs(at).unwrap())
    })
    .await
    .unwrap();
    assert_eq!(reported, [0, 1, 0]);
    let mails = sink.mails();
    assert_eq!(mails.len(), 2);
    assert!(mails[1].data.contains("job \"sync_ok\" has not completed successfully"), "{}", mails[1].data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_with_notify_on_failure_tells_its_contacts_when_a_run_fails() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path(HOOK_PATH)).respond_with(ResponseTemplate::new(200)).mount(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let rule = format!("{RULE}notify_on_failure = [\"desk\"]\n");
    write_files(
        dir.path(),
        &[
            ("tripline.toml", &config(&webhook_channel(&server))),
            ("rules/alert.toml", &rule),
            ("scripts/alert.rhai", "if record.Device == \"bad\" { throw \"device unknown\"; }"),
        ],
    );
    let rt = Arc::new(Runtime::builder().config_file(dir.path().join("tripline.toml")).build().unwrap());
    assert_eq!(fire(&rt, json!({"Device": "ok"})).await[0].status, RunStatus::Ok);
    assert!(server.received_requests().await.unwrap().is_empty(), "an ok run notifies nobody");
    let runs = fire(&rt, json!({"Device": "bad"})).await;
    assert_eq!(runs[0].status, RunStatus::Failed);
    let received = server.received_requests().await.unwrap();
    assert_eq!(received.len(), 1, "one notice for the failed run");
    let body = String::from_utf8_lossy(&received[0].body);
    assert!(body.contains("Alert desk") && body.contains("device unknown"), "{body}");

    // A channel that does not exist is a `check` error at its place, and a problem the
    // runtime reports when it starts anyway (a broken rule file does not stop the others).
    std::fs::write(dir.path().join("rules/alert.toml"), format!("{RULE}notify_on_failure = [\"dsek\"]\n")).unwrap();
    let expected = "alert.toml:5:22: notify_on_failure names unknown channel \"dsek\"; did you mean \"desk\"?";
    let (problems, _) = tripline::cli::check_all(&dir.path().join("tripline.toml"));
    assert!(problems.iter().any(|p| p.to_string().contains(expected)), "{problems:?}");
    let rt = Runtime::builder().config_file(dir.path().join("tripline.toml")).build().unwrap();
    assert!(rt.start_problems().iter().any(|p| p.to_string().contains(expected)), "{:?}", rt.start_problems());
}
