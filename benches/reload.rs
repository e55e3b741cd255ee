//! Hot-reload latency: from a rule file's save to (a) the new catalog in force and (b) the
//! first event dispatched under the new version, over 100 edits, with the shipped debounce.
//!
//! `cargo bench --bench reload`. Each edit changes the value a rule's condition matches; the
//! probe posts events carrying the new value through a webhook until one of them runs the
//! rule, so (b) includes the webhook, the store and the dispatcher, as a user would see it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tripline::daemon::Options;
use tripline::runtime::Runtime;

const EDITS: usize = 100;

fn rule(value: &str) -> String {
    format!(
        "name = \"Probe\"\nentity = \"ticket\"\nscript = \"probe.rhai\"\n\
         conditions = [{{ field = \"Source\", op = \"equals\", value = \"{value}\" }}]\n"
    )
}

fn current_value(rt: &Runtime) -> Option<serde_json::Value> {
    let c = rt.catalog();
    match &c.rules.get("Probe")?.conditions.first()?.op {
        tripline::rule::condition::Op::Equals(v) => Some(v.clone()),
        _ => None,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{what:<40} p50 {:>7.1} ms   p95 {:>7.1} ms   p99 {:>7.1} ms   max {:>7.1} ms",
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.95)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap())
    );
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    tokio.block_on(bench());
}

async fn bench() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("rules")).unwrap();
    std::fs::create_dir_all(p.join("scripts")).unwrap();
    std::fs::write(
        p.join("tripline.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[webhooks.probe]\npath = \"/probe\"\nentity = \"ticket\"\nauth = { type = \"none\" }\n",
    )
    .unwrap();
    std::fs::write(p.join("rules/probe.toml"), rule("v0")).unwrap();
    std::fs::write(p.join("scripts/probe.rhai"), "1").unwrap();
    let rt = Arc::new(Runtime::builder().config_file(p.join("tripline.toml")).build().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/probe", listener.local_addr().unwrap());
    let mut options = Options::default();
    options.listener = Some(listener);
    options.signals = false;
    let debounce = options.debounce;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(tripline::daemon::run_with(rt.clone(), options, async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    while http.post(&url).body("{}").send().await.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut swaps = Vec::with_capacity(EDITS);
    let mut firsts = Vec::with_capacity(EDITS);
    let mut probes = 0usize;
    for i in 1..=EDITS {
        let value = format!("v{i}");
        // Let the previous edit's events settle so that edits do not merge.
        tokio::time::sleep(debounce + Duration::from_millis(100)).await;
        std::fs::write(p.join("rules/probe.toml"), rule(&value)).unwrap();
        let saved = Instant::now();
        let swap = {
            let rt = rt.clone();
            let want = serde_json::Value::String(value.clone());
            tokio::spawn(async move {
                while current_value(&rt) != Some(want.clone()) {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                saved.elapsed()
            })
        };
        let first = loop {
            probes += 1;
            let r: serde_json::Value = http
                .post(&url)
                .body(format!("{{\"Source\": \"{value}\"}}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let event = r["event_id"].as_i64().unwrap();
            // Processed when it has a run (the new version matched) or the queue is empty
            // (the old version did not).
            let matched = loop {
                if !rt.store().runs_of_event(event).unwrap().is_empty() {
                    break true;
                }
                if rt.store().queue_depth().unwrap() == 0 {
                    break !rt.store().runs_of_event(event).unwrap().is_empty();
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            };
            if matched {
                break saved.elapsed();
            }
        };
        swaps.push(swap.await.unwrap());
        firsts.push(first);
    }
    let _ = stop.send(());
    daemon.await.unwrap().unwrap();
    println!("hot reload over {EDITS} edits, debounce {} ms ({probes} probe events)", debounce.as_millis());
    report("save -> new catalog in force", swaps);
    report("save -> first event run by the new rule", firsts);
}
