//! The daemon: hot reload of rules and scripts (edits, broken files, deletions, editor saves,
//! folders replaced wholesale), configuration reload, reloads under load, graceful shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tripline::catalog::Catalog;
use tripline::record::EventKind;
use tripline::script::Api;
use tripline::store::{Ingest, RunFilter, RunStatus};

use crate::common::daemon::{config, eventually, TestDaemon};

fn rule(name: &str, source: &str, script: &str) -> String {
    format!(
        "name = \"{name}\"\nentity = \"ticket\"\nscript = \"{script}\"\n\
         conditions = [{{ field = \"Source\", op = \"equals\", value = \"{source}\" }}]\n"
    )
}

fn log_of(run: &tripline::store::Run) -> Vec<String> {
    run.log.iter().map(|l| l.message.clone()).collect()
}

async fn wait_catalog(d: &TestDaemon, what: &str, cond: impl Fn(&Catalog) -> bool) {
    eventually(what, || {
        let ok = cond(&d.runtime.catalog());
        async move { ok }
    })
    .await;
}

fn source_of(c: &Catalog, rule: &str) -> Option<serde_json::Value> {
    use tripline::rule::condition::Op;
    match &c.rules.get(rule)?.conditions.first()?.op {
        Op::Equals(v) => Some(v.clone()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_rule_condition_applies_to_the_next_event() {
    let d = TestDaemon::start(
        &config(""),
        &[
            ("rules/echo.toml", &rule("Echo", "A", "echo.rhai")),
            ("scripts/echo.rhai", "api.info(`saw ${record.Source}`);"),
        ],
    )
    .await;
    let before = d.submit("ticket", json!({"Source": "A"}));
    assert_eq!(log_of(&d.runs_of(before.id).await[0]), ["saw A"]);

    d.write("rules/echo.toml", &rule("Echo", "B", "echo.rhai"));
    wait_catalog(&d, "the new condition", |c| source_of(c, "Echo") == Some(json!("B"))).await;
    let a = d.submit("ticket", json!({"Source": "A"}));
    let b = d.submit("ticket", json!({"Source": "B"}));
    assert_eq!(log_of(&d.runs_of(b.id).await[0]), ["saw B"]);
    d.drained().await;
    assert!(d.runtime.store().runs_of_event(a.id).unwrap().is_empty(), "A no longer matches");
    let h = d.healthz().await;
    assert_eq!(h["last_reload"]["outcome"], "applied", "{h}");
    assert_eq!(h["status"], "ok");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_script_keeps_its_last_good_version_until_fixed() {
    let d = TestDaemon::start(
        &config(""),
        &[("rules/echo.toml", &rule("Echo", "A", "echo.rhai")), ("scripts/echo.rhai", "api.info(\"v1\");")],
    )
    .await;
    d.write("scripts/echo.rhai", "let x = 1;\napi.info(\"v2\" ;\n");
    eventually("the error in /healthz", || async {
        d.healthz().await["files_in_error"].as_array().unwrap().len() == 1
    })
    .await;
    let h = d.healthz().await;
    let problem = &h["files_in_error"][0];
    let expected_prefix = format!("{}:2:", d.path("scripts/echo.rhai").display());
    assert!(problem["diagnostic"].as_str().unwrap().starts_with(&expected_prefix), "{h}");
    assert_eq!(problem["line"], 2);
    assert!(problem["message"].as_str().unwrap().contains("last good version keeps running"), "{h}");
    assert_eq!((h["status"].as_str(), h["last_reload"]["outcome"].as_str()), (Some("degraded"), Some("partial")));

    let e = d.submit("ticket", json!({"Source": "A"}));
    let run = &d.runs_of(e.id).await[0];
    assert_eq!((run.status, log_of(run)), (RunStatus::Ok, vec!["v1".to_string()]));

    d.write("scripts/echo.rhai", "api.info(\"v3\");\n");
    eventually("the error cleared", || async { d.healthz().await["files_in_error"].as_array().unwrap().is_empty() })
        .await;
    let e = d.submit("ticket", json!({"Source": "A"}));
    assert_eq!(log_of(&d.runs_of(e.id).await[0]), ["v3"]);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_rule_file_keeps_running_while_other_files_change() {
    let d = TestDaemon::start(
        &config(""),
        &[
            ("rules/one.toml", &rule("One", "A", "echo.rhai")),
            ("rules/sub/two.toml", &rule("Two", "A", "echo.rhai")),
            ("scripts/echo.rhai", "api.info(`${rule}`);"),
        ],
    )
    .await;
    d.write("rules/one.toml", "name = \"One\"\nentity = \"ticket\"\nscript = \"echo.rhai\"\nconditions = [{ field = \"Source\", op = \"equls\", value = \"B\" }]\n");
    d.write("rules/sub/two.toml", &rule("Two", "B", "echo.rhai"));
    wait_catalog(&d, "rule Two's new condition", |c| source_of(c, "Two") == Some(json!("B"))).await;
    let h = d.healthz().await;
    let diag = h["files_in_error"][0]["diagnostic"].as_str().unwrap();
    assert!(diag.starts_with(&format!("{}:4:", d.path("rules/one.toml").display())), "{h}");
    assert!(diag.contains("did you mean `equals`"), "{h}");
    let a = d.submit("ticket", json!({"Source": "A"}));
    let runs = d.runs_of(a.id).await;
    assert_eq!(runs.iter().map(|r| r.rule.as_str()).collect::<Vec<_>>(), ["One"], "One keeps its last good version");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_script_is_reported_and_its_last_good_version_runs() {
    let d = TestDaemon::start(
        &config(""),
        &[
            ("rules/echo.toml", &rule("Echo", "A", "lib/echo.rhai")),
            ("scripts/lib/echo.rhai", "api.info(\"still here\");"),
        ],
    )
    .await;
    d.remove("scripts/lib/echo.rhai");
    eventually("the missing script in /healthz", || async {
        d.healthz().await["files_in_error"].as_array().unwrap().len() == 1
    })
    .await;
    let h = d.healthz().await;
    let diag = h["files_in_error"][0]["diagnostic"].as_str().unwrap();
    assert!(diag.starts_with(&format!("{}:3:", d.path("rules/echo.toml").display())), "{h}");
    assert!(diag.contains("\"lib/echo.rhai\" does not exist") && diag.contains("last good version"), "{h}");
    let e = d.submit("ticket", json!({"Source": "A"}));
    assert_eq!(log_of(&d.runs_of(e.id).await[0]), ["still here"]);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saves_by_rename_and_replace_apply() {
    let d = TestDaemon::start(
        &config(""),
        &[("rules/echo.toml", &rule("Echo", "A", "echo.rhai")), ("scripts/echo.rhai", "api.info(\"v1\");")],
    )
    .await;
    let before = d.runtime.catalog().scripts["echo.rhai"].clone();
    d.save_by_rename("scripts/echo.rhai", "api.info(\"v2\");");
    wait_catalog(&d, "the new script", |c| !Arc::ptr_eq(&c.scripts["echo.rhai"], &before)).await;
    d.save_by_rename("rules/echo.toml", &rule("Echo", "B", "echo.rhai"));
    wait_catalog(&d, "the new rule", |c| source_of(c, "Echo") == Some(json!("B"))).await;
    let e = d.submit("ticket", json!({"Source": "B"}));
    assert_eq!(log_of(&d.runs_of(e.id).await[0]), ["v2"]);
    assert!(d.healthz().await["files_in_error"].as_array().unwrap().is_empty(), "swap files are not rules");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folders_replaced_wholesale_are_followed() {
    let d = TestDaemon::start(
        &config(""),
        &[("rules/echo.toml", &rule("Echo", "A", "echo.rhai")), ("scripts/echo.rhai", "api.info(\"v1\");")],
    )
    .await;
    // A deployment that swaps the whole rules folder.
    crate::common::daemon::write_files(d.dir.path(), &[("rules.new/echo.toml", &rule("Echo", "B", "echo.rhai"))]);
    std::fs::rename(d.path("rules"), d.path("rules.old")).unwrap();
    std::fs::rename(d.path("rules.new"), d.path("rules")).unwrap();
    wait_catalog(&d, "the swapped folder's rule", |c| source_of(c, "Echo") == Some(json!("B"))).await;
    // The new folder is watched in its turn.
    d.write("rules/echo.toml", &rule("Echo", "C", "echo.rhai"));
    wait_catalog(&d, "an edit in the new folder", |c| source_of(c, "Echo") == Some(json!("C"))).await;
    d.stop().await;
}

/// Kubernetes mounts a ConfigMap as a folder whose files are symlinks through `..data`, a
/// symlink to a timestamped folder that an update replaces atomically.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swaps_are_followed() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("scripts");
    let layer = |name: &str, text: &str| {
        std::fs::create_dir_all(scripts.join(name)).unwrap();
        std::fs::write(scripts.join(name).join("echo.rhai"), text).unwrap();
    };
    layer("..2024_01_01_v1", "api.info(\"v1\");");
    std::os::unix::fs::symlink("..2024_01_01_v1", scripts.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/echo.rhai", scripts.join("echo.rhai")).unwrap();
    crate::common::daemon::write_files(
        dir.path(),
        &[("tripline.toml", &config("")), ("rules/echo.toml", &rule("Echo", "A", "echo.rhai"))],
    );
    let runtime = tripline::runtime::Runtime::builder().config_file(dir.path().join("tripline.toml")).build().unwrap();
    let d = TestDaemon::run(dir, Arc::new(runtime)).await;
    let e = d.submit("ticket", json!({"Source": "A"}));
    assert_eq!(log_of(&d.runs_of(e.id).await[0]), ["v1"]);

    let before = d.runtime.catalog().scripts["echo.rhai"].clone();
    layer("..2024_01_02_v2", "api.info(\"v2\");");
    std::os::unix::fs::symlink("..2024_01_02_v2", scripts.join("..data_tmp")).unwrap();
    std::fs::rename(scripts.join("..data_tmp"), scripts.join("..data")).unwrap();
    std::fs::remove_dir_all(scripts.join("..2024_01_01_v1")).unwrap();
    wait_catalog(&d, "the swapped script", |c| !Arc::ptr_eq(&c.scripts["echo.rhai"], &before)).await;
    let e = d.submit("ticket", json!({"Source": "A"}));
    assert_eq!(log_of(&d.runs_of(e.id).await[0]), ["v2"]);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_configuration_and_rejects_an_invalid_one() {
    let d = TestDaemon::start(&config(""), &[]).await;
    let url = d.url("/hooks/new");
    assert_eq!(d.http.post(&url).body("{}").send().await.unwrap().status(), 404);

    // Invalid: a typo in a section. Rejected, reported, nothing changes.
    d.write("tripline.toml", &config("[webhooks.new]\npath = \"/hooks/new\"\nentity = \"ticket\"\nauth = { type = \"none\" }\nevnt = \"created\"\n"));
    d.sighup();
    eventually("the rejection in /healthz", || async {
        d.healthz().await["last_config_reload"]["outcome"] == "rejected"
    })
    .await;
    let h = d.healthz().await;
    let problem = h["last_config_reload"]["problems"][0].as_str().unwrap();
    assert!(problem.starts_with(&format!("{}:", d.path("tripline.toml").display())) && problem.contains("evnt"), "{h}");
    assert_eq!(h["status"], "degraded");
    assert_eq!(d.http.post(&url).body("{}").send().await.unwrap().status(), 404);

    // Valid: the new webhook and notification channel apply at once; a changed [engine]
    // is named as needing a restart.
    d.write(
        "tripline.toml",
        &config(
            "[webhooks.new]\npath = \"/hooks/new\"\nentity = \"ticket\"\nauth = { type = \"none\" }\n\n\
             [notify.desk]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\n",
        )
        .replace("workers = 4", "workers = 3"),
    );
    d.sighup();
    eventually("the applied configuration", || async {
        d.healthz().await["last_config_reload"]["outcome"] == "partial"
    })
    .await;
    let h = d.healthz().await;
    assert_eq!(h["last_config_reload"]["problems"], json!(["[engine] changed: restart the daemon to apply it"]), "{h}");
    assert_eq!(h["notify_channels"], json!(["desk"]));
    let r = d.http.post(&url).body(r#"{"Source": "hup"}"#).send().await.unwrap();
    assert_eq!(r.status(), 202);
    d.stop().await;
}

/// A reload while 10,000 events flow: every event runs its rule exactly once, each on the
/// version in force when its run started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_no_event_and_run_none_twice() {
    const EVENTS: i64 = 10_000;
    const BATCH: i64 = 1_000;
    let tally: Arc<Mutex<HashMap<i64, Vec<i64>>>> = Arc::default();
    let t = tally.clone();
    let d = TestDaemon::start_with(
        &config(""),
        &[
            ("rules/count.toml", &rule("Count", "load", "count.rhai")),
            ("scripts/count.rhai", "api.tally(record.n, 1);"),
        ],
        move |b| {
            b.register(move |engine| {
                let t = t.clone();
                engine.register_fn("tally", move |_: &mut Api, n: i64, version: i64| {
                    t.lock().unwrap().entry(n).or_default().push(version);
                });
            })
        },
    )
    .await;
    for i in 0..EVENTS / BATCH {
        let items: Vec<Ingest> = (i * BATCH..(i + 1) * BATCH)
            .map(|n| Ingest {
                entity: "ticket".into(),
                kind: EventKind::Created,
                record: tripline::record::from_value(json!({"Source": "load", "n": n})).unwrap(),
                idempotency_key: None,
            })
            .collect();
        let rt = d.runtime.clone();
        tokio::task::spawn_blocking(move || rt.submit(&items).unwrap()).await.unwrap();
        if i == 0 {
            // The first version has been seen running before the first edit.
            eventually("a first run", || {
                let seen = !tally.lock().unwrap().is_empty();
                async move { seen }
            })
            .await;
        }
        let version = if i % 2 == 0 { 2 } else { 1 };
        // Saved by rename, as editors do: a reload never reads a half-written file (a
        // truncated script is a valid, empty one, whose runs would tally nothing).
        d.save_by_rename("scripts/count.rhai", &format!("api.tally(record.n, {version});"));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    d.drained().await;
    eventually("every tally", || {
        let n = tally.lock().unwrap().len();
        async move { n == EVENTS as usize }
    })
    .await;
    let tally = tally.lock().unwrap().clone();
    let twice: Vec<_> = tally.iter().filter(|(_, v)| v.len() != 1).collect();
    assert!(twice.is_empty(), "events run more than once: {twice:?}");
    let versions: std::collections::HashSet<i64> = tally.values().map(|v| v[0]).collect();
    assert_eq!(versions.len(), 2, "both script versions ran: the reloads happened under load");
    let runs = d.runtime.runs(&RunFilter { limit: 0, ..Default::default() }).unwrap();
    assert_eq!(runs.len(), EVENTS as usize);
    assert!(runs.iter().all(|r| r.status == RunStatus::Ok && r.rule == "Count"));
    let events: std::collections::HashSet<i64> = runs.iter().filter_map(|r| r.event_id).collect();
    assert_eq!(events.len(), EVENTS as usize, "one run per event");
    assert!(d.reloads().await >= 2);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_runs_in_flight_finish_and_stops_accepting() {
    let started = Arc::new(AtomicBool::new(false));
    let s = started.clone();
    let d = TestDaemon::start_with(
        &config("[webhooks.t]\npath = \"/t\"\nentity = \"ticket\"\nauth = { type = \"none\" }\n"),
        &[
            ("rules/slow.toml", &rule("Slow", "A", "slow.rhai")),
            ("scripts/slow.rhai", "api.started(); api.pause(400); api.info(\"finished\");"),
        ],
        move |b| {
            b.register(move |engine| {
                let s = s.clone();
                engine.register_fn("started", move |_: &mut Api| s.store(true, Ordering::SeqCst));
                engine
                    .register_fn("pause", |_: &mut Api, ms: i64| std::thread::sleep(Duration::from_millis(ms as u64)));
            })
        },
    )
    .await;
    let r = d.http.post(d.url("/t")).body(r#"{"Source": "A"}"#).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let event_id = r.json::<serde_json::Value>().await.unwrap()["event_id"].as_i64().unwrap();
    eventually("the run to start", || {
        let s = started.load(Ordering::SeqCst);
        async move { s }
    })
    .await;
    let (runtime, addr) = (d.runtime.clone(), d.addr);
    d.stop().await;
    let runs = runtime.store().runs_of_event(event_id).unwrap();
    assert_eq!(runs.len(), 1, "the run in flight finished and was recorded");
    assert_eq!((runs[0].status, log_of(&runs[0])), (RunStatus::Ok, vec!["finished".to_string()]));
    assert_eq!(runtime.store().queue_depth().unwrap(), 0);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the server no longer accepts");
}
