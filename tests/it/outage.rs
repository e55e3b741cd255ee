//! A directory outage in the middle of a batch, against a real Samba DC of the test's own
//! (on 127.0.0.2: the shared DC must keep serving the other tests) that the test stops and
//! starts: runs go to `retrying` with one failure comment per ticket, the DC comes back,
//! every event completes once, and every person exists once in the directory.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::directory_servers::{dns_with, make_ou, unique, Samba, AD_ADMIN, AD_ADMIN_PW, AD_BASE};
use crate::common::project::{Daemon, Project};

const SEED_RULE: &str = "Process FlexHR user on AD";
const MAX_ATTEMPTS: u64 = 100;

fn repo_file(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// `count` new-user tickets (JSON Lines) with EmployeeIds `{letter}{tag}-{i}`. The names
/// differ within the 20 characters of a derived logon name (`olga.outagea07`): people whose
/// logon names collide are a different story (see `free_login`).
fn batch(letter: char, tag: &str, count: usize) -> (Vec<String>, String) {
    let emps: Vec<String> = (0..count).map(|i| format!("{letter}{tag}-{i:02}")).collect();
    let lines: Vec<String> = emps
        .iter()
        .enumerate()
        .map(|(i, emp)| {
            json!({
                "Source": "FlexHR", "IsNewUser": 1, "EmployeeId": emp,
                "Subject": format!("Flex HR: new employee {emp}"),
                "FirstName": "Olga", "LastName": format!("Outage {letter}{i:02}"),
                "Email": format!("{}@example.test", emp.to_lowercase()),
                "Department": "Finance", "JobTitle": "Controller", "Company": "ACME", "Active": true,
                "ModifiedAt": "2025-03-14T09:00:00Z",
            })
            .to_string()
        })
        .collect();
    (emps, lines.join("\n") + "\n")
}

fn queue(p: &Project, name: &str, lines: &str) {
    p.file(name, lines);
    let ran = p.run(&["fire", "ticket", "--record", &p.path().join(name).to_string_lossy(), "--queue"]);
    assert_eq!(ran.code, 0, "{ran:?}");
}

fn runs(p: &Project) -> Vec<Value> {
    let ran = p.run(&["runs", "--json", "--limit", "1000"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    ran.json().as_array().unwrap().clone()
}

fn comments(record: &Value) -> Vec<String> {
    record["comments"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().to_string()).collect()
}

/// Tickets by id.
fn tickets(p: &Project) -> HashMap<String, Value> {
    p.records("ticket").into_iter().map(|t| (t["id"].as_str().unwrap().to_string(), t)).collect()
}

/// Polls (runs and tickets) until `done` holds; fails with what was seen after a generous
/// deadline.
fn wait_until(p: &Project, what: &str, done: impl Fn(&[Value], &HashMap<String, Value>) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (runs, tickets) = (runs(p), tickets(p));
        if done(&runs, &tickets) {
            return runs;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}; runs so far: {runs:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn emp_of(tickets: &HashMap<String, Value>, run: &Value) -> String {
    let t = &tickets[run["record_id"].as_str().unwrap()];
    t["fields"]["EmployeeId"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_outage_mid_batch_retries_and_every_event_completes_once() {
    let mut dc = Samba::private_on("127.0.0.2");
    let mut admin = dc.admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "outage").await;
    drop(admin);

    let config = format!(
        "[engine]\nworkers = 4\nmax_attempts = {MAX_ATTEMPTS}\nretry_backoff_ms = 200\nretry_max_backoff_ms = 1000\n\n\
         [directories.ActiveDirectory]\nkind = \"active_directory\"\nurl = \"{}\"\nbind_dn = \"{AD_ADMIN}\"\n\
         bind_password = \"{AD_ADMIN_PW}\"\nbase_dn = \"{AD_BASE}\"\nusers_ou = '{ou}'\nca_file = '{}'\n\
         connect_timeout = 2\nop_timeout = 10\n",
        dc.ldaps_url(),
        dc.ca_file().display()
    );
    let p = Project::new(&config);
    p.rule("process_flexhr_user", &repo_file("rules/process_flexhr_user.toml"))
        .script("process_flexhr_user.rhai", &repo_file("scripts/process_flexhr_user.rhai"));

    // A batch queued, the daemon started; the DC stops once the first users are created.
    let tag = unique().to_uppercase();
    let (first, lines) = batch('A', &tag, 30);
    queue(&p, "first.jsonl", &lines);
    let daemon = Daemon::start(&p);
    wait_until(&p, "some runs are ok", |runs, _| runs.iter().any(|r| r["status"] == "ok"));
    dc.stop();

    // More tickets while the DC is down: these surely meet the outage.
    let (second, lines) = batch('B', &tag, 10);
    queue(&p, "second.jsonl", &lines);
    let second_set: HashSet<&String> = second.iter().collect();
    wait_until(&p, "the tickets queued during the outage are retrying (twice) with one comment", |runs, tickets| {
        let waiting: Vec<&Value> = runs
            .iter()
            .filter(|r| tickets.contains_key(r["record_id"].as_str().unwrap()))
            .filter(|r| second_set.contains(&emp_of(tickets, r)))
            .collect();
        waiting.len() == second.len()
            && waiting.iter().all(|r| {
                let t = &tickets[r["record_id"].as_str().unwrap()];
                let c = comments(t);
                r["status"] == "retrying"
                    && r["attempts"].as_u64().unwrap() >= 2
                    && r["error"].as_str().unwrap_or("").contains("is unreachable")
                    && t["status"] == "open"
                    && c.len() == 1
                    && c[0].starts_with("failed to synchronize with Flex HR: directory ActiveDirectory: ")
                    && c[0].contains("is unreachable")
            })
    });

    // The DC comes back: every event of both batches completes.
    dc.start();
    let total = first.len() + second.len();
    let runs = wait_until(&p, "every run is ok", |runs, _| {
        let given_up: Vec<&Value> = runs.iter().filter(|r| r["status"] == "failed" || r["status"] == "dead").collect();
        assert!(given_up.is_empty(), "runs that will not be retried: {given_up:#?}");
        runs.len() >= total && runs.iter().all(|r| r["status"] == "ok")
    });
    daemon.stop();

    // One run per event and rule, and one per ticket.
    assert_eq!(runs.len(), total, "one run per event: {runs:#?}");
    assert!(runs.iter().all(|r| r["rule"] == SEED_RULE));
    let events: HashSet<i64> = runs.iter().map(|r| r["event_id"].as_i64().unwrap()).collect();
    let records: HashSet<&str> = runs.iter().map(|r| r["record_id"].as_str().unwrap()).collect();
    assert_eq!((events.len(), records.len()), (total, total), "{runs:#?}");

    // Every ticket closed; the comments tell the story once.
    let tickets = tickets(&p);
    assert_eq!(tickets.len(), total);
    let mut through_outage = HashSet::new();
    for r in &runs {
        let t = &tickets[r["record_id"].as_str().unwrap()];
        let emp = emp_of(&tickets, r);
        assert_eq!(t["status"], "closed", "{t:#}");
        let c = comments(t);
        let attempts = r["attempts"].as_u64().unwrap();
        if attempts == 1 {
            assert_eq!(c.len(), 1, "{emp}: {c:?}");
            assert!(c[0].starts_with("synchronized with Flex HR: created user "), "{emp}: {c:?}");
            continue;
        }
        through_outage.insert(emp.clone());
        assert_eq!(c.len(), 2, "{emp}: one failure comment, updated per attempt, and the success: {c:?}");
        assert!(c[0].starts_with("failed to synchronize with Flex HR: directory ActiveDirectory: "), "{emp}: {c:?}");
        assert!(c[0].contains(&format!("; will retry (attempt {} of {MAX_ATTEMPTS}, ", attempts - 1)), "{emp}: {c:?}");
        assert!(c[1].starts_with("synchronized with Flex HR: "), "{emp}: {c:?}");
    }
    for emp in &second {
        assert!(through_outage.contains(emp), "{emp} was queued during the outage");
    }
    let first_hit = first.iter().filter(|e| through_outage.contains(*e)).count();
    eprintln!("through the outage: {} tickets ({first_hit} of the first batch)", through_outage.len());

    // One directory user per person.
    let mut admin = dc.admin().await;
    for emp in first.iter().chain(&second) {
        assert_eq!(dns_with(&mut admin, AD_BASE, "employeeID", emp).await.len(), 1, "{emp}");
    }
    assert_eq!(dns_with(&mut admin, &ou, "objectClass", "user").await.len(), total);
}
