//! The `monitor` function: turns the deployed services' log entries into alerts.
//!
//! Every LogEntry (Cloud Logging's shape, from the Log Router sink on GCP or the local runtime)
//! passes through [`detect::classify`]; most are nothing and cost no Store access. A signal
//! (an exit, an uncaught exception or panic, a memory kill, a 5xx) is counted in its incident's
//! window in the Store (`devgem_common::incidents`); when the window reaches its kind's threshold
//! the incident opens one alert: a `monitoring_alert` session event, and a
//! `dev.devgem.monitor.alert.v1` event that the chat turns into a message and a rollback question.
//! Further signals update the same alert, at most once per `update_every` per instance.
//!
//! # Layout
//! - [`detect`]: what a line means, per language; the likely cause.
//! - [`MonitorSettings`]: thresholds and windows per kind.
//! - `on_log_entry`: the push handler.

pub mod detect;

use axum::Router;
use chrono::{DateTime, Utc};
use devgem_common::events::log_entry::LogEntry;
use devgem_common::events::{AlertKind, AlertStatus, EventContext, MonitorAlert};
use devgem_common::function::health_router;
use devgem_common::handler::{HandlerError, PushState, push_route};
use devgem_common::ids::{CorrelationId, ServiceName, UserId};
use devgem_common::incidents::{Incident, KEY_LINES};
use devgem_common::model::service::Service;
use devgem_common::ports::Ports;
use devgem_common::ports::bus::BusExt;
use devgem_common::ports::store::{DocKey, Scope, StoreExt, Write, to_data};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The function's name, as `devgem serve monitor` and the Cloud Run service know it.
pub const NAME: &str = "monitor";

/// The push route of the `log-entries` subscription.
pub const PUSH_LOG_ENTRIES: &str = "/push/log-entries";

/// The label the local runtime (and DevGem's Cloud Run services) put on entries to name the owner.
pub const OWNER_LABEL: &str = "devgem.dev/owner";

/// When a kind of signal becomes an alert: `count` signals within `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold {
    pub count: usize,
    pub window: Duration,
}

/// The detectors' thresholds and the pace of updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorSettings {
    /// Container exits: a crash loop is 3 exits in 10 minutes.
    pub crash_loop: Threshold,
    /// One uncaught exception or panic is worth telling.
    pub exception: Threshold,
    /// One memory kill is worth telling.
    pub memory: Threshold,
    /// 10 responses with a 5xx status within a minute.
    pub error_rate: Threshold,
    /// An open alert is updated (and the update told) at most this often per instance.
    pub update_every: Duration,
    /// An open alert with no new signal for this long is resolved (by the janitor's sweep).
    pub quiet_for: Duration,
}

impl Default for MonitorSettings {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(60 * m);
        Self {
            crash_loop: Threshold { count: 3, window: minutes(10) },
            exception: Threshold { count: 1, window: minutes(10) },
            memory: Threshold { count: 1, window: minutes(10) },
            error_rate: Threshold { count: 10, window: minutes(1) },
            update_every: Duration::from_secs(10),
            quiet_for: minutes(10),
        }
    }
}

/// A monitor setting that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?} is not valid: {why}")]
pub struct SettingsError {
    pub name: &'static str,
    pub value: String,
    pub why: &'static str,
}

