//! Engine benchmarks (issue figures), each against a reference measured in the same run:
//!
//! 1. matching: 100,000 parsed events against 200 rules (`Event equals X and Department
//!    equals Y`, about 80 % matching one rule), indexed RuleSet vs a plain Rust loop that
//!    tests every rule's two fields directly;
//! 2. dispatch: 100,000 matched events through the trivial script `record.x = 1` (matching,
//!    the run context, the scope, the script) without the store, vs raw `Engine::call_fn` on
//!    prebuilt values.
//!
//! `cargo bench --bench engine` prints events/s and the ratios. Single-threaded.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, Map, Scope};
use serde_json::json;
use tripline::config::LimitsConfig;
use tripline::record::{Event, EventKind, Record};
use tripline::rule::{Condition, Match, Rule, RuleSet};
use tripline::script::{Hosts, Invocation, RunCtx, ScriptEngine};
use tripline::store::sqlite::SqliteStore;

const EVENTS: usize = 100_000;
const KINDS: usize = 10;
const DEPTS: usize = 20;

fn rules() -> Vec<Rule> {
    let mut out = Vec::new();
    for k in 0..KINDS {
        for d in 0..DEPTS {
            out.push(Rule {
                name: format!("r{k}-{d}"),
                entity: "ticket".into(),
                conditions: vec![
                    Condition::compile("Event", "equals", Some(json!(format!("kind{k}")))).unwrap(),
                    Condition::compile("Department", "equals", Some(json!(format!("dept{d}")))).unwrap(),
                ],
                match_: Match::All,
                when: None,
                script: "s.rhai".into(),
                priority: 100,
                enabled: true,
                params: Default::default(),
                notify_on_failure: Vec::new(),
                path: "r.toml".into(),
            });
        }
    }
    out
}

fn events() -> Vec<Event> {
    // A fixed pseudo-random sequence: 80 % of events name an existing (kind, department).
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..EVENTS)
        .map(|i| {
            let k = next() as usize % KINDS;
            let d = if next() % 10 < 8 { next() as usize % DEPTS } else { DEPTS + (next() as usize % 5) };
            let mut r = Record::new(
                "ticket",
                json!({"Department": format!("dept{d}"), "Title": "x"}).as_object().unwrap().clone(),
            );
            r.id = format!("r{i}");
            Event {
                id: i as i64,
                kind: EventKind::Custom(format!("kind{k}")),
                record: r,
                previous: None,
                depth: 0,
                created_at: chrono::Utc::now(),
                claims: 1,
            }
        })
        .collect()
}

fn best_of<F: FnMut() -> usize>(n: usize, mut f: F) -> (Duration, usize) {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let c = f();
            (t.elapsed(), c)
        })
        .min_by_key(|(d, _)| *d)
        .unwrap()
}

fn rate(d: Duration) -> f64 {
    EVENTS as f64 / d.as_secs_f64()
}

fn main() {
    let rules = rules();
    let plain: Vec<(String, String)> =
        (0..KINDS).flat_map(|k| (0..DEPTS).map(move |d| (format!("kind{k}"), format!("dept{d}")))).collect();
    let set = RuleSet::new(rules);
    let events = events();

    let (t_index, matched) = best_of(5, || events.iter().map(|e| set.matching(black_box(e)).len()).sum());
    let (t_plain, matched_plain) = best_of(5, || {
        events
            .iter()
            .map(|e| {
                let dept = e.record.fields.get("Department").and_then(|v| v.as_str());
                plain.iter().filter(|(k, d)| e.kind.as_str() == k && dept == Some(d.as_str())).count()
            })
            .sum()
    });
    assert_eq!(matched, matched_plain, "index and plain loop agree");
    // A matcher written for exactly this rule shape: the rule of an event's two values in a
    // std HashMap, looked up by `&str` (event -> department -> rule, no allocation).
    let mut bare: std::collections::HashMap<String, std::collections::HashMap<String, usize>> = Default::default();
    for (i, (k, d)) in plain.iter().enumerate() {
        bare.entry(k.clone()).or_default().insert(d.clone(), i);
    }
    let (t_bare, matched_bare) = best_of(5, || {
        events
            .iter()
            .filter(|e| {
                let dept = e.record.fields.get("Department").and_then(|v| v.as_str()).unwrap_or("");
                black_box(bare.get(e.kind.as_str()).and_then(|m| m.get(dept))).is_some()
            })
            .count()
    });
    assert_eq!(matched, matched_bare, "index and bare lookup agree");
    println!(
        "matching: {matched} of {EVENTS} events matched one of 200 rules\n  indexed RuleSet  {:>12.0} events/s\n  plain Rust loop  {:>12.0} events/s\n  ratio indexed/plain = {:.2}",
        rate(t_index),
        rate(t_plain),
        t_plain.as_secs_f64() / t_index.as_secs_f64()
    );
    println!(
        "  bare HashMap<(event, department), rule> lookup {:>12.0} events/s
  ratio indexed/bare = {:.2}",
        rate(t_bare),
        t_bare.as_secs_f64() / t_index.as_secs_f64()
    );

    // Dispatch without the store.
    let engine = ScriptEngine::new(&LimitsConfig::default(), &[]);
    let ast = engine.compile(std::path::Path::new("s.rhai"), "record.x = 1").unwrap();
    let store: Arc<dyn tripline::store::Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let hosts = Arc::new(Hosts::default());
    let params = serde_json::Map::new();
    let matched_events: Vec<&Event> = events.iter().filter(|e| !set.matching(e).is_empty()).collect();
    let n = matched_events.len();
    let (t_dispatch, runs) = best_of(3, || {
        let mut runs = 0;
        for e in &matched_events {
            for rule in set.matching(e) {
                let ctx = Arc::new(RunCtx::new(
                    store.clone(),
                    hosts.clone(),
                    &rule.name,
                    Instant::now() + Duration::from_secs(30),
                    false,
                ));
                let inv = Invocation {
                    record: Some(&e.record),
                    previous: None,
                    event: e.kind.as_str(),
                    rule: &rule.name,
                    params: &params,
                };
                let _ = black_box(engine.run(&ast, &inv, ctx).unwrap());
                runs += 1;
            }
        }
        runs
    });
    let raw = Engine::new();
    let raw_ast = raw.compile("fn f(record) { record.x = 1 }").unwrap();
    let prebuilt: Vec<Map> = matched_events.iter().map(|e| tripline::script::record_to_map(&e.record)).collect();
    let (t_raw, _) = best_of(3, || {
        let mut scope = Scope::new();
        for m in &prebuilt {
            let _ =
                black_box(raw.call_fn::<Dynamic>(&mut scope, &raw_ast, "f", (Dynamic::from_map(m.clone()),)).unwrap());
        }
        prebuilt.len()
    });
    let per = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "dispatch: {runs} runs of `record.x = 1` without the store\n  tripline dispatch {:>11.0} runs/s\n  raw call_fn       {:>11.0} calls/s\n  ratio tripline/raw = {:.2}",
        per(t_dispatch),
        per(t_raw),
        t_raw.as_secs_f64() / t_dispatch.as_secs_f64()
    );
}
