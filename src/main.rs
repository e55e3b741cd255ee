//! The `tripline` binary: parse the command line, set up logging, run, map to an exit code.

use std::io::Write;
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
        std::io::stderr().lock().write_all(tripline::config::secret::redact(&text).as_bytes())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn main() -> ExitCode {
    let cli = tripline::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TRIPLINE_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(|| RedactingStderr)
        .init();
    match tripline::cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("error: {}", tripline::config::secret::redact(&f.message));
            ExitCode::from(f.code)
        }
    }
}
