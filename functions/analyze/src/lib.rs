//! The `analyze` function: repo access, detection, Dockerfile, env plan and security scan
//! (pipeline stages 1-5). It holds the analyzer ([`analyzer`]), Dockerfile generation
//! ([`dockerfile`]) and the security scan ([`security`]) that the function, the CLI
//! (`devgem analyze`, `devgem dockerfile`) and the pipeline share, and the event handler
//! ([`pipeline`]) on `POST /push/deployments`.

pub mod analyzer;
pub mod dockerfile;
pub mod pipeline;
pub mod security;

use axum::Router;
use devgem_common::cancel::Cancels;
use devgem_common::events::{ControlEvent, DeploymentRequested};
use devgem_common::function::health_router;
use devgem_common::handler::{PushState, push_route};
use devgem_common::ports::Ports;
use devgem_common::ports::source::{Source, SourceLimits};
use std::path::PathBuf;
use std::sync::Arc;

/// The function's name, as `devgem serve analyze` and the Cloud Run service know it.
pub const NAME: &str = "analyze";

/// Everything the function needs, built once by `devgem serve` or `devgem up`.
#[derive(Debug, Clone)]
pub struct AppState {
    pub ports: Ports,
    pub source: Arc<dyn Source>,
    pub source_limits: SourceLimits,
    /// Where snapshots are fetched for analysis (removed after it).
    pub work_dir: PathBuf,
    /// Analyses running in this process, for aborts.
    pub cancels: Cancels,
}

/// The path the `deployments` subscription pushes to.
pub const PUSH_DEPLOYMENTS: &str = "/push/deployments";
/// The path the function's `control` subscription pushes to.
pub const PUSH_CONTROL: &str = "/push/control";

/// The function's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            PUSH_DEPLOYMENTS,
            push_route(|s: AppState, e: DeploymentRequested| async move { pipeline::on_requested(&s, e).await }),
        )
        .route(
            PUSH_CONTROL,
            push_route(|s: AppState, e: ControlEvent| async move { pipeline::on_control(&s, e).await }),
        )
        .with_state(state.clone())
        .merge(health_router(NAME, state.ports.store.clone()))
}

impl PushState for AppState {
    fn ports(&self) -> &Ports {
        &self.ports
    }
}
