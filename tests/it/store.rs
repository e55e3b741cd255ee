//! The store's promises, held by both backends: every test here runs against SQLite (in
//! memory) and against a real PostgreSQL (a fresh database on the test process's server).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tripline::record::{Event, EventKind, Fields, Submitted};
use tripline::store::postgres::{PgSettings, PgStore};
use tripline::store::sqlite::SqliteStore;
use tripline::store::{
    AuditEntry, AuditQuery, Commit, Feed, Ingest, Run, RunAudit, RunFilter, RunStatus, Store, StoreError, TickTaken,
    WorkerBeat, Write, MAX_EVENT_TRIES, SET_ASIDE,
};

use crate::common::postgres as pg_server;

fn sqlite() -> Arc<dyn Store> {
    Arc::new(SqliteStore::in_memory().unwrap())
}

pub fn pg_settings(url: &str) -> PgSettings {
    PgSettings { url: tripline::secret::Secret::new(url), pool: 8 }
}

fn pg() -> Arc<dyn Store> {
    Arc::new(PgStore::connect(&pg_settings(&pg_server::shared().create_db())).unwrap())
}

/// Each name becomes two tests, `sqlite::NAME` and `postgres::NAME`, running `NAME(store)`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name(super::sqlite()) })*
        }
        mod postgres {
            $(#[test] fn $name() { super::$name(super::pg()) })*
        }
    };
}

on_both!(
    created_then_updated_keeps_previous_and_queue_order,
    busy_records_before_one_are_those_with_work_ahead_of_it,
    bad_ingest_stores_nothing,
    audit_entries_are_tied_to_their_run_at_commit_and_pruned_apart,
    prune_drops_old_finished_work_and_keeps_failures,
    keyed_comments_are_replaced_and_idempotency_keys_dedupe,
    only_a_claimed_creation_behind_nothing_waits_for_nothing,
    a_group_commit_keeps_each_run_apart,
    concurrent_commits_all_land,
    find_compares_json_values_with_their_type_and_any_field_name,
    claims_keep_a_records_events_with_one_owner_in_order,
    an_expired_claim_returns_to_the_queue_and_a_heartbeat_keeps_it,
    an_event_is_set_aside_when_taken_beyond_its_tries_never_while_held,
    a_tick_is_taken_once_and_a_running_job_is_not_overlapped,
    due_retries_are_claimed_once,
    the_fanout_limit_refuses_the_run_that_crosses_it,
    kv_catalog_and_pages,
    a_delivery_key_taken_at_once_by_many_is_stored_once,
    a_run_whose_claim_was_taken_commits_nothing,
);

fn fields(v: Value) -> Fields {
    v.as_object().unwrap().clone()
}

fn ingest(entity: &str, kind: EventKind, id: Option<&str>, f: Value) -> Ingest {
    Ingest {
        entity: entity.into(),
        kind,
        record: Submitted { id: id.map(String::from), status: None, fields: fields(f) },
        idempotency_key: None,
    }
}

fn one(s: &dyn Store, item: Ingest) -> Event {
    s.ingest(&[item], None).unwrap()[0].clone().unwrap()
}

/// `n` created events of `entity`, stored.
fn created(s: &dyn Store, entity: &str, n: usize) -> Vec<Event> {
    let items: Vec<Ingest> = (0..n).map(|_| ingest(entity, EventKind::Created, None, json!({}))).collect();
    s.ingest(&items, None).unwrap().into_iter().flatten().collect()
}

fn run_of(e: &Event, rule: &str) -> Run {
    Run {
        id: 0,
        rule: rule.into(),
        record_id: Some(e.record.id.clone()),
        event_id: Some(e.id),
        event: "created".into(),
        status: RunStatus::Ok,
        error: None,
        duration_ms: 1,
        log: vec![],
        attempts: 1,
        started_at: Utc::now(),
        finished_at: Utc::now(),
        next_attempt_at: None,
        writes: Vec::new(),
    }
}

fn later(secs: i64) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::seconds(secs)
}

fn pending_ids(s: &dyn Store, feed: Feed<'_>) -> Vec<i64> {
    s.pending_events(100, true, feed, 0).unwrap().iter().map(|p| p.event.id).collect()
}

