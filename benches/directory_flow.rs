//! Users created through rules and scripts: 1,000 ticket events queued in the store, then
//! dispatched by the daemon's own dispatcher (`tripline::daemon::run`, `[engine] workers =
//! 32`) to a rule whose script calls `api.directory("LDAP").create_user(...)`, against a local
//! slapd (`dbnosync`). The reference, measured in the same run on the same server: a plain
//! ldap3 client keeping 32 adds in flight on one connection. Time runs from the dispatcher's
//! start to the last run committed `ok`. Both add the same attributes, of the same lengths;
//! one round of each warms up first; five rounds alternate which goes first. Printed: each
//! round's rates and ratio, the best rates and their ratio (the target is at least 0.8), and
//! the CPU each side used per user, in the client and in slapd: client and server share the
//! machine's cores, so on a busy machine the ratio follows the CPU the two sides need.
//!
//! Also printed, for information (no target): the engine and the store alone (a script that
//! calls no host), and the same 1,000 users through the seed's `api.ProcessFlexHrUserOnAD`,
//! which looks the person, a free CN and a free logon name up before each add (four LDAP
//! operations per user).
//!
//! `cargo bench --bench directory_flow` (needs `slapd` and `slapadd`: apt-get install slapd).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ldap3::Scope;
use serde_json::json;
use tripline::record::{from_value, EventKind};
use tripline::runtime::Runtime;
use tripline::store::{Ingest, RunFilter};

#[path = "common/slapd.rs"]
mod slapd;

use slapd::{add_ou, admin, raw_rate, start_slapd, Slapd, BASE, IN_FLIGHT, USERS};

const ROUNDS: usize = 5;

/// CPU seconds (user + system) a process has used so far, from `/proc/PID/stat`.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU used by this process and by slapd while `f` runs, in microseconds per user.
async fn cpu_per_user<T>(slapd: &Slapd, f: impl std::future::Future<Output = T>) -> (T, f64, f64) {
    let pid = slapd.child.id().to_string();
    let (me0, srv0) = (cpu_seconds("self"), cpu_seconds(&pid));
    let out = f.await;
    let (me1, srv1) = (cpu_seconds("self"), cpu_seconds(&pid));
    (out, (me1 - me0) * 1e6 / USERS as f64, (srv1 - srv0) * 1e6 / USERS as f64)
}

async fn count_under(url: &str, ou: &str) -> usize {
    let mut ldap = admin(url).await;
    let (found, _) =
        ldap.search(ou, Scope::OneLevel, "(objectClass=inetOrgPerson)", vec!["1.1"]).await.unwrap().success().unwrap();
    found.len()
}

/// A project folder: the configuration, a rule per flow and its script.
fn project(url: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("rules")).unwrap();
    std::fs::create_dir_all(d.join("scripts")).unwrap();
    std::fs::write(
        d.join("tripline.toml"),
        format!(
            "[engine]\nworkers = {IN_FLIGHT}\n\n[directories.LDAP]\nkind = \"ldap\"\nurl = \"{url}\"\n\
             bind_dn = \"cn=admin,{BASE}\"\nbind_password = \"secret\"\nbase_dn = \"{BASE}\"\n\
             allow_plaintext_bind = true\n"
        ),
    )
    .unwrap();
    let rule = |name: &str, entity: &str, script: &str| {
        format!(
            "name = \"{name}\"\nentity = \"{entity}\"\nscript = \"{script}\"\n\
             conditions = [{{ field = \"Created\", op = \"equals\", value = true }}]\n"
        )
    };
    std::fs::write(d.join("rules/create.toml"), rule("create user", "newuser", "create.rhai")).unwrap();
    std::fs::write(
        d.join("scripts/create.rhai"),
        "api.directory(\"LDAP\").create_user(#{ name: record.Name, uid: record.Uid, sn: \"User\", givenName: \"Given\", ou: record.Ou });\n",
    )
    .unwrap();
    std::fs::write(d.join("rules/noop.toml"), rule("noop", "noop", "noop.rhai")).unwrap();
    std::fs::write(d.join("scripts/noop.rhai"), "let name = record.Name;\n").unwrap();
    std::fs::write(d.join("rules/flexhr.toml"), rule("flexhr", "flexticket", "flexhr.rhai")).unwrap();
    std::fs::write(d.join("scripts/flexhr.rhai"), "api.ProcessFlexHrUserOnAD(record, \"LDAP\");\n").unwrap();
    dir
}

