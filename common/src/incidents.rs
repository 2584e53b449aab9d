//! `incidents/{owner}-{revision}-{kind}`: what the monitor knows about one kind of trouble on one
//! service revision — the signals inside the detection window, and the alert while one is open.
//!
//! The window lives here, not in a monitor's memory, so several monitor instances and restarts
//! count together, and opening an alert is a conditional write: two instances that see the same
//! burst open one alert. The deploy function resolves a revision's incidents when traffic leaves
//! it; the janitor resolves incidents that have been quiet for a while; the chat mutes one when
//! the user says "no" to its rollback.

use crate::events::{AlertKind, AlertStatus};
use crate::ids::{ServiceName, SessionId, UserId};
use crate::ports::store::{DocKey, NewEvent, Query, Scope, SessionEventKind, Store, StoreError, Write, to_data};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub const COLLECTION: &str = "incidents";

/// The most log lines an incident keeps to show.
pub const KEY_LINES: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub owner: UserId,
    pub service: ServiceName,
    pub revision: String,
    pub kind: AlertKind,
    /// Where the alert is told: the session of the deployment that made the revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
    /// When each signal inside the detection window arrived, while no alert is open.
    #[serde(default)]
    pub window: Vec<DateTime<Utc>>,
    /// Whether an alert is open (a top-level field, so open incidents can be queried).
    #[serde(default)]
    pub open: bool,
    /// The current (or last) alert's id; clients update the alert in place by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<DateTime<Utc>>,
    /// Signals since the alert opened.
    #[serde(default)]
    pub count: u64,
    /// The count last told to the user (in the `open` or an `updated` event).
    #[serde(default)]
    pub told_count: u64,
    #[serde(default)]
    pub key_lines: Vec<String>,
    /// Whether the chat has been sent the alert (it answers an alert id once).
    #[serde(default)]
    pub announced: bool,
    /// The user said "no" to the rollback: no more alerts of this kind for this revision.
    #[serde(default)]
    pub muted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_target: Option<String>,
    /// When the rollback target was deployed, read with it when the alert opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_target_created_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

impl Incident {
    pub fn new(owner: UserId, service: ServiceName, revision: String, kind: AlertKind) -> Self {
        Self {
            owner,
            service,
            revision,
            kind,
            session_id: None,
            window: Vec::new(),
            open: false,
            alert_id: None,
            since: None,
            last_seen: None,
            count: 0,
            told_count: 0,
            key_lines: Vec::new(),
            announced: false,
            muted: false,
            rollback_target: None,
            rollback_target_created_at: None,
            summary: None,
        }
    }

    pub fn doc_id(owner: &UserId, revision: &str, kind: AlertKind) -> String {
        format!("{owner}-{revision}-{}", kind_name(kind))
    }

    pub fn key(&self) -> Result<DocKey, StoreError> {
        DocKey::new(COLLECTION, Self::doc_id(&self.owner, &self.revision, self.kind))
    }

    /// The `monitoring_alert` session event for this incident's alert at `status`.
    pub fn event(&self, status: AlertStatus, correlation_id: crate::ids::CorrelationId) -> NewEvent {
        NewEvent {
            kind: SessionEventKind::MonitoringAlert,
            correlation_id,
            data: json!({
                "alert_id": self.alert_id,
                "status": status,
                "service": self.service,
                "revision": self.revision,
                "kind": self.kind,
                "since": self.since,
                "last_seen": self.last_seen,
                "count": self.count,
                "summary": self.summary,
                "key_lines": self.key_lines,
                "rollback_to": self.rollback_target,
                "muted": self.muted,
            }),
        }
    }
}

pub fn kind_name(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::CrashLoop => "crash_loop",
        AlertKind::UncaughtException => "uncaught_exception",
        AlertKind::MemoryLimit => "memory_limit",
        AlertKind::ErrorRate => "error_rate",
    }
}

/// Closes the alert of every open incident of `owner`'s `revision` (traffic left it), each with
/// a `resolved` event saying `why` (a clause: "traffic moved to web-2"). Returns how many.
pub async fn resolve_revision(
    store: &dyn Store,
    owner: &UserId,
    revision: &str,
    why: &str,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let query = Query::collection(COLLECTION).filter("revision", revision).filter("open", true).limit(50);
    let docs = store.query(&Scope::Owner(owner.clone()), &query).await?;
    let mut resolved = 0;
    for doc in docs {
        let incident: Incident = doc.parse()?;
        if resolve(store, incident, doc.version, why, now).await? {
            resolved += 1;
        }
    }
    Ok(resolved)
}

/// Resolves every open incident whose last signal is older than `quiet_since`.
pub async fn resolve_quiet(
    store: &dyn Store,
    quiet_since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<usize, StoreError> {
    let query = Query::collection(COLLECTION).filter("open", true).limit(500);
    let docs = store.query(&Scope::All, &query).await?;
    let mut resolved = 0;
    for doc in docs {
        let incident: Incident = doc.parse()?;
        let Some(seen) = incident.last_seen.filter(|seen| *seen < quiet_since) else { continue };
        let why = format!("no new errors since {}", seen.format("%H:%M UTC"));
        if resolve(store, incident, doc.version, &why, now).await? {
            resolved += 1;
        }
    }
    Ok(resolved)
}

/// Closes one incident's alert if it is still at `version`; `false` if someone moved it first.
async fn resolve(
    store: &dyn Store,
    mut incident: Incident,
    version: u64,
    why: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    incident.open = false;
    incident.window.clear();
    incident.summary = Some(format!("Resolved: {why}."));
    incident.last_seen = incident.last_seen.or(Some(now));
    let mut writes = vec![Write::Update { key: incident.key()?, expected_version: version, data: to_data(&incident)? }];
    if let Some(session) = &incident.session_id {
        let event = incident.event(AlertStatus::Resolved, crate::ids::CorrelationId::generate());
        writes.push(Write::Append { session: session.clone(), owner: incident.owner.clone(), events: vec![event] });
    }
    match store.commit(writes).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_conflict() => Ok(false),
        Err(e) => Err(e),
    }
}

/// The user said "no" to the rollback an alert proposed: that incident stays quiet.
pub async fn mute(store: &dyn Store, owner: &UserId, alert_id: &str) -> Result<bool, StoreError> {
    let query = Query::collection(COLLECTION).filter("alert_id", alert_id).limit(1);
    let Some(doc) = store.query(&Scope::Owner(owner.clone()), &query).await?.into_iter().next() else {
        return Ok(false);
    };
    let mut incident: Incident = doc.parse()?;
    incident.muted = true;
    store
        .commit(vec![Write::Update { key: incident.key()?, expected_version: doc.version, data: to_data(&incident)? }])
        .await?;
    Ok(true)
}
