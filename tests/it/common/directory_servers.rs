//! Real directory servers for the tests, following `recipes/directory-servers.md`:
//!
//! - one Samba AD DC per test run, on 127.0.0.1 and shared by every test (its ports 389/636
//!   are fixed; tests keep apart by working in OUs of their own). A file lock keeps two test
//!   processes on one machine from starting two DCs. The DC is started with `samba -i`
//!   holding its stdin: when the test process ends, the pipe closes and the DC exits (a
//!   dead-man switch). The domain is provisioned once per run into a template folder that
//!   is never started; each DC runs on a copy of it.
//! - private DCs for tests that stop and start their DC ([`Samba::private_on`]), copies of
//!   the same template on another loopback address (127.0.0.2).
//! - one slapd per test that asks, on free loopback ports (plain and LDAPS), in its own temp
//!   folder, stopped when dropped (and by the same stdin switch if the process dies).
//!
//! Both speak TLS with a certificate of a throwaway CA made per run (`subjectAltName`
//! localhost, 127.0.0.1 and 127.0.0.2), so tests can verify it with `ca_file`.
//! Missing binaries fail the test with the command that installs them.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings};
use tripline::directory::{Directory, DirectoryConfig};

/// The domain the Samba DC serves.
pub const AD_BASE: &str = "DC=example,DC=test";
/// Its administrator, as bind DN.
pub const AD_ADMIN: &str = "Administrator@EXAMPLE.TEST";
/// Its administrator's password.
pub const AD_ADMIN_PW: &str = "Passw0rd!Adm1n";
/// slapd's suffix and admin.
pub const LDAP_BASE: &str = "dc=example,dc=com";
pub const LDAP_ADMIN: &str = "cn=admin,dc=example,dc=com";
pub const LDAP_ADMIN_PW: &str = "secret";

const INSTALL: &str = "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
samba samba-ad-dc samba-ad-provision samba-dsdb-modules samba-vfs-modules winbind ldb-tools ldap-utils slapd openssl";

