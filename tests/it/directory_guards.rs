//! What the directory layer refuses, through the real binary: a bind password over plain
//! `ldap://`, a directory call that outlives the run's time limit. A listener that records
//! what it receives and never answers stands in for a server that is not there.

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
    assert!(ran.stdout.contains("1 warning"), "{ran:?}");
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
