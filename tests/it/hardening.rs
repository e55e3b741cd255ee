//! Hardening through the real binary: values nested too deep, runs that hold too much, host
//! functions given hostile arguments, events that cannot be read or keep killing the process,
//! chains that multiply, symbolic link loops, logs written into the watched folders, inputs
//! that repeat an id, `api.find` on odd field names and configuration numbers out of range.
//! Each case is tried in several spellings, and what must keep working (the daemon serving
//! other events, `/healthz` telling the truth) is checked after it.

use std::io::{BufRead, BufReader, Read, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::project::{Project, Ran};

/// Limits that keep every hostile script quick in a debug build.
const LIMITS: &str = "[limits]\nmax_operations = 2000000\n";

/// A rule on `entity` running `script` (a file under scripts/) on created events.
fn rule(p: &Project, name: &str, entity: &str, script: &str, text: &str) {
    p.rule(
        name,
        &format!(
            "name = \"{name}\"\nentity = \"{entity}\"\nscript = \"{script}\"\n\
             conditions = [{{ field = \"Created\", op = \"equals\", value = true }}]\n"
        ),
    );
    p.script(script, text);
}

/// Polls `f` until it returns `Some`, failing after a generous deadline.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every run, oldest first.
fn runs(p: &Project) -> Vec<Value> {
    let ran = p.run(&["runs", "--json", "--limit", "1000000"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    ran.json().as_array().unwrap().clone()
}

/// How many records of an entity are stored.
fn count(p: &Project, entity: &str) -> usize {
    let ran = p.run(&["records", "list", entity, "--json", "--limit", "1000000"]);
    if ran.code == 1 && ran.stderr.contains("unknown entity") {
        return 0;
    }
    assert_eq!(ran.code, 0, "{ran:?}");
    ran.json().as_array().unwrap().len()
}

/// The store of a project, opened behind tripline's back.
fn db(p: &Project) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(p.path().join("data/tripline.db")).unwrap();
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    c
}

/// Checks that a command ended by itself (no signal, no abort, no panic), with exit 0 or 1.
#[track_caller]
fn ended_cleanly(ran: &Ran, what: &str) {
    assert!(ran.code == 0 || ran.code == 1, "{what}: exit {} (a crash?)\n{}", ran.code, ran.stderr);
    assert!(!ran.stderr.contains("panicked") && !ran.stderr.contains("overflow"), "{what}: {}", ran.stderr);
}

/// JSON nested `levels` deep in all: an object (level 1) whose field `a` holds arrays and
/// objects alternating (`mixed`) or arrays only, down to a number.
fn nested_json(levels: usize, mixed: bool) -> String {
    let mut open = String::from("{\"a\": ");
    let mut close = String::from("}");
    for i in 1..levels {
        if mixed && i % 2 == 0 {
            open.push_str("{\"k\": ");
            close.insert(0, '}');
        } else {
            open.push('[');
            close.insert(0, ']');
        }
    }
    format!("{open}1{close}")
}

/// `tripline run` on a project: listening on a port of its choosing (read from its log), its
/// log in a file; stopped with SIGTERM by [`Served::stop`] (which checks a clean exit), or
/// killed when dropped.
struct Served {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Served {
    /// Starts the daemon with its log (`TRIPLINE_LOG=info`) in `daemon.log` beside the store.
    fn start(p: &Project) -> Served {
        Served::start_logging(p, &p.path().join("daemon.log"), "info")
    }

    /// Starts the daemon with its stderr in `log` and `TRIPLINE_LOG=level`; waits until it
    /// listens.
    fn start_logging(p: &Project, log: &Path, level: &str) -> Served {
        let file = std::fs::File::create(log).unwrap();
        let mut cmd = p.command(&["run"]);
        cmd.env("TRIPLINE_LOG", level).stdin(Stdio::null()).stdout(Stdio::null()).stderr(file);
        let mut child = cmd.spawn().expect("tripline binary runs");
        let addr = wait_for("the daemon to listen", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the daemon exited ({status}):\n{}", std::fs::read_to_string(log).unwrap_or_default());
            }
            let text = strip_ansi(&std::fs::read_to_string(log).unwrap_or_default());
            let line = text.lines().find(|l| l.contains("Listening for webhooks"))?;
            let at = line.find("addr=")? + "addr=".len();
            Some(line[at..].split_whitespace().next()?.to_string())
        });
        let served = Served { child, addr, log: log.to_path_buf() };
        wait_for("/healthz", || served.try_get("/healthz").filter(|(s, _)| *s == 200));
        served
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's log so far.
    fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// `GET path`, or `None` when nothing answers.
    fn try_get(&self, path: &str) -> Option<(u16, String)> {
        http(&self.addr, "GET", path, &[], b"")
    }

    fn healthz(&self) -> Value {
        let (status, body) = self.try_get("/healthz").expect("/healthz answers");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// `POST path` with a JSON body.
    fn post(&self, path: &str, body: &str) -> (u16, String) {
        http(&self.addr, "POST", path, &[("Content-Type", "application/json")], body.as_bytes())
            .expect("the daemon answers")
    }

    /// The peak resident memory of the daemon so far (`VmHWM`), in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kb * 1024
    }

    /// Waits until the store's queue is empty: every event the daemon was given has ended.
    fn drained_after(&self, p: &Project) {
        wait_for("an empty queue", || {
            let left: i64 = db(p).query_row("SELECT count(*) FROM events WHERE done = 0", [], |r| r.get(0)).unwrap();
            (left == 0).then_some(())
        });
    }

    /// Whether the process is still running.
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `kill -9`, as a crash would.
    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; checks that the daemon exits cleanly.
    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "daemon exit: {status:?}\n{}", self.log());
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One HTTP/1.1 request on a fresh connection; the status and the body (`None` when the
/// connection cannot be made).
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut reader = BufReader::new(s);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).ok()?;
    let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let (mut length, mut chunked) = (None, false);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':')?;
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = v.trim().parse::<usize>().ok(),
            "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = length {
        out.resize(n, 0);
        reader.read_exact(&mut out).ok()?;
    } else {
        reader.read_to_end(&mut out).ok()?;
    }
    Some((status, String::from_utf8_lossy(&out).into_owned()))
}

/// A local HTTP peer answering every request with `body` as JSON, on its own thread for the
/// rest of the test process. Returns its base URL.
fn json_peer(body: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut sink = vec![0; length];
                let _ = reader.read_exact(&mut sink);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body.as_bytes());
            });
        }
    });
    url
}

/// The `[server]` section of a daemon that picks its own port.
const SERVER: &str = "[server]\nlisten = \"127.0.0.1:0\"\n";

// ---------------------------------------------------------------------------------------
// One depth limit for record values (record::MAX_DEPTH = 64, the record itself level 1).

#[test]
fn fire_keeps_records_nested_64_levels_and_refuses_65_and_deeper_storing_nothing() {
    let p = Project::new(&format!("{LIMITS}{SERVER}"));
    rule(&p, "r", "t", "s.rhai", "api.comment(record, \"ran\");");
    for mixed in [false, true] {
        for levels in [65, 66, 100, 127, 128, 129, 5000] {
            let input = nested_json(levels, mixed);
            for queue in [false, true] {
                let mut args = vec!["fire", "t", "--record", "-"];
                if queue {
                    args.push("--queue");
                }
                let ran = p.run_stdin(&args, Some(&input));
                ended_cleanly(&ran, "fire");
                assert_eq!(ran.code, 1, "{levels} levels (mixed {mixed}, queue {queue}): {ran:?}");
                assert!(
                    ran.stderr.contains("nested more than 64 levels") || ran.stderr.contains("recursion limit"),
                    "{levels} levels: {}",
                    ran.stderr
                );
            }
        }
    }
    // A deep line anywhere in JSON Lines refuses the whole input.
    let lines = format!("{{\"n\": 1}}\n{}\n{{\"n\": 3}}\n", nested_json(65, true));
    let ran = p.run_stdin(&["fire", "t", "--record", "-"], Some(&lines));
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("line 2"), "{}", ran.stderr);
    assert_eq!(count(&p, "t"), 0, "nothing stored");
    assert!(runs(&p).is_empty());

    // 64 levels are a record like any other, fired now or queued, and read back whole.
    for mixed in [false, true] {
        let input = nested_json(64, mixed);
        let (ran, fired) = p.fire("t", &input);
        assert_eq!(ran.code, 0, "{ran:?}");
        assert_eq!(fired[0]["status"], "ok");
        let ran = p.run_stdin(&["fire", "t", "--record", "-", "--queue"], Some(&input));
        assert_eq!(ran.code, 0, "{ran:?}");
    }
    let stored = p.records("t");
    assert_eq!(stored.len(), 4);
    let expected: Value = serde_json::from_str(&nested_json(64, true)).unwrap();
    assert!(stored.iter().any(|r| r["fields"] == expected), "read back whole");
    let daemon = Served::start(&p);
    wait_for("the queued records' runs", || (runs(&p).len() == 4).then_some(()));
    daemon.stop();
    assert!(runs(&p).iter().all(|r| r["status"] == "ok"), "{:?}", runs(&p));

    // An update that would merge a deep field into a stored record is refused too.
    let id = stored[0]["id"].as_str().unwrap();
    let deep_field: Value = serde_json::from_str(&nested_json(65, false)).unwrap();
    let update = json!({"id": id, "a": deep_field["a"]}).to_string();
    let ran = p.run_stdin(&["fire", "t", "--record", "-", "--event", "updated"], Some(&update));
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("nested more than 64 levels"), "{}", ran.stderr);
    assert_eq!(runs(&p).len(), 4, "nothing ran");
}