fn created_then_updated_keeps_previous_and_queue_order(s: Arc<dyn Store>) {
    let e1 = one(&*s, ingest("ticket", EventKind::Created, None, json!({"a": 1, "b": 2})));
    let id = e1.record.id.clone();
    let e2 = one(&*s, ingest("ticket", EventKind::Updated, Some(&id), json!({"a": 5})));
    assert_eq!(e2.previous.as_ref().unwrap().fields["a"], json!(1));
    assert_eq!(e2.record.fields, fields(json!({"a": 5, "b": 2})));
    assert_eq!(pending_ids(&*s, Feed::OwnAndUnclaimed("test")), vec![e1.id, e2.id]);
    assert_eq!(s.find_records("ticket", &fields(json!({"a": 5})), 10).unwrap().len(), 1);
    assert_eq!(s.find_records("ticket", &fields(json!({"a": 1})), 10).unwrap().len(), 0);
    assert_eq!(s.find_records("ticket", &fields(json!({"status": "open", "b": 2})), 10).unwrap().len(), 1);
    assert_eq!(s.get_event(e2.id).unwrap().unwrap().record.fields, e2.record.fields);
    let deleted = one(&*s, ingest("ticket", EventKind::Deleted, Some(&id), json!({})));
    assert_eq!(deleted.record.id, id);
    assert!(s.get_record(&id).unwrap().is_none());
}

fn busy_records_before_one_are_those_with_work_ahead_of_it(s: Arc<dyn Store>) {
    let boss = |n: u32| ingest("ticket", EventKind::Created, None, json!({"EmployeeId": "M1", "n": n}));
    let items = [
        boss(0),
        boss(1),
        ingest("ticket", EventKind::Created, None, json!({"EmployeeId": 1})),
        ingest("note", EventKind::Created, None, json!({"EmployeeId": "M1"})),
        ingest("ticket", EventKind::Created, None, json!({"ManagerEmployeeId": "M1"})),
        boss(2),
    ];
    let events: Vec<Event> = s.ingest(&items, None).unwrap().into_iter().flatten().collect();
    let report = events[4].record.id.clone();
    let ids = |found: Vec<tripline::record::Record>| found.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let m1 = fields(json!({"EmployeeId": "M1"}));
    let mut ahead = vec![events[0].record.id.clone(), events[1].record.id.clone()];
    ahead.sort();
    assert_eq!(ids(s.find_busy_before("ticket", &m1, &report, 16).unwrap()), ahead);
    assert_eq!(s.find_busy_before("ticket", &m1, &report, 1).unwrap().len(), 1);
    s.finish_event(events[0].id).unwrap();
    assert_eq!(ids(s.find_busy_before("ticket", &m1, &report, 16).unwrap()), vec![events[1].record.id.clone()]);
    s.finish_event(events[5].id).unwrap();
    let retrying = Run { status: RunStatus::Retrying, next_attempt_at: Some(Utc::now()), ..run_of(&events[5], "r") };
    s.commit_run(Commit { depth: 1, ..Commit::bare(&retrying, None) }).unwrap();
    let mut ahead = vec![events[1].record.id.clone(), events[5].record.id.clone()];
    ahead.sort();
    assert_eq!(ids(s.find_busy_before("ticket", &m1, &report, 16).unwrap()), ahead);
    let own = events[1].record.id.clone();
    assert_eq!(ids(s.find_busy_before("ticket", &m1, &own, 16).unwrap()), vec![events[5].record.id.clone()]);
    s.finish_event(events[4].id).unwrap();
    assert_eq!(ids(s.find_busy_before("ticket", &m1, &report, 16).unwrap()), ahead);
    assert!(s.record_busy(&events[5].record.id).unwrap(), "a run waits for a retry");
    assert!(!s.record_busy(&events[0].record.id).unwrap());
}

fn bad_ingest_stores_nothing(s: Arc<dyn Store>) {
    let items = [
        ingest("ticket", EventKind::Created, None, json!({"a": 1})),
        ingest("ticket", EventKind::Updated, Some("nope"), json!({"a": 5})),
    ];
    assert!(matches!(s.ingest(&items, None), Err(StoreError::NoRecord(_))));
    assert_eq!(s.queue_depth().unwrap(), 0);
    assert!(s.find_records("ticket", &Fields::new(), 10).unwrap().is_empty());
    // A record of another entity, an existing id created again: refused, nothing kept.
    let e = one(&*s, ingest("ticket", EventKind::Created, Some("t1"), json!({})));
    assert!(matches!(
        s.ingest(&[ingest("user", EventKind::Updated, Some("t1"), json!({}))], None),
        Err(StoreError::WrongEntity { .. })
    ));
    assert!(matches!(
        s.ingest(&[ingest("ticket", EventKind::Created, Some("t1"), json!({}))], None),
        Err(StoreError::Exists(_))
    ));
    assert!(s.validate(&ingest("ticket", EventKind::Updated, Some("nope"), json!({}))).is_err());
    assert!(s.validate(&ingest("ticket", EventKind::Updated, Some("t1"), json!({"x": 1}))).is_ok());
    assert_eq!(s.get_record("t1").unwrap().unwrap().fields, Fields::new(), "validate stores nothing");
    assert_eq!(pending_ids(&*s, Feed::OwnAndUnclaimed("x")), [e.id]);
}

