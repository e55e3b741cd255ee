//! Secrets never leave: a canary secret configured for a directory, a connection, a webhook
//! and a notification channel is searched for in everything one daemon session produced —
//! its log at `trace` level, `check` output, run records, records, `/metrics`, `/healthz`
//! and the store's files.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::directory_servers::{Slapd, LDAP_ADMIN, LDAP_BASE};
use crate::common::project::{binary, Project};

const CANARIES: [(&str, &str); 4] = [
    ("CANARY_LDAP", "cnry-ldap-5e1f93a7"),
    ("CANARY_HR", "cnry-http-0b7d42c1"),
    ("CANARY_HOOK", "cnry-hook-8a2e6f10"),
    ("CANARY_NOTIFY", "cnry-note-3c9b7d55"),
];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_secret_appears_nowhere() {
    let slapd = Slapd::start();
    // An HR API that echoes the password back in its error, as some do.
    let hr = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(400).set_body_string(format!("bad credentials {}", CANARIES[1].1)))
        .mount(&hr)
        .await;
    let receiver = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(500)).mount(&receiver).await;
    let port = free_port();
    let config = format!(
        "[engine]\nmax_attempts = 1\n\n[server]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [directories.LDAP]\nkind = \"ldap\"\nurl = \"{ldap}\"\nbind_dn = \"{LDAP_ADMIN}\"\nbind_password = \"${{CANARY_LDAP}}\"\n\
         allow_plaintext_bind = true\n\
         base_dn = \"{LDAP_BASE}\"\nusers_ou = \"ou=people,{LDAP_BASE}\"\n\n\
         [connections.hr]\nbase_url = \"{hr}\"\nauth = {{ type = \"basic\", username = \"svc\", password = \"${{CANARY_HR}}\" }}\n\n\
         [webhooks.inbound]\npath = \"/hooks/in\"\nentity = \"ticket\"\n\
         auth = {{ type = \"hmac_sha256\", header = \"X-Signature\", secret = \"${{CANARY_HOOK}}\" }}\n\n\
         [notify.desk]\ntype = \"webhook\"\nurl = \"{note}/hook/${{CANARY_NOTIFY}}\"\n",
        ldap = slapd.url(),
        hr = hr.uri(),
        note = receiver.uri(),
    );
    let p = Project::new(&config);
    for (var, value) in CANARIES {
        p.set_env(var, value);
    }
    p.rule(
        "leak",
        "name = \"try to leak\"\nentity = \"ticket\"\nscript = \"leak.rhai\"\nnotify_on_failure = [\"desk\"]\n\
         conditions = [{ field = \"Created\", op = \"equals\", value = true }]\n",
    )
    .script(
        "leak.rhai",
        r#"
let d = api.directory("LDAP");
try { d.find_user("ann"); } catch (e) { api.warn(`directory: ${e}`); }
let hr = api.connection("hr");
try { hr.get("users"); } catch (e) { api.warn(`hr: ${e}`); }
try { api.notify("desk", "subject", "body"); } catch (e) { api.warn(`notify: ${e}`); }
api.info(`handles: ${d} ${hr} ${api}`);
api.update(record, #{ Handles: `${d} ${hr}` });
throw "the script failed on purpose";
"#,
    );

    let mut produced = String::new();
    let check = p.run(&["check"]);
    assert_eq!(check.code, 0, "{check:?}");
    produced += &format!("{check:?}");

    // Outside the project: the daemon watches the project's folders.
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("daemon.log");
    let mut cmd = Command::new(binary());
    cmd.args(["run", "--config"]).arg(p.path().join("tripline.toml")).env("TRIPLINE_LOG", "trace");
    for (var, value) in CANARIES {
        cmd.env(var, value);
    }
    let mut daemon =
        KillOnDrop(cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log_path).unwrap()).spawn().unwrap());

    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the daemon did not start: {}", std::fs::read_to_string(&log_path).unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = br#"{"Title": "printer on fire", "Source": "Portal"}"#;
    let mut mac = Hmac::<Sha256>::new_from_slice(CANARIES[2].1.as_bytes()).unwrap();
    mac.update(body);
    let good = hex::encode(mac.finalize().into_bytes());
    let accepted =
        client.post(format!("{base}/hooks/in")).header("X-Signature", &good).body(&body[..]).send().await.unwrap();
    assert_eq!(accepted.status(), 202);
    let forged =
        client.post(format!("{base}/hooks/in")).header("X-Signature", "00ff").body(&body[..]).send().await.unwrap();
    assert_eq!(forged.status(), 401);
    produced += &format!("{:?}", forged.text().await.unwrap());

    let runs = loop {
        let ran = p.run_env(&["runs", "--json"], &CANARIES);
        let runs = ran.json();
        if runs.as_array().is_some_and(|r| !r.is_empty()) {
            produced += &ran.stdout;
            break runs;
        }
        assert!(Instant::now() < deadline, "no run: {}", std::fs::read_to_string(&log_path).unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    produced += &client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    produced += &client.get(format!("{base}/healthz")).send().await.unwrap().text().await.unwrap();
    assert!(Command::new("kill").args(["-TERM", &daemon.0.id().to_string()]).status().unwrap().success());
    assert!(daemon.0.wait().unwrap().success());
    produced += &std::fs::read_to_string(&log_path).unwrap();
    produced += &p.run_env(&["records", "list", "ticket", "--json"], &CANARIES).stdout;
    produced += &p.run_env(&["runs", "--failed"], &CANARIES).stdout;
    for entry in std::fs::read_dir(p.path().join("data")).unwrap() {
        produced += &String::from_utf8_lossy(&std::fs::read(entry.unwrap().path()).unwrap());
    }

    // The paths that could leak were taken.
    let run = &runs[0];
    // The script caught the host errors and then failed on its own: a permanent failure.
    assert_eq!(run["status"], "failed", "{run}");
    let log = run["log"].to_string();
    for expected in ["directory: ", "hr: ", "notify: ", "handles: "] {
        assert!(log.contains(expected), "{expected} missing from {log}");
    }
    assert!(produced.contains("bad credentials **REDACTED**") || log.contains("400"), "the HR error was seen: {log}");
    assert!(produced.contains("TRACE"), "the log was at trace level");
    for (var, value) in CANARIES {
        assert!(!produced.contains(value), "{var}'s value leaked:\n{}", context(&produced, value));
    }
}

/// The daemon, killed if the test fails before stopping it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn context(text: &str, needle: &str) -> String {
    let i = text.find(needle).unwrap();
    let start = text.floor_char_boundary(i.saturating_sub(300));
    let end = text.ceil_char_boundary((i + 300).min(text.len()));
    text[start..end].to_string()
}