#[test]
fn events_that_cannot_be_read_are_set_aside_and_the_daemon_runs_the_others() {
    let p = Project::new(&format!("{LIMITS}{SERVER}"));
    rule(&p, "r", "t", "s.rhai", "api.comment(record, `ran ${record.n}`);");
    let lines: String = (1..=7).map(|n| format!("{{\"n\": {n}}}\n")).collect();
    let ran = p.run_stdin(&["fire", "t", "--record", "-", "--queue"], Some(&lines));
    assert_eq!(ran.code, 0, "{ran:?}");
    let good_record: String = {
        let c = db(&p);
        for sql in [
            "UPDATE events SET record = '{not json' WHERE id = 1",
            "UPDATE events SET record = X'00FF' WHERE id = 2",
            "UPDATE events SET previous = '[' WHERE id = 3",
            "UPDATE events SET created_at = 'yesterday' WHERE id = 4",
            "UPDATE events SET depth = -1, kind = X'01' WHERE id = 5",
            "UPDATE events SET tries = 'often' WHERE id = 6",
        ] {
            c.execute(sql, []).unwrap();
        }
        c.query_row("SELECT record FROM events WHERE id = 7", [], |r| r.get(0)).unwrap()
    };
    let daemon = Served::start(&p);
    wait_for("every event to end", || (runs(&p).len() == 7).then_some(()));
    let all = runs(&p);
    let ok: Vec<&Value> = all.iter().filter(|r| r["status"] == "ok").collect();
    assert_eq!(ok.len(), 1, "{all:?}");
    assert_eq!(ok[0]["event_id"], 7);
    let failed = p.run(&["runs", "--failed", "--json"]).json();
    let failed = failed.as_array().unwrap();
    assert_eq!(failed.len(), 6, "{failed:?}");
    for r in failed {
        assert_eq!(r["rule"], "(set aside)", "{r}");
        assert_eq!(r["status"], "failed");
        let error = r["error"].as_str().unwrap();
        assert!(error.contains("cannot be read, so it is set aside"), "{error}");
    }
    let health = daemon.healthz();
    assert_eq!(health["dispatcher"]["ok"], true, "{health}");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["queue_depth"], 0, "{health}");

    // The daemon keeps serving: a new event runs.
    let ran = p.run_stdin(&["fire", "t", "--record", "-", "--queue"], Some("{\"n\": 8}"));
    assert_eq!(ran.code, 0, "{ran:?}");
    wait_for("the new event's run", || (runs(&p).iter().filter(|r| r["status"] == "ok").count() == 2).then_some(()));

    // Repaired, the first event is queued again by the replay of its set-aside run and runs
    // its rule; replayed unrepaired, the second is set aside again.
    db(&p).execute("UPDATE events SET record = ?1 WHERE id = 1", [&good_record]).unwrap();
    let aside = |event: i64| {
        runs(&p).into_iter().find(|r| r["event_id"] == event && r["rule"] == "(set aside)").unwrap()["id"].to_string()
    };
    for event in [1, 2] {
        let ran = p.run(&["replay", &aside(event)]);
        assert_eq!(ran.code, 0, "{ran:?}");
        assert!(ran.stdout.contains(&format!("event {event} is queued again")), "{}", ran.stdout);
    }
    wait_for("the repaired event's run", || {
        runs(&p).iter().any(|r| r["event_id"] == 1 && r["rule"] == "r" && r["status"] == "ok").then_some(())
    });
    wait_for("the unrepaired event set aside again", || {
        runs(&p).iter().any(|r| r["event_id"] == 2 && r["rule"] == "(set aside)").then_some(())
    });
    assert!(runs(&p).iter().all(|r| r["event_id"] != 1 || r["rule"] != "(set aside)"), "the replayed run is gone");
    assert_eq!(daemon.healthz()["dispatcher"]["ok"], true);
    daemon.stop();
}

#[test]
fn webhook_deliveries_nested_too_deep_are_refused_and_the_daemon_keeps_serving() {
    let p = Project::new(&format!(
        "{LIMITS}{SERVER}\n[webhooks.open]\npath = \"/hooks/open\"\nentity = \"t\"\nauth = {{ type = \"none\" }}\n\n\
         [webhooks.picked]\npath = \"/hooks/picked\"\nentity = \"t\"\nauth = {{ type = \"none\" }}\n\
         fields = {{ A = \"x.y\" }}\nset = {{ Source = \"picked\" }}\n"
    ));
    rule(&p, "r", "t", "s.rhai", "api.comment(record, \"ran\");");
    let daemon = Served::start(&p);
    for mixed in [false, true] {
        for levels in [65, 100, 128, 129, 3000] {
            let (status, body) = daemon.post("/hooks/open", &nested_json(levels, mixed));
            assert_eq!(status, 400, "{levels} levels: {body}");
            assert!(
                body.contains("nested more than 64 levels") || body.contains("recursion limit"),
                "{levels} levels: {body}"
            );
        }
    }
    // What is stored is what is checked: a picked field 64 levels deep is too deep, a
    // delivery deeper than that whose picked part fits is kept.
    let deep_x = |levels: usize| format!("{{\"x\": {{\"y\": {}}}}}", nested_json(levels, true));
    let (status, body) = daemon.post("/hooks/picked", &deep_x(64));
    assert_eq!(status, 400, "{body}");
    assert_eq!(count(&p, "t"), 0, "nothing stored");
    let (status, body) = daemon.post("/hooks/picked", &deep_x(63));
    assert_eq!(status, 202, "{body}");
    let (status, body) = daemon.post("/hooks/open", &nested_json(64, true));
    assert_eq!(status, 202, "{body}");
    wait_for("both deliveries' runs", || (runs(&p).len() == 2).then_some(()));
    assert!(runs(&p).iter().all(|r| r["status"] == "ok"), "{:?}", runs(&p));
    let health = daemon.healthz();
    assert_eq!((health["status"].as_str(), &health["dispatcher"]["ok"]), (Some("ok"), &json!(true)), "{health}");
    daemon.stop();
}

/// A Rhai expression building a value nested `levels` deep (the value itself level 1) out of
/// arrays, maps, or both in turn.
fn rhai_nested(levels: usize, kind: &str) -> String {
    let wrap = match kind {
        "array" => "v = [v];",
        "map" => "v = #{k: v};",
        _ => "v = if i % 2 == 0 { [v] } else { #{k: v} };",
    };
    format!("{{ let v = 1; for i in 0..{levels} {{ {wrap} }} v }}")
}

