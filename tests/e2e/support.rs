//! Test harness: the `devgem` binary as a child process, and the router set in-process.

use devgem_cli::embedded::Embedded;
use devgem_cli::up::{App, ServerInfo};
use devgem_common::serve::serve;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `devgem` binary of this workspace, built on first use if `cargo test` did not build it.
pub fn devgem_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/e2e-<hash> -> target/<profile>/devgem
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
        let bin = profile_dir.join("devgem");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "devgem-cli", "--bin", "devgem"])
            .current_dir(workspace)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the devgem binary failed");
        assert!(bin.exists(), "no devgem binary at {}", bin.display());
        bin
    })
    .clone()
}

pub fn log_env() -> &'static str {
    if std::env::var_os("TEST_LOG").is_some() { "info" } else { "warn" }
}

/// A `devgem` child process on its own data dir.
pub struct DevgemProcess {
    pub child: Child,
    pub data_dir: PathBuf,
}

impl DevgemProcess {
    /// Starts `devgem <args>` with `--data-dir`.
    pub fn start(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(devgem_bin());
        command
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", log_env())
            .env_remove("DEVGEM_TOKEN")
            .env_remove("DEVGEM_SERVER")
            .env_remove("K_SERVICE")
            // The secrets key outside the data dir, and not in the home of whoever runs the tests.
            .env("DEVGEM_SECRETS_KEY_FILE", data_dir.with_extension("secrets.key"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::piped() });
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("spawn devgem");
        Self { child, data_dir: data_dir.to_owned() }
    }

    /// Waits until `server.json` names a URL that answers `/health`.
    pub async fn wait_ready(&mut self) -> ServerInfo {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("poll child") {
                panic!("devgem exited early with {status}");
            }
            if let Some(info) = devgem_cli::up::read_server_info(&self.data_dir)
                && reqwest::get(format!("{}/health", info.url)).await.is_ok()
            {
                return info;
            }
            assert!(Instant::now() < deadline, "devgem did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, signal: &str) {
        let status =
            Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit, failing the test after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll child") {
                return status;
            }
            assert!(Instant::now() < deadline, "devgem did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stdout(&mut self) -> String {
        use std::io::Read;
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        }
        out
    }
}

impl Drop for DevgemProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The whole router set of `devgem up`, in-process on a free port, on a fresh data dir.
pub struct TestApp {
    pub url: String,
    pub port: u16,
    pub embedded: Embedded,
    pub admin_token: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with_hosts(&[]).await
}

/// The router set, with git served from `allow_hosts` exempt from the address guard.
pub async fn spawn_app_with_hosts(allow_hosts: &[&str]) -> TestApp {
    spawn(allow_hosts, &[]).await
}

/// The router set with the chat's LLM configured from `brain_settings` (as `DEVGEM_BRAIN` and
/// its variables would be in the environment), built the way `devgem up` builds it.
pub async fn spawn_app_with_brain(brain_settings: &[(&str, &str)]) -> TestApp {
    spawn(&[], brain_settings).await
}

async fn spawn(allow_hosts: &[&str], brain_settings: &[(&str, &str)]) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = devgem_infra::source::SourcePolicy {
        allow_local_paths: true,
        allow_hosts: allow_hosts.iter().map(|h| (*h).to_owned()).collect(),
    };
    // A short startup timeout: tests of apps that never listen on $PORT need not wait a minute.
    let options = devgem_cli::embedded::EmbeddedOptions {
        policy,
        startup_timeout: Duration::from_secs(5),
        secrets_key: dir.path().with_extension("secrets.key"),
    };
    let mut embedded = Embedded::open_with(dir.path(), options).expect("open embedded adapters");
    if !brain_settings.is_empty() {
        let lookup = |name: &str| brain_settings.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned());
        let config = devgem_infra::brain::BrainConfig::from_env(lookup).expect("brain settings");
        let notices: devgem_infra::brain::OnNotice = std::sync::Arc::new(devgem_chat::turn::notice);
        embedded.brain =
            devgem_infra::brain::build(&config, embedded.secrets.as_ref(), Some(notices)).await.expect("brain");
    }
    let admin = embedded.identity.ensure_admin(None).await.expect("admin").expect("new admin");
    let app = App::build(embedded.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let url = format!("http://127.0.0.1:{port}");
    app.start(port).await.expect("start the pipeline");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        listener,
        app.router,
        async {
            let _ = rx.await;
        },
        Duration::from_secs(2),
    ));
    TestApp { url, port, embedded, admin_token: admin.expose().to_owned(), shutdown: Some(tx), _dir: dir }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

// Conversations over the API, for the chat's tests.

/// A server and the admin token, in-process or a `devgem up` process.
pub struct Conn {
    pub url: String,
    pub token: String,
}

impl From<&TestApp> for Conn {
    fn from(app: &TestApp) -> Self {
        Self { url: app.url.clone(), token: app.admin_token.clone() }
    }
}

impl From<&Conn> for Conn {
    fn from(conn: &Conn) -> Self {
        Self { url: conn.url.clone(), token: conn.token.clone() }
    }
}

/// A request as the admin; the JSON answer (`null` when there is none).
pub async fn api(app: impl Into<Conn>, method: &str, path: &str, body: Option<Value>) -> Value {
    let app = app.into();
    let mut request = reqwest::Client::new()
        .request(method.parse().expect("method"), format!("{}{path}", app.url))
        .bearer_auth(&app.token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    response.json().await.unwrap_or(Value::Null)
}

/// Sends a chat message.
pub async fn say(app: impl Into<Conn>, session: &str, text: &str) {
    api(app, "POST", &format!("/api/sessions/{session}/messages"), Some(json!({ "text": text }))).await;
}

/// The session's events.
pub async fn events(app: impl Into<Conn>, session: &str) -> Vec<Value> {
    api(app, "GET", &format!("/api/sessions/{session}/events?limit=1000"), None)
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits for the `n`th assistant message of the session (1-based).
pub async fn answer(app: impl Into<Conn>, session: &str, n: usize) -> String {
    let app = app.into();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answers: Vec<String> = events(&app, session)
            .await
            .iter()
            .filter(|e| e["type"] == "message" && e["data"]["role"] == "assistant")
            .filter_map(|e| e["data"]["text"].as_str().map(str::to_owned))
            .collect();
        if let Some(text) = answers.get(n - 1) {
            return text.clone();
        }
        assert!(Instant::now() < deadline, "no answer {n} in {session}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
