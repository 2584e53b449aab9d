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
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use devgem_common::cancel::Cancels;
use devgem_common::envelope::PushRequest;
use devgem_common::events::{ControlEvent, DeploymentRequested};
use devgem_common::function::health_router;
use devgem_common::handler::handle_event;
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
        .route(PUSH_DEPLOYMENTS, post(push_deployment))
        .route(PUSH_CONTROL, post(push_control))
        .with_state(state.clone())
        .merge(health_router(NAME, state.ports.store.clone()))
}

async fn push_deployment(State(state): State<AppState>, request: PushRequest) -> Response {
    let (store, now) = (state.ports.store.clone(), state.ports.clock.now());
    handle_event::<DeploymentRequested, _, _, _>(store.as_ref(), now, request, state, |s, e| async move {
        pipeline::on_requested(&s, e).await
    })
    .await
}

async fn push_control(State(state): State<AppState>, request: PushRequest) -> Response {
    let (store, now) = (state.ports.store.clone(), state.ports.clock.now());
    handle_event::<ControlEvent, _, _, _>(store.as_ref(), now, request, state, |s, e| async move {
        pipeline::on_control(&s, e).await
    })
    .await
}
