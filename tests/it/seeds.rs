//! What the vendor documents ask of the directory, through the real binary: sync modes
//! (seed 001) against slapd and the Samba DC, users matched by SID, GUID, UPN and mail (seed
//! 000) and a 5,000-member group read whole (ranged retrieval) on the Samba DC.

use std::collections::HashSet;

use ldap3::{Ldap, Mod};
use serde_json::{json, Value};

use crate::common::directory_servers::{
    ad_admin, certs, dns_with, make_ou, read_attr, samba, unique, Slapd, AD_ADMIN, AD_ADMIN_PW, AD_BASE, LDAP_ADMIN,
    LDAP_ADMIN_PW, LDAP_BASE,
};
use crate::common::project::Project;

fn ad_section(users_ou: &str, extra: &str) -> String {
    format!(
        "[directories.ActiveDirectory]\nkind = \"active_directory\"\nurl = \"ldaps://127.0.0.1\"\nbind_dn = \"{AD_ADMIN}\"\n\
         bind_password = \"{AD_ADMIN_PW}\"\nbase_dn = \"{AD_BASE}\"\nusers_ou = '{users_ou}'\nca_file = '{}'\n\
         connect_timeout = 5\nop_timeout = 20\n{extra}",
        samba().ca_file().display()
    )
}

fn ldap_section(server: &Slapd, extra: &str) -> String {
    format!(
        "[directories.ActiveDirectory]\nkind = \"ldap\"\nurl = \"{}\"\nbind_dn = \"{LDAP_ADMIN}\"\n\
         bind_password = \"{LDAP_ADMIN_PW}\"\nbase_dn = \"{LDAP_BASE}\"\nusers_ou = \"ou=people,{LDAP_BASE}\"\n\
         ca_file = '{}'\n{extra}",
        server.ldaps_url(),
        certs().ca.display()
    )
}

/// The seed's rule, its script calling `ProcessFlexHrUserOnAD` with the ticket's `Options`
/// when it has them (the per-call override), else as shipped.
fn modes_project(section: &str) -> Project {
    let p = Project::new(&format!("[engine]\nmax_attempts = 2\nretry_backoff_ms = 50\n\n{section}"));
    p.rule(
        "sync",
        "name = \"sync\"\nentity = \"ticket\"\nscript = \"sync.rhai\"\n\
         conditions = [{ field = \"Created\", op = \"equals\", value = true }]\n",
    )
    .script(
        "sync.rhai",
        "if \"Options\" in record {\n  api.ProcessFlexHrUserOnAD(record, \"ActiveDirectory\", record.Options);\n} \
         else {\n  api.ProcessFlexHrUserOnAD(record, \"ActiveDirectory\");\n}\n",
    );
    p
}

fn ticket(emp: &str, title: &str, options: Option<Value>) -> String {
    let mut t = json!({
        "Source": "FlexHR", "EmployeeId": emp, "FirstName": "Mona", "LastName": format!("Mode{emp}"),
        "JobTitle": title, "Active": true,
    });
    if let Some(o) = options {
        t["Options"] = o;
    }
    t.to_string()
}

/// Fires one ticket; returns its one run and the ticket as stored afterwards.
fn fire(p: &Project, record: &str) -> (Value, Value) {
    let (ran, runs) = p.fire("ticket", record);
    assert_eq!(runs.len(), 1, "{ran:?}");
    let run = runs.into_iter().next().unwrap();
    let shown = p.run(&["records", "show", run["record_id"].as_str().unwrap(), "--json"]);
    assert_eq!(shown.code, 0, "{shown:?}");
    (run, shown.json())
}

fn last_comment(t: &Value) -> String {
    t["comments"].as_array().unwrap().last().map(|c| c["text"].as_str().unwrap().to_string()).unwrap_or_default()
}

