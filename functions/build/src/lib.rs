//! The `build` function: submits builds and handles their completion (stage 6).
//!
//! - `POST /push/builds` (`dev.devgem.build.requested.v1`): submits the deployment's build once
//!   per attempt (ledger `build-{deployment}`, `-r{n}` after a repair) and records its id.
//! - `POST /push/cloud-builds` (Cloud Build notifications, from Cloud Build or the local
//!   builder): progress while it runs; on success the release request; on a failure that a
//!   missing system package explains, a rebuild with it ([`repair`]), otherwise the cause and
//!   the log's last lines.

pub mod pipeline;
pub mod repair;

use axum::Router;
use devgem_common::events::cloud_build::CloudBuildNotification;
use devgem_common::events::{BuildRequested, ControlEvent};
use devgem_common::function::health_router;
use devgem_common::handler::{PushState, push_route};
use devgem_common::ports::Ports;
use devgem_common::ports::builder::Builder;
use std::sync::Arc;

/// The function's name, as `devgem serve build` and the Cloud Run service know it.
pub const NAME: &str = "build";

/// The path the `builds` subscription pushes to.
pub const PUSH_BUILDS: &str = "/push/builds";
/// The path the `cloud-builds` subscription pushes to.
pub const PUSH_CLOUD_BUILDS: &str = "/push/cloud-builds";
/// The path the function's `control` subscription pushes to.
pub const PUSH_CONTROL: &str = "/push/control";

/// Everything the function needs, built once by `devgem serve` or `devgem up`.
#[derive(Debug, Clone)]
pub struct AppState {
    pub ports: Ports,
    pub builder: Arc<dyn Builder>,
}

/// The function's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            PUSH_BUILDS,
            push_route(|s: AppState, e: BuildRequested| async move { pipeline::on_build_requested(&s, e).await }),
        )
        .route(
            PUSH_CLOUD_BUILDS,
            push_route(|s: AppState, e: CloudBuildNotification| async move { pipeline::on_cloud_build(&s, e).await }),
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
