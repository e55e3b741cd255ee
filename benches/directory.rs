//! Directory throughput: 1,000 users added to a local slapd (`dbnosync`) by a plain ldap3
//! client keeping 32 adds in flight on one connection, against `Directory::create_user`
//! called from 32 concurrent tasks. Prints both rates and their ratio (the target is at
//! least 0.8).
//!
//! `cargo bench --bench directory` (needs `slapd` and `slapadd`: apt-get install slapd).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use ldap3::{LdapConnAsync, Scope};
use tripline::directory::{Directory, DirectoryConfig, NewUser};

const USERS: usize = 1000;
const IN_FLIGHT: usize = 32;
const ROUNDS: usize = 3;
const BASE: &str = "dc=example,dc=com";

fn binary(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    eprintln!("`{name}` is not installed: apt-get install -y --no-install-recommends slapd ldap-utils");
    std::process::exit(2);
}

struct Slapd {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_slapd() -> Slapd {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("data")).unwrap();
    let conf = format!(
        "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
         include /etc/ldap/schema/inetorgperson.schema\ninclude /etc/ldap/schema/nis.schema\n\
         modulepath /usr/lib/ldap\nmoduleload back_mdb\npidfile {d}/slapd.pid\nargsfile {d}/slapd.args\n\
         database mdb\ndbnosync\nmaxsize 1073741824\nsuffix \"{BASE}\"\nrootdn \"cn=admin,{BASE}\"\n\
         rootpw secret\ndirectory {d}/data\nindex objectClass eq\nindex uid,cn,mail eq\n",
        d = d.display()
    );
    std::fs::write(d.join("slapd.conf"), conf).unwrap();
    let ldif = format!(
        "dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
         dn: ou=raw,{BASE}\nobjectClass: organizationalUnit\nou: raw\n\n\
         dn: ou=people,{BASE}\nobjectClass: organizationalUnit\nou: people\n"
    );
    std::fs::write(d.join("base.ldif"), ldif).unwrap();
    let ok = Command::new(binary("slapadd"))
        .arg("-q")
        .arg("-f")
        .arg(d.join("slapd.conf"))
        .arg("-l")
        .arg(d.join("base.ldif"))
        .status()
        .unwrap();
    assert!(ok.success(), "slapadd failed");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("ldap://127.0.0.1:{port}");
    let child = Command::new(binary("slapd"))
        .args(["-h", &format!("{url}/"), "-d", "0", "-f"])
        .arg(d.join("slapd.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "slapd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Slapd { child, url, _dir: dir }
}

/// Adds `USERS` entries under `ou` with plain ldap3, `IN_FLIGHT` at a time; adds per second.
async fn raw_rate(url: &str, ou: &str) -> f64 {
    let (conn, mut ldap) = LdapConnAsync::new(url).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.drive().await;
    });
    ldap.simple_bind(&format!("cn=admin,{BASE}"), "secret").await.unwrap().success().unwrap();
    let started = Instant::now();
    stream::iter(0..USERS)
        .map(|i| {
            let mut l = ldap.clone();
            let ou = ou.to_string();
            async move {
                let uid = format!("raw{i}");
                let cn = format!("Raw User {i}");
                let attrs = vec![
                    ("objectClass", HashSet::from(["top", "person", "organizationalPerson", "inetOrgPerson"])),
                    ("cn", HashSet::from([cn.as_str()])),
                    ("sn", HashSet::from(["User"])),
                    ("uid", HashSet::from([uid.as_str()])),
                    ("givenName", HashSet::from(["Raw"])),
                ];
                l.add(&format!("cn={cn},{ou}"), attrs).await.unwrap().success().unwrap();
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
    USERS as f64 / started.elapsed().as_secs_f64()
}

/// Creates `USERS` users under `ou` with `Directory::create_user` from `IN_FLIGHT` tasks.
async fn tripline_rate(dir: Arc<Directory>, ou: &str) -> f64 {
    dir.connect().await.unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|t| {
            let (dir, ou) = (dir.clone(), ou.to_string());
            tokio::spawn(async move {
                for i in (t..USERS).step_by(IN_FLIGHT) {
                    let user = NewUser {
                        name: format!("Tripline User {i}"),
                        login: format!("tl{i}"),
                        ou: Some(ou.clone()),
                        attributes: [
                            ("sn".to_string(), vec!["User".to_string()]),
                            ("givenName".into(), vec!["Tl".into()]),
                        ]
                        .into(),
                        ..Default::default()
                    };
                    dir.create_user(&user).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    USERS as f64 / started.elapsed().as_secs_f64()
}

async fn add_ou(url: &str, name: &str) -> String {
    let (conn, mut ldap) = LdapConnAsync::new(url).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.drive().await;
    });
    ldap.simple_bind(&format!("cn=admin,{BASE}"), "secret").await.unwrap().success().unwrap();
    let dn = format!("ou={name},{BASE}");
    ldap.add(&dn, vec![("objectClass", HashSet::from(["organizationalUnit"])), ("ou", HashSet::from([name]))])
        .await
        .unwrap()
        .success()
        .unwrap();
    let (found, _) = ldap.search(&dn, Scope::Base, "(objectClass=*)", vec!["1.1"]).await.unwrap().success().unwrap();
    assert_eq!(found.len(), 1);
    dn
}

fn main() {
    let slapd = start_slapd();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let text = format!(
            "kind = \"ldap\"\nurl = \"{}\"\nbind_dn = \"cn=admin,{BASE}\"\nbind_password = \"secret\"\nbase_dn = \"{BASE}\"\n",
            slapd.url
        );
        let cfg: DirectoryConfig = toml::from_str(&text).unwrap();
        let dir = Arc::new(Directory::new("bench", &cfg).unwrap());
        let (mut best_raw, mut best_tl) = (0f64, 0f64);
        for round in 0..ROUNDS {
            let raw_ou = add_ou(&slapd.url, &format!("raw{round}")).await;
            let tl_ou = add_ou(&slapd.url, &format!("tl{round}")).await;
            let raw = raw_rate(&slapd.url, &raw_ou).await;
            let tl = tripline_rate(dir.clone(), &tl_ou).await;
            println!("round {round}: ldap3 {raw:>7.0} adds/s   tripline {tl:>7.0} adds/s   ratio {:.2}", tl / raw);
            best_raw = best_raw.max(raw);
            best_tl = best_tl.max(tl);
        }
        println!(
            "best of {ROUNDS}: ldap3 ({IN_FLIGHT} in flight) {best_raw:.0} adds/s, tripline create_user ({IN_FLIGHT} tasks) \
             {best_tl:.0} adds/s, ratio {:.2} (target >= 0.80); connections opened: {}",
            best_tl / best_raw,
            dir.connections_opened()
        );
    });
}