fn audit_entry(dn: &str, token: &str, at: DateTime<Utc>, planned: bool) -> AuditEntry {
    AuditEntry {
        id: 0,
        at,
        directory: "AD".into(),
        dn: dn.into(),
        operation: "update_user".into(),
        attributes: vec![tripline::store::AuditAttr {
            attribute: "title".into(),
            before: Some(vec!["Clerk".into()]),
            after: vec!["Controller".into()],
        }],
        detail: None,
        planned,
        run_id: None,
        rule: "r".into(),
        record_id: Some("rec1".into()),
        event_id: Some(1),
        run_token: token.into(),
        dn_key: dn.to_lowercase(),
    }
}

fn audit_entries_are_tied_to_their_run_at_commit_and_pruned_apart(s: Arc<dyn Store>) {
    let events = created(&*s, "ticket", 1);
    let old = Utc::now() - chrono::Duration::days(400);
    s.record_audit(&[audit_entry("CN=A,DC=x", "t1", old, false)]).unwrap();
    s.record_audit(&[audit_entry("CN=B,DC=x", "t1", Utc::now(), false)]).unwrap();
    s.record_audit(&[audit_entry("CN=C,DC=x", "other", Utc::now(), false)]).unwrap();
    let planned = [audit_entry("CN=D,DC=x", "t1", Utc::now(), true)];
    let run = run_of(&events[0], "r");
    let (run_id, _) = s
        .commit_run(Commit {
            audit: Some(RunAudit { token: Some("t1"), entries: &planned }),
            ..Commit::bare(&run, Some(events[0].id))
        })
        .unwrap();
    let all = s.audit(&AuditQuery::default()).unwrap();
    let runs: Vec<(&str, Option<i64>)> = all.iter().map(|e| (e.dn.as_str(), e.run_id)).collect();
    assert_eq!(
        runs,
        [("CN=A,DC=x", Some(run_id)), ("CN=B,DC=x", Some(run_id)), ("CN=C,DC=x", None), ("CN=D,DC=x", Some(run_id))]
    );
    assert_eq!(all[0].attributes[0].to_string(), "title: \"Clerk\" -> \"Controller\"");
    assert!(all[3].planned);
    assert_eq!(s.audit(&AuditQuery { run_id: Some(run_id), ..Default::default() }).unwrap().len(), 3);
    assert_eq!(s.audit(&AuditQuery { dn: Some("cn=b,dc=x".into()), ..Default::default() }).unwrap().len(), 1);
    let since = s.audit(&AuditQuery { since: Some(Utc::now() - chrono::Duration::days(1)), ..Default::default() });
    assert_eq!(since.unwrap().len(), 3);
    assert_eq!(s.audit(&AuditQuery { limit: 1, ..Default::default() }).unwrap()[0].dn, "CN=D,DC=x");
    s.prune(Utc::now() + chrono::Duration::days(1)).unwrap();
    assert_eq!(s.audit(&AuditQuery::default()).unwrap().len(), 4);
    assert_eq!(s.prune_audit(Utc::now() - chrono::Duration::days(365)).unwrap(), 1);
    assert_eq!(s.audit(&AuditQuery::default()).unwrap().len(), 3);
}

fn prune_drops_old_finished_work_and_keeps_failures(s: Arc<dyn Store>) {
    let events = created(&*s, "ticket", 3);
    let old = Utc::now() - chrono::Duration::days(40);
    let run = |e: &Event, status: RunStatus, at: DateTime<Utc>| Run {
        status,
        started_at: at,
        finished_at: at,
        ..run_of(e, "r")
    };
    for (e, status, at) in [(&events[0], RunStatus::Ok, old), (&events[1], RunStatus::Dead, old)] {
        s.commit_run(Commit::bare(&run(e, status, at), Some(e.id))).unwrap();
    }
    s.commit_run(Commit::bare(&run(&events[2], RunStatus::Ok, Utc::now()), Some(events[2].id))).unwrap();
    // The events are as old as the test: a cut-off in the future takes the finished ones.
    let removed = s.prune(Utc::now() + chrono::Duration::seconds(1)).unwrap();
    assert_eq!(removed, 4, "the two ok runs, and their events; the dead run and its event stay");
    let left: Vec<RunStatus> = s.runs(&RunFilter::default()).unwrap().iter().map(|r| r.status).collect();
    assert_eq!(left, [RunStatus::Dead]);
    assert!(s.get_event(events[0].id).unwrap().is_none());
    assert!(s.get_event(events[1].id).unwrap().is_some(), "a dead run's event stays for replay");
}

