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

pub mod feed;
pub mod ui;
pub mod ws;

use axum::Router;
use axum::routing::get;
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
}

impl AppState {
    pub fn new(ports: Ports, identity: Identity, settings: RelaySettings) -> Self {
        let feeds = feed::Feeds::new(ports.store.clone(), settings.queue);
        Self { ports, identity, settings, feeds }
    }
}

/// The function's routes: `/ws/chat`, the UI at `/` and `/ui/{file}`, and the probe.
pub fn router(state: AppState) -> Router {
    let ui = Router::new()
        .route("/", get(ui::index))
        .route("/ui/{name}", get(ui::asset))
        .with_state(ui::UiFiles::from_env());
    let ws = Router::new().route("/ws/chat", get(ws::upgrade)).with_state(state.clone());
    health_router(NAME, state.ports.store.clone()).merge(ui).merge(ws)
}
