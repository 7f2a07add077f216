//! Headless Chromium for the dashboard tests: Debian's `chromium`, driven through
//! `chromedriver` (WebDriver, <https://www.w3.org/TR/webdriver2/>) by the `fantoccini` crate.
//! Each browser has its own ChromeDriver on a free loopback port and its own profile folder;
//! both processes (ChromeDriver and the Chromium it starts) are killed on drop, test failed or
//! not.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};

/// A headless Chromium session.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium with a fresh profile, `width`×`height`.
    pub async fn start(width: u32, height: u32) -> Browser {
        assert!(
            std::path::Path::new("/usr/bin/chromedriver").exists(),
            "/usr/bin/chromedriver is missing: scripts/test installs Debian's chromium-driver"
        );
        let port = free_port();
        let mut command = Command::new("/usr/bin/chromedriver");
        command
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group, so that the Chromium it starts dies with it on drop.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = command.spawn().expect("starting chromedriver");
        let profile = tempfile::tempdir().unwrap();
        // The flags of a headless Chromium on a machine with no network and no display.
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": "/usr/bin/chromium", "args": args}),
        );
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(caps);
        let mut driver = driver;
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match builder.connect(&format!("http://127.0.0.1:{port}")).await {
                Ok(client) => break client,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    kill_group(&mut driver);
                    panic!("chromedriver on port {port} did not start a session: {e}");
                }
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Runs `script` (a function body; `return` gives the result) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits up to `timeout` for `script` to return something truthy; returns it and the time
    /// it took.
    pub async fn wait_for(&self, timeout: Duration, script: &str) -> (Value, Duration) {
        let started = Instant::now();
        loop {
            let v = self.eval(script).await;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return (v, started.elapsed());
            }
            assert!(
                started.elapsed() < timeout,
                "waited {timeout:?} for: {script}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The page's errors, as its `hooks.js` collected them (uncaught errors, rejections and
    /// `console.error`).
    pub async fn page_errors(&self) -> Vec<String> {
        serde_json::from_value(
            self.eval("return window.__weftErrors || ['no error hook'];")
                .await,
        )
        .unwrap()
    }

    /// Saves a PNG of the window at `path`.
    pub async fn screenshot(&self, path: &std::path::Path) {
        let png = self.client.screenshot().await.unwrap();
        assert_eq!(&png[1..4], b"PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Ends the session (Chromium exits), then ChromeDriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        kill_group(&mut self.driver);
    }
}

fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.driver);
    }
}

/// Where the dashboard tests write their artifacts (screenshots), under the target folder.
pub fn artifacts() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard")
}
