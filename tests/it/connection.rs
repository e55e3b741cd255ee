//! Connections against local HTTP servers (wiremock on loopback) standing in for HR APIs and
//! OAuth2 providers.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tripline::class::Classify;

use base64::Engine as _;
use chrono::Utc;
use serde_json::{json, Value};
use sha2::Digest as _;
use tripline::connection::{
    ConnectionError, MemoryTokenStore, Paging, PagingOptions, RequestOptions, StoredToken, Token, TokenStore,
};
use url::Url;
use wiremock::matchers::{
    basic_auth, bearer_token, body_string_contains, header, method, path, query_param, query_param_is_missing,
};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::common::http::{closed_port, connection, connection_with_store, LogCapture};

fn json_answer(body: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(body)
}

fn token_answer(access: &str, refresh: Option<&str>, expires_in: u64) -> ResponseTemplate {
    let mut body = json!({"access_token": access, "token_type": "Bearer", "expires_in": expires_in});
    if let Some(r) = refresh {
        body["refresh_token"] = json!(r);
    }
    json_answer(body)
}

async fn requests_to(server: &MockServer, at: &str) -> Vec<Request> {
    server.received_requests().await.unwrap().into_iter().filter(|r| r.url.path() == at).collect()
}

fn query_of(url: &Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

// ---------------------------------------------------------------------------------------
// Authentication types

#[tokio::test]
async fn api_key_in_a_header() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/users"))
        .and(header("x-api-key", "key-header-1234"))
        .and(header("accept", "application/json"))
        .respond_with(json_answer(json!([{"id": 1}])))
        .expect(1)
        .mount(&server)
        .await;
    let c = connection(
        "ninja",
        &format!(
            r#"
base_url = "{}/api"
headers = {{ Accept = "application/json" }}
auth = {{ type = "api_key", name = "X-Api-Key", value = "key-header-1234" }}
"#,
            server.uri()
        ),
    );
    let r = c.get("/users", RequestOptions::default()).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!([{"id": 1}]));
}

#[tokio::test]
async fn api_key_in_the_query_string() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/users"))
        .and(query_param("apikey", "key-query-1234"))
        .and(query_param("active", "true"))
        .respond_with(json_answer(json!({"ok": true})))
        .expect(1)
        .mount(&server)
        .await;
    let c = connection(
        "sdp",
        &format!(
            r#"
base_url = "{}"
auth = {{ type = "api_key", name = "apikey", value = "key-query-1234", in = "query" }}
"#,
            server.uri()
        ),
    );
    let options = RequestOptions { query: vec![("active".into(), "true".into())], ..RequestOptions::default() };
    assert_eq!(c.get("users", options).await.unwrap().body, json!({"ok": true}));
}

#[tokio::test]
async fn api_key_in_form_data() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/requests"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string_contains("subject=Hello"))
        .and(body_string_contains("technician_key=key-form-1234"))
        .respond_with(json_answer(json!({"id": 7})))
        .expect(1)
        .mount(&server)
        .await;
    let c = connection(
        "sdp",
        &format!(
            r#"
base_url = "{}"
auth = {{ type = "api_key", name = "technician_key", value = "key-form-1234", in = "form" }}
"#,
            server.uri()
        ),
    );
    let options = RequestOptions { form: Some(vec![("subject".into(), "Hello".into())]), ..RequestOptions::default() };
    assert_eq!(c.post("requests", options).await.unwrap().body, json!({"id": 7}));
    // A key that goes in a form cannot ride along a JSON body.
    let options = RequestOptions { json: Some(json!({"subject": "x"})), ..RequestOptions::default() };
    let e = c.post("requests", options).await.unwrap_err();
    assert!(matches!(e, ConnectionError::Invalid { .. }), "{e}");
}

#[tokio::test]
async fn basic_authentication() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/users"))
        .and(basic_auth("svc-tripline", "basic-pw-1234"))
        .respond_with(json_answer(json!({"users": []})))
        .expect(1)
        .mount(&server)
        .await;
    let c = connection(
        "flex_hr",
        &format!(
            r#"
base_url = "{}/api/"
auth = {{ type = "basic", username = "svc-tripline", password = "basic-pw-1234" }}
"#,
            server.uri()
        ),
    );
    assert_eq!(c.get("users", RequestOptions::default()).await.unwrap().status, 200);
}

