//! Inbound webhooks on a real listener: what is stored and answered for valid, unsigned,
//! malformed, oversized, slow and redelivered requests; `/metrics`.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::daemon::{config, TestDaemon};

const HMAC_SECRET: &str = "it-hmac-secret-0451";
const BEARER: &str = "it-bearer-token-9921";

fn hooks() -> String {
    config(&format!(
        "[webhooks.signed]\npath = \"/hooks/signed\"\nentity = \"ticket\"\n\
         auth = {{ type = \"hmac_sha256\", header = \"X-Signature\", secret = \"{HMAC_SECRET}\" }}\n\
         max_body_bytes = 256\nset = {{ Source = \"Nexthink\" }}\n\n\
         [webhooks.bearer]\npath = \"/hooks/bearer\"\nentity = \"alert\"\nevent = \"raised\"\n\
         auth = {{ type = \"bearer\", token = \"{BEARER}\" }}\n\
         fields = {{ Device = \"device.name\", EmployeeId = \"employee.id\" }}\n"
    ))
}

const RULE: &str = "name = \"Nexthink tickets\"\nentity = \"ticket\"\nscript = \"got.rhai\"\n\
                    conditions = [{ field = \"Source\", op = \"equals\", value = \"Nexthink\" }]\n";

async fn start() -> TestDaemon {
    TestDaemon::start(
        &hooks(),
        &[("rules/nexthink.toml", RULE), ("scripts/got.rhai", "api.info(`got ${record.Title}`);")],
    )
    .await
}

