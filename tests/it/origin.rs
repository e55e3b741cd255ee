//! Credentials go to `base_url`'s origin and nowhere else, whatever a path, a next-page link
//! or a `Link` header looks like: every URL is checked after it is resolved. Another host
//! (127.0.0.2, a listener that counts every connection) must see nothing at all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt as _;
use tripline::class::Classify;
use tripline::connection::{Connection, ConnectionError, Paging, PagingOptions, RequestOptions};
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::common::http::connection;
use crate::common::project::Project;

/// A listener on another loopback address that counts the connections made to it (and
/// answers each with an empty 200, so that a leak would look like a success).
struct Trap {
    host: String,
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl Trap {
    async fn start() -> Trap {
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.expect("127.0.0.2 is on loopback");
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").await;
            }
        });
        Trap { host: format!("127.0.0.2:{port}"), port, accepted }
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Every spelling we know of that a URL parser (WHATWG, which the url crate and browsers
/// follow) can turn into another host, or that looks as if it could.
fn hostile_paths(trap: &Trap, base: &str) -> Vec<String> {
    let (h, port) = (&trap.host, trap.port);
    vec![
        // Backslashes read as slashes, mixed slashes.
        format!("\\\\{h}/a"),
        format!("\\/{h}/a"),
        format!("/\\{h}/a"),
        format!("\\\\\\{h}/a"),
        format!("./\\\\{h}/a"),
        // Leading spaces and C0 control characters are stripped; tabs and newlines anywhere.
        format!(" //{h}/b"),
        format!("\t//{h}/c"),
        format!("\n//{h}/c"),
        format!("\r\n\\\\{h}/c"),
        format!("\u{0}//{h}/c"),
        format!("\u{1f}\u{c} \\/{h}/c"),
        format!("/\t/{h}/c"),
        format!("\\\t\\{h}/c"),
        // Scheme-relative and scheme-only forms.
        format!("//{h}/d"),
        format!("///{h}/d"),
        format!("http:{h}/e"),
        format!("http:\\\\{h}/e"),
        format!("http:/{h}/e"),
        format!("HTTP://{h}/e"),
        format!(" http://{h}/e"),
        format!("https:{h}/e"),
        format!("https://{h}/e"),
        // User info: the host is what follows the last `@`.
        format!("//user:pw@{h}/f"),
        format!("//{base}@{h}/f"),
        format!("http://{base}@{h}/f"),
        format!("http://{h}\\@{base}/f"),
        format!("http://{base}/f@{h}"),
        format!("//{base}%40{h}/f"),
        // Other spellings of 127.0.0.2.
        format!("//0x7f.0.0.2:{port}/g"),
        format!("//2130706434:{port}/g"),
        format!("//127.2:{port}/g"),
        format!("//0177.0.0.2:{port}/g"),
        format!("//127\u{3002}0\u{3002}0\u{3002}2:{port}/g"),
        format!("//\u{ff11}\u{ff12}\u{ff17}.0.0.2:{port}/g"),
        format!("//127.0.0.2.:{port}/g"),
        format!("//127.0.0.2%3A{port}/g"),
        // IPv6 literals, the IPv4-mapped ones reaching 127.0.0.2.
        format!("//[::ffff:127.0.0.2]:{port}/h"),
        format!("//[::ffff:7f00:2]:{port}/h"),
        format!("http://[::ffff:127.0.0.2]:{port}/h"),
        format!("//[::1]:{port}/h"),
        // Percent-encoding: stays a path (or is refused), never a host.
        format!("%2F%2F{h}/i"),
        format!("%5C%5C{h}/i"),
        format!("%2f%5c{h}/i"),
        format!("/%2e%2e//{h}/i"),
        format!("..//{h}/i"),
        format!("?next=//{h}/j"),
        format!("#//{h}/j"),
        // Other schemes.
        format!("ftp://{h}/k"),
        format!("ws://{h}/k"),
        format!("file://{h}/k"),
        format!("javascript:fetch('//{h}/k')"),
        format!("data:text/plain,{h}"),
        format!("blob:http://{h}/k"),
    ]
}

/// The connection's sections, one per way credentials travel.
fn auth_sections(base_uri: &str) -> Vec<(&'static str, String)> {
    let base = format!("base_url = \"{base_uri}/api/\"\nretry = {{ max_attempts = 1 }}\n");
    vec![
        ("basic", format!("{base}auth = {{ type = \"basic\", username = \"svc\", password = \"origin-pw-1234\" }}\n")),
        ("bearer", format!("{base}auth = {{ type = \"bearer\", token = \"origin-bearer-1234\" }}\n")),
        (
            "api_key header",
            format!("{base}auth = {{ type = \"api_key\", name = \"X-Api-Key\", value = \"origin-key-1234\" }}\n"),
        ),
        (
            "api_key query",
            format!(
                "{base}auth = {{ type = \"api_key\", name = \"apikey\", value = \"origin-q-1234\", in = \"query\" }}\n"
            ),
        ),
    ]
}

/// A refusal names the connection and says where credentials go.
fn assert_refused(e: &ConnectionError, what: &str) {
    let text = e.to_string();
    assert!(matches!(e, ConnectionError::ForeignOrigin { .. }), "{what}: {e:?}");
    assert!(!e.is_transient(), "{what}: a refusal is permanent");
    assert!(text.starts_with("connection hr: "), "{what}: {text}");
    assert!(text.contains("credentials are only sent to base_url's origin, so nothing was sent"), "{what}: {text}");
}

/// What one call did: refused, refused as not a URL at all, or sent to the base server.
#[derive(Debug, PartialEq)]
enum Outcome {
    Refused,
    NotAUrl,
    OnBase,
}

fn outcome<T: std::fmt::Debug>(what: &str, result: Result<T, ConnectionError>) -> Outcome {
    match result {
        Ok(_) => Outcome::OnBase,
        Err(e @ ConnectionError::ForeignOrigin { .. }) => {
            assert_refused(&e, what);
            Outcome::Refused
        }
        Err(ConnectionError::Invalid { message, .. }) if message.contains("is not a valid path") => Outcome::NotAUrl,
        Err(e) => panic!("{what}: {e:?}"),
    }
}

/// The base server: every path answers, and `/api/start` answers a page whose next page is
/// `next` (in the body and in the `Link` header).
async fn base_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(path("/api/start"))
        .respond_with(|r: &Request| {
            let next = r.url.query_pairs().find(|(k, _)| k == "to").map(|(_, v)| v.into_owned()).unwrap_or_default();
            let link = format!("<{}>; rel=\"next\"", next.replace(['\r', '\n'], ""));
            let mut answer = ResponseTemplate::new(200).set_body_json(json!({"items": [1], "next": next}));
            if let Ok(value) = reqwest::header::HeaderValue::from_str(&link) {
                answer = answer.insert_header("Link", value);
            }
            answer
        })
        .mount(&server)
        .await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"items": []})))
        .mount(&server)
        .await;
    server
}