#[tokio::test]
async fn bearer_authentication() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .and(path("/devices/4"))
        .and(bearer_token("bearer-tok-1234"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let c = connection(
        "ninja",
        &format!("base_url = \"{}\"\nauth = {{ type = \"bearer\", token = \"bearer-tok-1234\" }}\n", server.uri()),
    );
    let r = c.delete("devices/4", RequestOptions::default()).await.unwrap();
    assert_eq!((r.status, r.body), (204, Value::Null));
}

// ---------------------------------------------------------------------------------------
// Requests and answers

#[tokio::test]
async fn json_bodies_query_headers_and_the_answer_map() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(path("/api/users/12"))
        .and(query_param("notify", "false"))
        .and(header("x-request-id", "r-1"))
        .and(header("content-type", "application/json"))
        .and(body_string_contains(r#""Department":"IT""#))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("X-Total", "1")
                .set_body_json(json!({"id": 12, "Department": "IT"})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/motd"))
        .respond_with(ResponseTemplate::new(200).set_body_raw("hello\n", "text/plain"))
        .mount(&server)
        .await;
    let c = connection("halo", &format!("base_url = \"{}/api/\"\n", server.uri()));
    let options = RequestOptions {
        query: vec![("notify".into(), "false".into())],
        json: Some(json!({"Department": "IT"})),
        headers: vec![("X-Request-Id".into(), "r-1".into())],
        ..RequestOptions::default()
    };
    let r = c.patch("users/12", options).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.headers.get("x-total").map(String::as_str), Some("1"));
    assert_eq!(r.body, json!({"id": 12, "Department": "IT"}));
    let text = c.get("motd", RequestOptions::default()).await.unwrap();
    assert_eq!(text.body, json!("hello\n"));
}

#[tokio::test]
async fn a_non_2xx_answer_is_an_error_with_status_and_excerpt_unless_allowed() {
    let server = MockServer::start().await;
    Mock::given(path("/users/99"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"error": "no such user", "id": 99})))
        .mount(&server)
        .await;
    let c = connection("halo", &format!("base_url = \"{}\"\n", server.uri()));
    let e = c.get("users/99", RequestOptions::default()).await.unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert!(!e.is_transient());
    assert_eq!(e.to_string(), r#"connection halo: GET /users/99 answered 404: {"error":"no such user","id":99}"#);
    let allowed = RequestOptions { allow_error_status: true, ..RequestOptions::default() };
    let r = c.get("users/99", allowed).await.unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"], json!("no such user"));
}

#[tokio::test]
async fn paths_stay_on_the_connection_host() {
    let server = MockServer::start().await;
    Mock::given(path("/api/v2/users")).respond_with(json_answer(json!([]))).expect(2).mount(&server).await;
    let c = connection("halo", &format!("base_url = \"{}/api/v2\"\n", server.uri()));
    c.get("/users", RequestOptions::default()).await.unwrap();
    c.get(&format!("{}/api/v2/users", server.uri()), RequestOptions::default()).await.unwrap();
    let e = c.get("https://attacker.example.com/steal", RequestOptions::default()).await.unwrap_err();
    // The wording changed when the origin check moved after resolution; the refusal is the same.
    assert_eq!(
        e.to_string(),
        format!(
            "connection halo: the path \"https://attacker.example.com/steal\" leads to https://attacker.example.com, \
             not to {}: credentials are only sent to base_url's origin, so nothing was sent",
            server.uri()
        )
    );
    assert!(!e.is_transient());
}

#[tokio::test]
async fn test_connection_makes_the_configured_request_once() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/users"))
        .and(query_param("pageSize", "1"))
        .respond_with(json_answer(json!({"users": [{"EmployeeId": "E1"}], "totalPages": 9})))
        .expect(1)
        .mount(&server)
        .await;
    let c = connection(
        "flex_hr",
        &format!("base_url = \"{}/api/\"\ntest = {{ path = \"users?pageSize=1\" }}\n", server.uri()),
    );
    let outcome = c.test_connection().await.unwrap();
    assert!(outcome.is_success());
    assert_eq!((outcome.method.as_str(), outcome.path.as_str()), ("GET", "/api/users"));
    assert_eq!(outcome.body_excerpt, r#"{"totalPages":9,"users":[{"EmployeeId":"E1"}]}"#);

    // A refusal is an outcome to print, not an error, and is not retried.
    let down = MockServer::start().await;
    Mock::given(method("HEAD")).respond_with(ResponseTemplate::new(503)).expect(1).mount(&down).await;
    let c = connection("flex_hr", &format!("base_url = \"{}\"\ntest = {{ method = \"head\" }}\n", down.uri()));
    let outcome = c.test_connection().await.unwrap();
    assert_eq!((outcome.status, outcome.is_success()), (503, false));
}

// ---------------------------------------------------------------------------------------
// OAuth2

fn oauth_section(server: &MockServer, grant: &str, extra: &str) -> String {
    format!(
        r#"
base_url = "{uri}/api/"
[auth]
type = "oauth2"
grant = "{grant}"
token_url = "{uri}/oauth/token?tenant=acme"
client_id = "tripline-client"
client_secret = "client-secret-1234"
scopes = ["all"]
{extra}
"#,
        uri = server.uri()
    )
}

fn seeded(connection: &str, access: &str, refresh: Option<&str>, expires_in_secs: i64) -> Arc<MemoryTokenStore> {
    let store = Arc::new(MemoryTokenStore::new());
    store
        .save(
            connection,
            &StoredToken {
                access_token: Token::new(access),
                refresh_token: refresh.map(Token::new),
                expires_at: Some(Utc::now() + chrono::Duration::seconds(expires_in_secs)),
            },
        )
        .unwrap();
    store
}

#[tokio::test]
async fn client_credentials_get_a_token_once_and_reuse_it() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(query_param("tenant", "acme"))
        .and(basic_auth("tripline-client", "client-secret-1234"))
        .and(body_string_contains("grant_type=client_credentials"))
        .and(body_string_contains("scope=all"))
        .respond_with(token_answer("cc-access-1", None, 3600))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/api/users"))
        .and(bearer_token("cc-access-1"))
        .respond_with(json_answer(json!([])))
        .expect(3)
        .mount(&server)
        .await;
    let store = Arc::new(MemoryTokenStore::new());
    let c = connection_with_store("ninja", &oauth_section(&server, "client_credentials", ""), store.clone());
    for _ in 0..3 {
        c.get("users", RequestOptions::default()).await.unwrap();
    }
    let saved = store.load("ninja").unwrap().unwrap();
    assert_eq!(saved.access_token.expose(), "cc-access-1");
    assert!(saved.expires_at.unwrap() > Utc::now() + chrono::Duration::seconds(3500));
}

#[tokio::test]
async fn an_obtained_token_is_replaced_when_it_expires() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(token_answer("short-lived-1", None, 1))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(token_answer("long-lived-2", None, 3600))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/api/users")).respond_with(json_answer(json!([]))).mount(&server).await;
    let c = connection("ninja", &oauth_section(&server, "client_credentials", "refresh_margin = \"0s\""));
    c.get("users", RequestOptions::default()).await.unwrap();
    c.get("users", RequestOptions::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.get("users", RequestOptions::default()).await.unwrap();
    c.get("users", RequestOptions::default()).await.unwrap();
    let auths: Vec<String> = requests_to(&server, "/api/users")
        .await
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(auths, ["Bearer short-lived-1", "Bearer short-lived-1", "Bearer long-lived-2", "Bearer long-lived-2"]);
}

#[tokio::test]
async fn client_secret_in_the_body_and_a_header_prefix() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(body_string_contains("client_id=tripline-client"))
        .and(body_string_contains("client_secret=client-secret-1234"))
        .and(body_string_contains("resource=api"))
        .respond_with(token_answer("body-access-1", None, 3600))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/api/users"))
        .and(header("authorization", "Token body-access-1"))
        .respond_with(json_answer(json!([])))
        .expect(1)
        .mount(&server)
        .await;
    let section = oauth_section(
        &server,
        "client_credentials",
        "client_auth = \"body\"\nheader_prefix = \"Token\"\nextra_params = { resource = \"api\" }",
    );
    let c = connection("halo", &section);
    c.get("users", RequestOptions::default()).await.unwrap();
}

