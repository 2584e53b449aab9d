//! The Builder port: build an image from a source and a Dockerfile. Completion is not returned:
//! it arrives as a `cloud-builds`-shaped event, so one handler serves Cloud Build and the local
//! Dockerfile executor alike.

use super::blobs::BlobKey;
use super::source::SourceSpec;
use crate::ids::{DeploymentId, ServiceName, UserId};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::time::Duration;

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRequest {
    pub deployment_id: DeploymentId,
    pub owner: UserId,
    pub service: ServiceName,
    pub source: SourceSpec,
    /// The Dockerfile to build with (the repository's own or DevGem's).
    pub dockerfile: String,
    /// Extra files written into the build context (e.g. `.dockerignore`), by relative path.
    pub extra_files: BTreeMap<String, String>,
    /// The directory inside the repository to build (monorepos).
    pub app_dir: String,
    pub timeout: Duration,
}

/// A submitted build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildHandle {
    pub build_id: String,
    /// Where the build's log can be read by a person, if anywhere.
    pub log_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuilderError {
    #[error("build refused: {0}")]
    Refused(String),
    #[error("build {0} not found")]
    NotFound(String),
    #[error("builder unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Builder: Send + Sync + std::fmt::Debug {
    async fn submit(&self, request: BuildRequest) -> Result<BuildHandle, BuilderError>;
    /// Cancels a running build; its completion event then reports `CANCELLED`.
    async fn cancel(&self, build_id: &str) -> Result<(), BuilderError>;
    /// Removes a finished build's artifacts (the local builder: its directory, staged sources and
    /// log). Refused while it runs. Returns whether there was anything to remove.
    async fn delete_build(&self, build_id: &str) -> Result<bool, BuilderError>;
    /// The build's log lines from line `from` (0-based) on, as far as they are written: callers
    /// follow a running build by asking again from where they stopped.
    async fn log_lines(&self, build_id: &str, from: usize) -> Result<Vec<String>, BuilderError>;
}

/// Where a build's whole log is kept as text in Blobs, whichever builder ran it.
pub fn log_blob_key(build_id: &str) -> Option<BlobKey> {
    BlobKey::parse(&format!("builds/{build_id}/log.txt")).ok()
}
