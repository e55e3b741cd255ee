//! Webhook throughput: signed deliveries accepted per second on loopback, each stored (record
//! and event, one transaction) before its 202, while the dispatcher runs a rule on every event
//! at the same time; and the process's memory (RSS) under that load.
//!
//! `cargo bench --bench webhook`. The load comes from `wrk` when it is installed (a separate
//! process, as a real sender would be), else from an in-process client. Set
//! `TRIPLINE_BENCH_SECS` (default 10) and `TRIPLINE_BENCH_CONNECTIONS` (default 32).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tripline::daemon::Options;
use tripline::runtime::Runtime;

const SECRET: &str = "bench-hmac-secret-1234";
const BODY: &str = r#"{"Source":"bench","Title":"disk full","Device":{"name":"PC-17","os":"windows"}}"#;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The resident set size of this process, in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    tokio.block_on(bench());
}

async fn bench() {
    let secs = env("TRIPLINE_BENCH_SECS", 10);
    let connections = env("TRIPLINE_BENCH_CONNECTIONS", 32);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("rules")).unwrap();
    std::fs::create_dir_all(p.join("scripts")).unwrap();
    std::fs::write(
        p.join("tripline.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[webhooks.bench]\npath = \"/hooks/bench\"\nentity = \"ticket\"\n\
             auth = {{ type = \"hmac_sha256\", header = \"X-Signature\", secret = \"{SECRET}\" }}\n"
        ),
    )
    .unwrap();
    // TRIPLINE_BENCH_RULE=0 measures the store alone (the events stay queued).
    let with_rule = env("TRIPLINE_BENCH_RULE", 1) == 1;
    let rule_entity = if with_rule { "ticket" } else { "nothing" };
    std::fs::write(
        p.join("rules/bench.toml"),
        format!(
            "name = \"Bench\"\nentity = \"{rule_entity}\"\nscript = \"bench.rhai\"\n\
             conditions = [{{ field = \"Created\", op = \"equals\", value = true }}, {{ field = \"Source\", op = \"equals\", value = \"bench\" }}]\n"
        ),
    )
    .unwrap();
    std::fs::write(
        p.join("scripts/bench.rhai"),
        "let device = record.Device.name;\nif device == \"\" { throw \"no device\"; }\n",
    )
    .unwrap();
    let rt = Arc::new(Runtime::builder().config_file(p.join("tripline.toml")).build().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("http://{addr}/hooks/bench");
    let mut options = Options::default();
    options.listener = Some(listener);
    options.signals = false;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(tripline::daemon::run_with(rt.clone(), options, async {
        let _ = stopped.await;
    }));
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(BODY.as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    let http = reqwest::Client::new();
    while http.get(format!("http://{addr}/healthz")).send().await.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let idle_rss = rss_mib();

    // Sample RSS while the load runs.
    let sampling = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (sampling, peak) = (sampling.clone(), peak.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max((rss_mib() * 1024.0) as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // Sample the queue depth each second while the load runs: a dispatcher that keeps up
    // holds it level; one that falls behind grows it for the whole run.
    let depths = {
        let (sampling, rt) = (sampling.clone(), rt.clone());
        std::thread::spawn(move || {
            let mut depths = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                depths.push(rt.store().queue_depth().unwrap_or(0));
            }
            depths
        })
    };
    let started = Instant::now();
    let (accepted, other, tool, latency) = if which("wrk") {
        wrk(&url, &signature, secs, connections).await
    } else {
        rust_client(&url, &signature, secs, connections).await
    };
    let load_time = started.elapsed();
    let queued_at_end = rt.store().queue_depth().unwrap();
    let depth_samples = (load_time.as_secs() as usize).max(1);
    // Drain what the dispatcher has not processed yet.
    while with_rule && rt.store().queue_depth().unwrap() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let mut depths = depths.join().unwrap();
    depths.truncate(depth_samples);
    let runs = rt.runs(&tripline::store::RunFilter { limit: 0, ..Default::default() }).unwrap();
    let ok = runs.iter().filter(|r| r.status == tripline::store::RunStatus::Ok).count();
    let _ = stop.send(());
    daemon.await.unwrap().unwrap();

    println!("webhook load: {tool}, {connections} connections, {secs} s, HMAC-signed {} -byte bodies", BODY.len());
    println!(
        "  accepted (202)          {accepted} ({:.0}/s); other answers {other}",
        accepted as f64 / load_time.as_secs_f64()
    );
    if let Some(l) = latency {
        println!("  latency                 {l}");
    }
    println!(
        "  runs                    {ok} ok of {} ({queued_at_end} events still queued when the load stopped; all processed after {:.1} s, {:.0} runs/s overall)",
        runs.len(),
        drained.as_secs_f64(),
        runs.len() as f64 / drained.as_secs_f64()
    );
    let half = depths.len() / 2;
    let max_of = |d: &[u64]| d.iter().copied().max().unwrap_or(0);
    println!(
        "  queue depth under load  max {} in the first half, {} in the second (each second: {:?})",
        max_of(&depths[..half]),
        max_of(&depths[half..]),
        depths
    );
    println!(
        "  memory (RSS)            idle {idle_rss:.1} MiB, peak under load {:.1} MiB",
        peak.load(Ordering::Relaxed) as f64 / 1024.0
    );
}

fn which(tool: &str) -> bool {
    std::process::Command::new(tool).arg("--version").output().is_ok()
}

/// Runs wrk; returns (2xx count, other count, tool, latency summary).
async fn wrk(url: &str, signature: &str, secs: u64, connections: u64) -> (u64, u64, String, Option<String>) {
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        script.path(),
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{BODY}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
             wrk.headers[\"X-Signature\"] = \"{signature}\"\n"
        ),
    )
    .unwrap();
    let args = vec![
        "-t1".to_string(),
        format!("-c{connections}"),
        format!("-d{secs}s"),
        "--latency".to_string(),
        "-s".to_string(),
        script.path().display().to_string(),
        url.to_string(),
    ];
    let out = tokio::process::Command::new("wrk").args(&args).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let non2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let pct =
        |p: &str| text.lines().find_map(|l| l.trim().strip_prefix(p).map(|v| v.trim().to_string())).unwrap_or_default();
    let latency = format!("p50 {}, p90 {}, p99 {}", pct("50%"), pct("90%"), pct("99%"));
    (requests - non2xx, non2xx, "wrk -t1".into(), Some(latency))
}

/// An in-process client when wrk is missing.
async fn rust_client(url: &str, signature: &str, secs: u64, connections: u64) -> (u64, u64, String, Option<String>) {
    let ok = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (ok, other, url, signature) = (ok.clone(), other.clone(), url.to_string(), signature.to_string());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            while Instant::now() < deadline {
                let r = http.post(&url).header("X-Signature", &signature).body(BODY).send().await;
                match r {
                    Ok(r) if r.status().as_u16() == 202 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => other.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (ok.load(Ordering::Relaxed), other.load(Ordering::Relaxed), "in-process client".into(), None)
}
