//! An admin's mistakes: caught before they run, and never taking tripline down.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::project::{Daemon, Project};

fn rule(name: &str, source: &str, script: &str) -> String {
    format!(
        "name = \"{name}\"\nentity = \"ticket\"\nscript = \"{script}\"\n\
         conditions = [{{ field = \"Source\", op = \"equals\", value = \"{source}\" }}]\n"
    )
}

fn log_of(run: &Value) -> Vec<String> {
    run["log"].as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap().to_string()).collect()
}

/// Polls `runs --json` until `done` holds, for at most a generous while.
fn wait_for_runs(p: &Project, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = p.run(&["runs", "--json", "--limit", "0"]).json().as_array().unwrap().clone();
        if done(&runs) {
            return runs;
        }
        assert!(Instant::now() < deadline, "timed out; runs so far: {runs:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_restart_with_a_broken_script_runs_its_last_good_version_and_every_other_rule() {
    let p = Project::new("");
    p.rule("a", &rule("A", "a", "a.rhai")).rule("b", &rule("B", "b", "b.rhai"));
    p.script("a.rhai", "api.info(\"a v1\");").script("b.rhai", "api.info(\"b v1\");");
    // The first start loads both: their texts become the last good versions.
    let (ran, runs) = p.fire("ticket", r#"{"Source": "a"}"#);
    assert_eq!((ran.code, log_of(&runs[0])), (0, vec!["a v1".to_string()]), "{ran:?}");

    // a.rhai breaks while nothing runs (an upgrade, a bad deploy); b.rhai changes for the better.
    p.script("a.rhai", "api.info(\"a v2\" ;").script("b.rhai", "api.info(\"b v2\");");
    let check = p.run(&["check"]);
    assert_eq!(check.code, 1, "check still fails on the broken file: {check:?}");
    assert!(check.stdout.contains("a.rhai:1:"), "{}", check.stdout);

    // Every later start (the CLI's, the daemon's) runs a.rhai's last good version.
    let (ran, runs) = p.fire("ticket", r#"{"Source": "a"}"#);
    assert_eq!((ran.code, log_of(&runs[0])), (0, vec!["a v1".to_string()]), "{ran:?}");
    assert!(ran.stderr.contains("a.rhai:1:") && ran.stderr.contains("last good version keeps running"), "{ran:?}");
    let queued = p
        .run_stdin(&["fire", "ticket", "--record", "-", "--queue"], Some("{\"Source\": \"a\"}\n{\"Source\": \"b\"}\n"));
    assert_eq!(queued.code, 0, "{queued:?}");
    let daemon = Daemon::start(&p);
    let runs = wait_for_runs(&p, |runs| runs.len() >= 4);
    daemon.stop();
    // Two records: the daemon's workers may run them in either order.
    let mut logs: Vec<Vec<String>> = runs[2..].iter().map(log_of).collect();
    logs.sort();
    assert_eq!(logs, [vec!["a v1".to_string()], vec!["b v2".to_string()]], "{runs:#?}");
    assert!(runs.iter().all(|r| r["status"] == "ok"), "{runs:#?}");

    // Fixed: the new version applies and becomes the last good one.
    p.script("a.rhai", "api.info(\"a v3\");");
    let (_, runs) = p.fire("ticket", r#"{"Source": "a"}"#);
    assert_eq!(log_of(&runs[0]), ["a v3"]);
}

#[test]
fn a_script_that_never_loaded_is_left_out_and_the_others_run() {
    let p = Project::new("");
    p.rule("a", &rule("A", "x", "a.rhai")).rule("b", &rule("B", "x", "b.rhai"));
    p.script("a.rhai", "let = ;").script("b.rhai", "api.info(\"b\");");
    let (ran, runs) = p.fire("ticket", r#"{"Source": "x"}"#);
    assert_eq!(ran.code, 1, "a run failed: {ran:?}");
    let by_rule = |name: &str| runs.iter().find(|r| r["rule"] == name).unwrap_or_else(|| panic!("{runs:?}"));
    assert_eq!(by_rule("B")["status"], "ok");
    let a = by_rule("A");
    assert_eq!(a["status"], "failed");
    assert!(a["error"].as_str().unwrap().contains("no version of it ever loaded"), "{a}");
    assert!(a["error"].as_str().unwrap().contains("a.rhai:1:"), "{a}");
}

/// A configuration whose connection, webhook and notification secrets are not set here.
const WITH_SECRETS: &str = r#"
[connections.hr]
base_url = "http://127.0.0.1:9/"
auth = { type = "basic", username = "svc", password = "${TRUST_TEST_HR_PASSWORD}" }

[server]
listen = "127.0.0.1:0"

[webhooks.desk]
path = "/hooks/desk"
entity = "ticket"
auth = { type = "hmac_sha256", header = "X-Signature", secret = "${TRUST_TEST_DESK_SECRET}" }
"#;

#[test]
fn read_only_commands_work_with_a_broken_file_and_unset_secrets() {
    let p = Project::new("");
    p.rule("a", &rule("A", "x", "a.rhai")).script("a.rhai", "api.comment(record, \"seen\");");
    let (ran, runs) = p.fire("ticket", r#"{"Source": "x"}"#);
    assert_eq!((ran.code, runs.len()), (0, 1), "{ran:?}");
    let id = runs[0]["record_id"].as_str().unwrap().to_string();

    // Now a file breaks and the configuration names secrets this shell does not have.
    p.file("tripline.toml", WITH_SECRETS);
    p.script("a.rhai", "api.comment(record, ");
    p.rule("b", "name = ");
    let check = p.run(&["check"]);
    assert_eq!(check.code, 1, "{check:?}");
    assert!(
        check.stdout.contains("TRUST_TEST_HR_PASSWORD") && check.stdout.contains("TRUST_TEST_DESK_SECRET"),
        "{check:?}"
    );

    let ran = p.run(&["runs", "--failed"]);
    assert_eq!((ran.code, ran.stdout.trim()), (0, "no runs"), "{ran:?}");
    let ran = p.run(&["runs", "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.json().as_array().unwrap().len(), 1);
    let tickets = p.records("ticket");
    assert_eq!(tickets.len(), 1);
    let ran = p.run(&["records", "show", &id, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.json()["comments"][0]["text"], "seen");
    let copy = p.path().join("copy.db");
    let ran = p.run(&["backup", &copy.to_string_lossy()]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(copy.is_file());
}

#[test]
fn a_replay_works_while_another_file_is_broken_and_a_secret_is_unset() {
    let p = Project::new("");
    p.rule("a", &rule("A", "x", "a.rhai")).script("a.rhai", "throw \"not yet\";");
    let (_, runs) = p.fire("ticket", r#"{"Source": "x"}"#);
    assert_eq!(runs[0]["status"], "failed");
    let id = runs[0]["id"].as_i64().unwrap();

    p.file("tripline.toml", WITH_SECRETS);
    p.rule("b", "name = ").script("a.rhai", "api.info(\"fixed\");");
    // As `runs` prints it, with the `#`.
    let ran = p.run(&["replay", &format!("#{id}")]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.starts_with("ok ") && ran.stdout.contains("fixed"), "{ran:?}");
    let ran = p.run(&["replay", "fifteen"]);
    assert_eq!(ran.code, 1);
    assert!(ran.stderr.contains("not a run id") && ran.stderr.contains("#15"), "{ran:?}");

    // A run that uses the connection whose password is unset fails saying so; others run.
    p.script("a.rhai", "api.connection(\"hr\").get(\"users\");");
    let (ran, runs) = p.fire("ticket", r#"{"Source": "x"}"#);
    assert_eq!(ran.code, 1);
    let e = runs[0]["error"].as_str().unwrap();
    assert_eq!(runs[0]["status"], "failed", "{e}");
    assert!(e.contains("connection hr cannot be used") && e.contains("TRUST_TEST_HR_PASSWORD"), "{e}");
}

#[test]
fn a_script_that_catches_a_transient_error_then_fails_on_its_own_is_failed_not_retried() {
    let p = Project::new(
        "[connections.dead]\nbase_url = \"http://127.0.0.1:9/\"\ntimeout = \"2s\"\nretry = { max_attempts = 1 }\n",
    );
    p.rule("a", &rule("A", "x", "a.rhai")).script(
        "a.rhai",
        "let caught = false;\ntry { api.connection(\"dead\").get(\"x\") } catch (e) { caught = e.transient; }\n\
         if caught { throw \"the script's own error\"; }",
    );
    let (ran, runs) = p.fire("ticket", r#"{"Source": "x"}"#);
    assert_eq!(ran.code, 1);
    assert_eq!(runs[0]["status"], "failed", "{runs:?}");
    assert!(runs[0]["next_attempt_at"].is_null());
    assert!(runs[0]["error"].as_str().unwrap().contains("the script's own error"), "{runs:?}");

    // Thrown again as it was caught, the connection's error keeps its class.
    p.script("a.rhai", "try { api.connection(\"dead\").get(\"x\") } catch (e) { throw e; }");
    let (_, runs) = p.fire("ticket", r#"{"Source": "x"}"#);
    assert_eq!(runs[0]["status"], "retrying", "{runs:?}");
}

#[test]
fn test_exits_1_when_the_run_would_fail_and_lists_only_what_would_be_kept() {
    let p = Project::new("");
    p.rule("process_it", &rule("Process it", "x", "a.rhai")).script(
        "a.rhai",
        "api.update(record, #{ Stage: \"two\" });\napi.comment(record, \"working\");\nthrow \"no manager\";",
    );
    p.file("t.json", r#"{"Source": "x", "Stage": "one"}"#);
    let input = p.path().join("t.json");
    let input = input.to_string_lossy();
    // Named by its file as well as by its name.
    for name in ["Process it", "process_it", "process_it.toml", "rules/process_it.toml"] {
        let ran = p.run(&["test", name, "--record", &input]);
        assert_eq!(ran.code, 1, "{name}: {ran:?}");
        assert!(ran.stdout.contains("the run would fail: "), "{name}: {}", ran.stdout);
        assert!(ran.stdout.contains("no manager"), "{}", ran.stdout);
        assert!(ran.stdout.contains("nothing would be written"), "{}", ran.stdout);
        assert!(!ran.stdout.contains("working"), "a failed run's writes are not listed: {}", ran.stdout);
    }
    let json = p.run(&["test", "process_it", "--record", &input, "--json"]);
    assert_eq!(json.code, 1);
    let report = json.json();
    assert_eq!(report[0]["outcome"], "failed");
    assert_eq!(report[0]["writes"], serde_json::json!([]));

    // Once it works: exit 0, one readable line per write, with the field's change.
    p.script("a.rhai", "api.update(record, #{ Stage: \"two\" });\napi.comment(record, \"working\");");
    let ran = p.run(&["test", "process_it", "--record", &input]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("    update this record: Stage: \"one\" -> \"two\"\n"), "{}", ran.stdout);
    assert!(ran.stdout.contains("    comment on this record: working\n"), "{}", ran.stdout);
    assert!(p.records("ticket").is_empty(), "`test` stores nothing");
}

#[test]
fn configuration_mistakes_are_reported_once_at_their_place_with_a_suggestion() {
    let p = Project::new("[engine]\nworkrs = 4\n");
    let ran = p.run(&["check"]);
    assert_eq!(ran.code, 1);
    assert!(
        ran.stdout.contains("tripline.toml:2:1: unknown field `workrs`")
            && ran.stdout.contains("did you mean `workers`?"),
        "{}",
        ran.stdout
    );

    // A copied configuration whose check_dirs folder is not there: reported at its line.
    p.file("tripline.toml", "[engine]\nretention_days = 7\ncheck_dirs = [\"examples/rules-and-scripts\"]\n");
    let ran = p.run(&["check"]);
    assert_eq!(ran.code, 1);
    let lines: Vec<&str> = ran.stdout.lines().filter(|l| l.contains("check_dirs")).collect();
    assert_eq!(lines.len(), 1, "{}", ran.stdout);
    assert!(
        lines[0].contains("tripline.toml:3:14: [engine] check_dirs: ") && lines[0].contains("does not exist"),
        "{}",
        ran.stdout
    );

    // A bad schedule: one problem, at the schedule.
    p.file("tripline.toml", "[jobs.sync]\nschedule = \"every day\"\nscript = \"s.rhai\"\n").script("s.rhai", "1");
    let ran = p.run(&["check"]);
    assert_eq!(ran.code, 1);
    assert_eq!(ran.stdout.lines().filter(|l| l.contains("every day")).count(), 1, "{}", ran.stdout);
    assert!(ran.stdout.contains("tripline.toml:2:12: "), "{}", ran.stdout);

    // Numbers out of range are problems at their place, not a panic later.
    p.file("tripline.toml", "[limits]\ntimeout_ms = 99999999999999\n[engine]\nretention_days = 4294967295\n");
    let ran = p.run(&["check"]);
    assert_eq!(ran.code, 1);
    assert!(
        ran.stdout.contains("tripline.toml:2:14: [limits] timeout_ms = 99999999999999 is out of range"),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("tripline.toml:4:18: [engine] retention_days"), "{}", ran.stdout);
}

#[test]
fn runs_of_a_job_named_without_its_prefix_get_a_hint() {
    let p = Project::new("[jobs.flex_hr_sync]\nschedule = \"0 0 * * *\"\nscript = \"s.rhai\"\n");
    p.script("s.rhai", "api.info(\"ran\");");
    assert_eq!(p.run(&["job", "run", "flex_hr_sync"]).code, 0);
    let ran = p.run(&["runs", "--rule", "flex_hr_sync"]);
    assert!(ran.stdout.contains("no runs") && ran.stdout.contains("--rule job:flex_hr_sync"), "{ran:?}");
    let ran = p.run(&["runs", "--rule", "job:flex_hr_sync", "--json"]);
    assert_eq!(ran.json().as_array().unwrap().len(), 1);
}
