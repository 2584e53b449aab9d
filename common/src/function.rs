//! What every function's router has in common: the `/healthz` probe that `devgem up`'s
//! `/health` and Cloud Run's liveness checks call. It is a real check: it answers only when the
//! function's router runs and its store answers.

use crate::ports::store::Store;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
use serde::Serialize;
use std::sync::Arc;

/// The internal probe route of every function.
pub const HEALTHZ: &str = "/healthz";

#[derive(Debug, Serialize)]
struct Health<'a> {
    function: &'a str,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// A router with only [`HEALTHZ`]; functions merge their own routes into it.
pub fn health_router(function: &'static str, store: Arc<dyn Store>) -> Router {
    Router::new().route(HEALTHZ, get(healthz)).with_state((function, store))
}

async fn healthz(State((function, store)): State<(&'static str, Arc<dyn Store>)>) -> Response {
    probe(function, store.as_ref()).await
}

/// The probe's answer: 200 `{"function", "ok": true}` when `store` answers, 503 otherwise. For
/// a function that serves the probe on another path too (the api's public `/health`).
pub async fn probe(function: &'static str, store: &dyn Store) -> Response {
    match store.ping().await {
        Ok(()) => Json(Health { function, ok: true, error: None }).into_response(),
        Err(e) => {
            tracing::warn!(function, error = %e, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health { function, ok: false, error: Some("store unavailable".into()) }),
            )
                .into_response()
        }
    }
}

/// The header a correlation id travels in over HTTP.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// Middleware: gives every request a correlation id (the caller's `x-correlation-id` if valid,
/// else a new one), puts it in the request's extensions and the response's headers, and runs
/// the request inside a span carrying it, so every log line of the request has it.
pub async fn correlate(mut request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use crate::ids::CorrelationId;
    use tracing::Instrument;
    let correlation_id = request
        .headers()
        .get(CORRELATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| CorrelationId::parse(v).ok())
        .unwrap_or_else(CorrelationId::generate);
    request.extensions_mut().insert(correlation_id.clone());
    let span =
        tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), %correlation_id);
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = http::HeaderValue::from_str(correlation_id.as_str()) {
        response.headers_mut().insert(CORRELATION_HEADER, value);
    }
    response
}