/// The path of a binary, or a failed test saying how to install it.
fn binary(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path.split(':').map(PathBuf::from).chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{name}` is not installed; the directory tests need real servers: {INSTALL}");
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A folder for this test process under the system temp folder; folders of processes that
/// are gone are removed first.
fn run_dir(kind: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("tripline-it-{kind}"));
    std::fs::create_dir_all(&root).unwrap();
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let pid = e.file_name().to_string_lossy().split('-').next().unwrap_or("").to_string();
            if !pid.is_empty() && !Path::new("/proc").join(&pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = root.join(format!("{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A short unique token (per process and call).
pub fn unique() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{:x}{n}", t % 0xfffff)
}

/// The throwaway CA and a server certificate for 127.0.0.1 / localhost.
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn certs() -> &'static Certs {
    static CERTS: OnceLock<Certs> = OnceLock::new();
    CERTS.get_or_init(|| {
        let openssl = binary("openssl");
        let dir = run_dir("tls");
        let p = |n: &str| dir.join(n);
        run(
            Command::new(&openssl)
                .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=tripline test CA"])
                .arg("-keyout")
                .arg(p("ca.key"))
                .arg("-out")
                .arg(p("ca.pem")),
            "openssl: make the CA",
        );
        run(
            Command::new(&openssl)
                .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost"])
                .arg("-keyout")
                .arg(p("key.pem"))
                .arg("-out")
                .arg(p("req.csr")),
            "openssl: make the server key",
        );
        std::fs::write(p("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:127.0.0.2\n").unwrap();
        run(
            Command::new(&openssl)
                .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
                .arg("-in")
                .arg(p("req.csr"))
                .arg("-CA")
                .arg(p("ca.pem"))
                .arg("-CAkey")
                .arg(p("ca.key"))
                .arg("-out")
                .arg(p("cert.pem"))
                .arg("-extfile")
                .arg(p("ext.cnf")),
            "openssl: sign the server certificate",
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p("key.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
        Certs { ca: p("ca.pem"), cert: p("cert.pem"), key: p("key.pem") }
    })
}

fn port_open(ip: std::net::IpAddr, port: u16) -> bool {
    TcpStream::connect_timeout(&(ip, port).into(), Duration::from_millis(200)).is_ok()
}

/// Waits until `ldapsearch` gets an answer from `url`, or the child exits, or time is up.
fn wait_ready(child: &mut Child, url: &str, log: &Path, within: Duration) -> Result<(), String> {
    let ldapsearch = binary("ldapsearch");
    let start = Instant::now();
    while start.elapsed() < within {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("the server exited ({status}) before answering; its log:\n{log}"));
        }
        let ok = Command::new(&ldapsearch)
            .args(["-x", "-H", url, "-s", "base", "-b", "", "namingContexts"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("no answer from {url} within {within:?}"))
}

/// The shared Samba AD DC of this test run.
pub struct Samba {
    dir: PathBuf,
    /// Holding it keeps the DC alive; the DC exits when the test process does.
    _stdin: ChildStdin,
    _lock: std::fs::File,
}

impl Samba {
    /// The CA that signed the DC's certificate.
    pub fn ca_file(&self) -> &Path {
        &certs().ca
    }

    /// Where the DC's files are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The DC, provisioned and started on first use.
pub fn samba() -> &'static Samba {
    static SAMBA: OnceLock<Samba> = OnceLock::new();
    SAMBA.get_or_init(start_samba)
}

/// A DC folder provisioned once per test run and never started: every DC of the run is a
/// copy of it (0.1 s instead of a provision's 3–7 s).
fn samba_template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(provision_samba)
}

fn provision_samba() -> PathBuf {
    let samba_tool = binary("samba-tool");
    binary("samba");
    binary("ldapsearch");
    let certs = certs();
    let d = run_dir("samba");
    std::fs::create_dir_all(d.join("run")).unwrap();
    let ds = d.display();
    run(
        Command::new(&samba_tool)
            .args(["domain", "provision"])
            .arg(format!("--targetdir={ds}"))
            .args([
                "--realm=EXAMPLE.TEST",
                "--domain=EXAMPLE",
                "--server-role=dc",
                "--dns-backend=NONE",
                "--use-rfc2307",
                "--host-name=dc1",
                &format!("--adminpass={AD_ADMIN_PW}"),
                "--option=interfaces=127.0.0.1",
                "--option=bind interfaces only=yes",
                "--option=server services=ldap cldap",
                &format!("--option=log file={ds}/log.%m"),
                &format!("--option=pid directory={ds}/run"),
                &format!("--option=ncalrpc dir={ds}/run/ncalrpc"),
                &format!("--option=winbindd socket directory={ds}/run/winbindd"),
                &format!("--option=ntp signd socket directory={ds}/run/ntp_signd"),
            ])
            .current_dir(&d),
        "samba-tool domain provision",
    );
    // Provision drops this option; without it simple binds over ldap:// fail. The TLS lines
    // give the DC a certificate the tests can verify. `ldb:nosync` (as Samba's own selftest
    // sets it) skips the fsync of each write: a throwaway DC needs no durability, and tests
    // that add thousands of entries take seconds instead of minutes.
    let conf_path = d.join("etc/smb.conf");
    let conf = std::fs::read_to_string(&conf_path).unwrap();
    let extra = format!(
        "[global]\n\tldap server require strong auth = no\n\tldb:nosync = true\n\ttls keyfile = {}\n\ttls certfile = {}\n\ttls cafile = {}\n",
        certs.key.display(),
        certs.cert.display(),
        certs.ca.display()
    );
    assert!(conf.contains("[global]\n") && conf.contains("\tinterfaces = 127.0.0.1\n"), "unexpected smb.conf:\n{conf}");
    std::fs::write(&conf_path, conf.replacen("[global]\n", &extra, 1)).unwrap();
    d
}

/// A copy of the template in a folder of its own, serving on `ip` (a loopback address).
/// Samba takes a bare address only when an interface has it; `ip/8` makes it bind the
/// address anyway, so 127.0.0.2 works without `ip addr add`.
fn copy_samba_template(ip: &str) -> PathBuf {
    let tpl = samba_template();
    let d = run_dir("samba");
    run(Command::new("cp").arg("-a").arg(tpl.join(".")).arg(&d), "copy the Samba template");
    let conf_path = d.join("etc/smb.conf");
    let mut conf = std::fs::read_to_string(&conf_path).unwrap().replace(&*tpl.to_string_lossy(), &d.to_string_lossy());
    if ip != "127.0.0.1" {
        conf = conf.replace("\tinterfaces = 127.0.0.1\n", &format!("\tinterfaces = {ip}/8\n"));
    }
    std::fs::write(&conf_path, conf).unwrap();
    d
}

/// Starts `samba -i` on the DC folder `d` and waits until it answers on `ip`. Its stdin is
/// the returned pipe: closing it stops the DC.
fn spawn_samba(d: &Path, ip: &str) -> (Child, ChildStdin) {
    let samba = binary("samba");
    let log = d.join("samba.out");
    let mut last_error = String::new();
    for _attempt in 0..3 {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(&samba)
            .args(["-i", "-M", "single", "--debug-stdout", "-d1", "-s"])
            .arg(d.join("etc/smb.conf"))
            .stdin(Stdio::piped())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start samba: {e}"));
        match wait_ready(&mut child, &format!("ldap://{ip}"), &log, Duration::from_secs(30)) {
            Ok(()) => {
                let stdin = child.stdin.take().unwrap();
                return (child, stdin);
            }
            Err(e) => {
                last_error = e;
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    panic!("Samba AD DC did not start on {ip}: {last_error}");
}

/// Waits (up to 20 s) until nothing listens on the DC ports of `ip`.
fn wait_dc_ports_closed(ip: &str) {
    let ip: std::net::IpAddr = ip.parse().unwrap();
    let start = Instant::now();
    while (port_open(ip, 389) || port_open(ip, 636)) && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A file lock per DC address: two test processes on one machine never start two DCs on
/// the same fixed ports.
fn dc_lock(ip: &str) -> std::fs::File {
    let name =
        if ip == "127.0.0.1" { "tripline-it-samba.lock".to_string() } else { format!("tripline-it-samba-{ip}.lock") };
    let lock = std::fs::File::create(std::env::temp_dir().join(name)).unwrap();
    lock.lock().expect("lock the Samba test lock file");
    lock
}

fn start_samba() -> Samba {
    let lock = dc_lock("127.0.0.1");
    let d = copy_samba_template("127.0.0.1");
    // A DC of a test run that just ended may still be shutting down.
    wait_dc_ports_closed("127.0.0.1");
    let (mut child, stdin) = spawn_samba(&d, "127.0.0.1");
    // Reap it when it exits (the handle itself is not kept).
    std::thread::spawn(move || child.wait());
    Samba { dir: d, _stdin: stdin, _lock: lock }
}

/// A DC of one test, a copy of the template on another loopback address (the shared DC
/// holds 127.0.0.1's fixed ports), which the test may stop and start; stopped and removed
/// when dropped, and by the stdin switch if the process dies.
pub struct PrivateSamba {
    dir: PathBuf,
    ip: String,
    child: Option<(Child, ChildStdin)>,
    _lock: std::fs::File,
}

impl Samba {
    /// Starts a private DC on `ip` (127.0.0.2, ...), with the shared DC's domain, admin and
    /// certificate (whose names include 127.0.0.2).
    pub fn private_on(ip: &str) -> PrivateSamba {
        let lock = dc_lock(ip);
        let dir = copy_samba_template(ip);
        wait_dc_ports_closed(ip);
        let mut s = PrivateSamba { dir, ip: ip.to_string(), child: None, _lock: lock };
        s.start();
        s
    }
}

impl PrivateSamba {
    /// Starts the DC again (its data kept); returns once it answers.
    pub fn start(&mut self) {
        if self.child.is_none() {
            self.child = Some(spawn_samba(&self.dir, &self.ip));
        }
    }

    /// Stops the DC (its data kept); returns once its ports are closed.
    pub fn stop(&mut self) {
        if let Some((mut child, stdin)) = self.child.take() {
            drop(stdin);
            let _ = child.wait();
        }
        wait_dc_ports_closed(&self.ip);
    }

    /// `ldaps://IP`.
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://{}", self.ip)
    }

    /// The CA that signed the DC's certificate.
    pub fn ca_file(&self) -> &Path {
        &certs().ca
    }

    /// Where the DC's files are (its log: `samba.out`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// An ldap3 connection bound as the DC's administrator over plain LDAP.
    pub async fn admin(&self) -> Ldap {
        admin_conn(&format!("ldap://{}", self.ip), AD_ADMIN, AD_ADMIN_PW).await
    }
}

