//! Cloud Build notifications from the `cloud-builds` topic: attributes `buildId` and `status`,
//! data = the Build resource (camelCase JSON). The local builder emits the same shape, so one
//! completion handler serves both paths. Fields we do not model are kept in `extra`, so a
//! notification round-trips unchanged.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Build.Status of the Cloud Build v1 API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BuildStatus {
    StatusUnknown,
    Pending,
    Queued,
    Working,
    Success,
    Failure,
    InternalError,
    Timeout,
    Cancelled,
    Expired,
}

impl BuildStatus {
    pub fn parse(raw: &str) -> Option<Self> {
        serde_json::from_value(Value::String(raw.to_owned())).ok()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::StatusUnknown => "STATUS_UNKNOWN",
            BuildStatus::Pending => "PENDING",
            BuildStatus::Queued => "QUEUED",
            BuildStatus::Working => "WORKING",
            BuildStatus::Success => "SUCCESS",
            BuildStatus::Failure => "FAILURE",
            BuildStatus::InternalError => "INTERNAL_ERROR",
            BuildStatus::Timeout => "TIMEOUT",
            BuildStatus::Cancelled => "CANCELLED",
            BuildStatus::Expired => "EXPIRED",
        }
    }

    /// A build in this status will not change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            BuildStatus::Success
                | BuildStatus::Failure
                | BuildStatus::InternalError
                | BuildStatus::Timeout
                | BuildStatus::Cancelled
                | BuildStatus::Expired
        )
    }
}

/// Build.FailureInfo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureInfo {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The parts of the Build resource DevGem reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Build {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    pub status: BuildStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs_bucket: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub substitutions: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_info: Option<FailureInfo>,
    /// Every other field of the resource, untouched.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Build {
    /// The DevGem deployment this build belongs to, from the `devgem-deployment-<id>` tag.
    pub fn deployment_tag(&self) -> Option<&str> {
        self.tags.iter().find_map(|t| t.strip_prefix("devgem-deployment-"))
    }
}

/// A decoded `cloud-builds` message.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudBuildNotification {
    pub build_id: String,
    pub status: BuildStatus,
    pub build: Build,
}

/// Why a `cloud-builds` message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudBuildError {
    #[error("missing attribute {0:?} on a cloud-builds message")]
    MissingAttribute(&'static str),
    #[error("unknown build status {0:?}")]
    UnknownStatus(String),
    #[error("the message's data is not a Build resource: {0}")]
    BadBuild(String),
    #[error("attribute buildId {attribute:?} does not match the Build's id {resource:?}")]
    IdMismatch { attribute: String, resource: String },
}

impl CloudBuildNotification {
    pub fn decode(attributes: &BTreeMap<String, String>, data: &[u8]) -> Result<Self, CloudBuildError> {
        let build_id = attributes.get("buildId").ok_or(CloudBuildError::MissingAttribute("buildId"))?;
        let raw_status = attributes.get("status").ok_or(CloudBuildError::MissingAttribute("status"))?;
        let status =
            BuildStatus::parse(raw_status).ok_or_else(|| CloudBuildError::UnknownStatus(raw_status.clone()))?;
        let build: Build = serde_json::from_slice(data).map_err(|e| CloudBuildError::BadBuild(e.to_string()))?;
        if &build.id != build_id {
            return Err(CloudBuildError::IdMismatch { attribute: build_id.clone(), resource: build.id });
        }
        Ok(Self { build_id: build_id.clone(), status, build })
    }

    /// The attributes Cloud Build sets on its notification messages.
    pub fn attributes(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("buildId".to_owned(), self.build_id.clone()),
            ("status".to_owned(), self.status.as_str().to_owned()),
        ])
    }
}