impl MonitorSettings {
    /// The defaults, with any of these set by `lookup` (the environment):
    /// `DEVGEM_MONITOR_CRASH_LOOP`, `DEVGEM_MONITOR_EXCEPTION`, `DEVGEM_MONITOR_MEMORY` and
    /// `DEVGEM_MONITOR_ERROR_RATE` as `COUNT/SECONDS` (`10/60`: 10 signals within 60 s), and
    /// `DEVGEM_MONITOR_UPDATE_SECS`.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let mut settings = Self::default();
        let thresholds: [(&'static str, &mut Threshold); 4] = [
            ("DEVGEM_MONITOR_CRASH_LOOP", &mut settings.crash_loop),
            ("DEVGEM_MONITOR_EXCEPTION", &mut settings.exception),
            ("DEVGEM_MONITOR_MEMORY", &mut settings.memory),
            ("DEVGEM_MONITOR_ERROR_RATE", &mut settings.error_rate),
        ];
        for (name, threshold) in thresholds {
            let Some(value) = lookup(name) else { continue };
            let invalid = || SettingsError {
                name,
                value: value.clone(),
                why: "write COUNT/SECONDS with both above 0, like 10/60",
            };
            let (count, seconds) = value.trim().split_once('/').ok_or_else(invalid)?;
            let count: usize = count.trim().parse().map_err(|_| invalid())?;
            let seconds: u64 = seconds.trim().parse().map_err(|_| invalid())?;
            if count == 0 || seconds == 0 {
                return Err(invalid());
            }
            *threshold = Threshold { count, window: Duration::from_secs(seconds) };
        }
        if let Some(value) = lookup("DEVGEM_MONITOR_UPDATE_SECS") {
            let name = "DEVGEM_MONITOR_UPDATE_SECS";
            let seconds: u64 = value.trim().parse().map_err(|_| SettingsError {
                name,
                value: value.clone(),
                why: "write a number of seconds, like 10",
            })?;
            settings.update_every = Duration::from_secs(seconds);
        }
        Ok(settings)
    }

    pub fn threshold(&self, kind: AlertKind) -> Threshold {
        match kind {
            AlertKind::CrashLoop => self.crash_loop,
            AlertKind::UncaughtException => self.exception,
            AlertKind::MemoryLimit => self.memory,
            AlertKind::ErrorRate => self.error_rate,
        }
    }
}

/// What one instance remembers between entries. Losing it (a restart) costs nothing but a Store
/// read: alerts, windows and counts that matter are in the Store.
#[derive(Debug, Default)]
struct Memory {
    /// Open incidents this instance wrote recently: further signals only bump `pending` until
    /// `update_every` has passed.
    open: Mutex<HashMap<String, (Instant, u64)>>,
    /// The latest error lines per revision, to show with an alert (a traceback's lines arrive as
    /// separate entries, and only its first is a signal).
    recent: Mutex<HashMap<String, VecDeque<String>>>,
}

impl Memory {
    fn remember_line(&self, revision: &str, line: &str) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() > 10_000 && !recent.contains_key(revision) {
            recent.clear();
        }
        let lines = recent.entry(revision.to_owned()).or_default();
        if lines.len() == KEY_LINES {
            lines.pop_front();
        }
        lines.push_back(line.chars().take(500).collect());
    }

    fn recent(&self, revision: &str) -> Vec<String> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.get(revision).map(|l| l.iter().cloned().collect()).unwrap_or_default()
    }

    /// Counts a signal of an incident written less than `every` ago; `false` if it must be read.
    fn absorb(&self, id: &str, every: Duration) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match open.get_mut(id) {
            Some((written, pending)) if written.elapsed() < every => {
                *pending += 1;
                true
            }
            _ => false,
        }
    }

    /// Signals absorbed since the last write, now being written.
    fn take_pending(&self, id: &str) -> u64 {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.remove(id).map(|(_, pending)| pending).unwrap_or(0)
    }

    fn written(&self, id: &str, open: bool) {
        let mut map = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.clear();
        }
        if open {
            map.insert(id.to_owned(), (Instant::now(), 0));
        } else {
            map.remove(id);
        }
    }
}

/// Everything the function needs, built once by `devgem serve` or `devgem up`.
#[derive(Debug, Clone)]
pub struct AppState {
    pub ports: Ports,
    pub settings: MonitorSettings,
    memory: Arc<Memory>,
}

impl AppState {
    pub fn new(ports: Ports, settings: MonitorSettings) -> Self {
        Self { ports, settings, memory: Default::default() }
    }
}

impl PushState for AppState {
    fn ports(&self) -> &Ports {
        &self.ports
    }
}

/// The function's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(PUSH_LOG_ENTRIES, push_route(|s: AppState, e: LogEntry| async move { on_log_entry(&s, e).await }))
        .with_state(state.clone())
        .merge(health_router(NAME, state.ports.store.clone()))
}

