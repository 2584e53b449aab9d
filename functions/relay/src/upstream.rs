//! Forwarding an HTTP request to another server and its answer back: the relay's `/api/*` to the
//! api service on Cloud Run (`DEVGEM_API_URL`), and `devgem up`'s `<service>.localhost` hosts to
//! the local revision that serves them. Bodies are bounded; hop-by-hop headers stay behind.

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use devgem_common::handler::ApiError;
use http::StatusCode;
use std::sync::OnceLock;
use std::time::Duration;

/// The largest request body forwarded.
const MAX_BODY: usize = 32 * 1024 * 1024;

/// Headers that belong to one connection, not to the request (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap_or_default()
    })
}

/// Where a request goes and how it is described to the user when it does not answer.
#[derive(Debug, Clone, Copy)]
pub struct Upstream<'a> {
    /// `http://127.0.0.1:8081` or `https://api-abc-ew.a.run.app`: no trailing slash.
    pub base: &'a str,
    /// The `Host` the client asked for, passed on as `X-Forwarded-Host`.
    pub forwarded_host: &'a str,
    /// `http` or `https`, passed on as `X-Forwarded-Proto`.
    pub forwarded_proto: &'a str,
    /// Shown when the upstream does not answer: "the app did not answer; see its logs".
    pub unreachable: &'static str,
}

/// Sends `request` (its path and query appended to the upstream's base) and returns the answer.
pub async fn forward(request: Request, upstream: Upstream<'_>) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "the request body is over 32 MiB")
            .into_response();
    };
    let mut outgoing = client().request(parts.method.clone(), format!("{}{path}", upstream.base)).body(body);
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            outgoing = outgoing.header(name, value);
        }
    }
    outgoing = outgoing
        .header("x-forwarded-host", upstream.forwarded_host)
        .header("x-forwarded-proto", upstream.forwarded_proto);
    let response = match outgoing.send().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, upstream = upstream.base, "the upstream did not answer");
            return ApiError::new(StatusCode::BAD_GATEWAY, "bad_gateway", upstream.unreachable).into_response();
        }
    };
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = match response.bytes().await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(error = %e, upstream = upstream.base, "the upstream's answer broke off");
            return ApiError::new(StatusCode::BAD_GATEWAY, "bad_gateway", upstream.unreachable).into_response();
        }
    };
    let mut out = Response::new(Body::from(bytes));
    *out.status_mut() = status;
    for (name, value) in &headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            out.headers_mut().append(name, value.clone());
        }
    }
    out
}
