//! The durable pipeline under load: N events through `tripline fire` (JSON Lines -> store ->
//! rules -> script -> records), run as the release binary on a temp project.
//!
//! Prints events/s, the p50 / p99 latency from an event's acceptance (stored) to the end of
//! its run, and the process's peak memory, for N and for 10 x N, so that a flat peak shows the
//! batch does not accumulate. The reference in the same run is the time `fire --queue` takes
//! to only store the same events.
//!
//! `cargo bench --bench pipeline` (N = 100,000 by default; `PIPELINE_EVENTS` sets it).

use std::path::Path;
use std::process::Command;

#[path = "common/process.rs"]
mod process;
use process::{binary, run_measured};

fn latencies(db: &Path) -> (f64, f64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT (julianday(r.finished_at) - julianday(e.created_at)) * 86400000.0 FROM runs r JOIN events e ON e.id = r.event_id",
        )
        .unwrap();
    let mut ms: Vec<f64> = stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)];
    (at(0.5), at(0.99))
}

fn project(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
    std::fs::write(dir.path().join("tripline.toml"), "").unwrap();
    std::fs::write(
        dir.path().join("rules/stage.toml"),
        "name = \"stage\"\nentity = \"ticket\"\nscript = \"stage.rhai\"\nconditions = [{ field = \"Created\", op = \"equals\", value = true }, { field = \"Source\", op = \"equals\", value = \"FlexHR\" }]\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("scripts/stage.rhai"), "api.comment(record, `staged ${record.EmployeeId}`);\n")
        .unwrap();
    let mut lines = String::with_capacity(n * 120);
    for i in 0..n {
        lines.push_str(&format!(
            "{{\"Source\":\"FlexHR\",\"EmployeeId\":\"E{i}\",\"FirstName\":\"Ann\",\"LastName\":\"Lee\",\"Department\":\"Sales\"}}\n"
        ));
    }
    std::fs::write(dir.path().join("events.jsonl"), lines).unwrap();
    dir
}

fn main() {
    let n: usize = std::env::var("PIPELINE_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let bin = binary();
    for count in [n, n * 10] {
        let dir = project(count);
        let cfg = dir.path().join("tripline.toml");
        let events = dir.path().join("events.jsonl");
        let (t_queue, _) = run_measured(
            Command::new(&bin)
                .args(["fire", "ticket", "--queue", "--quiet", "--config"])
                .arg(&cfg)
                .arg("--record")
                .arg(&events),
        );
        std::fs::remove_dir_all(dir.path().join("data")).unwrap();
        let (t_fire, peak_kb) = run_measured(
            Command::new(&bin).args(["fire", "ticket", "--quiet", "--config"]).arg(&cfg).arg("--record").arg(&events),
        );
        let (p50, p99) = latencies(&dir.path().join("data/tripline.db"));
        println!(
            "{count} events: {:.0} events/s through rules and scripts (store only: {:.0} events/s, ratio {:.2}); accept-to-run-end p50 {p50:.1} ms, p99 {p99:.1} ms; peak RSS {:.1} MiB",
            count as f64 / t_fire.as_secs_f64(),
            count as f64 / t_queue.as_secs_f64(),
            t_queue.as_secs_f64() / t_fire.as_secs_f64(),
            peak_kb as f64 / 1024.0
        );
    }
}