/// The owner and the service an entry is about: the owner label, else the service name is the
/// service document's id (`<owner>-<name>`, as DevGem names Cloud Run services).
async fn identify(state: &AppState, entry: &LogEntry) -> Result<Option<(UserId, ServiceName)>, HandlerError> {
    let Some(service_name) = entry.service_name() else { return Ok(None) };
    if let Some(owner) = entry.labels.get(OWNER_LABEL).and_then(|o| UserId::parse(o).ok()) {
        return Ok(ServiceName::parse(service_name).ok().map(|name| (owner, name)));
    }
    let Ok(key) = DocKey::new("services", service_name) else { return Ok(None) };
    let service = state.ports.store.get_typed::<Service>(&Scope::All, &key).await?;
    Ok(service.map(|(service, _)| (service.owner, service.name)))
}

/// Handles one LogEntry: nothing for most lines; a signal counts towards its incident.
pub async fn on_log_entry(state: &AppState, entry: LogEntry) -> Result<(), HandlerError> {
    let Some(revision) = entry.revision_name().map(str::to_owned) else { return Ok(()) };
    let signal = detect::classify(&entry);
    if detect::is_error_line(&entry)
        && let Some(line) = entry.message().or_else(|| signal.as_ref().map(|s| s.line.as_str()))
    {
        state.memory.remember_line(&revision, line);
    }
    let Some(signal) = signal else { return Ok(()) };
    let Some((owner, service)) = identify(state, &entry).await? else { return Ok(()) };
    let id = Incident::doc_id(&owner, &revision, signal.kind);
    if state.memory.absorb(&id, state.settings.update_every) {
        return Ok(());
    }
    let at = entry.timestamp.unwrap_or_else(|| state.ports.clock.now());
    let store = state.ports.store.as_ref();
    let key = DocKey::new(devgem_common::incidents::COLLECTION, &id)?;
    let (mut incident, version) = match store.get_typed::<Incident>(&Scope::All, &key).await? {
        Some((incident, version)) => (incident, Some(version)),
        None => (Incident::new(owner.clone(), service.clone(), revision.clone(), signal.kind), None),
    };
    if incident.muted {
        return Ok(());
    }
    let mut lines = state.memory.recent(&revision);
    if lines.last() != Some(&signal.line) {
        lines.push(signal.line.clone());
    }
    let threshold = state.settings.threshold(signal.kind);
    let status = if incident.open {
        incident.count += 1 + state.memory.take_pending(&id);
        incident.last_seen = Some(at);
        incident.key_lines = last(lines, KEY_LINES);
        Some(AlertStatus::Updated)
    } else {
        let window_start = at - chrono::Duration::from_std(threshold.window).unwrap_or(chrono::Duration::MAX);
        incident.window.retain(|t| *t > window_start);
        incident.window.push(at);
        if incident.window.len() >= threshold.count {
            open(state, &mut incident, &id, lines).await?;
            Some(AlertStatus::Open)
        } else {
            None
        }
    };
    if status.is_some() {
        incident.summary = Some(summary(&incident, threshold));
        incident.told_count = incident.count;
    }
    let data = to_data(&incident)?;
    let mut writes = vec![match version {
        Some(expected_version) => Write::Update { key: key.clone(), expected_version, data },
        None => Write::Create { key: key.clone(), owner: owner.clone(), data },
    }];
    let correlation_id = CorrelationId::generate();
    if let (Some(status), Some(session)) = (status, &incident.session_id) {
        let event = incident.event(status, correlation_id.clone());
        writes.push(Write::Append { session: session.clone(), owner: owner.clone(), events: vec![event] });
    }
    let committed = store.commit(writes).await?;
    state.memory.written(&id, incident.open);
    if incident.open && !incident.announced {
        announce(state, &mut incident, &key, committed.version(0), correlation_id).await?;
    }
    Ok(())
}

