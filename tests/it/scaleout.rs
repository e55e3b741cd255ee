//! Several `tripline run` workers on one PostgreSQL store: a worker killed with -9 loses
//! nothing and doubles nothing, per-record order holds across workers, a scheduled tick runs
//! once, and PostgreSQL stopping and starting mid-batch loses no accepted event.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::postgres::{self, Postgres};
use crate::common::project::{Daemon, Project};

fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn list(p: &Project, args: &[&str]) -> Vec<Value> {
    let ran = p.run(args);
    assert_eq!(ran.code, 0, "{ran:?}");
    ran.json().as_array().unwrap().clone()
}

fn runs(p: &Project) -> Vec<Value> {
    list(p, &["runs", "--json", "--limit", "1000000"])
}

fn records(p: &Project, entity: &str) -> Vec<Value> {
    list(p, &["records", "list", entity, "--json", "--limit", "1000000"])
}

/// Queues a JSON Lines batch of `event` events for the workers.
fn queue(p: &Project, name: &str, event: &str, lines: &str) {
    p.file(name, lines);
    let file = p.path().join(name);
    let ran = p.run(&["fire", "ticket", "--event", event, "--queue", "--record", file.to_str().unwrap()]);
    assert_eq!(ran.code, 0, "{ran:?}");
}

/// A project on a fresh database of `pg`: claims held 3 s beyond twice the 1 s run limit,
/// so that a dead worker's events come back within seconds, while a live worker that a
/// loaded machine starves of CPU for a few seconds keeps its claims (a claim lost that way
/// counts as a try, and three of them set an event aside).
fn project(url: &str, extra: &str) -> Project {
    Project::new(&format!(
        "{}[engine]\nworkers = 4\nclaim_lease_ms = 3000\nretention_days = 0\n[limits]\ntimeout_ms = 1000\n{extra}",
        Postgres::store_section(url)
    ))
}

/// Each ticket's three events (created, then two updates) run once each, in order: every
/// step comments on the ticket and creates a task, in the run's commit.
const STEPS: &str = "let x = 0; for i in 0..5000 { x += i; }\n\
                     api.comment(record, `step ${record.Step}`);\n\
                     api.create(\"task\", #{ Parent: record.id, Step: record.Step });";

#[test]
fn three_workers_one_killed_lose_nothing_double_nothing_and_keep_order() {
    const N: usize = 300;
    let p = project(&postgres::shared().create_db(), "");
    p.rule("r", "name = \"steps\"\nentity = \"ticket\"\nscript = \"s.rhai\"\n").script("s.rhai", STEPS);
    let lines = |step: u32| -> String { (0..N).map(|i| format!("{{\"id\": \"t{i}\", \"Step\": {step}}}\n")).collect() };
    queue(&p, "create.jsonl", "created", &lines(0));
    queue(&p, "one.jsonl", "updated", &lines(1));
    queue(&p, "two.jsonl", "updated", &lines(2));
    let workers: Vec<Daemon> = (0..3).map(|_| Daemon::start(&p)).collect();
    wait_for("the first runs", 60, || (runs(&p).len() >= 30).then_some(()));
    let mut workers = workers.into_iter();
    let victim = workers.next().unwrap();
    assert!(Command::new("kill").args(["-KILL", &victim.pid().to_string()]).status().unwrap().success());
    drop(victim);
    wait_for("every event to run", 180, || (runs(&p).len() >= 3 * N).then_some(()));
    // A little longer: nothing more may come (a doubled run would show here).
    std::thread::sleep(Duration::from_secs(2));
    for w in workers {
        w.stop();
    }
    let all = runs(&p);
    let not_ok: Vec<&Value> = all.iter().filter(|r| r["status"] != "ok").collect();
    assert_eq!(all.len(), 3 * N, "one run per event; those not ok: {not_ok:?}");
    assert!(not_ok.is_empty(), "{not_ok:?}");
    let tasks = records(&p, "task");
    assert_eq!(tasks.len(), 3 * N, "one task per event: none lost, none twice");
    for t in records(&p, "ticket") {
        let steps: Vec<&str> = t["comments"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap()).collect();
        assert_eq!(steps, ["step 0", "step 1", "step 2"], "ticket {}: each step once, in order", t["id"]);
    }
}

