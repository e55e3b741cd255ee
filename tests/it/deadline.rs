//! Every host call of a run is bounded by the run's deadline (`[limits] timeout_ms`):
//! notifications, requests, `get_all`'s pages, rate-limit waits and retry backoffs.

use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::project::Project;

/// A peer that accepts connections and reads what comes, but never answers. Lives as long
/// as the returned listener task's runtime.
async fn silent_peer() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    format!("http://{addr}")
}

fn run_of(ran: &crate::common::project::Ran) -> Value {
    serde_json::from_str(ran.stdout.lines().next().unwrap_or("null")).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_to_a_receiver_that_never_answers_ends_with_the_run() {
    let receiver = silent_peer().await;
    let p = Project::new(&format!(
        r#"
[limits]
timeout_ms = 700

[notify.desk]
type = "webhook"
url = "{receiver}/hook"

[jobs.tell]
schedule = "0 0 * * *"
script = "tell.rhai"
"#
    ));
    p.script("tell.rhai", "api.notify(\"desk\", \"subject\", \"body\");\napi.info(\"after the notification\");")
        .script("r.rhai", "api.notify(\"desk\", \"subject\", `ticket ${record.Title}`);")
        .rule("r", "name = \"r\"\nentity = \"ticket\"\nscript = \"r.rhai\"\n");

    // A job's run: failed (jobs are retried by their next tick), naming the call and the limit.
    let ran = p.run(&["job", "run", "tell", "--json"]);
    let run = run_of(&ran);
    assert_eq!(run["status"], "failed", "{ran:?}");
    assert!(
        crate::common::without_place(run["error"].as_str().unwrap())
            .starts_with("notify desk did not finish within the run's time limit ([limits] timeout_ms)"),
        "{run:#}"
    );
    let log: Vec<&str> = run["log"].as_array().unwrap().iter().filter_map(|l| l["message"].as_str()).collect();
    assert!(!log.contains(&"after the notification"), "the script stopped at the call: {log:?}");

    // A rule's run: transient, so it is retried later.
    let (ran, runs) = p.fire("ticket", r#"{"Title": "VPN"}"#);
    assert_eq!(runs[0]["status"], "retrying", "{ran:?}");
    assert!(crate::common::without_place(runs[0]["error"].as_str().unwrap())
        .starts_with("notify desk did not finish within the run's time limit"));
}

/// A project with a connection `slow` (given settings) on `base`, and the job `call` running
/// `script`.
fn connection_project(base: &str, settings: &str, timeout_ms: u64) -> Project {
    let p = Project::new(&format!(
        r#"
[limits]
timeout_ms = {timeout_ms}

[connections.slow]
base_url = "{base}/api/"
auth = {{ type = "bearer", token = "deadline-token-1234" }}
{settings}

[jobs.call]
schedule = "0 0 * * *"
script = "call.rhai"
"#
    ));
    p.script("call.rhai", "");
    p
}

fn job_error(p: &Project, script: &str) -> String {
    p.script("call.rhai", script);
    let ran = p.run(&["job", "run", "call", "--json"]);
    let run = run_of(&ran);
    assert_eq!(run["status"], "failed", "{ran:?}");
    crate::common::without_place(run["error"].as_str().unwrap()).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pages_rate_limits_and_backoffs_stop_at_the_run_deadline() {
    // A request to a peer that never answers, with a connection timeout far longer than the run.
    let silent = silent_peer().await;
    let p = connection_project(&silent, "timeout = \"60s\"\nretry = { max_attempts = 5 }", 700);
    let e = job_error(&p, r#"api.connection("slow").get("users");"#);
    assert!(
        e.starts_with("connection slow: GET /api/users was cut off by the run's time limit ([limits] timeout_ms)"),
        "{e}"
    );
    // A POST cut off that way may have been processed: it says so, for good.
    let e = job_error(&p, r#"api.connection("slow").post("tickets", #{ a: 1 });"#);
    assert!(
        e.starts_with("connection slow: POST /api/tickets may have been processed (the run's time limit ([limits] timeout_ms) cut it off)"),
        "{e}"
    );
    p.script("r.rhai", r#"api.connection("slow").get("users");"#)
        .rule("r", "name = \"r\"\nentity = \"ticket\"\nscript = \"r.rhai\"\n");
    let (ran, runs) = p.fire("ticket", r#"{"Title": "x"}"#);
    assert_eq!(runs[0]["status"], "retrying", "a GET cut off is retried later: {ran:?}");

    // get_all's page loop with a rate limit that would make the second page wait a minute.
    let server = MockServer::start().await;
    for page in 1..=3 {
        Mock::given(method("GET"))
            .and(path("/api/users"))
            .and(wiremock::matchers::query_param("page", page.to_string()))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"users": [page], "pages": 3})))
            .mount(&server)
            .await;
    }
    let p = connection_project(&server.uri(), "rate_limit = { requests = 1, per_seconds = 60 }", 1500);
    let e = job_error(
        &p,
        r#"api.connection("slow").get_all("users", #{ style: "page", total_pages: "pages", items: "users" });"#,
    );
    assert!(
        e.starts_with(
            "connection slow: GET /api/users was cut off by the run's time limit ([limits] timeout_ms) before it was sent"
        ),
        "{e}"
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 1, "the first page only");

    // A backoff that would end past the deadline is not waited: the run ends with the answer
    // that made it wait.
    let busy = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/users"))
        .respond_with(ResponseTemplate::new(503).set_body_string("maintenance"))
        .mount(&busy)
        .await;
    let p = connection_project(
        &busy.uri(),
        "retry = { max_attempts = 5, base_delay = \"20s\", max_delay = \"60s\" }",
        1500,
    );
    let e = job_error(&p, r#"api.connection("slow").get("users");"#);
    assert!(e.starts_with("connection slow: GET /api/users answered 503: maintenance"), "{e}");
    assert_eq!(busy.received_requests().await.unwrap().len(), 1);
    // A Retry-After past the deadline, likewise.
    busy.reset().await;
    Mock::given(method("GET"))
        .and(path("/api/users"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "30"))
        .mount(&busy)
        .await;
    let p = connection_project(
        &busy.uri(),
        "retry = { max_attempts = 5, base_delay = \"10ms\", max_delay = \"60s\" }",
        1500,
    );
    let e = job_error(&p, r#"api.connection("slow").get("users");"#);
    assert!(e.starts_with("connection slow: GET /api/users answered 429"), "{e}");
    assert_eq!(busy.received_requests().await.unwrap().len(), 1);
}
