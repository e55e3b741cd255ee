//! The seed's flow, `ProcessFlexHrUserOnAD`, against references measured in the same run on
//! the same slapd (`dbnosync`): new Flex HR users (each with a manager who exists), created
//! with the mapped attributes.
//!
//! References:
//! - `python ldap3 sync`: a Python ldap3 script with the SYNC strategy, one search by
//!   employee number and one add per user, one user after the other (what an admin would
//!   write by hand); needs `pip install ldap3` (the bench says so and goes on without it);
//! - `ldap3 adds`: plain Rust ldap3 keeping `IN_FLIGHT` adds of the same entries in flight
//!   on one connection (no reads at all: the server's floor);
//! - `ldap3 search+add`: the same with the search by employee number before each add.
//!
//! tripline:
//! - `sync x32`: `Directory::sync_flexhr_user` from `IN_FLIGHT` tasks on the shared
//!   connection (the directory layer alone: no store, no scripts);
//! - `sync x1`: the same, one user after the other (the latency of one sync: its round
//!   trips in turn);
//! - `fire`: the release binary, `tripline fire ticket --record FILE`, with the tickets as
//!   JSON Lines through the shipped rule and script (`api.ProcessFlexHrUserOnAD`) on
//!   `[engine] workers = IN_FLIGHT`, store included, process start to exit;
//! - `daemon`: the same tickets queued, then dispatched by the daemon (in this process),
//!   until the last run is committed.
//!
//! Each measurement handles `TICKETS` users.
//!
//! Printed per round: each rate, the CPU per user in the client and in slapd, and tripline's
//! ratios to the references; at the end the median ratios. Rounds alternate which side goes
//! first. `FLEXHR_BENCH=sync` runs only `sync x32`, `FLEXHR_BENCH=ldap3` only `ldap3
//! search+add`, `fire` and `daemon` only those (each after a warm-up, for a profiler:
//! `perf record -g`, which follows the `fire` process too);
//! `FLEXHR_ROUNDS=N` sets the rounds.
//!
//! `cargo bench --bench flexhr_flow` (needs `slapd` and `slapadd`: apt-get install slapd).
//! The `fire` side runs the `tripline` binary of the same build (`cargo bench` builds it).

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use serde_json::{json, Map, Value};
use tripline::directory::{Directory, DirectoryConfig};
use tripline::record::{from_value, EventKind};
use tripline::runtime::Runtime;
use tripline::store::{Ingest, RunFilter};

#[path = "common/slapd.rs"]
mod slapd;

use slapd::{add_ou, admin, start_slapd, Slapd, BASE, IN_FLIGHT};

/// Users per measurement.
const USERS: usize = 2000;

const MANAGERS: usize = 10;

const PYTHON: &str = r#"
import sys, time
import ldap3
from ldap3.utils.conv import escape_filter_chars
url, base, ou, tag, n, manager = sys.argv[1:7]
n = int(n)
conn = ldap3.Connection(ldap3.Server(url), user="cn=admin," + base, password="secret", auto_bind=True)
started, cpu = time.perf_counter(), time.process_time()
for i in range(n):
    emp = "%s-%05d" % (tag, i)
    conn.search(base, "(employeeNumber=%s)" % escape_filter_chars(emp), attributes=ldap3.NO_ATTRIBUTES)
    if conn.entries:
        continue
    last = "%su%05d" % (tag, i)
    ok = conn.add("cn=Flex %s,%s" % (last, ou), ["top", "person", "organizationalPerson", "inetOrgPerson"], {
        "cn": "Flex " + last, "sn": last, "givenName": "Flex", "displayName": "Flex " + last,
        "uid": "flex." + last.lower(), "employeeNumber": emp, "mail": "flex.%s@example.com" % last.lower(),
        "title": "Financial Controller", "departmentNumber": "Finance", "o": "ACME", "manager": manager})
    if not ok:
        sys.exit("add failed: %s" % conn.result)
print(n / (time.perf_counter() - started), (time.process_time() - cpu) * 1e6 / n)
"#;

/// CPU seconds (user + system) a process has used so far, from `/proc/PID/stat`; for
/// `self`, its children that ended (the `tripline fire` processes) are counted too.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let children = if pid == "self" { ticks(13) + ticks(14) } else { 0.0 };
    (ticks(11) + ticks(12) + children) / 100.0
}

/// One measurement: users per second, and CPU microseconds per user in the client and in slapd.
#[derive(Clone, Copy, Default)]
struct Rate {
    users_per_s: f64,
    client_us: f64,
    server_us: f64,
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:>6.0}/s (CPU {:>3.0} + {:>3.0} us)", self.users_per_s, self.client_us, self.server_us)
    }
}

