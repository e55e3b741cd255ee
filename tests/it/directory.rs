//! The directory host API against a real Samba AD DC and a real slapd.
//!
//! Every Samba test works in OUs of its own (the DC is shared by the whole run); every slapd
//! test has a server of its own. What the code under test did is checked through a separate
//! admin connection where it matters.

use std::collections::BTreeMap;
use std::sync::Arc;
use tripline::class::Classify;

use serde_json::{json, Map, Value};
use tripline::directory::{
    Directory, DirectoryError, GroupId, ManagerOutcome, NewUser, SearchRequest, SyncStatus, UserId,
};
use tripline::secret::Secret;

use crate::common::directory_servers::{
    ad_admin, ad_config, ad_ldaps, ad_plain, can_bind, make_ou, read_attr, samba, unique, Slapd, AD_BASE,
    LAB_PLAINTEXT, LDAP_BASE,
};

fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
    pairs.iter().map(|(k, v)| (k.to_string(), vec![v.to_string()])).collect()
}

fn record(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn login(s: &str) -> UserId {
    UserId::Login(s.into())
}

/// A user with a unique logon name in `ou`, without a password (disabled).
async fn new_ad_user(dir: &Directory, ou: &str, name: &str, extra: &[(&str, &str)]) -> (String, String) {
    let sam = format!("u{}", unique());
    let user = NewUser {
        name: name.into(),
        login: sam.clone(),
        ou: Some(ou.into()),
        attributes: attrs(extra),
        password: None,
        enabled: Some(false),
    };
    let entry = dir.create_user(&user).await.unwrap();
    (entry.dn, sam)
}

#[tokio::test]
async fn ad_user_lifecycle_by_every_kind_of_name() {
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "life").await;
    let other_ou = make_ou(&mut admin, AD_BASE, "moved").await;
    let dir = ad_plain(&ou);
    let emp = format!("E{}", unique());
    let mail = format!("{}@mail.example.test", unique());
    let (dn, sam) = new_ad_user(
        &dir,
        &ou,
        "Zoë O'Brien, Jr.",
        &[("givenName", "Zoë"), ("sn", "O'Brien, Jr."), ("employeeID", &emp), ("mail", &mail)],
    )
    .await;
    assert!(dn.starts_with(r"CN=Zoë O'Brien\2c Jr.,OU=life-"), "{dn}");
    assert_eq!(read_attr(&mut admin, &dn, "userAccountControl").await, vec!["514"]);
    let upn = format!("{sam}@example.test");
    assert_eq!(read_attr(&mut admin, &dn, "userPrincipalName").await, vec![upn.clone()]);

    // Found by sAMAccountName, DN (as AD writes it), UPN, mail and employeeID.
    let as_ad_writes_it = dir.find_user(&login(&sam)).await.unwrap().expect("found by sAMAccountName").dn;
    for id in [
        UserId::parse(&as_ad_writes_it).unwrap(),
        UserId::parse(&dn).unwrap(),
        UserId::parse(&upn).unwrap(),
        UserId::parse(&mail).unwrap(),
        UserId::by("employeeID", &emp).unwrap(),
    ] {
        let found = dir.find_user(&id).await.unwrap().unwrap_or_else(|| panic!("not found by {id}"));
        assert_eq!(found.get("sAMAccountName"), Some(sam.as_str()), "{id}");
        assert_eq!(found.get("givenName"), Some("Zoë"));
    }
    assert!(dir.user_exists(&login(&sam)).await.unwrap());
    assert!(!dir.user_exists(&login("nobody-here")).await.unwrap());
    assert!(dir.find_user(&UserId::parse(&format!("CN=Nobody,{ou}")).unwrap()).await.unwrap().is_none());

    // Update: only what differs is sent and named; an empty list clears.
    let changed = dir
        .update_user(&login(&sam), &attrs(&[("title", "Engineer"), ("givenName", "Zoë"), ("department", "R&D")]))
        .await
        .unwrap();
    assert_eq!(changed, vec!["department", "title"]);
    assert_eq!(read_attr(&mut admin, &dn, "title").await, vec!["Engineer"]);
    let again = dir.update_user(&login(&sam), &attrs(&[("title", "Engineer")])).await.unwrap();
    assert!(again.is_empty(), "{again:?}");
    let cleared = dir.update_user(&login(&sam), &BTreeMap::from([("title".to_string(), vec![])])).await.unwrap();
    assert_eq!(cleared, vec!["title"]);
    assert!(read_attr(&mut admin, &dn, "title").await.is_empty());
    let refused = dir.update_user(&login(&sam), &attrs(&[("unicodePwd", "x")])).await.unwrap_err();
    assert!(refused.to_string().contains("use reset_password"), "{refused}");

    // Manager, set and cleared; directReports follows.
    let (boss_dn, boss_sam) = new_ad_user(&dir, &ou, "Big Boss", &[]).await;
    let set = dir.set_manager(&login(&sam), Some(&login(&boss_sam))).await.unwrap().unwrap();
    assert_eq!(read_attr(&mut admin, &dn, "manager").await, vec![set.clone()]);
    assert_eq!(read_attr(&mut admin, &boss_dn, "directReports").await.len(), 1);
    assert_eq!(dir.set_manager(&login(&sam), None).await.unwrap(), None);
    assert!(read_attr(&mut admin, &dn, "manager").await.is_empty());

    // Move to another OU, rename, delete.
    let moved = dir.move_user(&login(&sam), &other_ou).await.unwrap();
    assert!(moved.ends_with(&other_ou) && moved.starts_with(r"CN=Zoë O'Brien\2c Jr.,"), "{moved}");
    assert_eq!(read_attr(&mut admin, &moved, "sAMAccountName").await, vec![sam.clone()]);
    let renamed = dir.rename_user(&login(&sam), "Zoë Smith").await.unwrap();
    assert_eq!(renamed, format!("CN=Zoë Smith,{other_ou}"));
    assert_eq!(read_attr(&mut admin, &renamed, "cn").await, vec!["Zoë Smith"]);
    dir.delete_user(&login(&sam)).await.unwrap();
    assert!(!dir.user_exists(&login(&sam)).await.unwrap());
    let gone = dir.delete_user(&login(&sam)).await.unwrap_err();
    assert!(matches!(gone, DirectoryError::NotFound(_)) && !gone.is_transient(), "{gone:?}");
    // A DN that names an OU is not a user: never deleted through delete_user.
    let ou_id = UserId::parse(&other_ou).unwrap();
    assert!(matches!(dir.delete_user(&ou_id).await, Err(DirectoryError::NotFound(_))));
    assert_eq!(dir.connections_opened(), 1);
}

