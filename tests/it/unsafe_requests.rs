//! A request that is not idempotent (POST, PATCH) and whose outcome is unknown is never sent
//! again silently: not by the connection's retries, and not by the run's. With an
//! `idempotency_header` it is, carrying the same key on every attempt.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tripline::class::Classify;
use tripline::connection::{ConnectionError, RequestOptions};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::common::http::connection;
use crate::common::project::{Daemon, Project};

fn requests(all: &[Request], at: &str) -> Vec<Request> {
    all.iter().filter(|r| r.url.path() == at).cloned().collect()
}

fn key_of(r: &Request) -> Option<String> {
    r.headers.get("idempotency-key").map(|v| v.to_str().unwrap().to_string())
}

fn retrying(server: &MockServer, extra: &str) -> String {
    format!(
        "base_url = \"{}\"\ntimeout = \"300ms\"\nretry = {{ max_attempts = 3, base_delay = \"10ms\", max_delay = \"5s\" }}\n{extra}",
        server.uri()
    )
}

#[tokio::test]
async fn the_connection_does_not_resend_a_post_or_patch_of_unknown_outcome() {
    let server = MockServer::start().await;
    let c = connection("itsm", &retrying(&server, ""));
    let slow = || ResponseTemplate::new(201).set_delay(Duration::from_secs(10));
    let answer = |status: u16| ResponseTemplate::new(status).set_body_string("upstream");
    for (verb, at, template) in [
        ("POST", "/slow", slow()),
        ("PATCH", "/slow", slow()),
        ("POST", "/s500", answer(500)),
        ("POST", "/s502", answer(502)),
        ("PATCH", "/s503", answer(503)),
        ("POST", "/s504", answer(504)),
    ] {
        server.reset().await;
        Mock::given(path(at)).respond_with(template).mount(&server).await;
        let options = RequestOptions { json: Some(json!({"a": 1})), ..RequestOptions::default() };
        let e = match verb {
            "POST" => c.post(at, options).await,
            _ => c.patch(at, options).await,
        }
        .unwrap_err();
        assert!(matches!(e, ConnectionError::OutcomeUnknown { .. }), "{verb} {at}: {e:?}");
        assert!(!e.is_transient(), "{verb} {at}: permanent, so the run does not send it again");
        let text = e.to_string();
        assert!(text.starts_with(&format!("connection itsm: {verb} {at} may have been processed (")), "{text}");
        assert!(text.contains("it is not sent again"), "{text}");
        assert_eq!(requests(&server.received_requests().await.unwrap(), at).len(), 1, "{verb} {at}");
    }
    // A GET, a PUT and a DELETE of unknown outcome are retried (doing them twice is harmless).
    server.reset().await;
    Mock::given(path("/slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(10)))
        .mount(&server)
        .await;
    let e = c.put("slow", RequestOptions::default()).await.unwrap_err();
    assert!(matches!(e, ConnectionError::Timeout { .. }) && e.is_transient(), "{e:?}");
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
}

#[tokio::test]
async fn a_post_refused_unprocessed_is_retried() {
    let server = MockServer::start().await;
    // 503 with Retry-After (planned unavailability), 429 and 408 say nothing was done.
    for (i, (status, retry_after)) in [(503, Some("0")), (429, None), (408, None)].into_iter().enumerate() {
        let at = format!("/p{i}");
        let mut refusal = ResponseTemplate::new(status);
        if let Some(v) = retry_after {
            refusal = refusal.insert_header("Retry-After", v);
        }
        Mock::given(path(at.as_str())).respond_with(refusal).up_to_n_times(1).mount(&server).await;
        Mock::given(path(at.as_str())).respond_with(ResponseTemplate::new(201)).mount(&server).await;
        let c = connection("itsm", &retrying(&server, ""));
        let r = c.post(&at, RequestOptions::default()).await.unwrap();
        assert_eq!(r.status, 201, "{status}");
        assert_eq!(requests(&server.received_requests().await.unwrap(), &at).len(), 2, "{status}");
    }
}

#[tokio::test]
async fn with_an_idempotency_header_the_connection_resends_with_the_same_key() {
    let server = MockServer::start().await;
    Mock::given(path("/tickets"))
        .respond_with(ResponseTemplate::new(201).set_delay(Duration::from_secs(10)))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(path("/tickets")).respond_with(ResponseTemplate::new(201)).mount(&server).await;
    let c = connection("itsm", &retrying(&server, "idempotency_header = \"Idempotency-Key\"\n"));
    let options = RequestOptions { idempotency_key: Some("key-1".into()), ..RequestOptions::default() };
    assert_eq!(c.post("tickets", options).await.unwrap().status, 201);
    let seen = requests(&server.received_requests().await.unwrap(), "/tickets");
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|r| key_of(r).as_deref() == Some("key-1")), "{seen:?}");
    // A GET carries no key.
    Mock::given(path("/users")).respond_with(ResponseTemplate::new(200)).mount(&server).await;
    let options = RequestOptions { idempotency_key: Some("key-2".into()), ..RequestOptions::default() };
    c.get("users", options).await.unwrap();
    let users = requests(&server.received_requests().await.unwrap(), "/users");
    assert_eq!(key_of(&users[0]), None);
}

