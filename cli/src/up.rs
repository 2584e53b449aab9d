//! `devgem up`: every function in one process on the embedded adapters, behind one listener.
//!
//! - One server per data dir: an exclusive lock on `<data dir>/devgem.lock`; a second `up` on the
//!   same dir is refused with the URL of the one running.
//! - `server.json` records the URL so other commands find the server; removed on a clean stop.
//! - First start creates the admin user; its token is printed once and saved in
//!   `<data dir>/admin.token` (mode 0600) for the CLI. `DEVGEM_TOKEN` sets it instead.
//! - Routes: `/health` (every function's probe, the bus backlog and dead letters), `/api/*`,
//!   `/chat` and `/stats` to the api function, everything else to the relay (WebSocket and web
//!   UI); any request for `<service>.localhost` to the deployed app (see [`crate::proxy`]).
//! - The pipeline's subscriptions ([`SUBSCRIPTIONS`]: deployments → analyze, builds and
//!   cloud-builds → build, releases → deploy, control → all three, ...) are attached on start;
//!   revisions that served before are started again, and the janitor runs every minute.
//! - With `DEVGEM_BUS=pubsub` events go through Pub/Sub instead: nothing is subscribed here, and
//!   every function's routes are also served under `/functions/<name>` for Pub/Sub's push
//!   subscriptions (the same [`SUBSCRIPTIONS`], pushing to `<url>/functions/<function><path>`),
//!   behind the OIDC check when `DEVGEM_PUSH_AUDIENCE` is set.
//! - Ctrl-C or SIGTERM stops accepting, finishes in-flight requests and deliveries; pending
//!   messages stay in the bus and are delivered on the next start.

use crate::embedded::Embedded;
use crate::functions::Function;
use anyhow::Context;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use devgem_common::function::{HEALTHZ, correlate};
use devgem_common::identity::Token;
use devgem_common::serve::{SHUTDOWN_GRACE, serve};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tower::ServiceExt;

pub const LOCK_FILE: &str = "devgem.lock";
pub const SERVER_FILE: &str = "server.json";
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

#[derive(Debug, Clone)]
pub struct UpOptions {
    pub data_dir: PathBuf,
    pub host: IpAddr,
    pub port: u16,
    /// `DEVGEM_TOKEN`: the admin token to use instead of a generated one.
    pub preset_token: Option<Token>,
}

/// What `server.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerInfo {
    pub url: String,
    pub pid: u32,
    pub started_at: chrono::DateTime<chrono::Utc>,
}

/// Reads `DEVGEM_TOKEN`, refusing a malformed one rather than ignoring it.
pub fn preset_token() -> anyhow::Result<Option<Token>> {
    match std::env::var("DEVGEM_TOKEN") {
        Ok(raw) if !raw.trim().is_empty() => {
            Ok(Some(Token::parse(&raw).context("DEVGEM_TOKEN must be 16-256 printable characters")?))
        }
        _ => Ok(None),
    }
}