/// The signature a sender computes: hex HMAC-SHA256 of the raw body.
fn sign(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

async fn post_signed(d: &TestDaemon, body: &str, signature: Option<&str>, key: Option<&str>) -> reqwest::Response {
    let mut req = d.http.post(d.url("/hooks/signed")).header("content-type", "application/json").body(body.to_string());
    if let Some(s) = signature {
        req = req.header("X-Signature", s);
    }
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    req.send().await.unwrap()
}

/// Nothing at all was stored: no records of any entity, no events.
fn nothing_stored(d: &TestDaemon) {
    let store = d.runtime.store();
    assert!(store.entities().unwrap().is_empty(), "no record was stored");
    assert!(store.get_event(1).unwrap().is_none(), "no event was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_delivery_is_stored_before_the_answer_and_runs_its_rule() {
    let d = start().await;
    let body = r#"{"Title": "disk full", "Device": "PC-17"}"#;
    let r = post_signed(&d, body, Some(&sign(HMAC_SECRET, body.as_bytes())), None).await;
    assert_eq!(r.status(), 202);
    let ids: Value = r.json().await.unwrap();
    let (event_id, record_id) = (ids["event_id"].as_i64().unwrap(), ids["record_id"].as_str().unwrap().to_string());
    // Stored before the answer: both are there the moment the 202 arrives.
    let record = d.runtime.store().get_record(&record_id).unwrap().expect("the record is stored");
    assert_eq!(Value::Object(record.fields), json!({"Title": "disk full", "Device": "PC-17", "Source": "Nexthink"}));
    assert_eq!(d.runtime.store().get_event(event_id).unwrap().unwrap().record.id, record_id);
    let runs = d.runs_of(event_id).await;
    assert_eq!(runs[0].log[0].message, "got disk full");

    // GitHub-style `sha256=` prefix.
    let body = r#"{"Title": "second"}"#;
    let r = post_signed(&d, body, Some(&format!("sha256={}", sign(HMAC_SECRET, body.as_bytes()))), None).await;
    assert_eq!(r.status(), 202);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_and_tokens_are_refused_and_store_nothing() {
    let d = start().await;
    let body = r#"{"Title": "x"}"#;
    let other_body = r#"{"Title": "y"}"#;
    for signature in [
        None,
        Some(sign("another-secret", body.as_bytes())),
        Some(sign(HMAC_SECRET, other_body.as_bytes())),
        Some("not hex at all".to_string()),
        Some(String::new()),
    ] {
        let r = post_signed(&d, body, signature.as_deref(), None).await;
        assert_eq!(r.status(), 401, "signature {signature:?}");
    }
    for auth in [None, Some("Bearer wrong-token"), Some("Basic aXQ6aXQ="), Some(&format!("Bearer {BEARER}x") as &str)] {
        let mut req = d.http.post(d.url("/hooks/bearer")).body(r#"{"device": {"name": "PC"}}"#);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "authorization {auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
    }
    nothing_stored(&d);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_misdirected_requests_are_refused() {
    let d = start().await;
    let signed = |b: &str| sign(HMAC_SECRET, b.as_bytes());
    for (body, why) in [("{\"Title\": ", "truncated JSON"), ("[1, 2]", "an array"), ("\"text\"", "a string")] {
        let r = post_signed(&d, body, Some(&signed(body)), None).await;
        assert_eq!(r.status(), 400, "{why}");
        let err: Value = r.json().await.unwrap();
        assert!(err["error"].as_str().unwrap().contains("JSON"), "{why}: {err}");
    }
    let big = format!(r#"{{"Title": "{}"}}"#, "x".repeat(300));
    assert_eq!(post_signed(&d, &big, Some(&signed(&big)), None).await.status(), 413);

    // Without a Content-Length: the limit holds while reading.
    let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    let chunk = "y".repeat(300);
    let req = format!(
        "POST /hooks/signed HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nX-Signature: {}\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        signed(&chunk),
        chunk.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 512];
    let n = s.read(&mut answer).await.unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );

    assert_eq!(d.http.post(d.url("/hooks/nope")).body("{}").send().await.unwrap().status(), 404);
    let r = d.http.get(d.url("/hooks/signed")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["allow"].to_str().unwrap()), (405, "POST"));
    nothing_stored(&d);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_with_the_same_idempotency_key_store_nothing_new() {
    let d = start().await;
    let body = r#"{"Title": "once"}"#;
    let sig = sign(HMAC_SECRET, body.as_bytes());
    let first = post_signed(&d, body, Some(&sig), Some("delivery-1")).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again = post_signed(&d, body, Some(&sig), Some("delivery-1")).await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!((&again["event_id"], &again["record_id"]), (&first["event_id"], &first["record_id"]));
    assert_eq!(again["duplicate"], true);
    let other = post_signed(&d, body, Some(&sig), Some("delivery-2")).await;
    assert_eq!(other.status(), 202);
    d.drained().await;
    let records = d.runtime.store().find_records("ticket", &Default::default(), 10).unwrap();
    assert_eq!(records.len(), 2, "the redelivery stored nothing");
    let runs = d.runtime.runs(&Default::default()).unwrap();
    assert_eq!(runs.len(), 2, "and ran nothing");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_webhook_picks_fields_and_stores_its_own_event() {
    let d = start().await;
    let r = d
        .http
        .post(d.url("/hooks/bearer"))
        .bearer_auth(BEARER)
        .json(&json!({"device": {"name": "PC-9", "os": "win"}, "employee": {"id": "E42"}, "noise": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let ids: Value = r.json().await.unwrap();
    let event = d.runtime.store().get_event(ids["event_id"].as_i64().unwrap()).unwrap().unwrap();
    assert_eq!(event.kind.as_str(), "raised");
    assert_eq!(event.record.entity, "alert");
    assert_eq!(Value::Object(event.record.fields), json!({"Device": "PC-9", "EmployeeId": "E42"}));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let d = start().await;
    // The body never completes: 408 after the request timeout (400 ms in tests).
    let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    s.write_all(b"POST /hooks/signed HTTP/1.1\r\nHost: t\r\nContent-Length: 50\r\n\r\n{\"Title\":").await.unwrap();
    let mut answer = vec![0u8; 512];
    let n = s.read(&mut answer).await.unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );

    // The headers never complete: the connection is closed.
    let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    s.write_all(b"POST /hooks/signed HTTP/1.1\r\nHost: t\r\n").await.unwrap();
    let n = s.read(&mut answer).await.unwrap_or(0);
    assert!(n == 0 || String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 408"));
    nothing_stored(&d);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_runs() {
    let d = start().await;
    let body = r#"{"Title": "m"}"#;
    let r = post_signed(&d, body, Some(&sign(HMAC_SECRET, body.as_bytes())), None).await;
    let event_id = r.json::<Value>().await.unwrap()["event_id"].as_i64().unwrap();
    d.runs_of(event_id).await;
    post_signed(&d, body, None, None).await;
    let r = d.http.get(d.url("/metrics")).send().await.unwrap();
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = r.text().await.unwrap();
    for expected in [
        r#"tripline_webhook_requests_total{webhook="signed",status="202"}"#,
        r#"tripline_webhook_requests_total{webhook="signed",status="401"}"#,
        r#"tripline_events_ingested_total{source="webhook:signed"}"#,
        r#"tripline_runs_total{rule="Nexthink tickets",status="ok"}"#,
        r#"tripline_run_duration_seconds_count{rule="Nexthink tickets"}"#,
        "tripline_queue_depth ",
    ] {
        assert!(text.contains(expected), "{expected} in\n{text}");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_at_once_are_each_stored_and_run_once() {
    let d = start().await;
    const N: usize = 100;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        // A client of its own per delivery: N separate connections at once.
        let client = reqwest::Client::new();
        let url = d.url("/hooks/signed");
        let body = format!(r#"{{"Title": "alert {i}"}}"#);
        let signature = sign(HMAC_SECRET, body.as_bytes());
        let forged = i % 10 == 0;
        tasks.spawn(async move {
            let r = client
                .post(url)
                .header("X-Signature", if forged { "00".repeat(32) } else { signature })
                .body(body)
                .send()
                .await
                .unwrap();
            (forged, r.status().as_u16(), r.json::<Value>().await.ok())
        });
    }
    let mut events = Vec::new();
    while let Some(result) = tasks.join_next().await {
        let (forged, status, ids) = result.unwrap();
        if forged {
            assert_eq!(status, 401);
        } else {
            assert_eq!(status, 202);
            events.push(ids.unwrap()["event_id"].as_i64().unwrap());
        }
    }
    assert_eq!(events.len(), N - N / 10);
    events.sort_unstable();
    events.dedup();
    assert_eq!(events.len(), N - N / 10, "each delivery is its own event");
    for event in &events {
        let runs = d.runs_of(*event).await;
        assert_eq!(runs.len(), 1, "event {event} ran once: {runs:?}");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_holds_deliveries_back_then_refuses_them_storing_nothing() {
    // Three events may wait; each run takes 6 s, longer than a delivery waits for room.
    let text = hooks().replace("request_timeout_ms = 400\n", "request_timeout_ms = 400\nmax_queue_depth = 3\n");
    let d = TestDaemon::start(
        &format!("{text}\n[limits]\ntimeout_ms = 20000\n"),
        &[("rules/nexthink.toml", RULE), ("scripts/got.rhai", "sleep(6); api.info(`got ${record.Title}`);")],
    )
    .await;
    let send = |title: &str| {
        let body = format!(r#"{{"Title": "{title}"}}"#);
        let signature = sign(HMAC_SECRET, body.as_bytes());
        let d = &d;
        async move { post_signed(d, &body, Some(&signature), None).await }
    };
    let mut accepted = Vec::new();
    for title in ["one", "two", "three"] {
        let r = send(title).await;
        assert_eq!(r.status(), 202);
        accepted.push(r.json::<Value>().await.unwrap()["event_id"].as_i64().unwrap());
    }
    // The fourth and fifth wait for room, find none, and are refused with the bound named.
    for title in ["four", "five"] {
        let r = send(title).await;
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "5");
        let text = r.text().await.unwrap();
        assert!(text.contains("[server] max_queue_depth = 3") && text.contains("nothing was stored"), "{text}");
    }
    assert!(d.runtime.store().get_event(accepted[2] + 1).unwrap().is_none(), "nothing of the refused is stored");
    // Nothing accepted is lost: each runs, and once they have, deliveries are taken again.
    for id in &accepted {
        assert_eq!(d.runs_of(*id).await[0].status, tripline::store::RunStatus::Ok);
    }
    d.drained().await;
    assert_eq!(send("six").await.status(), 202);
    d.stop().await;
}
