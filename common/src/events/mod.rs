//! The event catalog of DESIGN.md: one typed payload per event type, the topic it travels on,
//! and its conversion to and from a Pub/Sub message carrying a binary-mode CloudEvent.
//!
//! Two topics carry foreign messages decoded by topic rather than by `ce-type`:
//! [`cloud_build`] (Cloud Build notifications) and [`log_entry`] (Log Router LogEntries).

pub mod cloud_build;
mod cloudevent;
pub mod log_entry;

pub use cloudevent::{EventContext, EventError, EventMeta, attributes as ce_attributes, to_message};

use crate::ids::{DeploymentId, ServiceName, SessionId, UserId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::fmt;

/// The Pub/Sub topics of DESIGN.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topic {
    ChatTurns,
    Deployments,
    Builds,
    CloudBuilds,
    Releases,
    Control,
    LogEntries,
    Alerts,
}

impl Topic {
    pub const ALL: [Topic; 8] = [
        Topic::ChatTurns,
        Topic::Deployments,
        Topic::Builds,
        Topic::CloudBuilds,
        Topic::Releases,
        Topic::Control,
        Topic::LogEntries,
        Topic::Alerts,
    ];

    /// The topic's name as Pub/Sub and the embedded bus know it.
    pub fn name(self) -> &'static str {
        match self {
            Topic::ChatTurns => "chat-turns",
            Topic::Deployments => "deployments",
            Topic::Builds => "builds",
            Topic::CloudBuilds => "cloud-builds",
            Topic::Releases => "releases",
            Topic::Control => "control",
            Topic::LogEntries => "log-entries",
            Topic::Alerts => "alerts",
        }
    }

    pub fn parse(name: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Foreign topics carry messages in their producer's shape, not CloudEvents.
    pub fn is_foreign(self) -> bool {
        matches!(self, Topic::CloudBuilds | Topic::LogEntries)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A payload of one of our own event types.
pub trait EventPayload: Serialize + DeserializeOwned + Send + Sync + fmt::Debug + 'static {
    /// The CloudEvents `type`, versioned (`dev.devgem.<noun>.<verb>.v1`).
    const TYPE: &'static str;
    /// The topic the event is published on.
    const TOPIC: Topic;

    /// The CloudEvents `subject`: the document the event is about.
    fn subject(&self) -> String;

    /// Messages with the same key are delivered in publish order.
    fn ordering_key(&self) -> Option<String> {
        None
    }
}

/// Events about one deployment: the subject is its document, and a deployment's events are
/// delivered in order (ordering key = its id).
macro_rules! deployment_event {
    ($payload:ty, $event_type:literal, $topic:expr) => {
        impl EventPayload for $payload {
            const TYPE: &'static str = $event_type;
            const TOPIC: Topic = $topic;
            fn subject(&self) -> String {
                format!("deployments/{}", self.deployment_id)
            }
            fn ordering_key(&self) -> Option<String> {
                Some(self.deployment_id.to_string())
            }
        }
    };
}

/// A user's chat message, forwarded by the relay or the API to the chat function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatTurn {
    pub session_id: SessionId,
    pub user_id: UserId,
    pub text: String,
    /// The client's id for the message, so a resend after a reconnect is recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_message_id: Option<String>,
}

impl EventPayload for ChatTurn {
    const TYPE: &'static str = "dev.devgem.chat.turn.v1";
    const TOPIC: Topic = Topic::ChatTurns;
    fn subject(&self) -> String {
        format!("sessions/{}", self.session_id)
    }
    fn ordering_key(&self) -> Option<String> {
        Some(self.session_id.to_string())
    }
}

/// Start (or resume) the pipeline of a deployment whose document already exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentRequested {
    pub deployment_id: DeploymentId,
    pub owner: UserId,
    pub session_id: SessionId,
}

deployment_event!(DeploymentRequested, "dev.devgem.deployment.requested.v1", Topic::Deployments);

