//! The directory audit trail through the real binary: `ProcessFlexHrUserOnAD` creating and
//! then updating a user on slapd and on the Samba AD DC, `tripline audit` in its three
//! forms, a password reset recorded as a fact (its password nowhere), a failed run's change
//! still recorded, and dry runs planned (a dry-run directory) or only shown (`tripline test`).

use std::path::Path;

use serde_json::{json, Value};

use crate::common::directory_servers::{
    ad_admin, certs, make_ou, samba, unique, Slapd, AD_ADMIN, AD_ADMIN_PW, AD_BASE, LDAP_ADMIN, LDAP_ADMIN_PW,
    LDAP_BASE,
};
use crate::common::project::Project;

fn repo_file(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// A project with the shipped Flex HR rule and script and one directory section.
fn seed_project(section: &str) -> Project {
    let p = Project::new(section);
    p.file("rules/process_flexhr_user.toml", &repo_file("rules/process_flexhr_user.toml"))
        .file("scripts/process_flexhr_user.rhai", &repo_file("scripts/process_flexhr_user.rhai"));
    p
}

fn slapd_section(server: &Slapd) -> String {
    format!(
        "[directories.ActiveDirectory]\nkind = \"ldap\"\nurl = \"{}\"\nbind_dn = \"{LDAP_ADMIN}\"\n\
         bind_password = \"{LDAP_ADMIN_PW}\"\nbase_dn = \"{LDAP_BASE}\"\nusers_ou = \"ou=people,{LDAP_BASE}\"\n\
         ca_file = '{}'\n",
        server.ldaps_url(),
        certs().ca.display()
    )
}

fn ad_section(users_ou: &str) -> String {
    format!(
        "[directories.ActiveDirectory]\nkind = \"active_directory\"\nurl = \"ldaps://127.0.0.1\"\nbind_dn = \"{AD_ADMIN}\"\n\
         bind_password = \"{AD_ADMIN_PW}\"\nbase_dn = \"{AD_BASE}\"\nusers_ou = '{users_ou}'\nca_file = '{}'\n\
         connect_timeout = 5\nop_timeout = 20\n",
        samba().ca_file().display()
    )
}

fn ticket(emp: &str, first: &str, last: &str, department: &str) -> String {
    json!({
        "Source": "FlexHR", "IsNewUser": 1, "EmployeeId": emp, "FirstName": first, "LastName": last,
        "Department": department, "JobTitle": "Controller", "Active": true,
    })
    .to_string()
}

/// Fires one record; returns its one run.
fn fire_one(p: &Project, entity: &str, record: &str) -> Value {
    let (ran, runs) = p.fire(entity, record);
    assert_eq!(runs.len(), 1, "{ran:?}");
    runs.into_iter().next().unwrap()
}

fn audit_json(p: &Project, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["audit", "--json"];
    all.extend_from_slice(args);
    let ran = p.run(&all);
    assert_eq!(ran.code, 0, "{ran:?}");
    ran.json().as_array().unwrap().clone()
}

/// The attribute change named `name` (any case) of an audit entry.
fn attr<'a>(entry: &'a Value, name: &str) -> &'a Value {
    entry["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["attribute"].as_str().unwrap().eq_ignore_ascii_case(name))
        .unwrap_or_else(|| panic!("no {name} in {entry:#}"))
}