#[test]
fn scripts_cannot_write_values_nested_deeper_than_64_levels_through_any_call() {
    let p = Project::new(&format!("{LIMITS}{SERVER}"));
    // In a record's fields the fields map is level 1, so a field's value may nest 63 levels.
    let mut cases = Vec::new();
    for kind in ["array", "map", "mixed"] {
        for levels in [64, 65, 300] {
            let deep = rhai_nested(levels, kind);
            cases.push(format!("api.create(\"x\", #{{a: {deep}}});"));
            cases.push(format!("api.update(record, #{{a: {deep}}});"));
            cases.push(format!("let v = {deep}; let f = || v; api.create(\"x\", #{{a: v, f: f.call()}});"));
            cases.push(format!("let m = #{{}}; m.a = {deep}; api.create(\"x\", m);"));
        }
        cases.push(format!("api.state_set(\"k\", {});", rhai_nested(65, kind)));
        cases.push(format!("api.find(\"x\", #{{a: {}}});", rhai_nested(64, kind)));
        cases.push(format!("let c = api.connection(\"peer\"); c.post(\"x\", {});", rhai_nested(65, kind)));
    }
    let url = json_peer("{}".into());
    p.file("tripline.toml", &format!("{LIMITS}{SERVER}[connections.peer]\nbase_url = \"{url}\"\n"));
    for (i, case) in cases.iter().enumerate() {
        rule(&p, &format!("c{i}"), &format!("t{i}"), &format!("c{i}.rhai"), case);
    }
    for (i, case) in cases.iter().enumerate() {
        let (ran, fired) = p.fire(&format!("t{i}"), "{\"n\": 1}");
        ended_cleanly(&ran, case);
        assert_eq!(ran.code, 1, "{case}: {ran:?}");
        assert_eq!(fired.len(), 1, "{case}: {fired:?}");
        assert_eq!(fired[0]["status"], "failed", "{case}");
        let error = fired[0]["error"].as_str().unwrap();
        assert!(error.contains("nested more than 64 levels deep"), "{case}: {error}");
        assert_eq!(p.records(&format!("t{i}"))[0]["fields"], json!({"n": 1}), "{case}: the update was not applied");
    }
    assert_eq!(count(&p, "x"), 0, "nothing created");

    // Within the limit, each way in stores and reads back the value.
    let fits = ["array", "map", "mixed"].map(|kind| rhai_nested(63, kind)).join(", ");
    rule(
        &p,
        "fits",
        "ok",
        "fits.rhai",
        &format!(
            "let vs = [{fits}];\nfor v in vs {{ api.create(\"x\", #{{a: v}}); }}\napi.update(record, #{{a: vs[2]}});\n\
             api.state_set(\"k\", vs[0]);\nlet c = api.connection(\"peer\"); c.post(\"x\", vs[1]);"
        ),
    );
    let (ran, fired) = p.fire("ok", "{}");
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(fired[0]["status"], "ok", "{fired:?}");
    assert_eq!(count(&p, "x"), 3);
    let updated = &p.records("ok")[0]["fields"]["a"];
    assert!(updated.is_array() || updated.is_object(), "{updated}");

    // The daemon runs the same scripts and keeps serving.
    let lines: String = (0..cases.len()).map(|i| format!("t{i}\n")).collect();
    for entity in lines.lines() {
        let ran = p.run_stdin(&["fire", entity, "--record", "-", "--queue"], Some("{\"n\": 2}"));
        assert_eq!(ran.code, 0, "{ran:?}");
    }
    let before = runs(&p).len();
    let daemon = Served::start(&p);
    wait_for("the queued runs", || (runs(&p).len() == before + cases.len()).then_some(()));
    let all = runs(&p);
    let fresh = &all[all.len() - cases.len()..];
    for r in fresh {
        assert_eq!(r["status"], "failed", "{r}");
        assert!(r["error"].as_str().unwrap().contains("nested more than 64 levels deep"), "{r}");
    }
    let ran = p.run_stdin(&["fire", "ok", "--record", "-", "--queue"], Some("{}"));
    assert_eq!(ran.code, 0, "{ran:?}");
    wait_for("a later good event", || (count(&p, "x") == 6).then_some(()));
    assert_eq!(daemon.healthz()["dispatcher"]["ok"], true);
    daemon.stop();
}

#[test]
fn api_answers_nested_too_deep_are_not_stored_and_deep_ones_within_the_limit_are() {
    let p = Project::new("");
    let deep = json_peer(format!("{{\"data\": {}}}", nested_json(100, true)));
    let deeper = json_peer(nested_json(200, false));
    let fits = json_peer(format!("{{\"data\": {}}}", nested_json(62, true)));
    p.file(
        "tripline.toml",
        &format!(
            "{LIMITS}{SERVER}[connections.deep]\nbase_url = \"{deep}\"\n[connections.deeper]\nbase_url = \"{deeper}\"\n\
             [connections.fits]\nbase_url = \"{fits}\"\n"
        ),
    );
    rule(
        &p,
        "create",
        "create",
        "create.rhai",
        "let r = api.connection(record.c).get(\"x\");\napi.create(\"x\", #{a: r.body});",
    );
    rule(
        &p,
        "update",
        "update",
        "update.rhai",
        "let r = api.connection(record.c).get(\"x\");\n\
         if type_of(r.body) == \"map\" { api.update(record, r.body); } else { api.update(record, #{text: r.body}); }",
    );
    rule(
        &p,
        "state",
        "state",
        "state.rhai",
        "let r = api.connection(record.c).get(\"x\");\napi.state_set(\"answer\", r.body);",
    );
    for entity in ["create", "update", "state"] {
        let (ran, fired) = p.fire(entity, "{\"c\": \"deep\"}");
        ended_cleanly(&ran, entity);
        assert_eq!(fired[0]["status"], "failed", "{entity}: {fired:?}");
        assert!(fired[0]["error"].as_str().unwrap().contains("nested more than 64 levels deep"), "{fired:?}");
        // Deeper than JSON parsing goes, the answer is its text: stored as a string.
        let (ran, fired) = p.fire(entity, "{\"c\": \"deeper\"}");
        assert_eq!(ran.code, 0, "{entity}: {ran:?}");
        assert_eq!(fired[0]["status"], "ok", "{entity}: {fired:?}");
        let (ran, fired) = p.fire(entity, "{\"c\": \"fits\"}");
        assert_eq!(ran.code, 0, "{entity}: {ran:?}");
        assert_eq!(fired[0]["status"], "ok", "{entity}: {fired:?}");
    }
    let created = p.records("x");
    assert_eq!(created.len(), 2);
    assert!(created.iter().any(|r| r["fields"]["a"].is_string()), "the text of the deeper answer");
    let expected: Value = serde_json::from_str(&nested_json(62, true)).unwrap();
    assert!(created.iter().any(|r| r["fields"]["a"]["data"] == expected), "the answer within the limit, whole");
    let updated: Vec<Value> = p.records("update");
    assert!(updated.iter().any(|r| r["fields"]["data"] == expected), "{updated:?}");
    assert!(updated.iter().all(|r| r["fields"]["c"] != "deep" || r["fields"].get("data").is_none()), "{updated:?}");

    // Through the daemon: the deep answer fails its run, the next event runs.
    for c in ["deep", "fits"] {
        let ran = p.run_stdin(&["fire", "create", "--record", "-", "--queue"], Some(&format!("{{\"c\": \"{c}\"}}")));
        assert_eq!(ran.code, 0, "{ran:?}");
    }
    let before = runs(&p).len();
    let daemon = Served::start(&p);
    wait_for("both queued runs", || (runs(&p).len() == before + 2).then_some(()));
    let all = runs(&p);
    let fresh = &all[all.len() - 2..];
    assert_eq!(fresh.iter().filter(|r| r["status"] == "ok").count(), 1, "{fresh:?}");
    assert_eq!(count(&p, "x"), 3);
    daemon.stop();
}

// ---------------------------------------------------------------------------------------
// Deep script values: scripts run on threads with stacks sized to the run's memory budget,
// which bounds how deep a value can nest.

/// Scripts that build values nested as deep as their limits let them, then print, compare,
/// drop, log, throw or write them.
const DEEP_SCRIPTS: &[&str] = &[
    "let a = []; for i in 0..2000 { a = [a]; } a.to_string();",
    "let m = #{}; for i in 0..2000 { m = #{m: m}; } m.to_string().len()",
    "let a = []; for i in 0..2000 { let b = []; b.push(a); a = b; } a.len()",
    "let a = [0]; for i in 0..500 { let b = [0]; b[0] = a; a = b; } print(a);",
    "let m = #{}; for i in 0..500 { let n = #{}; n.x = m; m = n; } debug(m);",
    "let f = |x| x; for i in 0..200000 { let g = f; f = |x| g; } f.call(1);",
    "let f = |x| x; let i = 0; loop { let g = f; f = |x| g; i += 1; }",
    "fn g(x, y) { x } let f = Fn(\"g\"); for i in 0..100000 { f = f.curry(f); } f.to_string()",
    "fn g(x, y) { x } let f = Fn(\"g\"); let i = 0; loop { f = f.curry([f]); i += 1; }",
    "let a = []; let b = []; for i in 0..2000 { a = [a]; b = [b]; } a == b",
    "let a = []; for i in 0..2000 { a = [a]; } api.info(a);",
    "let a = []; for i in 0..2000 { a = [a]; } api.create(\"x\", #{a: a});",
    "let a = []; for i in 0..2000 { a = [a]; } api.state_set(\"k\", a);",
    "let a = []; for i in 0..2000 { a = [a]; } throw a;",
    "let a = []; for i in 0..2000 { a = [a]; } `${a}`",
    "let a = []; for i in 0..2000 { a = [a]; } api.sanitize(a);",
    "let a = []; for i in 0..2000 { a = [a]; } a",
    "let a = []; for i in 0..2000 { a = [a]; } let f = || a; f",
    "let a = []; for i in 0..2000 { a = [a]; } let c = [a, a, a]; c.sort(); c.contains(a)",
];

