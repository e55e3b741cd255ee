//! The admin console in a real headless Chromium (WebDriver, fantoccini), against a daemon
//! with `[console]`: logins by role, the pages an admin reads, what only operators may do,
//! and that nothing is readable without a login or shows a configured secret.

use serde_json::json;

use crate::common::browser::Browser;
use crate::common::daemon::{config, eventually, TestDaemon};

const OPERATOR_PW: &str = "op-console-pw-7f3a91";
const VIEWER_PW: &str = "viewer-console-pw-2c8e44";
const HR_TOKEN: &str = "hr-bearer-token-9d71be";

/// A daemon with a console (ann: operator by `${VAR}`, vic: viewer by argon2 hash), a rule
/// that comments on tickets, one whose script fails, a broken rule file, a job, a connection
/// to a local peer with a bearer token and a dry-run directory.
async fn start(peer: &str) -> TestDaemon {
    std::env::set_var("TRIPLINE_IT_CONSOLE_ANN", OPERATOR_PW);
    std::env::set_var("TRIPLINE_IT_CONSOLE_HR_TOKEN", HR_TOKEN);
    let hash = {
        use argon2::{Argon2, PasswordHasher};
        Argon2::default().hash_password(VIEWER_PW.as_bytes()).unwrap().to_string()
    };
    let extra = format!(
        "[console]\nlisten = \"127.0.0.1:0\"\n\
         [console.users.ann]\nrole = \"operator\"\npassword = \"${{TRIPLINE_IT_CONSOLE_ANN}}\"\n\
         [console.users.vic]\nrole = \"viewer\"\npassword_hash = \"{hash}\"\n\n\
         [jobs.nightly]\nschedule = \"0 0 3 * * *\"\nscript = \"nightly.rhai\"\nenabled = false\n\n\
         [connections.hr]\nbase_url = \"{peer}/api/\"\nauth = {{ type = \"bearer\", token = \"${{TRIPLINE_IT_CONSOLE_HR_TOKEN}}\" }}\n\n\
         [directories.LAB]\nkind = \"ldap\"\nurl = \"ldap://127.0.0.1:9\"\nbase_dn = \"dc=example,dc=com\"\ndry_run = true\n"
    );
    let files = [
        (
            "rules/thanks.toml",
            "name = \"Thank the requester\"\nentity = \"ticket\"\nconditions = [{ field = \"Kind\", op = \"equals\", value = \"question\" }]\nscript = \"thanks.rhai\"\n",
        ),
        ("scripts/thanks.rhai", "api.comment(record, \"Thanks, we are on it\");\napi.info(\"commented\");\n"),
        (
            "rules/fragile.toml",
            "name = \"Fragile\"\nentity = \"ticket\"\nconditions = [{ field = \"Kind\", op = \"equals\", value = \"fragile\" }]\nscript = \"fragile.rhai\"\n",
        ),
        ("scripts/fragile.rhai", "api.info(\"about to ask HR\");\nthrow \"the HR system said no\";\n"),
        (
            "rules/broken.toml",
            "name = \"Broken\"\nentity = \"ticket\"\nconditions = [{ field = \"X\", op = \"equls\", value = 1 }]\nscript = \"thanks.rhai\"\n",
        ),
        ("scripts/nightly.rhai", "api.info(\"nightly ran\");\n"),
    ];
    TestDaemon::start(&config(&extra), &files).await
}

fn console_url(d: &TestDaemon, path: &str) -> String {
    format!("http://{}{path}", d.console.expect("the daemon serves a console"))
}

async fn log_in(b: &Browser, d: &TestDaemon, user: &str, password: &str) {
    b.goto(&console_url(d, "/login")).await;
    b.fill("#user", user).await;
    b.fill("#password", password).await;
    b.click("#login").await;
}

