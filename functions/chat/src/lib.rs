//! The `chat` function: a user's messages turned into answers and actions.
//!
//! - `POST /push/chat-turns` (`dev.devgem.chat.turn.v1`): one message answered ([`turn`]): a
//!   yes/no to the session's pending question, the rules' fast path ([`intent`], [`rules`]) for
//!   clear intents, the configured LLM ([`AppState::brain`]) for the rest, all through the same
//!   [`tools`] and the same guard on side effects.
//! - `POST /push/alerts` (`dev.devgem.monitor.alert.v1`): an alert told, with a rollback question.
//!
//! # Layout
//! - [`intent`]: the user's words read by rules; [`rules`]: the offline [`Brain`] built on them.
//! - [`tools`]: the tools, their JSON Schemas and the side-effect guard; [`inspect`]:
//!   `clone_and_analyze`.
//! - [`turn`]: the conversation loop, pending questions, LLM fallback.
//! - [`alerts`]: the monitor's alerts told in the chat, with the rollback question.

pub mod alerts;
pub mod inspect;
pub mod intent;
pub mod rules;
pub mod tools;
pub mod turn;

use axum::Router;
use devgem_common::events::{ChatTurn, MonitorAlert};
use devgem_common::function::health_router;
use devgem_common::handler::{PushState, correlated_push_route};
use devgem_common::ports::Ports;
use devgem_common::ports::brain::Brain;
use devgem_common::ports::runtime::Runtime;
use devgem_common::ports::secrets::Secrets;
use devgem_common::ports::source::{Source, SourceLimits};
use std::path::PathBuf;
use std::sync::Arc;

/// The function's name, as `devgem serve chat` and the Cloud Run service know it.
pub const NAME: &str = "chat";

/// The path the `chat-turns` subscription pushes to.
pub const PUSH_CHAT_TURNS: &str = "/push/chat-turns";

/// The path the `alerts` subscription pushes to.
pub const PUSH_ALERTS: &str = "/push/alerts";

/// Everything the function needs, built once by `devgem serve` or `devgem up`.
#[derive(Debug, Clone)]
pub struct AppState {
    pub ports: Ports,
    pub secrets: Arc<dyn Secrets>,
    pub runtime: Arc<dyn Runtime>,
    /// `clone_and_analyze` fetches through it, with the same guard and limits as a deploy.
    pub source: Arc<dyn Source>,
    pub source_limits: SourceLimits,
    /// Where fetched repositories are read (and removed afterwards).
    pub work_dir: PathBuf,
    /// The LLM for messages the rules do not read; `None`: the rules answer everything.
    pub brain: Option<Arc<dyn Brain>>,
}

/// The function's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            PUSH_CHAT_TURNS,
            correlated_push_route(|s: AppState, e: ChatTurn, c| async move { turn::on_turn(&s, e, c).await }),
        )
        .route(
            PUSH_ALERTS,
            correlated_push_route(|s: AppState, e: MonitorAlert, c| async move { alerts::on_alert(&s, e, c).await }),
        )
        .with_state(state.clone())
        .merge(health_router(NAME, state.ports.store.clone()))
}

impl PushState for AppState {
    fn ports(&self) -> &Ports {
        &self.ports
    }
}
