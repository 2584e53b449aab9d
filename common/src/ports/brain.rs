//! The Brain port: chat completion with tool calls. Adapters: the offline rules engine (default),
//! Gemini API, Vertex AI, OpenAI-compatible endpoints.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

/// One turn of the conversation given to the brain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrainMessage {
    pub role: Role,
    pub content: String,
    /// For `Role::Tool`: which call this answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// A tool the brain may ask for, with a JSON Schema of its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: Value,
}

/// A tool call the brain asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrainRequest {
    pub messages: Vec<BrainMessage>,
    pub tools: Vec<ToolSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrainReply {
    pub text: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    /// Which adapter (and region or model) answered.
    pub provider: String,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrainError {
    #[error("rate limited by {provider}")]
    RateLimited { provider: String },
    #[error("{provider} unavailable: {reason}")]
    Unavailable { provider: String, reason: String },
    #[error("{provider} refused the request: {reason}")]
    Refused { provider: String, reason: String },
}

#[async_trait]
pub trait Brain: Send + Sync + std::fmt::Debug {
    async fn complete(&self, request: BrainRequest) -> Result<BrainReply, BrainError>;
}