/// Queues `records` as created events of `entity`, then runs the daemon's dispatcher until
/// the queue is empty; returns runs per second and checks that every run ended ok.
async fn through_rules(runtime: &Arc<Runtime>, entity: &str, records: Vec<serde_json::Value>) -> f64 {
    let items: Vec<Ingest> = records
        .into_iter()
        .map(|r| Ingest {
            entity: entity.to_string(),
            kind: EventKind::Created,
            record: from_value(r).unwrap(),
            idempotency_key: None,
        })
        .collect();
    runtime.submit(&items).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let daemon = tokio::spawn(tripline::daemon::run(runtime.clone(), async {
        let _ = stopped.await;
    }));
    while runtime.store().queue_depth().unwrap() > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    let _ = stop.send(());
    daemon.await.unwrap().unwrap();
    let failed = runtime.runs(&RunFilter { failed: true, limit: 3, ..Default::default() }).unwrap();
    assert!(failed.is_empty(), "runs failed: {failed:#?}");
    USERS as f64 / elapsed.as_secs_f64()
}

fn main() {
    let slapd = start_slapd();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = project(&slapd.url);
    let runtime = Arc::new(
        Runtime::builder().config_file(dir.path().join("tripline.toml")).handle(rt.handle().clone()).build().unwrap(),
    );
    rt.block_on(async {
        runtime.hosts().directories["LDAP"].connect().await.unwrap();
        // Warm-up, not measured: threads, connections, caches.
        let warm_ou = add_ou(&slapd.url, "warm").await;
        raw_rate(&slapd.url, &warm_ou, "w").await;
        let records = (0..USERS).map(|i| json!({"Name": format!("User w{i}"), "Uid": format!("uw{i}"), "Ou": warm_ou})).collect();
        through_rules(&runtime, "newuser", records).await;

        let (mut best_raw, mut best_tl, mut ratios) = (0f64, 0f64, Vec::new());
        for round in 0..ROUNDS {
            let raw_ou = add_ou(&slapd.url, &format!("raw{round}")).await;
            let tl_ou = add_ou(&slapd.url, &format!("tl{round}")).await;
            // The same attributes, of the same lengths, as the reference adds.
            let records: Vec<_> = (0..USERS)
                .map(|i| json!({"Name": format!("User t{round}x{i}"), "Uid": format!("ut{round}x{i}"), "Ou": tl_ou}))
                .collect();
            let raw_tag = format!("r{round}");
            // Alternate which goes first, so that neither always meets the larger database.
            let (raw, raw_me, raw_srv, tl, tl_me, tl_srv);
            if round % 2 == 0 {
                (raw, raw_me, raw_srv) = cpu_per_user(&slapd, raw_rate(&slapd.url, &raw_ou, &raw_tag)).await;
                (tl, tl_me, tl_srv) = cpu_per_user(&slapd, through_rules(&runtime, "newuser", records)).await;
            } else {
                (tl, tl_me, tl_srv) = cpu_per_user(&slapd, through_rules(&runtime, "newuser", records)).await;
                (raw, raw_me, raw_srv) = cpu_per_user(&slapd, raw_rate(&slapd.url, &raw_ou, &raw_tag)).await;
            }
            assert_eq!(count_under(&slapd.url, &tl_ou).await, USERS);
            println!(
                "round {round}: ldap3 {raw:>6.0} adds/s   tripline rules+scripts {tl:>6.0} users/s   ratio {:.2}   \
                 CPU per user (client + slapd): ldap3 {raw_me:.0} + {raw_srv:.0} us, tripline {tl_me:.0} + {tl_srv:.0} us",
                tl / raw
            );
            best_raw = best_raw.max(raw);
            best_tl = best_tl.max(tl);
            ratios.push(tl / raw);
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "best of {ROUNDS}: ldap3 ({IN_FLIGHT} adds in flight) {best_raw:.0} adds/s; tripline (rules + scripts, \
             {IN_FLIGHT} workers) {best_tl:.0} users/s; ratio {:.2} (target >= 0.80); median of the rounds' ratios {:.2}",
            best_tl / best_raw,
            ratios[ROUNDS / 2]
        );

        // For information: the engine and the store alone (a script that calls no host).
        let records = (0..USERS).map(|i| json!({"Name": format!("Nobody {i}")})).collect();
        let (noop, noop_me, _) = cpu_per_user(&slapd, through_rules(&runtime, "noop", records)).await;
        println!("rules + scripts without LDAP (engine and store alone): {noop:.0} runs/s, CPU {noop_me:.0} us per run");

        // For information: the seed's function, four LDAP operations per user.
        let records = (0..USERS)
            .map(|i| json!({"Source": "FlexHR", "EmployeeId": format!("F{i}"), "FirstName": "Flex", "LastName": format!("User {i}")}))
            .collect();
        let flex = through_rules(&runtime, "flexticket", records).await;
        assert_eq!(count_under(&slapd.url, BASE).await, USERS);
        println!("ProcessFlexHrUserOnAD through rules + scripts: {flex:.0} users/s ({:.2} of ldap3 adds)", flex / best_raw);
    });
}
