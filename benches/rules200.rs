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
//! Beside them, the **SQL floor**: the rows that run wrote (records, events, runs) written again
//! into a new store of the same schema by bare SQL on one connection, as few statements as the
//! contract allows (each event stored claimed before it runs, 500 to a transaction; each run
//! stored with its event's finish after, 256 to a transaction; the events no rule matches
//! finished in one statement each), with nothing parsed, matched or run. No implementation of
//! the durable pipeline on this store does less writing, and SQLite has one writer: the floor
//! bounds what `fire` can reach.
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
        let t_floor = sql_floor(&dir.path().join("data/tripline.db"), &dir.path().join("floor"));
        let rate = |t: Duration| count as f64 / t.as_secs_f64();
        println!(
            "{count} events ({runs} runs): tripline fire {:.0} events/s; durable_rules {:.0} events/s (ratio {:.2}); \
             fire --queue {:.0} events/s (ratio {:.2}); peak RSS {:.1} MiB; \
             SQL floor {:.0} events/s (fire's ratio to it {:.2}, durable_rules' {:.2})",
            rate(t_fire),
            rate(t_python),
            t_python.as_secs_f64() / t_fire.as_secs_f64(),
            rate(t_queue),
            t_queue.as_secs_f64() / t_fire.as_secs_f64(),
            peak_kb as f64 / 1024.0,
            rate(t_floor),
            t_floor.as_secs_f64() / t_fire.as_secs_f64(),
            t_floor.as_secs_f64() / t_python.as_secs_f64(),
        );
    }
}

/// The SQL floor (see the top): the rows of the store at `written`, read into memory, then
/// written again into a new store in `dir` by bare SQL. Returns the time of the writing.
fn sql_floor(written: &Path, dir: &Path) -> Duration {
    use rusqlite::params;
    type Row = Vec<rusqlite::types::Value>;
    let rows = |conn: &rusqlite::Connection, sql: &str| -> Vec<Row> {
        let mut stmt = conn.prepare(sql).unwrap();
        let n = stmt.column_count();
        stmt.query_map([], |r| (0..n).map(|i| r.get(i)).collect()).unwrap().map(Result::unwrap).collect()
    };
    let from = rusqlite::Connection::open(written).unwrap();
    let records = rows(&from, "SELECT id, entity, status, fields, created_at, updated_at FROM records ORDER BY rowid");
    let events = rows(&from, "SELECT id, kind, record_id, record, previous, depth, created_at FROM events ORDER BY id");
    let runs = rows(
        &from,
        "SELECT event_id, rule, record_id, event, status, error, duration_ms, log, attempts, started_at, finished_at, \
         next_attempt_at, writes FROM runs ORDER BY id",
    );
    assert_eq!(records.len(), events.len(), "one new record per event");
    drop(from);
    // The schema (and the WAL, which the file keeps), by the store itself; then its settings
    // of a connection on a bare one.
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("tripline.db");
    drop(tripline::store::sqlite::SqliteStore::open(&path).unwrap());
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.pragma_update(None, "wal_autocheckpoint", tripline::store::sqlite::CHECKPOINT_BACKSTOP).unwrap();
    let until = "2999-01-01T00:00:00Z";
    let start = std::time::Instant::now();
    for (records, events) in records.chunks(500).zip(events.chunks(500)) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        for (r, e) in records.iter().zip(events) {
            tx.prepare_cached(
                "INSERT INTO records (id, entity, status, fields, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .unwrap()
            .execute(rusqlite::params_from_iter(r))
            .unwrap();
            tx.prepare_cached(
                "INSERT INTO events (id, kind, record_id, record, previous, depth, created_at, claimed_by, claimed_until, tries)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'floor', ?8, 1)",
            )
            .unwrap()
            .execute(params![e[0], e[1], e[2], e[3], e[4], e[5], e[6], until])
            .unwrap();
        }
        tx.commit().unwrap();
    }
    // Event ids: always integers (the store's own ids).
    let id = |v: &rusqlite::types::Value| match v {
        rusqlite::types::Value::Integer(id) => *id,
        other => panic!("an event id that is not an integer: {other:?}"),
    };
    let ran: std::collections::HashSet<i64> = runs.iter().map(|r| id(&r[0])).collect();
    let unmatched: Vec<i64> = events.iter().map(|e| id(&e[0])).filter(|e| !ran.contains(e)).collect();
    for ids in unmatched.chunks(500) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        for id in ids {
            tx.prepare_cached("UPDATE events SET done = 1, claimed_by = NULL, claimed_until = NULL WHERE id = ?1")
                .unwrap()
                .execute([id])
                .unwrap();
        }
        tx.commit().unwrap();
    }
    for runs in runs.chunks(256) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
        for r in runs {
            let finished = tx
                .prepare_cached(
                    "UPDATE events SET done = 1, claimed_by = NULL, claimed_until = NULL
                     WHERE id = ?1 AND done = 0 AND claimed_by = 'floor'",
                )
                .unwrap()
                .execute([&r[0]])
                .unwrap();
            assert_eq!(finished, 1, "one run per event");
            tx.prepare_cached(
                "INSERT INTO runs (event_id, rule, record_id, event, status, error, duration_ms, log, attempts, \
                 started_at, finished_at, next_attempt_at, writes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )
            .unwrap()
            .execute(rusqlite::params_from_iter(r))
            .unwrap();
        }
        tx.commit().unwrap();
    }
    start.elapsed()
}
