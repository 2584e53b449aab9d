//! `http://<service>.localhost:<port>/` on `devgem up`'s listener: requests for a service's host
//! name go to the revision that serves it (the local runtime's route), everything else to the
//! product. Browsers resolve `*.localhost` to loopback by themselves (RFC 6761).

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use devgem_common::handler::ApiError;
use devgem_infra::local::runtime::LocalRuntime;
use devgem_relay::upstream::{Upstream, forward};

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
    let base = format!("http://127.0.0.1:{port}");
    let upstream = Upstream {
        base: &base,
        forwarded_host: &host,
        forwarded_proto: "http",
        unreachable: "the app did not answer; see its logs",
    };
    forward(request, upstream).await
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