#[tokio::test]
async fn ad_disable_and_enable_flip_only_their_bit() {
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "uac").await;
    let dir = ad_ldaps(&ou);
    let sam = format!("u{}", unique());
    let user = NewUser {
        name: format!("Flag Keeper {sam}"),
        login: sam.clone(),
        password: Some(Secret::new("Str0ng!Passw0rd-1")),
        ..Default::default()
    };
    let dn = dir.create_user(&user).await.unwrap().dn;
    assert_eq!(read_attr(&mut admin, &dn, "userAccountControl").await, vec!["512"]);
    // DONT_EXPIRE_PASSWORD (0x10000) must survive disable and enable. Set behind tripline's
    // back: update_user refuses userAccountControl (enable_user / disable_user own it).
    let uac = [b"66048".to_vec()].into();
    admin.modify(&dn, vec![ldap3::Mod::Replace(b"userAccountControl".to_vec(), uac)]).await.unwrap().success().unwrap();
    assert!(dir.disable_user(&login(&sam)).await.unwrap());
    assert_eq!(read_attr(&mut admin, &dn, "userAccountControl").await, vec!["66050"]);
    assert!(!can_bind("ldaps://127.0.0.1", &dn, "Str0ng!Passw0rd-1").await);
    assert!(!dir.disable_user(&login(&sam)).await.unwrap(), "second disable changes nothing");
    assert!(dir.enable_user(&login(&sam)).await.unwrap());
    assert_eq!(read_attr(&mut admin, &dn, "userAccountControl").await, vec!["66048"]);
    assert!(can_bind("ldaps://127.0.0.1", &dn, "Str0ng!Passw0rd-1").await);
    assert!(!dir.enable_user(&login(&sam)).await.unwrap());
}

#[tokio::test]
async fn ad_passwords_only_over_tls() {
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "pw").await;

    // Plain LDAP: refused before anything is sent (not even a connection is opened).
    let plain = ad_plain(&ou);
    let err = plain.reset_password(&login("whoever"), &Secret::new("Another!Pass1"), false).await.unwrap_err();
    assert!(matches!(err, DirectoryError::InsecureConnection { .. }), "{err:?}");
    assert!(err.to_string().contains("unencrypted connection") && err.to_string().contains("ldaps://"), "{err}");
    assert!(!err.is_transient());
    let with_pw = NewUser {
        name: "No Plain".into(),
        login: format!("np{}", unique()),
        password: Some(Secret::new("Str0ng!Pass-2")),
        ..Default::default()
    };
    assert!(matches!(plain.create_user(&with_pw).await, Err(DirectoryError::InsecureConnection { .. })));
    assert_eq!(plain.connections_opened(), 0);

    // LDAPS, certificate verified with ca_file.
    let dir = ad_ldaps(&ou);
    let (dn, sam) = new_ad_user(&dir, &ou, "Pass Word", &[]).await;
    dir.reset_password(&login(&sam), &Secret::new("Fresh!Passw0rd-9"), false).await.unwrap();
    assert!(dir.enable_user(&login(&sam)).await.unwrap());
    assert!(can_bind("ldaps://127.0.0.1", &dn, "Fresh!Passw0rd-9").await);

    // The domain's policy, as a sentence.
    let weak = dir.reset_password(&login(&sam), &Secret::new("abc"), false).await.unwrap_err();
    assert!(!weak.is_transient());
    assert!(weak.to_string().contains("does not meet the domain's policy"), "{weak}");
    assert!(!weak.to_string().contains("abc"), "{weak}");

    // must_change: pwdLastSet = 0.
    dir.reset_password(&login(&sam), &Secret::new("Next!Passw0rd-7"), true).await.unwrap();
    assert_eq!(read_attr(&mut admin, &dn, "pwdLastSet").await, vec!["0"]);

    // StartTLS on ldap:// works too.
    let extra = format!("starttls = true\nca_file = '{}'\n", samba().ca_file().display());
    let starttls = Directory::new("AD", &ad_config("ldap://127.0.0.1", &ou, &extra)).unwrap();
    starttls.reset_password(&login(&sam), &Secret::new("Third!Passw0rd-3"), false).await.unwrap();
    assert!(can_bind("ldaps://127.0.0.1", &dn, "Third!Passw0rd-3").await);
}

#[tokio::test]
async fn ad_tls_verification_and_connection_errors() {
    samba();
    let ou = format!("CN=Users,{AD_BASE}");
    // Certificate from an unknown CA: refused when verifying, accepted when told not to.
    let verify = Directory::new("AD", &ad_config("ldaps://127.0.0.1", &ou, "")).unwrap();
    let err = verify.user_exists(&login("Administrator")).await.unwrap_err();
    assert!(matches!(err, DirectoryError::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("ca_file"), "{err}");
    let lab = Directory::new("AD", &ad_config("ldaps://127.0.0.1", &ou, "tls_verify = false\n")).unwrap();
    assert!(lab.user_exists(&login("Administrator")).await.unwrap());

    // Wrong bind password: a sentence, transient (the flow keeps the work and retries).
    let mut cfg = ad_config("ldap://127.0.0.1", &ou, LAB_PLAINTEXT);
    cfg.bind_password = Some(toml::from_str::<Wrapper>("v = \"Wrong!Pass1\"").unwrap().v);
    let bad = Directory::new("AD", &cfg).unwrap();
    let err = bad.user_exists(&login("Administrator")).await.unwrap_err();
    assert!(matches!(err, DirectoryError::BindFailed { .. }) && err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("the bind password is wrong"), "{err}");
    assert!(!err.to_string().contains("Wrong!Pass1"), "{err}");

    // Nothing listening: unreachable, transient.
    let down = Directory::new("AD", &ad_config("ldap://127.0.0.1:1", &ou, LAB_PLAINTEXT)).unwrap();
    let err = down.user_exists(&login("Administrator")).await.unwrap_err();
    assert!(matches!(err, DirectoryError::Unreachable { .. }) && err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    // Accepts the connection, then says nothing: the bind must give up after op_timeout.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let mut cfg = ad_config(&format!("ldap://127.0.0.1:{port}"), "CN=Users,DC=example,DC=test", LAB_PLAINTEXT);
    cfg.op_timeout = tripline::directory::Timeout(std::time::Duration::from_millis(300));
    let dir = Arc::new(Directory::new("AD", &cfg).unwrap());
    let started = std::time::Instant::now();
    // Eight callers at once wait for one attempt and share its failure, rather than paying
    // one timeout each in turn.
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let dir = dir.clone();
            tokio::spawn(async move { dir.user_exists(&login("anyone")).await })
        })
        .collect();
    for c in callers {
        let err = c.await.unwrap().unwrap_err();
        assert!(matches!(err, DirectoryError::Timeout { .. }) && err.is_transient(), "{err:?}");
    }
    assert!(started.elapsed() < std::time::Duration::from_millis(1500), "{:?}", started.elapsed());
    drop(hold.join());
}