#[test]
fn deep_script_values_never_crash_the_process_and_each_run_is_recorded() {
    let p = Project::new(&format!("{LIMITS}{SERVER}"));
    for (i, script) in DEEP_SCRIPTS.iter().enumerate() {
        rule(&p, &format!("d{i}"), &format!("d{i}"), &format!("d{i}.rhai"), script);
    }
    rule(&p, "after", "after", "after.rhai", "api.comment(record, \"still here\");");
    for (i, script) in DEEP_SCRIPTS.iter().enumerate() {
        let (ran, fired) = p.fire(&format!("d{i}"), "{}");
        ended_cleanly(&ran, script);
        assert_eq!(fired.len(), 1, "{script}: one run, recorded: {ran:?}");
        assert!(fired[0]["status"] == "ok" || fired[0]["status"] == "failed", "{script}: {}", fired[0]);
    }
    assert_eq!(runs(&p).len(), DEEP_SCRIPTS.len(), "every run is in the store");

    // The daemon runs them all on its blocking threads, stays up, and serves the next event.
    for i in 0..DEEP_SCRIPTS.len() {
        let ran = p.run_stdin(&["fire", &format!("d{i}"), "--record", "-", "--queue"], Some("{}"));
        assert_eq!(ran.code, 0, "{ran:?}");
    }
    let mut daemon = Served::start(&p);
    wait_for("the queued runs", || (runs(&p).len() == 2 * DEEP_SCRIPTS.len()).then_some(()));
    assert!(daemon.alive(), "{}", daemon.log());
    let ran = p.run_stdin(&["fire", "after", "--record", "-", "--queue"], Some("{}"));
    assert_eq!(ran.code, 0, "{ran:?}");
    wait_for("the later event", || {
        (count(&p, "after") == 1 && runs(&p).last().unwrap()["status"] == "ok").then_some(())
    });
    let statuses: Vec<(String, String)> = runs(&p)
        .iter()
        .map(|r| (r["rule"].as_str().unwrap().to_string(), r["status"].as_str().unwrap().to_string()))
        .collect();
    // (Whether a run ends ok or at a limit can depend on the machine's load: its time limit.)
    for (i, script) in DEEP_SCRIPTS.iter().enumerate() {
        let of_rule: Vec<&String> = statuses.iter().filter(|(r, _)| *r == format!("d{i}")).map(|(_, s)| s).collect();
        assert_eq!(of_rule.len(), 2, "{script}");
        assert!(of_rule.iter().all(|s| *s == "ok" || *s == "failed"), "{script}: {of_rule:?}");
    }
    daemon.stop();
}