/// The three modes, by configuration and by call, on one directory: `key` is the attribute
/// that holds the employee ID, `title` the one JobTitle maps to, `base` the base DN.
async fn modes_on(p: &Project, admin: &mut Ldap, key: &str, base: &str) {
    let emp = format!("MODE{}", unique());

    // update_only (the configuration): a new person is not created; the ticket stays open.
    let (run, t) = fire(p, &ticket(&emp, "Clerk", None));
    assert_eq!(run["status"], "ok", "{run:#}");
    assert_eq!(t["status"], "open", "{t:#}");
    let c = last_comment(&t);
    assert!(
        c.starts_with(&format!(
            "synchronized with Flex HR: mode update_only: no account in {base} has employee ID {emp}, and this mode \
             creates none; the ticket stays open"
        )),
        "{c}"
    );
    assert!(dns_with(admin, base, key, &emp).await.is_empty(), "update_only created an account");

    // The call asks for create_and_update: created, closed.
    let (run, t) = fire(p, &ticket(&emp, "Clerk", Some(json!({"mode": "create_and_update"}))));
    assert_eq!((run["status"].as_str(), t["status"].as_str()), (Some("ok"), Some("closed")), "{run:#} {t:#}");
    let dns = dns_with(admin, base, key, &emp).await;
    assert_eq!(dns.len(), 1);
    assert_eq!(read_attr(admin, &dns[0], "title").await, ["Clerk"]);

    // create_only: the existing account is left as it is; the ticket closes saying so.
    let (run, t) = fire(p, &ticket(&emp, "Director", Some(json!({"mode": "create_only"}))));
    assert_eq!((run["status"].as_str(), t["status"].as_str()), (Some("ok"), Some("closed")), "{run:#} {t:#}");
    let c = last_comment(&t);
    assert!(
        c.contains("mode create_only: user ") && c.contains(&format!("({}) already exists in {base}", dns[0])),
        "{c}"
    );
    assert!(c.ends_with("was left as it is; nothing was changed"), "{c}");
    assert_eq!(read_attr(admin, &dns[0], "title").await, ["Clerk"], "create_only changed the account");

    // update_only (the configuration) updates an existing account.
    let (run, t) = fire(p, &ticket(&emp, "Director", None));
    assert_eq!((run["status"].as_str(), t["status"].as_str()), (Some("ok"), Some("closed")), "{run:#} {t:#}");
    assert!(last_comment(&t).contains("changed: title"), "{t:#}");
    assert_eq!(read_attr(admin, &dns[0], "title").await, ["Director"]);

    // A misspelt option or mode fails the run for good, naming it; nothing is touched.
    let other = format!("{emp}X");
    for (options, named) in [
        (json!({"mdoe": "create_only"}), "unknown option `mdoe`: the only option is mode; did you mean `mode`?"),
        (json!({"mode": "create-only"}), "unknown mode `create-only`"),
    ] {
        let (run, t) = fire(p, &ticket(&other, "Clerk", Some(options)));
        assert_eq!(run["status"], "failed", "{run:#}");
        assert!(run["error"].as_str().unwrap().contains(named), "{run:#}");
        assert_eq!(t["status"], "open");
        assert!(t["comments"].as_array().unwrap().is_empty(), "{t:#}");
    }
    assert!(dns_with(admin, base, key, &other).await.is_empty());

    // A dry run shows the mode's decision.
    let file = p.path().join("dry.json");
    std::fs::write(&file, ticket(&other, "Clerk", None)).unwrap();
    let ran = p.run(&["test", "sync", "--record", file.to_str().unwrap()]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("mode update_only: no account in"), "{}", ran.stdout);
    assert!(ran.stdout.contains("(a live run would leave the ticket open)"), "{}", ran.stdout);
    assert!(dns_with(admin, base, key, &other).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_modes_on_slapd() {
    let server = Slapd::start();
    let mut admin = server.admin().await;
    let p = modes_project(&ldap_section(&server, "mode = \"update_only\"\n"));
    modes_on(&p, &mut admin, "employeeNumber", LDAP_BASE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_modes_on_samba() {
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "modes").await;
    let p = modes_project(&ad_section(&ou, "mode = \"update_only\"\n"));
    modes_on(&p, &mut admin, "employeeID", AD_BASE).await;
}

#[test]
fn an_unknown_mode_in_the_configuration_is_an_error_at_its_place() {
    let p = modes_project(
        "[directories.ActiveDirectory]\nkind = \"ldap\"\nurl = \"ldap://127.0.0.1:1\"\nbase_dn = \"dc=example,dc=com\"\n\
         dry_run = true\nmode = \"update-only\"\n",
    );
    let ran = p.run(&["check"]);
    assert_eq!(ran.code, 1, "{ran:?}");
    let line = ran.stdout.lines().chain(ran.stderr.lines()).find(|l| l.contains("update-only")).unwrap_or_default();
    assert!(line.contains("tripline.toml:10:8: "), "{ran:?}");
    assert!(line.contains("unknown variant `update-only`"), "{line}");
    assert!(line.ends_with("did you mean `update_only`?"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_found_by_sid_guid_upn_and_mail_on_samba() {
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "sid").await;
    let sam = format!("sid{}", unique());
    let dn = format!("CN={sam},{ou}");
    let mail = format!("{sam}@mail.example.test");
    let upn = format!("{sam}@example.test");
    admin
        .add(
            &dn,
            vec![
                ("objectClass", HashSet::from(["user"])),
                ("sAMAccountName", HashSet::from([sam.as_str()])),
                ("userPrincipalName", HashSet::from([upn.as_str()])),
                ("mail", HashSet::from([mail.as_str()])),
            ],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    let p = Project::new(&ad_section(&ou, ""));
    p.rule(
        "ids",
        "name = \"ids\"\nentity = \"lookup\"\nscript = \"ids.rhai\"\n\
         conditions = [{ field = \"Created\", op = \"equals\", value = true }]\n",
    )
    .script(
        "ids.rhai",
        r#"
let ad = api.directory("ActiveDirectory");
let u = ad.find_user(record.sam);
let found = #{
    sid: u.objectSid, guid: u.objectGUID, dn: u.dn,
    by_sid: ad.find_user(#{ by: "objectSid", value: u.objectSid }).dn,
    by_guid: ad.find_user(#{ by: "objectGUID", value: u.objectGUID }).dn,
    by_guid_upper: ad.find_user(#{ by: "objectGUID", value: `{${u.objectGUID.to_upper()}}` }).dn,
    by_upn: ad.find_user(#{ by: "userPrincipalName", value: u.userPrincipalName }).dn,
    by_mail: ad.find_user(#{ by: "mail", value: u.mail }).dn,
    exists: ad.user_exists(#{ by: "objectSid", value: u.objectSid }),
    nobody_sid: type_of(ad.find_user(#{ by: "objectSid", value: "S-1-5-21-1-2-3-4242" })),
    nobody_guid: type_of(ad.find_user(#{ by: "objectGUID", value: "00000000-0000-0000-0000-000000000001" })),
    errors: [],
};
for bad in [#{ by: "objectSid", value: "S-1-5-21-*)(objectClass=*" }, #{ by: "objectSid", value: "S-1-5" },
            #{ by: "objectGUID", value: "not-a-guid" }, #{ by: "objectGUID", value: "00112233-4455-6677-8899-aabbccddeef" }] {
    try { ad.find_user(bad); found.errors.push("found"); }
    catch (e) { found.errors.push(`${e.transient} ${e.message}`); }
}
api.update(record, found);
"#,
    );
    let (ran, runs) = p.fire("lookup", &json!({ "sam": sam }).to_string());
    assert_eq!(runs.len(), 1, "{ran:?}");
    assert_eq!(runs[0]["status"], "ok", "{:#}", runs[0]);
    let r = &p.records("lookup")[0]["fields"];
    assert_eq!(r["dn"].as_str().unwrap().to_lowercase(), dn.to_lowercase());
    let sid = r["sid"].as_str().unwrap();
    assert!(sid.starts_with("S-1-5-21-") && sid.split('-').count() == 8, "{sid}");
    let guid = r["guid"].as_str().unwrap();
    let groups: Vec<usize> = guid.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "{guid}");
    assert!(guid.chars().all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{guid}");
    for key in ["by_sid", "by_guid", "by_guid_upper", "by_upn", "by_mail"] {
        assert_eq!(r[key], r["dn"], "{key}: {r:#}");
    }
    assert_eq!(r["exists"], true);
    assert_eq!((r["nobody_sid"].as_str(), r["nobody_guid"].as_str()), (Some("()"), Some("()")));
    let errors: Vec<&str> = r["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(errors[..2].iter().all(|e| e.starts_with("false ") && e.contains("is not a SID")), "{errors:?}");
    assert!(errors[2..].iter().all(|e| e.starts_with("false ") && e.contains("is not a GUID")), "{errors:?}");

    // The SID the handle shows is the one the DC holds: its binary value, read apart.
    let (entries, _) =
        admin.search(&dn, ldap3::Scope::Base, "(objectClass=*)", vec!["objectSid"]).await.unwrap().success().unwrap();
    let raw = ldap3::SearchEntry::construct(entries.into_iter().next().unwrap());
    let bytes = raw.bin_attrs.get("objectSid").and_then(|v| v.first().cloned()).unwrap_or_else(|| {
        raw.attrs.get("objectSid").and_then(|v| v.first()).map(|s| s.as_bytes().to_vec()).expect("objectSid read")
    });
    assert_eq!(tripline::directory::ident::Sid::from_bytes(&bytes).unwrap().to_string(), sid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_5000_members_is_read_whole_on_samba() {
    const MEMBERS: usize = 5000;
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "big").await;
    // Contacts: cheap objects (no account, no RID) that groups take as members. Added with
    // many requests in flight on the one connection.
    let dns: Vec<String> = (0..MEMBERS).map(|i| format!("CN=m{i:05},{ou}")).collect();
    for chunk in dns.chunks(250) {
        let adds = chunk.iter().map(|dn| {
            let mut l = admin.clone();
            async move { l.add(dn, vec![("objectClass", HashSet::from(["contact"]))]).await?.success() }
        });
        for r in futures::future::join_all(adds).await {
            r.unwrap();
        }
    }
    let group = format!("CN=big-{},{ou}", unique());
    let name = group.trim_start_matches("CN=").split(',').next().unwrap().to_string();
    admin
        .add(
            &group,
            vec![("objectClass", HashSet::from(["group"])), ("sAMAccountName", HashSet::from([name.as_str()]))],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    // The members in modifies of 1,000 values each.
    for chunk in dns.chunks(1000) {
        let values: HashSet<&str> = chunk.iter().map(String::as_str).collect();
        admin.modify(&group, vec![Mod::Add("member", values)]).await.unwrap().success().unwrap();
    }

    let p = Project::new(&ad_section(&ou, ""));
    p.rule(
        "members",
        "name = \"members\"\nentity = \"group\"\nscript = \"members.rhai\"\n\
         conditions = [{ field = \"Created\", op = \"equals\", value = true }]\n",
    )
    .script(
        "members.rhai",
        "let ad = api.directory(\"ActiveDirectory\");\nlet by_dn = ad.group_members(record.dn);\n\
         let by_name = ad.group_members(record.name);\n\
         api.update(record, #{ count: by_dn.len(), same: by_dn == by_name, first: by_dn[0], last: by_dn[-1] });\n",
    );
    let (ran, runs) = p.fire("group", &json!({ "dn": group, "name": name }).to_string());
    assert_eq!(runs.len(), 1, "{ran:?}");
    assert_eq!(runs[0]["status"], "ok", "{:#}", runs[0]);
    let r = &p.records("group")[0]["fields"];
    assert_eq!(r["count"], MEMBERS, "{r:#}");
    assert_eq!(r["same"], true);
    assert_eq!(r["first"].as_str().unwrap().to_lowercase(), dns[0].to_lowercase());
    assert_eq!(r["last"].as_str().unwrap().to_lowercase(), dns[MEMBERS - 1].to_lowercase());
    // The DC answers each ranged read with the slice asked for, named by its range, and the
    // last one with `*`: tripline's reads of 1,500 took four slices.
    for (asked, named, count) in [
        ("member;range=0-1499", "member;range=0-1499", 1500),
        ("member;range=1500-2999", "member;range=1500-2999", 1500),
        ("member;range=4500-5999", "member;range=4500-*", 500),
    ] {
        let (entries, _) =
            admin.search(&group, ldap3::Scope::Base, "(objectClass=*)", vec![asked]).await.unwrap().success().unwrap();
        let e = ldap3::SearchEntry::construct(entries.into_iter().next().unwrap());
        let values = e.attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(named)).map(|(_, v)| v.len());
        assert_eq!(values, Some(count), "{asked}: {:?}", e.attrs.keys().collect::<Vec<_>>());
    }
}