/// The create and the update a Flex HR person's two tickets cause, as `audit --json`,
/// `--csv` and the text show them, with `department_attr` changed from Finance to Marketing
/// (`employee_attr`: where the employee ID goes).
fn create_then_update_is_audited(p: &Project, emp: &str, department_attr: &str, employee_attr: &str) {
    let created = fire_one(p, "ticket", &ticket(emp, "Zoë", "O'Brien", "Finance"));
    assert_eq!(created["status"], "ok", "{created:#}");
    let updated = fire_one(p, "ticket", &ticket(emp, "Zoë", "O'Brien", "Marketing"));
    assert_eq!(updated["status"], "ok", "{updated:#}");

    let entries = audit_json(p, &[]);
    assert_eq!(entries.len(), 2, "{entries:#?}");
    let (create, update) = (&entries[0], &entries[1]);
    assert_eq!(create["operation"], "create_user");
    assert_eq!(create["planned"], false);
    assert_eq!(create["directory"], "ActiveDirectory");
    assert_eq!(create["rule"], "Process FlexHR user on AD");
    assert_eq!(create["run_id"], created["id"], "the create is tied to its run");
    assert_eq!(create["record_id"], created["record_id"]);
    assert_eq!(attr(create, department_attr)["before"], json!([]));
    assert_eq!(attr(create, department_attr)["after"], json!(["Finance"]));
    assert_eq!(attr(create, employee_attr)["after"], json!([emp]));

    assert_eq!(update["operation"], "update_user");
    assert_eq!(update["run_id"], updated["id"]);
    assert_eq!(update["record_id"], updated["record_id"]);
    assert!(update["dn"].as_str().unwrap().to_lowercase().starts_with("cn=zoë o'brien,"), "{update:#}");
    let changed: Vec<&str> =
        update["attributes"].as_array().unwrap().iter().map(|a| a["attribute"].as_str().unwrap()).collect();
    assert_eq!(changed, vec![department_attr], "only the department changed");
    assert_eq!(attr(update, department_attr)["before"], json!(["Finance"]));
    assert_eq!(attr(update, department_attr)["after"], json!(["Marketing"]));

    // Filters: by DN (any case), by record, by time.
    let dn = update["dn"].as_str().unwrap();
    assert_eq!(audit_json(p, &["--dn", &dn.to_uppercase()]).len(), 2);
    let of_update = audit_json(p, &["--record", updated["record_id"].as_str().unwrap()]);
    assert_eq!(of_update.len(), 1);
    assert_eq!(of_update[0]["operation"], "update_user");
    assert!(audit_json(p, &["--since", "2999-01-01"]).is_empty());
    assert_eq!(audit_json(p, &["--since", "1h"]).len(), 2);

    // CSV: a header, one line per attribute; the text form shows before and after.
    let csv = p.run(&["audit", "--csv", "--record", updated["record_id"].as_str().unwrap()]);
    assert_eq!(csv.code, 0, "{csv:?}");
    let lines: Vec<&str> = csv.stdout.lines().collect();
    assert!(lines[0].starts_with("id,at,directory,dn,operation,planned,attribute,before,after"), "{}", csv.stdout);
    assert_eq!(lines.len(), 2, "{}", csv.stdout);
    assert!(lines[1].contains(&format!(",update_user,false,{department_attr},Finance,Marketing,")), "{}", csv.stdout);
    let text = p.run(&["audit"]);
    assert!(text.stdout.contains(&format!("{department_attr}: \"Finance\" -> \"Marketing\"")), "{}", text.stdout);
    assert!(
        text.stdout.contains(&format!("by run #{} of \"Process FlexHR user on AD\"", updated["id"])),
        "{}",
        text.stdout
    );

    let bad = p.run(&["audit", "--since", "last tuesday"]);
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("--since \"last tuesday\" is not a time"), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flexhr_create_and_update_are_audited_on_slapd() {
    let server = Slapd::start();
    let p = seed_project(&slapd_section(&server));
    create_then_update_is_audited(&p, &format!("A{}", unique()), "departmentNumber", "employeeNumber");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flexhr_create_and_update_are_audited_on_the_samba_dc() {
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "audit").await;
    let p = seed_project(&ad_section(&ou));
    create_then_update_is_audited(&p, &format!("A{}", unique()), "department", "employeeID");
}

/// Every file of a folder, recursively, as bytes.
fn bytes_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(bytes_under(&path));
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_reset_is_audited_without_the_password_and_a_failed_runs_change_stays() {
    let server = Slapd::start();
    let p = Project::new(&slapd_section(&server));
    // The password is put together at run time, so that neither the script nor the record
    // (both in the store) holds it: wherever it shows up, it leaked.
    let canary = "Canary-7Qx!pw-0Z";
    p.rule("pw", "name = \"pw\"\nentity = \"pw\"\nscript = \"pw.rhai\"\nconditions = [{ field = \"Created\", op = \"equals\", value = true }]\n")
        .script(
            "pw.rhai",
            r#"
let ad = api.directory("ActiveDirectory");
let pw = "Canary" + "-7Qx" + "!pw" + "-0Z";
let u = ad.create_user(#{ name: record.name, sAMAccountName: record.login, sn: "Canary" });
ad.reset_password(u.dn, pw);
api.info(`reset the password of ${u.dn}`);
if record.fail { throw "the script fails after changing the directory"; }
"#,
        );
    let tag = unique();
    let ok = fire_one(
        &p,
        "pw",
        &json!({"name": format!("Pat {tag}"), "login": format!("pat{tag}"), "fail": false}).to_string(),
    );
    assert_eq!(ok["status"], "ok", "{ok:#}");
    let failed = fire_one(
        &p,
        "pw",
        &json!({"name": format!("Fay {tag}"), "login": format!("fay{tag}"), "fail": true}).to_string(),
    );
    assert_eq!(failed["status"], "failed", "{failed:#}");

    let entries = audit_json(&p, &[]);
    let ops: Vec<(&str, &str)> =
        entries.iter().map(|e| (e["operation"].as_str().unwrap(), e["detail"].as_str().unwrap_or_default())).collect();
    assert_eq!(
        ops,
        vec![
            ("create_user", ""),
            ("reset_password", "password reset"),
            ("create_user", ""),
            ("reset_password", "password reset"),
        ]
    );
    // A run that failed after changing the directory: its writes are gone, its changes are
    // facts, recorded and tied to it.
    assert!(entries[2..].iter().all(|e| e["run_id"] == failed["id"]), "{entries:#?}");
    assert!(entries[2]["dn"].as_str().unwrap().starts_with(&format!("cn=Fay {tag}")), "{:#}", entries[2]);

    // The canary nowhere: audit output in every form, logs, the run history, the store's files.
    let mut seen = Vec::new();
    for args in [&["audit", "--json"][..], &["audit", "--csv"], &["audit"], &["runs", "--json"]] {
        let ran = p.run_env(args, &[("TRIPLINE_LOG", "trace")]);
        assert_eq!(ran.code, 0, "{ran:?}");
        seen.push((args.join(" "), format!("{}{}", ran.stdout, ran.stderr)));
    }
    // A third run with every log line the process writes.
    let record = p.path().join("lee.json");
    std::fs::write(
        &record,
        json!({"name": format!("Lee {tag}"), "login": format!("lee{tag}"), "fail": false}).to_string(),
    )
    .unwrap();
    let traced = p.run_env(&["fire", "pw", "--record", record.to_str().unwrap()], &[("TRIPLINE_LOG", "trace")]);
    assert_eq!(traced.code, 0, "{traced:?}");
    assert!(traced.stdout.contains("reset the password of"), "{traced:?}");
    seen.push(("fire with TRIPLINE_LOG=trace".into(), format!("{}{}", traced.stdout, traced.stderr)));
    for (what, text) in &seen {
        assert!(!text.contains(canary), "the password is in the output of {what}: {text}");
    }
    let files = bytes_under(&p.path().join("data"));
    assert!(!files.is_empty());
    for (path, bytes) in files {
        assert!(!bytes.windows(canary.len()).any(|w| w == canary.as_bytes()), "the password is in {path}");
    }
}

#[test]
fn dry_runs_are_planned_in_the_trail_and_tripline_test_stores_none() {
    let p = seed_project(
        "[directories.ActiveDirectory]\nkind = \"active_directory\"\nurl = \"ldaps://dc1.example.test\"\n\
         base_dn = \"DC=example,DC=test\"\nusers_ou = \"OU=Staff,DC=example,DC=test\"\ndry_run = true\n",
    );
    let run = fire_one(&p, "ticket", &ticket("E1", "Ann", "Lee", "Finance"));
    assert_eq!(run["status"], "ok", "{run:#}");
    let entries = audit_json(&p, &[]);
    assert_eq!(entries.len(), 1, "{entries:#?}");
    let e = &entries[0];
    assert_eq!((e["operation"].as_str(), e["planned"].as_bool()), (Some("create_user"), Some(true)));
    assert_eq!(e["dn"], "CN=Ann Lee,OU=Staff,DC=example,DC=test");
    assert_eq!(e["run_id"], run["id"]);
    assert_eq!(attr(e, "department")["before"], Value::Null, "a dry run reads nothing");
    assert_eq!(attr(e, "department")["after"], json!(["Finance"]));
    let text = p.run(&["audit"]);
    assert!(text.stdout.contains("(planned: dry run, nothing changed)"), "{}", text.stdout);

    // `tripline test` shows its changes and stores none.
    let record = p.path().join("t.json");
    std::fs::write(&record, ticket("E2", "Bo", "Ek", "Sales")).unwrap();
    let ran = p.run(&["test", "process_flexhr_user", "--record", record.to_str().unwrap(), "--json"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let shown = &ran.json()[0]["directory_changes"];
    assert_eq!(shown[0]["operation"], "create_user", "{shown:#}");
    assert_eq!(shown[0]["dn"], "CN=Bo Ek,OU=Staff,DC=example,DC=test");
    assert_eq!(shown[0]["planned"], true);
    assert_eq!(audit_json(&p, &[]).len(), 1, "tripline test stored nothing");
}
