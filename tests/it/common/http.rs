//! HTTP peers and connections for tests: connections built from TOML as `tripline.toml`
//! would hold them, checked first, and a capture of tracing output.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use tripline::connection::{Connection, ConnectionConfig, MemoryTokenStore, TokenStore};
use tripline::diag::CheckCtx;

/// A connection named `name` from the body of its `[connections.NAME]` table, built by the
/// code `check` runs, which found nothing wrong.
pub fn connection(name: &str, toml_text: &str) -> Connection {
    connection_with_store(name, toml_text, Arc::new(MemoryTokenStore::new()))
}

/// Like [`connection`], with OAuth2 tokens in `store`.
pub fn connection_with_store(name: &str, toml_text: &str, store: Arc<dyn TokenStore>) -> Connection {
    let config: ConnectionConfig = toml::from_str(toml_text).expect("the section parses");
    let mut ctx = CheckCtx::new(Path::new("tripline.toml"), toml_text, Path::new("."));
    let connection = config.build(name, 0..toml_text.len(), &mut ctx, store);
    assert!(ctx.diags.is_empty(), "check: {:?}", ctx.diags);
    connection.expect("the connection builds")
}

/// A loopback port nothing listens on (it was free a moment ago).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Everything logged on this thread while the guard lives, as text.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// Starts capturing every level on the current thread (a current-thread runtime keeps
    /// all of a test's tasks there).
    pub fn start() -> (LogCapture, tracing::subscriber::DefaultGuard) {
        // With a single dispatcher alive, tracing caches each callsite's interest from
        // whichever thread hits it first, so a test on another thread without a subscriber
        // could switch our events off. A second, idle dispatcher kept alive for the whole
        // binary makes tracing combine the interest of all of them instead.
        static SECOND: OnceLock<tracing::Dispatch> = OnceLock::new();
        SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
        let capture = LogCapture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (capture, tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
