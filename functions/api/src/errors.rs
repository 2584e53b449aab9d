//! JSON errors for what no handler answers: unknown routes, wrong methods, bodies over the limit
//! and the framework's own rejections (a query string that does not parse, ...). Handlers answer
//! with [`ApiError`] themselves; this turns every other error response into the same shape.

use axum::extract::Request;
use axum::http::{Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use devgem_common::handler::ApiError;

/// The answer for a path the API does not serve.
pub async fn no_route(method: Method, uri: Uri) -> ApiError {
    no_route_error(&method, uri.path())
}

fn no_route_error(method: &Method, path: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        format!("there is no route {method} {}; the routes are listed at GET /api/openapi.json", shorten(path)),
    )
}

/// Paths and texts echoed back are capped, so a long request does not make a long answer.
fn shorten(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Middleware: an error response that is not JSON (an axum rejection, a 405, a 413) becomes
/// `{"error": {"code", "message"}}` with a message that says what to do. Headers that matter to
/// the client (`Allow`, `WWW-Authenticate`) are kept.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    // Rejections are one short line; anything longer is cut.
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|bytes| shorten(String::from_utf8_lossy(&bytes).trim()))
        .unwrap_or_default();
    let error = match status {
        StatusCode::NOT_FOUND => no_route_error(&method, &path),
        StatusCode::METHOD_NOT_ALLOWED => {
            // The `Allow` header is added outside this middleware; the route list says the same.
            let allowed = allowed_methods(&path).join(", ");
            ApiError::new(
                status,
                "method_not_allowed",
                format!("{} does not take {method}; it takes {allowed}", shorten(&path)),
            )
        }
        StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => unsupported_media_type(),
        StatusCode::UNAUTHORIZED => ApiError::unauthorized(text),
        _ if status.is_client_error() => ApiError::new(
            status,
            "bad_request",
            if text.is_empty() { "the request is not valid; see GET /api/openapi.json".to_owned() } else { text },
        ),
        _ => {
            tracing::error!(%status, %text, "an error response without a body");
            ApiError::new(status, "internal", "internal error")
        }
    };
    let mut json = error.into_response();
    for name in [header::ALLOW, header::WWW_AUTHENTICATE] {
        if let Some(value) = parts.headers.get(&name) {
            json.headers_mut().insert(name, value.clone());
        }
    }
    json
}

/// The methods [`crate::ROUTES`] serve on `path` (`{param}` segments match any one segment).
fn allowed_methods(path: &str) -> Vec<&'static str> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let matches = |pattern: &str| {
        let pattern: Vec<&str> = pattern.split('/').collect();
        pattern.len() == segments.len()
            && pattern.iter().zip(&segments).all(|(p, s)| p == s || (p.starts_with('{') && !s.is_empty()))
    };
    crate::ROUTES.iter().filter(|r| matches(r.path)).map(|r| r.method).collect()
}

/// 413: the body is over [`crate::MAX_BODY`].
pub fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body is over the {} KiB limit; send less", crate::MAX_BODY / 1024),
    )
}

/// 415: a body that is not declared as JSON.
pub fn unsupported_media_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the body as JSON with the header 'Content-Type: application/json'",
    )
}
