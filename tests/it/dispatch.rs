//! The dispatcher: records in order, records at once, no record waiting for another's slow
//! run, and every kind of run counted.

use std::sync::{Arc, Condvar, Mutex};

use serde_json::json;
use tripline::script::Api;
use tripline::store::RunStatus;

use crate::common::daemon::{config, eventually, TestDaemon};
use crate::common::project::Project;

/// A gate scripts wait at (`api.gate()`) until the test opens it.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn wait(&self) {
        let (open, cv) = &*self.0;
        let mut open = open.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
    }

    fn open(&self) {
        let (open, cv) = &*self.0;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }
}

/// Opens the gate when the test ends, failed or not, so that the daemon can stop.
struct OpenOnDrop(Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_run_holds_back_only_its_own_records_later_events() {
    let gate = Gate::default();
    let hook = gate.clone();
    let rule = |name: &str, source: &str, script: &str| {
        format!(
            "name = \"{name}\"\nentity = \"ticket\"\nscript = \"{script}\"\n\
             conditions = [{{ field = \"Source\", op = \"equals\", value = \"{source}\" }}]\n"
        )
    };
    let d = TestDaemon::start_with(
        &config("[limits]\ntimeout_ms = 600000\n"),
        &[
            ("rules/slow.toml", &rule("slow", "slow", "slow.rhai")),
            ("rules/fast.toml", &rule("fast", "fast", "fast.rhai")),
            ("scripts/slow.rhai", "api.gate();\napi.info(`slow ${record.n}`);"),
            ("scripts/fast.rhai", "api.info(`fast ${record.n}`);"),
        ],
        move |b| {
            b.register(move |engine| {
                let gate = hook.clone();
                engine.register_fn("gate", move |_: &mut Api| gate.wait());
            })
        },
    )
    .await;
    let _open = OpenOnDrop(gate.clone());
    // A slow run takes a worker; the events after it, of other records, still run at once.
    let slow = d.submit("ticket", json!({"Source": "slow", "n": 0}));
    let fast: Vec<_> = (1..=10).map(|n| d.submit("ticket", json!({"Source": "fast", "n": n}))).collect();
    for e in &fast {
        let runs = d.runs_of(e.id).await;
        assert_eq!(runs[0].status, RunStatus::Ok);
    }
    assert!(d.runtime.store().runs_of_event(slow.id).unwrap().is_empty(), "the slow run is still going");
    // The slow record's own later event waits behind it.
    let later = d.runtime.store().get_record(&slow.record.id).unwrap().unwrap();
    let update = tripline::store::Ingest {
        entity: "ticket".into(),
        kind: tripline::record::EventKind::Updated,
        record: tripline::record::from_value(json!({"id": later.id, "Source": "fast", "n": 11})).unwrap(),
        idempotency_key: None,
    };
    let after = d.runtime.submit(&[update]).unwrap().pop().flatten().unwrap();
    let another = d.submit("ticket", json!({"Source": "fast", "n": 12}));
    assert_eq!(d.runs_of(another.id).await[0].status, RunStatus::Ok);
    assert!(d.runtime.store().runs_of_event(after.id).unwrap().is_empty(), "the record's later event waits");

    gate.open();
    assert_eq!(d.runs_of(slow.id).await[0].status, RunStatus::Ok);
    let after_runs = d.runs_of(after.id).await;
    assert_eq!(after_runs[0].log[0].message, "fast 11");
    assert!(after_runs[0].started_at >= d.runtime.store().runs_of_event(slow.id).unwrap()[0].finished_at);
    d.stop().await;
}

#[test]
fn fire_runs_a_batch_on_the_workers_in_each_records_order() {
    let p = Project::new("[engine]\nworkers = 8\n");
    p.rule(
        "seen",
        "name = \"seen\"\nentity = \"t\"\nscript = \"seen.rhai\"\nconditions = [{ field = \"Event\", op = \"equals\", value = \"bump\" }]\n",
    )
    .script("seen.rhai", "api.comment(record, `${record.n}`);");
    // Five records, then 400 events naming them in turn.
    let created = p.run_stdin(&["fire", "t", "--record", "-", "--json"], Some(&"{\"n\": 0}\n".repeat(5)));
    assert_eq!(created.code, 0, "{created:?}");
    let ids: Vec<String> = p.records("t").iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 5);
    let mut lines = String::new();
    for n in 1..=400 {
        lines.push_str(&format!("{}\n", json!({"id": ids[n % 5], "n": n})));
    }
    let ran = p.run_stdin(&["fire", "t", "--event", "bump", "--record", "-", "--json"], Some(&lines));
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.stdout.lines().count(), 400, "one run per event");
    for r in p.records("t") {
        let seen: Vec<u64> =
            r["comments"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().parse().unwrap()).collect();
        assert_eq!(seen.len(), 80, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "each record's events ran in order: {seen:?}");
    }
}

