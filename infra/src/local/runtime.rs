//! The Runtime port on the embedded default: each revision is a locally built image started as a
//! child process (in the builder's sandbox, on a loopback port of its own), and `devgem up`'s
//! listener routes `http://<service>.localhost:<port>/` to the revision that serves the service.
//!
//! Like Cloud Run: a revision must pass a TCP startup probe before it exists; traffic moves only
//! when asked; a serving revision that exits is started again with backoff; every line it writes
//! becomes a LogEntry on `log-entries` (stdout DEFAULT, stderr ERROR) and is kept for `logs`.
//! Revisions and routes are files under `<data>/runtime`, so a restarted `devgem up` serves again.
//!
//! ```text
//! <data dir>/runtime/revisions/<name>/revision.json   what to start (image, env, port)
//! <data dir>/runtime/revisions/<name>/upper/          the revision's writable layer
//! <data dir>/runtime/revisions/<name>/log.jsonl       its LogEntries
//! <data dir>/runtime/routes.json                      which revision serves each service
//! ```

use super::builder::{Executor, LocalImage, kill_group};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use devgem_common::clock::Clock;
use devgem_common::events::Topic;
use devgem_common::events::log_entry::{LogEntry, MonitoredResource, Severity};
use devgem_common::ids::{ServiceName, UserId};
use devgem_common::ports::bus::{Bus, OutboundMessage};
use devgem_common::ports::runtime::{EnvValue, RevisionInfo, RevisionSpec, Runtime, RuntimeError};
use devgem_common::ports::secrets::{SecretRef, Secrets};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{Mutex, watch};

/// The port Cloud Run gives a container; an app that listens on another fixed port keeps it.
const CLOUD_RUN_PORT: u16 = 8080;
/// How many log entries of a revision are kept in memory for `logs`.
const LOG_MEMORY: usize = 2000;

/// A revision as stored: enough to start it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RevisionRecord {
    name: String,
    owner: UserId,
    service: ServiceName,
    build_id: String,
    /// Env values as given: secrets only as references, resolved when the process starts.
    env: Vec<(String, StoredEnv)>,
    /// The port the app listens on, on loopback.
    port: u16,
    created_at: DateTime<Utc>,
}

/// An env value as a revision record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum StoredEnv {
    Plain { value: String },
    Secret { reference: SecretRef },
}

/// A revision's process, while it runs.
#[derive(Debug)]
struct Running {
    stop: Arc<watch::Sender<bool>>,
    port: u16,
}

