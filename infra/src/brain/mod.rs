//! The Brain port's LLM adapters, and what makes them dependable enough to drive deploys.
//!
//! # Layout
//! - [`gemini`], [`vertex`], [`openai`]: one adapter per API, each a [`Brain`] on its own.
//!   The Gemini API and Vertex AI speak the same `generateContent` format (`generate_content`);
//!   all three share one HTTP exchange (`http`), the one place that decides what a status means.
//! - [`resilience`]: circuit breaker, token budget with priorities, retry backoff.
//! - [`failover`]: [`FailoverBrain`], the Brain the chat is given: providers in order, each
//!   behind its breaker, with fallback notices for the user.
//! - [`config`]: `DEVGEM_BRAIN` and friends → [`BrainConfig`] → [`build`].
//!
//! The offline rules engine, the default when no LLM is configured, is not here: it is the
//! chat's own fast path, which also answers whenever every provider fails.
//!
//! ```ignore
//! let config = BrainConfig::from_env(|k| std::env::var(k).ok())?;
//! let brain: Option<Arc<dyn Brain>> = build(&config, secrets.as_ref(), Some(on_notice)).await?;
//! ```
//!
//! [`Brain`]: devgem_common::ports::brain::Brain

pub mod config;
pub mod failover;
pub mod gemini;
mod generate_content;
mod http;
#[cfg(test)]
mod mock;
pub mod openai;
pub mod resilience;
pub mod vertex;

pub use config::{BrainConfig, BrainConfigError, build};
pub use failover::{FailoverBrain, FailoverPolicy, OnNotice, Provider};
pub use gemini::GeminiBrain;
pub use openai::OpenAiBrain;
pub use vertex::VertexBrain;

/// An id for a tool call whose provider gave none, so its result can say which call it answers.
fn new_call_id() -> String {
    format!("call_{}", uuid::Uuid::new_v4().simple())
}
