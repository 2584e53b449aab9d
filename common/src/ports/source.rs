//! The Source port: a repository snapshot at a ref, within size and time limits, behind the SSRF
//! guard of DESIGN.md (Sources). Adapters: git (both paths), local paths on the embedded default.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a repository comes from, as the user gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceLocation {
    /// An https git URL.
    Git { url: String },
    /// A directory on the server's machine (embedded default, loopback only).
    Local { path: PathBuf },
}

/// As the user wrote it: the URL or the directory path (what `deployments::source_location`
/// reads back).
impl std::fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceLocation::Git { url } => f.write_str(url),
            SourceLocation::Local { path } => write!(f, "{}", path.display()),
        }
    }
}

/// A repository and the ref to fetch (branch, tag or commit; `None` = default branch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSpec {
    pub location: SourceLocation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
}

/// How much a fetch may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLimits {
    pub max_bytes: u64,
    pub timeout: Duration,
}

impl Default for SourceLimits {
    fn default() -> Self {
        Self { max_bytes: 512 * 1024 * 1024, timeout: Duration::from_secs(120) }
    }
}

/// A fetched repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub dir: PathBuf,
    /// The commit checked out, when the source is a git repository.
    pub commit: Option<String>,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The address is refused by policy (private, loopback, metadata, not https, ...).
    #[error("{0}")]
    Refused(String),
    #[error("repository or ref not found: {0}")]
    NotFound(String),
    #[error("repository exceeds the limit: {0}")]
    TooLarge(String),
    #[error("fetching the repository timed out after {0:?}")]
    Timeout(Duration),
    #[error("fetching the repository failed: {0}")]
    Failed(String),
}

#[async_trait]
pub trait Source: Send + Sync + std::fmt::Debug {
    /// Fetches `spec` into `dest` (an empty directory).
    async fn fetch(&self, spec: &SourceSpec, dest: &Path, limits: SourceLimits) -> Result<Snapshot, SourceError>;
}
