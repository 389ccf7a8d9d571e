//! A small WebDriver client for the dashboard test: Debian's headless Chromium driven by
//! Debian's chromedriver over the W3C WebDriver HTTP protocol, spoken directly with reqwest.
//!
//! Nothing is downloaded: the browser and the driver are the `chromium` and `chromium-driver`
//! packages (`make deps` and `.ci/run` install them). Without them the test fails naming the
//! package to install. chromedriver runs in a process group of its own, and dropping the
//! [`Browser`] kills that whole group, so no Chromium outlives a failed test.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use switchboard_tests::{ChildProcess, free_port, wait_for, wait_until};

/// The browser and its driver, as Debian installs them.
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "chromedriver";
/// The key under which WebDriver names an element.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long chromedriver and a new browser session may take to start.
const START_DEADLINE: Duration = Duration::from_secs(30);

fn executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// chromedriver from PATH, or a clear failure naming the Debian package.
fn chromedriver() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(CHROMEDRIVER))
        .find(|candidate| executable(candidate))
        .ok_or_else(|| {
            anyhow!(
                "chromedriver not found on PATH: install Debian's chromium-driver package \
                 (`apt-get install -y chromium chromium-driver`; make deps does)"
            )
        })
}

/// A headless Chromium session. Killed, with its driver, on drop.
pub struct Browser {
    http: reqwest::Client,
    session_url: String,
    driver: ChildProcess,
    // Dropped after the browser is gone: Chromium writes its profile until it exits.
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a headless Chromium session with
    /// a fresh profile.
    pub async fn start() -> Result<Self> {
        if !executable(Path::new(CHROMIUM)) {
            bail!(
                "{CHROMIUM} not found: install Debian's chromium package \
                 (`apt-get install -y chromium chromium-driver`; make deps does)"
            );
        }
        let driver_path = chromedriver()?;
        let port = free_port()?;
        let mut command = Command::new(&driver_path);
        command
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(std::process::Stdio::null())
            // A group of its own, so that drop can kill the browser processes it starts too.
            .process_group(0);
        let driver = ChildProcess::spawn("chromedriver", command)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .context("building the WebDriver HTTP client")?;
        let base = format!("http://127.0.0.1:{port}");
        wait_until(
            START_DEADLINE,
            "chromedriver to answer /status",
            async || {
                if let Some(status) = driver.exit_status()? {
                    bail!("chromedriver exited ({status}):\n{}", driver.log_report());
                }
                let status: Value = http
                    .get(format!("{base}/status"))
                    .send()
                    .await?
                    .json()
                    .await?;
                Ok(status["value"]["ready"] == true)
            },
        )
        .await?;
        let profile = tempfile::Builder::new()
            .prefix("sbtest-chromium-")
            .tempdir()
            .context("creating a Chromium profile dir")?;
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1300,1800".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let created = command_result(
            http.post(format!("{base}/session"))
                .json(&capabilities)
                .send()
                .await,
            "new session",
        )
        .await
        .map_err(|error| anyhow!("{error:#}\n{}", driver.log_report()))?;
        let session = created["sessionId"]
            .as_str()
            .context("chromedriver's new session has no sessionId")?
            .to_string();
        Ok(Self {
            http,
            session_url: format!("{base}/session/{session}"),
            driver,
            _profile: profile,
        })
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Result<Value> {
        let url = format!("{}{path}", self.session_url);
        let request = self.http.request(method.clone(), &url);
        // GET and DELETE carry no body; chromedriver refuses a JSON `null` as parameters.
        let request = if body.is_null() {
            request
        } else {
            request.json(&body)
        };
        command_result(request.send().await, path).await
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.command(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await
            .map(drop)
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// The text of the first element `css` selects, or an error naming the selector.
    pub async fn text(&self, css: &str) -> Result<String> {
        let value = self
            .eval(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                vec![json!(css)],
            )
            .await?;
        value
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no element matches {css:?}"))
    }

    /// Waits until the text of `css` satisfies `check`; returns it.
    pub async fn wait_text(
        &self,
        css: &str,
        what: &str,
        deadline: Duration,
        check: impl Fn(&str) -> bool,
    ) -> Result<String> {
        wait_for(deadline, what, async || {
            let text = self.text(css).await?;
            if check(&text) {
                Ok(text)
            } else {
                bail!("{css} shows {text:?}")
            }
        })
        .await
    }

    async fn element(&self, css: &str) -> Result<String> {
        let found = self
            .command(
                reqwest::Method::POST,
                "/element",
                json!({ "using": "css selector", "value": css }),
            )
            .await
            .with_context(|| format!("finding {css:?}"))?;
        found[ELEMENT_KEY]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no element id for {css:?}: {found}"))
    }

    /// A real click, as a person would make it: the element must be visible and enabled.
    pub async fn click(&self, css: &str) -> Result<()> {
        let element = self.element(css).await?;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            json!({}),
        )
        .await
        .with_context(|| format!("clicking {css:?}"))
        .map(drop)
    }

    /// Replaces the value of an input by typing `text` into it.
    pub async fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let element = self.element(css).await?;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/clear"),
            json!({}),
        )
        .await?;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await
        .with_context(|| format!("typing into {css:?}"))
        .map(drop)
    }

    /// Saves a PNG of the page, for a person to look at when a test fails.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let encoded = self
            .command(reqwest::Method::GET, "/screenshot", Value::Null)
            .await?;
        let encoded = encoded.as_str().context("the screenshot is not a string")?;
        let png = base64_decode(encoded).context("decoding the screenshot")?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Ends the session, which closes Chromium; drop kills whatever is left.
    pub async fn quit(self) -> Result<()> {
        self.command(reqwest::Method::DELETE, "", Value::Null)
            .await
            .map(drop)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver leads its group; Chromium and its helpers are in it unless they left.
        if let Ok(pid) = i32::try_from(self.driver.pid()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// The `value` of a WebDriver answer, or its error and message.
async fn command_result(response: reqwest::Result<reqwest::Response>, what: &str) -> Result<Value> {
    let response = response.with_context(|| format!("WebDriver {what}"))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .with_context(|| format!("WebDriver {what}: the answer is not JSON"))?;
    let value = body.get("value").cloned().unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "WebDriver {what} failed ({status}): {} {}",
            value["error"].as_str().unwrap_or("?"),
            value["message"].as_str().unwrap_or_default()
        );
    }
    Ok(value)
}

/// Standard base64 (RFC 4648, with padding), as WebDriver sends screenshots.
fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in text.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            other => bail!("byte {other:#x} is not base64"),
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Ok(out)
}
