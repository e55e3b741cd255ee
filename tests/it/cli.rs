//! The engine core through the real binary: check, fire, test, runs, records, replay, run.

use serde_json::{json, Value};

use crate::common::project::{binary, Daemon, Project};

const SEED_RULE: &str = r#"
name = "Process FlexHR user on AD"
entity = "ticket"
conditions = [
  { field = "Created", op = "equals", value = true },
  { field = "Source",  op = "equals", value = "FlexHR" },
]
match = "all"
script = "mark.rhai"
priority = 100
enabled = true
"#;

fn seed_project() -> Project {
    let p = Project::new("");
    p.rule("seed", SEED_RULE)
        .script("mark.rhai", "api.comment(record, `seen ${record.FirstName}`);\napi.info(\"marked\");");
    p
}

#[test]
fn check_passes_with_a_summary_and_accepts_config_before_or_after_the_command() {
    let p = seed_project();
    let ran = p.run(&["check"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    // Nothing in this project produces tickets (they come from `tripline fire`): a warning,
    // which leaves check at exit 0 and is counted in the summary.
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", ran.stdout);
    assert!(
        lines[0].ends_with(
            "seed.toml:3:10: warning: rule \"Process FlexHR user on AD\": no webhook and no script (api.create) \
             produces records of entity \"ticket\" (nor of any other); only records given from outside \
             (`tripline fire ticket`) will reach this rule"
        ),
        "{}",
        lines[0]
    );
    assert_eq!(lines[1], "ok: 1 rules, 1 scripts, 0 directories, 0 connections, 0 jobs, 0 webhooks; 1 warning");
    let before = std::process::Command::new(binary())
        .arg("--config")
        .arg(p.path().join("tripline.toml"))
        .arg("check")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(before.status.success());
}

#[test]
fn check_reports_every_problem_at_once_with_its_place() {
    let p = Project::new("[engine]\nworkers = 4\nrule_dir = \"rules\"\n");
    p.rule("typo", "name = \"a\"\nentity = \"ticket\"\nconditions = [\n  { field = \"Source\", op = \"equls\", value = \"FlexHR\" },\n]\nscript = \"a.rhai\"\n")
        .rule("noscript", "name = \"b\"\nentity = \"ticket\"\nscript = \"missing.rhai\"\n")
        .rule("unknown_key", "name = \"c\"\nentity = \"ticket\"\nscript = \"a.rhai\"\nprioirty = 3\n")
        .script("a.rhai", "let x = 1;\n")
        .script("quotes.rhai", "let x = 1;\napi.ProcessFlexHrUserOnAD(record, “ActiveDirectory”);\n");
    let ran = p.run(&["check"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    let out = &ran.stdout;
    let line =
        |needle: &str| out.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?} in\n{out}"));
    assert!(line("unknown field `rule_dir`").contains("tripline.toml:3:1:"), "{out}");
    assert!(line("unknown operator `equls`").contains("typo.toml:4:28:"), "{out}");
    assert!(line("unknown operator").ends_with("did you mean `equals`?"), "{out}");
    assert!(line("missing.rhai").contains("noscript.toml:3:10:"), "{out}");
    assert!(line("unknown field `prioirty`").contains("unknown_key.toml:4:1:"), "{out}");
    let q = line("quotes.rhai");
    assert!(q.contains("quotes.rhai:2:"), "{q}");
    assert!(q.contains("typographic quotes"), "{q}");
    assert!(out.contains("5 problems found"), "{out}");
}

#[test]
fn the_seed_trigger_runs_on_created_flexhr_tickets_only() {
    let p = seed_project();
    let (ran, runs) = p.fire("ticket", r#"{"Source":"FlexHR","FirstName":"Zoë"}"#);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["rule"], "Process FlexHR user on AD");
    assert_eq!(runs[0]["status"], "ok");
    assert_eq!(runs[0]["log"][0]["message"], "marked");
    let (_, runs) = p.fire("ticket", r#"{"Source":"Portal"}"#);
    assert!(runs.is_empty());
    let (_, runs) = p.fire("incident", r#"{"Source":"FlexHR"}"#);
    assert!(runs.is_empty(), "another entity");
    let tickets = p.records("ticket");
    assert_eq!(tickets.len(), 2);
    let flex = tickets.iter().find(|t| t["fields"]["Source"] == "FlexHR").unwrap();
    assert_eq!(flex["comments"][0]["text"], "seen Zoë");
    // The stable JSON of a record.
    for key in ["id", "entity", "status", "fields", "comments", "created_at", "updated_at"] {
        assert!(flex.get(key).is_some(), "record JSON lacks {key}: {flex}");
    }
    assert_eq!(flex["status"], "open");
    let shown = p.run(&["records", "show", flex["id"].as_str().unwrap(), "--json"]).json();
    assert_eq!(&shown, flex);
}

#[test]
fn rules_run_in_priority_order_and_writes_raise_events() {
    // Events of different records run concurrently on several workers, so the task's run may
    // end before the ticket's; on one worker the order of all four runs is fixed.
    let p = Project::new("[engine]\nworkers = 1\n");
    p.rule("late", "name = \"late\"\nentity = \"ticket\"\nscript = \"note.rhai\"\npriority = 200\nconditions = [{ field = \"Created\", op = \"equals\", value = true }]\n")
        .rule("early", "name = \"early\"\nentity = \"ticket\"\nscript = \"note.rhai\"\npriority = 5\nconditions = [{ field = \"Created\", op = \"equals\", value = true }]\n")
        .rule("middle", "name = \"middle\"\nentity = \"ticket\"\nscript = \"spawn.rhai\"\nconditions = [{ field = \"Created\", op = \"equals\", value = true }]\n")
        .rule("child", "name = \"child\"\nentity = \"task\"\nscript = \"note.rhai\"\nconditions = [{ field = \"Created\", op = \"equals\", value = true }]\n")
        .script("note.rhai", "api.comment(record, rule);")
        .script("spawn.rhai", "api.create(\"task\", #{ Parent: record.id });");
    let (ran, runs) = p.fire("ticket", "{}");
    assert_eq!(ran.code, 0, "{ran:?}");
    let order: Vec<&str> = runs.iter().map(|r| r["rule"].as_str().unwrap()).collect();
    assert_eq!(order, ["early", "middle", "late", "child"]);
    let tasks = p.records("task");
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["fields"]["Parent"], runs[0]["record_id"]);
    assert_eq!(tasks[0]["comments"][0]["text"], "child");
    // Each run keeps the lines of what it wrote, in its history as well.
    let stored = p.run(&["runs", "--json"]).json();
    let writes_of = |rule: &str| {
        let run = stored.as_array().unwrap().iter().find(|r| r["rule"] == rule).unwrap();
        run["writes"].as_array().map(|w| w.iter().map(|l| l.as_str().unwrap().to_string()).collect::<Vec<_>>())
    };
    let middle = writes_of("middle").expect("the run that created a task lists it");
    assert!(middle.len() == 1 && middle[0].contains("task"), "{middle:?}");
    let early = writes_of("early").expect("a comment is a write");
    assert!(early[0].contains("early"), "{early:?}");
}

#[test]
fn updates_carry_previous_and_changed_works() {
    let p = Project::new("");
    p.rule(
        "dept",
        "name = \"dept moved\"\nentity = \"person\"\nscript = \"moved.rhai\"\nconditions = [{ field = \"Department\", op = \"changed\" }]\n",
    )
    .script("moved.rhai", "api.comment(record, `${previous.Department} -> ${record.Department} (${event})`);");
    let (_, runs) = p.fire("person", r#"{"Department":"Sales","Name":"Ann"}"#);
    assert!(runs.is_empty(), "changed never holds on created events");
    let id = p.records("person")[0]["id"].as_str().unwrap().to_string();
    let update = |fields: Value| {
        let mut v = fields;
        v["id"] = json!(id);
        p.run_stdin(&["fire", "person", "--record", "-", "--event", "updated", "--json"], Some(&v.to_string()))
    };
    let ran = update(json!({"Name": "Ann B."}));
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.trim().is_empty(), "Department did not change: {}", ran.stdout);
    let ran = update(json!({"Department": "IT"}));
    assert_eq!(ran.code, 0, "{ran:?}");
    let rec = &p.records("person")[0];
    assert_eq!(rec["fields"], json!({"Department": "IT", "Name": "Ann B."}));
    assert_eq!(rec["comments"][0]["text"], "Sales -> IT (updated)");
    let ran = p.run_stdin(&["fire", "person", "--record", "-", "--event", "updated"], Some(r#"{"id":"nope","x":1}"#));
    assert_eq!(ran.code, 1);
    assert!(ran.stderr.contains("no record with id nope"), "{ran:?}");
}

#[test]
fn json_lines_fire_one_event_per_line_and_failures_exit_1() {
    let p = Project::new("");
    p.rule("r", "name = \"r\"\nentity = \"ticket\"\nscript = \"s.rhai\"\n")
        .script("s.rhai", "if record.n == 2 { throw \"two is not allowed\"; }\napi.comment(record, `n=${record.n}`);");
    p.file("batch.jsonl", "{\"n\":1}\n\n{\"n\":2}\n{\"n\":3}\n");
    let ran = p.run(&["fire", "ticket", "--record", &p.path().join("batch.jsonl").to_string_lossy()]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stdout.contains("3 events stored, 3 runs: 2 ok, 1 failed"), "{}", ran.stdout);
    // The error names the script's place before the message (the message itself is unchanged).
    let place = p.path().join("scripts/s.rhai");
    assert!(ran.stdout.contains(&format!("error: {}:1:20: two is not allowed", place.display())), "{}", ran.stdout);
    let failed = p.run(&["runs", "--failed", "--json"]).json();
    assert_eq!(failed.as_array().unwrap().len(), 1);
    let run = &failed[0];
    for key in ["id", "rule", "record_id", "event", "status", "error", "duration_ms", "log"] {
        assert!(run.get(key).is_some(), "run JSON lacks {key}: {run}");
    }
    assert_eq!(run["status"], "failed");
    assert_eq!(run["event"], "created");
    assert_eq!(p.run(&["runs", "--json"]).json().as_array().unwrap().len(), 3);
    // A pretty-printed single record spanning lines is one record.
    p.file("one.json", "{\n  \"n\": 7\n}\n");
    let ran = p.run(&["fire", "ticket", "--record", &p.path().join("one.json").to_string_lossy()]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("1 event stored"), "{}", ran.stdout);
}

#[test]
fn bad_input_is_refused_with_one_line_and_nothing_is_stored() {
    let p = Project::new("[engine]\nmax_record_bytes = 64\n");
    p.rule("r", "name = \"r\"\nentity = \"ticket\"\nscript = \"s.rhai\"\n").script("s.rhai", "");
    let cases: &[(&str, &str)] = &[
        ("{\"a\": ", "malformed JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("\"text\"", "must be a JSON object"),
        (&format!("{{\"a\": \"{}\"}}", "x".repeat(100)), "max_record_bytes"),
        ("{\"a\":1}\n{\"b\": }\n", "line 2: malformed JSON"),
        ("{\"entity\":\"x\"}", "`entity` is reserved"),
        ("{\"status\":\"pending\"}", "`status` must be"),
        ("", "no record in the input"),
    ];
    for (input, expected) in cases {
        let ran = p.run_stdin(&["fire", "ticket", "--record", "-"], Some(input));
        assert_eq!(ran.code, 1, "{input}: {ran:?}");
        assert!(ran.stderr.contains(expected), "{input}: expected {expected:?} in {}", ran.stderr);
        assert_eq!(ran.stderr.trim().lines().count(), 1, "one line: {}", ran.stderr);
    }
    let ran = p.run(&["fire", "ticket", "--record", "/nonexistent/file.json"]);
    assert_eq!(ran.code, 1);
    assert!(ran.stderr.contains("cannot read /nonexistent/file.json"), "{ran:?}");
    let ran = p.run(&["records", "show", "no-such-id"]);
    assert_eq!(ran.code, 1);
    assert!(ran.stderr.contains("no record with id"), "{ran:?}");
    let ran = p.run(&["records", "list", "tikcet"]);
    assert_eq!(ran.code, 1);
    assert!(ran.stderr.contains("unknown entity"), "{ran:?}");
    assert!(p.records("ticket").is_empty(), "nothing stored");
    assert_eq!(p.run(&["runs", "--json"]).json(), json!([]));
}

#[test]
fn test_explains_verdicts_and_writes_nothing() {
    let p = seed_project();
    p.file("t.json", r#"{"Source":"FlexHR","FirstName":"Ann"}"#);
    let ran = p.run(&["test", "Process FlexHR user on AD", "--record", &p.path().join("t.json").to_string_lossy()]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("matches"), "{}", ran.stdout);
    assert!(ran.stdout.contains("[yes] Created equals true"), "{}", ran.stdout);
    assert!(ran.stdout.contains("[yes] Source equals \"FlexHR\""), "{}", ran.stdout);
    // One readable line per planned write.
    assert!(ran.stdout.contains("    comment on this record: seen Ann\n"), "{}", ran.stdout);
    p.file("u.json", r#"{"Source":"HR"}"#);
    let json = p
        .run(&["test", "Process FlexHR user on AD", "--record", &p.path().join("u.json").to_string_lossy(), "--json"])
        .json();
    assert_eq!(json[0]["matched"], false);
    assert_eq!(json[0]["conditions"][1]["holds"], false);
    assert_eq!(json[0]["conditions"][1]["actual"], "HR");
    let ran = p.run(&["test", "Process FlexHR user on A", "--record", &p.path().join("u.json").to_string_lossy()]);
    assert_eq!(ran.code, 1);
    assert!(ran.stderr.contains("did you mean"), "{ran:?}");
    assert!(
        p.run(&["records", "list", "ticket", "--json"]).stderr.contains("unknown entity")
            || p.records("ticket").is_empty()
    );
    assert_eq!(p.run(&["runs", "--json"]).json(), json!([]));
}

#[test]
fn limits_stop_runaway_scripts_with_the_limit_named() {
    let p = Project::new("[limits]\nmax_operations = 100000\nmax_call_depth = 16\nmax_string_size = 1000\nmax_array_size = 100\nmax_map_size = 100\n");
    let cases = [
        ("loop", "loop {}", "max_operations = 100000"),
        ("recurse", "fn f(n) { f(n + 1) }\nf(0);", "max_call_depth = 16"),
        ("string", "let s = \"x\"; loop { s += s; }", "max_string_size = 1000"),
        ("array", "let a = []; loop { a.push(1); }", "max_array_size = 100"),
        ("map", "let m = #{}; let i = 0; loop { m.set(`k${i}`, i); i += 1; }", "max_map_size = 100"),
        ("file", "import \"/etc/passwd\" as p;", "Module not found"),
    ];
    for (name, script, _) in &cases {
        p.rule(name, &format!("name = \"{name}\"\nentity = \"{name}\"\nscript = \"{name}.rhai\"\n"))
            .script(&format!("{name}.rhai"), script);
    }
    for (name, _, expected) in &cases {
        let (ran, runs) = p.fire(name, "{}");
        assert_eq!(ran.code, 1, "{name}: {ran:?}");
        let err = runs[0]["error"].as_str().unwrap_or_default();
        assert!(err.contains(expected), "{name}: {err:?} lacks {expected:?}");
        assert_eq!(runs[0]["status"], "failed");
    }
}

#[test]
fn eval_is_not_available_to_scripts() {
    let p = Project::new("");
    p.rule("r", "name = \"r\"\nentity = \"t\"\nscript = \"s.rhai\"\n").script("s.rhai", "eval(\"1\")");
    let ran = p.run(&["check"]);
    assert_eq!(ran.code, 1);
    assert!(ran.stdout.contains("s.rhai:1:1:") && ran.stdout.contains("eval"), "{}", ran.stdout);
}

#[test]
fn wall_clock_limit_stops_a_script() {
    let p = Project::new("[limits]\nmax_operations = 0\ntimeout_ms = 200\n");
    p.rule("slow", "name = \"slow\"\nentity = \"t\"\nscript = \"s.rhai\"\n").script("s.rhai", "loop {}");
    let (_, runs) = p.fire("t", "{}");
    assert!(runs[0]["error"].as_str().unwrap().contains("timeout_ms = 200"), "{runs:?}");
}

#[test]
fn a_rule_that_retriggers_itself_is_stopped_by_the_depth_guard() {
    let p = Project::new("[engine]\nmax_chain_depth = 3\n");
    p.rule("loop", "name = \"bump\"\nentity = \"t\"\nscript = \"bump.rhai\"\n")
        .script("bump.rhai", "let n = if \"n\" in record { record.n } else { 0 };\napi.update(record, #{ n: n + 1 });");
    let (ran, runs) = p.fire("t", "{}");
    assert_eq!(ran.code, 1, "{ran:?}");
    let last = runs.last().unwrap();
    assert_eq!(last["status"], "failed");
    assert!(last["error"].as_str().unwrap().contains("max_chain_depth = 3"), "{last}");
    assert_eq!(runs.len(), 5, "depths 0..=3 run, depth 4 is refused: {runs:?}");
    assert_eq!(p.records("t")[0]["fields"]["n"], 4);
}

#[test]
fn match_any_when_guard_and_disabled_rules() {
    let p = Project::new("");
    p.rule("any", "name = \"any\"\nentity = \"t\"\nmatch = \"any\"\nscript = \"s.rhai\"\nconditions = [{ field = \"a\", op = \"equals\", value = 1 }, { field = \"b\", op = \"equals\", value = 1 }]\n")
        .rule("guard", "name = \"guard\"\nentity = \"t\"\nscript = \"s.rhai\"\nwhen = 'record.a > 5 && event == \"created\"'\n")
        .rule("off", "name = \"off\"\nentity = \"t\"\nscript = \"s.rhai\"\nenabled = false\n")
        .script("s.rhai", "");
    let names = |rec: &str| -> Vec<String> {
        p.fire("t", rec).1.iter().map(|r| r["rule"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(names(r#"{"a":0,"b":1}"#), ["any"]);
    assert_eq!(names(r#"{"a":9,"b":0}"#), ["guard"]);
    assert_eq!(names(r#"{"a":1,"b":0}"#), ["any"]);
    assert!(names(r#"{"a":0,"b":0}"#).is_empty());
}

#[test]
fn replay_runs_a_failed_run_again_after_the_fix() {
    let p = Project::new("");
    p.rule("r", "name = \"r\"\nentity = \"t\"\nscript = \"s.rhai\"\nconditions = [{ field = \"Created\", op = \"equals\", value = true }]\n")
        .script("s.rhai", "throw \"broken\";");
    let (_, runs) = p.fire("t", "{}");
    let id = runs[0]["id"].as_i64().unwrap().to_string();
    p.script("s.rhai", "api.close(record, \"fixed\");");
    let ran = p.run(&["replay", &id]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let all = p.run(&["runs", "--json"]).json();
    assert_eq!(all.as_array().unwrap().len(), 1, "the ledger keeps one run per event and rule");
    assert_eq!(all[0]["status"], "ok");
    assert_eq!(p.records("t")[0]["status"], "closed");
    assert_eq!(p.run(&["replay", &id]).code, 1, "an ok run is not replayed");
}

#[test]
fn the_daemon_drains_queued_events_and_stops_on_sigterm() {
    let p = seed_project();
    let ran = p.run_stdin(
        &["fire", "ticket", "--record", "-", "--queue"],
        Some("{\"Source\":\"FlexHR\",\"FirstName\":\"Q\"}\n"),
    );
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(p.run(&["runs", "--json"]).json(), json!([]), "queued, not run");
    let daemon = Daemon::start(&p);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let runs = p.run(&["runs", "--json"]).json();
        if runs.as_array().unwrap().len() == 1 {
            assert_eq!(runs[0]["status"], "ok");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the daemon did not run the queued event");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    daemon.stop();
}
