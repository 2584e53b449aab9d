//! `sessions/{id}`: a conversation. Its events live in the Store's event log; the document holds
//! what the chat needs to pick the conversation up again, including a question still pending.

use crate::ids::{ServiceName, SessionId, UserId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A question DevGem asked and is waiting on (answered by "yes"/"no" or a button).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PendingQuestion {
    /// "Shall I roll back to revision N?"
    Rollback { service: ServiceName, to_revision: String, alert_id: String },
    /// "Deploy anyway?" after a blocking security finding, and similar confirmations: the chat
    /// tool call that "yes" runs.
    Confirm { tool: String, arguments: serde_json::Value },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    pub owner: UserId,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_question: Option<PendingQuestion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question_text: Option<String>,
}

impl Session {
    pub fn new(id: SessionId, owner: UserId, now: DateTime<Utc>) -> Self {
        Self { id, owner, created_at: now, summary: String::new(), pending_question: None, question_text: None }
    }
}