#[test]
fn an_event_whose_run_kills_the_daemon_three_times_is_set_aside_and_the_daemon_serves_the_rest() {
    let p =
        Project::new(&format!("[engine]\nworkers = 1\n[limits]\nmax_operations = 0\ntimeout_ms = 600000\n{SERVER}"));
    rule(&p, "r", "t", "s.rhai", "if record.slow == true { loop {} }\napi.comment(record, \"ran\");");
    let ran = p.run_stdin(&["fire", "t", "--record", "-", "--queue"], Some("{\"slow\": true}"));
    assert_eq!(ran.code, 0, "{ran:?}");
    let claimed = |p: &Project| -> (i64, bool) {
        db(p)
            .query_row("SELECT tries, claimed_by IS NOT NULL FROM events WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap()
    };
    // Each start claims the event and dies running it, as a process killed by its run would.
    for start in 1..=3 {
        let daemon = Served::start(&p);
        wait_for("the slow event to be claimed", || (claimed(&p) == (start, true)).then_some(()));
        daemon.kill9();
        assert!(runs(&p).is_empty(), "the run never ended");
    }
    let daemon = Served::start(&p);
    wait_for("the event to be set aside", || (!runs(&p).is_empty()).then_some(()));
    let aside = &runs(&p)[0];
    assert_eq!((aside["rule"].as_str(), aside["status"].as_str()), (Some("(set aside)"), Some("failed")), "{aside}");
    assert!(aside["error"].as_str().unwrap().contains("claimed 3 times"), "{aside}");
    let ran = p.run_stdin(&["fire", "t", "--record", "-", "--queue"], Some("{\"slow\": false}"));
    assert_eq!(ran.code, 0, "{ran:?}");
    wait_for("the next event's run", || (runs(&p).len() == 2).then_some(()));
    assert_eq!(runs(&p)[1]["status"], "ok", "{:?}", runs(&p));
    let failed = p.run(&["runs", "--failed", "--json"]).json();
    assert_eq!(failed.as_array().unwrap().len(), 1, "{failed}");
    assert_eq!(daemon.healthz()["status"], "ok");
    daemon.stop();
}

// ---------------------------------------------------------------------------------------
// A run's memory: [limits] max_run_bytes.

/// A 1 MiB string `s`, then a script that piles up memory until something stops it.
const MEMORY_SCRIPTS: &[&str] = &[
    "let m = #{}; let i = 0; loop { m[\"k\" + i] = s + i; i += 1; }",
    "loop { api.info(s); }",
    "loop { api.warn(s + \"!\"); print(s); }",
    "loop { api.comment(record, s); }",
    "loop { api.create(\"x\", #{v: s}); }",
    "let i = 0; loop { api.state_set(`k${i}`, s); i += 1; }",
    "let t = \"\"; loop { t += s; }",
    "let t = s; loop { t += t; }",
    "let a = []; loop { a.push(s + a.len()); }",
    "let a = []; let i = 0; loop { a.push(0); a[i] = s + i; i += 1; }",
    "let f = |x| x; loop { let g = f; f = |x| g; }",
    "let c = api.connection(\"big\"); let m = #{}; let i = 0; loop { m[\"k\" + i] = c.get(\"x\").body; i += 1; }",
    "let a = []; for i in 0..200 { a.push(0); } for i in 0..200 { a[i] = s; } api.info(a);",
    "let a = []; for i in 0..200 { a.push(0); } for i in 0..200 { a[i] = s; } api.state_set(\"k\", a);",
    "let a = []; for i in 0..200 { a.push(0); } for i in 0..200 { a[i] = s; } api.sanitize(a);",
    "let a = []; for i in 0..200 { a.push(0); } for i in 0..200 { a[i] = s; } api.connection(\"big\").post(\"x\", a);",
];

#[test]
fn runs_that_hold_more_than_max_run_bytes_fail_naming_it_and_the_daemon_stays_bounded() {
    let big = json_peer(format!("\"{}\"", "y".repeat(1 << 20)));
    let p = Project::new(&format!(
        "[limits]\nmax_run_bytes = 16777216\nmax_string_size = 67108864\nmax_operations = 2000000\ntimeout_ms = 600000\n\
         {SERVER}[connections.big]\nbase_url = \"{big}\"\n"
    ));
    let make_s = "let s = \"x\"; for i in 0..20 { s += s; }\n";
    for (i, script) in MEMORY_SCRIPTS.iter().enumerate() {
        rule(&p, &format!("m{i}"), &format!("m{i}"), &format!("m{i}.rhai"), &format!("{make_s}{script}"));
    }
    rule(&p, "after", "after", "after.rhai", "api.comment(record, \"still here\");");
    let check = |run: &Value, script: &str| {
        assert_eq!(run["status"], "failed", "{script}: {run}");
        let error = run["error"].as_str().unwrap();
        assert!(error.contains("max_run_bytes"), "{script}: {error}");
    };
    for (i, script) in MEMORY_SCRIPTS.iter().enumerate() {
        let (ran, fired) = p.fire(&format!("m{i}"), "{}");
        ended_cleanly(&ran, script);
        assert_eq!(fired.len(), 1, "{script}: {ran:?}");
        check(&fired[0], script);
    }
    assert_eq!(count(&p, "x"), 0, "a failed run writes nothing");

    for i in 0..MEMORY_SCRIPTS.len() {
        let ran = p.run_stdin(&["fire", &format!("m{i}"), "--record", "-", "--queue"], Some("{}"));
        assert_eq!(ran.code, 0, "{ran:?}");
    }
    let mut daemon = Served::start(&p);
    let n = MEMORY_SCRIPTS.len();
    wait_for("the queued runs", || (runs(&p).len() == 2 * n).then_some(()));
    let all = runs(&p);
    for (i, script) in MEMORY_SCRIPTS.iter().enumerate() {
        let run = all[n..].iter().find(|r| r["rule"] == format!("m{i}")).unwrap();
        check(run, script);
    }
    assert!(daemon.alive(), "{}", daemon.log());
    // Four workers ran sixteen runs of a 16 MiB budget: far below a GiB, whatever they tried.
    let peak = daemon.peak_rss();
    assert!(peak < 1 << 30, "the daemon's peak RSS is {} MiB", peak >> 20);
    let ran = p.run_stdin(&["fire", "after", "--record", "-", "--queue"], Some("{}"));
    assert_eq!(ran.code, 0, "{ran:?}");
    wait_for("the later event", || (runs(&p).len() == 2 * n + 1).then_some(()));
    assert_eq!(runs(&p).last().unwrap()["status"], "ok");
    assert_eq!(daemon.healthz()["dispatcher"]["ok"], true);
    daemon.stop();
}

// ---------------------------------------------------------------------------------------
// No host function panics: hostile arguments to every `api` function end as a recorded run.

/// Calls with hostile arguments: wrong types, huge and extreme numbers, empty strings, unit,
/// values that are not JSON, names that do not exist.
const HOSTILE_CALLS: &[&str] = &[
    "api.days_ago(100000000)",
    "api.days_ago(9223372036854775807)",
    "api.days_ago(-9223372036854775807 - 1)",
    "api.hours_ago(9223372036854775807)",
    "api.hours_ago(-9223372036854775807 - 1)",
    "api.minutes_ago(9223372036854775807)",
    "api.minutes_ago(-9223372036854775807 - 1)",
    "api.days_ago(())",
    "api.days_ago(\"1\")",
    "api.hours_ago(1.5)",
    "api.format_time(9223372036854775807)",
    "api.format_time(-9223372036854775807 - 1)",
    "api.format_time(\"now\")",
    "api.parse_time(\"\")",
    "api.parse_time(\"+275760-09-13T00:00:00Z\")",
    "api.parse_time(\"9999-12-31T23:59:60Z\")",
    "api.parse_time(\"2020-02-30T00:00:00Z\")",
    "api.parse_time(\"2020-01-01T00:00:00+99:99\")",
    "let t = \"9\"; for i in 0..15 { t += t; } api.parse_time(t)",
    "api.parse_time(())",
    "api.create(\"\", #{})",
    "api.create(\" \", #{})",
    "api.create(\"x\", #{id: 1})",
    "api.create(\"x\", #{status: \"closed\"})",
    "api.create(\"x\", #{f: Fn(\"g\")})",
    "api.create(\"x\", #{f: 1.0 / 0.0})",
    "api.create(\"x\", ())",
    "api.create((), #{})",
    "api.update(\"\", #{})",
    "api.update((), #{})",
    "api.update(#{}, #{})",
    "api.update(#{id: 5}, #{})",
    "api.update(record, #{entity: 1})",
    "api.update(record, #{\"\": 1, \"\\u0000\": 2})",
    "api.find(\"\", #{})",
    "api.find(\"x\", #{\"\": ()})",
    "api.find(\"x\", #{id: 5, status: ()})",
    "api.find(\"x\", ())",
    "api.get(\"\")",
    "api.get(\"\\u0000\")",
    "api.get(())",
    "api.comment(\"nope\", \"\")",
    "api.comment(record, ())",
    "api.close(\"nope\")",
    "api.close(record, 5)",
    "api.info(()); api.warn(#{}); api.error([]); api.log(1.0 / 0.0); print(()); debug(())",
    "api.retry_later(\"\")",
    "api.retry_later(())",
    "api.state_get(\"\")",
    "api.state_set(\"\", ())",
    "api.state_set(\"k\", Fn(\"g\"))",
    "api.state_set((), 1)",
    "api.connection(record.empty)",
    "api.connection(\"peer\").get(\"\")",
    "api.connection(\"peer\").get(\"\\\\\\\\evil.example/x\")",
    "api.connection(\"peer\").get(\"x\", #{query: 5})",
    "api.connection(\"peer\").get(\"x\", #{headers: #{\"a\\nb\": \"c\"}})",
    "api.connection(\"peer\").get(\"x\", #{nope: 1})",
    "api.connection(\"peer\").post(\"x\", Fn(\"g\"))",
    "api.connection(\"peer\").post(\"x\", 1, #{form: #{a: 1}})",
    "api.connection(\"peer\").get_all(\"x\", #{})",
    "api.connection(\"peer\").get_all(\"x\", #{style: \"nope\"})",
    "api.connection(\"peer\").get_all(\"x\", #{style: \"page\", max_pages: 0})",
    "api.connection(\"peer\").get_all(\"x\", #{style: \"page\", first: 9223372036854775807})",
    "api.connection(\"peer\").get_all(\"x\", #{style: \"offset\", limit: -1})",
    "api.directory(record.empty)",
    "api.directory(\"AD\").find_user(\"\")",
    "api.directory(\"AD\").find_user(())",
    "api.directory(\"AD\").find_user(#{})",
    "api.directory(\"AD\").find_user(#{by: 5, value: ()})",
    "api.directory(\"AD\").user_exists([])",
    "api.directory(\"AD\").create_user(#{})",
    "api.directory(\"AD\").create_user(#{name: \"\\u0000\", sAMAccountName: \"\"})",
    "api.directory(\"AD\").update_user(\"x\", #{\"\": 1})",
    "api.directory(\"AD\").update_user((), #{})",
    "api.directory(\"AD\").disable_user(())",
    "api.directory(\"AD\").enable_user(1)",
    "api.directory(\"AD\").delete_user(\"\")",
    "api.directory(\"AD\").move_user(\"x\", \"\")",
    "api.directory(\"AD\").rename_user(\"x\", \"\")",
    "api.directory(\"AD\").reset_password(\"x\", \"\")",
    "api.directory(\"AD\").add_to_group((), ())",
    "api.directory(\"AD\").remove_from_group(\"x\", 5)",
    "api.directory(\"AD\").groups_of(5)",
    "api.directory(\"AD\").set_manager(\"x\", #{})",
    "api.directory(\"AD\").search(\"\")",
    "api.directory(\"AD\").search(\"(\", [])",
    "api.directory(\"AD\").search(\"(cn={})\", [])",
    "api.directory(\"AD\").search(\"(cn=*)\", [], #{limit: -1})",
    "api.directory(\"AD\").search(\"(cn=*)\", [], #{attributes: 5, scope: \"x\"})",
    "api.notify(record.empty, \"\", ())",
    "api.notify(record.nope, \"s\", \"b\")",
    "api.ProcessFlexHrUserOnAD((), record.empty)",
    "api.ProcessFlexHrUserOnAD(record, record.nope)",
    "api.ProcessFlexHrUserOnAD(\"nope\", \"AD\")",
    "api.ProcessFlexHrUserOnAD(record, \"AD\")",
    "api.sanitize(()); api.sanitize(Fn(\"g\"))",
    "sleep(1e300)",
    "sleep(9223372036854775807)",
];

#[test]
fn hostile_arguments_to_every_host_function_end_as_recorded_runs_never_a_crash() {
    let url = json_peer("{\"ok\": true}".into());
    let p = Project::new(&format!(
        "[engine]\nworkers = 1\nmax_attempts = 1\n[limits]\nmax_operations = 2000000\ntimeout_ms = 3000\n{SERVER}\
         [connections.peer]\nbase_url = \"{url}\"\n\
         [directories.AD]\nkind = \"active_directory\"\nurl = \"ldaps://dc1.example.com\"\nbind_dn = \"svc@example.com\"\n\
         bind_password = \"unused-in-dry-run\"\nbase_dn = \"DC=example,DC=com\"\ndry_run = true\n"
    ));
    let arms: String =
        HOSTILE_CALLS.iter().enumerate().map(|(i, call)| format!("    {i} => {{ {call}; }}\n")).collect();
    // Unknown names come from the record: `check` reports a literal one at its line, and
    // these calls are about what a run does with one.
    rule(&p, "h", "h", "h.rhai", &format!("fn g() {{}}\nswitch record.n {{\n{arms}    _ => {{}}\n}}\n"));
    rule(&p, "after", "after", "after.rhai", "api.comment(record, \"still here\");");
    assert_eq!(p.run(&["check"]).code, 0, "{:?}", p.run(&["check"]));
    let lines: String =
        (0..HOSTILE_CALLS.len()).map(|i| format!("{{\"n\": {i}, \"empty\": \"\", \"nope\": \"nope\"}}\n")).collect();
    let ran = p.run_stdin(&["fire", "h", "--record", "-", "--json"], Some(&lines));
    ended_cleanly(&ran, "fire");
    // Each call ends its run, recorded with a status, and none by a panic caught on the way.
    let check = |all: &[Value]| {
        for r in all {
            let status = r["status"].as_str().unwrap();
            assert!(["ok", "failed", "dead"].contains(&status), "{r}");
            let error = r["error"].as_str().unwrap_or_default();
            assert!(!error.contains("internal error"), "a host function panicked: {r}");
        }
    };
    let fired = runs(&p);
    assert_eq!(fired.len(), HOSTILE_CALLS.len(), "one recorded run per call: {ran:?}");
    check(&fired);
    assert!(fired.iter().filter(|r| r["status"] != "ok").count() > HOSTILE_CALLS.len() * 3 / 4, "{fired:?}");

    // Through the daemon, one worker: every event ends, and a later one still runs.
    let ran = p.run_stdin(&["fire", "h", "--record", "-", "--queue"], Some(&lines));
    assert_eq!(ran.code, 0, "{ran:?}");
    let ran = p.run_stdin(&["fire", "after", "--record", "-", "--queue"], Some("{}"));
    assert_eq!(ran.code, 0, "{ran:?}");
    let mut daemon = Served::start(&p);
    wait_for("every queued run", || (runs(&p).len() == 2 * HOSTILE_CALLS.len() + 1).then_some(()));
    assert!(daemon.alive());
    let all = runs(&p);
    check(&all);
    let last = all.last().unwrap();
    assert_eq!((last["rule"].as_str(), last["status"].as_str()), (Some("after"), Some("ok")), "{last}");
    let statuses = |runs: &[Value]| {
        let mut s: Vec<String> = runs.iter().map(|r| r["status"].to_string()).collect();
        s.sort();
        s
    };
    let n = HOSTILE_CALLS.len();
    assert_eq!(statuses(&all[..n]), statuses(&all[n..2 * n]), "the daemon ends the calls as fire does");
    assert_eq!(daemon.healthz()["queue_depth"], 0);
    daemon.stop();
}

// ---------------------------------------------------------------------------------------
// `fire` with JSON Lines checks ids across the whole input before storing anything.

#[test]
fn fire_refuses_an_id_the_input_repeats_with_its_line_and_stores_nothing() {
    let p = Project::new("");
    rule(&p, "r", "t", "s.rhai", "api.comment(record, \"ran\");");
    let line = |id: &str, n: usize| format!("{{\"id\": \"{id}\", \"n\": {n}}}\n");
    let refused = |args: &[&str], input: &str, expected: &[&str]| {
        let (records, ran_before) = (p.records("t"), runs(&p).len());
        let mut all = vec!["fire", "t", "--record", "-"];
        all.extend_from_slice(args);
        let ran = p.run_stdin(&all, Some(input));
        assert_eq!(ran.code, 1, "{args:?}: {ran:?}");
        for e in expected {
            assert!(ran.stderr.contains(e), "{args:?}: expected {e:?} in {}", ran.stderr);
        }
        assert!(!ran.stderr.contains("were stored"), "{args:?}: {}", ran.stderr);
        assert_eq!(p.records("t"), records, "{args:?}: nothing stored");
        assert_eq!(runs(&p).len(), ran_before, "{args:?}: nothing ran");
    };
    // Line 551 of 600 creates the id line 3 created; also spelled with a JSON escape, and
    // with `--queue`.
    let mut input: String = (1..=600).map(|n| line(&format!("r{n}"), n)).collect();
    input = input.replace("{\"id\": \"r551\", \"n\": 551}", "{\"id\": \"r3\", \"n\": 551}");
    refused(&[], &input, &["line 551", "\"r3\"", "line 3"]);
    refused(&["--queue"], &input, &["line 551", "line 3"]);
    let escaped = input.replace("{\"id\": \"r3\", \"n\": 551}", "{\"n\": 551, \"id\": \"r\\u0033\"}");
    refused(&[], &escaped, &["line 551", "line 3"]);
    refused(&[], &format!("{}{}", line("a", 1), line("a", 2)), &["line 2", "line 1"]);

    // Stored, the same ids are refused at the first line that creates one again.
    let stored: String = (1..=600).map(|n| line(&format!("r{n}"), n)).collect();
    let ran = p.run_stdin(&["fire", "t", "--record", "-", "--quiet"], Some(&stored));
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(count(&p, "t"), 600);
    refused(&[], &format!("{}{}", line("new", 1), line("r599", 2)), &["line 2", "r599"]);

    // An update of an id the input creates later, or of no record at all.
    refused(&["--event", "updated"], &format!("{}{}", line("r1", 1), line("late", 2)), &["line 2", "late"]);
    let ran = p.run_stdin(&["fire", "t", "--record", "-", "--event", "updated"], Some(&line("r1", 7)));
    assert_eq!(ran.code, 0, "an update of a stored record: {ran:?}");

    // Deleting one record twice: line 551 of 600 again, caught before the first 500 are
    // stored (and deleted).
    let deletes: String = (1..=600).map(|n| format!("{{\"id\": \"r{}\"}}\n", if n == 551 { 3 } else { n })).collect();
    refused(&["--event", "deleted"], &deletes, &["line 551", "\"r3\"", "line 3"]);
    refused(&["--event", "deleted", "--queue"], &deletes, &["line 551"]);
    assert_eq!(count(&p, "t"), 600);

    // Custom events name stored records, as updates do: two on one record are two events.
    let ran = p.run_stdin(
        &["fire", "t", "--record", "-", "--event", "escalated"],
        Some(&format!("{}{}", line("r1", 1), line("r1", 2))),
    );
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("2 events stored"), "{}", ran.stdout);
    refused(&["--event", "escalated"], &format!("{}{}", line("r1", 1), line("ghost", 2)), &["line 2", "ghost"]);
}

