//! The `api` function: DevGem's REST API. Every route except the probe needs a bearer token,
//! and every read is filtered by the caller's owner, so a user never sees another's documents
//! (another user's deployment is a 404, not a 403, so ids do not leak).
//!
//! # Layout
//! - [`router`]: the routes; `handler` holds them.
//! - Routes: `GET /api/me`, `POST /api/users` (admin), `POST /api/users/{id}/tokens`,
//!   `GET /api/deployments`, `GET /api/deployments/{id}`, `GET /api/sessions/{id}/events`.

mod handler;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use devgem_common::function::health_router;
use devgem_common::identity::{Identity, require_bearer};
use devgem_common::ports::Ports;

/// The function's name, as `devgem serve api` and the Cloud Run service know it.
pub const NAME: &str = "api";

/// Request bodies larger than this are refused with 413: the API takes small JSON documents.
pub const MAX_BODY: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct AppState {
    pub ports: Ports,
    pub identity: Identity,
    /// Where secret env values go; documents hold only references.
    pub secrets: std::sync::Arc<dyn devgem_common::ports::secrets::Secrets>,
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/me", get(handler::me))
        .route("/api/users", post(handler::create_user))
        .route("/api/users/{id}/tokens", post(handler::issue_token))
        .route("/api/deployments", get(handler::list_deployments).post(handler::create_deployment))
        .route("/api/deployments/{id}", get(handler::get_deployment))
        .route("/api/deployments/{id}/abort", post(handler::abort_deployment))
        .route("/api/services", get(handler::list_services))
        .route("/api/services/{name}", get(handler::get_service))
        .route("/api/services/{name}/rollback", post(handler::rollback_service))
        .route("/api/sessions/{id}/events", get(handler::session_events))
        .route("/api/sessions/{id}/messages", post(handler::post_message))
        .layer(from_fn_with_state(state.identity.clone(), require_bearer))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state.clone());
    health_router(NAME, state.ports.store.clone()).merge(api)
}

#[cfg(test)]
mod tests;