impl Drop for PrivateSamba {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `[directories.X]` section for the shared DC: `url` and extra lines of TOML.
pub fn ad_config(url: &str, users_ou: &str, extra: &str) -> DirectoryConfig {
    let text = format!(
        "kind = \"active_directory\"\nurl = \"{url}\"\nbind_dn = \"{AD_ADMIN}\"\nbind_password = \"{AD_ADMIN_PW}\"\n\
         base_dn = \"{AD_BASE}\"\nusers_ou = '{users_ou}'\nconnect_timeout = 5\nop_timeout = 20\n{extra}"
    );
    toml::from_str(&text).unwrap_or_else(|e| panic!("test config does not parse: {e}\n{text}"))
}

/// The lab setting that lets a test bind over plain `ldap://` (the bind password then goes in
/// clear, which tripline otherwise refuses).
pub const LAB_PLAINTEXT: &str = "allow_plaintext_bind = true\n";

/// A directory on the shared DC over plain LDAP (with [`LAB_PLAINTEXT`]), creating users in
/// `users_ou`.
pub fn ad_plain(users_ou: &str) -> Directory {
    samba();
    Directory::new("ActiveDirectory", &ad_config("ldap://127.0.0.1", users_ou, LAB_PLAINTEXT)).unwrap()
}

/// A directory on the shared DC over LDAPS, the certificate verified against the test CA.
pub fn ad_ldaps(users_ou: &str) -> Directory {
    let s = samba();
    let extra = format!("ca_file = '{}'\n", s.ca_file().display());
    Directory::new("ActiveDirectory", &ad_config("ldaps://127.0.0.1", users_ou, &extra)).unwrap()
}

/// An ldap3 connection bound as the DC's administrator, to set up and inspect behind the
/// back of the code under test.
pub async fn ad_admin() -> Ldap {
    samba();
    admin_conn("ldap://127.0.0.1", AD_ADMIN, AD_ADMIN_PW).await
}

async fn admin_conn(url: &str, dn: &str, pw: &str) -> Ldap {
    let settings = LdapConnSettings::new().set_no_tls_verify(true);
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, url).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.drive().await;
    });
    ldap.simple_bind(dn, pw).await.unwrap().success().unwrap();
    ldap
}

