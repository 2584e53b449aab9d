//! The `deploy` function: stage 7. `POST /push/releases` (`dev.devgem.release.requested.v1`)
//! creates the revision from the built image (named after the deployment, so once per deployment),
//! verifies that it answers, moves the service's traffic to it and records the result in
//! `services/{owner}-{name}`. A revision that does not start or answer never takes traffic, so
//! the previous one keeps serving. A revision that listens on another port than `$PORT`, and says
//! so in its output, is started again routed to that port ([`repair`]).

pub mod pipeline;
pub mod repair;

use axum::Router;
use devgem_common::cancel::Cancels;
use devgem_common::events::{ControlEvent, ReleaseRequested};
use devgem_common::function::health_router;
use devgem_common::handler::{PushState, push_route};
use devgem_common::ports::Ports;
use devgem_common::ports::runtime::Runtime;
use std::sync::Arc;

/// The function's name, as `devgem serve deploy` and the Cloud Run service know it.
pub const NAME: &str = "deploy";

/// The path the `releases` subscription pushes to.
pub const PUSH_RELEASES: &str = "/push/releases";
/// The path the function's `control` subscription pushes to.
pub const PUSH_CONTROL: &str = "/push/control";

/// Everything the function needs, built once by `devgem serve` or `devgem up`.
#[derive(Debug, Clone)]
pub struct AppState {
    pub ports: Ports,
    pub runtime: Arc<dyn Runtime>,
    /// Releases running in this process, for aborts.
    pub cancels: Cancels,
}

/// The function's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            PUSH_RELEASES,
            push_route(|s: AppState, e: ReleaseRequested| async move { pipeline::on_release(&s, e).await }),
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
