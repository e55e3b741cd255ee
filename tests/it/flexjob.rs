//! Connections from scripts and the shipped Flex HR job, through the real binary against
//! local HTTP servers (wiremock on loopback) standing in for Flex HR and the other APIs.

use chrono::{Duration, SecondsFormat, Utc};
use serde_json::{json, Value};
use wiremock::matchers::{basic_auth, body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::common::directory_servers::{
    ad_admin, ad_admin_tls, dns_with, make_ou, read_attr, samba, unique, AD_ADMIN, AD_ADMIN_PW, AD_BASE,
};
use crate::common::project::{Project, Ran};

/// The Flex HR password, and the secret canary: it must appear in no output, log, run or
/// record.
const PASSWORD: &str = "flex-canary-Zq81xT";

/// The shipped job script, tested as shipped.
const JOB_SCRIPT: &str = include_str!("../../scripts/flex_hr_job.rhai");

fn json_answer(body: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(body)
}

/// RFC 3339, `hours` ago.
fn hours_ago(hours: i64) -> String {
    (Utc::now() - Duration::hours(hours)).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A local Flex HR: `GET /api/users` by the SPEC's contract, basic auth, one mock per page.
struct FlexHr {
    server: MockServer,
}

impl FlexHr {
    async fn start() -> FlexHr {
        FlexHr { server: MockServer::start().await }
    }

    /// Serves `users` in pages of `page_size`, only to the job's credentials and instance
    /// (anything else gets wiremock's 404). Forgets earlier answers and requests.
    async fn serve(&self, users: &[Value], page_size: usize) {
        self.server.reset().await;
        Mock::given(method("GET"))
            .and(path("/api/companies"))
            .and(basic_auth("svc-tripline", PASSWORD))
            .and(query_param("instanceId", "ACME"))
            .respond_with(json_answer(json!([{"id": 1, "name": "ACME AG"}, {"id": 2, "name": "Globex GmbH"}])))
            .mount(&self.server)
            .await;
        let pages: Vec<&[Value]> = users.chunks(page_size).collect();
        let total = pages.len();
        for (i, page) in pages.iter().enumerate() {
            Mock::given(method("GET"))
                .and(path("/api/users"))
                .and(basic_auth("svc-tripline", PASSWORD))
                .and(query_param("instanceId", "ACME"))
                .and(query_param("pageSize", page_size.to_string()))
                .and(query_param("page", (i + 1).to_string()))
                .respond_with(json_answer(json!({"users": page, "page": i + 1, "totalPages": total})))
                .mount(&self.server)
                .await;
        }
    }

    async fn user_requests(&self) -> Vec<Request> {
        let all = self.server.received_requests().await.unwrap();
        all.into_iter().filter(|r| r.url.path() == "/api/users").collect()
    }
}

fn query_of(r: &Request, name: &str) -> Option<String> {
    r.url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// A project with the Flex HR connection and job as `tripline.toml` ships them, switched on
/// and pointed at `server`; the shipped job script.
fn flex_project(server: &MockServer, extra_params: &str) -> Project {
    let p = Project::new(&format!(
        r#"
[connections.flex_hr]
base_url = "{}/api/"
auth = {{ type = "basic", username = "svc-tripline", password = "${{FLEX_HR_PASSWORD}}" }}
headers = {{ Accept = "application/json" }}
test = {{ path = "companies?instanceId=ACME" }}
retry = {{ max_attempts = 1 }}

[jobs.flex_hr_sync]
schedule = "0 */2 * * * *"
script = "flex_hr_job.rhai"
params = {{ modified_since_days = 30, instance_id = "ACME", page_size = 2{extra_params} }}
"#,
        server.uri()
    ));
    p.script("flex_hr_job.rhai", JOB_SCRIPT);
    p.set_env("FLEX_HR_PASSWORD", PASSWORD);
    p
}

fn env() -> [(&'static str, &'static str); 1] {
    [("FLEX_HR_PASSWORD", PASSWORD)]
}

/// `tripline job run flex_hr_sync --json`: every run, the job's first.
fn run_job(p: &Project) -> (Ran, Vec<Value>) {
    let ran = p.run_env(&["job", "run", "flex_hr_sync", "--json"], &env());
    let runs: Vec<Value> =
        ran.stdout.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect();
    (ran, runs)
}

/// Runs the job, which must end ok; returns its log messages.
fn job_ok(p: &Project) -> Vec<String> {
    let (ran, runs) = run_job(p);
    assert_eq!(ran.code, 0, "{ran:?}");
    let job = &runs[0];
    assert_eq!(job["rule"], "job:flex_hr_sync");
    assert_eq!(job["status"], "ok", "{job:#}");
    job["log"].as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap().to_string()).collect()
}

fn summary(log: &[String]) -> &str {
    log.iter().find(|l| l.starts_with("Flex HR sync since ")).unwrap_or_else(|| panic!("no summary in {log:#?}"))
}

fn by_employee<'a>(records: &'a [Value], id: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["fields"]["EmployeeId"] == id).collect()
}

