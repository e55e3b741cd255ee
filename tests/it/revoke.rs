//! `tripline connection revoke NAME` through the real binary, against a local OAuth2 provider
//! (wiremock on loopback) that records the revocation requests (RFC 7009).

use std::sync::Arc;

use base64::Engine as _;
use chrono::Utc;
use serde_json::json;
use tripline::connection::{StoreTokens, StoredToken, Token, TokenStore};
use wiremock::matchers::{bearer_token, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::common::project::Project;

fn tokens(p: &Project) -> StoreTokens {
    let store = tripline::store::sqlite::SqliteStore::open_dir(&p.path().join("data")).unwrap();
    StoreTokens(Arc::new(store))
}

fn form(r: &Request) -> Vec<(String, String)> {
    url::form_urlencoded::parse(&r.body).into_owned().collect()
}

fn basic(r: &Request) -> String {
    let h = r.headers.get("authorization").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let b64 = h.strip_prefix("Basic ").unwrap_or_default();
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_default()).unwrap()
}

async fn requests_to(server: &MockServer, at: &str) -> Vec<Request> {
    server.received_requests().await.unwrap().into_iter().filter(|r| r.url.path() == at).collect()
}

fn section(name: &str, server: &MockServer, grant: &str, extra: &str) -> String {
    let uri = server.uri();
    let code = match grant {
        "authorization_code" => {
            format!(", auth_url = \"{uri}/authorize\", redirect_url = \"http://127.0.0.1:0/callback\"")
        }
        _ => String::new(),
    };
    format!(
        "[connections.{name}]\nbase_url = \"{uri}/api/\"\ntest = {{ path = \"me\" }}\n\
         auth = {{ type = \"oauth2\", grant = \"{grant}\", token_url = \"{uri}/token\", client_id = \"tripline\", \
         client_secret = \"${{CLIENT_SECRET}}\"{code}{extra} }}\n"
    )
}

