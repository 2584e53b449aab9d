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
    /// For `Role::Assistant`: the tool calls it made (the providers need them in the history
    /// that the tool results answer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For `Role::Tool`: which call this answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// For `Role::Tool`: the name of the tool that answered (Gemini's `functionResponse.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
}

impl BrainMessage {
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            tool_name: None,
        }
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self { role: Role::User, ..Self::system(content) }
    }

    pub fn assistant(content: impl Into<String>, tool_calls: Vec<ToolCall>) -> Self {
        Self { role: Role::Assistant, tool_calls, ..Self::system(content) }
    }

    /// The result of `call`, as the tool's answer.
    pub fn tool_result(call: &ToolCall, content: impl Into<String>) -> Self {
        Self {
            role: Role::Tool,
            tool_call_id: Some(call.id.clone()),
            tool_name: Some(call.name.clone()),
            ..Self::system(content)
        }
    }
}

/// Who waits for a completion. When a rate limit is short, lower priorities wait first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    #[default]
    Chat,
    Analyze,
    Deploy,
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
    #[serde(default)]
    pub priority: Priority,
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
    /// The provider's circuit breaker is open after repeated failures; it is tried again later.
    #[error("{provider} is paused after repeated failures; retrying in {retry_in_secs}s")]
    CircuitOpen { provider: String, retry_in_secs: u64 },
}

#[async_trait]
pub trait Brain: Send + Sync + std::fmt::Debug {
    async fn complete(&self, request: BrainRequest) -> Result<BrainReply, BrainError>;
}
