//! Scale-out: the P1 workload (N events against 200 rules, `benches/rules200.rs`) queued, then
//! run by 1, 2 and 3 `tripline run` workers sharing one store: PostgreSQL (a server of the
//! bench's own, from Debian's packages) against the same on one SQLite file, in the same run.
//!
//! Each figure is the time from starting the workers to an empty queue (every event
//! processed, every run committed), as events per second; ratios are against one worker on
//! SQLite. The PostgreSQL server runs without fsync (as SQLite's WAL with
//! `synchronous = NORMAL` commits without one).
//!
//! `cargo bench --bench scaleout` (N = 20,000; `SCALEOUT_EVENTS` sets it).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/p1.rs"]
mod p1;
#[path = "../tests/it/common/postgres.rs"]
#[allow(dead_code)]
mod postgres;
#[path = "common/process.rs"]
#[allow(dead_code)]
mod process;

/// Queues the events, starts `workers` daemons, and times them until the queue is empty.
fn drain(bin: &Path, dir: &Path, workers: usize, depth: &dyn Fn() -> u64) -> Duration {
    let cfg = dir.join("tripline.toml");
    let status = Command::new(bin)
        .args(["fire", "event", "--queue", "--quiet", "--config"])
        .arg(&cfg)
        .arg("--record")
        .arg(dir.join("events.jsonl"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    let mut daemons: Vec<Child> = (0..workers)
        .map(|_| {
            Command::new(bin)
                .env("TRIPLINE_LOG", "warn")
                .args(["run", "--config"])
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    while depth() > 0 {
        std::thread::sleep(Duration::from_millis(50));
        assert!(start.elapsed() < Duration::from_secs(900), "the workers did not drain the queue");
    }
    let elapsed = start.elapsed();
    for d in &mut daemons {
        let _ = Command::new("kill").args(["-TERM", &d.id().to_string()]).status();
        let _ = d.wait();
    }
    elapsed
}

fn main() {
    let n: usize = std::env::var("SCALEOUT_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let bin = process::binary();
    let pg = postgres::Postgres::start();
    let mut sqlite_one = None;
    for workers in 1..=3 {
        let dir = p1::project("", n);
        let db = dir.path().join("data/tripline.db");
        let t_sqlite = drain(&bin, dir.path(), workers, &|| {
            rusqlite::Connection::open(&db)
                .and_then(|c| c.query_row("SELECT count(*) FROM events WHERE done = 0", [], |r| r.get::<_, i64>(0)))
                .map(|n| n as u64)
                .unwrap_or(1)
        });
        let url = pg.create_db();
        let name = url.rsplit('/').next().unwrap().to_string();
        let dir = p1::project(&format!("[store]\nurl = \"{url}\"\n"), n);
        let t_pg = drain(&bin, dir.path(), workers, &|| {
            pg.psql(&name, "SELECT count(*) FROM events WHERE NOT done").parse().unwrap_or(1)
        });
        let rate = |t: Duration| n as f64 / t.as_secs_f64();
        let base = *sqlite_one.get_or_insert(rate(t_sqlite));
        println!(
            "{workers} worker{}: PostgreSQL {:.0} events/s ({:.2}x SQLite with 1 worker); SQLite {:.0} events/s ({:.2}x)",
            if workers == 1 { "" } else { "s" },
            rate(t_pg),
            rate(t_pg) / base,
            rate(t_sqlite),
            rate(t_sqlite) / base,
        );
    }
}
