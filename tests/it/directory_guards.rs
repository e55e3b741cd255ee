//! What the directory layer refuses, through the real binary: a bind password over plain
//! `ldap://`, a directory call that outlives the run's time limit, a script writing protected
//! attributes (on Samba and slapd), and a Flex HR sync onto an account outside its search
//! bases or a privileged one. A listener that records what it receives and never answers
//! stands in for a server that is not there.

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::project::Project;

/// A TCP listener on loopback that accepts every connection, keeps every byte it is sent and
/// never answers (a server that hangs, or a sniffer on the path).
struct Silent {
    port: u16,
    accepted: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<u8>>>,
}

impl Silent {
    fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (a, r) = (accepted.clone(), received.clone());
        // The threads end with the test process; the listener is never dropped before that.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                a.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut buf) {
                        r.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        Silent { port, accepted, received }
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Whether `needle` was among the bytes received, waiting a little for them to arrive
    /// (the sender may still be writing when the run ends).
    fn saw(&self, needle: &[u8]) -> bool {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if self.received.lock().unwrap().windows(needle.len()).any(|w| w == needle) {
                return true;
            }
            if Instant::now() > until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

const PASSWORD: &str = "Canary-Bind-Pw-7d1c";

/// A `[directories.AD]` section on `url`, binding with [`PASSWORD`], and `extra` lines.
fn ad_section(url: &str, extra: &str) -> String {
    format!(
        "[directories.AD]\nkind = \"active_directory\"\nurl = \"{url}\"\nbind_dn = \"CN=svc,DC=example,DC=test\"\n\
         bind_password = \"{PASSWORD}\"\nbase_dn = \"DC=example,DC=test\"\nusers_ou = \"OU=Staff,DC=example,DC=test\"\n\
         {extra}"
    )
}

/// A project whose rule runs `script` on every new `ticket`.
fn project(config: &str, script: &str) -> Project {
    let p = Project::new(config);
    p.rule(
        "dir",
        "name = \"dir\"\nentity = \"ticket\"\nscript = \"dir.rhai\"\n\
         conditions = [{ field = \"Created\", op = \"equals\", value = true }]\n",
    )
    .script("dir.rhai", script);
    p
}

/// The 1-based `line:col` where `needle` starts in `text`.
fn place(text: &str, needle: &str) -> String {
    let at = text.find(needle).unwrap_or_else(|| panic!("{needle:?} not in {text}"));
    let line = text[..at].matches('\n').count() + 1;
    let col = at - text[..at].rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    format!("{line}:{col}")
}

/// Waits for a child that must exit by itself (a daemon refusing to start); kills it and
/// fails if it is still running after a generous while.
fn exits_by_itself(mut child: std::process::Child) -> std::process::Output {
    let until = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!("`tripline run` kept running with a configuration it must refuse");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_bind_password_over_plain_ldap_is_refused_and_never_sent() {
    let server = Silent::start();
    let url = format!("ldap://127.0.0.1:{}", server.port);
    let config = ad_section(&url, "op_timeout = 1\n");
    let p = project(&config, "api.directory(\"AD\").user_exists(\"ann\");");

    let ran = p.run(&["check"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    let expected = format!(
        "tripline.toml:{}: directories.AD: the bind password would be sent in clear over {url}",
        place(&config, &format!("\"{url}\""))
    );
    assert!(ran.stdout.contains(&expected), "{expected}\n{ran:?}");
    assert!(ran.stdout.contains("allow_plaintext_bind = true"), "{ran:?}");

    // `fire` and the daemon refuse to start with it.
    let (ran, runs) = p.fire("ticket", r#"{"x": 1}"#);
    assert_ne!(ran.code, 0, "{ran:?}");
    assert!(runs.is_empty(), "{runs:?}");
    assert!(ran.stderr.contains("would be sent in clear"), "{ran:?}");
    let mut daemon = p.command(&["run"]);
    daemon.stdin(std::process::Stdio::null());
    let out = exits_by_itself(daemon.spawn().unwrap());
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("would be sent in clear"), "{out:?}");

    // Nothing reached the network: not a connection, let alone the password.
    assert_eq!(server.connections(), 0);
    assert!(!server.saw(PASSWORD.as_bytes()));

    // The explicit opt-in: a warning at its own line, and the bind goes out in clear (which
    // also shows that the listener above would have seen it).
    let allowed = ad_section(&url, "op_timeout = 1\nallow_plaintext_bind = true\n");
    p.file("tripline.toml", &allowed);
    let ran = p.run(&["check"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let warning = format!(
        "tripline.toml:{}: warning: directories.AD: allow_plaintext_bind = true: the bind password is sent in clear over {url}",
        place(&allowed, "true\n")
    );
    assert!(ran.stdout.contains(&warning), "{warning}\n{ran:?}");
    assert_eq!(ran.stdout.matches("warning: directories.AD").count(), 1, "{ran:?}");
    let (_, runs) = p.fire("ticket", r#"{"x": 2}"#);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["status"], "retrying", "{:#}", runs[0]);
    assert!(server.saw(PASSWORD.as_bytes()), "the opted-in bind was sent");
}

#[test]
fn a_dry_run_directory_on_plain_ldap_is_allowed_with_a_warning() {
    let config = ad_section("ldap://dc1.example.test", "dry_run = true\n");
    let p = project(&config, "api.info(`${api.directory(\"AD\").user_exists(\"ann\")}`);");
    let ran = p.run(&["check"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let warning = format!(
        "tripline.toml:{}: warning: directories.AD: url ldap://dc1.example.test is not encrypted: a dry run binds nothing, \
         but with dry_run = false the bind password would be sent in clear",
        place(&config, "\"ldap://dc1")
    );
    assert!(ran.stdout.contains(&warning), "{warning}\n{ran:?}");
    let (ran, runs) = p.fire("ticket", r#"{"x": 1}"#);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(runs[0]["status"], "ok", "{:#}", runs[0]);
    let log: Vec<&str> = runs[0]["log"].as_array().unwrap().iter().filter_map(|l| l["message"].as_str()).collect();
    assert_eq!(log, vec!["false"], "{:#}", runs[0]);
}

/// Every attribute of an entry, read by an admin connection.
async fn whole_entry(ldap: &mut ldap3::Ldap, dn: &str) -> std::collections::HashMap<String, Vec<String>> {
    let (entries, _) =
        ldap.search(dn, ldap3::Scope::Base, "(objectClass=*)", vec!["*", "+"]).await.unwrap().success().unwrap();
    let e = ldap3::SearchEntry::construct(entries.into_iter().next().expect("the entry exists"));
    let mut all = e.attrs;
    for (k, v) in e.bin_attrs {
        all.insert(k, v.iter().map(hex::encode).collect());
    }
    all
}

/// Attribute spellings `update_user` must refuse, each with what its message must point to.
const REFUSED_UPDATES: &[(&str, &str)] = &[
    ("userAccountControl", "use enable_user / disable_user"),
    ("USERACCOUNTCONTROL;binary", "use enable_user / disable_user"),
    ("1.2.840.113556.1.4.8", "use enable_user / disable_user"),
    ("sAMAccountName", "tripline never changes it"),
    ("userprincipalname", "tripline never changes it"),
    ("uid", "tripline never changes it"),
    ("cn", "use rename_user or move_user"),
    ("distinguishedName", "use rename_user or move_user"),
    ("unicodePwd", "use reset_password"),
    ("userPassword;binary", "use reset_password"),
    ("pwdLastSet", "use reset_password"),
    ("member", "use add_to_group / remove_from_group"),
    ("memberOf", "use add_to_group / remove_from_group"),
    ("member;range=0-1499", "use add_to_group / remove_from_group"),
    ("manager", "use set_manager"),
    ("msDS-KeyCredentialLink", "grants access or carries the account's identity"),
    ("sIDHistory", "grants access or carries the account's identity"),
    ("objectSid", "grants access or carries the account's identity"),
    ("nTSecurityDescriptor", "grants access or carries the account's identity"),
    ("msDS-AllowedToDelegateTo", "grants access or carries the account's identity"),
    ("msDS-AllowedToActOnBehalfOfOtherIdentity", "grants access or carries the account's identity"),
    ("servicePrincipalName", "grants access or carries the account's identity"),
    ("adminCount", "grants access or carries the account's identity"),
    ("primaryGroupID", "grants access or carries the account's identity"),
    ("altSecurityIdentities", "grants access or carries the account's identity"),
    ("uidNumber", "grants access or carries the account's identity"),
    ("objectClass", "the directory keeps it itself"),
    ("objectGUID", "the directory keeps it itself"),
    ("2.5.4.35", "use reset_password"),
    ("1.2.840.113556.1.4.1", "use rename_user or move_user"),
    ("1.2.840.113556.1.4.77777", "not by numeric OID"),
];

/// Attribute maps `create_user` must refuse.
const REFUSED_CREATES: &[(&str, &str)] = &[
    ("userAccountControl", "give enabled: true or false"),
    ("unicodePwd", "give password"),
    ("memberOf", "then use add_to_group"),
    ("sIDHistory", "grants access"),
    ("servicePrincipalName;x-tag", "grants access"),
    ("msDS-AllowedToDelegateTo", "grants access"),
    ("objectClass", "the directory keeps it itself"),
];

const PROTECT_SCRIPT: &str = r#"
let d = api.directory("D");
for attr in record.updates {
    let changes = #{};
    changes[attr] = "1";
    try { d.update_user(record.user, changes); api.info(`${attr} => written`); }
    catch (e) { api.info(`${attr} => ${e}`); }
}
for attr in record.creates {
    let user = #{ name: `New ${record.tag}`, sAMAccountName: `n${record.tag}`, sn: "New" };
    user[attr] = "1";
    try { d.create_user(user); api.info(`create ${attr} => written`); }
    catch (e) { api.info(`create ${attr} => ${e}`); }
}
if record.control { d.update_user(record.user, #{ title: "Still writable" }); }
"#;

/// Runs the refusals through a script on directory `D` of `p` against `user_dn`, checks each
/// message and that the entry is exactly as it was; then that a plain attribute still writes
/// and that an uncaught refusal fails the run (permanent: not retried).
async fn refusals_change_nothing(p: &Project, admin: &mut ldap3::Ldap, user_dn: &str, tag: &str) {
    p.rule(
        "protect",
        "name = \"protect\"\nentity = \"protect\"\nscript = \"protect.rhai\"\n\
         conditions = [{ field = \"Created\", op = \"equals\", value = true }]\n",
    )
    .script("protect.rhai", PROTECT_SCRIPT);
    let before = whole_entry(admin, user_dn).await;
    let updates: Vec<&str> = REFUSED_UPDATES.iter().map(|(a, _)| *a).collect();
    let creates: Vec<&str> = REFUSED_CREATES.iter().map(|(a, _)| *a).collect();
    let record =
        serde_json::json!({"user": user_dn, "updates": updates, "creates": creates, "tag": tag, "control": false});
    let (ran, runs) = p.fire("protect", &record.to_string());
    assert_eq!(ran.code, 0, "{ran:?}");
    let log: Vec<String> =
        runs[0]["log"].as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap().to_string()).collect();
    assert_eq!(log.len(), REFUSED_UPDATES.len() + REFUSED_CREATES.len(), "{log:#?}");
    for ((attr, instead), line) in REFUSED_UPDATES.iter().zip(&log) {
        assert!(line.starts_with(&format!("{attr} => ")), "{line}");
        assert!(line.contains(&format!("update_user cannot write attribute {attr}")), "{attr}: {line}");
        assert!(line.contains(instead), "{attr}: {line}");
    }
    for ((attr, instead), line) in REFUSED_CREATES.iter().zip(&log[REFUSED_UPDATES.len()..]) {
        assert!(line.contains(&format!("create {attr} => ")) && line.contains("create_user cannot write"), "{line}");
        assert!(line.contains(instead), "{attr}: {line}");
    }
    assert_eq!(whole_entry(admin, user_dn).await, before, "a refused write changed the entry");

    // The same script with nothing refused writes: the checks above were not vacuous.
    let record = serde_json::json!({"user": user_dn, "updates": [], "creates": [], "tag": tag, "control": true});
    let (ran, _) = p.fire("protect", &record.to_string());
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(whole_entry(admin, user_dn).await.get("title"), Some(&vec!["Still writable".to_string()]));

    // Uncaught, a refusal fails the run for good.
    p.rule(
        "uncaught",
        "name = \"uncaught\"\nentity = \"uncaught\"\nscript = \"uncaught.rhai\"\n\
         conditions = [{ field = \"Created\", op = \"equals\", value = true }]\n",
    )
    .script("uncaught.rhai", "api.directory(\"D\").update_user(record.user, #{ userAccountControl: 66048 });");
    let (_, runs) = p.fire("uncaught", &serde_json::json!({"user": user_dn}).to_string());
    assert_eq!(runs[0]["status"], "failed", "{:#}", runs[0]);
    assert!(runs[0]["error"].as_str().unwrap().contains("use enable_user / disable_user"), "{:#}", runs[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ad_update_user_refuses_protected_attributes_from_a_script() {
    use crate::common::directory_servers::{ad_admin, make_ou, samba, unique, AD_ADMIN, AD_ADMIN_PW, AD_BASE};
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "protect").await;
    let tag = unique();
    let dn = format!("CN=Guarded {tag},{ou}");
    let sam = format!("g{tag}");
    admin
        .add(
            &dn,
            vec![
                ("objectClass", ["top", "person", "organizationalPerson", "user"].into()),
                ("sAMAccountName", [sam.as_str()].into()),
            ],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    let p = Project::new(&format!(
        "[directories.D]\nkind = \"active_directory\"\nurl = \"ldaps://127.0.0.1\"\nbind_dn = \"{AD_ADMIN}\"\n\
         bind_password = \"{AD_ADMIN_PW}\"\nbase_dn = \"{AD_BASE}\"\nusers_ou = '{ou}'\nca_file = '{}'\n",
        samba().ca_file().display()
    ));
    refusals_change_nothing(&p, &mut admin, &dn, &tag).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_update_user_refuses_protected_attributes_from_a_script() {
    use crate::common::directory_servers::{certs, Slapd, LDAP_ADMIN, LDAP_ADMIN_PW, LDAP_BASE};
    let server = Slapd::start();
    let mut admin = server.admin().await;
    let dn = format!("cn=Guarded,ou=people,{LDAP_BASE}");
    admin
        .add(
            &dn,
            vec![("objectClass", ["inetOrgPerson"].into()), ("sn", ["Guarded"].into()), ("uid", ["guarded"].into())],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    let p = Project::new(&format!(
        "[directories.D]\nkind = \"ldap\"\nurl = \"{}\"\nbind_dn = \"{LDAP_ADMIN}\"\nbind_password = \"{LDAP_ADMIN_PW}\"\n\
         base_dn = \"{LDAP_BASE}\"\nusers_ou = \"ou=people,{LDAP_BASE}\"\nca_file = '{}'\n",
        server.ldaps_url(),
        certs().ca.display()
    ));
    refusals_change_nothing(&p, &mut admin, &dn, "l1").await;
}

/// The run's `[limits] timeout_ms`, far below the directory's own timeouts.
const SHORT_RUN: &str = "[limits]\ntimeout_ms = 1500\n\n";
const LONG_DIRECTORY_TIMEOUTS: &str = "connect_timeout = \"2m\"\nop_timeout = \"2m\"\n";

#[test]
fn a_connect_that_hangs_ends_at_the_runs_time_limit() {
    // ldaps:// to a listener that accepts and never answers: the TLS handshake hangs.
    let server = Silent::start();
    let config =
        format!("{SHORT_RUN}{}", ad_section(&format!("ldaps://127.0.0.1:{}", server.port), LONG_DIRECTORY_TIMEOUTS));
    let p = project(&config, "api.directory(\"AD\").user_exists(\"ann\");");
    let (ran, runs) = p.fire("ticket", r#"{"x": 1}"#);
    assert_eq!(ran.code, 1, "{ran:?}");
    let run = &runs[0];
    assert_eq!(run["status"], "retrying", "{run:#}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("directory AD: user_exists did not finish within the run's time limit ([limits] timeout_ms)"),
        "{run:#}"
    );
    assert!(server.connections() >= 1, "the call did reach the listener");
}

#[test]
fn a_bind_that_hangs_ends_flexhr_sync_at_the_runs_time_limit_and_keeps_the_ticket() {
    // Plain ldap:// (a lab opt-in) to the silent listener: the bind is sent, never answered.
    let server = Silent::start();
    let extra = format!("{LONG_DIRECTORY_TIMEOUTS}allow_plaintext_bind = true\n");
    let config = format!("{SHORT_RUN}{}", ad_section(&format!("ldap://127.0.0.1:{}", server.port), &extra));
    let p = project(&config, "api.ProcessFlexHrUserOnAD(record, \"AD\");");
    let ticket = r#"{"Source": "FlexHR", "EmployeeId": "E1", "FirstName": "Ann", "LastName": "Lee"}"#;
    let (ran, runs) = p.fire("ticket", ticket);
    assert_eq!(ran.code, 1, "{ran:?}");
    let run = &runs[0];
    assert_eq!(run["status"], "retrying", "{run:#}");
    let limit =
        "ProcessFlexHrUserOnAD on directory AD did not finish within the run's time limit ([limits] timeout_ms)";
    assert!(run["error"].as_str().unwrap().contains(limit), "{run:#}");
    assert!(server.saw(PASSWORD.as_bytes()), "the bind was under way");

    let shown = p.run(&["records", "show", run["record_id"].as_str().unwrap(), "--json"]);
    let record = shown.json();
    assert_eq!(record["status"], "open", "{record:#}");
    let comments: Vec<&str> =
        record["comments"].as_array().unwrap().iter().filter_map(|c| c["text"].as_str()).collect();
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert!(
        comments[0].starts_with(&format!("failed to synchronize with Flex HR: {limit}; will retry")),
        "{comments:?}"
    );
}

/// A project with the shipped Flex HR rule and script, and `section` as its directory.
fn seed_project(section: &str) -> Project {
    let repo = |rel: &str| std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap();
    let p = Project::new(&format!("[engine]\nmax_attempts = 2\n\n{section}"));
    p.file("rules/process_flexhr_user.toml", &repo("rules/process_flexhr_user.toml"))
        .file("scripts/process_flexhr_user.rhai", &repo("scripts/process_flexhr_user.rhai"));
    p
}

/// A Flex HR ticket for `emp` whose fields would rewrite the account's mail and names.
fn hostile_ticket(emp: &str) -> String {
    serde_json::json!({
        "Source": "FlexHR", "IsNewUser": 0, "EmployeeId": emp, "FirstName": "Mallory", "LastName": "Takeover",
        "Email": "mallory@evil.example", "JobTitle": "Owner", "Active": false,
    })
    .to_string()
}

/// Fires `ticket`; checks that the run failed for good with a conflict naming `dn` and
/// `why`, and that the ticket is open with one comment saying so. Returns nothing: what
/// matters is checked by the caller on the entry.
fn fire_conflict(p: &Project, ticket: &str, dn: &str, why: &str) {
    let (ran, runs) = p.fire("ticket", ticket);
    assert_eq!(ran.code, 1, "{ran:?}");
    let run = &runs[0];
    assert_eq!(run["status"], "failed", "a conflict is not retried: {run:#}");
    let error = run["error"].as_str().unwrap();
    assert!(error.contains(dn) && error.contains(why) && error.contains("nothing was changed"), "{run:#}");
    let record = p.run(&["records", "show", run["record_id"].as_str().unwrap(), "--json"]).json();
    assert_eq!(record["status"], "open", "{record:#}");
    let comments: Vec<&str> =
        record["comments"].as_array().unwrap().iter().filter_map(|c| c["text"].as_str()).collect();
    assert_eq!(comments.len(), 1, "{comments:?}");
    let c = comments[0];
    assert!(
        c.starts_with("failed to synchronize with Flex HR: directory ActiveDirectory: the account with employee ID"),
        "{c}"
    );
    assert!(c.contains(&format!("is {dn}, {why}")) && c.contains("nothing was changed"), "{c}");
    assert!(c.contains("not retried"), "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ad_flexhr_sync_leaves_service_and_privileged_accounts_alone() {
    use crate::common::directory_servers::{
        ad_admin, dns_with, make_ou, samba, unique, AD_ADMIN, AD_ADMIN_PW, AD_BASE,
    };
    let mut admin = ad_admin().await;
    let staff = make_ou(&mut admin, AD_BASE, "hr-staff").await;
    let services = make_ou(&mut admin, AD_BASE, "hr-services").await;
    let tag = unique();
    let account = |dn: String, sam: String, emp: String, extra: Vec<(&'static str, String)>| async move {
        let mut attrs: Vec<(String, std::collections::HashSet<String>)> = vec![
            ("objectClass".into(), ["top", "person", "organizationalPerson", "user"].map(String::from).into()),
            ("sAMAccountName".into(), [sam].into()),
            ("employeeID".into(), [emp].into()),
            ("mail".into(), ["ops@example.test".to_string()].into()),
            ("givenName".into(), ["Backup".to_string()].into()),
        ];
        attrs.extend(extra.into_iter().map(|(k, v)| (k.to_string(), [v].into())));
        let mut admin = ad_admin().await;
        admin.add(&dn, attrs).await.unwrap().success().unwrap();
        dn
    };
    let svc_emp = format!("S{tag}");
    let svc = account(format!("CN=svc-backup-{tag},{services}"), format!("svcb{tag}"), svc_emp.clone(), vec![]).await;
    let adm_emp = format!("A{tag}");
    let adm = account(
        format!("CN=adm-{tag},{staff}"),
        format!("adm{tag}"),
        adm_emp.clone(),
        vec![("adminCount", "1".into())],
    )
    .await;
    let p = seed_project(&format!(
        "[directories.ActiveDirectory]\nkind = \"active_directory\"\nurl = \"ldaps://127.0.0.1\"\n\
         bind_dn = \"{AD_ADMIN}\"\nbind_password = \"{AD_ADMIN_PW}\"\nbase_dn = \"{AD_BASE}\"\nusers_ou = '{staff}'\n\
         ca_file = '{}'\n",
        samba().ca_file().display()
    ));

    // A service account outside users_ou with the person's employee ID.
    let before = whole_entry(&mut admin, &svc).await;
    fire_conflict(&p, &hostile_ticket(&svc_emp), &svc, &format!("outside the sync's user_search_bases ({staff})"));
    assert_eq!(whole_entry(&mut admin, &svc).await, before, "the service account was changed");
    assert!(dns_with(&mut admin, &staff, "employeeID", &svc_emp).await.is_empty(), "no second account is made");

    // A privileged account inside users_ou.
    let before = whole_entry(&mut admin, &adm).await;
    fire_conflict(&p, &hostile_ticket(&adm_emp), &adm, "a privileged account (adminCount = 1)");
    assert_eq!(whole_entry(&mut admin, &adm).await, before, "the privileged account was changed");

    // An ordinary account in users_ou is still found and updated.
    let emp = format!("P{tag}");
    let person = account(format!("CN=person-{tag},{staff}"), format!("p{tag}"), emp.clone(), vec![]).await;
    let ticket = serde_json::json!({"Source": "FlexHR", "EmployeeId": emp, "FirstName": "Pat", "LastName": "Person",
                                    "Email": "pat@example.test"});
    let (_, runs) = p.fire("ticket", &ticket.to_string());
    assert_eq!(runs[0]["status"], "ok", "{:#}", runs[0]);
    let found = dns_with(&mut admin, &staff, "employeeID", &emp).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(whole_entry(&mut admin, &found[0]).await.get("mail"), Some(&vec!["pat@example.test".to_string()]));
    assert!(found[0].starts_with("CN=Pat Person,") || found[0] == person, "{found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_flexhr_sync_keeps_to_its_search_bases() {
    use crate::common::directory_servers::{certs, Slapd, LDAP_ADMIN, LDAP_ADMIN_PW, LDAP_BASE};
    let server = Slapd::start();
    let mut admin = server.admin().await;
    for ou in ["services", "contractors"] {
        let dn = format!("ou={ou},{LDAP_BASE}");
        admin.add(&dn, vec![("objectClass", ["organizationalUnit"].into()), ("ou", [ou].into())]).await.unwrap();
    }
    let svc = format!("cn=svc-backup,ou=services,{LDAP_BASE}");
    let contractor = format!("cn=Cory Contractor,ou=contractors,{LDAP_BASE}");
    for (dn, emp) in [(&svc, "S1"), (&contractor, "C1")] {
        admin
            .add(
                dn,
                vec![
                    ("objectClass", ["inetOrgPerson"].into()),
                    ("sn", ["Account"].into()),
                    ("employeeNumber", [emp].into()),
                    ("mail", ["ops@example.com"].into()),
                ],
            )
            .await
            .unwrap()
            .success()
            .unwrap();
    }
    let section = |bases: &str| {
        format!(
            "[directories.ActiveDirectory]\nkind = \"ldap\"\nurl = \"{}\"\nbind_dn = \"{LDAP_ADMIN}\"\n\
             bind_password = \"{LDAP_ADMIN_PW}\"\nbase_dn = \"{LDAP_BASE}\"\nusers_ou = \"ou=people,{LDAP_BASE}\"\n\
             ca_file = '{}'\n{bases}",
            server.ldaps_url(),
            certs().ca.display()
        )
    };

    // Default search base (users_ou): both accounts are out of scope.
    let p = seed_project(&section(""));
    let before = whole_entry(&mut admin, &svc).await;
    fire_conflict(
        &p,
        &hostile_ticket("S1"),
        &svc,
        &format!("outside the sync's user_search_bases (ou=people,{LDAP_BASE})"),
    );
    assert_eq!(whole_entry(&mut admin, &svc).await, before, "the service account was changed");
    let before = whole_entry(&mut admin, &contractor).await;
    fire_conflict(&p, &hostile_ticket("C1"), &contractor, "outside the sync's user_search_bases");
    assert_eq!(whole_entry(&mut admin, &contractor).await, before);

    // With the contractors' OU listed, the contractor is theirs to update; the service account
    // still is not.
    let bases = format!("user_search_bases = [\"ou=people,{LDAP_BASE}\", \"ou=contractors,{LDAP_BASE}\"]\n");
    let p = seed_project(&section(&bases));
    let ticket = serde_json::json!({"Source": "FlexHR", "EmployeeId": "C1", "FirstName": "Cory", "LastName": "Contractor",
                                    "Email": "cory@example.com"});
    let (_, runs) = p.fire("ticket", &ticket.to_string());
    assert_eq!(runs[0]["status"], "ok", "{:#}", runs[0]);
    assert_eq!(whole_entry(&mut admin, &contractor).await.get("mail"), Some(&vec!["cory@example.com".to_string()]));
    let before = whole_entry(&mut admin, &svc).await;
    fire_conflict(&p, &hostile_ticket("S1"), &svc, "outside the sync's user_search_bases");
    assert_eq!(whole_entry(&mut admin, &svc).await, before);
}