fn keyed_comments_are_replaced_and_idempotency_keys_dedupe(s: Arc<dyn Store>) {
    let mut item = ingest("ticket", EventKind::Created, None, json!({}));
    item.idempotency_key = Some("k1".into());
    let e = s.ingest(&[item.clone()], None).unwrap()[0].clone().unwrap();
    assert!(s.ingest(&[item], None).unwrap()[0].is_none());
    assert_eq!(s.event_by_idempotency_key("k1").unwrap().map(|e| e.id), Some(e.id));
    assert!(s.event_by_idempotency_key("k2").unwrap().is_none());
    let id = e.record.id.clone();
    let run = Run { status: RunStatus::Retrying, ..run_of(&e, "r") };
    for n in 1..=3 {
        let w = [Write::Comment { id: id.clone(), text: format!("attempt {n}"), key: Some("r".into()) }];
        s.commit_run(Commit { writes: &w, depth: 1, ..Commit::bare(&Run { attempts: n, ..run.clone() }, None) })
            .unwrap();
    }
    let r = s.get_record(&id).unwrap().unwrap();
    assert_eq!(r.comments.len(), 1);
    assert_eq!(r.comments[0].text, "attempt 3");
    assert_eq!(s.runs_of_event(e.id).unwrap().len(), 1, "one ledger row per event and rule");
    assert_eq!(s.runs_of_event(e.id).unwrap()[0].attempts, 3);
    // Unkeyed comments add up; a comment on a missing record is refused.
    for text in ["a", "b"] {
        let w = [Write::Comment { id: id.clone(), text: text.into(), key: None }];
        s.commit_run(Commit { writes: &w, ..Commit::bare(&run_of(&e, text), None) }).unwrap();
    }
    assert_eq!(s.get_record(&id).unwrap().unwrap().comments.len(), 3);
    let w = [Write::Comment { id: "missing".into(), text: "x".into(), key: None }];
    assert!(matches!(
        s.commit_run(Commit { writes: &w, ..Commit::bare(&run_of(&e, "m"), None) }),
        Err(StoreError::NoRecord(_))
    ));
}

fn only_a_claimed_creation_behind_nothing_waits_for_nothing(s: Arc<dyn Store>) {
    let claim = Some(("me", later(300)));
    let fresh = s.ingest(&[ingest("t", EventKind::Created, Some("a"), json!({}))], claim).unwrap();
    assert!(fresh[0].as_ref().unwrap().waits_for_nothing, "a new record's creation");
    let update = s.ingest(&[ingest("t", EventKind::Updated, Some("a"), json!({"x": 1}))], claim).unwrap();
    assert!(!update[0].as_ref().unwrap().waits_for_nothing);
    s.ingest(&[ingest("t", EventKind::Deleted, Some("a"), json!({}))], claim).unwrap();
    let again = s.ingest(&[ingest("t", EventKind::Created, Some("a"), json!({}))], claim).unwrap();
    assert!(!again[0].as_ref().unwrap().waits_for_nothing, "the id's earlier events are unfinished");
    let unclaimed = s.ingest(&[ingest("t", EventKind::Created, None, json!({}))], None).unwrap();
    assert!(!unclaimed[0].as_ref().unwrap().waits_for_nothing);
    let pending = s.pending_events(10, true, Feed::OwnAndUnclaimed("me"), 0).unwrap();
    assert!(!pending.is_empty() && pending.iter().all(|p| !p.event.waits_for_nothing));
}

fn a_group_commit_keeps_each_run_apart(s: Arc<dyn Store>) {
    let events = created(&*s, "t", 2);
    let comment = [Write::Comment { id: events[0].record.id.clone(), text: "kept".into(), key: None }];
    let refused = [Write::Update { id: "no-such-record".into(), fields: Fields::new() }];
    let (run1, run2) = (run_of(&events[0], "r"), run_of(&events[1], "r"));
    let results = s.commit_runs(&[
        Commit { writes: &comment, depth: 1, ..Commit::bare(&run1, Some(events[0].id)) },
        Commit { writes: &refused, depth: 1, ..Commit::bare(&run2, Some(events[1].id)) },
    ]);
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(StoreError::NoRecord(_))));
    assert_eq!(s.get_record(&events[0].record.id).unwrap().unwrap().comments.len(), 1);
    assert_eq!(s.runs_of_event(events[0].id).unwrap().len(), 1);
    assert!(s.runs_of_event(events[1].id).unwrap().is_empty(), "the refused run left nothing");
    assert_eq!(s.queue_depth().unwrap(), 1, "only the committed run's event is finished");
}