/// Stops a revision that is still starting when the caller stops waiting for it (an abort drops
/// the deploy handler's future): the process and, for a new revision, its directory go away.
struct StartGuard {
    stop: Arc<watch::Sender<bool>>,
    dir: Option<PathBuf>,
    armed: bool,
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if self.armed {
            self.stop.send_replace(true);
            if let Some(dir) = &self.dir {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

#[derive(Debug, Default)]
struct State {
    running: HashMap<String, Running>,
    /// Host label (`<service>` or `<service>--<owner>`) → serving revision.
    routes: BTreeMap<String, String>,
    logs: HashMap<String, Arc<std::sync::Mutex<VecDeque<LogEntry>>>>,
}

/// Child processes behind the `devgem up` proxy.
#[derive(Debug, Clone)]
pub struct LocalRuntime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    executor: Arc<Executor>,
    secrets: Arc<dyn Secrets>,
    bus: Arc<dyn Bus>,
    clock: Arc<dyn Clock>,
    startup_timeout: Duration,
    /// The port of the `devgem up` listener that proxies `<label>.localhost` (0 until it binds).
    public_port: std::sync::atomic::AtomicU16,
    state: Mutex<State>,
}

/// The host label a service answers on: `http://<label>.localhost:<port>/`. The administrator's
/// services (the usual single user of `devgem up`) get the bare service name.
pub fn host_label(owner: &UserId, service: &ServiceName) -> String {
    if *owner == UserId::admin() { service.to_string() } else { format!("{service}--{owner}") }
}

/// The build id in a local image reference (`devgem.local/<owner>/<service>:<build id>`).
fn build_id_of(image: &str) -> Option<&str> {
    image
        .strip_prefix("devgem.local/")?
        .rsplit_once(':')
        .map(|(_, id)| id)
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

fn io_error(path: &Path, e: std::io::Error) -> RuntimeError {
    RuntimeError::Unavailable(format!("{}: {e}", path.display()))
}

impl LocalRuntime {
    pub fn open(
        root: PathBuf,
        executor: Arc<Executor>,
        secrets: Arc<dyn Secrets>,
        bus: Arc<dyn Bus>,
        clock: Arc<dyn Clock>,
        startup_timeout: Duration,
    ) -> Result<Self, RuntimeError> {
        std::fs::create_dir_all(root.join("revisions")).map_err(|e| io_error(&root, e))?;
        let routes: BTreeMap<String, String> = std::fs::read(root.join("routes.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let state = State { routes, ..State::default() };
        let public_port = std::sync::atomic::AtomicU16::new(0);
        let inner =
            Inner { root, executor, secrets, bus, clock, startup_timeout, public_port, state: Mutex::new(state) };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Tells the runtime the port `devgem up` listens on, for service URLs.
    pub fn set_public_port(&self, port: u16) {
        self.inner.public_port.store(port, std::sync::atomic::Ordering::Relaxed);
    }

    /// Starts every revision that serves a service (after a restart of `devgem up`). Returns the
    /// revisions that could not start, with why.
    pub async fn restore(&self) -> Vec<(String, RuntimeError)> {
        let serving: Vec<String> = self.inner.state.lock().await.routes.values().cloned().collect();
        let mut failed = Vec::new();
        for revision in serving {
            if let Err(e) = self.ensure_running(&revision).await {
                failed.push((revision, e));
            }
        }
        failed
    }

    /// The loopback port that serves `label` (the proxy's lookup), starting its revision if needed.
    pub async fn port_for(&self, label: &str) -> Option<u16> {
        let revision = self.inner.state.lock().await.routes.get(label).cloned()?;
        self.ensure_running(&revision).await.ok()
    }

    /// Stops every revision's process and waits until they have exited (the revisions stay;
    /// `restore` starts them again).
    pub async fn shutdown(&self) {
        let stops: Vec<_> = self.inner.state.lock().await.running.drain().map(|(_, r)| r.stop).collect();
        futures_util::future::join_all(stops.into_iter().map(stop_and_wait)).await;
    }

    fn revision_dir(&self, name: &str) -> PathBuf {
        self.inner.root.join("revisions").join(name)
    }

    fn load(&self, name: &str) -> Result<RevisionRecord, RuntimeError> {
        let path = self.revision_dir(name).join("revision.json");
        let bytes = std::fs::read(&path).map_err(|_| RuntimeError::NotFound(format!("revision {name}")))?;
        serde_json::from_slice(&bytes).map_err(|e| RuntimeError::Unavailable(format!("{}: {e}", path.display())))
    }

    async fn save_routes(&self, routes: &BTreeMap<String, String>) -> Result<(), RuntimeError> {
        let path = self.inner.root.join("routes.json");
        let tmp = self.inner.root.join("routes.json.tmp");
        let json = serde_json::to_vec_pretty(routes).map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
        std::fs::write(&tmp, json).map_err(|e| io_error(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_error(&path, e))
    }

    /// Starts `name` unless it runs; waits for its startup probe. Returns its port.
    async fn ensure_running(&self, name: &str) -> Result<u16, RuntimeError> {
        if let Some(running) = self.inner.state.lock().await.running.get(name) {
            return Ok(running.port);
        }
        let record = self.load(name)?;
        self.start(&record, None).await
    }

    /// Starts `record`'s process and waits for its startup probe. `new_dir`: the revision's
    /// directory, removed if the caller stops waiting (a revision being created).
    async fn start(&self, record: &RevisionRecord, new_dir: Option<PathBuf>) -> Result<u16, RuntimeError> {
        let image = LocalImage::load(&self.inner.executor.build_dir(&record.build_id))
            .map_err(|_| RuntimeError::NotFound(format!("the image of build {}", record.build_id)))?;
        let (stop, stopped) = watch::channel(false);
        let stop = Arc::new(stop);
        let logs = {
            let mut state = self.inner.state.lock().await;
            if let Some(running) = state.running.get(&record.name) {
                return Ok(running.port);
            }
            state.running.insert(record.name.clone(), Running { stop: stop.clone(), port: record.port });
            state.logs.entry(record.name.clone()).or_default().clone()
        };
        let mut guard = StartGuard { stop, dir: new_dir, armed: true };
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(supervise(self.clone(), record.clone(), image, logs, guard.stop.clone(), stopped, ready_tx));
        let ready = ready_rx.await;
        guard.armed = false;
        match ready {
            Ok(Ok(())) => Ok(record.port),
            Ok(Err(e)) => {
                self.inner.state.lock().await.running.remove(&record.name);
                Err(e)
            }
            Err(_) => Err(RuntimeError::StartFailed(format!("revision {} stopped while starting", record.name))),
        }
    }

    fn log_entry(&self, record: &RevisionRecord, stderr: bool, text: String) -> LogEntry {
        let now = self.inner.clock.now();
        let stream = if stderr { "stderr" } else { "stdout" };
        LogEntry {
            log_name: Some(format!("projects/local/logs/run.googleapis.com%2F{stream}")),
            resource: MonitoredResource {
                kind: "cloud_run_revision".into(),
                labels: BTreeMap::from([
                    ("service_name".to_owned(), record.service.to_string()),
                    ("revision_name".to_owned(), record.name.clone()),
                    ("configuration_name".to_owned(), record.service.to_string()),
                    ("location".to_owned(), "local".to_owned()),
                ]),
            },
            timestamp: Some(now),
            receive_timestamp: Some(now),
            severity: if stderr { Severity::Error } else { Severity::Default },
            insert_id: Some(format!("{:016x}", fastrand::u64(..))),
            text_payload: Some(text),
            json_payload: None,
            http_request: None,
            labels: BTreeMap::from([("devgem.dev/owner".to_owned(), record.owner.to_string())]),
            trace: None,
            extra: serde_json::Map::new(),
        }
    }

    async fn record_log(&self, record: &RevisionRecord, logs: &std::sync::Mutex<VecDeque<LogEntry>>, entry: LogEntry) {
        if let Ok(json) = serde_json::to_string(&entry) {
            use std::io::Write;
            let path = self.revision_dir(&record.name).join("log.jsonl");
            if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                let _ = writeln!(file, "{json}");
            }
            let message = OutboundMessage {
                data: json.into_bytes().into(),
                attributes: BTreeMap::from([(
                    "logging.googleapis.com/timestamp".to_owned(),
                    entry.timestamp.map(|t| t.to_rfc3339()).unwrap_or_default(),
                )]),
                ordering_key: None,
            };
            if let Err(e) = self.inner.bus.publish(Topic::LogEntries, message).await {
                tracing::warn!(revision = %record.name, error = %e, "a log entry was not published");
            }
        }
        if let Ok(mut logs) = logs.lock() {
            if logs.len() == LOG_MEMORY {
                logs.pop_front();
            }
            logs.push_back(entry);
        }
    }

    async fn serves(&self, name: &str) -> bool {
        self.inner.state.lock().await.routes.values().any(|r| r == name)
    }
}

/// Runs a revision's process: reports the startup probe through `ready`, then restarts the
/// process with backoff while the revision serves traffic, until `stopped`.
async fn supervise(
    runtime: LocalRuntime,
    record: RevisionRecord,
    image: LocalImage,
    logs: Arc<std::sync::Mutex<VecDeque<LogEntry>>>,
    stop: Arc<watch::Sender<bool>>,
    mut stopped: watch::Receiver<bool>,
    ready: tokio::sync::oneshot::Sender<Result<(), RuntimeError>>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_secs(1);
    loop {
        let outcome = run_once(&runtime, &record, &image, &logs, &mut stopped, &mut ready).await;
        if *stopped.borrow() || ready.is_some() {
            break;
        }
        if let Some(status) = outcome {
            let line = format!("Container exited with {status}; DevGem starts it again in {}s", backoff.as_secs());
            let entry = runtime.log_entry(&record, true, line);
            runtime.record_log(&record, &logs, entry).await;
        }
        if !runtime.serves(&record.name).await {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stopped.changed() => break,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
    // Only this process's entry: after a stop, the same revision may have been started again.
    let mut state = runtime.inner.state.lock().await;
    if state.running.get(&record.name).is_some_and(|r| Arc::ptr_eq(&r.stop, &stop)) {
        state.running.remove(&record.name);
    }
}

/// Stops a revision's process and waits (at most 10 s) until it has exited, so its port is free
/// for the next process and its directory is no longer in use.
async fn stop_and_wait(stop: Arc<watch::Sender<bool>>) {
    stop.send_replace(true);
    if tokio::time::timeout(Duration::from_secs(10), stop.closed()).await.is_err() {
        tracing::warn!("a revision's process did not exit within 10s of being stopped");
    }
}

/// One run of the process. Returns how it exited (`None` when it was stopped or never started).
async fn run_once(
    runtime: &LocalRuntime,
    record: &RevisionRecord,
    image: &LocalImage,
    logs: &Arc<std::sync::Mutex<VecDeque<LogEntry>>>,
    stopped: &mut watch::Receiver<bool>,
    ready: &mut Option<tokio::sync::oneshot::Sender<Result<(), RuntimeError>>>,
) -> Option<String> {
    let fail = |ready: &mut Option<tokio::sync::oneshot::Sender<Result<(), RuntimeError>>>, e: RuntimeError| {
        if let Some(tx) = ready.take() {
            let _ = tx.send(Err(e));
        }
    };
    let upper = runtime.revision_dir(&record.name).join("upper");
    if let Err(e) = std::fs::create_dir_all(&upper) {
        fail(ready, io_error(&upper, e));
        return None;
    }
    let mut env = Vec::new();
    for (name, value) in &record.env {
        match value {
            StoredEnv::Plain { value } => env.push((name.clone(), value.clone())),
            // Resolved for the process only: the value lives in its environment, nowhere else.
            StoredEnv::Secret { reference } => match runtime.inner.secrets.access(reference).await {
                Ok(secret) => env.push((name.clone(), secret.expose().to_owned())),
                Err(e) => {
                    fail(ready, RuntimeError::StartFailed(format!("the secret for {name} cannot be read: {e}")));
                    return None;
                }
            },
        }
    }
    env.push(("PORT".to_owned(), record.port.to_string()));
    env.push(("K_SERVICE".to_owned(), record.service.to_string()));
    env.push(("K_REVISION".to_owned(), record.name.clone()));
    // A port still held by another process would pass the startup probe for this one.
    if let Err(e) = wait_until_free(record.port).await {
        fail(ready, e);
        return None;
    }
    let (mut command, _scratch) = match image.command(runtime.inner.executor.sandbox(), upper, &env) {
        Ok(c) => c,
        Err(e) => {
            fail(ready, RuntimeError::StartFailed(e.to_string()));
            return None;
        }
    };
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            fail(ready, RuntimeError::StartFailed(format!("cannot start {}: {e}", image.start_command())));
            return None;
        }
    };
    let pid = child.id();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(bool, String)>(256);
    for (stderr, pipe) in [
        (false, child.stdout.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>)),
        (true, child.stderr.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>)),
    ] {
        if let Some(pipe) = pipe {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = tokio::io::BufReader::new(pipe);
                let mut buffer = Vec::new();
                while matches!(reader.read_until(b'\n', &mut buffer).await, Ok(n) if n > 0) {
                    let line = String::from_utf8_lossy(&buffer).trim_end_matches(['\n', '\r']).to_owned();
                    buffer.clear();
                    if tx.send((stderr, line)).await.is_err() {
                        break;
                    }
                }
            });
        }
    }
    drop(tx);
    let deadline = tokio::time::Instant::now() + runtime.inner.startup_timeout;
    let mut probe = tokio::time::interval(Duration::from_millis(100));
    let status = loop {
        tokio::select! {
            Some((stderr, line)) = rx.recv() => {
                let entry = runtime.log_entry(record, stderr, line);
                runtime.record_log(record, logs, entry).await;
            }
            status = child.wait() => break status,
            _ = stopped.changed() => {
                if let Some(pid) = pid { kill_group(pid); }
                let _ = child.wait().await;
                fail(ready, RuntimeError::StartFailed("stopped while starting".into()));
                return None;
            }
            _ = probe.tick(), if ready.is_some() => {
                if tokio::net::TcpStream::connect(("127.0.0.1", record.port)).await.is_ok() {
                    if let Some(tx) = ready.take() { let _ = tx.send(Ok(())); }
                } else if tokio::time::Instant::now() > deadline {
                    if let Some(pid) = pid { kill_group(pid); }
                    let _ = child.wait().await;
                    let seconds = runtime.inner.startup_timeout.as_secs();
                    fail(ready, RuntimeError::StartFailed(format!(
                        "the app did not listen on port {} within {seconds}s; it must listen on $PORT ({}) on 0.0.0.0. Its last lines: {}",
                        record.port, record.port, last_lines(logs)
                    )));
                    return None;
                }
            }
        }
    };
    // The process has ended; what it wrote last may still be in the pipes.
    while let Ok(Some((stderr, line))) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        let entry = runtime.log_entry(record, stderr, line);
        runtime.record_log(record, logs, entry).await;
    }
    let status = match status {
        Ok(s) => s.code().map_or_else(|| "a signal".to_owned(), |c| format!("status {c}")),
        Err(e) => e.to_string(),
    };
    if ready.is_some() {
        fail(
            ready,
            RuntimeError::StartFailed(format!("the app exited with {status} before listening: {}", last_lines(logs))),
        );
        return None;
    }
    Some(status)
}

/// A revision's last few lines of output, for a start failure's message.
fn last_lines(logs: &std::sync::Mutex<VecDeque<LogEntry>>) -> String {
    let last: Vec<String> = logs
        .lock()
        .map(|l| l.iter().rev().take(5).rev().filter_map(|e| e.text_payload.clone()).collect())
        .unwrap_or_default();
    if last.is_empty() { "none".to_owned() } else { last.join(" | ") }
}

/// Waits (at most 5 s) until `port` can be bound on loopback.
async fn wait_until_free(port: u16) -> Result<(), RuntimeError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(RuntimeError::StartFailed(format!(
                    "port {port} is held by another process ({e}); stop it or deploy again for a new port"
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn free_port() -> Result<u16, RuntimeError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| RuntimeError::Unavailable(format!("no free port: {e}")))
}

#[async_trait]
impl Runtime for LocalRuntime {
    async fn create_revision(&self, spec: RevisionSpec) -> Result<RevisionInfo, RuntimeError> {
        let build_id = build_id_of(&spec.image)
            .ok_or_else(|| RuntimeError::Refused(format!("{} is not an image of the local builder", spec.image)))?;
        let env = spec
            .env
            .iter()
            .map(|(name, value)| {
                let stored = match value {
                    EnvValue::Plain(v) => StoredEnv::Plain { value: v.clone() },
                    EnvValue::Secret(reference) => StoredEnv::Secret { reference: reference.clone() },
                };
                (name.to_string(), stored)
            })
            .collect();
        let name = match &spec.name {
            Some(name) => {
                let valid = name.starts_with(&format!("{}-", spec.service))
                    && name.len() <= 63
                    && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !valid {
                    return Err(RuntimeError::Refused(format!(
                        "revision name {name} must be {}-<lowercase letters, digits, '-'>, at most 63 characters",
                        spec.service
                    )));
                }
                // Idempotent: a revision of that name is started (if needed) and returned.
                if let Ok(record) = self.load(name) {
                    if record.owner != spec.owner || record.service != spec.service || record.build_id != build_id {
                        return Err(RuntimeError::Refused(format!("revision {name} exists with another image")));
                    }
                    let port = self.ensure_running(name).await?;
                    return Ok(RevisionInfo {
                        name: name.clone(),
                        url: format!("http://127.0.0.1:{port}/"),
                        created_at: record.created_at,
                    });
                }
                name.clone()
            }
            None => {
                let count = std::fs::read_dir(self.inner.root.join("revisions")).map(|d| d.count()).unwrap_or(0);
                format!("{}-{:05}-{:03x}", spec.service, count + 1, fastrand::u16(..4096))
            }
        };
        let port = if spec.port == CLOUD_RUN_PORT { free_port()? } else { spec.port };
        let record = RevisionRecord {
            name: name.clone(),
            owner: spec.owner,
            service: spec.service,
            build_id: build_id.to_owned(),
            env,
            port,
            created_at: self.inner.clock.now(),
        };
        let dir = self.revision_dir(&name);
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        let json = serde_json::to_vec_pretty(&record).map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
        std::fs::write(dir.join("revision.json"), json).map_err(|e| io_error(&dir, e))?;
        if let Err(e) = self.start(&record, Some(dir.clone())).await {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(RevisionInfo { name, url: format!("http://127.0.0.1:{port}/"), created_at: record.created_at })
    }

    async fn route_traffic(&self, owner: &UserId, service: &ServiceName, revision: &str) -> Result<(), RuntimeError> {
        let record = self.load(revision)?;
        if record.owner != *owner || record.service != *service {
            return Err(RuntimeError::NotFound(format!("revision {revision} of {service}")));
        }
        self.ensure_running(revision).await?;
        let (routes, previous) = {
            let mut state = self.inner.state.lock().await;
            let previous = state.routes.insert(host_label(owner, service), revision.to_owned());
            // The revision that served before stops; it starts again if traffic returns to it.
            let previous = previous.filter(|p| p != revision).and_then(|p| state.running.remove(&p));
            (state.routes.clone(), previous)
        };
        let saved = self.save_routes(&routes).await;
        if let Some(previous) = previous {
            stop_and_wait(previous.stop).await;
        }
        saved
    }

    async fn verify(&self, url: &str) -> Result<(), RuntimeError> {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
        // `<service>.localhost` is loopback (RFC 6761), but the system resolver may not say so.
        if let Ok(parsed) = reqwest::Url::parse(url)
            && let Some(host) = parsed.host_str().filter(|h| h.ends_with(".localhost"))
        {
            let port = parsed.port_or_known_default().unwrap_or(80);
            builder = builder.resolve(host, std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        }
        let client = builder.build().map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match client.get(url).send().await {
                // Any HTTP answer is an answer; a 5xx means the app is up but failing.
                Ok(response) if !response.status().is_server_error() => return Ok(()),
                Ok(response) if tokio::time::Instant::now() > deadline => {
                    return Err(RuntimeError::StartFailed(format!("{url} answers {}", response.status())));
                }
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return Err(RuntimeError::StartFailed(format!("{url} does not answer: {e}")));
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn logs(
        &self,
        owner: &UserId,
        service: &ServiceName,
        revision: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LogEntry>, RuntimeError> {
        let dir = self.inner.root.join("revisions");
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io_error(&dir, e))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if revision.is_some_and(|r| r != name) {
                continue;
            }
            let Ok(record) = self.load(&name) else { continue };
            if record.owner != *owner || record.service != *service {
                continue;
            }
            let text = std::fs::read_to_string(entry.path().join("log.jsonl")).unwrap_or_default();
            entries.extend(text.lines().filter_map(|l| serde_json::from_str::<LogEntry>(l).ok()));
        }
        entries.sort_by_key(|e| e.timestamp);
        let skip = entries.len().saturating_sub(limit);
        Ok(entries.split_off(skip))
    }

    async fn service_url(&self, owner: &UserId, service: &ServiceName) -> Result<String, RuntimeError> {
        match self.inner.public_port.load(std::sync::atomic::Ordering::Relaxed) {
            0 => Err(RuntimeError::Unavailable("no devgem up listener routes to services".into())),
            port => Ok(format!("http://{}.localhost:{port}/", host_label(owner, service))),
        }
    }

    async fn delete_revision(&self, owner: &UserId, service: &ServiceName, revision: &str) -> Result<(), RuntimeError> {
        let record = self.load(revision)?;
        if record.owner != *owner || record.service != *service {
            return Err(RuntimeError::NotFound(format!("revision {revision} of {service}")));
        }
        let running = {
            let mut state = self.inner.state.lock().await;
            if state.routes.values().any(|r| r == revision) {
                return Err(RuntimeError::Refused(format!("{revision} serves {service}; move traffic first")));
            }
            state.logs.remove(revision);
            state.running.remove(revision)
        };
        if let Some(running) = running {
            stop_and_wait(running.stop).await;
        }
        let dir = self.revision_dir(revision);
        std::fs::remove_dir_all(&dir).map_err(|e| io_error(&dir, e))
    }
}

#[cfg(test)]
mod tests;