#[test]
fn a_job_every_two_seconds_runs_once_per_tick_with_three_workers() {
    let p =
        project(&postgres::shared().create_db(), "[jobs.pull]\nschedule = \"*/2 * * * * *\"\nscript = \"pull.rhai\"\n");
    p.script("pull.rhai", "let x = 0; for i in 0..5000 { x += i; }\napi.create(\"pulled\", #{});");
    let workers: Vec<Daemon> = (0..3).map(|_| Daemon::start(&p)).collect();
    std::thread::sleep(Duration::from_secs(20));
    for w in workers {
        w.stop();
    }
    let job_runs: Vec<Value> = runs(&p).into_iter().filter(|r| r["rule"] == "job:pull").collect();
    // Each run starts right after its tick: two runs in one 2-second slot would be one tick
    // run twice.
    let mut slots: Vec<i64> = job_runs
        .iter()
        .map(|r| {
            let at = chrono::DateTime::parse_from_rfc3339(r["started_at"].as_str().unwrap()).unwrap();
            at.timestamp() / 2
        })
        .collect();
    let n = slots.len();
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), n, "one run per tick: {job_runs:?}");
    assert!((8..=11).contains(&n), "about ten ticks in 20 s, each run once: {n}");
    assert_eq!(records(&p, "pulled").len(), n, "each run's write once");
}

#[test]
fn postgres_stopped_and_started_mid_batch_loses_no_accepted_event() {
    const N: usize = 600;
    let mut pg = Postgres::start();
    let url = pg.create_db();
    let p = Project::new(&format!("{}[engine]\nworkers = 4\nretention_days = 0\n", Postgres::store_section(&url)));
    p.rule("r", "name = \"child\"\nentity = \"ticket\"\nscript = \"s.rhai\"\n")
        .script("s.rhai", "let x = 0; for i in 0..5000 { x += i; }\napi.create(\"task\", #{ Parent: record.id });");
    let batch: String = (0..N).map(|i| format!("{{\"n\": {i}}}\n")).collect();
    queue(&p, "batch.jsonl", "created", &batch);
    let workers: Vec<Daemon> = (0..2).map(|_| Daemon::start(&p)).collect();
    wait_for("the first runs", 60, || (runs(&p).len() >= 20).then_some(()));
    pg.stop();
    // The workers cannot reach the store meanwhile: they wait and retry.
    std::thread::sleep(Duration::from_secs(3));
    pg.launch();
    wait_for("every accepted event to run", 180, || (runs(&p).len() >= N).then_some(()));
    std::thread::sleep(Duration::from_secs(1));
    for w in workers {
        w.stop();
    }
    let all = runs(&p);
    assert_eq!(all.len(), N, "one run per event");
    assert!(all.iter().all(|r| r["status"] == "ok"), "{:?}", all.iter().find(|r| r["status"] != "ok"));
    let mut parents: Vec<String> =
        records(&p, "task").iter().map(|t| t["fields"]["Parent"].as_str().unwrap().to_string()).collect();
    assert_eq!(parents.len(), N, "one task per ticket");
    parents.sort();
    parents.dedup();
    assert_eq!(parents.len(), N, "no ticket's task twice");
}

#[test]
fn a_worker_says_which_store_it_uses_and_lists_the_workers() {
    let url = postgres::shared().create_db();
    let p = project(&url, "");
    let mut cmd = p.command(&["run"]);
    cmd.env("TRIPLINE_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let second = Daemon::start(&p);
    let log = {
        use std::io::Read;
        let mut stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
                if text.contains("Using the store") {
                    let _ = tx.send(text.clone());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30)).expect("the worker logs its store")
    };
    assert!(log.contains("postgres://127.0.0.1:") && log.contains("worker="), "{log}");
    assert!(!log.contains("tripline@"), "no user or password in the log: {log}");
    let workers = wait_for("both workers to beat", 30, || {
        let out = postgres::shared().psql(url.rsplit('/').next().unwrap(), "SELECT count(*) FROM workers");
        (out == "2").then_some(out)
    });
    assert_eq!(workers, "2");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(child.wait().unwrap().success());
    second.stop();
    let left = postgres::shared().psql(url.rsplit('/').next().unwrap(), "SELECT count(*) FROM workers");
    assert_eq!(left, "0", "a stopped worker leaves the list");
}