/// Runs `f`, which handles `USERS` users, and measures it (the client is this process).
async fn measure(slapd: &Slapd, f: impl std::future::Future<Output = ()>) -> Rate {
    let pid = slapd.child.id().to_string();
    let (me0, srv0, started) = (cpu_seconds("self"), cpu_seconds(&pid), Instant::now());
    f.await;
    let elapsed = started.elapsed().as_secs_f64();
    let (me1, srv1) = (cpu_seconds("self"), cpu_seconds(&pid));
    Rate {
        users_per_s: USERS as f64 / elapsed,
        client_us: (me1 - me0) * 1e6 / USERS as f64,
        server_us: (srv1 - srv0) * 1e6 / USERS as f64,
    }
}

/// The Python reference; `None` when Python's ldap3 is not installed.
fn python_rate(slapd: &Slapd, ou: &str, tag: &str, manager: &str) -> Option<Rate> {
    let pid = slapd.child.id().to_string();
    let srv0 = cpu_seconds(&pid);
    let out = Command::new("python3")
        .args(["-c", PYTHON, &slapd.url, BASE, ou, tag, &USERS.to_string(), manager])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("python ldap3 reference skipped: {}", String::from_utf8_lossy(&out.stderr).trim());
        return None;
    }
    let srv1 = cpu_seconds(&pid);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut numbers = text.split_whitespace().filter_map(|v| v.parse::<f64>().ok());
    let (users_per_s, client_us) = (numbers.next()?, numbers.next()?);
    // slapd's CPU over the whole process, interpreter start included: an upper bound.
    Some(Rate { users_per_s, client_us, server_us: (srv1 - srv0) * 1e6 / USERS as f64 })
}

/// The attributes the flow writes for user `i` of `tag`, as the references send them.
fn entry(tag: &str, i: usize, ou: &str, manager: &str) -> (String, Vec<(String, HashSet<String>)>) {
    let last = format!("{tag}u{i:05}");
    let one = |k: &str, v: String| (k.to_string(), HashSet::from([v]));
    let classes = ["top", "person", "organizationalPerson", "inetOrgPerson"].map(String::from);
    let attrs = vec![
        ("objectClass".to_string(), HashSet::from(classes)),
        one("cn", format!("Flex {last}")),
        one("sn", last.clone()),
        one("givenName", "Flex".into()),
        one("displayName", format!("Flex {last}")),
        one("uid", format!("flex.{}", last.to_lowercase())),
        one("employeeNumber", format!("{tag}-{i:05}")),
        one("mail", format!("flex.{}@example.com", last.to_lowercase())),
        one("title", "Financial Controller".into()),
        one("departmentNumber", "Finance".into()),
        one("o", "ACME".into()),
        one("manager", manager.to_string()),
    ];
    (format!("cn=Flex {last},{ou}"), attrs)
}

