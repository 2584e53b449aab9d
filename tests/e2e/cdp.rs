//! A minimal Chrome DevTools Protocol client: Debian's Chromium, headless, driven over its
//! WebSocket with the handful of commands the browser test needs (navigate, evaluate, type,
//! viewport, screenshot, reload). The browser runs in its own process group and is killed with
//! it when the [`Browser`] is dropped.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// Where Debian's `chromium` package puts its launcher.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A failure of the browser or of a command, with what it was doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdpError(pub String);

impl std::fmt::Display for CdpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CdpError {}

pub type Result<T> = std::result::Result<T, CdpError>;

fn err(message: impl Into<String>) -> CdpError {
    CdpError(message.into())
}

/// A headless Chromium with remote debugging on a free port.
#[derive(Debug)]
pub struct Browser {
    child: Child,
    http: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium, or says how to install it when it is missing.
    pub fn launch() -> Result<Self> {
        if !Path::new(CHROMIUM).exists() {
            return Err(err(format!(
                "Chromium is not installed ({CHROMIUM} is missing): run ./scripts/install-tools.sh, which installs \
                 Debian's chromium package"
            )));
        }
        let profile = tempfile::tempdir().map_err(|e| err(format!("a profile directory: {e}")))?;
        let mut child = Command::new(CHROMIUM)
            .args([
                "--headless=new",
                // Root, in a container: Chromium's sandbox needs user namespaces it may not have.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--mute-audio",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so the renderers and helpers die with it.
            .process_group(0)
            .spawn()
            .map_err(|e| err(format!("starting {CHROMIUM}: {e}")))?;
        let stderr = child.stderr.take().ok_or_else(|| err("no stderr from chromium"))?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        // Reads stderr for the DevTools address, then keeps draining it so Chromium never blocks.
        std::thread::spawn(move || {
            let verbose = std::env::var_os("TEST_LOG").is_some();
            for line in BufReader::new(stderr).lines().map_while(std::result::Result::ok) {
                if let Some(at) = line.find("ws://") {
                    let _ = tx.send(line[at..].trim().to_owned());
                }
                if verbose {
                    eprintln!("[chromium] {line}");
                }
            }
        });
        let mut browser = Self { child, http: String::new(), _profile: profile };
        let ws = rx.recv_timeout(Duration::from_secs(30)).map_err(|_| {
            let status = browser.child.try_wait().ok().flatten();
            err(format!("Chromium did not print its DevTools address within 30 s (exit status: {status:?})"))
        })?;
        // ws://127.0.0.1:PORT/devtools/browser/ID -> http://127.0.0.1:PORT
        let host = ws
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| err(format!("an unexpected DevTools address: {ws}")))?;
        browser.http = format!("http://{host}");
        Ok(browser)
    }

    /// Attaches to the page Chromium opened at start.
    pub async fn page(&self) -> Result<Page> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let targets: Value = reqwest::get(format!("{}/json/list", self.http))
                .await
                .map_err(|e| err(format!("GET /json/list: {e}")))?
                .json()
                .await
                .map_err(|e| err(format!("/json/list is not JSON: {e}")))?;
            let page = targets
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str());
            if let Some(url) = page {
                return Page::connect(url).await;
            }
            if Instant::now() > deadline {
                return Err(err(format!("no page target in {targets}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole process group: the browser, its zygotes, renderers and helpers. (Not with
        // `kill -KILL -<pid>`: procps-ng 4.0.2 reads `-19762` as `-1`, which is every process.)
        if let Some(group) = i32::try_from(self.child.id()).ok().and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value>>>>>;

/// One page (tab) of the browser, over its own DevTools WebSocket.
#[derive(Debug)]
pub struct Page {
    outgoing: mpsc::UnboundedSender<Message>,
    pending: Pending,
    next_id: AtomicU64,
    console: Arc<Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Page {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Page {
    async fn connect(url: &str) -> Result<Self> {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| err(format!("connecting to the page at {url}: {e}")))?;
        let (mut sink, mut stream) = socket.split();
        let (outgoing, mut queue) = mpsc::unbounded_channel::<Message>();
        let pending: Pending = Arc::default();
        let console: Arc<Mutex<Vec<String>>> = Arc::default();
        tokio::spawn(async move {
            while let Some(message) = queue.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
        });
        let reader = {
            let pending = pending.clone();
            let console = console.clone();
            tokio::spawn(async move {
                while let Some(Ok(message)) = stream.next().await {
                    let Message::Text(text) = message else { continue };
                    let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
                    if let Some(id) = frame["id"].as_u64() {
                        let answer = match frame.get("error") {
                            Some(error) => Err(err(format!("{error}"))),
                            None => Ok(frame["result"].clone()),
                        };
                        if let Some(waiter) = pending.lock().ok().and_then(|mut p| p.remove(&id)) {
                            let _ = waiter.send(answer);
                        }
                    } else if let Some(line) = console_line(&frame)
                        && let Ok(mut lines) = console.lock()
                    {
                        lines.push(line);
                    }
                }
                // The socket closed: every command still waiting fails instead of hanging.
                if let Ok(mut waiting) = pending.lock() {
                    for (_, waiter) in waiting.drain() {
                        let _ = waiter.send(Err(err("the page's DevTools socket closed")));
                    }
                }
            })
        };
        let page = Self { outgoing, pending, next_id: AtomicU64::new(1), console, reader };
        page.call("Page.enable", json!({})).await?;
        page.call("Runtime.enable", json!({})).await?;
        page.call("Log.enable", json!({})).await?;
        Ok(page)
    }

    /// Sends one command and waits for its result.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().map_err(|_| err("poisoned"))?.insert(id, tx);
        let frame = json!({ "id": id, "method": method, "params": params });
        self.outgoing.send(Message::text(frame.to_string())).map_err(|_| err("the page's DevTools socket closed"))?;
        match tokio::time::timeout(Duration::from_secs(60), rx).await {
            Ok(Ok(answer)) => answer.map_err(|e| err(format!("{method}: {e}"))),
            Ok(Err(_)) => Err(err(format!("{method}: no answer (socket closed)"))),
            Err(_) => Err(err(format!("{method}: no answer within 60 s"))),
        }
    }

    /// Evaluates `expression` (awaiting it when it is a promise) and returns its value as JSON.
    pub async fn eval(&self, expression: &str) -> Result<Value> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true, "userGesture": true }),
            )
            .await?;
        if let Some(details) = result.get("exceptionDetails") {
            let text = details["exception"]["description"].as_str().or(details["text"].as_str()).unwrap_or("exception");
            return Err(err(format!("{text} (evaluating {expression})")));
        }
        Ok(result["result"]["value"].clone())
    }

    /// Polls `expression` until it is truthy and returns that value; fails after `limit` with
    /// `what` and the last value seen.
    pub async fn wait_for(&self, what: &str, expression: &str, limit: Duration) -> Result<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let last = match self.eval(expression).await {
                Ok(value) if truthy(&value) => return Ok(value),
                Ok(value) => value,
                // A navigation may destroy the context between two polls.
                Err(e) => Value::String(e.0),
            };
            if Instant::now() > deadline {
                return Err(err(format!("timed out after {limit:?} waiting for {what}; last value: {last}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens `url` and waits until the document has loaded.
    pub async fn navigate(&self, url: &str) -> Result<()> {
        let result = self.call("Page.navigate", json!({ "url": url })).await?;
        if let Some(text) = result["errorText"].as_str() {
            return Err(err(format!("navigating to {url}: {text}")));
        }
        self.wait_loaded().await
    }

    /// Reloads the page and waits until the new document has loaded.
    pub async fn reload(&self) -> Result<()> {
        self.eval("window.__cdpOldDocument = true").await?;
        self.call("Page.reload", json!({ "ignoreCache": true })).await?;
        self.wait_loaded().await
    }

    async fn wait_loaded(&self) -> Result<()> {
        self.wait_for(
            "the document to load",
            "!window.__cdpOldDocument && document.readyState === 'complete'",
            Duration::from_secs(30),
        )
        .await
        .map(|_| ())
    }

    /// Types `text` into the focused element, as an IME would commit it.
    pub async fn insert_text(&self, text: &str) -> Result<()> {
        self.call("Input.insertText", json!({ "text": text })).await.map(|_| ())
    }

    /// Presses and releases Enter.
    pub async fn press_enter(&self) -> Result<()> {
        let key = json!({ "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13 });
        let mut down = key.clone();
        down["type"] = json!("keyDown");
        down["text"] = json!("\r");
        let mut up = key;
        up["type"] = json!("keyUp");
        self.call("Input.dispatchKeyEvent", down).await?;
        self.call("Input.dispatchKeyEvent", up).await.map(|_| ())
    }

    /// Sets the viewport: `mobile` also means touch and the mobile meta-viewport rules.
    pub async fn set_viewport(&self, width: u32, height: u32, scale: f64, mobile: bool) -> Result<()> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile }),
        )
        .await?;
        self.call("Emulation.setTouchEmulationEnabled", json!({ "enabled": mobile })).await.map(|_| ())
    }

    /// Saves a PNG of the viewport at `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        use base64::Engine as _;
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" })).await?;
        let data = shot["data"].as_str().ok_or_else(|| err("no data in the screenshot"))?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| err(format!("the screenshot is not base64: {e}")))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
        }
        std::fs::write(path, png).map_err(|e| err(format!("writing {}: {e}", path.display())))
    }

    /// Console messages, uncaught exceptions and browser log entries (CSP refusals among them).
    pub fn console(&self) -> Vec<String> {
        self.console.lock().map(|lines| lines.clone()).unwrap_or_default()
    }
}

fn console_line(frame: &Value) -> Option<String> {
    let params = &frame["params"];
    match frame["method"].as_str()? {
        "Runtime.consoleAPICalled" => {
            let args: Vec<String> = params["args"]
                .as_array()?
                .iter()
                .map(|a| a["value"].as_str().map(str::to_owned).unwrap_or_else(|| a["description"].to_string()))
                .collect();
            Some(format!("console.{}: {}", params["type"].as_str().unwrap_or("log"), args.join(" ")))
        }
        "Runtime.exceptionThrown" => {
            let details = &params["exceptionDetails"];
            let text = details["exception"]["description"].as_str().or(details["text"].as_str()).unwrap_or("exception");
            Some(format!("exception: {text}"))
        }
        "Log.entryAdded" => {
            let entry = &params["entry"];
            Some(format!("log.{}: {}", entry["level"].as_str().unwrap_or("info"), entry["text"].as_str().unwrap_or("")))
        }
        _ => None,
    }
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}
