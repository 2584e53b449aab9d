//! The `api` function: DevGem's REST API. Every route except the probes and the OpenAPI document
//! needs a bearer token, and every read is filtered by the caller's owner, so a user never sees
//! another's documents (another user's deployment is a 404, not a 403, so ids do not leak).
//!
//! # Layout
//! - [`ROUTES`]: every route (method, path, whether it needs a token). [`router`] is built from
//!   this list, and `openapi.json` (served at `/api/openapi.json`) must describe exactly it: a
//!   test compares them.
//! - `handler`: users, deployments (with their logs and env), services, sessions; `chat`:
//!   `POST /chat`, a message and its reply in one request; `stats`: `GET /stats`.
//! - `errors`: every error is JSON `{"error": {"code", "message"}}`: unknown routes (404), wrong
//!   methods (405), bodies over [`MAX_BODY`] (413) and the framework's own rejections included.

mod chat;
mod errors;
mod handler;
mod stats;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{MethodRouter, any, get, post};
use devgem_common::identity::{Identity, require_bearer};
use devgem_common::ports::Ports;
use devgem_common::ports::runtime::Runtime;
use devgem_common::ports::secrets::Secrets;
use std::sync::Arc;
use std::time::Duration;

/// The function's name, as `devgem serve api` and the Cloud Run service know it.
pub const NAME: &str = "api";

/// Request bodies larger than this are refused with 413: the API takes small JSON documents.
pub const MAX_BODY: usize = 256 * 1024;

/// How long `POST /chat` waits for the reply before answering 202 without it.
pub const CHAT_WAIT: Duration = Duration::from_secs(20);

/// The OpenAPI 3.1 description of [`ROUTES`], served at `GET /api/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

#[derive(Debug, Clone)]
pub struct AppState {
    pub ports: Ports,
    pub identity: Identity,
    /// Where secret env values go; documents hold only references.
    pub secrets: Arc<dyn Secrets>,
    /// Where a deployment's runtime logs are read.
    pub runtime: Arc<dyn Runtime>,
    /// How long `POST /chat` waits for the reply ([`CHAT_WAIT`]; tests shorten it).
    pub chat_wait: Duration,
}

/// One route of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    /// Whether it needs `Authorization: Bearer <token>`.
    pub auth: bool,
}

impl Route {
    const fn public(method: &'static str, path: &'static str) -> Self {
        Self { method, path, auth: false }
    }

    const fn bearer(method: &'static str, path: &'static str) -> Self {
        Self { method, path, auth: true }
    }
}

/// Every route the API serves; `openapi.json` describes exactly these.
pub const ROUTES: &[Route] = &[
    Route::public("GET", "/health"),
    Route::public("GET", "/healthz"),
    Route::public("GET", "/api/openapi.json"),
    Route::bearer("POST", "/chat"),
    Route::bearer("GET", "/stats"),
    Route::bearer("GET", "/api/me"),
    Route::bearer("POST", "/api/users"),
    Route::bearer("POST", "/api/users/{id}/tokens"),
    Route::bearer("GET", "/api/deployments"),
    Route::bearer("POST", "/api/deployments"),
    Route::bearer("GET", "/api/deployments/{id}"),
    Route::bearer("POST", "/api/deployments/{id}/abort"),
    Route::bearer("GET", "/api/deployments/{id}/logs"),
    Route::bearer("GET", "/api/deployments/{id}/env"),
    Route::bearer("POST", "/api/deployments/{id}/env"),
    Route::bearer("POST", "/api/deployments/{id}/rollback"),
    Route::bearer("GET", "/api/services"),
    Route::bearer("GET", "/api/services/{name}"),
    Route::bearer("POST", "/api/services/{name}/rollback"),
    Route::bearer("GET", "/api/sessions/{id}/events"),
    Route::bearer("POST", "/api/sessions/{id}/messages"),
];

/// The handler of a listed route.
fn method_router(route: &Route) -> Option<MethodRouter<AppState>> {
    use handler as h;
    Some(match (route.method, route.path) {
        ("GET", "/health" | "/healthz") => get(h::health),
        ("GET", "/api/openapi.json") => get(h::openapi),
        ("POST", "/chat") => post(chat::chat),
        ("GET", "/stats") => get(stats::stats),
        ("GET", "/api/me") => get(h::me),
        ("POST", "/api/users") => post(h::create_user),
        ("POST", "/api/users/{id}/tokens") => post(h::issue_token),
        ("GET", "/api/deployments") => get(h::list_deployments),
        ("POST", "/api/deployments") => post(h::create_deployment),
        ("GET", "/api/deployments/{id}") => get(h::get_deployment),
        ("POST", "/api/deployments/{id}/abort") => post(h::abort_deployment),
        ("GET", "/api/deployments/{id}/logs") => get(h::deployment_logs),
        ("GET", "/api/deployments/{id}/env") => get(h::deployment_env),
        ("POST", "/api/deployments/{id}/env") => post(h::change_deployment_env),
        ("POST", "/api/deployments/{id}/rollback") => post(h::rollback_deployment),
        ("GET", "/api/services") => get(h::list_services),
        ("GET", "/api/services/{name}") => get(h::get_service),
        ("POST", "/api/services/{name}/rollback") => post(h::rollback_service),
        ("GET", "/api/sessions/{id}/events") => get(h::session_events),
        ("POST", "/api/sessions/{id}/messages") => post(h::post_message),
        _ => return None,
    })
}

/// The API's router: [`ROUTES`], JSON 404s for anything else (under `/api` even when `devgem up`
/// hands other paths to the relay), JSON for every error.
pub fn router(state: AppState) -> Router {
    let mut public = Router::new();
    let mut authed = Router::new();
    for route in ROUTES {
        let Some(handler) = method_router(route) else {
            tracing::error!(method = route.method, path = route.path, "a listed route has no handler");
            continue;
        };
        if route.auth {
            authed = authed.route(route.path, handler);
        } else {
            public = public.route(route.path, handler);
        }
    }
    let authed = authed.layer(from_fn_with_state(state.identity.clone(), require_bearer));
    public
        .route("/api", any(errors::no_route))
        .route("/api/{*rest}", any(errors::no_route))
        .merge(authed)
        .fallback(errors::no_route)
        .layer(from_fn(errors::json_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

#[cfg(test)]
mod tests;