/// Creates an OU (with the given name, made unique) under `parent` and returns its DN.
pub async fn make_ou(ldap: &mut Ldap, parent: &str, name: &str) -> String {
    let dn = format!("OU={name}-{},{parent}", unique());
    ldap.add(&dn, vec![("objectClass", ["top", "organizationalUnit"].into())]).await.unwrap().success().unwrap();
    dn
}

/// A raw attribute of an entry, read by the admin connection.
pub async fn read_attr(ldap: &mut Ldap, dn: &str, attr: &str) -> Vec<String> {
    let (entries, _) =
        ldap.search(dn, ldap3::Scope::Base, "(objectClass=*)", vec![attr]).await.unwrap().success().unwrap();
    let entry = ldap3::SearchEntry::construct(entries.into_iter().next().expect("entry exists"));
    entry.attrs.into_iter().find(|(k, _)| k.eq_ignore_ascii_case(attr)).map(|(_, v)| v).unwrap_or_default()
}

/// Whether a simple bind with these credentials succeeds at `url` (TLS not verified).
pub async fn can_bind(url: &str, dn: &str, pw: &str) -> bool {
    let settings = LdapConnSettings::new().set_no_tls_verify(true);
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, url).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.drive().await;
    });
    let ok = ldap.simple_bind(dn, pw).await.map(|r| r.rc == 0).unwrap_or(false);
    let _ = ldap.unbind().await;
    ok
}

/// A slapd of one test, on free loopback ports; stopped when dropped.
pub struct Slapd {
    dir: PathBuf,
    /// Plain LDAP (StartTLS offered) port.
    pub port: u16,
    /// LDAPS port.
    pub tls_port: u16,
    child: Option<(Child, ChildStdin)>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Slapd {
    /// Configures (recipe's slapd.conf, TLS, `dbnosync`), loads the base entries
    /// (`ou=people`, `ou=groups`) and starts a slapd.
    pub fn start() -> Slapd {
        let slapd = binary("slapd");
        let slapadd = binary("slapadd");
        binary("ldapsearch");
        let certs = certs();
        let d = run_dir("slapd");
        std::fs::create_dir_all(d.join("data")).unwrap();
        let ds = d.display();
        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             include /etc/ldap/schema/nis.schema\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             moduleload memberof\n\
             moduleload refint\n\
             pidfile {ds}/slapd.pid\n\
             argsfile {ds}/slapd.args\n\
             TLSCACertificateFile {ca}\n\
             TLSCertificateFile {cert}\n\
             TLSCertificateKeyFile {key}\n\
             database mdb\n\
             dbnosync\n\
             maxsize 1073741824\n\
             suffix \"{LDAP_BASE}\"\n\
             rootdn \"{LDAP_ADMIN}\"\n\
             rootpw {LDAP_ADMIN_PW}\n\
             directory {ds}/data\n\
             index objectClass eq\n\
             index uid,cn,mail,employeeNumber eq\n\
             overlay memberof\n\
             overlay refint\n\
             refint_attributes member manager\n",
            ca = certs.ca.display(),
            cert = certs.cert.display(),
            key = certs.key.display(),
        );
        std::fs::write(d.join("slapd.conf"), conf).unwrap();
        let ldif = format!(
            "dn: {LDAP_BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
             dn: ou=people,{LDAP_BASE}\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: ou=groups,{LDAP_BASE}\nobjectClass: organizationalUnit\nou: groups\n"
        );
        std::fs::write(d.join("base.ldif"), ldif).unwrap();
        run(
            Command::new(slapadd).arg("-q").arg("-f").arg(d.join("slapd.conf")).arg("-l").arg(d.join("base.ldif")),
            "slapadd",
        );
        let _ = slapd;
        let mut s = Slapd { dir: d, port: free_port(), tls_port: free_port(), child: None };
        s.launch();
        s
    }

