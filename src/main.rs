//! The `tripline` binary: parse the command line, set up logging, run, map to an exit code.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;

/// Standard error with every known secret scrubbed from each log line: a last line of
/// defence for whatever a dependency logs at `trace` (headers, URLs, server replies).
struct RedactingStderr;

impl Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // The formatter hands over one whole event per call.
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().lock().write_all(tripline::secret::redact(&text).as_bytes())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Counts each thread's bytes, so that a run's memory is bounded (`[limits] max_run_bytes`).
#[global_allocator]
static ALLOCATOR: tripline::memory::CountingAllocator = tripline::memory::CountingAllocator;

/// `TRIPLINE_LOG` (tracing's filter syntax, default `info`). The file watcher's own crates log
/// every file system event at `trace`: with the log written into a watched folder, each line
/// would be an event that logs a line, without end. They stay at `info` unless the filter
/// names them (`TRIPLINE_LOG=trace,notify=trace`).
fn log_filter() -> tracing_subscriber::EnvFilter {
    let spec = std::env::var("TRIPLINE_LOG").unwrap_or_else(|_| "info".into());
    let mut filter = tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|_| "info".into());
    for quiet in ["notify", "notify_debouncer_full", "inotify", "mio"] {
        if !spec.contains(quiet) {
            if let Ok(d) = format!("{quiet}=info").parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    filter
}

/// How log lines are written: `TRIPLINE_LOG_FORMAT=json` for one JSON object per line,
/// anything else (or unset) for text.
enum LogFormat {
    Text,
    Json,
}

fn log_format() -> LogFormat {
    match std::env::var("TRIPLINE_LOG_FORMAT") {
        Ok(v) if v.trim().eq_ignore_ascii_case("json") => LogFormat::Json,
        Ok(v) if !v.trim().is_empty() && !v.trim().eq_ignore_ascii_case("text") => {
            // Said once, in the text format: a typo must not silently keep text.
            eprintln!("warning: TRIPLINE_LOG_FORMAT={v:?} is neither `text` nor `json`; logging text");
            LogFormat::Text
        }
        _ => LogFormat::Text,
    }
}

/// glibc gives each thread that allocates its own arena, up to 8 per core, and memory freed
/// on another thread (a run's values, built by a worker and dropped by the committer) is
/// reused only in its own arena: with the dispatcher's threads, the peak RSS of `fire` grew
/// with the size of the batch (42 MiB at 50,000 events, 52 MiB at 500,000). Two arenas keep
/// it flat (34 / 35 MiB) at the same speed. `MALLOC_ARENA_MAX` in the environment still wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a parameter of the allocator; called before any other
        // thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = tripline::cli::Cli::parse();
    // Colours only for a person at a terminal: not in a file, a pipe or journald, nor with
    // NO_COLOR set (https://no-color.org).
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let logs = tracing_subscriber::fmt().with_env_filter(log_filter()).with_writer(|| RedactingStderr);
    match log_format() {
        // One JSON object per line, for journald's or a collector's parser; never coloured.
        // The same redacting writer: a secret is scrubbed in its JSON-escaped form too.
        LogFormat::Json => logs.json().with_ansi(false).with_current_span(false).init(),
        LogFormat::Text => logs.with_ansi(ansi).init(),
    }
    // Commands that run scripts run them on this thread: give it a script stack (see
    // `tripline::memory::script_stack_bytes`). A thread that cannot be started is an error
    // like any other.
    let stack = tripline::memory::script_stack_bytes(tripline::cli::configured_max_run_bytes(&cli.config));
    let outcome = std::thread::Builder::new()
        .name("tripline-main".into())
        .stack_size(stack)
        .spawn(move || tripline::cli::run(cli))
        .map_err(|e| tripline::cli::Failure { message: format!("cannot start: {e}"), code: 1 })
        .and_then(|t| {
            t.join().unwrap_or_else(|_| {
                Err(tripline::cli::Failure { message: "tripline stopped on an internal error".into(), code: 70 })
            })
        });
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("error: {}", tripline::secret::redact(&f.message));
            ExitCode::from(f.code)
        }
    }
}
