//! LogEntry messages from the `log-entries` topic (a Log Router sink), in Cloud Logging's JSON
//! shape. The local runtime emits the same shape for its child processes. Unmodelled fields are
//! kept in `extra` so an entry round-trips unchanged.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// LogSeverity, ordered from least to most severe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    #[default]
    Default,
    Debug,
    Info,
    Notice,
    Warning,
    Error,
    Critical,
    Alert,
    Emergency,
}

/// MonitoredResource: for Cloud Run, type `cloud_run_revision` with labels `service_name`,
/// `revision_name`, `configuration_name`, `location`, `project_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitoredResource {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// HttpRequest of a request log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One LogEntry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_name: Option<String>,
    pub resource: MonitoredResource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_timestamp: Option<DateTime<Utc>>,
    #[serde(default)]
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insert_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_payload: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_request: Option<HttpRequest>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Why a `log-entries` message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the message's data is not a LogEntry: {0}")]
pub struct LogEntryError(pub String);

impl LogEntry {
    pub fn decode(data: &[u8]) -> Result<Self, LogEntryError> {
        serde_json::from_slice(data).map_err(|e| LogEntryError(e.to_string()))
    }

    pub fn service_name(&self) -> Option<&str> {
        self.resource.labels.get("service_name").map(String::as_str)
    }

    pub fn revision_name(&self) -> Option<&str> {
        self.resource.labels.get("revision_name").map(String::as_str)
    }

    /// `stdout` or `stderr` for a container's output (Cloud Run's log names
    /// `run.googleapis.com%2Fstdout` and `%2Fstderr`, which the local runtime uses too).
    pub fn stream(&self) -> Option<&'static str> {
        let name = self.log_name.as_deref()?;
        ["stdout", "stderr"].into_iter().find(|stream| name.ends_with(&format!("%2F{stream}")))
    }

    /// The human-readable line: `textPayload`, else `jsonPayload.message`.
    pub fn message(&self) -> Option<&str> {
        self.text_payload
            .as_deref()
            .or_else(|| self.json_payload.as_ref().and_then(|p| p.get("message")).and_then(Value::as_str))
    }
}