/// The analysis and Dockerfile are stored with the deployment; build it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildRequested {
    pub deployment_id: DeploymentId,
    pub owner: UserId,
    pub session_id: SessionId,
}

deployment_event!(BuildRequested, "dev.devgem.build.requested.v1", Topic::Builds);

/// The image is built; create a revision from it and verify it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequested {
    pub deployment_id: DeploymentId,
    pub owner: UserId,
    pub session_id: SessionId,
    pub build_id: String,
    /// The built image: an Artifact Registry reference, or a local build directory's id.
    pub image: String,
}

deployment_event!(ReleaseRequested, "dev.devgem.release.requested.v1", Topic::Releases);

/// The user asked to stop a deployment; every stage honours it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentAbort {
    pub deployment_id: DeploymentId,
    pub owner: UserId,
    pub session_id: SessionId,
    pub requested_by: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

deployment_event!(DeploymentAbort, "dev.devgem.deployment.abort.v1", Topic::Control);

/// Move a service's traffic back to an earlier revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRollback {
    pub service: ServiceName,
    pub owner: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
    /// The revision to serve; `None` means the service's recorded rollback target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_revision: Option<String>,
    /// The alert that prompted the rollback, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_id: Option<String>,
    pub requested_by: UserId,
}

impl EventPayload for ServiceRollback {
    const TYPE: &'static str = "dev.devgem.service.rollback.v1";
    const TOPIC: Topic = Topic::Control;
    fn subject(&self) -> String {
        format!("services/{}-{}", self.owner, self.service)
    }
    fn ordering_key(&self) -> Option<String> {
        Some(format!("{}-{}", self.owner, self.service))
    }
}

/// What the monitor detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    CrashLoop,
    UncaughtException,
    MemoryLimit,
    ErrorRate,
}

/// Where an incident is in its life; clients update an alert in place by `alert_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    Open,
    Updated,
    Resolved,
}

/// An incident on a service revision, from the monitor to the chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorAlert {
    pub alert_id: String,
    pub owner: UserId,
    pub service: ServiceName,
    pub revision: String,
    pub kind: AlertKind,
    pub status: AlertStatus,
    /// One sentence in plain words: what happened.
    pub summary: String,
    pub since: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_lines: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_target: Option<String>,
    /// When the rollback target was deployed, to say so in the question.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_target_created_at: Option<DateTime<Utc>>,
    /// What probably caused it, in plain words, when the lines say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub likely_cause: Option<String>,
    /// Signals since the alert opened (absent: not counted).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub count: u64,
    /// The session to tell: the one of the deployment that made the revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl EventPayload for MonitorAlert {
    const TYPE: &'static str = "dev.devgem.monitor.alert.v1";
    const TOPIC: Topic = Topic::Alerts;
    fn subject(&self) -> String {
        format!("services/{}-{}", self.owner, self.service)
    }
    fn ordering_key(&self) -> Option<String> {
        Some(self.alert_id.clone())
    }
}

/// One row of the catalog, for documentation and the catalog test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CatalogEntry {
    pub event_type: &'static str,
    pub topic: Topic,
}

/// Every event type DevGem publishes, in DESIGN.md's order.
pub fn catalog() -> Vec<CatalogEntry> {
    fn entry<E: EventPayload>() -> CatalogEntry {
        CatalogEntry { event_type: E::TYPE, topic: E::TOPIC }
    }
    vec![
        entry::<ChatTurn>(),
        entry::<DeploymentRequested>(),
        entry::<BuildRequested>(),
        entry::<ReleaseRequested>(),
        entry::<DeploymentAbort>(),
        entry::<ServiceRollback>(),
        entry::<MonitorAlert>(),
    ]
}

/// The events carried on the `control` topic, decoded by `ce-type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlEvent {
    Abort(DeploymentAbort),
    Rollback(ServiceRollback),
}

#[cfg(test)]
mod tests;
