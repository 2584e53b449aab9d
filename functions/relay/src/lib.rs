//! The `relay` function: the WebSocket relay (`/ws/chat`, docs/protocol.md) and the web UI.
//!
//! It is thin and keeps no state of its own: it authenticates a socket, hands chat input to the
//! chat as `chat.turn` events, and streams the session's events from the Store's watch. Any
//! number of relay instances can serve, and a client resumes on any of them.
//!
//! # Layout
//! - [`ws`]: one socket's life: auth, backlog, live events, chat input, heartbeat.
//! - [`feed`]: one Store watch per session, fanned out to its sockets through a bounded channel.
//! - [`ui`]: the single-page UI's files, built in (or read from `DEVGEM_UI_DIR`).
//! - [`upstream`]: forwarding requests to another server. On GCP the UI's `/api/*`, `/chat` and
//!   `/stats` requests reach the relay (the UI's origin) and are forwarded to the api service
//!   (`DEVGEM_API_URL`); `devgem up` serves both on one listener and never forwards.

pub mod feed;
pub mod ui;
pub mod upstream;
pub mod ws;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{any, get};
use devgem_common::function::health_router;
use devgem_common::identity::Identity;
use devgem_common::ports::Ports;

pub use ws::RelaySettings;

/// The function's name, as `devgem serve relay` and the Cloud Run service know it.
pub const NAME: &str = "relay";

/// Everything the function needs, built once by `devgem serve` or `devgem up`.
#[derive(Debug, Clone)]
pub struct AppState {
    pub ports: Ports,
    pub identity: Identity,
    pub settings: RelaySettings,
    pub feeds: feed::Feeds,
    /// The api service's base URL (`DEVGEM_API_URL`), when it runs elsewhere.
    pub api_url: Option<String>,
}

impl AppState {
    pub fn new(ports: Ports, identity: Identity, settings: RelaySettings) -> Self {
        let feeds = feed::Feeds::new(ports.store.clone(), settings.queue);
        Self { ports, identity, settings, feeds, api_url: None }
    }

    /// Forwards the api's paths to `url`.
    pub fn with_api_url(mut self, url: Option<String>) -> Self {
        self.api_url = url.filter(|u| !u.trim().is_empty());
        self
    }
}

/// The paths the api function serves, forwarded when it runs elsewhere.
const API_PATHS: [&str; 4] = ["/api", "/api/{*rest}", "/chat", "/stats"];

/// The api's paths, forwarded to `api_url` (a trailing `/` dropped: paths bring their own).
fn api_forwarder(api_url: String) -> Router {
    let api_url = api_url.trim().trim_end_matches('/').to_owned();
    API_PATHS.iter().fold(Router::new(), |api, path| api.route(path, any(to_api))).with_state(api_url)
}

async fn to_api(State(api_url): State<String>, request: Request) -> Response {
    let host = request.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("").to_owned();
    let upstream = upstream::Upstream {
        base: &api_url,
        forwarded_host: &host,
        forwarded_proto: "https",
        unreachable: "the DevGem api did not answer; try again in a moment",
    };
    upstream::forward(request, upstream).await
}

/// The function's routes: `/ws/chat`, the UI at `/` and `/ui/{file}`, the probe, and the api's
/// paths forwarded when [`AppState::api_url`] is set.
pub fn router(state: AppState) -> Router {
    let ui = Router::new()
        .route("/", get(ui::index))
        .route("/ui/{name}", get(ui::asset))
        .with_state(ui::UiFiles::from_env());
    let ws = Router::new().route("/ws/chat", get(ws::upgrade)).with_state(state.clone());
    let mut router = health_router(NAME, state.ports.store.clone()).merge(ui).merge(ws);
    if let Some(api_url) = state.api_url.clone() {
        router = router.merge(api_forwarder(api_url));
    }
    router
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::HeaderMap;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    /// A stand-in api that echoes what reached it.
    async fn echo_api() -> (String, tokio::task::JoinHandle<()>) {
        async fn echo(headers: HeaderMap, request: Request) -> String {
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
            let host = headers.get("x-forwarded-host").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
            let (parts, body) = request.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            format!("{} {} auth={auth} host={host} body={}", parts.method, parts.uri, String::from_utf8_lossy(&body))
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, Router::new().fallback(echo)).await;
        });
        (url, task)
    }

    async fn send(router: &Router, request: http::Request<Body>) -> (http::StatusCode, String) {
        let response = router.clone().oneshot(request).await.unwrap_or_else(|e| match e {});
        let status = response.status();
        let body = response.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn the_apis_paths_are_forwarded_with_their_method_query_headers_and_body() {
        let (url, _api) = echo_api().await;
        let router = api_forwarder(format!("{url}/"));
        let get = http::Request::get("/api/deployments?limit=5")
            .header("authorization", "Bearer t0k3n")
            .header("host", "relay.example")
            .body(Body::empty())
            .expect("request");
        let (status, body) = send(&router, get).await;
        assert_eq!(status, 200);
        assert_eq!(body, "GET /api/deployments?limit=5 auth=Bearer t0k3n host=relay.example body=");
        let post = http::Request::post("/chat").body(Body::from(r#"{"message":"hi"}"#)).expect("request");
        let (_, body) = send(&router, post).await;
        assert!(body.starts_with("POST /chat ") && body.ends_with(r#"body={"message":"hi"}"#), "{body}");
        let (_, body) = send(&router, http::Request::get("/stats").body(Body::empty()).expect("request")).await;
        assert!(body.starts_with("GET /stats "), "{body}");
        // Only the api's paths: the relay's own stay its own.
        let (status, _) = send(&router, http::Request::get("/ws/chat").body(Body::empty()).expect("request")).await;
        assert_eq!(status, 404);
    }

    #[tokio::test]
    async fn an_api_that_does_not_answer_is_a_502_that_says_so() {
        let (url, api) = echo_api().await;
        api.abort();
        let _ = api.await;
        let router = api_forwarder(url);
        let (status, body) = send(&router, http::Request::get("/api/me").body(Body::empty()).expect("request")).await;
        assert_eq!(status, 502);
        assert!(body.contains("the DevGem api did not answer"), "{body}");
    }
}