    fn launch(&mut self) {
        let slapd = binary("slapd");
        let urls = format!("ldap://127.0.0.1:{}/ ldaps://127.0.0.1:{}/", self.port, self.tls_port);
        let log = self.dir.join("slapd.out");
        let out = std::fs::File::create(&log).unwrap();
        // The shell stops slapd when its stdin closes: on drop, or when the test process dies.
        let script = format!(
            "'{}' -h '{urls}' -f '{}' -d 0 </dev/null & pid=$!; cat >/dev/null; kill $pid; wait $pid",
            slapd.display(),
            self.dir.join("slapd.conf").display()
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start slapd");
        let stdin = child.stdin.take().unwrap();
        let url = self.url();
        if let Err(e) = wait_ready(&mut child, &url, &log, Duration::from_secs(30)) {
            panic!("slapd did not start: {e}");
        }
        self.child = Some((child, stdin));
    }

    /// Stops the server (its data stays).
    pub fn stop(&mut self) {
        if let Some((mut child, stdin)) = self.child.take() {
            drop(stdin);
            let _ = child.wait();
        }
        let start = Instant::now();
        while port_open([127, 0, 0, 1].into(), self.port) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// `ldap://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// `ldaps://127.0.0.1:TLS_PORT`.
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.tls_port)
    }

    /// A `[directories.X]` section for this server (`kind = "ldap"`), with extra TOML lines.
    pub fn config(&self, url: &str, extra: &str) -> DirectoryConfig {
        let text = format!(
            "kind = \"ldap\"\nurl = \"{url}\"\nbind_dn = \"{LDAP_ADMIN}\"\nbind_password = \"{LDAP_ADMIN_PW}\"\n\
             base_dn = \"{LDAP_BASE}\"\nusers_ou = \"ou=people,{LDAP_BASE}\"\ngroups_base = \"ou=groups,{LDAP_BASE}\"\n\
             ca_file = '{}'\nconnect_timeout = 2\nop_timeout = 10\n{extra}",
            certs().ca.display()
        );
        toml::from_str(&text).unwrap_or_else(|e| panic!("test config does not parse: {e}\n{text}"))
    }

    /// A directory on this server over plain LDAP (with [`LAB_PLAINTEXT`]).
    pub fn directory(&self) -> Directory {
        Directory::new("OpenLDAP", &self.config(&self.url(), LAB_PLAINTEXT)).unwrap()
    }

    /// An ldap3 connection bound as rootdn.
    pub async fn admin(&self) -> Ldap {
        admin_conn(&self.url(), LDAP_ADMIN, LDAP_ADMIN_PW).await
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Prints a server's log into the test output (for a failing test's reader).
pub fn dump_log(path: &Path) {
    if let Ok(text) = std::fs::read_to_string(path) {
        let _ = writeln!(std::io::stderr(), "--- {} ---\n{text}", path.display());
    }
}

/// An admin connection to the shared Samba DC over LDAPS (the server's certificate not
/// checked: test set-up only), e.g. to set a password as the helpdesk would.
pub async fn ad_admin_tls() -> ldap3::Ldap {
    samba();
    let settings = ldap3::LdapConnSettings::new().set_no_tls_verify(true);
    let (conn, mut ldap) = ldap3::LdapConnAsync::with_settings(settings, "ldaps://127.0.0.1").await.unwrap();
    tokio::spawn(async move {
        let _ = conn.drive().await;
    });
    ldap.simple_bind(AD_ADMIN, AD_ADMIN_PW).await.unwrap().success().unwrap();
    ldap
}

/// DNs under `base` whose `attr` is `value`.
pub async fn dns_with(ldap: &mut ldap3::Ldap, base: &str, attr: &str, value: &str) -> Vec<String> {
    let filter = format!("({attr}={})", ldap3::ldap_escape(value));
    let (entries, _) = ldap.search(base, ldap3::Scope::Subtree, &filter, vec!["1.1"]).await.unwrap().success().unwrap();
    entries.into_iter().map(|e| ldap3::SearchEntry::construct(e).dn).collect()
}