#[tokio::test]
async fn a_token_is_refreshed_before_it_expires() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .and(body_string_contains("refresh_token=refresh-1"))
        .respond_with(token_answer("access-2", None, 3600))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/api/users"))
        .and(bearer_token("access-2"))
        .respond_with(json_answer(json!([])))
        .expect(2)
        .mount(&server)
        .await;
    // Still valid for 30 s, inside the default one-minute margin: refreshed first.
    let store = seeded("halo", "access-1", Some("refresh-1"), 30);
    let c =
        connection_with_store("halo", &oauth_section(&server, "authorization_code", AUTH_CODE_EXTRA), store.clone());
    c.get("users", RequestOptions::default()).await.unwrap();
    c.get("users", RequestOptions::default()).await.unwrap();
    let saved = store.load("halo").unwrap().unwrap();
    assert_eq!(saved.access_token.expose(), "access-2");
    // The provider did not rotate it: the refresh token we had is kept.
    assert_eq!(saved.refresh_token.unwrap().expose(), "refresh-1");
}

const AUTH_CODE_EXTRA: &str = r#"auth_url = "http://127.0.0.1:1/authorize"
redirect_url = "http://127.0.0.1:0/callback""#;

#[tokio::test]
async fn a_rotated_refresh_token_is_persisted_at_once_and_used_next() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(body_string_contains("refresh_token=refresh-1"))
        .respond_with(token_answer("access-2", Some("refresh-2"), 0))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(body_string_contains("refresh_token=refresh-2"))
        .respond_with(token_answer("access-3", Some("refresh-3"), 3600))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/api/users")).respond_with(json_answer(json!([]))).mount(&server).await;
    let store = seeded("halo", "access-1", Some("refresh-1"), -10);
    let c =
        connection_with_store("halo", &oauth_section(&server, "authorization_code", AUTH_CODE_EXTRA), store.clone());
    c.get("users", RequestOptions::default()).await.unwrap();
    let saved = store.load("halo").unwrap().unwrap();
    assert_eq!(saved.refresh_token.unwrap().expose(), "refresh-2");
    // expires_in 0: stale at once, so the next call refreshes with the rotated token.
    c.get("users", RequestOptions::default()).await.unwrap();
    let saved = store.load("halo").unwrap().unwrap();
    assert_eq!(saved.access_token.expose(), "access-3");
    assert_eq!(saved.refresh_token.unwrap().expose(), "refresh-3");
    let auths: Vec<String> = requests_to(&server, "/api/users")
        .await
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(auths, ["Bearer access-2", "Bearer access-3"]);
}

#[tokio::test]
async fn a_401_refreshes_once_and_retries() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(body_string_contains("refresh_token=refresh-1"))
        .respond_with(token_answer("access-2", None, 3600))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/api/users"))
        .and(bearer_token("access-1"))
        .respond_with(ResponseTemplate::new(401))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/api/users"))
        .and(bearer_token("access-2"))
        .respond_with(json_answer(json!(["ok"])))
        .expect(1)
        .mount(&server)
        .await;
    // The stored token looks valid for an hour, but the provider revoked it.
    let store = seeded("halo", "access-1", Some("refresh-1"), 3600);
    let c = connection_with_store("halo", &oauth_section(&server, "authorization_code", AUTH_CODE_EXTRA), store);
    let r = c.get("users", RequestOptions::default()).await.unwrap();
    assert_eq!(r.body, json!(["ok"]));
}

#[tokio::test]
async fn a_second_401_is_an_error_not_a_loop() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(token_answer("access-2", None, 3600))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/api/users"))
        .respond_with(ResponseTemplate::new(401).set_body_string("insufficient scope"))
        .expect(2)
        .mount(&server)
        .await;
    let store = seeded("halo", "access-1", Some("refresh-1"), 3600);
    let c = connection_with_store("halo", &oauth_section(&server, "authorization_code", AUTH_CODE_EXTRA), store);
    let e = c.get("users", RequestOptions::default()).await.unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert!(!e.is_transient());
    assert!(e.to_string().ends_with("answered 401: insufficient scope"), "{e}");
}

#[tokio::test]
async fn concurrent_callers_share_one_refresh() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(token_answer("access-2", Some("refresh-2"), 3600).set_delay(Duration::from_millis(200)))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/api/users"))
        .and(bearer_token("access-2"))
        .respond_with(json_answer(json!([])))
        .expect(20)
        .mount(&server)
        .await;
    let store = seeded("halo", "access-1", Some("refresh-1"), -60);
    let c = connection_with_store("halo", &oauth_section(&server, "authorization_code", AUTH_CODE_EXTRA), store);
    let calls = (0..20).map(|_| c.get("users", RequestOptions::default()));
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
}

#[tokio::test]
async fn an_authorization_code_connection_without_tokens_says_how_to_authorize() {
    let server = MockServer::start().await;
    let c = connection("halo", &oauth_section(&server, "authorization_code", AUTH_CODE_EXTRA));
    let e = c.get("users", RequestOptions::default()).await.unwrap_err();
    assert!(matches!(e, ConnectionError::NotAuthorized { .. }));
    assert_eq!(e.to_string(), "connection halo is not authorized: run `tripline connection authorize halo`");
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_refused_refresh_token_asks_for_authorization_again() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant", "error_description": "revoked"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let store = seeded("halo", "access-1", Some("refresh-1"), -60);
    let c = connection_with_store("halo", &oauth_section(&server, "authorization_code", AUTH_CODE_EXTRA), store);
    let e = c.get("users", RequestOptions::default()).await.unwrap_err();
    assert!(!e.is_transient());
    let text = e.to_string();
    assert!(text.contains("run `tripline connection authorize halo`"), "{text}");
    assert!(text.contains("invalid_grant") && text.contains("revoked"), "{text}");
}

#[tokio::test]
async fn a_token_endpoint_that_is_down_is_transient() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path("/oauth/token")).respond_with(ResponseTemplate::new(503)).mount(&server).await;
    let c = connection(
        "ninja",
        &oauth_section(&server, "client_credentials", "")
            .replace("base_url", "retry = { max_attempts = 2, base_delay = \"10ms\" }\nbase_url"),
    );
    let e = c.get("users", RequestOptions::default()).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(e.to_string(), "connection ninja: OAuth2 token request failed: the token endpoint answered 503");
    assert_eq!(requests_to(&server, "/oauth/token").await.len(), 2);
}

