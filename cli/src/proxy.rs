//! `http://<service>.localhost:<port>/` on `devgem up`'s listener: requests for a service's host
//! name go to the revision that serves it (the local runtime's route), everything else to the
//! product. Browsers resolve `*.localhost` to loopback by themselves (RFC 6761).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use devgem_common::handler::ApiError;
use devgem_infra::local::runtime::LocalRuntime;
use http::StatusCode;
use std::sync::OnceLock;
use std::time::Duration;

/// The largest request body forwarded to an app.
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

/// The service label of a `Host` header: `web` of `web.localhost:8080`.
fn service_label(host: &str) -> Option<&str> {
    let name = host
        .rsplit_once(':')
        .map_or(host, |(name, port)| if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host });
    name.strip_suffix(".localhost").filter(|label| !label.is_empty() && !label.contains('.'))
}

pub async fn services(State(runtime): State<LocalRuntime>, request: Request, next: Next) -> Response {
    let host = request.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("").to_owned();
    let Some(label) = service_label(&host).map(str::to_owned) else {
        return next.run(request).await;
    };
    let Some(port) = runtime.port_for(&label).await else {
        return ApiError::not_found(format!(
            "no service {label} is live here; deploy it first, or list yours with GET /api/deployments"
        ))
        .into_response();
    };
    forward(request, port, &host).await
}

async fn forward(request: Request, port: u16, host: &str) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "the request body is over 32 MiB")
            .into_response();
    };
    let mut upstream = client().request(parts.method.clone(), format!("http://127.0.0.1:{port}{path}")).body(body);
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            upstream = upstream.header(name, value);
        }
    }
    upstream = upstream.header("x-forwarded-host", host).header("x-forwarded-proto", "http");
    let response = match upstream.send().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, port, "the app did not answer");
            return ApiError::new(StatusCode::BAD_GATEWAY, "bad_gateway", "the app did not answer; see its logs")
                .into_response();
        }
    };
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap_or_default();
    let mut out = Response::new(Body::from(bytes));
    *out.status_mut() = status;
    for (name, value) in &headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            out.headers_mut().append(name, value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::service_label;

    #[test]
    fn service_labels_come_from_localhost_names_only() {
        assert_eq!(service_label("web.localhost:8080"), Some("web"));
        assert_eq!(service_label("web--bob.localhost"), Some("web--bob"));
        assert_eq!(service_label("localhost:8080"), None);
        assert_eq!(service_label("127.0.0.1:8080"), None);
        assert_eq!(service_label("a.b.localhost:1"), None);
        assert_eq!(service_label("example.com"), None);
    }
}