/// Logs in over plain HTTP (no browser): the session cookie and the session's CSRF token.
async fn session(d: &TestDaemon, user: &str, password: &str) -> (String, String) {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let form = http.get(console_url(d, "/login")).send().await.unwrap();
    let login_cookie = set_cookie(&form, "tripline_login").expect("the login form sets its cookie");
    let html = form.text().await.unwrap();
    let csrf = hidden(&html, "csrf");
    let r = http
        .post(console_url(d, "/login"))
        .header("cookie", format!("tripline_login={login_cookie}"))
        .form(&[("user", user), ("password", password), ("csrf", &csrf), ("next", "/runs")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{user} logs in");
    let cookie = set_cookie(&r, "tripline_session").expect("a session cookie");
    let set = r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect::<Vec<_>>();
    let session = set.iter().find(|c| c.starts_with("tripline_session=")).unwrap();
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict"), "{session}");
    let page =
        http.get(console_url(d, "/runs")).header("cookie", format!("tripline_session={cookie}")).send().await.unwrap();
    let csrf = hidden(&page.text().await.unwrap(), "csrf");
    (cookie, csrf)
}

fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers().get_all("set-cookie").iter().find_map(|v| {
        let v = v.to_str().ok()?;
        let (k, rest) = v.split_once('=')?;
        (k == name).then(|| rest.split(';').next().unwrap_or("").to_string())
    })
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap_or_else(|| panic!("no hidden {name} in {html}")) + marker.len();
    html[start..].split('"').next().unwrap().to_string()
}

/// A failed run of the fragile rule and a commented ticket (`Source = FlexHR`, carrying the
/// connection's token in a field, as a careless paste would).
async fn fail_and_comment(d: &TestDaemon) -> (i64, String) {
    let fragile = d.submit("ticket", json!({"Kind": "fragile", "Subject": "Laptop for Ann"}));
    let runs = d.runs_of(fragile.id).await;
    assert_eq!(runs[0].status, tripline::store::RunStatus::Failed, "{runs:?}");
    let question = d.submit(
        "ticket",
        json!({"Kind": "question", "Source": "FlexHR", "Subject": "New starter Zoë", "Note": format!("token {HR_TOKEN}")}),
    );
    d.runs_of(question.id).await;
    (runs[0].id, question.record.id.clone())
}

#[tokio::test]
async fn console_logins_roles_and_what_anonymous_and_viewer_requests_get() {
    let peer = wiremock::MockServer::start().await;
    let d = start(&peer.uri()).await;
    let (failed_run, ticket) = fail_and_comment(&d).await;

    // Anonymous: every page sends to the login page and shows nothing; a POST is refused.
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let pages = [
        "/".to_string(),
        "/runs".into(),
        format!("/runs/{failed_run}"),
        "/records?entity=ticket".into(),
        format!("/records/{ticket}"),
        "/rules".into(),
        "/jobs".into(),
        "/connections".into(),
        "/directories".into(),
        "/no-such-page".into(),
    ];
    for p in &pages {
        let r = http.get(console_url(&d, p)).send().await.unwrap();
        assert_eq!(r.status(), 303, "GET {p} without a login");
        assert!(r.headers()["location"].to_str().unwrap().starts_with("/login?next="), "{p}");
        let body = r.text().await.unwrap();
        assert!(!body.contains("Fragile") && !body.contains("Zoë") && !body.contains("HR system"), "{p}: {body}");
    }
    for p in [format!("/runs/{failed_run}/replay"), "/jobs/nightly/run".into(), "/connections/hr/test".into()] {
        let r = http.post(console_url(&d, &p)).form(&[("csrf", "x")]).send().await.unwrap();
        assert_eq!(r.status(), 403, "POST {p} without a login");
    }

    // In the browser: a wrong password is refused, the viewer logs in and sees the runs.
    let b = Browser::start().await;
    log_in(&b, &d, "vic", "not-the-password").await;
    assert_eq!(b.text_of("#login-error").await, "Wrong user name or password.");
    assert!(b.path().await.starts_with("/login"));
    b.goto(&console_url(&d, "/runs?status=failed")).await;
    assert!(b.path().await.starts_with("/login?next="), "{}", b.path().await);
    b.fill("#user", "vic").await;
    b.fill("#password", VIEWER_PW).await;
    b.click("#login").await;
    assert_eq!(b.path().await, "/runs?status=failed", "back where the login started");
    assert_eq!(b.text_of("#who").await, "vic (viewer)");
    assert!(b.text_of("#runs").await.contains("Fragile"));
    // The viewer has no Replay, on the list or the run's page.
    assert!(!b.has("#replay-selected").await);
    b.goto(&console_url(&d, &format!("/runs/{failed_run}"))).await;
    assert_eq!(b.text_of("#run-status").await, "failed");
    assert!(!b.has("#replay").await, "a viewer sees no Replay");
    b.goto(&console_url(&d, "/jobs")).await;
    assert!(!b.has(".run-now").await, "a viewer sees no Run now");
    b.goto(&console_url(&d, "/connections")).await;
    assert!(!b.has(".test").await, "a viewer sees no Test");
    b.click("#logout").await;
    assert!(b.path().await.starts_with("/login"));
    b.goto(&console_url(&d, "/runs")).await;
    assert!(b.path().await.starts_with("/login"), "logged out");

    // The operator sees Replay.
    log_in(&b, &d, "ann", OPERATOR_PW).await;
    assert_eq!(b.text_of("#who").await, "ann (operator)");
    b.goto(&console_url(&d, &format!("/runs/{failed_run}"))).await;
    assert!(b.has("#replay").await);
    b.close().await;

    // A viewer's forged POST, with the viewer's own valid token, is refused; so is an
    // operator's POST with another token, and nothing is replayed.
    let (viewer, viewer_csrf) = session(&d, "vic", VIEWER_PW).await;
    let (operator, _) = session(&d, "ann", OPERATOR_PW).await;
    for (cookie, csrf, why) in
        [(&viewer, viewer_csrf.as_str(), "is a viewer"), (&operator, "forged", "token is not this session")]
    {
        for p in [format!("/runs/{failed_run}/replay"), "/jobs/nightly/run".into(), "/connections/hr/test".into()] {
            let r = http
                .post(console_url(&d, &p))
                .header("cookie", format!("tripline_session={cookie}"))
                .form(&[("csrf", csrf)])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "POST {p}");
            assert!(r.text().await.unwrap().contains(why), "POST {p}");
        }
    }
    let run = d.runtime.store().get_run(failed_run).unwrap().unwrap();
    assert_eq!(run.status, tripline::store::RunStatus::Failed);
    assert_eq!(run.attempts, 1, "nothing was replayed");
    assert!(d
        .runtime
        .store()
        .runs_page(&tripline::store::RunQuery { rule: Some("job:nightly".into()), limit: 1, ..Default::default() })
        .unwrap()
        .is_empty());
    d.stop().await;
}

