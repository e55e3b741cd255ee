//! What the directory benchmarks share: a slapd on a free loopback port (the recipe, with
//! `dbnosync`), its admin connection, OUs, and the reference: plain ldap3 adds, `IN_FLIGHT`
//! at a time on one connection.

// Each benchmark uses a part of this module.
#![allow(dead_code)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use ldap3::LdapConnAsync;

pub const USERS: usize = 1000;
pub const IN_FLIGHT: usize = 32;
pub const BASE: &str = "dc=example,dc=com";

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

/// A running slapd, stopped when dropped.
pub struct Slapd {
    pub child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_slapd() -> Slapd {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("data")).unwrap();
    let conf = format!(
        "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
         include /etc/ldap/schema/inetorgperson.schema\ninclude /etc/ldap/schema/nis.schema\n\
         modulepath /usr/lib/ldap\nmoduleload back_mdb\npidfile {d}/slapd.pid\nargsfile {d}/slapd.args\n\
         database mdb\ndbnosync\nmaxsize 1073741824\nsuffix \"{BASE}\"\nrootdn \"cn=admin,{BASE}\"\n\
         rootpw secret\ndirectory {d}/data\nindex objectClass eq\nindex uid,cn,mail eq,sub\nindex employeeNumber eq\n",
        d = d.display()
    );
    std::fs::write(d.join("slapd.conf"), conf).unwrap();
    let ldif = format!("dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n");
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

/// A connection bound as the admin.
pub async fn admin(url: &str) -> ldap3::Ldap {
    let (conn, mut ldap) = LdapConnAsync::new(url).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.drive().await;
    });
    ldap.simple_bind(&format!("cn=admin,{BASE}"), "secret").await.unwrap().success().unwrap();
    ldap
}

/// A new OU under the base; its DN.
pub async fn add_ou(url: &str, name: &str) -> String {
    let mut ldap = admin(url).await;
    let dn = format!("ou={name},{BASE}");
    ldap.add(&dn, vec![("objectClass", HashSet::from(["organizationalUnit"])), ("ou", HashSet::from([name]))])
        .await
        .unwrap()
        .success()
        .unwrap();
    dn
}

/// The reference: adds `USERS` entries under `ou` with plain ldap3, `IN_FLIGHT` at a time on
/// one connection; adds per second. `tag` keeps names unique across rounds.
pub async fn raw_rate(url: &str, ou: &str, tag: &str) -> f64 {
    let ldap = admin(url).await;
    let started = Instant::now();
    stream::iter(0..USERS)
        .map(|i| {
            let mut l = ldap.clone();
            let ou = ou.to_string();
            async move {
                let uid = format!("u{tag}x{i}");
                let cn = format!("User {tag}x{i}");
                let attrs = vec![
                    ("objectClass", HashSet::from(["top", "person", "organizationalPerson", "inetOrgPerson"])),
                    ("cn", HashSet::from([cn.as_str()])),
                    ("sn", HashSet::from(["User"])),
                    ("uid", HashSet::from([uid.as_str()])),
                    ("givenName", HashSet::from(["Given"])),
                ];
                l.add(&format!("cn={cn},{ou}"), attrs).await.unwrap().success().unwrap();
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
    USERS as f64 / started.elapsed().as_secs_f64()
}
