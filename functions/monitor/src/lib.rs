//! The `monitor` function: turns the deployed services' log entries into alerts.
//!
//! Today its router answers the `/healthz` probe; its event handlers arrive with their issue
//! (see README.md), mounted on the routes named there.

use axum::Router;
use devgem_common::function::health_router;
use devgem_common::ports::Ports;

/// The function's name, as `devgem serve monitor` and the Cloud Run service know it.
pub const NAME: &str = "monitor";

/// Everything the function needs, built once by `devgem serve` or `devgem up`.
#[derive(Debug, Clone)]
pub struct AppState {
    pub ports: Ports,
}

/// The function's routes.
pub fn router(state: AppState) -> Router {
    health_router(NAME, state.ports.store.clone())
}
