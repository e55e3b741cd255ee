//! A real headless Chromium driven over WebDriver (fantoccini): the harness starts Debian's
//! `chromedriver` on a free port with a profile in a temp folder, and stops it when dropped.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

/// How to install what these tests need, said when it is missing.
pub const INSTALL: &str = "apt-get install -y --no-install-recommends chromium chromium-driver";

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver process and one browser session on it.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; fails, saying how to install them,
    /// when either is missing.
    pub async fn start() -> Browser {
        for (path, what) in [(CHROMEDRIVER, "chromedriver"), (CHROMIUM, "chromium")] {
            assert!(std::path::Path::new(path).exists(), "{what} is not installed at {path}: {INSTALL}");
        }
        let port = free_port();
        // A process group of its own, so that the browsers chromedriver starts are stopped
        // with it even when a test fails before it closes its session.
        let driver = Command::new(CHROMEDRIVER)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}; {INSTALL}"));
        let profile = tempfile::tempdir().unwrap();
        let caps: serde_json::Map<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1366,900", "--no-first-run", "--disable-extensions", "--disable-crash-reporter",
                    "--disable-breakpad",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }
        }))
        .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        // chromedriver takes a moment to listen: try to connect until it does.
        let mut last = String::new();
        for _ in 0..200 {
            match ClientBuilder::native().capabilities(caps.clone()).connect(&url).await {
                Ok(client) => return Browser { client, driver, _profile: profile },
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver on port {port} did not start a Chromium session: {last}; {INSTALL}");
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    /// The page's HTML as the browser has it.
    pub async fn source(&self) -> String {
        self.client.source().await.unwrap()
    }

    pub async fn text_of(&self, css: &str) -> String {
        let e = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css:?} on the page: {e}"));
        e.text().await.unwrap()
    }

    pub async fn has(&self, css: &str) -> bool {
        !self.client.find_all(Locator::Css(css)).await.unwrap().is_empty()
    }

    /// Clicks what loads another page (a link, a form's button), and waits until the page it
    /// was on is gone: a form's POST may still be on its way when the click returns, and the
    /// next command must not read the old page.
    pub async fn click(&self, css: &str) {
        let old = self.client.find(Locator::Css("html")).await.unwrap();
        let e = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css:?} on the page: {e}"));
        e.click().await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        // The old page's root element goes stale once the next page replaces it.
        while old.tag_name().await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "clicking {css:?} loaded no page");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Ticks a checkbox (no page loads).
    pub async fn check(&self, css: &str) {
        let e = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css:?} on the page: {e}"));
        e.click().await.unwrap();
        assert!(e.is_selected().await.unwrap(), "{css:?} is ticked");
    }

    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css:?} on the page: {e}"));
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    /// Chooses the option with this value in a `<select>`.
    pub async fn select(&self, css: &str, value: &str) {
        let e = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css:?} on the page: {e}"));
        e.select_by_value(value).await.unwrap();
    }

    pub async fn path(&self) -> String {
        let u = self.client.current_url().await.unwrap();
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        }
    }

    /// Writes a PNG of the window to `path`.
    pub async fn screenshot(&self, path: &std::path::Path) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Ends the session, then the driver and whatever it started (see [`Drop`]).
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    /// Stops chromedriver's process group: the driver and the browser it started.
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