/// New (with untidy text), one to change later, one without EmployeeId, a leaver and one
/// whose manager is not known anywhere.
fn hr_users() -> Vec<Value> {
    vec![
        json!({"EmployeeId": " E1001 ", "FirstName": "Ann\u{0007}", "LastName": "  Lee ",
               "Email": "Ann.Lee@Example.COM", "Department": "Sales\tEMEA", "JobTitle": "Account  Manager",
               "Company": "ACME", "ManagerEmployeeId": "E1000", "Active": true, "ModifiedAt": hours_ago(5),
               "LastLogin": "2024-01-01T00:00:00Z"}),
        json!({"EmployeeId": "E1002", "FirstName": "Bob", "LastName": "Stone", "Email": "bob.stone@example.com",
               "Department": "IT", "JobTitle": "Engineer", "Active": true, "ModifiedAt": hours_ago(4)}),
        json!({"FirstName": "No", "LastName": "Key", "Email": "no.key@example.com", "ModifiedAt": hours_ago(3)}),
        json!({"EmployeeId": 1003, "FirstName": "Lea", "LastName": "Ver", "Department": "Finance",
               "Active": "false", "ModifiedAt": hours_ago(2)}),
        json!({"employeeId": "E1004", "firstName": "Max", "lastName": "Mustermann", "managerEmployeeId": "E9999",
               "active": 1, "modifiedAt": hours_ago(1)}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flex_hr_job_stages_opens_tickets_comments_changes_and_stays_quiet() {
    let hr = FlexHr::start().await;
    let mut users = hr_users();
    hr.serve(&users, 2).await;
    let p = flex_project(&hr.server, "");

    // First run: four people staged as new, four tickets, one skipped and counted.
    let log = job_ok(&p);
    assert!(
        summary(&log).ends_with(
            "fetched 5, skipped 1 without EmployeeId, 0 duplicates, unchanged 0, new 4, changed 0 (1 leavers), \
             tickets opened 4, tickets commented 0"
        ),
        "{log:#?}"
    );
    assert!(log.iter().any(|l| l == "Skipped a Flex HR user without EmployeeId: No Key"), "{log:#?}");
    let requests = hr.user_requests().await;
    assert_eq!(requests.len(), 3, "three pages");
    let since = query_of(&requests[0], "modifiedSince").unwrap();
    let days = (Utc::now() - chrono::DateTime::parse_from_rfc3339(&since).unwrap().with_timezone(&Utc)).num_days();
    assert!((29..=30).contains(&days), "30 days back: {since}");

    let staged = p.records("flexhr_log");
    assert_eq!(staged.len(), 4);
    assert!(staged.iter().all(|r| r["fields"]["IsNewUser"] == 1), "{staged:#?}");
    let ann = by_employee(&staged, "E1001")[0];
    let expected = json!({
        "EmployeeId": "E1001", "FirstName": "Ann", "LastName": "Lee", "Email": "ann.lee@example.com",
        "Department": "Sales EMEA", "JobTitle": "Account Manager", "Company": "ACME",
        "ManagerEmployeeId": "E1000", "Active": true, "IsNewUser": 1,
        "ModifiedAt": ann["fields"]["ModifiedAt"],
    });
    assert_eq!(ann["fields"], expected, "sanitized, contract fields only");
    let lea = &by_employee(&staged, "1003")[0]["fields"];
    assert_eq!((&lea["EmployeeId"], &lea["Active"]), (&json!("1003"), &json!(false)), "a number as text, a flag read");
    let max = &by_employee(&staged, "E1004")[0]["fields"];
    assert_eq!(
        (&max["FirstName"], &max["ManagerEmployeeId"], &max["Active"]),
        (&json!("Max"), &json!("E9999"), &json!(true))
    );

    let tickets = p.records("ticket");
    assert_eq!(tickets.len(), 4);
    for t in &tickets {
        assert_eq!(t["fields"]["Source"], "FlexHR");
        assert_eq!(t["fields"]["IsNewUser"], 1);
        assert_eq!(t["status"], "open");
    }
    let ann_ticket = &by_employee(&tickets, "E1001")[0]["fields"];
    assert_eq!(ann_ticket["Subject"], "Flex HR: new user Ann Lee (E1001)");
    assert_eq!(ann_ticket["Department"], "Sales EMEA");
    assert_eq!(by_employee(&tickets, "1003")[0]["fields"]["Subject"], "Flex HR: leaver Lea Ver (1003)");

    // Nothing changed: nothing written at all, to the byte.
    let before = (p.records("flexhr_log"), p.records("ticket"));
    let log = job_ok(&p);
    assert!(summary(&log).contains("unchanged 4, new 0, changed 0"), "{log:#?}");
    // The companies line (the job reads them first), the skip warning and the summary.
    assert_eq!(log.len(), 3, "the companies, the skip warning and the summary only: {log:#?}");
    assert_eq!(log[0], "Flex HR instance ACME has 2 companies: ACME AG, Globex GmbH");
    assert_eq!((p.records("flexhr_log"), p.records("ticket")), before);

    // Only ModifiedAt moved (HR touched the record): still nothing.
    users[1]["ModifiedAt"] = json!(hours_ago(0));
    hr.serve(&users, 2).await;
    let log = job_ok(&p);
    assert!(summary(&log).contains("unchanged 4, new 0, changed 0"), "{log:#?}");
    assert_eq!((p.records("flexhr_log"), p.records("ticket")), before);

    // Bob changes department while his ticket is open: a comment, his fields updated, no
    // second ticket.
    users[1]["Department"] = json!("Platform");
    users[1]["Phone"] = json!("+41 44 000 00 00");
    hr.serve(&users, 2).await;
    let log = job_ok(&p);
    assert!(
        summary(&log).contains("unchanged 3, new 0, changed 1 (0 leavers), tickets opened 0, tickets commented 1"),
        "{log:#?}"
    );
    let tickets = p.records("ticket");
    assert_eq!(tickets.len(), 4, "no second ticket");
    let bob = by_employee(&tickets, "E1002");
    assert_eq!(bob.len(), 1);
    let comments = bob[0]["comments"].as_array().unwrap();
    assert_eq!(comments.len(), 1);
    assert_eq!(
        comments[0]["text"],
        "User information changed in Flex HR (Department, Phone); the ticket remains open."
    );
    assert_eq!(bob[0]["fields"]["Department"], "Platform");
    assert_eq!(bob[0]["fields"]["Phone"], "+41 44 000 00 00");
    assert_eq!(bob[0]["fields"]["IsNewUser"], 1, "the ticket keeps what it was opened for");
    let staged = p.records("flexhr_log");
    let bob_log = &by_employee(&staged, "E1002")[0]["fields"];
    assert_eq!((&bob_log["Department"], &bob_log["IsNewUser"]), (&json!("Platform"), &json!(0)));
    for other in ["E1001", "1003", "E1004"] {
        assert!(by_employee(&tickets, other)[0]["comments"].as_array().unwrap().is_empty());
    }

    // The phone is gone again: cleared on the staged record and the ticket.
    users[1].as_object_mut().unwrap().remove("Phone");
    hr.serve(&users, 2).await;
    let log = job_ok(&p);
    assert!(summary(&log).contains("changed 1 (0 leavers), tickets opened 0, tickets commented 1"), "{log:#?}");
    let bob = p.records("ticket").into_iter().find(|t| t["fields"]["EmployeeId"] == "E1002").unwrap();
    assert_eq!(bob["fields"]["Phone"], Value::Null);
    assert_eq!(bob["comments"][1]["text"], "User information changed in Flex HR (Phone); the ticket remains open.");

    // And quiet again.
    let before = (p.records("flexhr_log"), p.records("ticket"));
    job_ok(&p);
    assert_eq!((p.records("flexhr_log"), p.records("ticket")), before);

    // The job's runs are in the run history.
    let runs = p.run(&["runs", "--rule", "job:flex_hr_sync", "--json"]).json();
    assert_eq!(runs.as_array().unwrap().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_after_the_ticket_was_closed_opens_a_new_ticket_for_a_known_person() {
    let hr = FlexHr::start().await;
    let mut users = vec![hr_users()[1].clone()];
    hr.serve(&users, 2).await;
    let p = flex_project(&hr.server, "");
    // Stands in for the AD rule: every FlexHR ticket is handled and closed at once.
    p.rule(
        "close",
        r#"
name = "Handle FlexHR tickets"
entity = "ticket"
conditions = [
  { field = "Created", op = "equals", value = true },
  { field = "Source", op = "equals", value = "FlexHR" },
]
script = "close.rhai"
"#,
    )
    .script("close.rhai", r#"api.close(record, `handled ${record.EmployeeId} (IsNewUser ${record.IsNewUser})`);"#);

    let (ran, runs) = run_job(&p);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(runs.len(), 2, "the job and the rule its ticket triggered: {runs:#?}");
    assert_eq!((&runs[1]["rule"], &runs[1]["status"]), (&json!("Handle FlexHR tickets"), &json!("ok")));

    users[0]["JobTitle"] = json!("Staff Engineer");
    hr.serve(&users, 2).await;
    let log = job_ok(&p);
    assert!(summary(&log).contains("changed 1 (0 leavers), tickets opened 1, tickets commented 0"), "{log:#?}");
    let tickets = p.records("ticket");
    assert_eq!(tickets.len(), 2);
    assert_eq!(tickets[1]["fields"]["IsNewUser"], 0);
    assert_eq!(tickets[1]["fields"]["JobTitle"], "Staff Engineer");
    assert_eq!(tickets[1]["fields"]["Subject"], "Flex HR: user information changed: Bob Stone (E1002)");
    assert_eq!(tickets[1]["comments"][0]["text"], "handled E1002 (IsNewUser 0)");
    assert!(tickets.iter().all(|t| t["status"] == "closed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watermark_survives_between_processes_and_narrows_an_incremental_query() {
    let hr = FlexHr::start().await;
    let mut users = hr_users();
    users[0]["ModifiedAt"] = json!(hours_ago(30));
    users[1]["ModifiedAt"] = json!(hours_ago(50));
    users[1]["EmployeeId"] = json!("E1001");
    users[3]["ModifiedAt"] = json!("not a time");
    users[4]["modifiedAt"] = json!(hours_ago(72));
    let newest = users[0]["ModifiedAt"].as_str().unwrap().to_string();
    hr.serve(&users, 10).await;
    let p = flex_project(&hr.server, ", incremental = true");
    p.file(
        "tripline.toml",
        &std::fs::read_to_string(p.path().join("tripline.toml")).unwrap().replace("page_size = 2", "page_size = 10"),
    );

    // First run: no watermark yet, the whole window; the same person twice counts once, the
    // newer entry wins.
    let log = job_ok(&p);
    assert!(
        summary(&log).contains("fetched 5, skipped 1 without EmployeeId, 1 duplicates, unchanged 0, new 3"),
        "{log:#?}"
    );
    let ann = p.records("flexhr_log").into_iter().find(|r| r["fields"]["EmployeeId"] == "E1001").unwrap();
    assert_eq!(ann["fields"]["FirstName"], "Ann");
    let first = query_of(&hr.user_requests().await[0], "modifiedSince").unwrap();

    // Second run, another process: it asks from a day before the newest ModifiedAt seen.
    hr.serve(&users, 10).await;
    job_ok(&p);
    let second = query_of(&hr.user_requests().await[0], "modifiedSince").unwrap();
    let expected = chrono::DateTime::parse_from_rfc3339(&newest).unwrap() - Duration::days(1);
    assert_eq!(second, expected.with_timezone(&Utc).to_rfc3339_opts(SecondsFormat::Secs, true), "first: {first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_fails_clearly_on_a_refusal_and_writes_nothing() {
    let hr = FlexHr::start().await;
    hr.serve(&hr_users(), 2).await;
    let p = flex_project(&hr.server, "");
    // A wrong password: the pages above do not match it, this catch-all (lower priority)
    // answers as Flex HR would.
    Mock::given(method("GET"))
        .and(path("/api/users"))
        .respond_with(ResponseTemplate::new(401).set_body_string("{\"error\": \"bad credentials\"}"))
        .with_priority(10)
        .mount(&hr.server)
        .await;
    let ran = p.run_env(&["job", "run", "flex_hr_sync"], &[("FLEX_HR_PASSWORD", "wrong-password-1")]);
    assert_eq!(ran.code, 1, "{ran:?}");
    // The error names the place in the script first (the call of get_all), then the answer.
    let (line, text) = JOB_SCRIPT.lines().enumerate().find(|(_, l)| l.contains("hr.get_all(")).unwrap();
    let place = format!(
        "{}:{}:{}",
        p.path().join("scripts/flex_hr_job.rhai").display(),
        line + 1,
        text.find("get_all").unwrap() + 1
    );
    assert!(
        ran.stdout.contains(&format!(
            "error: {place}: connection flex_hr: GET /api/users answered 401: {{\"error\": \"bad credentials\"}}"
        )),
        "{ran:?}"
    );
    assert!(!ran.stdout.contains("wrong-password-1") && !ran.stderr.contains("wrong-password-1"));
    let ran = p.run(&["records", "list", "ticket"]);
    assert_ne!(ran.code, 0, "no ticket entity at all: {ran:?}");

    // A missing instance id is the job's own clear error.
    p.file(
        "tripline.toml",
        &std::fs::read_to_string(p.path().join("tripline.toml")).unwrap().replace("instance_id = \"ACME\", ", ""),
    );
    let ran = p.run_env(&["job", "run", "flex_hr_sync"], &env());
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stdout.contains("params.instance_id is required"), "{ran:?}");
}

/// Six people for a Flex HR that caps its pages at two, whatever `pageSize` asks for.
async fn serve_capped(server: &MockServer, users: Vec<Value>, cap: usize) {
    let total = users.len().div_ceil(cap);
    Mock::given(method("GET"))
        .and(path("/api/users"))
        .and(basic_auth("svc-tripline", PASSWORD))
        .and(query_param("instanceId", "ACME"))
        .respond_with(move |r: &Request| {
            let page: usize = query_of(r, "page").and_then(|p| p.parse().ok()).unwrap_or(1);
            let chunk: Vec<Value> = users.iter().skip((page - 1) * cap).take(cap).cloned().collect();
            json_answer(json!({"users": chunk, "page": page, "totalPages": total}))
        })
        .mount(server)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flex_hr_that_caps_its_page_size_is_read_whole() {
    let server = MockServer::start().await;
    let users: Vec<Value> = (1..=6)
        .map(|i| {
            json!({"EmployeeId": format!("E20{i:02}"), "FirstName": format!("P{i}"), "LastName": "Capped",
                   "Active": true, "ModifiedAt": hours_ago(i)})
        })
        .collect();
    serve_capped(&server, users, 2).await;
    let p = flex_project(&server, "");
    // The job asks for 100 a page; the server gives 2, with totalPages = 3.
    let config = std::fs::read_to_string(p.path().join("tripline.toml")).unwrap();
    p.file("tripline.toml", &config.replace("page_size = 2", "page_size = 100"));
    let log = job_ok(&p);
    assert!(
        summary(&log).contains("fetched 6, skipped 0 without EmployeeId, 0 duplicates, unchanged 0, new 6"),
        "{log:#?}"
    );
    // The users' pages (the job also asks for the companies, once, first).
    let requests: Vec<Request> =
        server.received_requests().await.unwrap().into_iter().filter(|r| r.url.path() == "/api/users").collect();
    let pages: Vec<String> = requests.iter().filter_map(|r| query_of(r, "page")).collect();
    assert_eq!(pages, ["1", "2", "3"]);
    assert!(requests.iter().all(|r| query_of(r, "pageSize").as_deref() == Some("100")));
    let staged = p.records("flexhr_log");
    let tickets = p.records("ticket");
    assert_eq!((staged.len(), tickets.len()), (6, 6), "everyone staged and ticketed");
    for i in 1..=6 {
        let id = format!("E20{i:02}");
        assert_eq!(by_employee(&staged, &id).len(), 1, "{id}");
        assert_eq!(by_employee(&tickets, &id).len(), 1, "{id}");
    }
}

// ---------------------------------------------------------------------------------------
// The script handle: `api.connection(name)`

/// A project with one connection `peer` on `server` (basic auth with the canary password,
/// no retries) and the given files.
fn peer_project(server: &MockServer) -> Project {
    let p = Project::new(&format!(
        r#"
[connections.peer]
base_url = "{}/"
auth = {{ type = "basic", username = "svc-tripline", password = "${{FLEX_HR_PASSWORD}}" }}
retry = {{ max_attempts = 1 }}
test = {{ path = "companies?instanceId=ACME" }}

[jobs.script]
schedule = "0 0 * * *"
script = "script.rhai"
"#,
        server.uri()
    ));
    p.script("script.rhai", "");
    p.set_env("FLEX_HR_PASSWORD", PASSWORD);
    p
}

/// Runs `script` as the job `script`; returns the run (printed with `--json`).
fn run_script(p: &Project, script: &str) -> (Ran, Value) {
    p.script("script.rhai", script);
    let ran = p.run_env(&["job", "run", "script", "--json"], &env());
    let run = serde_json::from_str(ran.stdout.lines().next().unwrap_or("null")).unwrap();
    (ran, run)
}

fn messages(run: &Value) -> Vec<String> {
    run["log"].as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_call_every_verb_with_options_and_read_the_answer() {
    let server = MockServer::start().await;
    let auth = || basic_auth("svc-tripline", PASSWORD);
    Mock::given(method("GET"))
        .and(path("/items"))
        .and(auth())
        .and(query_param("q", "a b"))
        .and(query_param("n", "2"))
        .and(header("x-trace", "t1"))
        .respond_with(json_answer(json!({"items": [1, 2, 3]})).insert_header("x-peer", "p1"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/items"))
        .and(auth())
        .and(body_json(json!({"name": "x", "tags": ["a"]})))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 7})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/items/7"))
        .and(body_json(json!({"name": "y"})))
        .respond_with(ResponseTemplate::new(200).set_body_string("replaced"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/items/7"))
        .and(header("if-match", "e1"))
        .and(body_json(json!({"name": "z"})))
        .respond_with(json_answer(json!({"name": "z"})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/items/7"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/forms"))
        .and(wiremock::matchers::body_string("a=1&b=two+words"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/missing"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"error": "no such thing"})))
        .mount(&server)
        .await;
    for page in 1..=3 {
        let data: Vec<i64> = (0..2).map(|i| (page - 1) * 2 + i).collect();
        Mock::given(method("GET"))
            .and(path("/pages"))
            .and(query_param("page", page.to_string()))
            .and(query_param("per_page", "2"))
            .respond_with(json_answer(json!({"data": data, "pages": 3})))
            .expect(1)
            .mount(&server)
            .await;
    }
    let p = peer_project(&server);
    let (ran, run) = run_script(
        &p,
        r#"
let c = api.connection("peer");
let r = c.get("items", #{ query: #{ q: "a b", n: 2 }, headers: #{ "X-Trace": "t1" } });
api.info(`get ${r.status} ${r.body.items.len()} ${r.headers["x-peer"]}`);
r = c.post("items", #{ name: "x", tags: ["a"] });
api.info(`post ${r.status} ${r.body.id}`);
r = c.put("/items/7", #{ name: "y" });
api.info(`put ${r.status} ${r.body}`);
r = c.patch("items/7", #{ name: "z" }, #{ headers: #{ "If-Match": "e1" } });
api.info(`patch ${r.status} ${r.body.name}`);
r = c.delete("items/7");
api.info(`delete ${r.status} ${r.body == ()}`);
r = c.post("forms", (), #{ form: #{ a: 1, b: "two words" } });
api.info(`form ${r.status}`);
r = c.get("missing", #{ allow_error: true });
api.info(`allowed ${r.status} ${r.body.error}`);
let all = c.get_all("pages", #{ style: "page", size_param: "per_page", size: 2, total_pages: "pages", items: "data" });
api.info(`all ${all}`);
api.info(`${c}`);
"#,
    );
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(
        messages(&run),
        [
            "get 200 3 p1",
            "post 201 7",
            "put 200 replaced",
            "patch 200 z",
            "delete 204 true",
            "form 200",
            "allowed 404 no such thing",
            "all [0, 1, 2, 3, 4, 5]",
            "connection peer",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_fails_the_run_with_status_and_excerpt_and_mistakes_say_what_to_write() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/missing"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"error": "no such thing"})))
        .mount(&server)
        .await;
    let p = peer_project(&server);
    let cases = [
        (
            r#"api.connection("peer").get("missing");"#,
            r#"connection peer: GET /missing answered 404: {"error":"no such thing"}"#,
        ),
        // A name computed at run time: a literal one is refused when the script loads
        // (script_checks::check_finds_what_would_stop_a_script_at_its_place).
        (r#"let name = "pear"; api.connection(name);"#, r#"no connection named "pear"; did you mean "peer"?"#),
        (
            r#"api.connection("peer").get("x", #{ header: #{} });"#,
            "`header` is not a request option; did you mean `headers`?",
        ),
        (r#"api.connection("peer").get_all("x", #{ items: "data" });"#, "get_all needs a paging `style`"),
        (
            r#"api.connection("peer").post("x", #{ a: 1 }, #{ form: #{ b: 2 } });"#,
            "POST x: a request has a JSON body or a `form`, not both",
        ),
        (
            r#"api.connection("peer").get("https://elsewhere.example.com/x");"#,
            "leads to https://elsewhere.example.com, not to http://127.0.0.1:",
        ),
    ];
    for (script, expected) in cases {
        let (ran, run) = run_script(&p, script);
        assert_eq!(ran.code, 1, "{script}: {ran:?}");
        assert_eq!(run["status"], "failed");
        let error = run["error"].as_str().unwrap();
        assert!(error.contains(expected), "{script}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_makes_a_rule_run_retry_later() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/busy"))
        .respond_with(ResponseTemplate::new(503).set_body_string("maintenance"))
        .expect(1)
        .mount(&server)
        .await;
    let p = peer_project(&server);
    p.rule("busy", "name = \"busy\"\nentity = \"ticket\"\nscript = \"busy.rhai\"\n")
        .script("busy.rhai", r#"api.connection("peer").get("busy");"#);
    p.file("t.json", r#"{"Title": "x"}"#);
    let record = p.path().join("t.json");
    let ran = p.run_env(&["fire", "ticket", "--record", record.to_str().unwrap(), "--json"], &env());
    assert_eq!(ran.code, 1, "{ran:?}");
    let run: Value = serde_json::from_str(ran.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(run["status"], "retrying", "{run:#}");
    // The place in the script comes first, then the connection's words.
    let place = p.path().join("scripts/busy.rhai");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("{}:1:24: connection peer: GET /busy answered 503: maintenance", place.display())),
        "{error}"
    );
    assert!(run["next_attempt_at"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_reads_but_does_not_send_changes() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/devices/d1"))
        .respond_with(json_answer(json!({"name": "laptop-1"})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).expect(0).mount(&server).await;
    let p = peer_project(&server);
    p.rule("act", "name = \"act\"\nentity = \"ticket\"\nscript = \"act.rhai\"\n").script(
        "act.rhai",
        r#"
let c = api.connection("peer");
let device = c.get("devices/d1").body;
let r = c.post("actions", #{ device: device.name, ticket: record.Title }, #{ query: #{ dry: "no" } });
api.info(`post answered ${r.status}, dry run ${r.dry_run}`);
api.comment(record, `action sent to ${device.name}`);
"#,
    );
    let mut cmd = p.command(&["test", "act", "--record", "-"]);
    cmd.env("FLEX_HR_PASSWORD", PASSWORD).stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(br#"{"Title": "VPN broken"}"#).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(
            r#"dry run: would POST actions on connection peer with query dry=no with body {"device":"laptop-1","ticket":"VPN broken"} (not sent)"#
        ),
        "{stdout}"
    );
    assert!(stdout.contains("post answered 0, dry run true"), "{stdout}");
    assert!(stdout.contains("action sent to laptop-1"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_test_prints_status_time_and_excerpt() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/companies"))
        .and(query_param("instanceId", "ACME"))
        .and(basic_auth("svc-tripline", PASSWORD))
        .respond_with(json_answer(json!([{"id": 1, "name": "ACME AG"}])))
        .mount(&server)
        .await;
    let p = peer_project(&server);
    let ran = p.run_env(&["connection", "test", "peer"], &env());
    assert_eq!(ran.code, 0, "{ran:?}");
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert!(lines[0].starts_with("GET /companies -> 200 in ") && lines[0].ends_with(" ms"), "{ran:?}");
    assert_eq!(lines[1], r#"[{"id":1,"name":"ACME AG"}]"#);

    // The peer refuses the password: the status is printed and the exit code says so.
    let ran = p.run_env(&["connection", "test", "peer"], &[("FLEX_HR_PASSWORD", "wrong-password-2")]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stdout.starts_with("GET /companies -> 404 in "), "{ran:?}");

    let ran = p.run_env(&["connection", "test", "pere"], &env());
    assert_eq!(ran.code, 1);
    assert_eq!(ran.stderr.trim(), r#"error: no connection named "pere"; did you mean "peer"?"#);

    // Switched off: no secret needed, and the error says how to switch it on.
    p.file(
        "tripline.toml",
        &std::fs::read_to_string(p.path().join("tripline.toml"))
            .unwrap()
            .replace("retry =", "enabled = false\nretry ="),
    );
    let ran = p.run(&["connection", "test", "peer"]);
    assert_eq!(ran.code, 1);
    assert_eq!(
        ran.stderr.trim(),
        "error: connection peer is disabled (enabled = false in [connections.peer]); \
         set enabled = true once its URL and secrets are in place"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_never_appears_in_output_logs_runs_or_records() {
    use base64::Engine as _;
    let server = MockServer::start().await;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("svc-tripline:{PASSWORD}"));
    // A careless peer that echoes the credentials it received.
    let echo = format!("you sent Basic {encoded} (password {PASSWORD})");
    Mock::given(method("GET"))
        .and(path("/echo"))
        .respond_with(json_answer(json!({"echo": echo})).insert_header("x-echo", echo.as_str()))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/companies"))
        .respond_with(ResponseTemplate::new(200).set_body_string(echo.clone()))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/fail"))
        .respond_with(ResponseTemplate::new(500).set_body_string(echo.clone()))
        .mount(&server)
        .await;
    let p = peer_project(&server);
    p.rule("echo", "name = \"echo\"\nentity = \"ticket\"\nscript = \"echo.rhai\"\n")
        .script("echo.rhai", r#"api.comment(record, api.connection("peer").get("echo").body.echo);"#);
    let verbose = [("FLEX_HR_PASSWORD", PASSWORD), ("TRIPLINE_LOG", "trace")];
    let mut outputs = Vec::new();
    let (ran, run) = run_script(
        &p,
        r#"
let c = api.connection("peer");
let r = c.get("echo");
api.info(r);
print(r.headers);
api.create("ticket", #{ Title: "echo", Echo: r.body.echo, Headers: r.headers });
c.post("fail", #{});
"#,
    );
    assert_eq!(ran.code, 1, "the POST failed: {ran:?}");
    assert!(run["error"].as_str().unwrap().contains("answered 500: you sent **REDACTED**"), "{run:#}");
    outputs.push(format!("{ran:?}"));
    outputs.push(format!("{:?}", p.run_env(&["job", "run", "script"], &verbose)));
    outputs.push(format!("{:?}", p.run_env(&["connection", "test", "peer"], &verbose)));
    p.file("t.json", r#"{"Title": "x"}"#);
    let record = p.path().join("t.json");
    outputs.push(format!("{:?}", p.run_env(&["fire", "ticket", "--record", record.to_str().unwrap()], &verbose)));
    outputs.push(format!("{:?}", p.run_env(&["runs", "--json"], &verbose)));
    outputs.push(format!("{:?}", p.run_env(&["runs"], &verbose)));
    outputs.push(format!("{:?}", p.run_env(&["records", "list", "ticket", "--json"], &verbose)));
    let all = outputs.join("\n");
    assert!(all.contains("**REDACTED**"), "the echo is there, scrubbed: {all}");
    for canary in [PASSWORD, encoded.as_str()] {
        assert!(!all.contains(canary), "{canary} leaked:\n{all}");
    }
    for file in ["data/tripline.db", "data/tripline.db-wal"] {
        let bytes = std::fs::read(p.path().join(file)).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&bytes).contains(PASSWORD), "{file} holds the password");
    }
}

/// Every way of writing `text` that a JSON or URL decoder turns back into it, as the
/// careless peers below echo it.
fn encodings_of(text: &str) -> Vec<String> {
    let php = text.replace('/', "\\/");
    let unicode: String = text.chars().map(|c| format!("\\u{:04x}", c as u32)).collect();
    let mid = text.len() / 2;
    let split = format!("{}\\u{:04X}{}", &text[..mid], text.as_bytes()[mid], &text[mid + 1..]);
    let percent: String = text
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    let percent_in_json = percent.replace('%', "\\u0025");
    vec![php, unicode, split, percent, percent_in_json]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_echoes_of_credentials_are_scrubbed_from_scripts_records_and_connection_test() {
    use base64::Engine as _;
    let password = "pa/ss+Canary/42";
    let token = "tok/en+Canary/77";
    let server = MockServer::start().await;
    // Echoes the Authorization header it got in every encoding, in a JSON body (as a value
    // and as a key), in a text body and in headers.
    let echo = |text_body: bool| {
        move |r: &Request| {
            let auth = r.headers.get("authorization").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
            let credential = auth.split_once(' ').map(|(_, c)| c.to_string()).unwrap_or_default();
            let mut fields = Vec::new();
            for (i, form) in encodings_of(&auth).iter().chain(encodings_of(&credential).iter()).enumerate() {
                fields.push(format!("\"e{i}\": \"{form}\""));
                fields.push(format!("\"{form}\": [\"k{i}\"]"));
            }
            let body = format!("{{{}}}", fields.join(", "));
            let php = auth.replace('/', "\\/");
            let template = ResponseTemplate::new(200)
                .insert_header("x-echo-json", php.as_str())
                .insert_header("x-echo-url", encodings_of(&auth)[3].as_str());
            if text_body {
                template.set_body_raw(body, "text/plain")
            } else {
                template.set_body_raw(body, "application/json")
            }
        }
    };
    Mock::given(path("/json")).respond_with(echo(false)).mount(&server).await;
    Mock::given(path("/text")).respond_with(echo(true)).mount(&server).await;
    let p = Project::new(&format!(
        r#"
[connections.basic_peer]
base_url = "{uri}/"
auth = {{ type = "basic", username = "svc-tripline", password = "${{PEER_PASSWORD}}" }}
test = {{ path = "json" }}

[connections.bearer_peer]
base_url = "{uri}/"
auth = {{ type = "bearer", token = "${{PEER_TOKEN}}" }}
test = {{ path = "text" }}

[jobs.script]
schedule = "0 0 * * *"
script = "script.rhai"
"#,
        uri = server.uri()
    ));
    p.set_env("PEER_PASSWORD", password).set_env("PEER_TOKEN", token);
    p.script(
        "script.rhai",
        r#"
for name in ["basic_peer", "bearer_peer"] {
    let c = api.connection(name);
    for at in ["json", "text"] {
        let r = c.get(at);
        let t = api.create("ticket", #{ Title: `${name} ${at}`, Echo: r.body, Headers: r.headers });
        api.comment(t, `echoed: ${r.body} ${r.headers}`);
        api.info(`${name} ${at}: ${r}`);
    }
}
"#,
    );
    let mut outputs = Vec::new();
    let ran = p.run(&["job", "run", "script", "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    outputs.push(ran.stdout.clone());
    outputs.push(p.run(&["records", "list", "ticket", "--json"]).stdout);
    outputs.push(p.run(&["runs", "--json"]).stdout);
    for name in ["basic_peer", "bearer_peer"] {
        let ran = p.run(&["connection", "test", name]);
        assert_eq!(ran.code, 0, "{ran:?}");
        outputs.push(format!("{ran:?}"));
    }
    let all = outputs.join("\n");
    assert!(all.contains("**REDACTED**"), "the echoes are there, scrubbed: {all}");
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("svc-tripline:{password}"));
    for secret in [password, token, basic.as_str()] {
        let mut forms = vec![secret.to_string(), secret.replace('/', "\\/"), secret.replace('/', "\\\\/")];
        forms.extend(encodings_of(secret));
        for form in forms {
            assert!(!all.contains(&form), "{form} (of {secret}) leaked:\n{all}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// `tripline job run`

#[test]
fn job_run_names_an_unknown_job_and_runs_a_disabled_one_with_a_note() {
    let p = Project::new(
        r#"
[jobs.nightly_report]
schedule = "0 2 * * *"
script = "report.rhai"
enabled = false
"#,
    );
    p.script("report.rhai", r#"api.info(`report by ${event}`);"#);
    let ran = p.run(&["job", "run", "nightly_reprot"]);
    assert_eq!(ran.code, 1);
    assert_eq!(ran.stderr.trim(), r#"error: no job named "nightly_reprot"; did you mean "nightly_report"?"#);

    let ran = p.run(&["job", "run", "nightly_report"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stderr.contains("note: job nightly_report is disabled (enabled = false): it runs once now"), "{ran:?}");
    assert!(ran.stdout.contains("report by manual"), "{ran:?}");
}

// ---------------------------------------------------------------------------------------
// The shipped configuration and the examples

/// The repository's own files.
fn repo(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of the shipped tripline.toml, rules, scripts and examples.
fn shipped() -> Project {
    let p = Project::new(&std::fs::read_to_string(repo("tripline.toml")).unwrap());
    for dir in ["rules", "scripts", "examples/rules-and-scripts"] {
        copy_tree(&repo(dir), &p.path().join(dir));
    }
    p
}

/// A command of `p` without the Flex HR password in its environment, whatever the test
/// process has.
fn without_password(p: &Project, args: &[&str]) -> Ran {
    let out = p.command(args).env_remove("FLEX_HR_PASSWORD").stdin(std::process::Stdio::null()).output().unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn the_shipped_configuration_checks_and_starts_without_the_flex_hr_password() {
    let p = shipped();
    let ran = without_password(&p, &["check"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("1 connections, 1 jobs"), "{ran:?}");
    assert!(ran.stdout.contains("example rules checked"), "{ran:?}");

    // Every command builds the runtime: it must build too.
    let ran = without_password(&p, &["runs"]);
    assert_eq!((ran.code, ran.stdout.trim()), (0, "no runs"), "{ran:?}");

    // Running the switched-off job by hand says what to do.
    let ran = without_password(&p, &["job", "run", "flex_hr_sync"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("note: job flex_hr_sync is disabled"), "{ran:?}");
    assert!(
        ran.stdout.contains("connection flex_hr is disabled (enabled = false in [connections.flex_hr])"),
        "{ran:?}"
    );

    // The daemon starts, and stops on SIGTERM.
    let mut child = p
        .command(&["run"])
        .env_remove("FLEX_HR_PASSWORD")
        .env("TRIPLINE_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in std::io::BufRead::lines(stderr) {
        let line = line.unwrap();
        let started = line.contains("tripline daemon started");
        seen.push(line);
        if started {
            break;
        }
    }
    assert!(seen.last().is_some_and(|l| l.contains("daemon started")), "the daemon did not start: {seen:#?}");
    assert!(child.try_wait().unwrap().is_none(), "{seen:#?}");
    child.kill().unwrap();
    child.wait().unwrap();

    // The examples' own configuration checks too, secrets unset.
    let example = p.path().join("examples/rules-and-scripts/tripline.example.toml");
    let out = std::process::Command::new(crate::common::project::binary())
        .args(["check", "--config"])
        .arg(&example)
        .env_remove("HALO_CLIENT_SECRET")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("4 connections, 3 jobs"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn going_live_is_the_documented_edit() {
    let hr = FlexHr::start().await;
    hr.serve(&hr_users()[..2], 100).await;
    let p = shipped();
    let config = std::fs::read_to_string(p.path().join("tripline.toml")).unwrap();
    let live = config
        .replace("https://flexhr.example.com/api/", &format!("{}/api/", hr.server.uri()))
        .replace("enabled = false", "enabled = true");
    assert_eq!(live.lines().filter(|l| *l == "enabled = true").count(), 2, "the connection and the job");
    p.file("tripline.toml", &live);
    p.set_env("FLEX_HR_PASSWORD", PASSWORD);

    assert_eq!(p.run(&["check"]).code, 0);
    let (ran, runs) = run_job(&p);
    assert_eq!(ran.code, 0, "{ran:?}");
    let log = messages(&runs[0]);
    assert!(
        summary(&log).contains("fetched 2, skipped 0 without EmployeeId, 0 duplicates, unchanged 0, new 2"),
        "{log:#?}"
    );
    // The shipped rule ran on both tickets, against the directory as shipped: in dry run, it
    // closes them with the changes it would make (the end-to-end test goes live with AD).
    assert_eq!(runs.len(), 3, "{runs:#?}");
    let tickets = p.records("ticket");
    assert_eq!(tickets.len(), 2);
    for t in &tickets {
        assert_eq!(t["status"], "closed");
        assert!(comment_texts(t)[0].contains("dry run"), "{t:#}");
    }
}

const EXAMPLES: &str = "examples/rules-and-scripts";

/// Copies example files (rules and scripts, by their path under the examples folder).
fn with_examples(p: &Project, files: &[&str]) {
    for f in files {
        p.file(f, &std::fs::read_to_string(repo(&format!("{EXAMPLES}/{f}"))).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ninjaone_example_syncs_by_its_key_in_each_mode() {
    let server = MockServer::start().await;
    let mut users = json!([
        {"id": 1, "uid": "u-1", "email": "Ann.Lee@Example.com", "firstName": "Ann", "lastName": "Lee", "enabled": true},
        {"id": 2, "uid": "u-2", "email": "", "firstName": "No", "lastName": "Mail"},
        {"id": 3, "uid": "u-3", "email": "cy@example.com", "firstName": "Cy", "lastName": "Berg", "phone": " 123 "},
        {"id": 4, "uid": "u-4", "email": "CY@example.com", "firstName": "Cy", "lastName": "Again"},
    ]);
    let serve = |users: Value| {
        let server = &server;
        async move {
            server.reset().await;
            Mock::given(method("GET"))
                .and(path("/v2/users"))
                .and(header("authorization", "Bearer ninja-token-1"))
                .respond_with(json_answer(users))
                .mount(server)
                .await;
        }
    };
    serve(users.clone()).await;
    let mut config = format!(
        "[connections.ninjaone]\nbase_url = \"{}/\"\nauth = {{ type = \"bearer\", token = \"ninja-token-1\" }}\n",
        server.uri()
    );
    for mode in ["create_and_update", "create_only", "update_only"] {
        config.push_str(&format!(
            "\n[jobs.ninja_{mode}]\nschedule = \"30 2 * * *\"\nscript = \"ninjaone_users_job.rhai\"\n\
             params = {{ sync_key = \"email\", mode = \"{mode}\" }}\n"
        ));
    }
    let p = Project::new(&config);
    with_examples(&p, &["scripts/ninjaone_users_job.rhai"]);
    let run = |mode: &str| {
        let ran = p.run(&["job", "run", &format!("ninja_{mode}"), "--json"]);
        assert_eq!(ran.code, 0, "{ran:?}");
        let run: Value = serde_json::from_str(ran.stdout.lines().next().unwrap()).unwrap();
        messages(&run).last().unwrap().clone()
    };

    // Update only: nobody is known yet, nobody is added.
    let line = run("update_only");
    assert!(line.ends_with("created 0, updated 0, unchanged 0, not created 2, not updated 0"), "{line}");
    assert_eq!(p.run(&["records", "list", "ninja_user"]).code, 1, "no records at all");

    // Create only: the two users with a key; the one without is skipped, the same key twice
    // is reported.
    let line = run("create_only");
    assert!(line.contains("fetched 4, skipped 1 without a sync key, 1 duplicates, created 2, updated 0"), "{line}");
    let records = p.records("ninja_user");
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["fields"]["Email"], "ann.lee@example.com");
    assert_eq!(records[1]["fields"]["Phone"], "123");

    // A change: create only leaves it, create & update writes it, once.
    users[0]["lastName"] = json!("Lee-Smith");
    serve(users.clone()).await;
    let line = run("create_only");
    assert!(line.ends_with("created 0, updated 0, unchanged 1, not created 0, not updated 1"), "{line}");
    let line = run("update_only");
    assert!(line.ends_with("created 0, updated 1, unchanged 1, not created 0, not updated 0"), "{line}");
    assert_eq!(p.records("ninja_user")[0]["fields"]["LastName"], "Lee-Smith");
    let before = p.records("ninja_user");
    let line = run("create_and_update");
    assert!(line.ends_with("created 0, updated 0, unchanged 2, not created 0, not updated 0"), "{line}");
    assert_eq!(p.records("ninja_user"), before, "nothing written when nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nexthink_example_triggers_a_remote_action_and_polls_its_status() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/default/v1/token"))
        .and(wiremock::matchers::body_string_contains("grant_type=client_credentials"))
        .respond_with(json_answer(json!({"access_token": "nx-token", "token_type": "Bearer", "expires_in": 900})))
        .expect(1..)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/act/execute"))
        .and(header("authorization", "Bearer nx-token"))
        .and(wiremock::matchers::body_partial_json(json!({
            "remoteActionId": "#restart_teams",
            "devices": ["dev-1"],
            "expiresInMinutes": 60,
            "triggerInfo": {"externalSource": "tripline", "reason": "Teams hangs"},
        })))
        .respond_with(json_answer(json!({"requestId": "req-1", "expiresInMinutes": 60})))
        .expect(1)
        .mount(&server)
        .await;
    let status = |status: &str| {
        json_answer(json!({
            "queryId": "#remote_action_status",
            "headers": ["device.name", "remote_action.execution.status", "remote_action.execution.status_details",
                        "remote_action.execution.outputs"],
            "data": [["laptop-1", status, "", "restarted 1 process"]],
        }))
    };
    let nql = || {
        Mock::given(method("POST"))
            .and(path("/api/v1/nql/execute"))
            .and(body_json(json!({"queryId": "#remote_action_status", "parameters": {"request_id": "req-1"}})))
    };
    nql().respond_with(status("in_progress")).up_to_n_times(1).with_priority(1).mount(&server).await;
    nql().respond_with(status("success")).mount(&server).await;

    let p = Project::new(&format!(
        r#"
[connections.nexthink]
base_url = "{uri}/"
auth = {{ type = "oauth2", grant = "client_credentials", token_url = "{uri}/oauth2/default/v1/token", client_id = "tripline", client_secret = "${{NEXTHINK_CLIENT_SECRET}}" }}
rate_limit = {{ requests = 5, per_seconds = 1 }}

[jobs.nexthink_remote_action_status]
schedule = "0 * * * * *"
script = "nexthink_remote_action_status.rhai"
"#,
        uri = server.uri()
    ));
    p.set_env("NEXTHINK_CLIENT_SECRET", "nx-secret-value");
    with_examples(
        &p,
        &[
            "rules/nexthink_remote_action.toml",
            "scripts/nexthink_trigger_remote_action.rhai",
            "scripts/nexthink_remote_action_status.rhai",
        ],
    );
    p.file("t.json", r##"{"Subject": "Teams hangs", "RemoteActionId": "#restart_teams", "DeviceUid": "dev-1"}"##);
    let ran = p.run(&["fire", "ticket", "--record", p.path().join("t.json").to_str().unwrap()]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let ticket = &p.records("ticket")[0];
    assert_eq!(ticket["fields"]["RemoteActionRequestId"], "req-1");
    assert_eq!(ticket["fields"]["RemoteActionStatus"], "submitted");
    assert!(ticket["comments"][0]["text"].as_str().unwrap().contains("sent to device dev-1 (request req-1)"));

    // Still running: nothing written.
    let ran = p.run(&["job", "run", "nexthink_remote_action_status", "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("1 waiting, 0 succeeded, 0 failed, 1 still running"), "{ran:?}");
    assert_eq!(&p.records("ticket")[0], ticket);

    // Done: closed with the outputs.
    let ran = p.run(&["job", "run", "nexthink_remote_action_status", "--json"]);
    assert!(ran.stdout.contains("1 waiting, 1 succeeded"), "{ran:?}");
    let ticket = &p.records("ticket")[0];
    assert_eq!(ticket["status"], "closed");
    assert_eq!(ticket["fields"]["RemoteActionStatus"], "success");
    assert_eq!(ticket["comments"][1]["text"], "Remote action #restart_teams succeeded on dev-1: restarted 1 process");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_haloitsm_example_reads_every_page_and_opens_tickets() {
    let server = MockServer::start().await;
    let users = [
        json!({"id": 26, "firstname": "Baskar", "surname": "Balaji", "emailaddress": "Baskar@Example.com",
               "site_name": "Main", "client_name": "Demo", "inactive": false, "use": "user"}),
        json!({"id": 3, "firstname": "Agent", "surname": "Smith", "use": "agent"}),
        json!({"id": 27, "firstname": "Lea", "surname": "Ver", "inactive": true, "use": "user", "login": "lver"}),
    ];
    for (page, chunk) in users.chunks(2).enumerate() {
        Mock::given(method("GET"))
            .and(path("/api/Users"))
            .and(query_param("pageinate", "true"))
            .and(query_param("page_size", "2"))
            .and(query_param("page_no", (page + 1).to_string()))
            .respond_with(json_answer(json!({"record_count": 3, "users": chunk})))
            .expect(1..)
            .mount(&server)
            .await;
    }
    let p = Project::new(&format!(
        "[connections.halo_itsm]\nbase_url = \"{}/\"\nauth = {{ type = \"bearer\", token = \"halo-token\" }}\n\n\
         [jobs.halo_users_sync]\nschedule = \"0 */15 * * * *\"\nscript = \"halo_users_job.rhai\"\nparams = {{ page_size = 2 }}\n",
        server.uri()
    ));
    with_examples(&p, &["scripts/halo_users_job.rhai"]);
    let ran = p.run(&["job", "run", "halo_users_sync", "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("fetched 3, skipped 1, unchanged 0, tickets opened 2, tickets commented 0"), "{ran:?}");
    let tickets = p.records("ticket");
    let fields: Vec<(&Value, &Value, &Value, &Value)> = tickets
        .iter()
        .map(|t| (&t["fields"]["Source"], &t["fields"]["EmployeeId"], &t["fields"]["Email"], &t["fields"]["Active"]))
        .collect();
    assert_eq!(
        fields,
        [
            (&json!("HaloITSM"), &json!("26"), &json!("baskar@example.com"), &json!(true)),
            (&json!("HaloITSM"), &json!("27"), &Value::Null, &json!(false)),
        ]
    );
    assert_eq!(tickets[1]["fields"]["Username"], "lver");
    assert!(!tickets[1]["fields"].as_object().unwrap().contains_key("Email"), "what Halo does not say is left out");
    let ran = p.run(&["job", "run", "halo_users_sync", "--json"]);
    assert!(ran.stdout.contains("unchanged 2, tickets opened 0"), "{ran:?}");
}

// ---------------------------------------------------------------------------------------
// End to end: schedule -> Flex HR -> staging -> tickets -> rule -> Active Directory

fn ticket_of<'a>(tickets: &'a [Value], id: &str) -> Vec<&'a Value> {
    by_employee(tickets, id)
}

fn comment_texts(record: &Value) -> Vec<String> {
    record["comments"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_flex_hr_to_active_directory() {
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "flexjob-e2e").await;
    let tag = unique();
    let id = |n: u32| format!("E{tag}{n}");
    let boss = json!({"EmployeeId": id(1), "FirstName": "Bea", "LastName": format!("Boss{tag}"),
                      "Department": "Sales", "Active": true, "ModifiedAt": hours_ago(6)});
    let ann = json!({"EmployeeId": id(2), "FirstName": "Ann", "LastName": format!("New{tag}"),
                     "Email": "Ann.New@Example.TEST", "Department": "Sales", "JobTitle": "Account Manager",
                     "ManagerEmployeeId": id(1), "Active": true, "ModifiedAt": hours_ago(5)});
    let nobody = json!({"FirstName": "No", "LastName": format!("Key{tag}"), "ModifiedAt": hours_ago(4)});
    let mut lea = json!({"EmployeeId": id(3), "FirstName": "Lea", "LastName": format!("Ver{tag}"),
                         "Department": "Finance", "Active": true, "ModifiedAt": hours_ago(3)});
    let mut max = json!({"EmployeeId": id(4), "FirstName": "Max", "LastName": format!("Alone{tag}"),
                         "JobTitle": "Analyst", "ManagerEmployeeId": format!("X{tag}"), "Active": true,
                         "ModifiedAt": hours_ago(2)});
    let hr = FlexHr::start().await;
    hr.serve(&[boss.clone(), ann.clone(), nobody.clone(), lea.clone(), max.clone()], 2).await;

    // The shipped configuration, rules and scripts, with the documented edits for going live:
    // the Flex HR URL, the connection and the job switched on, the directory's address and
    // OU, dry_run off; the secrets in the environment.
    let p = shipped();
    let edits = [
        ("https://flexhr.example.com/api/".to_string(), format!("{}/api/", hr.server.uri())),
        ("enabled = false".into(), "enabled = true".into()),
        ("url = \"ldaps://dc1.example.com\"".into(), "url = \"ldaps://127.0.0.1\"".into()),
        ("bind_dn = \"svc-tripline@example.com\"".into(), format!("bind_dn = \"{AD_ADMIN}\"")),
        ("base_dn = \"DC=example,DC=com\"".into(), format!("base_dn = \"{AD_BASE}\"")),
        ("users_ou = \"OU=Staff,DC=example,DC=com\"".into(), format!("users_ou = '{ou}'")),
        ("# ca_file = \"certs/ad-ca.pem\"".into(), format!("ca_file = '{}' #", samba().ca_file().display())),
        ("dry_run = true".into(), "dry_run = false".into()),
        // Not part of going live: small pages, so that this test reads several.
        ("page_size = 100".into(), "page_size = 2".into()),
    ];
    let mut config = std::fs::read_to_string(p.path().join("tripline.toml")).unwrap();
    for (from, to) in &edits {
        assert!(config.contains(from.as_str()), "the shipped tripline.toml has no {from:?}");
        config = config.replace(from.as_str(), to);
    }
    p.file("tripline.toml", &config);
    p.set_env("FLEX_HR_PASSWORD", PASSWORD).set_env("AD_BIND_PASSWORD", AD_ADMIN_PW);
    let ran = p.run(&["check"]);
    assert_eq!(ran.code, 0, "{ran:?}");

    // Run 1: four people, four tickets; the rule provisions each in AD.
    let (ran, runs) = run_job(&p);
    assert_eq!(ran.code, 0, "{ran:?}");
    let log: Vec<String> = messages(&runs[0]);
    assert!(
        summary(&log).ends_with(
            "fetched 5, skipped 1 without EmployeeId, 0 duplicates, unchanged 0, new 4, changed 0 (0 leavers), \
             tickets opened 4, tickets commented 0"
        ),
        "{log:#?}"
    );
    assert_eq!(runs.len(), 5, "the job and one rule run per ticket: {runs:#?}");
    for run in &runs[1..] {
        assert_eq!((&run["rule"], &run["status"]), (&json!("Process FlexHR user on AD"), &json!("ok")), "{run:#}");
    }
    let staged = p.records("flexhr_log");
    assert_eq!(staged.len(), 4);
    assert!(staged.iter().all(|r| r["fields"]["IsNewUser"] == 1));

    let tickets = p.records("ticket");
    assert_eq!(tickets.len(), 4);
    let boss_dn = format!("CN=Bea Boss{tag},{ou}");
    let ann_dn = format!("CN=Ann New{tag},{ou}");
    let lea_dn = format!("CN=Lea Ver{tag},{ou}");
    let max_dn = format!("CN=Max Alone{tag},{ou}");

    // A new user: created (after the manager, who came first), the manager set, closed with
    // a comment naming the base DN and the username.
    let t = ticket_of(&tickets, &id(2))[0];
    assert_eq!(t["status"], "closed");
    let login = read_attr(&mut admin, &ann_dn, "sAMAccountName").await.pop().expect("Ann exists in AD");
    let c = comment_texts(t);
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(
        c[0].starts_with(&format!("synchronized with Flex HR: created user {login} ({ann_dn}) in {AD_BASE}")),
        "{c:?}"
    );
    assert!(c[0].contains(&format!("; manager: {boss_dn}")), "{c:?}");
    assert_eq!(read_attr(&mut admin, &ann_dn, "manager").await, vec![boss_dn.clone()]);
    assert_eq!(read_attr(&mut admin, &ann_dn, "mail").await, vec!["ann.new@example.test"]);
    assert_eq!(read_attr(&mut admin, &ann_dn, "employeeID").await, vec![id(2)]);
    assert_eq!(ticket_of(&tickets, &id(1))[0]["status"], "closed");
    assert_eq!(ticket_of(&tickets, &id(3))[0]["status"], "closed");

    // The manager is unknown: the account exists, the ticket stays open and says why.
    let t = ticket_of(&tickets, &id(4))[0];
    assert_eq!(t["status"], "open");
    let c = comment_texts(t);
    assert!(
        c[0].contains(&format!(
            "the manager (employee ID X{tag}) was not found in the directory: the manager must be entered manually"
        )),
        "{c:?}"
    );
    assert!(read_attr(&mut admin, &max_dn, "manager").await.is_empty());

    // The person without EmployeeId is nowhere.
    assert!(dns_with(&mut admin, AD_BASE, "sn", &format!("Key{tag}")).await.is_empty());
    assert!(tickets.iter().all(|t| t["fields"]["LastName"] != json!(format!("Key{tag}"))));

    // The helpdesk gives Lea a password and enables her account.
    let mut tls = ad_admin_tls().await;
    let pw: Vec<u8> = format!("\"Onboard!Pw-{tag}\"").encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mods = vec![
        ldap3::Mod::Replace(b"unicodePwd".to_vec(), std::collections::HashSet::from([pw])),
        ldap3::Mod::Replace(b"userAccountControl".to_vec(), std::collections::HashSet::from([b"512".to_vec()])),
    ];
    tls.modify(&lea_dn, mods).await.unwrap().success().unwrap();

    // Run 2: Lea leaves (her ticket was closed: a new one), Max changes title while his ticket
    // is open (a comment, no second ticket).
    lea["Active"] = json!(false);
    lea["ModifiedAt"] = json!(hours_ago(1));
    max["JobTitle"] = json!("Senior Analyst");
    hr.serve(&[boss.clone(), ann.clone(), nobody.clone(), lea.clone(), max.clone()], 2).await;
    let (ran, runs) = run_job(&p);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(
        summary(&messages(&runs[0]))
            .ends_with("unchanged 2, new 0, changed 2 (1 leavers), tickets opened 1, tickets commented 1"),
        "{runs:#?}"
    );
    assert_eq!(runs.len(), 2, "one new ticket, one rule run: {runs:#?}");
    let tickets = p.records("ticket");
    assert_eq!(tickets.len(), 5);
    let lea_tickets = ticket_of(&tickets, &id(3));
    assert_eq!(lea_tickets.len(), 2);
    let t = lea_tickets[1];
    assert_eq!((&t["fields"]["IsNewUser"], &t["status"]), (&json!(0), &json!("closed")));
    assert!(comment_texts(t)[0].contains("; account disabled"), "{:?}", comment_texts(t));
    assert_eq!(read_attr(&mut admin, &lea_dn, "userAccountControl").await, vec!["514"]);
    let max_tickets = ticket_of(&tickets, &id(4));
    assert_eq!(max_tickets.len(), 1, "no second ticket while one is open");
    let c = comment_texts(max_tickets[0]);
    assert_eq!(c.len(), 2, "{c:?}");
    assert_eq!(c[1], "User information changed in Flex HR (JobTitle); the ticket remains open.");
    assert_eq!(max_tickets[0]["fields"]["JobTitle"], "Senior Analyst");
    assert_eq!(max_tickets[0]["status"], "open");

    // Run 3: nothing changed, nothing happens.
    let before = (p.records("flexhr_log"), p.records("ticket"));
    let (ran, runs) = run_job(&p);
    assert_eq!((ran.code, runs.len()), (0, 1), "{ran:?}");
    assert_eq!((p.records("flexhr_log"), p.records("ticket")), before);
    assert_eq!(dns_with(&mut admin, &ou, "objectClass", "user").await.len(), 4, "four accounts, no more");

    for out in [&ran.stdout, &ran.stderr] {
        assert!(!out.contains(PASSWORD) && !out.contains(AD_ADMIN_PW));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_lists_the_companies_and_stages_only_those_asked_for() {
    let hr = FlexHr::start().await;
    let person = |id: &str, first: &str, company: &str| {
        json!({"EmployeeId": id, "FirstName": first, "LastName": "Co", "Company": company, "Active": true,
               "ModifiedAt": hours_ago(1)})
    };
    let users = vec![
        person("C1", "Ann", "ACME AG"),
        person("C2", "Bob", "Globex GmbH"),
        person("C3", "Cid", " ACME  AG "),
        json!({"EmployeeId": "C4", "FirstName": "Dee", "LastName": "Co"}),
    ];
    hr.serve(&users, 2).await;
    let p = flex_project(&hr.server, r#", companies = ["ACME AG", "Initech"]"#);

    // `connection test` shows the list (the shipped test request).
    let ran = p.run_env(&["connection", "test", "flex_hr"], &env());
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.starts_with("GET /api/companies -> 200 in "), "{ran:?}");
    assert!(ran.stdout.contains(r#"[{"id":1,"name":"ACME AG"},{"id":2,"name":"Globex GmbH"}]"#), "{ran:?}");

    let log = job_ok(&p);
    assert_eq!(log[0], "Flex HR instance ACME has 2 companies: ACME AG, Globex GmbH");
    assert!(
        log.contains(&r#"params.companies names "Initech", which Flex HR does not list for instance ACME"#.to_string()),
        "{log:#?}"
    );
    assert!(
        summary(&log).ends_with("new 2, changed 0 (0 leavers), tickets opened 2, tickets commented 0, 2 of other companies left out (params.companies)"),
        "{log:#?}"
    );
    // Ann and Cid (whose company reads the same once sanitized); not Bob, nor Dee without one.
    let mut staged: Vec<String> =
        p.records("flexhr_log").iter().map(|r| r["fields"]["EmployeeId"].as_str().unwrap().to_string()).collect();
    staged.sort();
    assert_eq!(staged, ["C1", "C3"]);
    assert_eq!(p.records("ticket").len(), 2);

    // Not a list of names: the run fails saying what is expected, nothing staged.
    for bad in [r#", companies = "ACME AG""#, ", companies = []", ", companies = [1]"] {
        let p = flex_project(&hr.server, bad);
        let (ran, runs) = run_job(&p);
        assert_eq!(ran.code, 1, "{ran:?}");
        assert!(runs[0]["error"].as_str().unwrap().contains("params.companies must"), "{:#}", runs[0]);
        let listed = p.run(&["records", "list", "flexhr_log", "--json"]);
        assert!(listed.stderr.contains("the store has no records yet"), "nothing staged: {listed:?}");
    }
    // Without the filter everybody is staged and the summary says nothing of companies.
    let p = flex_project(&hr.server, "");
    let log = job_ok(&p);
    assert!(summary(&log).ends_with("tickets commented 0"), "{log:#?}");
    assert_eq!(p.records("flexhr_log").len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_microsoft_365_leaver_example_disables_unlicenses_and_revokes() {
    let graph = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/tenant-1/oauth2/v2.0/token"))
        .and(wiremock::matchers::body_string_contains("grant_type=client_credentials"))
        .and(wiremock::matchers::body_string_contains("scope=https%3A%2F%2Fgraph.microsoft.com%2F.default"))
        .respond_with(json_answer(json!({"access_token": "graph-token", "token_type": "Bearer", "expires_in": 3600})))
        .mount(&graph)
        .await;
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "m365").await;
    let tag = unique();
    let (sam, emp) = (format!("lv{tag}"), format!("LV{tag}"));
    let upn = format!("{sam}@example.test");
    let dn = format!("CN={sam},{ou}");
    // Enabled without a password (NORMAL_ACCOUNT | PASSWD_NOTREQD = 544): AD refuses an
    // enabled account that needs one and has none.
    let attrs = vec![
        ("objectClass", std::collections::HashSet::from(["user"])),
        ("sAMAccountName", std::collections::HashSet::from([sam.as_str()])),
        ("userPrincipalName", std::collections::HashSet::from([upn.as_str()])),
        ("employeeID", std::collections::HashSet::from([emp.as_str()])),
        ("userAccountControl", std::collections::HashSet::from(["544"])),
    ];
    admin.add(&dn, attrs).await.unwrap().success().unwrap();
    let auth = || header("authorization", "Bearer graph-token");
    Mock::given(method("GET"))
        .and(path(format!("/v1.0/users/{upn}")))
        .and(query_param("$select", "id,userPrincipalName"))
        .and(auth())
        .respond_with(json_answer(json!({"id": "0f9e-id", "userPrincipalName": upn})))
        .mount(&graph)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/v1.0/users/{upn}/licenseDetails")))
        .and(auth())
        .respond_with(json_answer(json!({"value": [{"skuId": "sku-e3", "skuPartNumber": "ENTERPRISEPACK"},
                                                  {"skuId": "sku-teams"}]})))
        .mount(&graph)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1.0/users/0f9e-id/assignLicense"))
        .and(auth())
        .and(body_json(json!({"addLicenses": [], "removeLicenses": ["sku-e3", "sku-teams"]})))
        .respond_with(json_answer(json!({"id": "0f9e-id"})))
        .expect(1)
        .mount(&graph)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1.0/users/0f9e-id/revokeSignInSessions"))
        .and(auth())
        .respond_with(json_answer(json!({"value": true})))
        .expect(1)
        .mount(&graph)
        .await;

    let example = std::fs::read_to_string(repo(&format!("{EXAMPLES}/tripline.example.toml"))).unwrap();
    let section = &example[example.find("[connections.ms_graph]").unwrap()..];
    let section = section
        .replace("https://graph.microsoft.com/v1.0/", &format!("{}/v1.0/", graph.uri()))
        .replace("https://login.microsoftonline.com/YOUR-TENANT-ID/", &format!("{}/tenant-1/", graph.uri()))
        .replace("enabled = false", "enabled = true");
    let p = Project::new(&format!(
        "[directories.ActiveDirectory]\nkind = \"active_directory\"\nurl = \"ldaps://127.0.0.1\"\nbind_dn = \"{AD_ADMIN}\"\n\
         bind_password = \"${{AD_BIND_PASSWORD}}\"\nbase_dn = \"{AD_BASE}\"\nusers_ou = '{ou}'\nca_file = '{}'\n\n{section}",
        samba().ca_file().display()
    ));
    p.set_env("GRAPH_CLIENT_SECRET", "graph-secret-5521").set_env("AD_BIND_PASSWORD", AD_ADMIN_PW);
    with_examples(&p, &["rules/m365_leaver.toml", "scripts/m365_leaver.rhai"]);
    let ticket = json!({"Source": "FlexHR", "EmployeeId": emp, "FirstName": "Lee", "LastName": "Ver", "Active": false});

    // A dry run reads nothing from the directory (so it finds no account) and changes nothing.
    p.file("t.json", &ticket.to_string());
    let file = p.path().join("t.json");
    let ran = p.run(&["test", "Microsoft 365 leaver", "--record", file.to_str().unwrap()]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("no AD account has this employee ID; nothing was changed"), "{}", ran.stdout);
    assert_eq!(read_attr(&mut admin, &dn, "userAccountControl").await, ["544"]);

    let (ran, runs) = p.fire("ticket", &ticket.to_string());
    assert_eq!(runs.len(), 1, "{ran:?}");
    assert_eq!(runs[0]["status"], "ok", "{:#}", runs[0]);
    let uac: u32 = read_attr(&mut admin, &dn, "userAccountControl").await[0].parse().unwrap();
    assert_eq!(uac & 2, 2, "the AD account is disabled: {uac}");
    let t = &p.records("ticket")[0];
    assert_eq!(t["status"], "closed");
    let last = t["comments"].as_array().unwrap().last().unwrap()["text"].as_str().unwrap().to_string();
    assert_eq!(
        last.to_lowercase(),
        format!("leaver {upn}: ad account {dn} disabled; 2 microsoft 365 license(s) removed; sign-in sessions revoked")
            .to_lowercase()
    );
    let out = format!("{ran:?}");
    assert!(!out.contains("graph-secret-5521") && !out.contains("graph-token"), "{out}");
}

/// The job's state and how many records, runs and audit entries the project's store holds.
fn store_snapshot(p: &Project) -> (Option<Value>, usize, usize, usize) {
    use tripline::store::Store;
    let store = tripline::store::sqlite::SqliteStore::open_dir(&p.path().join("data")).unwrap();
    let records = store
        .entities()
        .unwrap()
        .iter()
        .map(|e| store.find_records(e, &Default::default(), 10_000).unwrap().len())
        .sum();
    let runs = store.runs(&Default::default()).unwrap().len();
    let audit = store.audit(&Default::default()).unwrap().len();
    (store.kv_get("job:flex_hr_sync", "last_modified_at").unwrap(), records, runs, audit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_dry_run_shows_its_tickets_and_what_the_rule_would_do_to_each_and_writes_nothing() {
    let hr = FlexHr::start().await;
    let p = flex_project(&hr.server, "");
    let config = std::fs::read_to_string(p.path().join("tripline.toml")).unwrap();
    p.file(
        "tripline.toml",
        &format!(
            "{config}\n[directories.ActiveDirectory]\nkind = \"active_directory\"\nurl = \"ldaps://dc1.example.test\"\n\
             base_dn = \"DC=example,DC=test\"\nusers_ou = \"OU=Staff,DC=example,DC=test\"\ndry_run = true\n"
        ),
    )
    .file("rules/process_flexhr_user.toml", include_str!("../../rules/process_flexhr_user.toml"))
    .file("scripts/process_flexhr_user.rhai", include_str!("../../scripts/process_flexhr_user.rhai"));
    let users = vec![
        json!({"EmployeeId": "E2001", "FirstName": "Ann", "LastName": "Lee", "Department": "Sales",
               "Active": true, "ModifiedAt": hours_ago(5)}),
        json!({"EmployeeId": "E2002", "FirstName": "Bob", "LastName": "Stone", "Department": "IT",
               "Active": true, "ModifiedAt": hours_ago(4)}),
    ];
    hr.serve(&users, 2).await;

    let ran = p.run_env(&["job", "run", "flex_hr_sync", "--dry-run", "--json"], &env());
    assert_eq!(ran.code, 0, "{ran:?}");
    let report = ran.json();
    assert_eq!(report["outcome"], "ok", "{report:#}");
    let lines: Vec<&str> = report["write_lines"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(lines.iter().filter(|l| l.starts_with("create ticket ")).count(), 2, "{lines:#?}");
    assert!(lines.iter().any(|l| l.starts_with("state job:flex_hr_sync last_modified_at")), "{lines:#?}");
    let triggered = report["triggered"].as_array().unwrap();
    assert_eq!(triggered.len(), 2, "the two tickets trigger the rule: {report:#}");
    for (t, name) in triggered.iter().zip(["Ann Lee", "Bob Stone"]) {
        assert_eq!((t["entity"].as_str(), t["event"].as_str()), (Some("ticket"), Some("created")));
        let rule = &t["rules"][0];
        assert_eq!(rule["rule"], "Process FlexHR user on AD");
        assert_eq!(rule["outcome"], "ok", "{rule:#}");
        let dn = format!("CN={name},OU=Staff,DC=example,DC=test");
        assert_eq!(rule["directory_changes"][0]["dn"], dn.as_str(), "{rule:#}");
        assert_eq!(rule["directory_changes"][0]["operation"], "create_user");
        let close = rule["write_lines"][0].as_str().unwrap();
        assert!(close.starts_with("close this record with comment: dry run: nothing was changed"), "{close}");
        assert!(close.contains(&format!("would create {dn}")), "{close}");
    }
    // GETs were sent; nothing was stored: no record, no run, no audit entry, no state.
    assert_eq!(hr.user_requests().await.len(), 1);
    assert_eq!(store_snapshot(&p), (None, 0, 0, 0));

    // The text form says the same.
    let text = p.run_env(&["job", "run", "flex_hr_sync", "--dry-run"], &env());
    assert_eq!(text.code, 0, "{text:?}");
    assert!(
        text.stdout.contains("job flex_hr_sync (dry run: nothing is written): the run would end ok"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("rule \"Process FlexHR user on AD\" matches; its run would end ok"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("would create CN=Bob Stone,OU=Staff,DC=example,DC=test"), "{}", text.stdout);
    assert!(text.stdout.ends_with("2 records would trigger 2 rule runs; nothing was written\n"), "{}", text.stdout);

    // After a real run, a dry run moves neither the records nor the watermark.
    let (ran, _) = run_job(&p);
    assert_eq!(ran.code, 0, "{ran:?}");
    let before = store_snapshot(&p);
    assert!(before.0.is_some() && before.1 == 4, "{before:?}");
    let mut changed = users.clone();
    changed[1]["Department"] = json!("Finance");
    changed[1]["ModifiedAt"] = json!(hours_ago(1));
    hr.serve(&changed, 2).await;
    let ran = p.run_env(&["job", "run", "flex_hr_sync", "--dry-run", "--json"], &env());
    assert_eq!(ran.code, 0, "{ran:?}");
    let report = ran.json();
    let lines = report["write_lines"].to_string();
    assert!(lines.contains("Finance") && lines.contains("IsNewUser"), "{report:#}");
    assert_eq!(store_snapshot(&p), before, "the dry run wrote nothing");
    assert!(!ran.stdout.contains(PASSWORD) && !ran.stderr.contains(PASSWORD));
}
