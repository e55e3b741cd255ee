//! A real PostgreSQL server from Debian's packages, started by the tests themselves: `initdb`
//! into a temp folder and `postgres` on a free loopback port, as the `postgres` user when
//! the tests run as root (PostgreSQL refuses to run as root). One server serves a whole test
//! process, a fresh database per test; tests that stop and start the server get their own.
//!
//! The server is a child of a keeper thread that lives as long as the test process, with a
//! parent-death signal: when the test process ends, however it ends, the server ends too.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const INSTALL: &str = "install it with `apt-get install -y postgresql` (Debian 12: PostgreSQL 15)";

/// The folder of PostgreSQL's server programs (`initdb`, `postgres`): the newest
/// `/usr/lib/postgresql/N/bin`.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").is_file() && bin.join("postgres").is_file())
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!("PostgreSQL's server is not installed (no /usr/lib/postgresql/N/bin/initdb); the PostgreSQL store tests need a real server: {INSTALL}"),
    }
}

/// The user the server runs as: `postgres` when the tests run as root.
fn server_user() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, "postgres"]).output().expect("id runs");
        assert!(out.status.success(), "the `postgres` user does not exist (the tests run as root); {INSTALL}");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("a numeric id")
    };
    Some((id("-u"), id("-g")))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A PostgreSQL server of the tests.
pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    /// The running server's pid and the keeper thread that waits for it.
    running: Option<(u32, std::thread::JoinHandle<()>)>,
}

impl Postgres {
    /// A new server: `initdb`, then started. Durability is off (`fsync`, full page writes):
    /// a throwaway server needs none, and tests run faster.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let user = server_user();
        let dir = tempfile::Builder::new().prefix("tripline-it-postgres-").tempdir().unwrap();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", "tripline", "-A", "trust", "-E", "UTF8", "--no-sync", "--locale=C"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        as_user(&mut initdb, user);
        let out = initdb.output().unwrap_or_else(|e| panic!("cannot run initdb: {e}; {INSTALL}"));
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres { dir, port: free_port(), bin, user, running: None };
        pg.launch();
        pg
    }

    /// Starts the server (again, on the same port and data) and waits until it answers.
    pub fn launch(&mut self) {
        assert!(self.running.is_none(), "the server runs already");
        let (tx, rx) = std::sync::mpsc::channel();
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args([
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=64MB",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log()).unwrap());
        as_user(&mut cmd, self.user);
        {
            use std::os::unix::process::CommandExt;
            // Runs after the user change: the server ends with the keeper thread (and so with
            // the test process).
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
                    Ok(())
                });
            }
        }
        let keeper = std::thread::spawn(move || match cmd.spawn() {
            Ok(mut child) => {
                tx.send(Ok(child.id())).unwrap();
                let _ = child.wait();
            }
            Err(e) => tx.send(Err(e)).unwrap(),
        });
        let pid = rx.recv().unwrap().unwrap_or_else(|e| panic!("cannot start postgres: {e}; {INSTALL}"));
        self.running = Some((pid, keeper));
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.psql_status("postgres", "SELECT 1").is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.log()).unwrap_or_default();
                panic!("PostgreSQL did not start on port {}:\n{log}", self.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (a fast shutdown: open transactions are rolled back) and waits for it.
    pub fn stop(&mut self) {
        if let Some((pid, keeper)) = self.running.take() {
            unsafe { libc::kill(pid as i32, libc::SIGINT) };
            let _ = keeper.join();
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A new, empty database; its URL.
    pub fn create_db(&self) -> String {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!("t{}_{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// `postgres://tripline@127.0.0.1:PORT/DB`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://tripline@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL with psql; its output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.psql_status(db, sql).unwrap_or_else(|e| panic!("psql {sql:?}: {e}"))
    }

    fn psql_status(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "tripline"])
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A `[store]` section for a database URL.
    pub fn store_section(url: &str) -> String {
        format!("[store]\nurl = \"{url}\"\n")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid).env("HOME", "/tmp");
    }
}

/// The test process's shared server, started on first use.
pub fn shared() -> &'static Postgres {
    static SERVER: OnceLock<Postgres> = OnceLock::new();
    SERVER.get_or_init(Postgres::start)
}
