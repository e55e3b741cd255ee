//! A real install: the systemd unit, the Containerfile, the daemon's SIGHUP, the logs as a
//! service manager or a collector reads them, and a store made by the previous release
//! opened by this one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common::project::{binary, Daemon, Project};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The value of `Key=` lines of a unit file, in order.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines().filter_map(|l| l.strip_prefix(key)?.strip_prefix('=')).collect()
}

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].into_iter().map(Path::new).find(|p| p.exists());
    let Some(analyze) = analyze else {
        panic!(
            "systemd-analyze is not installed, so contrib/tripline.service cannot be verified: \
             apt-get install systemd (.ci/run installs it)"
        )
    };
    let unit = read("contrib/tripline.service");
    // verify checks that ExecStart's program exists: point it at the binary under test.
    let exec = unit_values(&unit, "ExecStart");
    assert_eq!(exec, ["/usr/local/bin/tripline run --config /etc/tripline/tripline.toml"]);
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("tripline.service");
    std::fs::write(&local, unit.replace("/usr/local/bin/tripline", &binary().to_string_lossy())).unwrap();
    let out = Command::new(analyze).arg("verify").arg(&local).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed: {stderr}");
    // Unknown keys and bad values are only warnings to verify: none may name our unit.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("tripline.service")).collect();
    assert!(ours.is_empty(), "systemd-analyze verify: {ours:#?}");

    // What the README promises of it.
    assert_eq!(unit_values(&unit, "ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert_eq!(unit_values(&unit, "Restart"), ["on-failure"]);
    assert_eq!(unit_values(&unit, "DynamicUser"), ["yes"]);
    assert_eq!(unit_values(&unit, "User"), ["tripline"]);
    assert_eq!(unit_values(&unit, "StateDirectory"), ["tripline"]);
    for hardening in ["NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes"] {
        assert!(unit.lines().any(|l| l == hardening), "{hardening} missing");
    }
}

#[test]
fn the_containerfile_builds_in_two_stages_and_runs_unprivileged_with_the_store_on_a_volume() {
    let file = read("contrib/Containerfile");
    let froms: Vec<&str> = file.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(froms[0].contains("rust") && froms[0].ends_with(" AS build"), "{froms:?}");
    assert!(froms[1].contains("debian:bookworm-slim"), "{froms:?}");
    assert!(file.contains("cargo install --locked --path ."));
    assert!(file.lines().any(|l| l == "USER tripline"));
    assert!(file.lines().any(|l| l == r#"VOLUME ["/var/lib/tripline"]"#));
    // The image moves the shipped store to the volume by editing one line of tripline.toml:
    // that line must be there, exactly as the edit expects it.
    let shipped = read("tripline.toml");
    assert!(shipped.lines().any(|l| l == r#"data_dir = "data""#), "tripline.toml's data_dir line changed");
    assert!(!shipped.lines().any(|l| l.trim() == "[server]"), "the image appends its own [server]");
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l == "target") && ignore.lines().any(|l| l == "data"));
}

/// A free port on loopback (bound, then released for the daemon).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn healthz(port: u16) -> Option<Value> {
    let out = Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{port}/healthz")]).output().ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// Polls until `f` holds (the machine is shared: no deadline but a generous one).
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..600 {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{what} did not happen within a minute");
}

#[test]
fn the_daemon_reloads_its_configuration_on_a_real_sighup() {
    let port = free_port();
    let config = format!("[engine]\ndata_dir = \"data\"\n\n[server]\nlisten = \"127.0.0.1:{port}\"\n");
    let p = Project::new(&config);
    let daemon = Daemon::start(&p);
    wait_until("the daemon's start", || healthz(port).is_some());
    assert!(healthz(port).unwrap()["last_config_reload"].is_null());
    std::fs::write(
        p.path().join("tripline.toml"),
        format!("{config}\n[webhooks.hr]\npath = \"/hooks/hr\"\nentity = \"ticket\"\nauth = {{ type = \"none\" }}\n"),
    )
    .unwrap();
    let ok = Command::new("kill").args(["-HUP", &daemon.pid().to_string()]).status().unwrap();
    assert!(ok.success());
    wait_until("the reload", || healthz(port).is_some_and(|h| !h["last_config_reload"].is_null()));
    let reload = &healthz(port).unwrap()["last_config_reload"];
    assert_eq!(reload["trigger"], "signal", "{reload}");
    assert_eq!(reload["outcome"], "applied", "{reload}");
    // The new webhook answers: the configuration was applied, not only read.
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-d", "{\"Source\":\"HR\"}"])
        .arg(format!("http://127.0.0.1:{port}/hooks/hr"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "202");
    daemon.stop();
}

/// A project whose one rule logs through tracing (a dry-run directory records a change) with
/// a value that is also a configured secret, spelt with a quote and a backslash.
const CANARY: &str = r#"can"ary\secret-4242"#;

fn logging_project() -> Project {
    let p = Project::new(
        "[directories.AD]\nkind = \"active_directory\"\nurl = \"ldap://127.0.0.1:1\"\nbase_dn = \"DC=example,DC=com\"\n\
         dry_run = true\n\n[connections.hr]\nbase_url = \"http://127.0.0.1:1/\"\n\
         auth = { type = \"bearer\", token = \"${HR_TOKEN}\" }\n",
    );
    p.set_env("HR_TOKEN", CANARY);
    p.rule("log", "name = \"log\"\nentity = \"ticket\"\nscript = \"log.rhai\"\n").script(
        "log.rhai",
        "let hr = api.connection(\"hr\");\nlet ad = api.directory(\"AD\");\n\
         ad.create_user(#{ name: \"Jane Doe\", sAMAccountName: \"jd\", description: record.Name });\n",
    );
    p
}

fn fire_logged(p: &Project, env: &[(&str, &str)]) -> String {
    let record = serde_json::json!({ "Name": CANARY }).to_string();
    let mut cmd = p.command(&["fire", "ticket", "--record", "-"]);
    cmd.env("TRIPLINE_LOG", "info").env_remove("NO_COLOR").envs(env.iter().copied()).stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(record.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn logs_redirected_carry_no_colour_codes_and_json_lines_parse() {
    let p = logging_project();
    let text = fire_logged(&p, &[]);
    assert!(text.contains("Dry run: change recorded."), "{text}");
    assert!(text.contains("description: **REDACTED**"), "{text}");
    assert!(!text.contains('\u{1b}'), "escape codes in redirected stderr: {text:?}");
    assert!(!text.contains("ary\\secret-4242"), "{text}");

    let json = fire_logged(&p, &[("TRIPLINE_LOG_FORMAT", "json")]);
    let lines: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l:?}")))
        .collect();
    let recorded = lines.iter().find(|l| l["fields"]["message"] == "Dry run: change recorded.");
    let recorded = recorded.unwrap_or_else(|| panic!("{json}"));
    assert_eq!(recorded["level"], "INFO");
    assert_eq!(recorded["fields"]["directory"], "AD");
    // The secret, escaped as JSON writes it, is scrubbed all the same.
    assert!(recorded["fields"]["description"].as_str().unwrap().contains("description: **REDACTED**"), "{recorded}");
    assert!(!json.contains("secret-4242") && !json.contains('\u{1b}'), "{json}");

    // A misspelt format is said, not silently ignored.
    let typo = fire_logged(&p, &[("TRIPLINE_LOG_FORMAT", "jsno")]);
    assert!(typo.contains("TRIPLINE_LOG_FORMAT=\"jsno\" is neither `text` nor `json`"), "{typo}");
}

/// Runs the command in a pseudo-terminal (util-linux `script`), as a person at a terminal.
fn at_a_terminal(p: &Project, no_color: bool) -> String {
    let record = p.path().join("record.json");
    std::fs::write(&record, serde_json::json!({ "Name": "Jane Doe" }).to_string()).unwrap();
    let inner = format!(
        "{} fire ticket --record {} --config {}",
        binary().display(),
        record.display(),
        p.path().join("tripline.toml").display()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &inner, "/dev/null"]).env("TRIPLINE_LOG", "info").env("HR_TOKEN", CANARY);
    match no_color {
        true => cmd.env("NO_COLOR", "1"),
        false => cmd.env_remove("NO_COLOR"),
    };
    let out = cmd.stdin(Stdio::null()).output().expect("util-linux `script` runs (apt-get install bsdutils)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn colours_only_at_a_terminal_and_never_with_no_color() {
    let p = logging_project();
    let coloured = at_a_terminal(&p, false);
    assert!(coloured.contains("Dry run") && coloured.contains('\u{1b}'), "{coloured:?}");
    let plain = at_a_terminal(&p, true);
    assert!(plain.contains("Dry run") && !plain.contains('\u{1b}'), "{plain:?}");
}

/// The store as release 0.1.0 left it: its schema (six migrations) with a closed ticket and
/// its comments, a job's state, a stored OAuth2 token, the last good version of a script,
/// a finished event and its ok run, and a failed run.
const RELEASE_0_1_0: &str = include_str!("../fixtures/store-0.1.0.sql");

fn fixture_store(dir: &Path, version: Option<i64>) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join("tripline.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(RELEASE_0_1_0).unwrap();
    if let Some(v) = version {
        conn.pragma_update(None, "user_version", v).unwrap();
    }
    db
}

#[test]
fn a_store_made_by_the_previous_release_opens_and_reads_whole() {
    let p = Project::new("[engine]\ndata_dir = \"data\"\n");
    let db = fixture_store(p.path(), None);
    let before: i64 =
        rusqlite::Connection::open(&db).unwrap().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(before, 6, "the fixture is release 0.1.0's schema");

    let tickets = p.records("ticket");
    assert_eq!(tickets.len(), 1, "{tickets:#?}");
    let t = &tickets[0];
    assert_eq!((t["id"].as_str(), t["status"].as_str()), (Some("T-1"), Some("closed")), "{t:#}");
    assert_eq!(t["fields"]["EmployeeId"], "E100");
    let comments: Vec<&str> = t["comments"].as_array().unwrap().iter().filter_map(|c| c["text"].as_str()).collect();
    assert_eq!(comments, ["seen Jane", "synchronized with Flex HR: created user jane.doe"]);

    let runs = p.run(&["runs", "--json"]);
    assert_eq!(runs.code, 0, "{runs:?}");
    let runs: Vec<Value> = runs.json().as_array().unwrap().clone();
    let mut seen: Vec<(String, String)> =
        runs.iter().map(|r| (r["rule"].as_str().unwrap().into(), r["status"].as_str().unwrap().into())).collect();
    seen.sort();
    assert_eq!(seen, [("job:flex_hr_sync".into(), "failed".into()), ("seed".into(), "ok".into())], "{runs:#?}");
    let ok = runs.iter().find(|r| r["status"] == "ok").unwrap();
    assert_eq!(ok["record_id"], "T-1");
    assert_eq!(ok["log"][0]["message"], "marked");
    let failed = p.run(&["runs", "--failed", "--json"]);
    assert!(failed.stdout.contains("HR answered 503"), "{failed:?}");

    // A backup of the migrated store reads the same.
    let copy = p.path().join("backup.db");
    let ran = p.run(&["backup", copy.to_str().unwrap()]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let conn = rusqlite::Connection::open(&copy).unwrap();
    let after: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(after, tripline::store::sqlite::SCHEMA_VERSION, "migrated to this build's schema");
    let state: String =
        conn.query_row("SELECT value FROM kv WHERE key = 'last_modified_at'", [], |r| r.get(0)).unwrap();
    assert_eq!(state, "\"2026-11-30T08:00:00Z\"");
}

#[test]
fn a_store_from_a_newer_release_is_refused_and_left_alone() {
    let p = Project::new("[engine]\ndata_dir = \"data\"\n");
    let newer = tripline::store::sqlite::SCHEMA_VERSION as i64 + 1;
    let db = fixture_store(p.path(), Some(newer));
    let ran = p.run(&["records", "list", "ticket"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(
        ran.stderr.contains(&format!(
            "the store's schema is version {newer}, written by a newer tripline (this one knows up to {})",
            newer - 1
        )),
        "{}",
        ran.stderr
    );
    let conn = rusqlite::Connection::open(&db).unwrap();
    let v: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(v, newer);
}
