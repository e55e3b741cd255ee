//! The console's `/runs` page with 1,000 runs in the store against 1,000,000: each page is
//! read by keyset paging on an index, so both should answer in the same order of time.
//!
//! `cargo bench --bench console_runs`. The runs are written straight into the SQLite file
//! (a bulk insert: committing a million runs through the dispatcher would take minutes and
//! measure something else), then a daemon with `[console]` serves them and a logged-in client
//! asks for the pages an admin asks for: the newest runs, the failed ones, one rule's, the
//! failed runs of one rule (as the issue spells it), and a page far back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tripline::daemon::Options;
use tripline::runtime::Runtime;

const ROUNDS: usize = 30;
const PASSWORD: &str = "bench-console-pw";

fn fill(dir: &std::path::Path, runs: usize) {
    drop(tripline::store::sqlite::SqliteStore::open_dir(&dir.join("data")).unwrap());
    let mut conn = rusqlite::Connection::open(dir.join("data/tripline.db")).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut stmt = tx
            .prepare(
                "INSERT INTO runs (event_id, rule, record_id, event, status, error, duration_ms, log, attempts, started_at, finished_at)
                 VALUES (?1, ?2, ?3, 'created', ?4, ?5, 3, '[{\"level\":\"info\",\"message\":\"done\",\"at\":\"2026-12-01T10:00:00Z\"}]', 1, ?6, ?6)",
            )
            .unwrap();
        let start = chrono::Utc::now() - chrono::Duration::seconds(runs as i64);
        for i in 0..runs {
            // One run in a hundred failed; 200 rules.
            let failed = i % 100 == 7;
            let at = (start + chrono::Duration::seconds(i as i64)).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            stmt.execute(rusqlite::params![
                i as i64 + 1,
                format!("Rule {}", i % 200),
                format!("record-{}", i / 3),
                if failed { "failed" } else { "ok" },
                failed.then_some("scripts/r.rhai:2:5: the HR system said no"),
                at,
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap() + marker.len();
    html[start..].split('"').next().unwrap().to_string()
}

fn cookie(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .find_map(|v| v.to_str().ok()?.strip_prefix(&format!("{name}="))?.split(';').next().map(str::to_string))
        .unwrap()
}

async fn measure(runs: usize) -> Vec<(String, Duration)> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
    std::env::set_var("TRIPLINE_BENCH_CONSOLE_PW", PASSWORD);
    std::fs::write(
        dir.path().join("tripline.toml"),
        "[engine]\nrules_dir = \"rules\"\nscripts_dir = \"scripts\"\ndata_dir = \"data\"\nretention_days = 0\n\n\
         [console]\nlisten = \"127.0.0.1:0\"\n[console.users.ann]\nrole = \"viewer\"\npassword = \"${TRIPLINE_BENCH_CONSOLE_PW}\"\n",
    )
    .unwrap();
    let filled = Instant::now();
    fill(dir.path(), runs);
    eprintln!("{runs} runs written in {:.1} s", filled.elapsed().as_secs_f64());
    let runtime = Arc::new(Runtime::builder().config_file(dir.path().join("tripline.toml")).build().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut options = Options::default();
    options.watch = false;
    options.signals = false;
    options.console_listener = Some(listener);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(tripline::daemon::run_with(runtime, options, async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let url = |p: &str| format!("http://{addr}{p}");
    let form = loop {
        match http.get(url("/login")).send().await {
            Ok(r) => break r,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let login = cookie(&form, "tripline_login");
    let csrf = hidden(&form.text().await.unwrap(), "csrf");
    let r = http
        .post(url("/login"))
        .header("cookie", format!("tripline_login={login}"))
        .form(&[("user", "ann"), ("password", PASSWORD), ("csrf", &csrf), ("next", "/")])
        .send()
        .await
        .unwrap();
    let session = format!("tripline_session={}", cookie(&r, "tripline_session"));
    let far_back = (runs / 2).to_string();
    let pages = [
        "/runs".to_string(),
        "/runs?status=failed".into(),
        "/runs?rule=Rule+7".into(),
        "/runs?status=failed&rule=Rule+7".into(),
        format!("/runs?before={far_back}"),
    ];
    let mut out = Vec::new();
    for p in &pages {
        let mut samples = Vec::new();
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let r = http.get(url(p)).header("cookie", &session).send().await.unwrap();
            assert_eq!(r.status(), 200, "{p}");
            let body = r.text().await.unwrap();
            samples.push(t.elapsed());
            assert!(body.contains("class=\"run\""), "{p} lists runs");
        }
        samples.sort();
        out.push((p.clone(), samples[samples.len() / 2]));
    }
    let _ = stop.send(());
    daemon.await.unwrap().unwrap();
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let small = measure(1_000).await;
    let large = measure(1_000_000).await;
    println!("{:<36} {:>12} {:>14} {:>7}", "page (median of 30)", "1,000 runs", "1,000,000 runs", "ratio");
    for ((page, a), (_, b)) in small.iter().zip(&large) {
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        println!("{page:<36} {:>9.2} ms {:>11.2} ms {:>7.2}", ms(a), ms(b), ms(b) / ms(a));
    }
}