fn project(sections: &str) -> Project {
    let p = Project::new(&format!("[engine]\ndata_dir = \"data\"\n\n{sections}"));
    p.set_env("CLIENT_SECRET", "s3cret-client-7781");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_authorization_code_connection_asks_the_provider_and_forgets_the_tokens() {
    let provider = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/me"))
        .and(bearer_token("at-1"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&provider)
        .await;
    Mock::given(method("POST")).and(path("/revoke")).respond_with(ResponseTemplate::new(200)).mount(&provider).await;
    let p = project(&section(
        "halo",
        &provider,
        "authorization_code",
        &format!(", revoke_url = \"{}/revoke\"", provider.uri()),
    ));
    let expires = Some(Utc::now() + chrono::Duration::hours(1));
    let stored =
        StoredToken { access_token: Token::new("at-1"), refresh_token: Some(Token::new("rt-1")), expires_at: expires };
    tokens(&p).save("halo", &stored).unwrap();

    let ran = p.run(&["connection", "test", "halo"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let ran = p.run(&["connection", "revoke", "halo"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("the provider revoked the tokens of \"halo\""), "{ran:?}");

    // RFC 7009: the refresh token, then the access token, each with its hint and the
    // client's credentials (basic auth, the default client_auth).
    let revocations = requests_to(&provider, "/revoke").await;
    assert_eq!(revocations.len(), 2, "{revocations:?}");
    let bodies: Vec<Vec<(String, String)>> = revocations.iter().map(form).collect();
    let pairs =
        |t: &str, hint: &str| vec![("token".to_string(), t.to_string()), ("token_type_hint".into(), hint.into())];
    assert_eq!(bodies[0], pairs("rt-1", "refresh_token"));
    assert_eq!(bodies[1], pairs("at-1", "access_token"));
    for r in &revocations {
        assert_eq!(basic(r), "tripline:s3cret-client-7781");
    }
    assert_eq!(tokens(&p).load("halo").unwrap(), None, "the stored tokens are deleted");

    // Not authorized until a person logs in again; nothing is sent to the API.
    let ran = p.run(&["connection", "test", "halo"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(
        ran.stderr.contains("connection halo is not authorized: run `tripline connection authorize halo`"),
        "{ran:?}"
    );
    assert_eq!(requests_to(&provider, "/api/me").await.len(), 1);
    assert!(!ran.stderr.contains("s3cret-client") && !ran.stdout.contains("rt-1"), "{ran:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_credentials_connection_fetches_a_new_token_after_a_revoke() {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "cc-1", "token_type": "Bearer", "expires_in": 3600})),
        )
        .mount(&provider)
        .await;
    Mock::given(method("GET")).and(path("/api/me")).respond_with(ResponseTemplate::new(200)).mount(&provider).await;
    // No revoke_url: the tokens are forgotten here only.
    let p = project(&section("graph", &provider, "client_credentials", ""));
    assert_eq!(p.run(&["connection", "test", "graph"]).code, 0);
    assert_eq!(requests_to(&provider, "/token").await.len(), 1);
    assert_eq!(p.run(&["connection", "test", "graph"]).code, 0);
    assert_eq!(requests_to(&provider, "/token").await.len(), 1, "the stored token is used again");
    assert!(tokens(&p).load("graph").unwrap().is_some());

    let ran = p.run(&["connection", "revoke", "graph"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("deleted here (no auth.revoke_url"), "{ran:?}");
    assert_eq!(tokens(&p).load("graph").unwrap(), None);
    assert_eq!(p.run(&["connection", "test", "graph"]).code, 0);
    assert_eq!(requests_to(&provider, "/token").await.len(), 2, "a new token was fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_endpoint_that_redirects_elsewhere_gets_no_credentials_sent_on() {
    let provider = MockServer::start().await;
    let elsewhere = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/revoke"))
        .respond_with(ResponseTemplate::new(307).insert_header("location", format!("{}/steal", elsewhere.uri())))
        .mount(&provider)
        .await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200)).mount(&elsewhere).await;
    let p = project(&section(
        "halo",
        &provider,
        "authorization_code",
        &format!(", revoke_url = \"{}/revoke\"", provider.uri()),
    ));
    let stored =
        StoredToken { access_token: Token::new("at-9"), refresh_token: Some(Token::new("rt-9")), expires_at: None };
    tokens(&p).save("halo", &stored).unwrap();
    let ran = p.run(&["connection", "revoke", "halo"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("the revocation endpoint refused"), "{ran:?}");
    assert!(ran.stderr.contains("the tokens were deleted here, revoke them at the provider as well"), "{ran:?}");
    assert!(elsewhere.received_requests().await.unwrap().is_empty(), "the redirect was followed");
    assert_eq!(tokens(&p).load("halo").unwrap(), None, "deleted even though the provider refused");
    assert!(!ran.stderr.contains("rt-9") && !ran.stderr.contains("s3cret-client"), "{ran:?}");
}

#[test]
fn revoke_urls_follow_the_token_url_rules() {
    for (url, message) in [
        ("ftp://idp.example.com/revoke", "auth.revoke_url must be an http or https URL"),
        ("https://user:pw@idp.example.com/revoke", "auth.revoke_url must not carry credentials"),
        ("https://idp.example.com/revoke#x", "auth.revoke_url must not have a #fragment"),
    ] {
        let p = project(&format!(
            "[connections.halo]\nbase_url = \"https://api.example.com/\"\n\
             auth = {{ type = \"oauth2\", grant = \"client_credentials\", token_url = \"https://idp.example.com/token\", \
             client_id = \"x\", client_secret = \"${{CLIENT_SECRET}}\", revoke_url = \"{url}\" }}\n"
        ));
        let ran = p.run(&["check"]);
        assert_eq!(ran.code, 1, "{ran:?}");
        assert!(ran.stdout.contains(message), "{url}: {ran:?}");
        assert!(ran.stdout.contains("tripline.toml:6:"), "{ran:?}");
    }
    let p = project("[connections.plain]\nbase_url = \"https://api.example.com/\"\nauth = { type = \"bearer\", token = \"${CLIENT_SECRET}\" }\n");
    let ran = p.run(&["connection", "revoke", "plain"]);
    assert_eq!(ran.code, 1);
    assert!(ran.stderr.contains("only OAuth2 connections have tokens to revoke"), "{ran:?}");
}