fn concurrent_commits_all_land(s: Arc<dyn Store>) {
    let events = created(&*s, "t", 64);
    let threads: Vec<_> = events
        .chunks(8)
        .map(|chunk| {
            let (s, chunk) = (s.clone(), chunk.to_vec());
            std::thread::spawn(move || {
                for e in &chunk {
                    let w = [Write::Comment { id: e.record.id.clone(), text: "c".into(), key: None }];
                    let (id, _) = s
                        .commit_run(Commit { writes: &w, depth: 1, ..Commit::bare(&run_of(e, "r"), Some(e.id)) })
                        .unwrap();
                    assert!(id > 0);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(s.queue_depth().unwrap(), 0);
    assert_eq!(s.runs(&RunFilter { limit: 1000, ..Default::default() }).unwrap().len(), 64);
}

fn find_compares_json_values_with_their_type_and_any_field_name(s: Arc<dyn Store>) {
    let records = [
        json!({"Active": true, "Manager": null, "Obj": {"a": 1}, "n": 1, "tags": ["x", "y"], "say": "a \"quote\" é"}),
        json!({"Active": 1, "Obj": "{\"a\":1}", "n": 1.0, "tags": {"1": "y", "+1": "z"}}),
        json!({"Active": "true", "n": "1"}),
    ];
    let items: Vec<Ingest> = records.iter().map(|f| ingest("t", EventKind::Created, None, f.clone())).collect();
    let ids: Vec<String> = s.ingest(&items, None).unwrap().into_iter().flatten().map(|e| e.record.id).collect();
    let found = |c: Value| -> Vec<usize> {
        let got = s.find_records("t", &fields(c), 10).unwrap();
        got.iter().map(|r| ids.iter().position(|id| *id == r.id).unwrap()).collect()
    };
    assert_eq!(found(json!({"Active": true})), [0]);
    assert_eq!(found(json!({"Active": 1})), [1]);
    assert_eq!(found(json!({"Active": "true"})), [2]);
    assert_eq!(found(json!({"Manager": null})), [0], "a missing field is not null");
    assert_eq!(found(json!({"Obj": {"a": 1}})), [0]);
    assert_eq!(found(json!({"Obj": "{\"a\":1}"})), [1]);
    assert_eq!(found(json!({"n": 1})), [0, 1], "numbers by value");
    assert_eq!(found(json!({"tags.1": "y"})), [0, 1], "an index, or an object key");
    assert_eq!(found(json!({"tags.+1": "z"})), [1]);
    assert_eq!(found(json!({"tags.01": "y"})), [0]);
    // A NUL character: SQLite keeps and finds it; PostgreSQL's text cannot hold one, so its
    // store refuses the record whole, saying why, and keeps nothing.
    let nul = ingest("t", EventKind::Created, None, json!({"k\u{0}ey": 1, "v": "a\u{0}b"}));
    match s.ingest(&[nul], None) {
        Ok(e) => {
            let id = e[0].as_ref().unwrap().record.id.clone();
            let got = s.find_records("t", &fields(json!({"k\u{0}ey": 1})), 10).unwrap();
            assert_eq!(got.iter().map(|r| &r.id).collect::<Vec<_>>(), [&id]);
            assert!(!s.describe().starts_with("postgres"), "PostgreSQL cannot keep a NUL");
        }
        Err(e) => {
            assert!(s.describe().starts_with("postgres"), "{e}");
            assert!(e.to_string().contains("NUL"), "{e}");
            assert_eq!(s.find_records("t", &Fields::new(), 10).unwrap().len(), 3, "nothing of it kept");
        }
    }
    assert_eq!(found(json!({"say": "a \"quote\" é"})), [0]);
    assert_eq!(found(json!({"say": "a \"quote\""})), Vec::<usize>::new());
}

/// Per-record order across owners: an owner is given a record's event only when every
/// earlier unfinished event of the record is its own; another owner's live claim holds the
/// record's later events back, and a released claim lets them go.
fn claims_keep_a_records_events_with_one_owner_in_order(s: Arc<dyn Store>) {
    let a = one(&*s, ingest("t", EventKind::Created, Some("r1"), json!({})));
    let b = one(&*s, ingest("t", EventKind::Updated, Some("r1"), json!({"x": 1})));
    let other = one(&*s, ingest("t", EventKind::Created, Some("r2"), json!({})));
    // Worker 2 asks for the record's second event alone: refused while the first is not its.
    assert_eq!(s.claim(&[b.id], "w2", later(60)).unwrap(), Vec::<i64>::new());
    assert_eq!(s.claim(&[a.id], "w1", later(60)).unwrap(), [a.id]);
    assert_eq!(s.claim(&[a.id, b.id, other.id], "w2", later(60)).unwrap(), [other.id]);
    assert_eq!(pending_ids(&*s, Feed::OwnAndUnclaimed("w2")), [other.id], "w1's record waits for w1");
    assert_eq!(pending_ids(&*s, Feed::OwnAndUnclaimed("w1")), [a.id, b.id]);
    assert_eq!(s.claim(&[b.id], "w1", later(60)).unwrap(), [b.id], "its own earlier event lets it go on");
    assert_eq!(s.claim_owners().unwrap().len(), 2);
    s.finish_event(a.id).unwrap();
    assert_eq!(s.release_claims("w1").unwrap(), 1);
    assert_eq!(s.claim(&[b.id], "w2", later(60)).unwrap(), [b.id], "released: another owner takes it");
    // Claims from several threads at once: every event goes to exactly one owner, and a
    // record's events to one owner.
    let events: Vec<Event> = (0..40)
        .flat_map(|i| {
            let id = format!("c{i}");
            vec![
                one(&*s, ingest("t", EventKind::Created, Some(&id), json!({}))),
                one(&*s, ingest("t", EventKind::Updated, Some(&id), json!({"n": 1}))),
            ]
        })
        .collect();
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    let threads: Vec<_> = (0..4)
        .map(|w| {
            let (s, ids) = (s.clone(), ids.clone());
            std::thread::spawn(move || s.claim(&ids, &format!("t{w}"), later(60)).unwrap())
        })
        .collect();
    let mut owner_of = std::collections::HashMap::new();
    for (w, t) in threads.into_iter().enumerate() {
        for id in t.join().unwrap() {
            assert!(owner_of.insert(id, w).is_none(), "event {id} claimed twice");
        }
    }
    for pair in events.chunks(2) {
        if let Some(second) = owner_of.get(&pair[1].id) {
            assert_eq!(owner_of.get(&pair[0].id), Some(second), "a record's later event goes with its first");
        }
    }
}

fn an_expired_claim_returns_to_the_queue_and_a_heartbeat_keeps_it(s: Arc<dyn Store>) {
    let e1 = one(&*s, ingest("t", EventKind::Created, None, json!({})));
    let e2 = one(&*s, ingest("t", EventKind::Created, None, json!({})));
    let soon = Utc::now() + chrono::Duration::milliseconds(300);
    assert_eq!(s.claim(&[e1.id], "dead", soon).unwrap(), [e1.id]);
    assert_eq!(s.claim(&[e2.id], "alive", soon).unwrap(), [e2.id]);
    let figures = json!({"runs": 3});
    let beat = WorkerBeat { id: "alive", host: "h", pid: 7, started_at: Utc::now(), figures: &figures };
    s.heartbeat(&beat, later(60)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(
        pending_ids(&*s, Feed::OwnAndUnclaimed("w3")),
        [e1.id],
        "the dead owner's claim ran out; the live one's holds"
    );
    let pending = s.pending_events(10, true, Feed::OwnAndUnclaimed("w3"), 0).unwrap();
    assert_eq!(pending[0].event.claims, 2, "taking it again counts a try");
    let workers = s.workers().unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!((workers[0].id.as_str(), workers[0].pid, &workers[0].figures), ("alive", 7, &figures));
    s.forget_worker("alive").unwrap();
    assert!(s.workers().unwrap().is_empty());
}

fn an_event_is_set_aside_when_taken_beyond_its_tries_never_while_held(s: Arc<dyn Store>) {
    let e = one(&*s, ingest("t", EventKind::Created, None, json!({})));
    let ms = |n| Utc::now() + chrono::Duration::milliseconds(n);
    let pause = |n| std::thread::sleep(std::time::Duration::from_millis(n));
    // Two owners lose their claims in turn; a third takes it for the last try.
    for owner in ["a", "b"] {
        assert_eq!(s.claim(&[e.id], owner, ms(200)).unwrap(), [e.id]);
        pause(250);
    }
    assert_eq!(s.claim(&[e.id], "c", ms(1500)).unwrap(), [e.id]);
    let held = s.pending_events(10, true, Feed::OwnAndUnclaimed("c"), 0).unwrap();
    assert_eq!(held.len(), 1, "its holder runs the last try");
    assert_eq!(held[0].event.claims, MAX_EVENT_TRIES);
    assert!(pending_ids(&*s, Feed::OwnAndUnclaimed("d")).is_empty());
    assert!(s.runs_of_event(e.id).unwrap().is_empty(), "nothing sets aside an event another holds");
    assert_eq!(s.queue_depth().unwrap(), 1);
    // The last try's claim runs out too: taking it once more sets it aside instead.
    pause(1600);
    assert!(pending_ids(&*s, Feed::OwnAndUnclaimed("d")).is_empty());
    let runs = s.runs_of_event(e.id).unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!((runs[0].rule.as_str(), runs[0].status), (SET_ASIDE, RunStatus::Failed));
    assert_eq!(s.queue_depth().unwrap(), 0);
}

fn a_tick_is_taken_once_and_a_running_job_is_not_overlapped(s: Arc<dyn Store>) {
    // Schedules tick on whole seconds.
    let t0 = chrono::SubsecRound::trunc_subsecs(Utc::now(), 0);
    let t1 = t0 + chrono::Duration::seconds(2);
    let t2 = t0 + chrono::Duration::seconds(4);
    // Three workers ask for the same tick from three threads: one runs it.
    let threads: Vec<_> = (0..3)
        .map(|w| {
            let s = s.clone();
            std::thread::spawn(move || s.take_job_tick("pull", t0, &format!("w{w}"), later(60)).unwrap())
        })
        .collect();
    let taken: Vec<TickTaken> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(taken.iter().filter(|t| **t == TickTaken::Run).count(), 1, "{taken:?}");
    assert_eq!(taken.iter().filter(|t| **t == TickTaken::Taken).count(), 2, "{taken:?}");
    assert_eq!(s.last_job_tick("pull").unwrap(), Some(t0));
    // The next tick while that run goes on: skipped, marked handled.
    assert!(matches!(s.take_job_tick("pull", t1, "w1", later(60)).unwrap(), TickTaken::Running(_)));
    assert_eq!(s.take_job_tick("pull", t1, "w2", later(60)).unwrap(), TickTaken::Taken);
    // A run that ended quickly: the same tick asked for again, late, is still taken.
    for w in ["w0", "w1", "w2"] {
        s.end_job_run("pull", w).unwrap();
    }
    assert_eq!(s.take_job_tick("pull", t1, "w0", later(60)).unwrap(), TickTaken::Taken);
    assert_eq!(s.take_job_tick("pull", t0, "w0", later(60)).unwrap(), TickTaken::Taken);
    // Its run ends (only its runner's word counts): the tick after runs.
    for w in ["w0", "w1", "w2"] {
        s.end_job_run("pull", w).unwrap();
    }
    assert_eq!(
        s.take_job_tick("pull", t2, "w2", Utc::now() + chrono::Duration::milliseconds(200)).unwrap(),
        TickTaken::Run
    );
    // A runner that dies: its lease runs out and the next tick runs elsewhere.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let t3 = t2 + chrono::Duration::seconds(2);
    assert_eq!(s.take_job_tick("pull", t3, "w0", later(60)).unwrap(), TickTaken::Run);
    // A tick never moves back.
    s.record_job_tick("pull", t0).unwrap();
    assert_eq!(s.last_job_tick("pull").unwrap(), Some(t3));
    assert_eq!(s.last_job_tick("other").unwrap(), None);
}

fn due_retries_are_claimed_once(s: Arc<dyn Store>) {
    let events = created(&*s, "t", 3);
    for e in &events {
        let r = Run { status: RunStatus::Retrying, next_attempt_at: Some(Utc::now()), ..run_of(e, "r") };
        s.commit_run(Commit::bare(&r, Some(e.id))).unwrap();
    }
    let first = s.claim_due_retries(later(1), 10, later(60)).unwrap();
    assert_eq!(first.len(), 3);
    assert!(first.iter().all(|r| r.next_attempt_at.is_some_and(|t| t <= Utc::now())), "the runs as they were");
    assert!(s.claim_due_retries(later(1), 10, later(60)).unwrap().is_empty(), "claimed: not due again until the lease");
    assert_eq!(s.claim_due_retries(later(120), 10, later(180)).unwrap().len(), 3, "due again once the lease ran out");
}

fn the_fanout_limit_refuses_the_run_that_crosses_it(s: Arc<dyn Store>) {
    s.set_max_fanout(3);
    let root = one(&*s, ingest("t", EventKind::Created, None, json!({})));
    let creates = |n: usize| -> Vec<Write> {
        (0..n).map(|_| Write::Create(tripline::record::Record::new("child", Fields::new()))).collect()
    };
    let w = creates(2);
    let (_, raised) = s.commit_run(Commit { writes: &w, depth: 1, ..Commit::bare(&run_of(&root, "a"), None) }).unwrap();
    assert_eq!(raised.len(), 2);
    let w = creates(2);
    let refused = s.commit_run(Commit { writes: &w, depth: 2, ..Commit::bare(&run_of(&raised[0], "b"), None) });
    let message = refused.unwrap_err().to_string();
    assert!(message.contains("max_fanout = 3"), "{message}");
    assert_eq!(s.find_records("child", &Fields::new(), 10).unwrap().len(), 2, "the refused run created nothing");
}

fn kv_catalog_and_pages(s: Arc<dyn Store>) {
    s.kv_set("ns", "k", &json!({"a": [1, 2]})).unwrap();
    assert_eq!(s.kv_get("ns", "k").unwrap(), Some(json!({"a": [1, 2]})));
    s.kv_delete("ns", "k").unwrap();
    assert_eq!(s.kv_get("ns", "k").unwrap(), None);
    let files = vec![tripline::store::StoredFile {
        kind: tripline::store::FileKind::Rule,
        path: "a.toml".into(),
        text: "name = \"a\"".into(),
        loaded_at: chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456Z").unwrap().with_timezone(&Utc),
    }];
    s.save_catalog_files(&files).unwrap();
    assert_eq!(s.catalog_files().unwrap(), files);
    let events = created(&*s, "t", 5);
    for (i, e) in events.iter().enumerate() {
        let status = if i % 2 == 0 { RunStatus::Ok } else { RunStatus::Failed };
        s.commit_run(Commit::bare(&Run { status, ..run_of(e, if i < 3 { "x" } else { "y" }) }, Some(e.id))).unwrap();
    }
    let page = s.runs_page(&tripline::store::RunQuery { limit: 2, ..Default::default() }).unwrap();
    assert_eq!(page.len(), 2);
    let next =
        s.runs_page(&tripline::store::RunQuery { limit: 10, before: Some(page[1].id), ..Default::default() }).unwrap();
    assert_eq!(next.len(), 3);
    assert!(next.iter().all(|r| r.id < page[1].id));
    let failed = s
        .runs_page(&tripline::store::RunQuery { status: Some(RunStatus::Failed), limit: 10, ..Default::default() })
        .unwrap();
    assert_eq!(failed.len(), 2);
    let failing = s.failing_rules().unwrap();
    assert_eq!(failing.iter().map(|f| (f.rule.as_str(), f.runs)).collect::<Vec<_>>(), [("y", 1), ("x", 1)]);
    let minutes = s.runs_per_minute(Utc::now() - chrono::Duration::hours(1), 100).unwrap();
    assert_eq!(minutes.iter().map(|m| m.ok + m.not_ok).sum::<u64>(), 5);
    assert_eq!(minutes[0].minute.len(), "2026-01-02T03:04".len());
    let records = s.records_page("t", None, 3).unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(s.records_page("t", Some(&records[2].id), 10).unwrap().len(), 2);
    assert_eq!(s.entities().unwrap(), ["t"]);
    assert_eq!(s.runs(&RunFilter { failed: true, ..Default::default() }).unwrap().len(), 2);
    assert_eq!(s.runs(&RunFilter { rule: Some("y".into()), ..Default::default() }).unwrap().len(), 2);
}

/// The same delivery taken by several listeners at once (workers behind one load balancer):
/// one event is stored, the others are told it was seen.
fn a_delivery_key_taken_at_once_by_many_is_stored_once(s: Arc<dyn Store>) {
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut item = ingest("ticket", EventKind::Created, None, json!({"n": 1}));
                item.idempotency_key = Some("delivery-1".into());
                s.ingest(&[item], None).unwrap().pop().unwrap()
            })
        })
        .collect();
    let stored: Vec<Event> = threads.into_iter().filter_map(|t| t.join().unwrap()).collect();
    assert_eq!(stored.len(), 1, "one of the six stored it");
    assert_eq!(s.find_records("ticket", &Fields::new(), 10).unwrap().len(), 1, "one record, not six");
    assert_eq!(s.event_by_idempotency_key("delivery-1").unwrap().map(|e| e.id), Some(stored[0].id));
}

/// A worker whose claim ran out while its run went on, and whose event another worker took:
/// its commit is refused and keeps nothing; the worker holding the event commits.
fn a_run_whose_claim_was_taken_commits_nothing(s: Arc<dyn Store>) {
    let e = one(&*s, ingest("ticket", EventKind::Created, None, json!({})));
    let soon = Utc::now() + chrono::Duration::milliseconds(200);
    assert_eq!(s.claim(&[e.id], "slow", soon).unwrap(), [e.id]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(s.claim(&[e.id], "fast", later(60)).unwrap(), [e.id], "the claim ran out: another takes it");
    let writes = [Write::Comment { id: e.record.id.clone(), text: "done".into(), key: None }];
    let run = run_of(&e, "r");
    let late = s.commit_run(Commit { writes: &writes, fence: Some("slow"), ..Commit::bare(&run, Some(e.id)) });
    assert!(matches!(late, Err(StoreError::ClaimLost(id)) if id == e.id), "{late:?}");
    assert!(s.get_record(&e.record.id).unwrap().unwrap().comments.is_empty(), "nothing of the late run is kept");
    assert!(s.runs_of_event(e.id).unwrap().is_empty());
    assert_eq!(s.queue_depth().unwrap(), 1);
    s.commit_run(Commit { writes: &writes, fence: Some("fast"), ..Commit::bare(&run, Some(e.id)) }).unwrap();
    assert_eq!(s.get_record(&e.record.id).unwrap().unwrap().comments.len(), 1);
    assert_eq!(s.queue_depth().unwrap(), 0);
    // Finished: a second commit of the same event is refused too.
    let again = s.commit_run(Commit { writes: &writes, fence: Some("fast"), ..Commit::bare(&run, Some(e.id)) });
    assert!(matches!(again, Err(StoreError::ClaimLost(_))), "{again:?}");
    assert_eq!(s.get_record(&e.record.id).unwrap().unwrap().comments.len(), 1);
}
