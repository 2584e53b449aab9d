//! The `janitor` function: recovers stuck deployments and prunes what is no longer needed. It
//! runs as a periodic task in `devgem up`, as `devgem serve janitor --once` (the Cloud Run job),
//! and on `POST /run`. Every change it makes is a conditional write, so two janitors running at
//! once do each piece of work once.
//!
//! - A deployment whose stage has not moved for longer than the stage's deadline has its pending
//!   event published again (once); if it still has not moved a deadline later, it fails with the
//!   cause. A build that does not report back within its deadline is cancelled and failed.
//! - Revisions beyond the newest few of each service are deleted, never the serving one or the
//!   rollback target; so are the builds of older deployments whose image no revision runs.
//! - Ledger entries (`processed/`) older than a week are deleted.

pub mod sweep;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use devgem_common::function::health_router;
use devgem_common::handler::ApiError;
use devgem_common::ports::Ports;
use devgem_common::ports::builder::Builder;
use devgem_common::ports::runtime::Runtime;
use std::sync::Arc;
use std::time::Duration;

/// The function's name, as `devgem serve janitor` and the Cloud Run service know it.
pub const NAME: &str = "janitor";

/// How long each stage may go without progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub analysis: Duration,
    pub build: Duration,
    pub deploy: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            analysis: Duration::from_secs(120),
            build: Duration::from_secs(30 * 60),
            deploy: Duration::from_secs(600),
        }
    }
}

impl Deadlines {
    /// `DEVGEM_DEADLINE_ANALYSIS`, `DEVGEM_DEADLINE_BUILD`, `DEVGEM_DEADLINE_DEPLOY` (seconds).
    pub fn from_env() -> Self {
        let read = |name: &str, default: Duration| {
            std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok()).map_or(default, Duration::from_secs)
        };
        let defaults = Self::default();
        Self {
            analysis: read("DEVGEM_DEADLINE_ANALYSIS", defaults.analysis),
            build: read("DEVGEM_DEADLINE_BUILD", defaults.build),
            deploy: read("DEVGEM_DEADLINE_DEPLOY", defaults.deploy),
        }
    }
}

/// Everything the function needs, built once by `devgem serve` or `devgem up`.
#[derive(Debug, Clone)]
pub struct AppState {
    pub ports: Ports,
    pub runtime: Arc<dyn Runtime>,
    pub builder: Arc<dyn Builder>,
    pub deadlines: Deadlines,
    /// Revisions kept per service, besides the serving one and the rollback target.
    pub keep_revisions: usize,
}

/// The function's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/run", post(run))
        .with_state(state.clone())
        .merge(health_router(NAME, state.ports.store.clone()))
}

async fn run(State(state): State<AppState>) -> Response {
    match sweep::sweep(&state).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "the janitor's sweep failed");
            ApiError::unavailable("the sweep failed; it runs again on schedule").into_response()
        }
    }
}
