//! `tripline rules list`, `job list` and `connection list` through the real binary: what is
//! loaded, when each job runs next and how it last ended, and each connection's auth type
//! and token state with no secret in the output.

use crate::common::project::Project;

const PASSWORD: &str = "pw-canary-5b1e";
const TOKEN: &str = "tok-canary-77c3";
const CLIENT_SECRET: &str = "cs-canary-9d2a";
const KEY: &str = "key-canary-41f0";

fn project() -> Project {
    let p = Project::new(&format!(
        r#"
[jobs.nightly]
schedule = "0 */5 * * * *"
script = "nightly.rhai"

[jobs.paused]
schedule = "0 0 3 * * *"
script = "nightly.rhai"
enabled = false

[connections.hr]
base_url = "https://hr.example.test/api/"
auth = {{ type = "basic", username = "svc", password = "${{HR_PASSWORD}}" }}

[connections.itsm]
base_url = "https://itsm.example.test/api/?key={KEY}"
auth = {{ type = "bearer", token = "{TOKEN}" }}

[connections.rmm]
base_url = "https://rmm.example.test/"
auth = {{ type = "oauth2", grant = "client_credentials", token_url = "https://rmm.example.test/token", client_id = "tripline", client_secret = "{CLIENT_SECRET}" }}

[connections.nql]
base_url = "https://nql.example.test/"
auth = {{ type = "api_key", name = "X-Key", value = "{KEY}" }}
"#
    ));
    p.set_env("HR_PASSWORD", PASSWORD);
    p.rule(
        "vip",
        "name = \"Flag VIP tickets\"\nentity = \"ticket\"\npriority = 10\nconditions = [{ field = \"Requester.vip\", op = \"equals\", value = true }]\nscript = \"vip.rhai\"\n",
    )
    .script("vip.rhai", "api.comment(record, \"VIP\");\n")
    .script("nightly.rhai", "api.info(\"nightly\");\n");
    p
}

#[test]
fn job_list_shows_the_next_run_and_the_last_run() {
    let p = project();
    let ran = p.run(&["job", "list", "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let jobs = ran.json();
    let nightly = jobs.as_array().unwrap().iter().find(|j| j["name"] == "nightly").unwrap();
    assert_eq!(nightly["schedule"], "0 */5 * * * *");
    assert_eq!(nightly["enabled"], true);
    let next = chrono::DateTime::parse_from_rfc3339(nightly["next_run"].as_str().expect("a next run")).unwrap();
    assert_eq!(chrono::Timelike::minute(&next) % 5, 0, "{next}");
    assert!(next > chrono::Utc::now());
    assert!(nightly["last_run"].is_null());
    let paused = jobs.as_array().unwrap().iter().find(|j| j["name"] == "paused").unwrap();
    assert_eq!((paused["enabled"].as_bool(), paused["next_run"].is_null()), (Some(false), true));

    assert_eq!(p.run(&["job", "run", "nightly"]).code, 0);
    let jobs = p.run(&["job", "list", "--json"]).json();
    let nightly = jobs.as_array().unwrap().iter().find(|j| j["name"] == "nightly").unwrap();
    assert_eq!(nightly["last_run"]["status"], "ok", "{nightly:#}");
    let text = p.run(&["job", "list"]);
    assert!(text.stdout.contains("nightly  \"0 */5 * * * *\"  nightly.rhai  next "), "{}", text.stdout);
    assert!(
        text.stdout.contains(" ok ") && text.stdout.contains("paused") && text.stdout.contains("disabled"),
        "{}",
        text.stdout
    );
}

#[test]
fn connection_list_shows_auth_and_token_state_and_no_secret() {
    let p = project();
    let json = p.run(&["connection", "list", "--json"]);
    assert_eq!(json.code, 0, "{json:?}");
    let text = p.run(&["connection", "list"]);
    assert_eq!(text.code, 0, "{text:?}");
    for out in [&json.stdout, &json.stderr, &text.stdout, &text.stderr] {
        for secret in [PASSWORD, TOKEN, CLIENT_SECRET, KEY] {
            assert!(!out.contains(secret), "{secret} shown: {out}");
        }
    }
    let list = json.json();
    let by = |name: &str| list.as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone();
    assert_eq!(by("hr")["auth"], "basic");
    assert_eq!(by("itsm")["auth"], "bearer");
    assert_eq!(by("itsm")["base_url"], "https://itsm.example.test/api/");
    assert_eq!(by("nql")["auth"], "api_key");
    assert_eq!(by("rmm")["auth"], "oauth2");
    assert_eq!(by("rmm")["token"]["state"], "none");
    assert!(by("hr")["token"].is_null());
    assert!(text.stdout.contains("rmm  oauth2  https://rmm.example.test/  no token stored yet"), "{}", text.stdout);
}

#[test]
fn rules_list_shows_what_is_loaded_and_what_is_in_error() {
    let p = project();
    p.rule("broken", "name = \"Broken\"\nentity = \"ticket\"\nconditions = [{ field = \"x\", op = \"equls\", value = 1 }]\nscript = \"vip.rhai\"\n");
    let ran = p.run(&["rules", "list", "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let report = ran.json();
    let rules = report["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{report:#}");
    assert_eq!(rules[0]["name"], "Flag VIP tickets");
    assert_eq!(rules[0]["entity"], "ticket");
    assert_eq!(rules[0]["priority"], 10);
    assert_eq!(rules[0]["conditions"][0], "Requester.vip equals true");
    let errors = report["files_in_error"].as_array().unwrap();
    assert!(errors[0].as_str().unwrap().contains("broken.toml:3:"), "{report:#}");
    let text = p.run(&["rules", "list"]);
    assert!(text.stdout.contains("Flag VIP tickets  [ticket]"), "{}", text.stdout);
    assert!(text.stdout.contains("in error: "), "{}", text.stdout);
}