/// A worker hands an event's last run to the committer and goes on with other records; the
/// runs before it are committed at once, since the next rule may read what they wrote; and a
/// record's next event waits for the commit of the one before.
#[test]
fn an_events_rules_see_each_others_writes_and_a_records_next_event_sees_the_last_commit() {
    let p = Project::new("[engine]\nworkers = 8\n");
    let rule = |name: &str, priority: u32, event: &str, script: &str| {
        format!(
            "name = \"{name}\"\nentity = \"t\"\nscript = \"{script}\"\npriority = {priority}\n\
             conditions = [{{ field = \"Event\", op = \"equals\", value = \"{event}\" }}]\n"
        )
    };
    p.rule("first", &rule("first", 1, "step", "first.rhai"))
        .rule("second", &rule("second", 2, "step", "second.rhai"))
        .script("first.rhai", "api.update(record, #{ stage: record.n });")
        // The record as stored, not the event's snapshot: the first rule's write and the
        // previous event's second run (its comment) must both be there.
        .script(
            "second.rhai",
            "let stored = api.get(record.id);\n\
             if stored.stage != record.n { throw `saw stage ${stored.stage} in event ${record.n}`; }\n\
             api.comment(record, `${record.n}`);",
        );
    let created = p.run_stdin(&["fire", "t", "--record", "-", "--json"], Some(&"{\"n\": 0}\n".repeat(4)));
    assert_eq!(created.code, 0, "{created:?}");
    let ids: Vec<String> = p.records("t").iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    let mut lines = String::new();
    for n in 1..=200 {
        lines.push_str(&format!("{}\n", json!({"id": ids[n % 4], "n": n})));
    }
    let ran = p.run_stdin(&["fire", "t", "--event", "step", "--record", "-", "--json"], Some(&lines));
    assert_eq!(ran.code, 0, "{ran:?}");
    for r in p.records("t") {
        let seen: Vec<u64> =
            r["comments"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().parse().unwrap()).collect();
        assert_eq!(seen.len(), 50, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "each record's events ran in order: {seen:?}");
        assert_eq!(r["fields"]["stage"], json!(seen.last().unwrap()), "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_runs_are_counted_in_the_metrics_like_rule_runs() {
    let d = TestDaemon::start(
        &config("[jobs.tick]\nschedule = \"* * * * * *\"\nscript = \"tick.rhai\"\n"),
        &[
            ("scripts/tick.rhai", "api.create(\"ticket\", #{ Source: \"tick\" });"),
            (
                "rules/seen.toml",
                "name = \"seen\"\nentity = \"ticket\"\nscript = \"seen.rhai\"\nconditions = [{ field = \"Source\", op = \"equals\", value = \"tick\" }]\n",
            ),
            ("scripts/seen.rhai", "api.info(\"seen\");"),
        ],
    )
    .await;
    eventually("a job run and the rule run it caused in /metrics", || async {
        let text = d.http.get(d.url("/metrics")).send().await.unwrap().text().await.unwrap();
        text.contains("tripline_runs_total{rule=\"job:tick\",status=\"ok\"}")
            && text.contains("tripline_runs_total{rule=\"seen\",status=\"ok\"}")
    })
    .await;
    d.stop().await;
}
