//! P1, the durable pipeline: N events against 200 rules through `tripline fire`, every run
//! committed to SQLite, against two references in the same run:
//!
//! - durable_rules (Python, rules matched in memory by its C engine, nothing stored) on the
//!   same events and the same 200 rules (`benches/reference/durable_rules_p1.py`; `pip
//!   install durable_rules`);
//! - `tripline fire --queue` on the same input: the events only stored.
//!
//! The rules: `event_type equals eN and department equals dM` for 20 x 10 pairs, each running
//! the script `let x = 1;`. 80 % of the events match one rule, 20 % none. Every figure is a
//! whole process's wall time (start, reading the input, the work, exit), measured the same way
//! for each, and the peak resident memory of `tripline fire` for N and 10 x N.
//!
//! `cargo bench --bench rules200` (N = 50,000; `RULES200_EVENTS` sets it).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[path = "common/p1.rs"]
mod p1;
#[path = "common/process.rs"]
mod process;
use process::{binary, run_measured};

fn main() {
    let n: usize = std::env::var("RULES200_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
    let bin = binary();
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/reference/durable_rules_p1.py");
    for count in [n, n * 10] {
        let dir = p1::project("", count);
        let cfg = dir.path().join("tripline.toml");
        let events = dir.path().join("events.jsonl");
        let (t_python, _) = run_measured(Command::new("python3").arg(&reference).arg(&events));
        let (t_queue, _) = run_measured(
            Command::new(&bin)
                .args(["fire", "event", "--queue", "--quiet", "--config"])
                .arg(&cfg)
                .arg("--record")
                .arg(&events),
        );
        std::fs::remove_dir_all(dir.path().join("data")).unwrap();
        let (t_fire, peak_kb) = run_measured(
            Command::new(&bin)
                .env("TRIPLINE_LOG", "warn")
                .args(["fire", "event", "--quiet", "--config"])
                .arg(&cfg)
                .arg("--record")
                .arg(&events),
        );
        let runs: i64 = rusqlite::Connection::open(dir.path().join("data/tripline.db"))
            .unwrap()
            .query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
            .unwrap();
        let rate = |t: Duration| count as f64 / t.as_secs_f64();
        println!(
            "{count} events ({runs} runs): tripline fire {:.0} events/s; durable_rules {:.0} events/s (ratio {:.2}); \
             fire --queue {:.0} events/s (ratio {:.2}); peak RSS {:.1} MiB",
            rate(t_fire),
            rate(t_python),
            t_python.as_secs_f64() / t_fire.as_secs_f64(),
            rate(t_queue),
            t_queue.as_secs_f64() / t_fire.as_secs_f64(),
            peak_kb as f64 / 1024.0
        );
    }
}