// ---------------------------------------------------------------------------------------
// Through a rule's runs, the run retrying as configured

/// A project whose rule POSTs (`/api/notes` answered at once, then `/api/tickets`, which the
/// server answers only after the connection's timeout) with `[engine] max_attempts = 3`.
fn project(server: &MockServer, connection_extra: &str) -> Project {
    let p = Project::new(&format!(
        r#"
[engine]
max_attempts = 3
retry_backoff_ms = 10
retry_max_backoff_ms = 20

[connections.itsm]
base_url = "{}/api/"
timeout = "300ms"
retry = {{ max_attempts = 2, base_delay = "10ms" }}
{connection_extra}
"#,
        server.uri()
    ));
    p.script(
        "open.rhai",
        r#"
let itsm = api.connection("itsm");
if record.Kind == "post" {
    itsm.post("notes", #{ text: "opening" });
    itsm.post("tickets", #{ subject: record.Title });
} else {
    api.comment(record, "sentinel");
}
"#,
    )
    .rule("open", "name = \"open\"\nentity = \"ticket\"\nscript = \"open.rhai\"\n");
    p
}

async fn slow_itsm() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/tickets"))
        .respond_with(ResponseTemplate::new(201).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;
    Mock::given(method("POST")).and(path("/api/notes")).respond_with(ResponseTemplate::new(201)).mount(&server).await;
    server
}

fn runs(p: &Project) -> Vec<Value> {
    p.run(&["runs", "--json", "--limit", "1000"]).json().as_array().unwrap().clone()
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_timed_out_is_sent_once_for_the_whole_run_and_fails_it() {
    let server = slow_itsm().await;
    let p = project(&server, "");
    let (ran, fired) = p.fire("ticket", r#"{"Kind": "post", "Title": "VPN broken"}"#);
    assert_eq!(fired[0]["status"], "failed", "{ran:?}");
    assert_eq!(fired[0]["attempts"], 1);
    assert!(fired[0]["next_attempt_at"].is_null());
    let error = crate::common::without_place(fired[0]["error"].as_str().unwrap());
    assert!(
        error.starts_with(
            "connection itsm: POST /api/tickets may have been processed (no answer within 300ms); it is not sent again"
        ),
        "{error}"
    );

    // The daemon processes the queue (a later sentinel event) and sends nothing again.
    let ran = p.run_stdin(&["fire", "ticket", "--record", "-", "--queue"], Some(r#"{"Kind": "sentinel"}"#));
    assert_eq!(ran.code, 0, "{ran:?}");
    let daemon = Daemon::start(&p);
    wait_for("the sentinel's run", || runs(&p).iter().any(|r| r["status"] == "ok").then_some(()));
    daemon.stop();
    let all = server.received_requests().await.unwrap();
    assert_eq!(requests(&all, "/api/tickets").len(), 1, "one POST in the run's whole life");
    assert_eq!(requests(&all, "/api/notes").len(), 1);
    let first = runs(&p).into_iter().find(|r| r["status"] == "failed").expect("the POST's run");
    assert_eq!(first["attempts"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_idempotency_header_every_attempt_of_the_run_carries_the_same_keys() {
    let server = slow_itsm().await;
    let p = project(&server, "idempotency_header = \"Idempotency-Key\"");
    let (ran, fired) = p.fire("ticket", r#"{"Kind": "post", "Title": "VPN broken"}"#);
    assert_eq!(fired[0]["status"], "retrying", "{ran:?}");
    assert!(fired[0]["error"].as_str().unwrap().contains("POST /api/tickets timed out after 300ms"), "{fired:?}");
    let daemon = Daemon::start(&p);
    let dead = wait_for("the run to go dead", || runs(&p).into_iter().find(|r| r["status"] == "dead"));
    daemon.stop();
    assert_eq!(dead["attempts"], 3);

    let all = server.received_requests().await.unwrap();
    let tickets = requests(&all, "/api/tickets");
    let notes = requests(&all, "/api/notes");
    // Two connection attempts in each of three run attempts; one note per run attempt.
    assert_eq!((tickets.len(), notes.len()), (6, 3));
    let ticket_key = key_of(&tickets[0]).expect("a key");
    let note_key = key_of(&notes[0]).expect("a key");
    assert!(tickets.iter().all(|r| key_of(r).as_ref() == Some(&ticket_key)), "{tickets:?}");
    assert!(notes.iter().all(|r| key_of(r).as_ref() == Some(&note_key)), "{notes:?}");
    assert_ne!(ticket_key, note_key, "each request of the run has its own key");
    assert!(uuid::Uuid::parse_str(&ticket_key).is_ok(), "UUID-shaped, as most APIs want: {ticket_key}");

    // Another event is another operation: other keys.
    server.reset().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(201)).mount(&server).await;
    let (ran, fired) = p.fire("ticket", r#"{"Kind": "post", "Title": "Printer"}"#);
    assert_eq!(fired[0]["status"], "ok", "{ran:?}");
    let all = server.received_requests().await.unwrap();
    let other = key_of(&requests(&all, "/api/tickets")[0]).unwrap();
    assert_ne!(other, ticket_key);
}
