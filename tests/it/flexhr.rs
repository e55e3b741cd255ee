//! The directory handle and the seed's `api.ProcessFlexHrUserOnAD` through the real binary,
//! with rules and scripts, against the shared Samba AD DC (each test in OUs of its own) and
//! a slapd of its own. The shipped rule and one-line script are copied from the repository.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::directory_servers::{
    ad_admin, ad_admin_tls, certs, dns_with, make_ou, read_attr, samba, unique, Slapd, AD_ADMIN, AD_ADMIN_PW, AD_BASE,
    LDAP_ADMIN, LDAP_ADMIN_PW, LDAP_BASE,
};
use crate::common::project::{binary, Daemon, Project, Ran};

const SEED_RULE: &str = "Process FlexHR user on AD";

fn repo_file(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// A `[directories.NAME]` section on the shared DC, over LDAPS verified with the test CA.
fn ad_section(name: &str, url: &str, users_ou: &str) -> String {
    format!(
        "[directories.{name}]\nkind = \"active_directory\"\nurl = \"{url}\"\nbind_dn = \"{AD_ADMIN}\"\n\
         bind_password = \"{AD_ADMIN_PW}\"\nbase_dn = \"{AD_BASE}\"\nusers_ou = '{users_ou}'\nca_file = '{}'\n\
         connect_timeout = 5\nop_timeout = 20\n",
        samba().ca_file().display()
    )
}

/// Quick retries, so that a test sees a run go from `retrying` to `dead` through the daemon.
const ENGINE: &str = "[engine]\nmax_attempts = 3\nretry_backoff_ms = 50\nretry_max_backoff_ms = 200\n\n";

/// A project with the shipped rule and script and the given directories.
fn seed_project(sections: &str) -> Project {
    seed_project_with(ENGINE, sections)
}

/// [`seed_project`] with an `[engine]` section of its own.
fn seed_project_with(engine: &str, sections: &str) -> Project {
    let p = Project::new(&format!("{engine}{sections}"));
    p.file("rules/process_flexhr_user.toml", &repo_file("rules/process_flexhr_user.toml"))
        .file("scripts/process_flexhr_user.rhai", &repo_file("scripts/process_flexhr_user.rhai"));
    p
}

/// A Flex HR ticket (JSON text) for `emp`, with `extra` fields over the defaults.
fn ticket(emp: &str, first: &str, last: &str, extra: Value) -> String {
    let mut t = json!({
        "Source": "FlexHR", "IsNewUser": 1, "EmployeeId": emp, "FirstName": first, "LastName": last,
        "Department": "Finance", "JobTitle": "Controller", "Company": "ACME", "Active": true,
    });
    for (k, v) in extra.as_object().unwrap() {
        t[k] = v.clone();
    }
    t.to_string()
}

/// Fires one ticket; returns the command's result and its one run.
fn fire_one(p: &Project, record: &str) -> (Ran, Value) {
    let (ran, runs) = p.fire("ticket", record);
    assert_eq!(runs.len(), 1, "{ran:?}");
    (ran, runs.into_iter().next().unwrap())
}

fn show(p: &Project, id: &str) -> Value {
    let ran = p.run(&["records", "show", id, "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    ran.json()
}

fn comments(record: &Value) -> Vec<String> {
    record["comments"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().to_string()).collect()
}

fn log_text(run: &Value) -> String {
    run["log"].as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap()).collect::<Vec<_>>().join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_operations_from_a_script() {
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "ops").await;
    let ou2 = make_ou(&mut admin, AD_BASE, "ops-moved").await;
    let tag = unique();
    let group = format!("CN=grp-{tag},{ou}");
    admin
        .add(
            &group,
            vec![
                ("objectClass", HashSet::from(["group"])),
                ("sAMAccountName", HashSet::from([&*format!("grp-{tag}")])),
            ],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    let p = Project::new(&ad_section("ActiveDirectory", "ldaps://127.0.0.1", &ou));
    p.rule("ops", "name = \"ops\"\nentity = \"adops\"\nscript = \"ops.rhai\"\nconditions = [{ field = \"Created\", op = \"equals\", value = true }]\n")
        .rule("typo", "name = \"typo\"\nentity = \"typo\"\nscript = \"typo.rhai\"\nconditions = [{ field = \"Created\", op = \"equals\", value = true }]\n")
        // A name computed at run time (a literal one is refused when the script loads).
        .script("typo.rhai", "let name = \"ActiveDirectry\";\napi.directory(name).user_exists(\"x\");")
        .script(
            "ops.rhai",
            r#"
let ad = api.directory("ActiveDirectory");
let sam = `ops${record.tag}`;
let created = ad.create_user(#{ name: "Zoë O'Brien, Jr.", sAMAccountName: sam, givenName: "Zoë", sn: "O'Brien, Jr.",
                                employeeID: record.emp, mail: `${sam}@mail.example.test`, password: record.pw, enabled: true });
api.info(`created ${created.dn}`);
if !ad.user_exists(sam) { throw "user_exists is false after create_user"; }
let u = ad.find_user(#{ by: "employeeID", value: record.emp });
if u.sAMAccountName != sam || u.givenName != "Zoë" { throw `find_user by employeeID found ${u}`; }
if ad.find_user(`${sam}@mail.example.test`).dn != u.dn { throw "find_user by mail"; }
if ad.find_user(u.dn).sAMAccountName != sam { throw "find_user by DN"; }
if type_of(ad.find_user("nobody-at-all")) != "()" { throw "find_user of nobody is not ()"; }
let changed = ad.update_user(sam, #{ title: "Controller", department: "R&D", givenName: "Zoë" });
if changed != ["department", "title"] { throw `update_user changed ${changed}`; }
if !ad.disable_user(sam) { throw "disable_user changed nothing"; }
if !ad.enable_user(sam) { throw "enable_user changed nothing"; }
if !ad.add_to_group(sam, record.group) { throw "add_to_group"; }
if ad.add_to_group(sam, record.group) { throw "add_to_group twice reported a change"; }
let groups = ad.groups_of(sam);
if groups.len() != 1 || groups[0].dn != record.group { throw `groups_of: ${groups}`; }
ad.create_user(#{ name: "Big Boss", sAMAccountName: `boss${record.tag}`, enabled: false });
let m = ad.set_manager(sam, `boss${record.tag}`);
if !m.contains("Big Boss") { throw `set_manager returned ${m}`; }
let found = ad.search("(&(objectClass=user)(sn={}))", ["O'Brien, Jr."], #{ attributes: ["sAMAccountName"], base: record.ou });
if found.len() != 1 || found[0].sAMAccountName != sam { throw `search found ${found}`; }
if ad.search("(givenName={})", ["*)(objectClass=*"], #{ base: record.ou }).len() != 0 { throw "a hostile value matched"; }
ad.reset_password(sam, record.pw2, true);
let refused = false;
try { ad.reset_password(sam, "short"); } catch (e) { refused = true; api.info(`refused: ${e}`); }
if !refused { throw "a short password was accepted"; }
let moved = ad.move_user(sam, record.ou2);
let renamed = ad.rename_user(sam, "Zoë Smith");
api.info(`moved to ${moved}, renamed to ${renamed}`);
if !ad.remove_from_group(sam, record.group) { throw "remove_from_group"; }
if ad.set_manager(sam, ()) != () { throw "set_manager(()) did not clear"; }
ad.delete_user(`boss${record.tag}`);
"#,
        );
    let pw = format!("Init!Pw-{tag}a");
    let pw2 = format!("Next!Pw-{tag}b");
    let emp = format!("E{tag}");
    let rec = json!({"tag": tag, "emp": emp, "pw": pw, "pw2": pw2, "ou": ou, "ou2": ou2, "group": group}).to_string();
    let (ran, runs) = p.fire("adops", &rec);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(runs[0]["status"], "ok", "{:#}", runs[0]);
    let log = log_text(&runs[0]);
    assert!(log.contains("refused: directory ActiveDirectory: ") && log.contains("the domain's policy"), "{log}");
    assert!(log.contains(&format!("renamed to CN=Zoë Smith,{ou2}")), "{log}");
    assert!(!log.contains(&pw) && !log.contains(&pw2), "a password reached the log: {log}");

    // What the script did, seen by the admin connection.
    let dn = format!("CN=Zoë Smith,{ou2}");
    assert_eq!(read_attr(&mut admin, &dn, "sAMAccountName").await, vec![format!("ops{tag}")]);
    assert_eq!(read_attr(&mut admin, &dn, "title").await, vec!["Controller"]);
    assert_eq!(read_attr(&mut admin, &dn, "userAccountControl").await, vec!["512"]);
    assert_eq!(read_attr(&mut admin, &dn, "pwdLastSet").await, vec!["0"], "must change at next logon");
    assert!(read_attr(&mut admin, &dn, "memberOf").await.is_empty());
    assert!(read_attr(&mut admin, &dn, "manager").await.is_empty());
    assert!(dns_with(&mut admin, AD_BASE, "sAMAccountName", &format!("boss{tag}")).await.is_empty());

    // An unknown directory name: the error names the configured one.
    let (ran, runs) = p.fire("typo", "{}");
    assert_eq!(ran.code, 1);
    assert_eq!(runs[0]["status"], "failed");
    let error = runs[0]["error"].as_str().unwrap();
    assert!(error.contains(r#"no directory named "ActiveDirectry"; did you mean "ActiveDirectory"?"#), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_user_created_and_ticket_closed_then_idempotent() {
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "hr-new").await;
    let p = seed_project(&ad_section("ActiveDirectory", "ldaps://127.0.0.1", &ou));
    let emp = format!("E{}", unique());
    let rec = ticket(
        &emp,
        "Zoë",
        "O'Brien, Jr.",
        json!({"Email": "zoe@example.test", "Phone": "+49 30 1", "Office": "Berlin", "ModifiedAt": "2025-03-14T09:00:00Z"}),
    );
    let (ran, run) = fire_one(&p, &rec);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!((run["rule"].as_str(), run["status"].as_str()), (Some(SEED_RULE), Some("ok")), "{run:#}");
    let dn = format!(r"CN=Zoë O'Brien\2c Jr.,{ou}");
    let ticket1 = show(&p, run["record_id"].as_str().unwrap());
    assert_eq!(ticket1["status"], "closed");
    let login = read_attr(&mut admin, &dn, "sAMAccountName").await.pop().expect("the user exists");
    assert!(login.starts_with("zoe.obrienjr"), "{login}");
    assert_eq!(
        comments(&ticket1),
        vec![format!("synchronized with Flex HR: created user {login} ({dn}) in {AD_BASE}")]
    );
    assert_eq!(read_attr(&mut admin, &dn, "employeeID").await, vec![emp.clone()]);
    assert_eq!(read_attr(&mut admin, &dn, "physicalDeliveryOfficeName").await, vec!["Berlin"]);

    // The same person again (a second ticket): one AD user, nothing changed.
    let (ran, run) = fire_one(&p, &rec);
    assert_eq!(ran.code, 0, "{ran:?}");
    let ticket2 = show(&p, run["record_id"].as_str().unwrap());
    assert_eq!(ticket2["status"], "closed");
    let c = comments(&ticket2).join("\n");
    // The DN as AD writes it (`\,` where tripline wrote `\2c`).
    let as_ad_writes_it = format!(r"CN=Zoë O'Brien\, Jr.,{ou}");
    assert!(c.contains(&format!("user {login} ({as_ad_writes_it}) in {AD_BASE} was already up to date")), "{c}");
    assert!(c.contains("IsNewUser was 1"), "{c}");
    assert_eq!(dns_with(&mut admin, AD_BASE, "employeeID", &emp).await, vec![as_ad_writes_it]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_user_updated_and_the_comment_lists_the_changes() {
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "hr-upd").await;
    let p = seed_project(&ad_section("ActiveDirectory", "ldaps://127.0.0.1", &ou));
    let emp = format!("E{}", unique());
    let (_, run) = fire_one(&p, &ticket(&emp, "José", "Müller-Lüdenscheidt", json!({})));
    assert_eq!(run["status"], "ok", "{run:#}");
    let changed = ticket(
        &emp,
        "José",
        "Müller-Lüdenscheidt",
        json!({"IsNewUser": 0, "Department": "Marketing", "JobTitle": "Head of Marketing"}),
    );
    let (ran, run) = fire_one(&p, &changed);
    assert_eq!(ran.code, 0, "{ran:?}");
    let t = show(&p, run["record_id"].as_str().unwrap());
    assert_eq!(t["status"], "closed");
    let dn = format!("CN=José Müller-Lüdenscheidt,{ou}");
    let login = read_attr(&mut admin, &dn, "sAMAccountName").await.pop().unwrap();
    assert!(login.starts_with("jose.muller-ludens"), "{login}");
    let c = comments(&t);
    assert_eq!(c.len(), 1, "{c:?}");
    let expected =
        format!("synchronized with Flex HR: updated user {login} ({dn}) in {AD_BASE}; changed: department, title");
    assert!(c[0].starts_with(&expected), "{c:?}");
    // A new account has no password and stays disabled: the comment says why it is left so.
    assert!(
        c[0].ends_with(
            "; note: the account is disabled; tripline does not enable accounts (give it a password, then enable it)"
        ),
        "{c:?}"
    );
    assert_eq!(read_attr(&mut admin, &dn, "title").await, vec!["Head of Marketing"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolved_manager_keeps_the_ticket_open_until_the_manager_exists() {
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "hr-mgr").await;
    let p = seed_project(&ad_section("ActiveDirectory", "ldaps://127.0.0.1", &ou));
    let (emp, boss) = (format!("E{}", unique()), format!("B{}", unique()));
    let rec = ticket(&emp, "Mia", "Report", json!({"ManagerEmployeeId": boss}));
    let (ran, run) = fire_one(&p, &rec);
    assert_eq!((ran.code, run["status"].as_str()), (0, Some("ok")), "{ran:?}");
    let t = show(&p, run["record_id"].as_str().unwrap());
    assert_eq!(t["status"], "open");
    let c = comments(&t);
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(
        c[0].contains(&format!(
            "the manager (employee ID {boss}) was not found in the directory: the manager must be entered manually \
             before the user is processed in AD; the ticket stays open"
        )),
        "{c:?}"
    );
    let dn = format!("CN=Mia Report,{ou}");
    assert!(read_attr(&mut admin, &dn, "manager").await.is_empty());

    // The manager arrives; the person's next ticket sets the manager and closes.
    let (_, run) = fire_one(&p, &ticket(&boss, "Max", "Boss", json!({})));
    assert_eq!(run["status"], "ok");
    let (_, run) = fire_one(&p, &rec);
    let t = show(&p, run["record_id"].as_str().unwrap());
    assert_eq!(t["status"], "closed");
    let boss_dn = format!("CN=Max Boss,{ou}");
    let c = comments(&t).join("\n");
    assert!(c.contains("changed: manager") && c.contains(&format!("; manager: {boss_dn}")), "{c}");
    assert_eq!(read_attr(&mut admin, &dn, "manager").await, vec![boss_dn]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaver_is_disabled_and_the_ticket_says_so() {
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "hr-leave").await;
    let p = seed_project(&ad_section("ActiveDirectory", "ldaps://127.0.0.1", &ou));
    let emp = format!("E{}", unique());
    let (_, run) = fire_one(&p, &ticket(&emp, "Lea", "Ver", json!({})));
    assert_eq!(run["status"], "ok", "{run:#}");
    let dn = format!("CN=Lea Ver,{ou}");
    // The helpdesk gave it a password and enabled it meanwhile, with a further flag set
    // (DONT_EXPIRE_PASSWORD); passwords go over LDAPS.
    let mut tls = ad_admin_tls().await;
    let pw = format!("\"Leaver!Pw-{}\"", unique());
    let pw: Vec<u8> = pw.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mods = vec![
        ldap3::Mod::Replace(b"unicodePwd".to_vec(), HashSet::from([pw])),
        ldap3::Mod::Replace(b"userAccountControl".to_vec(), HashSet::from([b"66048".to_vec()])),
    ];
    tls.modify(&dn, mods).await.unwrap().success().unwrap();

    let (ran, run) = fire_one(&p, &ticket(&emp, "Lea", "Ver", json!({"Active": false, "IsNewUser": 0})));
    assert_eq!(ran.code, 0, "{ran:?}");
    let t = show(&p, run["record_id"].as_str().unwrap());
    assert_eq!(t["status"], "closed");
    let c = comments(&t).join("\n");
    assert!(c.contains("changed: userAccountControl; account disabled"), "{c}");
    assert_eq!(read_attr(&mut admin, &dn, "userAccountControl").await, vec!["66050"], "only the disable bit flipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_are_names() {
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "hr-names").await;
    let p = seed_project(&ad_section("ActiveDirectory", "ldaps://127.0.0.1", &ou));
    for (first, last) in [("Zoë", "O'Brien, Jr."), ("José", "Müller-Lüdenscheidt"), ("*)(objectClass=*", "Inject")]
    {
        let emp = format!("N{}", unique());
        let (ran, run) = fire_one(&p, &ticket(&emp, first, last, json!({})));
        assert_eq!((ran.code, run["status"].as_str()), (0, Some("ok")), "{first} {last}: {ran:?}");
        let t = show(&p, run["record_id"].as_str().unwrap());
        assert_eq!(t["status"], "closed", "{first} {last}");
        let dns = dns_with(&mut admin, AD_BASE, "employeeID", &emp).await;
        assert_eq!(dns.len(), 1, "{first} {last}: {dns:?}");
        assert_eq!(read_attr(&mut admin, &dns[0], "givenName").await, vec![first.to_string()]);
        assert_eq!(read_attr(&mut admin, &dns[0], "sn").await, vec![last.to_string()]);
        assert_eq!(read_attr(&mut admin, &dns[0], "cn").await, vec![format!("{first} {last}")]);
    }
    // The filter-shaped name matched nothing else: the OU holds exactly the three people.
    assert_eq!(dns_with(&mut admin, &ou, "objectClass", "user").await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_with_a_comment_and_keeps_the_ticket_open() {
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "hr-bad").await;
    let p = seed_project(&ad_section("ActiveDirectory", "ldaps://127.0.0.1", &ou));
    let rec = json!({"Source": "FlexHR", "IsNewUser": 1, "EmployeeId": format!("X{}", unique()), "FirstName": "No"});
    let (ran, run) = fire_one(&p, &rec.to_string());
    assert_eq!(ran.code, 1);
    assert_eq!(run["status"], "failed", "{run:#}");
    let t = show(&p, run["record_id"].as_str().unwrap());
    assert_eq!(t["status"], "open");
    let c = comments(&t);
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(
        c[0].starts_with(
            "failed to synchronize with Flex HR: directory ActiveDirectory: the Flex HR record has no LastName; not retried"
        ),
        "{c:?}"
    );
    assert!(dns_with(&mut admin, &ou, "objectClass", "user").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_directory_retries_with_one_comment_and_nothing_lost() {
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "hr-down").await;
    let broken = ad_section("ActiveDirectory", "ldaps://127.0.0.1:1", &ou);
    let p = seed_project(&broken);
    let emp = format!("E{}", unique());
    let (ran, run) = fire_one(&p, &ticket(&emp, "Otto", "Outage", json!({})));
    assert_eq!(ran.code, 1);
    assert_eq!(run["status"], "retrying", "{run:#}");
    assert!(run["error"].as_str().unwrap().contains("is unreachable"), "{run:#}");
    assert!(log_text(&run).contains("failed to synchronize with Flex HR"), "the error is logged: {run:#}");
    let id = run["record_id"].as_str().unwrap().to_string();
    let run_id = run["id"].as_i64().unwrap().to_string();
    let t = show(&p, &id);
    assert_eq!(t["status"], "open");
    let c = comments(&t);
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(c[0].starts_with("failed to synchronize with Flex HR: directory ActiveDirectory: directory at ldaps://127.0.0.1:1 is unreachable"), "{c:?}");
    assert!(c[0].contains("; will retry (attempt 1 of 3, "), "{c:?}");

    // A second attempt while the directory is still down: still one failure comment.
    let ran = p.run(&["replay", &run_id]);
    assert_eq!(ran.code, 1, "{ran:?}");
    assert_eq!(comments(&show(&p, &id)).len(), 1);

    // The port fixed: the same run succeeds, the ticket closes, the one failure comment stays.
    p.file("tripline.toml", &format!("{ENGINE}{}", ad_section("ActiveDirectory", "ldaps://127.0.0.1", &ou)));
    let ran = p.run(&["replay", &run_id]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let t = show(&p, &id);
    assert_eq!(t["status"], "closed");
    let c = comments(&t);
    assert_eq!(c.len(), 2, "{c:?}");
    assert!(c[0].starts_with("failed to synchronize with Flex HR:"), "{c:?}");
    assert!(c[1].starts_with("synchronized with Flex HR: created user otto.outage"), "{c:?}");
    assert_eq!(dns_with(&mut admin, AD_BASE, "employeeID", &emp).await.len(), 1);
    let runs = p.run(&["runs", "--json"]).json();
    assert_eq!(runs.as_array().unwrap().len(), 1, "one run per event and rule: {runs:#}");
}

/// Waits until `done` holds for the run list (the daemon works in the background).
fn wait_for_runs(p: &Project, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let runs = p.run(&["runs", "--json", "--limit", "1000"]).json().as_array().unwrap().clone();
        if done(&runs) {
            return runs;
        }
        assert!(Instant::now() < deadline, "{what}; runs so far: {runs:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_tickets_concurrently_and_retries_until_dead() {
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "hr-daemon").await;
    let sections = format!(
        "{}\n{}",
        ad_section("ActiveDirectory", "ldaps://127.0.0.1", &ou),
        ad_section("Unreachable", "ldaps://127.0.0.1:1", &ou)
    );
    let p = seed_project(&sections);
    p.rule(
        "down",
        "name = \"down\"\nentity = \"downticket\"\nscript = \"down.rhai\"\nconditions = [{ field = \"Created\", op = \"equals\", value = true }]\n",
    )
    .script("down.rhai", "api.ProcessFlexHrUserOnAD(record, \"Unreachable\");");
    // Four tickets for one person and four for others, queued, then run by 8 workers at once.
    let same = format!("S{}", unique());
    let mut lines = Vec::new();
    for i in 0..4 {
        lines.push(ticket(&same, "Sam", "Same", json!({"Subject": format!("copy {i}")})));
        lines.push(ticket(&format!("O{}", unique()), "Other", &format!("Person {i}"), json!({})));
    }
    let ran = p.run_stdin(&["fire", "ticket", "--record", "-", "--queue"], Some(&lines.join("\n")));
    assert_eq!(ran.code, 0, "{ran:?}");
    let down = ticket(&format!("D{}", unique()), "Dora", "Down", json!({}));
    let ran = p.run_stdin(&["fire", "downticket", "--record", "-", "--queue"], Some(&down));
    assert_eq!(ran.code, 0, "{ran:?}");

    let _daemon = Daemon::start(&p);
    let runs = wait_for_runs(&p, "the daemon did not finish", |runs| {
        runs.iter().filter(|r| r["rule"] == SEED_RULE && r["status"] == "ok").count() == 8
            && runs.iter().any(|r| r["rule"] == "down" && r["status"] == "dead")
    });
    assert_eq!(dns_with(&mut admin, AD_BASE, "employeeID", &same).await.len(), 1, "one AD user for one person");
    assert_eq!(dns_with(&mut admin, &ou, "objectClass", "user").await.len(), 5);

    let dead = runs.iter().find(|r| r["rule"] == "down").unwrap();
    assert_eq!(dead["attempts"], 3, "{dead:#}");
    let tickets = p.records("downticket");
    assert_eq!(tickets[0]["status"], "open");
    let c = comments(&tickets[0]);
    assert_eq!(c.len(), 1, "retries update one comment: {c:?}");
    assert!(c[0].contains("is unreachable") && c[0].contains("; gave up after 3 attempts ("), "{c:?}");
    for t in p.records("ticket") {
        assert_eq!(t["status"], "closed", "{t:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tripline_test_shows_the_planned_changes_and_writes_nothing() {
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "hr-test").await;
    let p = seed_project(&ad_section("ActiveDirectory", "ldaps://127.0.0.1", &ou));
    let emp = format!("T{}", unique());
    p.file("ticket.json", &ticket(&emp, "Tess", "Trial", json!({})));
    let ran = p.run(&["test", SEED_RULE, "--record", &p.path().join("ticket.json").to_string_lossy(), "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let report = ran.json();
    let writes = report[0]["writes"].to_string();
    assert!(writes.contains("dry run: nothing was changed in the directory ActiveDirectory."), "{writes}");
    assert!(writes.contains(&format!("would create CN=Tess Trial,{ou} with attributes")), "{writes}");
    assert!(!writes.contains("set dry_run = false"), "the directory is live; the run was the dry one: {writes}");
    assert!(report[0]["log"].to_string().contains("dry run, directory ActiveDirectory: would create"), "{report:#}");
    assert!(dns_with(&mut admin, AD_BASE, "employeeID", &emp).await.is_empty());
}

#[test]
fn the_shipped_configuration_runs_the_example_ticket_in_dry_run() {
    let p = Project::new(&repo_file("tripline.toml"));
    for dir in ["rules", "scripts", "examples/rules-and-scripts"] {
        copy_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir), &p.path().join(dir));
    }
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/flexhr/new_user_ticket.json");
    let run = |args: &[&str]| {
        let out = Command::new(binary())
            .args(args)
            .arg("--config")
            .arg(p.path().join("tripline.toml"))
            .env_remove("AD_BIND_PASSWORD")
            .env("TRIPLINE_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["check"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = run(&["fire", "ticket", "--record", &example.to_string_lossy(), "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let run_json: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!((run_json["rule"].as_str(), run_json["status"].as_str()), (Some(SEED_RULE), Some("ok")));
    let t = show(&p, run_json["record_id"].as_str().unwrap());
    assert_eq!(t["status"], "closed");
    let c = comments(&t);
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(c[0].starts_with("dry run: nothing was changed in the directory ActiveDirectory.\nPlanned changes:\n- would create CN=Zoë O'Brien\\2c Jr.,OU=Staff,DC=example,DC=com with attributes "), "{}", c[0]);
    assert!(c[0].contains("sAMAccountName: zoe.obrienjr;") && c[0].contains("employeeID: FX-10427;"), "{}", c[0]);
    assert!(c[0].contains("Username zoe.obrienjr in DC=example,DC=com."), "{}", c[0]);
    assert!(c[0].ends_with("To apply changes, set dry_run = false in [directories.ActiveDirectory]."), "{}", c[0]);
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_kind_runs_the_same_flow() {
    let server = Slapd::start();
    let mut admin = server.admin().await;
    let p = seed_project(&format!(
        "[directories.ActiveDirectory]\nkind = \"ldap\"\nurl = \"{}\"\nbind_dn = \"{LDAP_ADMIN}\"\n\
         bind_password = \"{LDAP_ADMIN_PW}\"\nbase_dn = \"{LDAP_BASE}\"\nusers_ou = \"ou=people,{LDAP_BASE}\"\n\
         ca_file = '{}'\n",
        server.ldaps_url(),
        certs().ca.display()
    ));
    let (_, run) = fire_one(&p, &ticket("M1", "Max", "Boss", json!({})));
    assert_eq!(run["status"], "ok", "{run:#}");
    let rec = ticket("E1", "José", "Müller-Lüdenscheidt", json!({"ManagerEmployeeId": "M1"}));
    let (ran, run) = fire_one(&p, &rec);
    assert_eq!(ran.code, 0, "{ran:?}");
    let t = show(&p, run["record_id"].as_str().unwrap());
    assert_eq!(t["status"], "closed");
    let dn = format!("cn=José Müller-Lüdenscheidt,ou=people,{LDAP_BASE}");
    assert_eq!(
        comments(&t),
        vec![format!(
            "synchronized with Flex HR: created user jose.muller-ludenscheidt ({dn}) in {LDAP_BASE}; \
             manager: cn=Max Boss,ou=people,{LDAP_BASE}"
        )]
    );
    assert_eq!(read_attr(&mut admin, &dn, "employeeNumber").await, vec!["E1"]);
    assert_eq!(read_attr(&mut admin, &dn, "departmentNumber").await, vec!["Finance"]);

    // Again: unchanged, one entry.
    let (_, run) = fire_one(&p, &rec);
    let c = comments(&show(&p, run["record_id"].as_str().unwrap())).join("\n");
    assert!(c.contains("was already up to date"), "{c}");
    assert_eq!(dns_with(&mut admin, LDAP_BASE, "employeeNumber", "E1").await.len(), 1);

    // A leaver: OpenLDAP has no account flag, so this fails with the reason, ticket open.
    let (ran, run) = fire_one(&p, &ticket("E1", "José", "Müller-Lüdenscheidt", json!({"Active": false})));
    assert_eq!((ran.code, run["status"].as_str()), (1, Some("failed")));
    let t = show(&p, run["record_id"].as_str().unwrap());
    assert_eq!(t["status"], "open");
    let c = comments(&t).join("\n");
    assert!(
        c.starts_with("failed to synchronize with Flex HR: directory ActiveDirectory: employee E1 is not active"),
        "{c}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_workers_make_one_user_per_employee_and_resolve_a_manager_of_the_same_batch() {
    let server = Slapd::start();
    let mut admin = server.admin().await;
    let p = seed_project_with(
        // Enough attempts for people whose names collide while they run at once (each attempt
        // that loses a name to another worker is retried).
        "[engine]\nworkers = 8\nmax_attempts = 8\nretry_backoff_ms = 50\nretry_max_backoff_ms = 200\n\n",
        &format!(
            "[directories.ActiveDirectory]\nkind = \"ldap\"\nurl = \"{}\"\nbind_dn = \"{LDAP_ADMIN}\"\n\
             bind_password = \"{LDAP_ADMIN_PW}\"\nbase_dn = \"{LDAP_BASE}\"\nusers_ou = \"ou=people,{LDAP_BASE}\"\n\
             ca_file = '{}'\n",
            server.ldaps_url(),
            certs().ca.display()
        ),
    );
    let tag = unique();
    let boss = format!("M{tag}");
    let mut lines = Vec::new();
    // The manager's tickets first, as many as there are workers: every later ticket starts
    // after one of them has ended (each worker takes the next ticket when it is done with
    // one), so by then the manager exists, created in this batch.
    for i in 0..8 {
        lines.push(ticket(&boss, "Max", "Boss", json!({"Subject": format!("copy {i}")})));
    }
    // Six reports with three tickets each, interleaved, all at once.
    let reports: Vec<String> = (0..6).map(|i| format!("R{i}{tag}")).collect();
    for copy in 0..3 {
        for (i, emp) in reports.iter().enumerate() {
            let extra = json!({"ManagerEmployeeId": boss, "Subject": format!("copy {copy}")});
            lines.push(ticket(emp, "Rita", &format!("Report {i}"), extra));
        }
    }
    // Three different people with the same name: their CNs and logon names collide.
    let namesakes: Vec<String> = (0..3).map(|i| format!("N{i}{tag}")).collect();
    for emp in &namesakes {
        lines.push(ticket(emp, "Sam", "Same", json!({})));
    }
    let ran = p.run_stdin(&["fire", "ticket", "--record", "-", "--queue"], Some(&lines.join("\n")));
    assert_eq!(ran.code, 0, "{ran:?}");

    let daemon = Daemon::start(&p);
    let runs = wait_for_runs(&p, "the daemon did not finish", |runs| {
        runs.iter().filter(|r| r["rule"] == SEED_RULE && r["status"] == "ok").count() == lines.len()
    });
    daemon.stop();
    assert!(runs.iter().all(|r| r["status"] == "ok"), "{runs:#?}");

    let boss_dns = dns_with(&mut admin, LDAP_BASE, "employeeNumber", &boss).await;
    assert_eq!(boss_dns.len(), 1, "one entry for the manager's eight tickets: {boss_dns:?}");
    for emp in &reports {
        let dns = dns_with(&mut admin, LDAP_BASE, "employeeNumber", emp).await;
        assert_eq!(dns.len(), 1, "one entry for three tickets of {emp}: {dns:?}");
        assert_eq!(read_attr(&mut admin, &dns[0], "manager").await, boss_dns, "{emp}'s manager");
    }
    let mut cns = HashSet::new();
    let mut logins = HashSet::new();
    for emp in &namesakes {
        let dns = dns_with(&mut admin, LDAP_BASE, "employeeNumber", emp).await;
        assert_eq!(dns.len(), 1, "{emp}: {dns:?}");
        cns.insert(dns[0].to_lowercase());
        logins.insert(read_attr(&mut admin, &dns[0], "uid").await.pop().unwrap());
    }
    assert_eq!((cns.len(), logins.len()), (3, 3), "{cns:?} {logins:?}");
    assert_eq!(dns_with(&mut admin, &format!("ou=people,{LDAP_BASE}"), "objectClass", "inetOrgPerson").await.len(), 10);
    // Every ticket closed: created, or already up to date, with the manager set.
    let tickets = p.records("ticket");
    assert_eq!(tickets.len(), lines.len());
    for t in tickets {
        assert_eq!(t["status"], "closed", "{t:#}");
        let c = comments(&t).join("\n");
        if t["ManagerEmployeeId"] == boss {
            assert!(c.contains(&format!("; manager: {}", boss_dns[0])), "{c}");
        }
    }
}