#[tokio::test]
async fn authorize_with_pkce_a_simulated_browser_and_stored_tokens() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(body_string_contains("grant_type=authorization_code"))
        .and(body_string_contains("code=code-from-provider"))
        .respond_with(token_answer("ac-access-1", Some("ac-refresh-1"), 3600))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/api/me"))
        .and(bearer_token("ac-access-1"))
        .respond_with(json_answer(json!({"name": "svc"})))
        .expect(1)
        .mount(&server)
        .await;
    let store = Arc::new(MemoryTokenStore::new());
    let section = oauth_section(
        &server,
        "authorization_code",
        &format!(
            "auth_url = \"{}/oauth/authorize?tenant=acme\"\nredirect_url = \"http://127.0.0.1:0/callback\"",
            server.uri()
        ),
    );
    let c = connection_with_store("halo", &section, store.clone());
    let pending = c.begin_authorization().await.unwrap();

    let login = pending.url().clone();
    assert_eq!(login.path(), "/oauth/authorize");
    assert_eq!(query_of(&login, "tenant").as_deref(), Some("acme"));
    assert_eq!(query_of(&login, "response_type").as_deref(), Some("code"));
    assert_eq!(query_of(&login, "client_id").as_deref(), Some("tripline-client"));
    assert_eq!(query_of(&login, "scope").as_deref(), Some("all"));
    assert_eq!(query_of(&login, "code_challenge_method").as_deref(), Some("S256"));
    let challenge = query_of(&login, "code_challenge").unwrap();
    let state = query_of(&login, "state").unwrap();
    let redirect = query_of(&login, "redirect_uri").unwrap();
    assert_eq!(redirect, pending.redirect_url());
    let redirect_url = Url::parse(&redirect).unwrap();
    assert_ne!(redirect_url.port(), Some(0), "the actual port is sent");
    assert_eq!(redirect_url.path(), "/callback");

    // The person's browser, sent back by the provider: first a stray callback, then ours.
    let browser = async {
        let client = reqwest::Client::new();
        let stray = client.get(format!("{redirect}?code=evil&state=not-ours")).send().await.unwrap();
        assert_eq!(stray.status(), 400);
        let back = client.get(format!("{redirect}?code=code-from-provider&state={state}")).send().await.unwrap();
        assert_eq!(back.status(), 200);
        assert!(back.text().await.unwrap().contains("connection halo is authorized"));
    };
    let (done, ()) = tokio::join!(pending.complete(Duration::from_secs(20)), browser);
    done.unwrap();

    // The exchange proved the PKCE verifier and named the same redirect URI.
    let exchange = &requests_to(&server, "/oauth/token").await[0];
    let form: Vec<(String, String)> =
        url::form_urlencoded::parse(&exchange.body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let verifier = field("code_verifier").unwrap();
    let digest = sha2::Sha256::digest(verifier.as_bytes());
    assert_eq!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest), challenge);
    assert_eq!(field("redirect_uri").as_deref(), Some(redirect.as_str()));

    let saved = store.load("halo").unwrap().unwrap();
    assert_eq!(saved.access_token.expose(), "ac-access-1");
    assert_eq!(saved.refresh_token.unwrap().expose(), "ac-refresh-1");
    let me = c.get("me", RequestOptions::default()).await.unwrap();
    assert_eq!(me.body["name"], json!("svc"));
}

