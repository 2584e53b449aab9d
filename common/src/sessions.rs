//! Sessions as their users reach them: who owns a conversation, and the user's chat input
//! entering it. The relay (WebSocket) and the api (REST) both go through here, so a message is
//! checked, shown and handed to the chat the same way whichever door it came in by.
//!
//! A session belongs to the user who wrote its first event. The Store refuses an append by
//! anyone else as well; the check here is what lets the doors answer "not yours" before writing.

use crate::events::{ChatTurn, EventContext};
use crate::ids::{CorrelationId, SessionId, UserId};
use crate::ledger::{Once, once_in_tx};
use crate::ports::Ports;
use crate::ports::bus::BusExt;
use crate::ports::store::{NewEvent, Scope, SessionEventKind, Store, StoreError, Write};

/// The longest chat message accepted, in bytes.
pub const MAX_MESSAGE: usize = 8 * 1024;

/// The longest client message id accepted.
const MAX_CLIENT_MESSAGE_ID: usize = 128;

/// The owner of `session`: the writer of its first event, `None` while it has none.
pub async fn owner(store: &dyn Store, session: &SessionId) -> Result<Option<UserId>, StoreError> {
    let first = store.events_after(&Scope::All, session, 0, 1).await?;
    Ok(first.into_iter().next().map(|event| event.owner))
}

/// Whether `user` may read and write `session`: theirs, or not started yet.
pub async fn may_use(store: &dyn Store, session: &SessionId, user: &UserId) -> Result<bool, StoreError> {
    Ok(owner(store, session).await?.is_none_or(|owner| owner == *user))
}

/// A chat message as a user sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatInput {
    pub text: String,
    /// The client's id for the message: a resend after a reconnect is shown and answered once.
    pub client_message_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The input is not acceptable; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// Another user's session (or one this user may not see): answered like a missing one.
    #[error("session {0} not found; start a new session")]
    NotYours(SessionId),
    /// The message is shown but could not reach the chat; sending it again is safe.
    #[error("the message is shown but could not reach the chat; send it again")]
    Unavailable,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What became of a submitted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub correlation_id: CorrelationId,
    /// The seq of the echoed message in the session; `None` for a resend already shown.
    pub seq: Option<u64>,
}

/// Checks `input`, shows it in `session` as the user's message (secret values masked) and
/// publishes the chat turn. A resend with the same `client_message_id` is not shown twice, but
/// is published again: the chat answers a turn once, and the first publish may have failed.
pub async fn submit(
    ports: &Ports,
    user: &UserId,
    session: &SessionId,
    input: ChatInput,
    correlation_id: CorrelationId,
    source: &str,
) -> Result<Submitted, SubmitError> {
    let text = input.text.trim();
    if text.is_empty() || text.len() > MAX_MESSAGE {
        return Err(SubmitError::Invalid(format!("a message has 1 to {MAX_MESSAGE} bytes of text")));
    }
    if let Some(id) = &input.client_message_id {
        let ok = !id.is_empty()
            && id.len() <= MAX_CLIENT_MESSAGE_ID
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
        if !ok {
            return Err(SubmitError::Invalid(format!(
                "client_message_id has 1 to {MAX_CLIENT_MESSAGE_ID} letters, digits or - _ . :"
            )));
        }
    }
    if !may_use(ports.store.as_ref(), session, user).await? {
        return Err(SubmitError::NotYours(session.clone()));
    }
    let shown = Write::Append {
        session: session.clone(),
        owner: user.clone(),
        events: vec![NewEvent {
            kind: SessionEventKind::Message,
            correlation_id: correlation_id.clone(),
            // Shown and stored with secret values masked; the turn carries them to the chat only.
            data: serde_json::json!({
                "role": "user",
                "text": crate::deployments::redact_secret_values(text),
            }),
        }],
    };
    let now = ports.clock.now();
    let seq = match &input.client_message_id {
        Some(id) => match once_in_tx(ports.store.as_ref(), &format!("shown-{session}-{id}"), now, vec![shown]).await {
            Ok(Once::Applied(committed)) => committed.and_then(|c| appended_seq(&c)),
            Ok(Once::AlreadyDone(_)) => None,
            Err(e) => return Err(refused_or(e, session)),
        },
        None => {
            let committed = ports.store.commit(vec![shown]).await.map_err(|e| refused_or(e, session))?;
            appended_seq(&committed)
        }
    };
    let turn = ChatTurn {
        session_id: session.clone(),
        user_id: user.clone(),
        text: text.to_owned(),
        client_message_id: input.client_message_id,
    };
    let ctx = EventContext::new(source, correlation_id.clone());
    ports.bus.publish_event(&turn, &ctx, now).await.map_err(|e| {
        tracing::error!(error = %e, %session, "a chat turn was not published");
        SubmitError::Unavailable
    })?;
    Ok(Submitted { correlation_id, seq })
}

fn appended_seq(committed: &crate::ports::store::Committed) -> Option<u64> {
    committed.results.iter().find_map(|r| match r {
        crate::ports::store::WriteResult::Appended { first_seq, .. } => Some(*first_seq),
        _ => None,
    })
}

/// The Store refuses an append to another user's session; that is "not yours", not a failure.
fn refused_or(e: StoreError, session: &SessionId) -> SubmitError {
    match e {
        StoreError::Forbidden(_) => SubmitError::NotYours(session.clone()),
        e => SubmitError::Store(e),
    }
}