/// Plain ldap3, `IN_FLIGHT` users at a time on one connection; with `search`, each add is
/// preceded by the search by employee number.
async fn ldap3_rate(url: &str, ou: &str, tag: &str, manager: &str, search: bool) {
    let ldap = admin(url).await;
    stream::iter(0..USERS)
        .map(|i| {
            let mut l = ldap.clone();
            let (dn, attrs) = entry(tag, i, ou, manager);
            async move {
                if search {
                    let f = format!("(employeeNumber={})", ldap3::ldap_escape(format!("{tag}-{i:05}")));
                    let (found, _) =
                        l.search(BASE, ldap3::Scope::Subtree, &f, vec!["1.1"]).await.unwrap().success().unwrap();
                    assert!(found.is_empty());
                }
                l.add(&dn, attrs).await.unwrap().success().unwrap();
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
}

/// A Flex HR ticket for user `i` of `tag`, as the HR job opens it.
fn ticket(tag: &str, i: usize) -> Value {
    let last = format!("{tag}u{i:05}");
    json!({
        "Source": "FlexHR", "Subject": format!("Flex HR: new employee Flex {last}"), "IsNewUser": 1,
        "EmployeeId": format!("{tag}-{i:05}"), "FirstName": "Flex", "LastName": last,
        "Email": format!("flex.{}@example.com", last.to_lowercase()), "Department": "Finance",
        "JobTitle": "Financial Controller", "Company": "ACME", "ManagerEmployeeId": format!("M{}", i % MANAGERS),
        "Active": true,
    })
}

/// `sync_flexhr_user` for `USERS` tickets, `in_flight` at a time.
async fn sync_rate(dir: &Arc<Directory>, tag: &str, in_flight: usize) {
    let tickets: Vec<Map<String, Value>> =
        (0..USERS).map(|i| ticket(tag, i).as_object().cloned().unwrap_or_default()).collect();
    stream::iter(tickets)
        .map(|t| {
            let dir = dir.clone();
            async move {
                let o = dir.sync_flexhr_user(&t).await.unwrap();
                assert!(o.is_complete(), "{o:?}");
            }
        })
        .buffer_unordered(in_flight)
        .collect::<Vec<()>>()
        .await;
}

fn repo_file(rel: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// The configuration's directory section: `ActiveDirectory`, as the shipped rule names it.
fn directory_section(url: &str, users_ou: &str) -> String {
    format!(
        "kind = \"ldap\"\nurl = \"{url}\"\nbind_dn = \"cn=admin,{BASE}\"\nbind_password = \"secret\"\n\
         base_dn = \"{BASE}\"\nusers_ou = \"{users_ou}\"\nallow_plaintext_bind = true\n"
    )
}

/// A project folder with the shipped rule and script.
fn project(url: &str, users_ou: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("rules")).unwrap();
    std::fs::create_dir_all(d.join("scripts")).unwrap();
    let config = format!(
        "[engine]\nworkers = {IN_FLIGHT}\n\n[directories.ActiveDirectory]\n{}",
        directory_section(url, users_ou)
    );
    std::fs::write(d.join("tripline.toml"), config).unwrap();
    for f in ["rules/process_flexhr_user.toml", "scripts/process_flexhr_user.rhai"] {
        std::fs::write(d.join(f), repo_file(f)).unwrap();
    }
    dir
}

/// Runs `tripline fire` on the tickets of `tag` in project `folder` and checks that every
/// run ended ok.
fn fire_rate(folder: &std::path::Path, tag: &str) {
    let lines: Vec<String> = (0..USERS).map(|i| ticket(tag, i).to_string()).collect();
    let input = folder.join(format!("{tag}.jsonl"));
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tripline"))
        .args(["fire", "ticket", "--record"])
        .arg(&input)
        .arg("--config")
        .arg(folder.join("tripline.toml"))
        .env("TRIPLINE_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("{USERS} runs: {USERS} ok")),
        "tripline fire: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Queues the tickets of `tag`, runs the daemon's dispatcher until the queue is empty, and
/// checks that every run ended ok.
async fn daemon_rate(runtime: &Arc<Runtime>, tag: &str) {
    let items: Vec<Ingest> = (0..USERS)
        .map(|i| Ingest {
            entity: "ticket".into(),
            kind: EventKind::Created,
            record: from_value(ticket(tag, i)).unwrap(),
            idempotency_key: None,
        })
        .collect();
    runtime.submit(&items).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(tripline::daemon::run(runtime.clone(), async {
        let _ = stopped.await;
    }));
    while runtime.store().queue_depth().unwrap() > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _ = stop.send(());
    daemon.await.unwrap().unwrap();
    let failed = runtime.runs(&RunFilter { failed: true, limit: 3, ..Default::default() }).unwrap();
    assert!(failed.is_empty(), "runs failed: {failed:#?}");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let rounds: usize = std::env::var("FLEXHR_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let slapd = start_slapd();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let people = add_ou(&slapd.url, "people").await;
        let managers_ou = add_ou(&slapd.url, "managers").await;
        let mut l = admin(&slapd.url).await;
        for m in 0..MANAGERS {
            let (cn, emp) = (format!("Manager {m}"), format!("M{m}"));
            let attrs = vec![
                ("objectClass", HashSet::from(["top", "person", "organizationalPerson", "inetOrgPerson"])),
                ("cn", HashSet::from([cn.as_str()])),
                ("sn", HashSet::from(["Manager"])),
                ("employeeNumber", HashSet::from([emp.as_str()])),
            ];
            l.add(&format!("cn=Manager {m},{managers_ou}"), attrs).await.unwrap().success().unwrap();
        }
        let manager = format!("cn=Manager 0,{managers_ou}");
        let cfg: DirectoryConfig = toml::from_str(&directory_section(&slapd.url, &people)).unwrap();
        let dir = Arc::new(Directory::new("ActiveDirectory", &cfg).unwrap());
        dir.connect().await.unwrap();
        // One part alone, for a profiler (its warm-up included).
        match std::env::var("FLEXHR_BENCH").as_deref() {
            Ok("sync") => {
                sync_rate(&dir, "W", IN_FLIGHT).await;
                println!("sync x{IN_FLIGHT}: {}", measure(&slapd, sync_rate(&dir, "S", IN_FLIGHT)).await);
                return;
            }
            Ok("ldap3") => {
                let ou = add_ou(&slapd.url, "ref").await;
                ldap3_rate(&slapd.url, &ou, "W", &manager, true).await;
                let r = measure(&slapd, ldap3_rate(&slapd.url, &ou, "S", &manager, true)).await;
                println!("ldap3 search+add x{IN_FLIGHT}: {r}");
                return;
            }
            _ => {}
        }
        let folder = project(&slapd.url, &people);
        let fire_folder = project(&slapd.url, &people);
        let runtime = Arc::new(
            Runtime::builder()
                .config_file(folder.path().join("tripline.toml"))
                .handle(tokio::runtime::Handle::current())
                .build()
                .unwrap(),
        );
        match std::env::var("FLEXHR_BENCH").as_deref() {
            Ok("fire") => {
                fire_rate(fire_folder.path(), "WF");
                let r = measure(&slapd, async { fire_rate(fire_folder.path(), "F") }).await;
                println!("fire x{IN_FLIGHT}: {r}");
                return;
            }
            Ok("daemon") => {
                daemon_rate(&runtime, "WD").await;
                println!("daemon x{IN_FLIGHT}: {}", measure(&slapd, daemon_rate(&runtime, "D")).await);
                return;
            }
            _ => {}
        }

        // Warm-up, not measured.
        sync_rate(&dir, "W", IN_FLIGHT).await;
        daemon_rate(&runtime, "WD").await;
        fire_rate(fire_folder.path(), "WF");

        let mut ratios: Vec<[f64; 7]> = Vec::new();
        for round in 0..rounds {
            let refs = add_ou(&slapd.url, &format!("ref{round}")).await;
            let tag = |what: &str| format!("R{round}{what}");
            let reference = || async {
                let py = python_rate(&slapd, &refs, &tag("py"), &manager);
                let adds = measure(&slapd, ldap3_rate(&slapd.url, &refs, &tag("a"), &manager, false)).await;
                let search_add = measure(&slapd, ldap3_rate(&slapd.url, &refs, &tag("s"), &manager, true)).await;
                (py, adds, search_add)
            };
            let ours = || async {
                let many = measure(&slapd, sync_rate(&dir, &tag("t"), IN_FLIGHT)).await;
                let one = measure(&slapd, sync_rate(&dir, &tag("o"), 1)).await;
                let daemon = measure(&slapd, daemon_rate(&runtime, &tag("d"))).await;
                let fire = measure(&slapd, async { fire_rate(fire_folder.path(), &tag("f")) }).await;
                (many, one, daemon, fire)
            };
            let ((py, adds, search_add), (many, one, daemon, fire)) = if round % 2 == 0 {
                let r = reference().await;
                (r, ours().await)
            } else {
                let o = ours().await;
                (reference().await, o)
            };
            let py_text = py.map_or("not installed".to_string(), |p| p.to_string());
            println!("round {round}:");
            println!("  python ldap3 sync      {py_text}");
            println!("  ldap3 adds x{IN_FLIGHT}         {adds}");
            println!("  ldap3 search+add x{IN_FLIGHT}   {search_add}");
            println!("  tripline sync x{IN_FLIGHT}      {many}");
            println!("  tripline sync x1       {one}");
            println!("  tripline daemon x{IN_FLIGHT}    {daemon}");
            println!("  tripline fire x{IN_FLIGHT}      {fire}");
            let py_rate = py.map_or(f64::NAN, |p| p.users_per_s);
            let r = [
                many.users_per_s / adds.users_per_s,
                fire.users_per_s / adds.users_per_s,
                daemon.users_per_s / adds.users_per_s,
                many.users_per_s / py_rate,
                fire.users_per_s / py_rate,
                daemon.users_per_s / py_rate,
                one.users_per_s / py_rate,
            ];
            println!(
                "  ratios to ldap3 adds: sync x{IN_FLIGHT} {:.2}, fire {:.2}, daemon {:.2}; to python: sync x{IN_FLIGHT} \
                 {:.2}, fire {:.2}, daemon {:.2}, sync x1 {:.2}",
                r[0], r[1], r[2], r[3], r[4], r[5], r[6]
            );
            ratios.push(r);
        }
        let m = |k: usize| median(ratios.iter().map(|r| r[k]).collect());
        println!(
            "median of {rounds} rounds, {USERS} users each: to ldap3 adds x{IN_FLIGHT} (target >= 0.8): sync x{IN_FLIGHT} \
             {:.2}, fire {:.2}, daemon {:.2}; to python ldap3 sync (target >= 5): sync x{IN_FLIGHT} {:.2}, fire {:.2}, \
             daemon {:.2}, sync x1 {:.2}",
            m(0),
            m(1),
            m(2),
            m(3),
            m(4),
            m(5),
            m(6)
        );
    });
}