#[derive(serde::Deserialize)]
struct Wrapper {
    v: tripline::secret::SecretRef,
}

#[tokio::test]
async fn ad_errors_become_sentences_and_hostile_values_stay_values() {
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "err").await;
    let dir = ad_plain(&ou);
    let (_, sam) = new_ad_user(&dir, &ou, "First Holder", &[]).await;
    let dup = NewUser { name: "Second Holder".into(), login: sam.clone(), enabled: Some(false), ..Default::default() };
    let err = dir.create_user(&dup).await.unwrap_err();
    assert!(matches!(err, DirectoryError::AlreadyExists { .. }) && !err.is_transient(), "{err:?}");
    assert!(err.to_string().ends_with("sAMAccountName already in use"), "{err}");
    let same_dn = NewUser {
        name: "First Holder".into(),
        login: format!("x{}", unique()),
        enabled: Some(false),
        ..Default::default()
    };
    let err = dir.create_user(&same_dn).await.unwrap_err();
    assert!(matches!(err, DirectoryError::AlreadyExists { .. }), "{err:?}");
    let too_long = NewUser { name: "Long".into(), login: "a".repeat(21), enabled: Some(false), ..Default::default() };
    assert!(matches!(dir.create_user(&too_long).await, Err(DirectoryError::InvalidInput(_))));
    let needs_pw =
        NewUser { name: "Enabled".into(), login: format!("e{}", unique()), enabled: Some(true), ..Default::default() };
    assert!(matches!(dir.create_user(&needs_pw).await, Err(DirectoryError::InvalidInput(_))));

    // A name that looks like a filter, in a DN and in a filter.
    let hostile = "*)(objectClass=*";
    let (dn, hostile_sam) = new_ad_user(&dir, &ou, hostile, &[("givenName", hostile), ("sn", r#"\,+"<>;=#"#)]).await;
    assert!(dn.starts_with(r"CN=\2a\29\28objectClass\3d\2a,") || dn.starts_with("CN=*)(objectClass\\3d*,"), "{dn}");
    assert_eq!(read_attr(&mut admin, &dn, "sn").await, vec![r#"\,+"<>;=#"#]);
    let by_given = dir.search(&SearchRequest::new("(givenName={})", vec![hostile.into()])).await.unwrap();
    assert_eq!(by_given.len(), 1);
    assert_eq!(by_given[0].get("sAMAccountName"), Some(hostile_sam.as_str()));
    let wildcard =
        dir.search(&SearchRequest::new("(&(objectClass=user)(givenName={}))", vec!["*".into()])).await.unwrap();
    assert!(wildcard.is_empty(), "a `*` value matched {} entries", wildcard.len());
    assert!(dir.find_user(&login("*")).await.unwrap().is_none());
    let bad_filter = dir.search(&SearchRequest::new("(cn=x", vec![])).await.unwrap_err();
    assert!(matches!(bad_filter, DirectoryError::InvalidInput(_)));
}

#[tokio::test]
async fn ad_groups_add_remove_list() {
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "grp").await;
    let group_name = format!("Team {}", unique());
    let group_dn = format!("CN={group_name},{ou}");
    admin
        .add(
            &group_dn,
            vec![
                ("objectClass", ["top", "group"].into()),
                ("sAMAccountName", [format!("g{}", unique()).as_str()].into()),
            ],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    let extra = format!("groups_base = '{ou}'\n{LAB_PLAINTEXT}");
    let dir = Directory::new("AD", &ad_config("ldap://127.0.0.1", &ou, &extra)).unwrap();
    let (user_dn, sam) = new_ad_user(&dir, &ou, "Group Member", &[]).await;
    let by_name = GroupId::parse(&group_name).unwrap();
    assert!(dir.add_to_group(&login(&sam), &by_name).await.unwrap());
    assert!(!dir.add_to_group(&login(&sam), &by_name).await.unwrap(), "already a member");
    assert_eq!(read_attr(&mut admin, &user_dn, "memberOf").await, vec![group_dn.clone()]);
    let groups = dir.groups_of(&login(&sam)).await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].get("cn"), Some(group_name.as_str()));
    let by_dn = GroupId::parse(&group_dn).unwrap();
    assert!(dir.remove_from_group(&login(&sam), &by_dn).await.unwrap());
    assert!(!dir.remove_from_group(&login(&sam), &by_dn).await.unwrap(), "no longer a member");
    assert!(dir.groups_of(&login(&sam)).await.unwrap().is_empty());
    let missing = dir.add_to_group(&login(&sam), &GroupId::parse("No Such Group").unwrap()).await.unwrap_err();
    assert!(matches!(missing, DirectoryError::NotFound(_)), "{missing:?}");
}

#[tokio::test]
async fn ad_search_pages_and_one_connection_serves_many_callers() {
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, "page").await;
    let dir = Arc::new(
        Directory::new("AD", &ad_config("ldap://127.0.0.1", &ou, &format!("page_size = 7\n{LAB_PLAINTEXT}"))).unwrap(),
    );
    let dept = format!("Dept {}", unique());
    let mut tasks = Vec::new();
    for i in 0..30 {
        let (dir, ou, dept) = (dir.clone(), ou.clone(), dept.clone());
        tasks.push(tokio::spawn(async move {
            new_ad_user(&dir, &ou, &format!("Paged User {i}"), &[("department", &dept)]).await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut req = SearchRequest::new("(&(objectClass=user)(department={}))", vec![dept.clone()]);
    req.attributes = vec!["cn".into(), "department".into()];
    let all = dir.search(&req).await.unwrap();
    assert_eq!(all.len(), 30, "paged search (7 per page) returns every entry");
    assert!(all.iter().all(|e| e.get("department") == Some(dept.as_str()) && e.get("mail").is_none()));
    req.limit = Some(5);
    assert_eq!(dir.search(&req).await.unwrap().len(), 5);
    req.limit = None;
    req.base = Some(ou.clone());
    req.scope = tripline::directory::SearchScope::OneLevel;
    assert_eq!(dir.search(&req).await.unwrap().len(), 30);

    // 64 concurrent look-ups share the one connection.
    let lookups: Vec<_> = (0..64)
        .map(|i| {
            let dir = dir.clone();
            tokio::spawn(async move { dir.user_exists(&UserId::parse(&format!("nobody{i}")).unwrap()).await })
        })
        .collect();
    for l in lookups {
        assert!(!l.await.unwrap().unwrap());
    }
    assert_eq!(dir.connections_opened(), 1);
}

// ---- Flex HR sync against AD -------------------------------------------------------------

async fn sync_dir(tag: &str) -> (Directory, String, ldap3::Ldap) {
    let mut admin = ad_admin().await;
    let ou = make_ou(&mut admin, AD_BASE, tag).await;
    (ad_plain(&ou), ou, admin)
}

#[tokio::test]
async fn flexhr_new_user_created_then_idempotent() {
    let (dir, ou, mut admin) = sync_dir("hr-new").await;
    let emp = format!("E{}", unique());
    let rec = record(json!({
        "EmployeeId": emp, "FirstName": "José", "LastName": "Müller-Lüdenscheidt", "Email": "jose@example.test",
        "Department": "Finance", "JobTitle": "Controller", "Company": "ACME", "Phone": "+49 30 1234",
        "Office": "Berlin", "Active": true, "IsNewUser": 1, "Source": "FlexHR"
    }));
    let first = dir.sync_flexhr_user(&rec).await.unwrap();
    assert_eq!(first.status, SyncStatus::Created);
    assert_eq!(first.dn, format!("CN=José Müller-Lüdenscheidt,{ou}"));
    assert_eq!(first.login, "jose.muller-ludensch");
    assert_eq!(first.base_dn, AD_BASE);
    assert_eq!(first.manager, ManagerOutcome::NotGiven);
    assert!(first.is_complete() && !first.disabled);
    for a in [
        "givenName",
        "sn",
        "displayName",
        "mail",
        "department",
        "title",
        "company",
        "telephoneNumber",
        "physicalDeliveryOfficeName",
        "employeeID",
        "userPrincipalName",
    ] {
        assert!(first.changes.iter().any(|c| c == a), "{a} missing from {:?}", first.changes);
    }
    assert_eq!(read_attr(&mut admin, &first.dn, "physicalDeliveryOfficeName").await, vec!["Berlin"]);
    assert_eq!(read_attr(&mut admin, &first.dn, "userPrincipalName").await, vec!["jose.muller-ludensch@example.test"]);
    assert_eq!(read_attr(&mut admin, &first.dn, "employeeID").await, vec![emp.clone()]);
    assert_eq!(read_attr(&mut admin, &first.dn, "userAccountControl").await, vec!["514"]);

    let second = dir.sync_flexhr_user(&rec).await.unwrap();
    assert_eq!(second.status, SyncStatus::Unchanged);
    assert_eq!(second.dn, first.dn);
    assert!(second.changes.is_empty(), "{:?}", second.changes);
    assert!(second.notes.iter().any(|n| n.contains("IsNewUser was 1")), "{:?}", second.notes);
    let found = dir.search(&SearchRequest::new("(employeeID={})", vec![emp.clone()])).await.unwrap();
    assert_eq!(found.len(), 1, "running twice makes one user");
}

#[tokio::test]
async fn flexhr_two_tickets_at_once_make_one_user() {
    let (dir, _ou, _admin) = sync_dir("hr-race").await;
    let dir = Arc::new(dir);
    let emp = format!("E{}", unique());
    let rec = record(
        json!({"EmployeeId": emp, "FirstName": "Rita", "LastName": format!("Race{}", unique()), "IsNewUser": 1}),
    );
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let (dir, rec) = (dir.clone(), rec.clone());
            tokio::spawn(async move { dir.sync_flexhr_user(&rec).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for r in runs {
        statuses.push(r.await.unwrap().unwrap().status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == SyncStatus::Created).count(), 1, "{statuses:?}");
    let found = dir.search(&SearchRequest::new("(employeeID={})", vec![emp])).await.unwrap();
    assert_eq!(found.len(), 1);
}

#[tokio::test]
async fn flexhr_existing_user_updated_with_changes_listed() {
    let (dir, ou, mut admin) = sync_dir("hr-upd").await;
    let emp = format!("E{}", unique());
    let last = format!("Doe{}", unique());
    let base = json!({"EmployeeId": emp, "FirstName": "Jane", "LastName": last, "Department": "Sales",
                      "JobTitle": "Rep", "Phone": "123", "IsNewUser": 1});
    let created = dir.sync_flexhr_user(&record(base.clone())).await.unwrap();
    let mut changed = base.clone();
    changed["Department"] = json!("Marketing");
    changed["JobTitle"] = json!("Lead");
    changed["Phone"] = json!("");
    changed["IsNewUser"] = json!(0);
    let out = dir.sync_flexhr_user(&record(changed.clone())).await.unwrap();
    assert_eq!(out.status, SyncStatus::Updated);
    assert_eq!(out.changes, vec!["department", "telephoneNumber", "title"]);
    assert_eq!(out.login, created.login);
    assert_eq!(read_attr(&mut admin, &out.dn, "department").await, vec!["Marketing"]);
    assert!(read_attr(&mut admin, &out.dn, "telephoneNumber").await.is_empty());

    // A new last name: displayName and sn change, the CN follows, the logon name stays.
    changed["LastName"] = json!(format!("{last}-Smith"));
    let renamed = dir.sync_flexhr_user(&record(changed)).await.unwrap();
    assert_eq!(renamed.changes, vec!["displayName", "sn", "cn"]);
    assert_eq!(renamed.dn, format!("CN=Jane {last}-Smith,{ou}"));
    assert_eq!(renamed.login, created.login);
    assert_eq!(read_attr(&mut admin, &renamed.dn, "sAMAccountName").await, vec![created.login.clone()]);
}

#[tokio::test]
async fn flexhr_manager_unresolved_then_resolved() {
    let (dir, _ou, mut admin) = sync_dir("hr-mgr").await;
    let boss_emp = format!("B{}", unique());
    let emp = format!("E{}", unique());
    let rec = record(
        json!({"EmployeeId": emp, "FirstName": "Mia", "LastName": format!("Report{}", unique()), "ManagerEmployeeId": boss_emp}),
    );
    let out = dir.sync_flexhr_user(&rec).await.unwrap();
    assert_eq!(out.status, SyncStatus::Created);
    assert_eq!(out.manager, ManagerOutcome::Unresolved { employee_id: boss_emp.clone() });
    assert!(!out.is_complete());
    assert!(out.summary().contains("must be entered manually"), "{}", out.summary());
    assert!(read_attr(&mut admin, &out.dn, "manager").await.is_empty());

    let boss = dir
        .sync_flexhr_user(&record(
            json!({"EmployeeId": boss_emp, "FirstName": "Max", "LastName": format!("Boss{}", unique())}),
        ))
        .await
        .unwrap();
    let again = dir.sync_flexhr_user(&rec).await.unwrap();
    assert_eq!(again.status, SyncStatus::Updated);
    assert_eq!(again.changes, vec!["manager"]);
    assert_eq!(again.manager, ManagerOutcome::Resolved { employee_id: boss_emp.clone(), dn: boss.dn.clone() });
    assert_eq!(read_attr(&mut admin, &out.dn, "manager").await, vec![boss.dn]);
    assert_eq!(dir.sync_flexhr_user(&rec).await.unwrap().status, SyncStatus::Unchanged);
}

#[tokio::test]
async fn flexhr_leaver_is_disabled() {
    let (dir, _ou, mut admin) = sync_dir("hr-leave").await;
    let emp = format!("E{}", unique());
    let mut rec = json!({"EmployeeId": emp, "FirstName": "Lea", "LastName": format!("Ver{}", unique())});
    let created = dir.sync_flexhr_user(&record(rec.clone())).await.unwrap();
    // Give it a password and enable it, as the helpdesk would, with an extra flag set.
    let tls = ad_ldaps(&dir.users_ou());
    tls.reset_password(&login(&created.login), &Secret::new("Leaver!Passw0rd1"), false).await.unwrap();
    // (The flags are set by the admin connection: update_user refuses userAccountControl.)
    let uac = [b"66048".to_vec()].into();
    admin
        .modify(&created.dn, vec![ldap3::Mod::Replace(b"userAccountControl".to_vec(), uac)])
        .await
        .unwrap()
        .success()
        .unwrap();
    rec["Active"] = json!(false);
    let out = dir.sync_flexhr_user(&record(rec.clone())).await.unwrap();
    assert!(out.disabled);
    assert_eq!(out.status, SyncStatus::Updated);
    assert_eq!(out.changes, vec!["userAccountControl"]);
    assert_eq!(read_attr(&mut admin, &created.dn, "userAccountControl").await, vec!["66050"]);
    let again = dir.sync_flexhr_user(&record(rec)).await.unwrap();
    assert_eq!((again.status, again.disabled), (SyncStatus::Unchanged, true));

    // A leaver nobody created: nothing happens.
    let ghost = json!({"EmployeeId": format!("G{}", unique()), "FirstName": "Gho", "LastName": "St", "Active": false});
    let skipped = dir.sync_flexhr_user(&record(ghost)).await.unwrap();
    assert_eq!(skipped.status, SyncStatus::Skipped);
    assert!(skipped.dn.is_empty());
}

#[tokio::test]
async fn flexhr_hostile_and_colliding_names() {
    let (dir, ou, mut admin) = sync_dir("hr-names").await;
    let tag = unique();
    let first = dir
        .sync_flexhr_user(&record(json!({"EmployeeId": format!("H1{tag}"), "FirstName": "  Zoë", "LastName": format!("O'Brien, Jr. {tag}"), "IsNewUser": 0})))
        .await
        .unwrap();
    assert_eq!(first.status, SyncStatus::Created);
    assert!(first.notes.iter().any(|n| n.contains("IsNewUser was 0")), "{:?}", first.notes);
    let cn = read_attr(&mut admin, &first.dn, "cn").await;
    assert_eq!(cn, vec![format!("Zoë O'Brien, Jr. {tag}")]);
    assert_eq!(read_attr(&mut admin, &first.dn, "givenName").await, vec!["Zoë"]);
    assert!(first.login.starts_with("zoe.obrienjr") && first.login.len() <= 20, "{}", first.login);

    // Another person, same names: unique CN and sAMAccountName by suffix.
    let twin = dir
        .sync_flexhr_user(&record(
            json!({"EmployeeId": format!("H2{tag}"), "FirstName": "Zoë", "LastName": format!("O'Brien, Jr. {tag}")}),
        ))
        .await
        .unwrap();
    assert_eq!(twin.status, SyncStatus::Created);
    assert_eq!(twin.dn, format!(r"CN=Zoë O'Brien\2c Jr. {tag} (2),{ou}"));
    assert_ne!(twin.login.to_lowercase(), first.login.to_lowercase());
    assert!(twin.login.ends_with('2') && twin.login.len() <= 20, "{}", twin.login);

    // Every special character of RFC 4514 and 4515 in the names.
    let nasty_last = format!(r#"#Sp,e+c"i\a<l>;={tag}*()"#);
    let nasty = dir
        .sync_flexhr_user(&record(json!({"EmployeeId": format!("H3{tag}"), "FirstName": " *)(objectClass=*", "LastName": nasty_last, "Username": "n@sty:user"})))
        .await
        .unwrap();
    assert_eq!(nasty.status, SyncStatus::Created);
    assert_eq!(nasty.login, "nstyuser");
    assert_eq!(read_attr(&mut admin, &nasty.dn, "sn").await, vec![nasty_last.clone()]);
    assert_eq!(read_attr(&mut admin, &nasty.dn, "displayName").await, vec![format!("*)(objectClass=* {nasty_last}")]);
    assert_eq!(dir.sync_flexhr_user(&record(json!({"EmployeeId": format!("H3{tag}"), "FirstName": "*)(objectClass=*", "LastName": nasty_last, "Username": "n@sty:user"}))).await.unwrap().status, SyncStatus::Unchanged);

    // Bad input changes nothing.
    let err = dir.sync_flexhr_user(&record(json!({"FirstName": "No", "LastName": "Key"}))).await.unwrap_err();
    assert!(matches!(err, DirectoryError::InvalidInput(_)) && !err.is_transient());
}

#[tokio::test]
async fn flexhr_directory_unreachable_is_transient() {
    let dir = Directory::new(
        "ActiveDirectory",
        &ad_config("ldap://127.0.0.1:1", &format!("CN=Users,{AD_BASE}"), LAB_PLAINTEXT),
    )
    .unwrap();
    let err = dir
        .sync_flexhr_user(&record(json!({"EmployeeId": "E1", "FirstName": "A", "LastName": "B"})))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(err.code(), "unreachable");
}

#[tokio::test]
async fn dry_run_records_what_it_would_do() {
    // No server: the shipped configuration must work on a machine without AD.
    let cfg = ad_config("ldaps://dc1.invalid", "OU=Staff,DC=example,DC=test", "dry_run = true\n");
    let dir = Directory::new("ActiveDirectory", &cfg).unwrap();
    assert!(dir.is_dry_run());
    let out = dir
        .sync_flexhr_user(&record(json!({"EmployeeId": "E7", "FirstName": "Zoë", "LastName": "O'Brien, Jr.", "JobTitle": "CFO", "ManagerEmployeeId": "E1"})))
        .await
        .unwrap();
    assert_eq!(out.status, SyncStatus::Created);
    assert!(out.dry_run);
    assert_eq!(out.dn, r"CN=Zoë O'Brien\2c Jr.,OU=Staff,DC=example,DC=test");
    assert_eq!(out.login, "zoe.obrienjr");
    assert_eq!(out.manager, ManagerOutcome::Unresolved { employee_id: "E1".into() });
    let planned = dir.planned_changes();
    assert_eq!(planned.len(), 1);
    assert_eq!(planned[0].operation, "create_user");
    assert!(
        planned[0]
            .description
            .starts_with(r"would create CN=Zoë O'Brien\2c Jr.,OU=Staff,DC=example,DC=test with attributes"),
        "{}",
        planned[0].description
    );
    assert!(
        planned[0].description.contains("title: CFO")
            && planned[0].description.contains("sAMAccountName: zoe.obrienjr")
    );
    assert_eq!(planned[0].attributes["employeeID"], vec!["E7"]);

    assert!(dir.find_user(&login("anyone")).await.unwrap().is_none());
    assert!(dir.disable_user(&login("jdoe")).await.unwrap());
    dir.reset_password(&login("jdoe"), &Secret::new("Secret!Dry-1"), false).await.unwrap();
    let planned = dir.take_planned_changes();
    assert_eq!(planned.len(), 3);
    assert_eq!(
        planned[1].description,
        "would disable user with account name jdoe (ACCOUNTDISABLE bit of userAccountControl)"
    );
    assert_eq!(planned[2].description, "would reset the password of user with account name jdoe");
    assert!(!format!("{planned:?}").contains("Secret!Dry-1"));
    assert!(dir.planned_changes().is_empty());
    assert_eq!(dir.connections_opened(), 0);
}

// ---- OpenLDAP (inetOrgPerson) -------------------------------------------------------------

#[tokio::test]
async fn ldap_core_operations() {
    let server = Slapd::start();
    let dir = server.directory();
    let mut admin = server.admin().await;
    let people = format!("ou=people,{LDAP_BASE}");
    let user = NewUser {
        name: "Zoë O'Brien, Jr.".into(),
        login: "zobrien".into(),
        attributes: attrs(&[
            ("givenName", "Zoë"),
            ("sn", "O'Brien"),
            ("mail", "zoe@example.com"),
            ("employeeNumber", "E100"),
        ]),
        ..Default::default()
    };
    let dn = dir.create_user(&user).await.unwrap().dn;
    assert_eq!(dn, format!(r"cn=Zoë O'Brien\2c Jr.,{people}"));
    for id in [
        login("zobrien"),
        UserId::parse("zoe@example.com").unwrap(),
        UserId::by("employeeID", "E100").unwrap(),
        UserId::parse(&dn).unwrap(),
    ] {
        let e = dir.find_user(&id).await.unwrap().unwrap_or_else(|| panic!("not found by {id}"));
        assert_eq!(e.get("uid"), Some("zobrien"));
    }
    assert_eq!(
        dir.update_user(&login("zobrien"), &attrs(&[("title", "CFO"), ("sn", "O'Brien")])).await.unwrap(),
        vec!["title"]
    );
    assert_eq!(read_attr(&mut admin, &dn, "title").await, vec!["CFO"]);

    let boss = NewUser {
        name: "Boss".into(),
        login: "boss".into(),
        attributes: attrs(&[("sn", "Boss")]),
        ..Default::default()
    };
    let boss_dn = dir.create_user(&boss).await.unwrap().dn;
    dir.set_manager(&login("zobrien"), Some(&login("boss"))).await.unwrap();
    assert_eq!(read_attr(&mut admin, &dn, "manager").await, vec![boss_dn.clone()]);

    let group_dn = format!("cn=staff,ou=groups,{LDAP_BASE}");
    admin
        .add(
            &group_dn,
            vec![
                ("objectClass", ["groupOfNames"].into()),
                ("cn", ["staff"].into()),
                ("member", [boss_dn.as_str()].into()),
            ],
        )
        .await
        .unwrap()
        .success()
        .unwrap();
    let staff = GroupId::parse("staff").unwrap();
    assert!(dir.add_to_group(&login("zobrien"), &staff).await.unwrap());
    assert!(!dir.add_to_group(&login("zobrien"), &staff).await.unwrap());
    let groups = dir.groups_of(&login("zobrien")).await.unwrap();
    assert_eq!(groups.iter().map(|g| g.dn.to_lowercase()).collect::<Vec<_>>(), vec![group_dn.to_lowercase()]);
    assert!(dir.remove_from_group(&login("zobrien"), &staff).await.unwrap());
    assert!(!dir.remove_from_group(&login("zobrien"), &staff).await.unwrap());

    let found =
        dir.search(&SearchRequest::new("(&(objectClass=inetOrgPerson)(sn={}))", vec!["O'Brien".into()])).await.unwrap();
    assert_eq!(found.len(), 1);

    let moved = dir.move_user(&login("zobrien"), &format!("ou=groups,{LDAP_BASE}")).await.unwrap();
    assert!(moved.ends_with(&format!("ou=groups,{LDAP_BASE}")), "{moved}");
    let renamed = dir.rename_user(&login("zobrien"), "Zoë Smith").await.unwrap();
    assert!(renamed.starts_with("cn=Zoë Smith,"), "{renamed}");
    let err = dir.disable_user(&login("zobrien")).await.unwrap_err();
    assert!(matches!(err, DirectoryError::Unsupported(_)), "{err:?}");
    dir.delete_user(&login("zobrien")).await.unwrap();
    assert!(!dir.user_exists(&login("zobrien")).await.unwrap());
}

#[tokio::test]
async fn ldap_passwords_over_starttls_and_ldaps_only() {
    let server = Slapd::start();
    let plain = server.directory();
    let user = NewUser {
        name: "Pat Word".into(),
        login: "pword".into(),
        attributes: attrs(&[("sn", "Word")]),
        ..Default::default()
    };
    let dn = plain.create_user(&user).await.unwrap().dn;
    let err = plain.reset_password(&login("pword"), &Secret::new("s3cret-pw"), false).await.unwrap_err();
    assert!(matches!(err, DirectoryError::InsecureConnection { .. }), "{err:?}");

    let starttls = Directory::new("OpenLDAP", &server.config(&server.url(), "starttls = true\n")).unwrap();
    starttls.reset_password(&login("pword"), &Secret::new("via-starttls-1"), false).await.unwrap();
    assert!(can_bind(&server.url(), &dn, "via-starttls-1").await);
    let ldaps = Directory::new("OpenLDAP", &server.config(&server.ldaps_url(), "")).unwrap();
    ldaps.reset_password(&login("pword"), &Secret::new("via-ldaps-2"), false).await.unwrap();
    assert!(can_bind(&server.url(), &dn, "via-ldaps-2").await);
    assert!(!can_bind(&server.url(), &dn, "via-starttls-1").await);
}

#[tokio::test]
async fn ldap_reconnects_after_the_server_restarts() {
    let mut server = Slapd::start();
    let dir = server.directory();
    assert!(!dir.user_exists(&login("nobody")).await.unwrap());
    assert_eq!(dir.connections_opened(), 1);
    server.stop();
    let err = dir.user_exists(&login("nobody")).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    server.restart();
    assert!(!dir.user_exists(&login("nobody")).await.unwrap());
    assert_eq!(dir.connections_opened(), 2);
}

#[tokio::test]
async fn ldap_flexhr_sync() {
    let server = Slapd::start();
    let dir = server.directory();
    let mut admin = server.admin().await;
    let boss = dir
        .sync_flexhr_user(&record(json!({"EmployeeId": "M1", "FirstName": "Max", "LastName": "Boss"})))
        .await
        .unwrap();
    let rec = json!({"EmployeeId": "E1", "FirstName": "José", "LastName": "Müller-Lüdenscheidt-Averylongname",
                     "Department": "Finance", "Company": "ACME", "ManagerEmployeeId": "M1", "IsNewUser": 1});
    let out = dir.sync_flexhr_user(&record(rec.clone())).await.unwrap();
    assert_eq!(out.status, SyncStatus::Created);
    assert_eq!(out.login, "jose.muller-ludenscheidt-averylongname", "no 20-character limit on uid");
    assert_eq!(read_attr(&mut admin, &out.dn, "employeeNumber").await, vec!["E1"]);
    assert_eq!(read_attr(&mut admin, &out.dn, "departmentNumber").await, vec!["Finance"]);
    assert_eq!(read_attr(&mut admin, &out.dn, "o").await, vec!["ACME"]);
    assert_eq!(read_attr(&mut admin, &out.dn, "manager").await, vec![boss.dn]);
    assert_eq!(dir.sync_flexhr_user(&record(rec.clone())).await.unwrap().status, SyncStatus::Unchanged);
    let mut leaver = rec;
    leaver["Active"] = json!(false);
    let err = dir.sync_flexhr_user(&record(leaver)).await.unwrap_err();
    assert!(matches!(err, DirectoryError::Unsupported(_)), "{err:?}");
}

#[tokio::test]
async fn ldap_flexhr_a_manager_synced_at_the_same_time_is_resolved() {
    let server = Slapd::start();
    let dir = server.directory();
    let mut admin = server.admin().await;
    let person = |emp: &str, first: &str, last: &str, manager: Option<&str>| {
        record(json!({"EmployeeId": emp, "FirstName": first, "LastName": last, "ManagerEmployeeId": manager,
                      "IsNewUser": 1, "Active": true}))
    };
    let boss = person("M1", "Max", "Boss", None);
    let reports: Vec<_> =
        (0..5).map(|i| person(&format!("R{i}"), "Rita", &format!("Report {i}"), Some("M1"))).collect();
    // Two new people named as each other's manager: neither may wait for the other forever.
    let (ann, bob) = (person("A1", "Ann", "Mutual", Some("B1")), person("B1", "Bob", "Mutual", Some("A1")));
    // All at once on the one connection, the manager's sync started first (join! polls in
    // order): each report's look-up of the manager reaches the server before or after the
    // manager is created, as it happens.
    let (boss_out, report_outs, ann_out, bob_out) = futures::join!(
        dir.sync_flexhr_user(&boss),
        futures::future::join_all(reports.iter().map(|r| dir.sync_flexhr_user(r))),
        dir.sync_flexhr_user(&ann),
        dir.sync_flexhr_user(&bob),
    );
    let boss_out = boss_out.unwrap();
    assert_eq!(boss_out.status, SyncStatus::Created);
    for out in report_outs {
        let out = out.unwrap();
        assert_eq!(out.status, SyncStatus::Created);
        assert_eq!(out.manager, ManagerOutcome::Resolved { employee_id: "M1".into(), dn: boss_out.dn.clone() });
        assert!(out.is_complete());
        assert_eq!(read_attr(&mut admin, &out.dn, "manager").await, vec![boss_out.dn.clone()]);
    }
    let (ann_out, bob_out) = (ann_out.unwrap(), bob_out.unwrap());
    assert_eq!((ann_out.status, bob_out.status), (SyncStatus::Created, SyncStatus::Created));
    // One of the two waited for the other and has its manager; the other could not wait
    // (its manager's sync was waiting for it) and says its manager must be entered.
    let resolved = [&ann_out, &bob_out].iter().filter(|o| o.is_complete()).count();
    assert!(resolved >= 1, "{ann_out:?} {bob_out:?}");
    // What each says of its manager is what is written.
    for (emp, out) in [("A1", &ann_out), ("B1", &bob_out)] {
        let other = if emp == "A1" { &bob_out } else { &ann_out };
        let written = read_attr(&mut admin, &out.dn, "manager").await;
        match &out.manager {
            ManagerOutcome::Resolved { dn, .. } => assert_eq!((dn, &written), (&other.dn, &vec![other.dn.clone()])),
            ManagerOutcome::Unresolved { .. } => assert!(written.is_empty(), "{written:?}"),
            ManagerOutcome::NotGiven => panic!("{emp} names a manager"),
        }
    }
}

#[tokio::test]
async fn ldap_flexhr_long_names_get_a_free_cn_each() {
    let server = Slapd::start();
    let dir = server.directory();
    // 63 characters: the CNs with a suffix are cut (`... (2)` keeps 60 of them), so they
    // do not start with the whole name.
    let last = format!("Averyveryverylonglastname-{}", "x".repeat(48 - "Averyveryverylonglastname-".len()));
    let first = "Maria Fernanda";
    assert_eq!(format!("{first} {last}").chars().count(), 63);
    let mut dns = Vec::new();
    for i in 0..4 {
        let out = dir
            .sync_flexhr_user(&record(json!({"EmployeeId": format!("L{i}"), "FirstName": first, "LastName": last})))
            .await
            .unwrap();
        assert_eq!(out.status, SyncStatus::Created);
        dns.push(out.dn);
    }
    let unique: std::collections::HashSet<String> = dns.iter().map(|d| d.to_lowercase()).collect();
    assert_eq!(unique.len(), 4, "{dns:#?}");
    assert!(dns[1].contains(" (2),") && dns[3].contains(" (4),"), "{dns:#?}");
}

#[tokio::test]
async fn ldap_lookups_asked_together_share_searches_and_find_what_each_alone_finds() {
    let server = Slapd::start();
    let mut admin = server.admin().await;
    let people = format!("ou=people,{LDAP_BASE}");
    let mut accounts: Vec<(String, String, String)> =
        (0..40).map(|i| (format!("Person {i}"), format!("p{i}"), format!("E{i}"))).collect();
    // Two accounts with one ID, a value stored in other case, one that is not plain ASCII.
    for (cn, uid, employee) in
        [("Twin A", "twa", "T1"), ("Twin B", "twb", "T1"), ("Mixed Case", "mixed", "MiXeD-7"), ("Zoë", "zoe", "Zoë-1")]
    {
        accounts.push((cn.into(), uid.into(), employee.into()));
    }
    for (cn, uid, employee) in &accounts {
        let attrs = vec![
            ("objectClass", ["inetOrgPerson"].into()),
            ("cn", [cn.as_str()].into()),
            ("sn", ["Person"].into()),
            ("uid", [uid.as_str()].into()),
            ("employeeNumber", [employee.as_str()].into()),
        ];
        admin.add(&format!("cn={cn},{people}"), attrs).await.unwrap().success().unwrap();
    }

    let mut asked: Vec<UserId> = Vec::new();
    for i in 0..60 {
        // E0..E39 exist, E40..E59 do not; every other one in other case.
        let id = if i % 2 == 0 { format!("E{i}") } else { format!("e{i}") };
        asked.push(UserId::by("employeeNumber", &id).unwrap());
    }
    for v in ["T1", "mixed-7", "Zoë-1", "*", "E1)(uid=*"] {
        asked.push(UserId::by("employeeNumber", v).unwrap());
    }
    for v in ["p3", "P4", "nobody", "twa"] {
        asked.push(login(v));
    }
    let answer = |r: Result<Option<tripline::directory::Entry>, DirectoryError>| match r {
        Ok(found) => Ok(found.map(|e| e.dn.to_lowercase())),
        Err(e) => Err(format!("{e:?}")),
    };

    // Each alone, one after the other: the reference.
    let alone = server.directory();
    let mut expected = Vec::new();
    for id in &asked {
        expected.push(answer(alone.find_user(id).await));
    }
    assert_eq!(alone.searches_sent(), asked.len() as u64);

    // All at once: the same answers from far fewer searches.
    let together = server.directory();
    let got: Vec<_> = futures::future::join_all(asked.iter().map(|id| together.find_user(id)))
        .await
        .into_iter()
        .map(answer)
        .collect();
    for (id, (want, got)) in asked.iter().zip(expected.iter().zip(&got)) {
        assert_eq!(want, got, "{id}");
    }
    let found = |i: usize| expected[i].clone().unwrap().unwrap_or_default();
    assert_eq!(found(0), format!("cn=person 0,{people}"));
    assert_eq!(found(1), format!("cn=person 1,{people}"), "found without case");
    assert!(expected[40].as_ref().unwrap().is_none());
    assert!(expected[60].as_ref().unwrap_err().contains("Ambiguous"), "{:?}", expected[60]);
    assert_eq!(found(61), format!("cn=mixed case,{people}"));
    assert_eq!(found(62), format!("cn=zoë,{people}"));
    assert!(expected[63].as_ref().unwrap().is_none() && expected[64].as_ref().unwrap().is_none());
    assert!(
        together.searches_sent() * 4 < asked.len() as u64,
        "{} searches for {} look-ups",
        together.searches_sent(),
        asked.len()
    );
}