#[tokio::test]
async fn authorize_reports_a_refusal_by_the_provider() {
    let server = MockServer::start().await;
    let section = oauth_section(
        &server,
        "authorization_code",
        &format!("auth_url = \"{}/oauth/authorize\"\nredirect_url = \"http://localhost:0/cb\"", server.uri()),
    );
    let c = connection("halo", &section);
    let pending = c.begin_authorization().await.unwrap();
    let state = query_of(pending.url(), "state").unwrap();
    let redirect = pending.redirect_url().to_string();
    let browser = async {
        let r =
            reqwest::get(format!("{redirect}?error=access_denied&error_description=The+user+said+no&state={state}"))
                .await
                .unwrap();
        assert_eq!(r.status(), 400);
    };
    let (done, ()) = tokio::join!(pending.complete(Duration::from_secs(20)), browser);
    let e = done.unwrap_err();
    assert_eq!(
        e.to_string(),
        "connection halo: authorization failed: the provider refused: access_denied: The user said no"
    );
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn authorize_gives_up_when_no_callback_comes() {
    let server = MockServer::start().await;
    let c = connection("halo", &oauth_section(&server, "authorization_code", AUTH_CODE_EXTRA));
    let pending = c.begin_authorization().await.unwrap();
    let e = pending.complete(Duration::from_millis(100)).await.unwrap_err();
    assert_eq!(e.to_string(), "connection halo: authorization failed: no callback within 100ms");
    let cc = connection("ninja", &oauth_section(&server, "client_credentials", ""));
    assert!(cc.begin_authorization().await.is_err());
}

// ---------------------------------------------------------------------------------------
// Paging

#[tokio::test]
async fn pages_by_number_until_total_pages() {
    // Flex HR: ?page=N&pageSize=K answers {"users": [...], "page": N, "totalPages": T}.
    let server = MockServer::start().await;
    for (page, users) in
        [(1, json!([{"id": 1}, {"id": 2}])), (2, json!([{"id": 3}, {"id": 4}])), (3, json!([{"id": 5}]))]
    {
        Mock::given(path("/api/users"))
            .and(query_param("instanceId", "ACME"))
            .and(query_param("pageSize", "2"))
            .and(query_param("page", page.to_string()))
            .respond_with(json_answer(json!({"users": users, "page": page, "totalPages": 3})))
            .expect(1)
            .mount(&server)
            .await;
    }
    let c = connection("flex_hr", &format!("base_url = \"{}/api/\"\n", server.uri()));
    let paging: Paging = serde_json::from_value(json!({
        "style": "page", "size_param": "pageSize", "size": 2, "total_pages": "totalPages"
    }))
    .unwrap();
    let users =
        c.get_all("users", PagingOptions::new(paging).items("users").query("instanceId", "ACME")).await.unwrap();
    let ids: Vec<i64> = users.iter().map(|u| u["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn pages_by_page_no_and_page_size_until_the_record_count() {
    // HaloITSM: ?pageinate=true&page_no=N&page_size=K answers {"record_count": R, "users": [...]}.
    let server = MockServer::start().await;
    for page in 1..=2 {
        Mock::given(path("/api/Users"))
            .and(query_param("pageinate", "true"))
            .and(query_param("page_size", "2"))
            .and(query_param("page_no", page.to_string()))
            .respond_with(json_answer(json!({
                "record_count": 4,
                "users": [{"id": page * 10 + 1}, {"id": page * 10 + 2}]
            })))
            .expect(1)
            .mount(&server)
            .await;
    }
    let c = connection("halo", &format!("base_url = \"{}/api\"\n", server.uri()));
    let paging = Paging::Page {
        page_param: "page_no".into(),
        size_param: Some("page_size".into()),
        size: Some(2),
        first: 1,
        total_pages: None,
        total_items: Some("record_count".into()),
    };
    let users = c.get_all("Users", PagingOptions::new(paging).items("users").query("pageinate", "true")).await.unwrap();
    assert_eq!(users.len(), 4);
    assert_eq!(users[3]["id"], json!(22));
}

#[tokio::test]
async fn pages_by_offset_and_limit_until_a_short_page() {
    let server = MockServer::start().await;
    for (offset, n) in [(0, 3), (3, 3), (6, 1)] {
        let items: Vec<Value> = (0..n).map(|i| json!(offset + i)).collect();
        Mock::given(path("/devices"))
            .and(query_param("offset", offset.to_string()))
            .and(query_param("limit", "3"))
            .respond_with(json_answer(json!(items)))
            .expect(1)
            .mount(&server)
            .await;
    }
    let c = connection("ninja", &format!("base_url = \"{}\"\n", server.uri()));
    let paging =
        Paging::Offset { offset_param: "offset".into(), limit_param: "limit".into(), limit: 3, total_items: None };
    let items = c.get_all("devices", PagingOptions::new(paging)).await.unwrap();
    assert_eq!(items, (0..7).map(|i| json!(i)).collect::<Vec<_>>());
}

#[tokio::test]
async fn pages_by_cursor_in_the_body() {
    let server = MockServer::start().await;
    Mock::given(path("/people"))
        .and(query_param_is_missing("after"))
        .respond_with(json_answer(json!({"data": [1, 2], "meta": {"next_cursor": "c2"}})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/people"))
        .and(query_param("after", "c2"))
        .respond_with(json_answer(json!({"data": [3], "meta": {"next_cursor": null}})))
        .expect(1)
        .mount(&server)
        .await;
    let c = connection("oomnitza", &format!("base_url = \"{}\"\n", server.uri()));
    let paging = Paging::Cursor { cursor_param: "after".into(), cursor: "meta.next_cursor".into(), total_items: None };
    let items = c.get_all("people", PagingOptions::new(paging).items("data")).await.unwrap();
    assert_eq!(items, [json!(1), json!(2), json!(3)]);
}

#[tokio::test]
async fn pages_by_next_link_in_the_body() {
    let server = MockServer::start().await;
    Mock::given(path("/users"))
        .and(query_param_is_missing("skip"))
        .respond_with(json_answer(json!({
            "value": ["a"], "@odata.nextLink": format!("{}/users?skip=1", server.uri())
        })))
        .mount(&server)
        .await;
    Mock::given(path("/users"))
        .and(query_param("skip", "1"))
        .respond_with(json_answer(json!({"value": ["b"], "@odata.nextLink": "/users?skip=2"})))
        .mount(&server)
        .await;
    Mock::given(path("/users"))
        .and(query_param("skip", "2"))
        .respond_with(json_answer(json!({"value": ["c"]})))
        .mount(&server)
        .await;
    let c = connection("graph", &format!("base_url = \"{}\"\n", server.uri()));
    let paging = Paging::NextLink { next: "@odata.nextLink".into(), total_items: None };
    let items = c.get_all("users", PagingOptions::new(paging).items("value")).await.unwrap();
    assert_eq!(items, [json!("a"), json!("b"), json!("c")]);
}

#[tokio::test]
async fn a_next_link_to_another_host_is_not_followed() {
    let server = MockServer::start().await;
    Mock::given(path("/users"))
        .respond_with(json_answer(json!({"value": ["a"], "next": "https://elsewhere.example.com/users?page=2"})))
        .expect(1)
        .mount(&server)
        .await;
    let c = connection(
        "graph",
        &format!("base_url = \"{}\"\nauth = {{ type = \"bearer\", token = \"never-leaves-1234\" }}\n", server.uri()),
    );
    let paging = Paging::NextLink { next: "next".into(), total_items: None };
    let e = c.get_all("users", PagingOptions::new(paging).items("value")).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("the next page link of page 1 leads to https://elsewhere.example.com, not to http://127.0.0.1:")
            && e.to_string().contains("credentials are only sent to base_url's origin"),
        "{e}"
    );
}

#[tokio::test]
async fn pages_by_the_link_header() {
    let server = MockServer::start().await;
    let uri = server.uri();
    Mock::given(path("/tickets"))
        .and(query_param_is_missing("page"))
        .respond_with(json_answer(json!([1, 2])).insert_header(
            "Link",
            format!(r#"<{uri}/tickets?page=2>; rel="next", <{uri}/tickets?page=3>; rel="last""#).as_str(),
        ))
        .mount(&server)
        .await;
    Mock::given(path("/tickets"))
        .and(query_param("page", "2"))
        .respond_with(
            json_answer(json!([3])).insert_header("Link", r#"</tickets?page=3>; rel="next", </tickets>; rel="first""#),
        )
        .mount(&server)
        .await;
    Mock::given(path("/tickets"))
        .and(query_param("page", "3"))
        .respond_with(json_answer(json!([4])).insert_header("Link", r#"</tickets>; rel="first""#))
        .mount(&server)
        .await;
    let c = connection("itsm", &format!("base_url = \"{uri}\"\n"));
    let items = c.get_all("tickets", PagingOptions::new(Paging::LinkHeader)).await.unwrap();
    assert_eq!(items, [json!(1), json!(2), json!(3), json!(4)]);
}

#[tokio::test]
async fn more_pages_than_max_pages_is_an_error_not_a_partial_list() {
    let server = MockServer::start().await;
    Mock::given(path("/endless"))
        .respond_with(|r: &Request| {
            let page: u64 = query_of(&r.url, "page").and_then(|p| p.parse().ok()).unwrap_or(1);
            json_answer(json!({"items": [page], "next": format!("/endless?page={}", page + 1)}))
        })
        .mount(&server)
        .await;
    let c = connection("loop", &format!("base_url = \"{}\"\nmax_pages = 3\n", server.uri()));
    let paging = Paging::NextLink { next: "next".into(), total_items: None };
    let e = c.get_all("endless", PagingOptions::new(paging.clone()).items("items")).await.unwrap_err();
    assert!(matches!(e, ConnectionError::TooManyPages { max_pages: 3, .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "connection loop: GET /endless has more than 3 pages; raise max_pages or narrow the query"
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
    let mut options = PagingOptions::new(paging).items("items");
    options.max_pages = Some(5);
    assert!(c.get_all("endless", options).await.is_err());
    assert_eq!(server.received_requests().await.unwrap().len(), 8);
}

/// A server that caps pages at `cap` items whatever size was asked for, as HaloITSM, Graph
/// and most HR APIs do: `?page=N` (from 1) or `?offset=O`, answering `{"items", "totalPages",
/// "total"}` over `count` items.
async fn capped_server(count: u64, cap: u64) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(path("/people"))
        .respond_with(move |r: &Request| {
            let start = match (query_of(&r.url, "page"), query_of(&r.url, "offset")) {
                (Some(page), _) => (page.parse::<u64>().unwrap() - 1) * cap,
                (None, Some(offset)) => offset.parse().unwrap(),
                (None, None) => 0,
            };
            let items: Vec<u64> = (start..count.min(start + cap)).collect();
            json_answer(json!({"items": items, "totalPages": count.div_ceil(cap), "total": count}))
        })
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn a_capped_page_size_loses_nothing_when_the_answers_carry_a_total() {
    let server = capped_server(6, 2).await;
    let c = connection("hr", &format!("base_url = \"{}\"\n", server.uri()));
    let everyone: Vec<Value> = (0..6).map(|i| json!(i)).collect();
    for settings in [
        json!({"style": "page", "size_param": "pageSize", "size": 100, "total_pages": "totalPages"}),
        json!({"style": "page", "size_param": "pageSize", "size": 100, "total_items": "total"}),
        json!({"style": "page", "size_param": "pageSize", "size": 100, "total_pages": "totalPages", "total_items": "total"}),
        json!({"style": "offset", "limit": 100, "total_items": "total"}),
    ] {
        let paging: Paging = serde_json::from_value(settings.clone()).unwrap();
        let items = c.get_all("people", PagingOptions::new(paging).items("items")).await.unwrap();
        assert_eq!(items, everyone, "{settings}");
    }
    // Without a total, a short page is the last: the README says so, and what it assumes.
    let paging: Paging =
        serde_json::from_value(json!({"style": "page", "size_param": "pageSize", "size": 100})).unwrap();
    assert_eq!(c.get_all("people", PagingOptions::new(paging).items("items")).await.unwrap().len(), 2);
}

#[tokio::test]
async fn pages_that_contradict_their_total_are_an_error_naming_the_page() {
    let server = MockServer::start().await;
    // Page 2 is empty although there are 3 pages.
    for (page, body) in [
        (1, json!({"items": [1, 2], "totalPages": 3, "total": 6})),
        (2, json!({"items": [], "totalPages": 3, "total": 6})),
    ] {
        Mock::given(path("/gap"))
            .and(query_param("page", page.to_string()))
            .respond_with(json_answer(body))
            .mount(&server)
            .await;
    }
    // The total shrinks between pages: people moved to pages already read.
    for (page, body) in [
        (1, json!({"items": [1, 2], "totalPages": 3, "total": 6})),
        (2, json!({"items": [5, 6], "totalPages": 2, "total": 4})),
    ] {
        Mock::given(path("/shrinks"))
            .and(query_param("page", page.to_string()))
            .respond_with(json_answer(body))
            .mount(&server)
            .await;
    }
    let c = connection("hr", &format!("base_url = \"{}\"\n", server.uri()));
    let pages = |total: &str| -> Paging {
        serde_json::from_value(
            json!({"style": "page", total: if total == "total_pages" { "totalPages" } else { "total" }}),
        )
        .unwrap()
    };
    let e = c.get_all("gap", PagingOptions::new(pages("total_pages")).items("items")).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "connection hr: paging GET /gap: page 2 is empty, but there are 3 pages; the API's pages and its total disagree"
    );
    assert!(!e.is_transient());
    let e = c.get_all("gap", PagingOptions::new(pages("total_items")).items("items")).await.unwrap_err();
    assert!(e.to_string().contains("page 2 is empty, but 2 items of 6 were read"), "{e}");
    let e = c.get_all("shrinks", PagingOptions::new(pages("total_pages")).items("items")).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("page 2 says `totalPages` is 2, the page before said 3: the list changed while it was read"),
        "{e}"
    );
    assert!(e.is_transient(), "read again later, the list is likely whole");
    let e = c.get_all("shrinks", PagingOptions::new(pages("total_items")).items("items")).await.unwrap_err();
    assert!(e.to_string().contains("page 2 says `total` is 4, the page before said 6"), "{e}");
    // Offsets, the same.
    let offsets: Paging =
        serde_json::from_value(json!({"style": "offset", "limit": 2, "total_items": "total"})).unwrap();
    Mock::given(path("/offsets"))
        .and(query_param("offset", "0"))
        .respond_with(json_answer(json!({"items": [1, 2], "total": 6})))
        .mount(&server)
        .await;
    Mock::given(path("/offsets"))
        .and(query_param("offset", "2"))
        .respond_with(json_answer(json!({"items": [], "total": 6})))
        .mount(&server)
        .await;
    let e = c.get_all("offsets", PagingOptions::new(offsets).items("items")).await.unwrap_err();
    assert!(e.to_string().contains("page 2 is empty, but 2 items of 6 were read"), "{e}");
    // A next link list that ends short of its count.
    Mock::given(path("/graph"))
        .respond_with(json_answer(json!({"value": [1], "@odata.count": 3})))
        .mount(&server)
        .await;
    let graph = Paging::NextLink { next: "@odata.nextLink".into(), total_items: Some("@odata.count".into()) };
    let e = c.get_all("graph", PagingOptions::new(graph).items("value")).await.unwrap_err();
    assert!(e.to_string().contains("the list ended after page 1 with 1 items, but the answers say there are 3"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Politeness

fn retrying(server: &MockServer, extra: &str) -> String {
    format!(
        "base_url = \"{}\"\nretry = {{ max_attempts = 3, base_delay = \"10ms\", max_delay = \"5s\" }}\n{extra}",
        server.uri()
    )
}

#[tokio::test]
async fn a_429_waits_for_retry_after() {
    let server = MockServer::start().await;
    Mock::given(path("/users"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "1"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(path("/users")).respond_with(json_answer(json!([]))).mount(&server).await;
    let c = connection("halo", &retrying(&server, ""));
    let started = Instant::now();
    c.get("users", RequestOptions::default()).await.unwrap();
    // The backoff alone would have waited 10-20 ms.
    assert!(started.elapsed() >= Duration::from_secs(1), "{:?}", started.elapsed());
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_retry_after_date_is_honoured_and_a_long_one_ends_the_call() {
    let server = MockServer::start().await;
    let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(2));
    Mock::given(path("/soon"))
        .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", soon.as_str()))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(path("/soon")).respond_with(json_answer(json!([]))).mount(&server).await;
    Mock::given(path("/later"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "120"))
        .expect(1)
        .mount(&server)
        .await;
    let c = connection("halo", &retrying(&server, ""));
    c.get("soon", RequestOptions::default()).await.unwrap();
    // The retry was not sent before the date the peer named.
    let not_before = httpdate::parse_http_date(&soon).unwrap();
    assert!(std::time::SystemTime::now() >= not_before);
    let requests = requests_to(&server, "/soon").await;
    assert_eq!(requests.len(), 2);
    let e = c.get("later", RequestOptions::default()).await.unwrap_err();
    assert!(e.is_transient());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(120)));
}

#[tokio::test]
async fn a_500_then_success_is_retried() {
    let server = MockServer::start().await;
    Mock::given(path("/users")).respond_with(ResponseTemplate::new(500)).up_to_n_times(1).mount(&server).await;
    Mock::given(path("/users")).respond_with(json_answer(json!(["ok"]))).mount(&server).await;
    let c = connection("halo", &retrying(&server, ""));
    assert_eq!(c.put("users", RequestOptions::default()).await.unwrap().body, json!(["ok"]));
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn retries_stop_after_max_attempts_and_spare_non_idempotent_calls() {
    let server = MockServer::start().await;
    Mock::given(path("/busy"))
        .respond_with(ResponseTemplate::new(503).set_body_string("try later"))
        .mount(&server)
        .await;
    let c = connection("halo", &retrying(&server, ""));
    let e = c.get("busy", RequestOptions::default()).await.unwrap_err();
    assert_eq!((e.status(), e.is_transient()), (Some(503), true));
    assert_eq!(requests_to(&server, "/busy").await.len(), 3);

    // A POST may have been processed before the 503: it is not sent twice, and the error
    // (no longer the bare 503, which made the run retry and send it again) says why, for good.
    server.reset().await;
    Mock::given(path("/busy")).respond_with(ResponseTemplate::new(503)).mount(&server).await;
    let e = c.post("busy", RequestOptions::default()).await.unwrap_err();
    assert!(matches!(e, ConnectionError::OutcomeUnknown { .. }), "{e:?}");
    assert!(!e.is_transient());
    assert!(e.to_string().starts_with("connection halo: POST /busy may have been processed (it answered 503)"), "{e}");
    assert_eq!(requests_to(&server, "/busy").await.len(), 1);

    // A 429 was refused unprocessed: sending the POST again is safe.
    server.reset().await;
    Mock::given(path("/limited")).respond_with(ResponseTemplate::new(429)).up_to_n_times(1).mount(&server).await;
    Mock::given(path("/limited")).respond_with(ResponseTemplate::new(201)).mount(&server).await;
    assert_eq!(c.post("limited", RequestOptions::default()).await.unwrap().status, 201);
}

#[tokio::test]
async fn a_timeout_is_transient_and_retried() {
    let server = MockServer::start().await;
    Mock::given(path("/slow"))
        .respond_with(json_answer(json!([])).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;
    let c = connection(
        "halo",
        &format!(
            "base_url = \"{}\"\ntimeout = \"200ms\"\nretry = {{ max_attempts = 2, base_delay = \"10ms\" }}\n",
            server.uri()
        ),
    );
    let e = c.get("slow", RequestOptions::default()).await.unwrap_err();
    assert!(matches!(e, ConnectionError::Timeout { .. }), "{e:?}");
    assert!(e.is_transient());
    assert_eq!(e.to_string(), "connection halo: GET /slow timed out after 200ms");
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn an_unreachable_peer_is_transient() {
    let c = connection(
        "halo",
        &format!(
            "base_url = \"http://127.0.0.1:{}\"\nretry = {{ max_attempts = 2, base_delay = \"10ms\" }}\n",
            closed_port()
        ),
    );
    let e = c.post("users", RequestOptions::default()).await.unwrap_err();
    assert!(matches!(e, ConnectionError::Connect { .. }), "{e:?}");
    assert!(e.is_transient());
    assert!(e.to_string().starts_with("connection halo: cannot reach 127.0.0.1: "), "{e}");
}

#[tokio::test]
async fn the_rate_limit_spaces_requests() {
    let server = MockServer::start().await;
    Mock::given(path("/users")).respond_with(json_answer(json!([]))).expect(4).mount(&server).await;
    // Two at once, then one every half second.
    let c = connection(
        "halo",
        &format!("base_url = \"{}\"\nrate_limit = {{ requests = 2, per_seconds = 1 }}\n", server.uri()),
    );
    let started = Instant::now();
    for _ in 0..4 {
        c.get("users", RequestOptions::default()).await.unwrap();
    }
    assert!(started.elapsed() >= Duration::from_millis(950), "{:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------
// Secrets

/// A peer that answers 500 with everything it received, credentials included.
fn echo(status: u16) -> impl Fn(&Request) -> ResponseTemplate {
    move |r: &Request| {
        let headers: Vec<String> = r.headers.iter().map(|(k, v)| format!("{k}={}", v.to_str().unwrap_or(""))).collect();
        ResponseTemplate::new(status).set_body_string(format!(
            "query={} headers={} body={}",
            r.url.query().unwrap_or(""),
            headers.join(";"),
            String::from_utf8_lossy(&r.body)
        ))
    }
}

#[tokio::test]
async fn secrets_never_reach_errors_answers_debug_or_logs() {
    let (logs, _guard) = LogCapture::start();
    let canary = "canary-7f3a9c";
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(token_answer(&format!("{canary}-access"), Some(&format!("{canary}-refresh")), 3600))
        .mount(&server)
        .await;
    Mock::given(path("/echo")).respond_with(echo(500)).mount(&server).await;
    let uri = server.uri();
    let retry = "retry = { max_attempts = 2, base_delay = \"1ms\" }";
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), format!("{canary}-header-file\n")).unwrap();
    let sections = [
        format!("base_url = \"{uri}\"\n{retry}\nauth = {{ type = \"api_key\", name = \"key\", value = \"{canary}-query\", in = \"query\" }}\n"),
        format!("base_url = \"{uri}\"\n{retry}\nauth = {{ type = \"api_key\", name = \"X-Key\", value = \"{canary}-header\" }}\n"),
        format!("base_url = \"{uri}\"\n{retry}\nauth = {{ type = \"api_key\", name = \"key\", value = \"{canary}-form\", in = \"form\" }}\n"),
        format!("base_url = \"{uri}\"\n{retry}\nauth = {{ type = \"basic\", username = \"svc\", password = \"{canary}-password\" }}\n"),
        format!("base_url = \"{uri}\"\n{retry}\nauth = {{ type = \"bearer\", token = \"{canary}-bearer\" }}\n"),
        format!(
            "base_url = \"{uri}\"\n{retry}\nheaders = {{ X-Tenant-Key = \"${{file:{}}}\" }}\n",
            key_file.path().display()
        ),
        format!("base_url = \"{uri}\"\n{retry}\n[auth]\ntype = \"oauth2\"\ngrant = \"client_credentials\"\ntoken_url = \"{uri}/oauth/token\"\nclient_id = \"id\"\nclient_secret = \"{canary}-client-secret\"\n"),
    ];
    let mut seen = Vec::new();
    for (i, section) in sections.iter().enumerate() {
        let config: tripline::connection::ConnectionConfig = toml::from_str(section).unwrap();
        seen.push(format!("{config:?}"));
        let c = connection("echo", section);
        seen.push(format!("{c:?}"));
        let e = c.get("echo", RequestOptions::default()).await.unwrap_err();
        assert_eq!(e.status(), Some(500), "{i}: {e}");
        seen.push(e.to_string());
        seen.push(format!("{e:?}"));
        let allowed = RequestOptions { allow_error_status: true, ..RequestOptions::default() };
        let r = c.get("echo", allowed).await.unwrap();
        let body = r.body.as_str().unwrap().to_string();
        assert!(body.contains("**REDACTED**"), "{i}: the peer did echo: {body}");
        seen.push(body);
        seen.push(format!("{r:?}"));
    }
    // The peer really was sent the credentials: the echo above is what hid them.
    let received = server.received_requests().await.unwrap();
    assert!(received.iter().any(|r| r.url.query().unwrap_or("").contains(canary)));

    // Failures before an answer: the query string (with its key) stays out of messages.
    let unreachable = connection(
        "echo",
        &format!(
            "base_url = \"http://127.0.0.1:{}\"\n{retry}\nauth = {{ type = \"api_key\", name = \"key\", value = \"{canary}-query\", in = \"query\" }}\n",
            closed_port()
        ),
    );
    let e = unreachable.get("echo", RequestOptions::default()).await.unwrap_err();
    seen.push(e.to_string());
    seen.push(format!("{e:?}"));

    let logged = logs.text();
    assert!(logged.contains("Request failed; trying again."), "logs were captured: {logged}");
    for text in seen.iter().chain([&logged]) {
        assert!(!text.contains(canary), "a secret leaked: {text}");
    }
}

/// Two workers on one PostgreSQL store (two stores, two connections each, as two processes
/// would have): their callers, all at once, find the token expired; one refresh is made, and
/// the rotated refresh token is saved once and used by both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_sharing_a_store_refresh_a_token_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(body_string_contains("refresh_token=refresh-1"))
        .respond_with(token_answer("access-2", Some("refresh-2"), 3600).set_delay(Duration::from_millis(300)))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/api/users"))
        .and(bearer_token("access-2"))
        .respond_with(json_answer(json!([])))
        .expect(20)
        .mount(&server)
        .await;
    let url = crate::common::postgres::shared().create_db();
    let settings = crate::store::pg_settings(&url);
    let worker = |_: usize| -> Arc<dyn TokenStore> {
        let store: Arc<dyn tripline::store::Store> =
            Arc::new(tripline::store::postgres::PgStore::connect(&settings).unwrap());
        Arc::new(tripline::connection::StoreTokens(store))
    };
    let (a, b) = (worker(0), worker(1));
    a.save(
        "halo",
        &StoredToken {
            access_token: Token::new("access-1"),
            refresh_token: Some(Token::new("refresh-1")),
            expires_at: Some(Utc::now() - chrono::Duration::seconds(60)),
        },
    )
    .unwrap();
    let section = oauth_section(&server, "authorization_code", AUTH_CODE_EXTRA);
    let (ca, cb) = (connection_with_store("halo", &section, a.clone()), connection_with_store("halo", &section, b));
    let calls =
        (0..10).flat_map(|_| [ca.get("users", RequestOptions::default()), cb.get("users", RequestOptions::default())]);
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
    let saved = a.load("halo").unwrap().unwrap();
    assert_eq!(saved.refresh_token.as_ref().map(|t| t.expose().to_string()).as_deref(), Some("refresh-2"));
}
