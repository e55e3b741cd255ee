//! A temp project folder (tripline.toml, rules/, scripts/) and the real `tripline` binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A project in a temp folder, removed on drop.
pub struct Project {
    pub dir: tempfile::TempDir,
    /// Environment variables every command of this project gets (secrets).
    env: std::cell::RefCell<Vec<(String, String)>>,
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    fn from(o: Output) -> Ran {
        Ran {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// The stdout as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tripline"))
}

impl Project {
    /// An empty project with the given configuration text.
    pub fn new(config: &str) -> Project {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("rules")).unwrap();
        std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
        std::fs::write(dir.path().join("tripline.toml"), config).unwrap();
        Project { dir, env: Default::default() }
    }

    /// Sets an environment variable for every later command (a connection's secret).
    pub fn set_env(&self, name: &str, value: &str) -> &Self {
        self.env.borrow_mut().push((name.to_string(), value.to_string()));
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file under the project (folders created).
    pub fn file(&self, rel: &str, text: &str) -> &Self {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
        self
    }

    /// A rule file.
    pub fn rule(&self, name: &str, text: &str) -> &Self {
        self.file(&format!("rules/{name}.toml"), text)
    }

    /// A script file.
    pub fn script(&self, name: &str, text: &str) -> &Self {
        self.file(&format!("scripts/{name}"), text)
    }

    /// Runs `tripline ARGS --config <project>/tripline.toml` from another folder, so relative
    /// paths in the configuration must resolve against the configuration's folder.
    pub fn run(&self, args: &[&str]) -> Ran {
        self.run_stdin(args, None)
    }

    pub fn run_stdin(&self, args: &[&str], stdin: Option<&str>) -> Ran {
        self.run_with(self.command(args), stdin)
    }

    /// Runs with extra environment variables (`TRIPLINE_LOG` among them overrides `warn`).
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Ran {
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied());
        self.run_with(cmd, None)
    }

    /// The command `run` runs, to adjust (environment, stdio) before spawning.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary());
        cmd.args(args)
            .arg("--config")
            .arg(self.path().join("tripline.toml"))
            .current_dir(std::env::temp_dir())
            .env("TRIPLINE_LOG", "warn")
            .envs(self.env.borrow().iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn run_with(&self, mut cmd: Command, stdin: Option<&str>) -> Ran {
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd.spawn().expect("tripline binary runs");
        if let Some(text) = stdin {
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        Ran::from(child.wait_with_output().unwrap())
    }

    /// Fires one record (as JSON text) and returns the runs printed with `--json`.
    pub fn fire(&self, entity: &str, record: &str) -> (Ran, Vec<serde_json::Value>) {
        let ran = self.run_stdin(&["fire", entity, "--record", "-", "--json"], Some(record));
        let runs =
            ran.stdout.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect();
        (ran, runs)
    }

    /// Every record of an entity, as JSON.
    pub fn records(&self, entity: &str) -> Vec<serde_json::Value> {
        let ran = self.run(&["records", "list", entity, "--json"]);
        assert_eq!(ran.code, 0, "{ran:?}");
        ran.json().as_array().unwrap().clone()
    }
}

/// `tripline run` on a project, in the background; stopped with SIGTERM by [`Daemon::stop`]
/// (which checks a clean exit) or when dropped.
pub struct Daemon(std::process::Child);

impl Daemon {
    pub fn start(p: &Project) -> Daemon {
        let mut cmd = p.command(&["run"]);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        Daemon(cmd.spawn().expect("tripline binary runs"))
    }

    /// The daemon's process id (to send it signals).
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Stops the daemon and checks that it exited cleanly.
    pub fn stop(mut self) {
        let status = self.terminate();
        assert!(status.success(), "daemon exit: {status:?}");
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        self.0.wait().expect("the daemon can be waited for")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.terminate();
        }
    }
}