async fn calls(c: &Connection, form: &str) -> Vec<(String, Outcome)> {
    let mut out = Vec::new();
    let what = |verb: &str| format!("{verb} {form:?}");
    out.push((what("get"), outcome(&what("get"), c.get(form, RequestOptions::default()).await)));
    let body = RequestOptions { json: Some(json!({"a": 1})), ..RequestOptions::default() };
    out.push((what("post"), outcome(&what("post"), c.post(form, body).await)));
    let page = Paging::Page {
        page_param: "page".into(),
        size_param: None,
        size: None,
        first: 1,
        total_pages: None,
        total_items: None,
    };
    let all = c.get_all(form, PagingOptions::new(page).items("items")).await;
    out.push((what("get_all"), outcome(&what("get_all"), all)));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_path_or_page_link_sends_credentials_to_another_host() {
    let trap = Trap::start().await;
    let server = base_server().await;
    let base = server.address().to_string();
    let forms = hostile_paths(&trap, &base);
    let mut refused = std::collections::BTreeSet::new();
    let mut stayed = std::collections::BTreeSet::new();
    for (auth, section) in auth_sections(&server.uri()) {
        let c = connection("hr", &section);
        for form in &forms {
            for (what, got) in calls(&c, form).await {
                if got == Outcome::Refused {
                    refused.insert(form.clone());
                } else {
                    stayed.insert(format!("{what}: {got:?}"));
                }
                assert_eq!(trap.connections(), 0, "{auth}: {what} reached the other host");
            }
            // The same spellings as next-page links, in the body and in the Link header.
            for paging in [Paging::NextLink { next: "next".into(), total_items: None }, Paging::LinkHeader] {
                let options = PagingOptions::new(paging.clone()).items("items").query("to", form.as_str());
                let what = format!("{auth}: get_all {paging:?} with a next link {form:?}");
                match c.get_all("start", options).await {
                    Err(e @ ConnectionError::ForeignOrigin { .. }) => {
                        assert_refused(&e, &what);
                        assert!(e.to_string().contains("the next page link of page 1"), "{what}: {e}");
                    }
                    // Stayed on the base server (a path there), or not a URL.
                    Ok(_) | Err(ConnectionError::Paging { .. }) | Err(ConnectionError::TooManyPages { .. }) => {}
                    Err(e) => panic!("{what}: {e:?}"),
                }
                assert_eq!(trap.connections(), 0, "{what} reached the other host");
            }
        }
    }
    // The issue's spellings and every form that names the other host are refused, not merely
    // lucky.
    for must in [
        format!("\\\\{}/a", trap.host),
        format!(" //{}/b", trap.host),
        format!("\t//{}/c", trap.host),
        format!("//{}/d", trap.host),
        format!("http:{}/e", trap.host),
        format!("//{base}@{}/f", trap.host),
        format!("//0x7f.0.0.2:{}/g", trap.port),
        format!("//[::ffff:127.0.0.2]:{}/h", trap.port),
        format!("ftp://{}/k", trap.host),
    ] {
        assert!(refused.contains(&must), "{must:?} was not refused; refused: {refused:#?}; not refused: {stayed:#?}");
    }
    // The base server saw requests (the forms that stay paths on it), none with a host in
    // its path that a proxy could take for a target.
    let seen = server.received_requests().await.unwrap();
    assert!(!seen.is_empty());
    assert_eq!(trap.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_names_the_connection_the_origins_and_the_rule() {
    let trap = Trap::start().await;
    let server = base_server().await;
    let c = connection("hr", &auth_sections(&server.uri())[0].1);
    let e = c.get(&format!("\\\\{}/a", trap.host), RequestOptions::default()).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "connection hr: the path \"\\\\\\\\{}/a\" leads to http://{}, not to {}: credentials are only sent to \
             base_url's origin, so nothing was sent",
            trap.host,
            trap.host,
            server.uri()
        )
    );
    let e = c.get(&format!("\t//{}/c", trap.host), RequestOptions::default()).await.unwrap_err();
    assert!(
        e.to_string().starts_with("connection hr: the path \"\\t//127.0.0.2:"),
        "control characters are shown escaped: {e}"
    );
    // Same origin, user info added: refused too (it would replace the connection's own
    // credentials).
    let e = c.get(&format!("http://someone@{}/api/x", server.address()), RequestOptions::default()).await.unwrap_err();
    assert!(e.to_string().contains("with user info"), "{e}");
    assert_eq!(trap.connections(), 0);
}

// ---------------------------------------------------------------------------------------
// Through scripts: a job run and a dry run (`tripline test`)

const PASSWORD: &str = "origin-canary-Zq81";

fn project(server: &MockServer) -> Project {
    let p = Project::new(&format!(
        r#"
[connections.hr]
base_url = "{}/api/"
auth = {{ type = "basic", username = "svc", password = "${{HR_PASSWORD}}" }}
retry = {{ max_attempts = 1 }}

[jobs.script]
schedule = "0 0 * * *"
script = "script.rhai"
"#,
        server.uri()
    ));
    p.script("script.rhai", "");
    p.set_env("HR_PASSWORD", PASSWORD);
    p
}

/// The issue's three spellings and a few more, as Rhai string literals.
fn script_paths(trap: &Trap) -> Vec<String> {
    let h = &trap.host;
    vec![
        format!("\"\\\\\\\\{h}/a\""),
        format!("\" //{h}/b\""),
        format!("\"\\t//{h}/c\""),
        format!("\"//svc@{h}/d\""),
        format!("\"http:{h}/e\""),
        format!("\"//[::ffff:127.0.0.2]:{}/h\"", trap.port),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_cannot_send_credentials_elsewhere_in_runs_or_dry_runs() {
    let trap = Trap::start().await;
    let server = base_server().await;
    let p = project(&server);
    let env = [("HR_PASSWORD", PASSWORD)];
    p.script("r.rhai", "").rule("r", "name = \"r\"\nentity = \"ticket\"\nscript = \"r.rhai\"\n");
    for path in script_paths(&trap) {
        // (A next link is resolved against the page it came from, as a browser would: `http:host/e`
        // there is a path on the same server, so that call may also end ok.)
        for (call, may_stay) in [
            (format!("hr.get({path})"), false),
            (format!("hr.get({path}, #{{ query: #{{ a: 1 }} }})"), false),
            (format!("hr.post({path}, #{{ a: 1 }})"), false),
            (format!("hr.get_all({path}, #{{ style: \"page\", items: \"items\" }})"), false),
            (
                format!("hr.get_all(\"start\", #{{ style: \"next_link\", next: \"next\", items: \"items\", query: #{{ to: {path} }} }})"),
                true,
            ),
        ] {
            let script = format!("let hr = api.connection(\"hr\");\nlet r = {call};\napi.info(`answered ${{r}}`);\n");
            // A job run.
            p.script("script.rhai", &script);
            let ran = p.run_env(&["job", "run", "script", "--json"], &env);
            let run: Value = serde_json::from_str(ran.stdout.lines().next().unwrap_or("null")).unwrap();
            if !(may_stay && run["status"] == "ok") {
                assert_eq!(run["status"], "failed", "{call}: {ran:?}");
                let error = run["error"].as_str().unwrap();
                assert!(
                    error.contains("connection hr: ") && error.contains("credentials are only sent to base_url's origin"),
                    "{call}: {error}"
                );
            }
            // A dry run of a rule (GETs are sent in dry runs, POSTs are checked and not sent).
            p.script("r.rhai", &script);
            let ran = p.run_stdin(&["test", "r", "--record", "-", "--json"], Some("{\"Title\": \"x\"}"));
            let all = format!("{ran:?}");
            assert!(may_stay || all.contains("credentials are only sent to base_url"), "{call}: dry run: {all}");
            assert!(!all.contains(PASSWORD), "{call}: {all}");
            assert_eq!(trap.connections(), 0, "{call} reached the other host");
        }
    }
}