/// Opens the incident's alert: its id, the lines, and what a rollback would return to.
async fn open(state: &AppState, incident: &mut Incident, id: &str, lines: Vec<String>) -> Result<(), HandlerError> {
    let since = incident.window.first().copied().unwrap_or_else(|| state.ports.clock.now());
    incident.open = true;
    incident.announced = false;
    // The same burst seen by two instances (or redelivered) opens the same alert id.
    incident.alert_id = Some(format!("{id}-{}", since.timestamp_millis()));
    incident.since = Some(since);
    incident.last_seen = incident.window.last().copied();
    incident.count = incident.window.len() as u64;
    incident.window.clear();
    incident.key_lines = last(lines, KEY_LINES);
    let store = state.ports.store.as_ref();
    let key = DocKey::new("services", Service::doc_id(&incident.owner, &incident.service))?;
    if let Some((service, _)) = store.get_typed::<Service>(&Scope::All, &key).await? {
        // Only the serving revision has somewhere to roll back to.
        incident.rollback_target = match service.traffic.serving.as_deref() {
            Some(serving) if serving == incident.revision => service.traffic.rollback_target.clone(),
            _ => None,
        };
        incident.rollback_target_created_at =
            incident.rollback_target.as_deref().and_then(|target| service.revision(target)).map(|r| r.created_at);
        if let Some(revision) = service.revision(&incident.revision)
            && let Some((deployment, _)) = devgem_common::timeline::load(store, &revision.deployment_id).await?
        {
            incident.session_id = Some(deployment.session_id);
        }
    }
    Ok(())
}

/// Hands the open alert to the chat, then records that it did. A crash between the two sends it
/// again; the chat answers an alert id once.
async fn announce(
    state: &AppState,
    incident: &mut Incident,
    key: &DocKey,
    version: Option<u64>,
    correlation_id: CorrelationId,
) -> Result<(), HandlerError> {
    let Some(alert_id) = incident.alert_id.clone() else { return Ok(()) };
    let store = state.ports.store.as_ref();
    let alert = MonitorAlert {
        alert_id,
        owner: incident.owner.clone(),
        service: incident.service.clone(),
        revision: incident.revision.clone(),
        kind: incident.kind,
        status: AlertStatus::Open,
        summary: incident.summary.clone().unwrap_or_default(),
        since: incident.since.unwrap_or_else(|| state.ports.clock.now()),
        key_lines: incident.key_lines.clone(),
        rollback_target: incident.rollback_target.clone(),
        rollback_target_created_at: incident.rollback_target_created_at,
        likely_cause: detect::likely_cause(incident.kind, &incident.key_lines),
        count: incident.count,
        session_id: incident.session_id.clone(),
    };
    let ctx = EventContext::new(NAME, correlation_id);
    state
        .ports
        .bus
        .publish_event(&alert, &ctx, state.ports.clock.now())
        .await
        .map_err(|e| HandlerError::Transient(format!("the alert could not be handed to the chat: {e}")))?;
    incident.announced = true;
    if let Some(expected_version) = version {
        let write = Write::Update { key: key.clone(), expected_version, data: to_data(&*incident)? };
        // Someone updated it meanwhile: they will see `announced: false` and send it again,
        // which the chat ignores.
        if let Err(e) = store.commit(vec![write]).await
            && !e.is_conflict()
        {
            return Err(e.into());
        }
    }
    Ok(())
}

fn last(mut lines: Vec<String>, n: usize) -> Vec<String> {
    let extra = lines.len().saturating_sub(n);
    lines.drain(..extra);
    lines
}

/// One sentence in plain words: what happened, how often, since when.
fn summary(incident: &Incident, threshold: Threshold) -> String {
    let service = &incident.service;
    let since = incident.since.map(|t: DateTime<Utc>| t.format("%H:%M:%S UTC").to_string()).unwrap_or_default();
    let times = |n: u64| if n == 1 { "once".to_owned() } else { format!("{n} times") };
    match incident.kind {
        AlertKind::CrashLoop => {
            format!("{service} keeps crashing: its container exited {} since {since}", times(incident.count))
        }
        AlertKind::UncaughtException => {
            format!("{service} hit an uncaught exception ({}) since {since}", times(incident.count))
        }
        AlertKind::MemoryLimit => {
            format!("{service} was killed for running out of memory ({}) since {since}", times(incident.count))
        }
        AlertKind::ErrorRate => format!(
            "{service} answered {} requests with a server error (5xx) since {since}; the limit is {} per {}s",
            incident.count,
            threshold.count,
            threshold.window.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests;