#[tokio::test]
async fn console_pages_show_a_failed_run_a_ticket_a_broken_file_and_a_replay_after_the_fix() {
    let peer = wiremock::MockServer::start().await;
    let d = start(&peer.uri()).await;
    let (failed_run, ticket) = fail_and_comment(&d).await;
    let shots = std::env::var_os("TRIPLINE_SCREENSHOTS").map(std::path::PathBuf::from);
    let b = Browser::start().await;
    log_in(&b, &d, "vic", VIEWER_PW).await;

    // The overview: health (degraded: a file is in error), the broken file, the failing rule.
    b.goto(&console_url(&d, "/")).await;
    assert_eq!(b.text_of("#health").await, "degraded");
    assert!(b.text_of("#files-in-error").await.contains("broken.toml:3:"));
    assert!(b.text_of("#failing").await.contains("Fragile"));
    if let Some(dir) = &shots {
        b.screenshot(&dir.join("console-overview.png")).await;
    }

    // The runs list filtered as the issue spells it, then the failed run with its error and log.
    b.goto(&console_url(&d, "/runs?status=failed&rule=Fragile")).await;
    let rows = b.text_of("#runs").await;
    assert!(rows.contains(&format!("#{failed_run}")) && rows.contains("the HR system said no"), "{rows}");
    assert!(!rows.contains("Thank the requester"), "filtered to the rule: {rows}");
    b.click(&format!("a[href='/runs/{failed_run}']")).await;
    let error = b.text_of("#run-error").await;
    assert!(error.contains("fragile.rhai:2:") && error.contains("the HR system said no"), "{error}");
    assert!(b.text_of("#log").await.contains("about to ask HR"));
    assert!(b.text_of("#verdicts").await.contains("Kind"), "each condition's verdict");
    if let Some(dir) = &shots {
        b.screenshot(&dir.join("console-run.png")).await;
    }

    // The ticket: its fields, the comment timeline, its runs, where it came from.
    b.goto(&console_url(&d, "/records?entity=ticket")).await;
    b.click(&format!("a[href='/records/{ticket}']")).await;
    assert!(b.text_of("#comments").await.contains("Thanks, we are on it"));
    assert_eq!(b.text_of("#source").await, "from FlexHR");
    assert!(b.text_of("#fields").await.contains("New starter Zoë"));
    assert!(b.text_of("#record-runs").await.contains("Thank the requester"));
    if let Some(dir) = &shots {
        b.screenshot(&dir.join("console-ticket.png")).await;
    }

    // The rules page: the broken file at its place, with its message.
    b.goto(&console_url(&d, "/rules")).await;
    let problems = b.text_of("#rule-problems").await;
    assert!(problems.contains("broken.toml:3:") && problems.contains("equls"), "{problems}");
    assert!(b.text_of("#rules").await.contains("Thank the requester"));

    // The operator fixes the script, the daemon reloads it, and Replay ends in an ok run: on
    // the run's page, and for several runs selected on the list.
    let second = d.submit("ticket", json!({"Kind": "fragile", "Subject": "Laptop for Bob"}));
    let second_run = d.runs_of(second.id).await[0].id;
    b.click("#logout").await;
    log_in(&b, &d, "ann", OPERATOR_PW).await;
    let reloads = d.reloads().await;
    d.write("scripts/fragile.rhai", "api.info(\"HR said yes\");\napi.comment(record, \"Laptop ordered\");\n");
    d.wait_reload_after(reloads).await;
    b.goto(&console_url(&d, &format!("/runs/{failed_run}"))).await;
    b.click("#replay").await;
    assert_eq!(b.path().await, format!("/runs/{failed_run}"));
    assert_eq!(b.text_of("#run-status").await, "ok");
    assert!(b.text_of("#log").await.contains("HR said yes"));
    assert!(b.text_of("#writes").await.contains("Laptop ordered"), "the run's comment is among its writes");
    assert!(!b.has("#run-error").await);
    b.goto(&console_url(&d, "/runs?status=failed")).await;
    b.check(&format!("input[name='run'][value='{second_run}']")).await;
    b.click("#replay-selected").await;
    assert_eq!(b.path().await, "/runs?status=failed");
    assert!(b.has("#no-runs").await, "no failed run is left: {}", b.text_of("main").await);
    let run = d.runtime.store().get_run(second_run).unwrap().unwrap();
    assert_eq!(run.status, tripline::store::RunStatus::Ok, "{run:?}");

    // The rule test form: verdicts and planned writes, nothing written.
    b.goto(&console_url(&d, "/rules")).await;
    b.select("#test-rule", "Thank the requester").await;
    b.fill("#test-record", r#"{"Kind": "question", "Subject": "Printer"}"#).await;
    b.click("#test-submit").await;
    let result = b.text_of("#test-result").await;
    assert!(result.contains("matches") && result.contains("Thanks, we are on it"), "{result}");
    let tickets = d.runtime.store().find_records("ticket", &Default::default(), 100).unwrap();
    assert_eq!(tickets.len(), 3, "the test wrote nothing");
    b.close().await;
    d.stop().await;
}

#[tokio::test]
async fn console_operators_run_jobs_and_test_connections_and_no_page_shows_a_secret() {
    let peer = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .and(wiremock::matchers::header("authorization", format!("Bearer {HR_TOKEN}").as_str()))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&peer)
        .await;
    let d = start(&peer.uri()).await;
    let (failed_run, ticket) = fail_and_comment(&d).await;
    let b = Browser::start().await;
    log_in(&b, &d, "ann", OPERATOR_PW).await;

    // Run now: the job runs, and its run's page shows it.
    b.goto(&console_url(&d, "/jobs")).await;
    assert!(b.text_of("#jobs").await.contains("never"));
    b.click(".run-now").await;
    assert!(b.path().await.starts_with("/runs/"));
    assert_eq!(b.text_of("#run-status").await, "ok");
    assert!(b.text_of("#log").await.contains("nightly ran"));

    // Test: the connection answers with the token tripline adds; the directory is a dry run.
    b.goto(&console_url(&d, "/connections")).await;
    let row = b.text_of("#connections").await;
    // The configured auth type (it said how the credential is sent, `header`, before).
    assert!(row.contains("bearer") && row.contains("not tested"), "{row}");
    b.click(".test").await;
    assert!(b.text_of("#connections").await.contains("-> 200"), "{}", b.text_of("#connections").await);
    b.goto(&console_url(&d, "/directories")).await;
    b.click(".test").await;
    assert!(b.text_of("#directories").await.contains("dry run: nothing is connected"));

    // No page shows a configured secret: not the passwords, not the connection's token, not
    // even where a record carries it.
    let mut visited = 0;
    for (user, pw) in [("ann", OPERATOR_PW), ("vic", VIEWER_PW)] {
        b.goto(&console_url(&d, "/login")).await;
        if b.has("#logout").await {
            b.click("#logout").await;
        }
        log_in(&b, &d, user, pw).await;
        for p in [
            "/".to_string(),
            "/runs".into(),
            format!("/runs/{failed_run}"),
            "/records?entity=ticket".into(),
            format!("/records/{ticket}"),
            "/rules".into(),
            "/jobs".into(),
            "/connections".into(),
            "/directories".into(),
        ] {
            b.goto(&console_url(&d, &p)).await;
            let html = b.source().await;
            for secret in [OPERATOR_PW, VIEWER_PW, HR_TOKEN] {
                assert!(!html.contains(secret), "{p} as {user} shows a secret");
            }
            visited += 1;
        }
    }
    assert_eq!(visited, 18);
    b.goto(&console_url(&d, &format!("/records/{ticket}"))).await;
    assert!(b.text_of("#fields").await.contains("**REDACTED**"), "the token in the record is scrubbed");
    b.close().await;
    eventually("the job's events ran", || async { d.runtime.store().queue_depth().unwrap() == 0 }).await;
    d.stop().await;
}
