//! What `tripline check` finds in scripts before they run, and the place a run-time script
//! error names, through the real binary.

use crate::common::project::Project;

/// A configuration with one of each named thing scripts use, and a webhook for tickets.
const CONFIG: &str = r#"
[directories.ActiveDirectory]
kind = "active_directory"
url = "ldaps://dc1.example.com"
bind_dn = "svc-tripline@example.com"
bind_password = "${AD_BIND_PASSWORD}"
base_dn = "DC=example,DC=com"
dry_run = true

[connections.flex_hr]
base_url = "https://flexhr.example.com/api/"
auth = { type = "basic", username = "svc-tripline", password = "${FLEX_HR_PASSWORD}" }
enabled = false

[notify.desk]
type = "webhook"
url = "https://hooks.example.com/desk"

[server]
listen = "127.0.0.1:0"

[webhooks.portal]
path = "/hooks/portal"
entity = "ticket"
auth = { type = "none" }
"#;

const TICKET_RULE: &str = "name = \"thanks\"\nentity = \"ticket\"\nscript = \"thanks.rhai\"\n";

#[test]
fn check_finds_what_would_stop_a_script_at_its_place() {
    let p = Project::new(CONFIG);
    p.rule("thanks", TICKET_RULE)
        .script("thanks.rhai", "api.info(\"start\");\napi.coment(record, \"thanks\");\n")
        .script("who.rhai", "let who = recrod.Requester;\n")
        .script("ad.rhai", "let ad = api.directory(\"ActiveDirectry\");\nad.find_usr(\"ann\");\n")
        .script("hr.rhai", "let hr = api.connection(\"flexhr\");\n")
        .script("tell.rhai", "api.notify(\"dsek\", \"subject\", \"body\");\n")
        .script("sync.rhai", "api.ProcessFlexHrUserOnAD(record, \"ActiveDirectry\");\n")
        .script("helper.rhai", "fn close_it() {\n    api.close(record, \"done\");\n}\nclose_it();\n")
        .script("typo.rhai", "prnt(\"x\");\n");
    let ran = p.run(&["check"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    let at = |script: &str| p.path().join("scripts").join(script).display().to_string();
    let expected = [
        format!("{}:1:24: no directory named \"ActiveDirectry\" in tripline.toml ([directories.ActiveDirectry]); did you mean \"ActiveDirectory\"?", at("ad.rhai")),
        format!("{}:2:4: `ad` is a Directory, which has no method `find_usr`; did you mean `find_user`?", at("ad.rhai")),
        format!("{}:2:5: `api` is not visible in function `close_it`: a function sees only its parameters and its own variables; pass `api` as a parameter", at("helper.rhai")),
        format!("{}:2:15: `record` is not visible in function `close_it`: a function sees only its parameters and its own variables; pass `record` as a parameter", at("helper.rhai")),
        format!("{}:1:25: no connection named \"flexhr\" in tripline.toml ([connections.flexhr]); did you mean \"flex_hr\"?", at("hr.rhai")),
        format!("{}:1:35: no directory named \"ActiveDirectry\" in tripline.toml ([directories.ActiveDirectry]); did you mean \"ActiveDirectory\"?", at("sync.rhai")),
        format!("{}:1:12: no notification channel named \"dsek\" in tripline.toml ([notify.dsek]); did you mean \"desk\"?", at("tell.rhai")),
        format!("{}:2:5: api has no method `coment`; did you mean `comment`?", at("thanks.rhai")),
        format!("{}:1:1: no function `prnt` is defined in this script or registered; did you mean `print`?", at("typo.rhai")),
        format!("{}:1:11: variable `recrod` is not defined; did you mean `record`?", at("who.rhai")),
        "10 problems found".to_string(),
    ];
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines, expected, "{}", ran.stdout);

    // A script in error never runs: the rule's run fails naming the problem (a broken file
    // does not stop the others, and the event waits in `runs --failed` for a replay after
    // the fix), and the run writes nothing.
    let (ran, runs) = p.fire("ticket", "{}");
    assert_eq!(ran.code, 1, "{ran:?}");
    let thanks = runs.iter().find(|r| r["rule"] == "thanks").expect("the rule of the broken script ran");
    assert_eq!(thanks["status"], "failed", "{thanks}");
    let error = thanks["error"].as_str().unwrap();
    assert!(error.contains(&format!("{}:2:5: api has no method `coment`", at("thanks.rhai"))), "{error}");
    assert!(error.contains("no version of it ever loaded"), "{error}");
    assert!(p.records("ticket").iter().all(|t| t["comments"].as_array().unwrap().is_empty()), "nothing written");
}

#[test]
fn check_passes_scripts_that_work_and_says_nothing_about_them() {
    let p = Project::new(CONFIG);
    p.rule("thanks", TICKET_RULE).script(
        "thanks.rhai",
        r#"
const GREETING = "Thanks";
fn thank(api, r, who) {
    let text = `${global::GREETING}, ${who}`;
    api.comment(r, text);
    [1, 2].map(|n| n * 2).for_each(|n| api.info(n));
}
let who = record?.Requester?.name ?? "there";
for (tag, i) in record.tags ?? [] { api.info(`${i}: ${tag}`) }
try { api.retry_later("not yet") } catch (e) { if !e.transient { throw e; } }
switch event { "created" => thank(api, record, who), _ => api.info(`event ${event}`) }
let ad = api.directory("ActiveDirectory");
if ad.user_exists(#{ by: "employeeID", value: "E1" }) { api.info(ad.base_dn) }
let hr = api.connection("flex_hr");
api.notify("desk", "subject", `body for ${rule}`);
"#,
    );
    let ran = p.run(&["check"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.stdout.trim(), "ok: 1 rules, 1 scripts, 1 directories, 1 connections, 0 jobs, 1 webhooks");
}

#[test]
fn a_rule_for_an_entity_nothing_produces_is_a_warning_and_check_still_passes() {
    let p = Project::new(CONFIG);
    p.rule("thanks", TICKET_RULE)
        .script("thanks.rhai", "api.create(\"flexhr_log\", #{ from: record.id });\n")
        .rule("staged", "name = \"staged\"\nentity = \"flexhr_log\"\nscript = \"noop.rhai\"\n")
        .rule("typo", "name = \"triage\"\nentity = \"tickets\"\nscript = \"noop.rhai\"\n")
        .script("noop.rhai", "api.info(record.id);\n");
    let ran = p.run(&["check"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let lines: Vec<&str> = ran.stdout.lines().collect();
    let rule = p.path().join("rules/typo.toml");
    assert_eq!(
        lines,
        [
            format!(
                "{}:2:10: warning: rule \"triage\": no webhook and no script (api.create) produces records of \
                 entity \"tickets\" (did you mean \"ticket\"?); the entities produced are \"flexhr_log\", \"ticket\"; \
                 only records given from outside (`tripline fire tickets`) will reach this rule",
                rule.display()
            ),
            "ok: 3 rules, 2 scripts, 1 directories, 1 connections, 0 jobs, 1 webhooks; 1 warning".to_string(),
        ],
        "{}",
        ran.stdout
    );
    // A warning stops nothing: the rule runs on what is fired from outside.
    let (ran, runs) = p.fire("tickets", "{}");
    assert_eq!((ran.code, runs.len()), (0, 1), "{ran:?}");
    assert_eq!(runs[0]["rule"], "triage");
}

#[test]
fn a_run_time_script_error_names_the_script_line_and_column() {
    let p = Project::new("");
    // `a` is api or (), which only the run decides: no check can judge the call.
    p.rule("thanks", TICKET_RULE)
        .script("thanks.rhai", "let a = if record.n == 2 { api } else { () };\na.coment(record, \"t\");\n");
    let at = p.path().join("scripts/thanks.rhai").display().to_string();

    let (ran, runs) = p.fire("ticket", r#"{"n": 2}"#);
    assert_eq!(ran.code, 1, "{ran:?}");
    let error = runs[0]["error"].as_str().unwrap();
    assert!(error.starts_with(&format!("{at}:2:3: Function not found: coment (Api, ")), "{error}");
    assert!(!error.contains("(line "), "the place is said once: {error}");
}

#[test]
fn a_run_time_error_inside_a_function_names_the_place_in_it_and_the_call() {
    let p = Project::new("");
    p.rule("thanks", TICKET_RULE).script(
        "thanks.rhai",
        "fn total(items) {\n    let sum = 0;\n    for i in items { sum += i.amount }\n    sum\n}\napi.info(total(record.items));\n",
    );
    let at = p.path().join("scripts/thanks.rhai").display().to_string();
    let (ran, runs) = p.fire("ticket", r#"{"items": [{"amount": 1}, 2]}"#);
    assert_eq!(ran.code, 1, "{ran:?}");
    let error = runs[0]["error"].as_str().unwrap();
    assert!(error.starts_with(&format!("{at}:3:")), "{error}");
    assert!(error.ends_with("(in function `total` called at 6:10)"), "{error}");
}

#[test]
fn a_jobs_script_in_error_is_reported_once_at_its_place() {
    let p = Project::new("[jobs.nightly]\nschedule = \"0 2 * * *\"\nscript = \"nightly.rhai\"\n");
    p.script("nightly.rhai", "api.infoo(\"nightly\");\n");
    let ran = p.run(&["check"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    let at = p.path().join("scripts/nightly.rhai").display().to_string();
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(
        lines,
        [format!("{at}:1:5: api has no method `infoo`; did you mean `info`?").as_str(), "1 problem found"],
        "{}",
        ran.stdout
    );
}