// ---------------------------------------------------------------------------------------
// `api.find` on any field name.

#[test]
fn api_find_matches_fields_whatever_their_names() {
    let p = Project::new("");
    let fields = json!({
        "we\"ird": 1, "back\\slash": 2, "tags": ["a", "b"], "obj": {"0": "zero", "+1": "plus"},
        "ünï": "ç", "a b": 3, "": 4, "dots": {"x": {"y": 5}}, "n\u{0}ul": 6, "e\u{301}": 7, "👩‍💻": 8,
        "sq'uote": 9, "br[0]": 10, "$": 11, "*": 12, "a": {"": {"b": 13}}, "ctl\u{1}\n\t": 14,
        "Active": true, "Manager": null, "num": 1,
    });
    let ran = p.run_stdin(&["fire", "t", "--record", "-"], Some(&fields.to_string()));
    assert_eq!(ran.code, 0, "{ran:?}");
    // Look-alikes that must not match the record above.
    let ran = p.run_stdin(
        &["fire", "t", "--record", "-"],
        Some(
            &json!({"Active": 1, "num": "1", "tags": {"1": "b"}, "obj": "{\"0\":\"zero\",\"+1\":\"plus\"}"})
                .to_string(),
        ),
    );
    assert_eq!(ran.code, 0, "{ran:?}");
    let criteria = [
        (r#"#{"we\"ird": 1}"#, 1),
        (r#"#{"back\\slash": 2}"#, 1),
        (r#"#{"tags.0": "a"}"#, 1),
        (r#"#{"tags.1": "b"}"#, 2),
        (r#"#{"tags.01": "b"}"#, 1),
        (r#"#{"obj.0": "zero"}"#, 1),
        (r#"#{"obj.+1": "plus"}"#, 1),
        (r#"#{"ünï": "ç"}"#, 1),
        (r#"#{"a b": 3}"#, 1),
        (r#"#{"": 4}"#, 1),
        (r#"#{"dots.x.y": 5}"#, 1),
        (r#"#{"n\x00ul": 6}"#, 1),
        ("#{\"e\u{301}\": 7}", 1),
        ("#{\"👩‍💻\": 8}", 1),
        (r#"#{"sq'uote": 9}"#, 1),
        (r#"#{"br[0]": 10}"#, 1),
        (r#"#{"$": 11}"#, 1),
        (r#"#{"*": 12}"#, 1),
        (r#"#{"a..b": 13}"#, 1),
        (r#"#{"ctl\x01\n\t": 14}"#, 1),
        (r#"#{"tags": ["a", "b"]}"#, 1),
        (r#"#{"obj": #{"0": "zero", "+1": "plus"}}"#, 1),
        (r#"#{"dots.x": #{y: 5}}"#, 1),
        (r#"#{"Active": true}"#, 1),
        (r#"#{"Active": 1}"#, 1),
        (r#"#{"Manager": ()}"#, 1),
        (r#"#{"num": 1.0}"#, 1),
        (r#"#{"num": "1"}"#, 1),
        (r#"#{"tags.2": ()}"#, 0),
        (r#"#{"tags.0": "b"}"#, 0),
        (r#"#{"missing": ()}"#, 0),
    ];
    let list: Vec<&str> = criteria.iter().map(|(c, _)| *c).collect();
    rule(
        &p,
        "q",
        "q",
        "q.rhai",
        &format!(
            "let out = [];\nfor c in [{}] {{ try {{ out.push(api.find(\"t\", c).len()); }} catch (e) {{ out.push(`${{e}}`); }} }}\n\
             api.info(out);",
            list.join(", ")
        ),
    );
    let (ran, fired) = p.fire("q", "{}");
    assert_eq!(ran.code, 0, "{ran:?}");
    let got = fired[0]["log"][0]["message"].as_str().unwrap();
    let expected: Vec<String> = criteria.iter().map(|(_, n)| n.to_string()).collect();
    assert_eq!(got, format!("[{}]", expected.join(", ")), "{list:?}");

    // Within a run, the run's own changes count: a stored record updated to match is found.
    rule(
        &p,
        "own",
        "own",
        "own.rhai",
        "let r = api.find(\"t\", #{\"a b\": 3})[0];\napi.update(r, #{\"a b\": 30, \"we\\\"ird\": 10});\n\
         api.info([api.find(\"t\", #{\"a b\": 30}).len(), api.find(\"t\", #{\"we\\\"ird\": 10}).len(), \
         api.find(\"t\", #{\"a b\": 3}).len()]);",
    );
    let (ran, fired) = p.fire("own", "{}");
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(fired[0]["log"][0]["message"], "[1, 1, 0]", "{fired:?}");
}

// ---------------------------------------------------------------------------------------
// Symbolic links in the watched folders.

/// Runs a command, failing the test if it has not ended within `secs` (a hang must fail the
/// test, not hang the suite).
fn run_within(mut cmd: Command, secs: u64) -> Ran {
    let mut child = cmd.stdin(Stdio::null()).spawn().expect("tripline binary runs");
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return Ran {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the command did not end within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn symlink_loops_and_aliases_are_reported_at_the_link_and_the_daemon_keeps_dispatching() {
    use std::os::unix::fs::symlink;
    let p = Project::new(&format!("{LIMITS}{SERVER}"));
    let ticks = "conditions = [{ field = \"Created\", op = \"equals\", value = true }]\n";
    p.file("rules/sub/s.toml", &format!("name = \"s\"\nentity = \"t\"\nscript = \"s.rhai\"\n{ticks}"))
        .file("outside/o.toml", &format!("name = \"o\"\nentity = \"t\"\nscript = \"s.rhai\"\n{ticks}"))
        .script("s.rhai", "api.comment(record, rule);")
        .script("sub/helper.rhai", "let unused = 1;");
    let path = |rel: &str| p.path().join(rel);
    symlink(".", path("rules/loop1")).unwrap();
    symlink(".", path("rules/loop2")).unwrap();
    symlink("..", path("rules/sub/up")).unwrap();
    symlink(".", path("scripts/loop")).unwrap();
    symlink("..", path("scripts/sub/up")).unwrap();
    symlink(path("outside"), path("rules/out")).unwrap();
    symlink("sub", path("rules/sibling")).unwrap();
    symlink("sub/s.toml", path("rules/alias.toml")).unwrap();
    let expected = [
        ("rules/loop1", "a loop"),
        ("rules/loop2", "a loop"),
        ("rules/sub/up", "a loop"),
        ("scripts/loop", "a loop"),
        ("scripts/sub/up", "a loop"),
        ("rules/out", "leads out of the folder"),
        ("rules/sibling", "read anyway"),
        ("rules/alias.toml", "read anyway"),
    ];
    let ran = run_within(p.command(&["check"]), 60);
    assert_eq!(ran.code, 0, "only warnings: {ran:?}");
    for (link, what) in expected {
        let at = format!("{}:1:1: warning: ", path(link).display());
        let line = ran.stdout.lines().find(|l| l.starts_with(&at)).unwrap_or_else(|| panic!("{link}: {}", ran.stdout));
        assert!(line.contains(what), "{line}");
    }
    assert!(ran.stdout.contains("ok: 1 rules, 2 scripts"), "each file once: {}", ran.stdout);

    let daemon = Served::start(&p);
    let health = daemon.healthz();
    // Warnings: the daemon is healthy, and lists each link it did not follow.
    assert_eq!(health["status"], "ok", "{health}");
    let listed: Vec<String> =
        health["warnings"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap().to_string()).collect();
    for (link, _) in expected {
        assert!(listed.contains(&path(link).display().to_string()), "{link} in {listed:?}");
    }
    let ran = p.run_stdin(&["fire", "t", "--record", "-", "--queue"], Some("{}"));
    assert_eq!(ran.code, 0, "{ran:?}");
    wait_for("the rule's run", || (!runs(&p).is_empty()).then_some(()));
    // A loop made while the daemon runs is reported too, and dispatching goes on.
    let reloads = health["reloads"].as_u64().unwrap();
    symlink("../..", path("rules/sub/upup")).unwrap();
    p.file("rules/sub/s2.toml", &format!("name = \"s2\"\nentity = \"t\"\nscript = \"s.rhai\"\n{ticks}"));
    wait_for("the reload", || (daemon.healthz()["reloads"].as_u64().unwrap() > reloads).then_some(()));
    let ran = p.run_stdin(&["fire", "t", "--record", "-", "--queue"], Some("{}"));
    assert_eq!(ran.code, 0, "{ran:?}");
    wait_for("both rules on the new event", || (runs(&p).len() == 3).then_some(()));
    let all = runs(&p);
    let rules: Vec<&str> = all.iter().map(|r| r["rule"].as_str().unwrap()).collect();
    assert_eq!(rules.iter().filter(|r| **r == "s").count(), 2, "s ran once per event, not once per alias: {rules:?}");
    assert!(all.iter().all(|r| r["status"] == "ok"), "{all:?}");
    let health = daemon.healthz();
    assert_eq!(health["dispatcher"]["ok"], true);
    let upup = path("rules/sub/upup").display().to_string();
    assert!(health["warnings"].as_array().unwrap().iter().any(|f| f["path"] == upup.as_str()), "{health}");
    daemon.stop();
}

// ---------------------------------------------------------------------------------------
// [engine] max_fanout: how many events one event from outside may cause in all.

#[test]
fn a_rule_that_multiplies_its_own_records_is_stopped_at_max_fanout_per_outside_event() {
    let p = Project::new(&format!("[engine]\nmax_fanout = 50\nmax_chain_depth = 64\n{LIMITS}{SERVER}"));
    rule(&p, "grow", "x", "grow.rhai", "for i in 0..10 { api.create(\"x\", #{n: i}); }");
    rule(
        &p,
        "bump",
        "y",
        "bump.rhai",
        "for i in 0..10 { api.create(\"y\", #{}); }\napi.update(record, #{seen: true});",
    );
    // The root run raises 10 events, four runs at the next level 40 more (50 in all); every
    // run after that would cross the limit: it fails, and writes nothing.
    let check_chain = |entity: &str, runs_of_chain: &[Value]| {
        assert_eq!(runs_of_chain.len(), 51, "{entity}");
        let ok = runs_of_chain.iter().filter(|r| r["status"] == "ok").count();
        assert_eq!(ok, 5, "{entity}");
        for r in runs_of_chain.iter().filter(|r| r["status"] != "ok") {
            assert_eq!(r["status"], "failed", "{r}");
            let error = r["error"].as_str().unwrap();
            assert!(error.contains("[engine] max_fanout = 50"), "{error}");
        }
    };
    let (ran, fired) = p.fire("x", "{}");
    assert_eq!(ran.code, 1, "a run failed: {ran:?}");
    check_chain("x", &fired);
    assert_eq!(count(&p, "x"), 51, "the first record and the 50 the chain could raise");
    // Another outside event has a budget of its own, also fired in the same input.
    let ran = p.run_stdin(&["fire", "x", "--record", "-", "--json"], Some("{}\n{}\n"));
    assert_eq!(ran.code, 1, "{ran:?}");
    assert_eq!(count(&p, "x"), 51 * 3);
    // Updates count too: 11 events a run (10 records and the update of its own).
    let (_, fired) = p.fire("y", "{}");
    assert_eq!(fired.iter().filter(|r| r["status"] == "ok").count(), 4, "1 + 3 runs fit: 11 + 33 = 44 events");
    assert!(fired.iter().filter(|r| r["status"] != "ok").all(|r| r["error"].as_str().unwrap().contains("max_fanout")));
    assert_eq!(count(&p, "y"), 41, "the first record and the 40 the fitting runs created");

    // Through the daemon: two outside deliveries, one budget each.
    let before = runs(&p).len();
    let ran = p.run_stdin(&["fire", "x", "--record", "-", "--queue"], Some("{}\n{}\n"));
    assert_eq!(ran.code, 0, "{ran:?}");
    let daemon = Served::start(&p);
    wait_for("both chains to stop", || (runs(&p).len() == before + 102 && count(&p, "x") == 51 * 5).then_some(()));
    daemon.drained_after(&p);
    let all = runs(&p);
    let chains = &all[before..];
    assert_eq!(chains.iter().filter(|r| r["status"] == "ok").count(), 10, "five runs that fit in each chain");
    assert!(chains.iter().filter(|r| r["status"] != "ok").all(|r| r["error"].as_str().unwrap().contains("max_fanout")));
    assert_eq!(daemon.healthz()["dispatcher"]["ok"], true);
    daemon.stop();
}

// ---------------------------------------------------------------------------------------
// Logging into the watched folders.

#[test]
fn a_trace_log_written_into_the_watched_folders_does_not_feed_itself() {
    let p = Project::new(&format!("{LIMITS}{SERVER}"));
    rule(&p, "r", "t", "s.rhai", "api.comment(record, \"ran\");");
    for (i, log) in ["trace.log", "rules/trace.log", "scripts/trace.log", "rules/sub/daemon.out"].iter().enumerate() {
        let log = p.path().join(log);
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        let daemon = Served::start_logging(&p, &log, "trace");
        // A few seconds of the daemon idling with every log line landing in its folders: a
        // log that fed itself would grow without end and reload without end.
        std::thread::sleep(Duration::from_secs(3));
        let ran = p.run_stdin(&["fire", "t", "--record", "-", "--queue"], Some("{}"));
        assert_eq!(ran.code, 0, "{ran:?}");
        wait_for("the event's run", || (runs(&p).len() == i + 1).then_some(()));
        let health = daemon.healthz();
        assert_eq!(health["reloads"], 0, "{log:?}: nothing to reload: {health}");
        assert_eq!(health["status"], "ok", "{health}");
        let size = std::fs::metadata(&log).unwrap().len();
        assert!(size < 4 << 20, "{log:?} is {size} bytes after a few seconds");
        daemon.stop();
    }
    assert!(runs(&p).iter().all(|r| r["status"] == "ok"));
}

// ---------------------------------------------------------------------------------------
// A run the store refuses ends its event, as failed with the reason, instead of running again.

#[test]
fn a_run_the_store_refuses_ends_its_event_as_failed_with_the_reason() {
    let p = Project::new(&format!("{LIMITS}{SERVER}"));
    rule(
        &p,
        "r",
        "t",
        "s.rhai",
        "if record.what == \"write\" { api.comment(record, \"poison\"); }\n\
         if record.what == \"log\" { api.info(\"poison log\"); api.comment(record, \"fine\"); }\n\
         if record.what == \"both\" { api.info(\"poison log\"); api.comment(record, \"poison\"); }\n\
         if record.what == \"fine\" { api.comment(record, \"fine\"); }",
    );
    assert_eq!(count(&p, "t"), 0, "the store exists");
    // The store refuses some values, as a full disk or a value SQLite cannot take would:
    // a comment, and a run's log.
    db(&p)
        .execute_batch(
            "CREATE TRIGGER refuse_comment BEFORE INSERT ON comments WHEN NEW.text = 'poison'
               BEGIN SELECT RAISE(ABORT, 'the store refuses this comment'); END;
             CREATE TRIGGER refuse_log BEFORE INSERT ON runs WHEN NEW.log LIKE '%poison log%'
               BEGIN SELECT RAISE(ABORT, 'the store refuses this log'); END;",
        )
        .unwrap();
    let expect = |run: &Value, what: &str| {
        assert_eq!(run["status"], "failed", "{what}: {run}");
        let error = run["error"].as_str().unwrap();
        match what {
            "write" => {
                assert!(error.contains("writes were refused") && error.contains("refuses this comment"), "{error}")
            }
            _ => assert!(error.contains("could not be stored") && error.contains("refuses this log"), "{error}"),
        }
    };
    for what in ["write", "log", "both"] {
        let (ran, fired) = p.fire("t", &format!("{{\"what\": \"{what}\"}}"));
        ended_cleanly(&ran, what);
        assert_eq!(fired.len(), 1, "{what}: {ran:?}");
        expect(&fired[0], what);
    }
    let done: i64 = db(&p).query_row("SELECT count(*) FROM events WHERE done = 1", [], |r| r.get(0)).unwrap();
    assert_eq!(done, 3, "every event ended");
    assert!(p.records("t").iter().all(|r| r["comments"].as_array().unwrap().is_empty()), "nothing of them was kept");

    // The daemon ends them the same way, once each, and goes on.
    for what in ["write", "log", "both", "fine"] {
        let ran = p.run_stdin(&["fire", "t", "--record", "-", "--queue"], Some(&format!("{{\"what\": \"{what}\"}}")));
        assert_eq!(ran.code, 0, "{ran:?}");
    }
    let daemon = Served::start(&p);
    wait_for("the queued events' runs", || (runs(&p).len() == 7).then_some(()));
    daemon.drained_after(&p);
    // Passes go by; nothing runs again.
    let ran = p.run_stdin(&["fire", "t", "--record", "-", "--queue"], Some("{\"what\": \"fine\"}"));
    assert_eq!(ran.code, 0, "{ran:?}");
    wait_for("a later event", || (runs(&p).len() == 8).then_some(()));
    let all = runs(&p);
    assert_eq!(all.len(), 8, "one run per event");
    let of_event = |id: i64| all.iter().find(|r| r["event_id"] == id).unwrap();
    for (event, what) in [(4, "write"), (5, "log"), (6, "both")] {
        expect(of_event(event), what);
    }
    assert_eq!(of_event(7)["status"], "ok");
    assert_eq!(of_event(8)["status"], "ok");
    assert_eq!(daemon.healthz()["dispatcher"]["ok"], true);
    daemon.stop();
}

// ---------------------------------------------------------------------------------------
// Configuration numbers out of range are `check` errors at their place, never panics.

#[test]
fn configuration_numbers_out_of_range_are_errors_at_their_line() {
    let cases = [
        ("[limits]\ntimeout_ms = 99999999999999\n", "timeout_ms", "out of range"),
        ("[limits]\ntimeout_ms = 0\n", "timeout_ms", "out of range"),
        ("[engine]\nretention_days = 4294967295\n", "retention_days", "out of range"),
        ("[engine]\nretention_days = -1\n", "", "expected u32"),
        ("[engine]\nmax_attempts = 0\n", "max_attempts", "out of range"),
        ("[engine]\nworkers = 0\n", "workers", "out of range"),
        ("[engine]\nworkers = 18446744073709551615\n", "", "too large"),
        ("[engine]\nworkers = -1\n", "", "expected usize"),
        ("[engine]\nmax_fanout = 0\n", "max_fanout", "out of range"),
        ("[engine]\nmax_chain_depth = 4294967296\n", "", "expected u32"),
        ("[engine]\nmax_record_bytes = 0\n", "max_record_bytes", "out of range"),
        ("[engine]\nretry_backoff_ms = 0\n", "retry_backoff_ms", "out of range"),
        ("[engine]\nretry_backoff_ms = 5000\nretry_max_backoff_ms = 10\n", "retry_backoff_ms", "larger than"),
        ("[limits]\nmax_run_bytes = 1\n", "max_run_bytes", "out of range"),
        ("[limits]\nmax_run_bytes = 1073741824\n", "max_run_bytes", "out of range"),
        ("[limits]\nmax_run_bytes = 99999999999999999999\n", "", "too large"),
        ("[limits]\nmax_operations = 1.5\n", "", "floating point"),
        ("[limits]\nmax_call_depth = 0\n", "max_call_depth", "out of range"),
        ("[limits]\nmax_string_size = 99999999999\n", "max_string_size", "out of range"),
        ("[limits]\nmax_array_size = 99999999999\n", "max_array_size", "out of range"),
        ("[limits]\nmax_map_size = 99999999999\n", "max_map_size", "out of range"),
    ];
    for (text, key, what) in cases {
        // A line before, so that a report at the file's start (1:1) cannot pass for one at
        // the setting's line.
        let p = Project::new(&format!("# settings\n{text}"));
        let ran = run_within(p.command(&["check"]), 60);
        ended_cleanly(&ran, text);
        assert_eq!(ran.code, 1, "{text}: {ran:?}");
        let line =
            text.lines().position(|l| key.is_empty() && l.contains('=') || !key.is_empty() && l.starts_with(key));
        let line = line.map(|i| i + 2).unwrap();
        let at = format!("tripline.toml:{line}:");
        let reported =
            ran.stdout.lines().find(|l| l.contains(what)).unwrap_or_else(|| panic!("{text}: {}", ran.stdout));
        assert!(reported.contains(&at), "{text}: expected {at} in {reported}");
        assert!(key.is_empty() || reported.contains(&format!("] {key}")), "{text}: {reported}");
        // The daemon and fire refuse to start on it the same way, exit 1.
        for args in [&["run"][..], &["fire", "t", "--record", "-"][..]] {
            let ran = run_within(p.command(args), 60);
            ended_cleanly(&ran, text);
            assert_eq!(ran.code, 1, "{text} {args:?}: {ran:?}");
            assert!(ran.stderr.contains(what), "{text} {args:?}: {}", ran.stderr);
        }
    }
    // Settings a daemon takes without a range: huge ones start and serve, none panics.
    let p = Project::new(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrequest_timeout_ms = 9223372036854775807\n\
         [connections.far]\nbase_url = \"{}\"\ntimeout = \"9999999999s\"\n\
         retry = {{ max_attempts = 4294967295, base_delay = \"9999999999s\", max_delay = \"9999999999s\" }}\n",
        json_peer("{}".into())
    ));
    rule(&p, "r", "t", "s.rhai", "api.connection(\"far\").get(\"x\");");
    let (ran, fired) = p.fire("t", "{}");
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(fired[0]["status"], "ok");
    let daemon = Served::start(&p);
    assert_eq!(daemon.healthz()["status"], "ok");
    daemon.stop();
}
