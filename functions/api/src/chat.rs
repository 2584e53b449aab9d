//! `POST /chat`: a message and DevGem's reply in one request, for clients that do not follow the
//! session's events. The message goes in exactly as through `POST /api/sessions/{id}/messages`
//! (`devgem_common::sessions::submit`); the reply is the first assistant `message` of the
//! session after it with the request's correlation id (the chat answers a turn under the id it
//! was sent with), read from the Store's watch.

use crate::AppState;
use crate::handler::{json_body, parse, submit_error};
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use devgem_common::handler::ApiError;
use devgem_common::identity::Caller;
use devgem_common::ids::{CorrelationId, SessionId};
use devgem_common::ports::store::{SessionEvent, SessionEventKind, StoreError};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

/// The body of `POST /chat`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    text: String,
    /// The conversation to continue; a new one when absent.
    #[serde(default)]
    session_id: Option<String>,
    /// The client's id for the message: a resend is shown and answered once.
    #[serde(default)]
    client_message_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Reply {
    text: String,
    seq: u64,
    /// A yes/no question DevGem now waits on, when the reply asks one.
    #[serde(skip_serializing_if = "Option::is_none")]
    question: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ChatAnswer {
    session_id: SessionId,
    correlation_id: CorrelationId,
    /// The reply; absent (with status 202) when it did not come in time.
    #[serde(skip_serializing_if = "Option::is_none")]
    reply: Option<Reply>,
    /// Where the session's events after the message are read.
    events: String,
}

/// `POST /chat`: 200 with the reply, or 202 without it when the chat takes longer than
/// [`AppState::chat_wait`] (it still answers, in the session's events).
pub async fn chat(
    State(state): State<AppState>,
    caller: Caller,
    correlation: Option<axum::Extension<CorrelationId>>,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<ChatAnswer>), ApiError> {
    use devgem_common::sessions::{ChatInput, submit};
    let request = json_body(body)?;
    let session_id = match request.session_id.as_deref() {
        Some(raw) => parse(SessionId::parse(raw))?,
        None => SessionId::generate(),
    };
    let correlation_id = correlation.map(|c| c.0).unwrap_or_else(CorrelationId::generate);
    let input = ChatInput { text: request.text, client_message_id: request.client_message_id };
    let submitted = submit(&state.ports, &caller.user_id, &session_id, input, correlation_id, crate::NAME)
        .await
        .map_err(submit_error)?;
    // A resend already shown has no new seq: its reply may be anywhere in the session.
    let after = submitted.seq.unwrap_or(0);
    let reply =
        match tokio::time::timeout(state.chat_wait, reply(&state, &caller, &session_id, &submitted, after)).await {
            Ok(found) => found?,
            Err(_) => None,
        };
    let status = if reply.is_some() { StatusCode::OK } else { StatusCode::ACCEPTED };
    let reply = reply.map(|event| Reply {
        text: event.data["text"].as_str().unwrap_or_default().to_owned(),
        seq: event.seq,
        question: event.data["question"].as_str().map(str::to_owned),
    });
    Ok((
        status,
        Json(ChatAnswer {
            events: format!("/api/sessions/{session_id}/events?after={after}"),
            session_id,
            correlation_id: submitted.correlation_id,
            reply,
        }),
    ))
}

/// The first assistant message with the message's correlation id after `after`; `None` if the
/// watch ends first.
async fn reply(
    state: &AppState,
    caller: &Caller,
    session: &SessionId,
    submitted: &devgem_common::sessions::Submitted,
    after: u64,
) -> Result<Option<SessionEvent>, StoreError> {
    let mut events = state.ports.store.watch(caller.scope(), session.clone(), after);
    while let Some(event) = events.next().await {
        let event = event?;
        if event.kind == SessionEventKind::Message
            && event.correlation_id == submitted.correlation_id
            && event.data["role"] == "assistant"
        {
            return Ok(Some(event));
        }
    }
    Ok(None)
}
