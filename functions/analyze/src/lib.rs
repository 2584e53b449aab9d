//! The `analyze` function: repo access, detection, Dockerfile, env plan and security scan
//! (pipeline stages 1-5). Today it holds the analyzer ([`analyzer`]) and Dockerfile generation
//! ([`dockerfile`]) that the function, the CLI (`devgem analyze`, `devgem dockerfile`) and the
//! pipeline share; its event handlers arrive with the pipeline
//! issue (see README.md).

pub mod analyzer;
pub mod dockerfile;

use axum::Router;
use devgem_common::function::health_router;
use devgem_common::ports::Ports;

/// The function's name, as `devgem serve analyze` and the Cloud Run service know it.
pub const NAME: &str = "analyze";

/// Everything the function needs, built once by `devgem serve` or `devgem up`.
#[derive(Debug, Clone)]
pub struct AppState {
    pub ports: Ports,
}

/// The function's routes.
pub fn router(state: AppState) -> Router {
    health_router(NAME, state.ports.store.clone())
}