/// Holds the data dir's lock for as long as it lives.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Takes the exclusive lock of a data dir, or says who holds it.
pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<DataDirLock> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
    let path = data_dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(DataDirLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => {
            let running =
                read_server_info(data_dir).map(|s| format!(" at {} (pid {})", s.url, s.pid)).unwrap_or_default();
            anyhow::bail!(
                "another devgem process is already using the data dir {}{running}; stop it first, or pass --data-dir to use another",
                data_dir.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

pub fn read_server_info(data_dir: &Path) -> Option<ServerInfo> {
    let text = std::fs::read_to_string(data_dir.join(SERVER_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The server running on `data_dir`, if one is: `server.json` counts only while another process
/// holds the lock, so a file left by a crash is ignored (and removed).
pub fn running_server(data_dir: &Path) -> Option<ServerInfo> {
    let info = read_server_info(data_dir)?;
    let lock = File::options().write(true).open(data_dir.join(LOCK_FILE)).ok()?;
    match lock.try_lock() {
        Ok(()) => {
            let _ = std::fs::remove_file(data_dir.join(SERVER_FILE));
            None
        }
        Err(_) => Some(info),
    }
}

/// Writes a file readable only by its owner, atomically.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut options = File::options();
        options.create(true).truncate(true).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
    }
    std::fs::rename(tmp, path)
}

/// The whole product's router on the embedded adapters: the "router set" that tests drive.
#[derive(Debug, Clone)]
pub struct App {
    pub embedded: Embedded,
    pub router: Router,
    functions: Vec<(&'static str, Router)>,
    janitor: std::sync::Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

/// The admin token saved on first start, if this data dir has one.
fn read_admin_token(data_dir: &std::path::Path) -> Option<Token> {
    let text = std::fs::read_to_string(data_dir.join(ADMIN_TOKEN_FILE)).ok()?;
    Token::parse(&text).ok()
}

/// Opens the web UI in the user's browser when `devgem up` runs on a terminal (not under a test
/// or a service manager). `DEVGEM_NO_BROWSER=1` turns it off.
fn open_browser(link: &str) {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() || std::env::var_os("DEVGEM_NO_BROWSER").is_some() {
        return;
    }
    let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    let opened = std::process::Command::new(opener)
        .arg(link)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    match opened {
        // Reaped in the background: the opener exits once the browser has the link.
        Ok(mut child) => drop(std::thread::spawn(move || child.wait())),
        Err(_) => tracing::debug!("no browser opener ({opener}); open the Web UI link above"),
    }
}

/// The pipeline's subscriptions: name, topic, function, and the function's push path. On GCP,
/// terraform creates the same ones (`scripts/check-terraform.py` checks it against this list).
pub const SUBSCRIPTIONS: [(&str, devgem_common::events::Topic, &str, &str); 10] = {
    use devgem_common::events::Topic;
    [
        ("chat-turns", Topic::ChatTurns, devgem_chat::NAME, devgem_chat::PUSH_CHAT_TURNS),
        ("analyze-deployments", Topic::Deployments, devgem_analyze::NAME, devgem_analyze::PUSH_DEPLOYMENTS),
        ("build-builds", Topic::Builds, devgem_build::NAME, devgem_build::PUSH_BUILDS),
        ("build-cloud-builds", Topic::CloudBuilds, devgem_build::NAME, devgem_build::PUSH_CLOUD_BUILDS),
        ("deploy-releases", Topic::Releases, devgem_deploy::NAME, devgem_deploy::PUSH_RELEASES),
        ("analyze-control", Topic::Control, devgem_analyze::NAME, devgem_analyze::PUSH_CONTROL),
        ("build-control", Topic::Control, devgem_build::NAME, devgem_build::PUSH_CONTROL),
        ("deploy-control", Topic::Control, devgem_deploy::NAME, devgem_deploy::PUSH_CONTROL),
        ("monitor-log-entries", Topic::LogEntries, devgem_monitor::NAME, devgem_monitor::PUSH_LOG_ENTRIES),
        ("chat-alerts", Topic::Alerts, devgem_chat::NAME, devgem_chat::PUSH_ALERTS),
    ]
};

/// Where `devgem up` serves a function's routes for Pub/Sub's push subscriptions.
pub fn function_prefix(function: &str) -> String {
    format!("/functions/{function}")
}

/// How often `devgem up` runs the janitor.
const JANITOR_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct HealthState {
    functions: Vec<(&'static str, Router)>,
    embedded: Embedded,
}

#[derive(Debug, Serialize)]
struct FunctionHealth {
    ok: bool,
    status: u16,
}

#[derive(Debug, Serialize)]
struct BusHealth {
    ok: bool,
    /// `embedded` or `pubsub`; Pub/Sub's backlog is Pub/Sub's to report, so it is absent then.
    adapter: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    backlog: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_letters: Option<u64>,
}

#[derive(Debug, Serialize)]
struct HealthReport {
    ok: bool,
    functions: BTreeMap<&'static str, FunctionHealth>,
    bus: BusHealth,
}

/// `GET /health`: asks every function's router for its probe, in-process, and the bus for its
/// backlog and dead letters. 200 when everything answers, 503 otherwise.
async fn health(State(state): State<HealthState>) -> Response {
    let probes = state.functions.iter().map(|(name, router)| {
        let router = router.clone();
        async move {
            let request = http::Request::get(HEALTHZ).body(axum::body::Body::empty());
            let status = match request {
                Ok(request) => match tokio::time::timeout(Duration::from_secs(2), router.oneshot(request)).await {
                    Ok(Ok(response)) => response.status().as_u16(),
                    Ok(Err(never)) => match never {},
                    Err(_) => StatusCode::GATEWAY_TIMEOUT.as_u16(),
                },
                Err(_) => StatusCode::INTERNAL_SERVER_ERROR.as_u16(),
            };
            (*name, FunctionHealth { ok: status == 200, status })
        }
    });
    let functions: BTreeMap<_, _> = futures_util::future::join_all(probes).await.into_iter().collect();
    let bus = if state.embedded.pubsub.is_some() {
        BusHealth { ok: true, adapter: "pubsub", backlog: None, dead_letters: None }
    } else {
        match state.embedded.bus.stats().await {
            Ok(stats) => BusHealth {
                ok: true,
                adapter: "embedded",
                backlog: Some(stats.backlog),
                dead_letters: Some(stats.dead_letters),
            },
            Err(e) => {
                tracing::warn!(error = %e, "bus stats unavailable");
                BusHealth { ok: false, adapter: "embedded", backlog: None, dead_letters: None }
            }
        }
    };
    let ok = bus.ok && functions.values().all(|f| f.ok);
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(HealthReport { ok, functions, bus })).into_response()
}

impl App {
    /// Builds every function's router on `embedded` and the one router in front of them.
    pub fn build(embedded: Embedded) -> Self {
        Self::build_with_push_auth(embedded, None)
    }

    /// [`App::build`], with the OIDC check of Pub/Sub's push requests on `/functions/*` (only
    /// served with `DEVGEM_BUS=pubsub`).
    pub fn build_with_push_auth(
        embedded: Embedded,
        push_auth: Option<std::sync::Arc<devgem_infra::gcp::oidc::PushVerifier>>,
    ) -> Self {
        let functions: Vec<(&'static str, Router)> =
            Function::ALL.iter().map(|f| (f.name(), f.router(&embedded))).collect();
        let by_name =
            |name: &str| functions.iter().find(|(n, _)| *n == name).map(|(_, r)| r.clone()).unwrap_or_default();
        let api = by_name(devgem_api::NAME);
        let relay = by_name(devgem_relay::NAME);
        // `/health` here is the aggregate of every function; the api function's own `/health`
        // (for `devgem serve api`) is shadowed by it. The api owns `/api/*`, `/chat`, `/stats`
        // (and answers `/healthz`); everything else goes to the relay, which serves the
        // WebSocket and the web UI, in place of the api's JSON 404. Requests for
        // `<service>.localhost` go to the deployed app instead.
        let mut router = Router::new()
            .route("/health", get(health))
            .with_state(HealthState { functions: functions.clone(), embedded: embedded.clone() });
        if embedded.pubsub.is_some() {
            for (name, function) in &functions {
                let function = match &push_auth {
                    Some(verifier) => {
                        function.clone().layer(devgem_infra::gcp::oidc::push_auth_layer(verifier.clone()))
                    }
                    None => function.clone(),
                };
                router = router.nest(&function_prefix(name), function);
            }
        }
        let router = router
            .fallback_service(api.fallback_service(relay))
            .layer(axum::middleware::from_fn_with_state(embedded.runtime.clone(), crate::proxy::services))
            .layer(axum::middleware::from_fn(correlate));
        Self { embedded, router, functions, janitor: Default::default() }
    }

    fn function(&self, name: &str) -> Router {
        self.functions.iter().find(|(n, _)| *n == name).map(|(_, r)| r.clone()).unwrap_or_default()
    }

    /// Starts the pipeline on the listener's `port`: attaches the subscriptions (their pending
    /// messages are delivered), and starts the revisions that serve services again.
    pub async fn start(&self, port: u16) -> anyhow::Result<()> {
        use devgem_infra::local::SubscriptionConfig;
        self.embedded.runtime.set_public_port(port);
        // Builds that a killed DevGem left behind are reported failed before deliveries resume.
        for build in self.embedded.builder.recover().await {
            tracing::warn!(%build, "a build was interrupted by a restart and reported failed");
        }
        if self.embedded.pubsub.is_some() {
            tracing::info!(
                "events go through Pub/Sub: its push subscriptions deliver to /functions/<function>/push/..."
            );
        } else {
            for (name, topic, function, path) in SUBSCRIPTIONS {
                self.embedded
                    .bus
                    .subscribe(SubscriptionConfig::new(name, topic, path), self.function(function))
                    .await
                    .with_context(|| format!("cannot attach subscription {name}"))?;
            }
        }
        for (revision, error) in self.embedded.runtime.restore().await {
            tracing::warn!(%revision, %error, "a serving revision did not start again");
        }
        let janitor = crate::functions::janitor_state(&self.embedded);
        let task = tokio::spawn(async move {
            // The first sweep waits a period: at start, redeliveries resume the pipeline first.
            let mut every = tokio::time::interval_at(tokio::time::Instant::now() + JANITOR_EVERY, JANITOR_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                match devgem_janitor::sweep::sweep(&janitor).await {
                    Ok(report) if report != Default::default() => tracing::info!(?report, "janitor"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "the janitor's sweep failed"),
                }
            }
        });
        if let Ok(mut slot) = self.janitor.lock() {
            *slot = Some(task);
        }
        Ok(())
    }

    /// Stops deliveries and the deployed apps.
    pub async fn stop(&self) {
        if let Some(task) = self.janitor.lock().ok().and_then(|mut slot| slot.take()) {
            task.abort();
        }
        self.embedded.shutdown_bus(Duration::from_secs(5)).await;
        self.embedded.runtime.shutdown().await;
    }
}

/// Runs `devgem up` until `shutdown` resolves.
pub async fn run(options: UpOptions, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let _lock = lock_data_dir(&options.data_dir)?;
    let embedded = Embedded::open(&options.data_dir, options.host.is_loopback())?
        .with_data_plane_from_env()
        .await?
        .with_control_plane_from_env(crate::embedded::ControlPorts::ALL)
        .await?
        .with_brain_from_env()
        .await?
        .with_monitor_from_env()?;
    let new_admin_token = embedded.identity.ensure_admin(options.preset_token.clone()).await?;
    if let Some(token) = &new_admin_token {
        write_private(&options.data_dir.join(ADMIN_TOKEN_FILE), token.expose().as_bytes())
            .context("cannot save the admin token")?;
    }

    let addr = SocketAddr::new(options.host, options.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}; pick another port with --port"))?;
    let local = listener.local_addr()?;
    let url = format!("http://{local}");
    let push_auth = crate::serve::push_verifier(|name| std::env::var(name).ok())?;
    let app = App::build_with_push_auth(embedded, push_auth);
    app.start(local.port()).await?;
    let info = ServerInfo { url: url.clone(), pid: std::process::id(), started_at: chrono::Utc::now() };
    write_private(&options.data_dir.join(SERVER_FILE), &serde_json::to_vec_pretty(&info)?)
        .context("cannot write server.json")?;

    println!("DevGem is running at {url}  (data dir: {})", options.data_dir.display());
    match &new_admin_token {
        Some(token) if options.preset_token.is_none() => {
            println!("Admin token (shown once; saved in {}):", options.data_dir.join(ADMIN_TOKEN_FILE).display());
            println!("  {}", token.expose());
        }
        _ => println!("Admin token: see {} or DEVGEM_TOKEN", options.data_dir.join(ADMIN_TOKEN_FILE).display()),
    }
    println!("Health: {url}/health   API: {url}/api   Stop: Ctrl-C");
    // The token travels in the fragment, which a browser never sends to a server.
    let token = new_admin_token.clone().or_else(|| read_admin_token(&options.data_dir));
    match &token {
        Some(token) => {
            let link = format!("{url}/#token={}", token.expose());
            if new_admin_token.is_some() {
                println!("Web UI: {link}");
            } else {
                println!("Web UI: {url}/  (it asks for the token; see {})", ADMIN_TOKEN_FILE);
            }
            open_browser(&link);
        }
        None => println!("Web UI: {url}/"),
    }

    let served = serve(listener, app.router.clone(), shutdown, SHUTDOWN_GRACE).await;
    app.stop().await;
    let _ = std::fs::remove_file(options.data_dir.join(SERVER_FILE));
    served.context("server failed")?;
    println!("DevGem stopped.");
    Ok(())
}
