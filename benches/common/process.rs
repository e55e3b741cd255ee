//! The release binary, and a whole process measured from start to exit, for the benches that
//! run `tripline` as an admin would.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Builds the release binary and returns its path.
pub fn binary() -> PathBuf {
    let status = Command::new("cargo").args(["build", "--release", "--bin", "tripline"]).status().unwrap();
    assert!(status.success());
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    Path::new(&target).join("release/tripline")
}

/// Runs the command to its end: its wall time and peak resident memory in KiB (VmHWM,
/// sampled every 10 ms).
pub fn run_measured(cmd: &mut Command) -> (Duration, u64) {
    let start = Instant::now();
    let mut child = cmd.stdout(Stdio::null()).spawn().unwrap();
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_path) {
            if let Some(v) = text.lines().find(|l| l.starts_with("VmHWM:")) {
                peak_kb = peak_kb.max(v.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0));
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{cmd:?} failed");
            return (start.elapsed(), peak_kb);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
