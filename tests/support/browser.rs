//! Headless Chromium driven over WebDriver: Debian's `chromium` and
//! `chromium-driver` (tests/setup.sh installs both), the driver on a port it
//! picks and prints, a fresh profile per browser, the flags that keep Chromium
//! off the network (this machine's network is closed; the probe in the
//! environment notes needed them). Missing software is a failure that names
//! the install command, never a skipped test.

use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use fantoccini::Client;

const INSTALL: &str = "run tests/setup.sh (Debian: apt-get install chromium chromium-driver)";

/// A browser; [`Browser::quit`] ends it, dropping it kills what is left.
pub struct Browser {
    pub client: Client,
    driver: Child,
    profile: PathBuf,
}

impl Browser {
    pub async fn start() -> Self {
        for bin in ["chromium", "chromedriver"] {
            let found = Command::new(bin).arg("--version").output().is_ok_and(|o| o.status.success());
            assert!(found, "{bin} is not installed: {INSTALL}");
        }
        // A process group of its own, so that the Chromium it starts goes with it.
        let mut driver = Command::new("chromedriver")
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("chromedriver did not start ({e}): {INSTALL}"));
        let stdout = driver.stdout.take().expect("piped");
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            // Keeps draining after the port line, so the driver never blocks on its pipe.
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let port = line
                    .strip_prefix("ChromeDriver was started successfully on port ")
                    .and_then(|rest| rest.trim_end_matches('.').parse::<u16>().ok());
                if let Some(port) = port
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(port);
                }
            }
        });
        let port = match tokio::time::timeout(Duration::from_secs(20), rx).await {
            Ok(Ok(port)) => port,
            _ => {
                kill_group(&mut driver);
                panic!("chromedriver printed no port within 20 s: {INSTALL}");
            }
        };
        let profile = std::env::temp_dir().join(format!("lap-browser-{}", rand::random::<u64>()));
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-features=Translate,OptimizationHints,MediaRouter",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let mut capabilities = serde_json::Map::new();
        capabilities
            .insert("goog:chromeOptions".into(), serde_json::json!({ "binary": "/usr/bin/chromium", "args": args }));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let session = fantoccini::ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await;
        let client = match session {
            Ok(client) => client,
            Err(e) => {
                kill_group(&mut driver);
                panic!("no WebDriver session with headless Chromium ({e}): {INSTALL}");
            }
        };
        Self { client, driver, profile }
    }

    /// Ends the session (Chromium exits), then the driver.
    pub async fn quit(self) {
        let _ = self.client.clone().close().await;
    }

    /// The path and query of the page shown now.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.unwrap();
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// The page's text (`document.body.innerText`).
    pub async fn text(&self) -> String {
        let v = self.client.execute("return document.body ? document.body.innerText : ''", vec![]).await.unwrap();
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Runs `script` in the page (a returned promise is awaited, as WebDriver does).
    pub async fn run(&self, script: &str) -> serde_json::Value {
        self.client.execute(script, vec![]).await.unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// Waits (up to 10 s) until the page's path is `path`.
    pub async fn wait_for_path(&self, path: &str) {
        for _ in 0..200 {
            if self.path().await == path {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the browser never reached {path}: it shows {}", self.path().await);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.driver);
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Kills the driver's process group (the driver and the Chromium it started)
/// and reaps the driver. `--` comes before the negative id: without it, `kill`
/// reads `-<id>` as an option.
fn kill_group(driver: &mut Child) {
    let group = format!("-{}", driver.id());
    let _ = Command::new("kill").args(["-s", "KILL", "--", &group]).status();
    let _ = driver.wait();
}
