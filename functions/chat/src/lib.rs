//! The `chat` function: a user's messages turned into answers and actions.
//!
//! - `POST /push/chat-turns` (`dev.devgem.chat.turn.v1`): the fast path ([`intent`], rules, no
//!   LLM) answers help, status, list, why-did-it-fail and logs, and starts deploys, aborts and
//!   rollbacks asked for in the user's own words ([`turn`]). The LLM brains arrive with the rest
//!   of the chat issue.

pub mod intent;
pub mod turn;

use axum::Router;
use devgem_common::events::ChatTurn;
use devgem_common::function::health_router;
use devgem_common::handler::{PushState, push_route};
use devgem_common::ports::Ports;
use devgem_common::ports::runtime::Runtime;
use devgem_common::ports::secrets::Secrets;
use std::sync::Arc;

/// The function's name, as `devgem serve chat` and the Cloud Run service know it.
pub const NAME: &str = "chat";

/// The path the `chat-turns` subscription pushes to.
pub const PUSH_CHAT_TURNS: &str = "/push/chat-turns";

/// Everything the function needs, built once by `devgem serve` or `devgem up`.
#[derive(Debug, Clone)]
pub struct AppState {
    pub ports: Ports,
    pub secrets: Arc<dyn Secrets>,
    pub runtime: Arc<dyn Runtime>,
}

/// The function's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(PUSH_CHAT_TURNS, push_route(|s: AppState, e: ChatTurn| async move { turn::on_turn(&s, e).await }))
        .with_state(state.clone())
        .merge(health_router(NAME, state.ports.store.clone()))
}

impl PushState for AppState {
    fn ports(&self) -> &Ports {
        &self.ports
    }
}
