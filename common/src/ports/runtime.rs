//! The Runtime port: revisions of a service, traffic between them, verification and logs.
//! Adapters: Cloud Run v2, and child processes behind the `devgem up` proxy.

use super::secrets::SecretRef;
use crate::events::log_entry::LogEntry;
use crate::ids::{EnvVarName, ServiceName, UserId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

/// An env var's value as the runtime receives it: plain, or a reference the runtime resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    Plain(String),
    Secret(SecretRef),
}

/// A new revision to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionSpec {
    pub owner: UserId,
    pub service: ServiceName,
    pub image: String,
    pub env: BTreeMap<EnvVarName, EnvValue>,
    /// The port the container listens on ($PORT); 8080 on Cloud Run.
    pub port: u16,
    /// The revision's name (`<service>-<suffix>`), which makes creating it idempotent: creating a
    /// revision that exists returns it, started. `None` lets the runtime number it.
    pub name: Option<String>,
}

/// A created revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionInfo {
    pub name: String,
    pub url: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The revision did not start or did not answer; the previous one keeps serving.
    #[error("revision failed to start: {0}")]
    StartFailed(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("request refused: {0}")]
    Refused(String),
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Runtime: Send + Sync + std::fmt::Debug {
    /// Creates a revision and waits until it passes its startup probe. Serves no traffic yet.
    async fn create_revision(&self, spec: RevisionSpec) -> Result<RevisionInfo, RuntimeError>;
    /// Sends all traffic of the service to `revision`.
    async fn route_traffic(&self, owner: &UserId, service: &ServiceName, revision: &str) -> Result<(), RuntimeError>;
    /// Checks that `url` answers HTTP.
    async fn verify(&self, url: &str) -> Result<(), RuntimeError>;
    /// Recent log entries of a service (optionally one revision), newest last.
    async fn logs(
        &self,
        owner: &UserId,
        service: &ServiceName,
        revision: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LogEntry>, RuntimeError>;
    /// The URL the service answers on, whichever revision serves it.
    async fn service_url(&self, owner: &UserId, service: &ServiceName) -> Result<String, RuntimeError>;
    /// Stops and removes a revision that serves no traffic.
    async fn delete_revision(&self, owner: &UserId, service: &ServiceName, revision: &str) -> Result<(), RuntimeError>;

    /// The env the service runs with as the runtime has it now, so that a change made outside
    /// DevGem (an env var edited on the Cloud Run service) is seen. `None`: the runtime has no
    /// env of its own beyond what DevGem gave it (the local runtime).
    async fn live_env(
        &self,
        _owner: &UserId,
        _service: &ServiceName,
    ) -> Result<Option<BTreeMap<EnvVarName, EnvValue>>, RuntimeError> {
        Ok(None)
    }
}
