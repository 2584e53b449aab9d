//! The one place that decides what a handler's outcome means for delivery, and the JSON error
//! every HTTP function returns.
//!
//! Ack policy (DESIGN.md): 102/200/201/202/204 ack; anything else is redelivered with backoff
//! until the subscription's maximum attempts, then dead-lettered. A permanently bad event is not
//! retried: it is recorded in `rejected/{message-id}` with its reason and acked with 200.

use crate::envelope::{Decode, PushEnvelope, PushRequest};
use crate::ids::UserId;
use crate::ports::store::{DocKey, Scope, Store, StoreError, Write};
use axum::Json;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::Serialize;
use std::future::Future;
use tracing::Instrument;

/// How a handler failed. Each variant has exactly one delivery outcome.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The event can never be handled (bad payload, refers to nothing). Recorded, acked.
    #[error("poison event: {0}")]
    Poison(String),
    /// Try again later (an unavailable dependency). 503: redelivered with backoff.
    #[error("transient failure: {0}")]
    Transient(String),
    /// Someone else changed the document first: re-read and decide again ([`retry_conflicts`]
    /// does it at once; left over, it is a 503 like `Transient`).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A bug or an unexpected state. 500: redelivered, and dead-lettered if it persists.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for HandlerError {
    fn from(e: StoreError) -> Self {
        if e.is_conflict() {
            Self::Conflict(e.to_string())
        } else if e.is_transient() {
            Self::Transient(e.to_string())
        } else {
            Self::Internal(e.to_string())
        }
    }
}

/// The push route of an event handler: decodes the push, runs `handler(state, payload)` (again at
/// once on conflicts, see [`retry_conflicts`]) and answers with the status that acks, retries
/// or rejects the delivery.
pub async fn handle_event<T, S, F, Fut>(
    store: &dyn Store,
    now: DateTime<Utc>,
    request: PushRequest,
    state: S,
    handler: F,
) -> Response
where
    T: Decode + Clone,
    S: Clone,
    F: Fn(S, T) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    handle_push::<T, _, _>(store, now, request, |envelope| async move {
        retry_conflicts(|| handler(state.clone(), envelope.payload.clone())).await
    })
    .await
}

/// A function's state, as its push routes need it.
pub trait PushState: Clone + Send + Sync + 'static {
    fn ports(&self) -> &crate::ports::Ports;
}

/// The `POST` route of an event handler: `handler(state, payload)` through [`handle_event`].
pub fn push_route<S, T, F, Fut>(handler: F) -> axum::routing::MethodRouter<S>
where
    S: PushState,
    T: Decode + Clone + Send + Sync + 'static,
    F: Fn(S, T) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    axum::routing::post(move |axum::extract::State(state): axum::extract::State<S>, request: PushRequest| {
        let handler = handler.clone();
        async move {
            let (store, now) = (state.ports().store.clone(), state.ports().clock.now());
            handle_event::<T, _, _, _>(store.as_ref(), now, request, state, handler).await
        }
    })
}

/// Like [`push_route`], for handlers that continue the story of the event they handle: the
/// handler also gets the event's `correlation_id` (a new one if the event came without).
pub fn correlated_push_route<S, T, F, Fut>(handler: F) -> axum::routing::MethodRouter<S>
where
    S: PushState,
    T: Decode + Clone + Send + Sync + 'static,
    F: Fn(S, T, crate::ids::CorrelationId) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    axum::routing::post(move |axum::extract::State(state): axum::extract::State<S>, request: PushRequest| {
        let handler = handler.clone();
        async move {
            let (store, now) = (state.ports().store.clone(), state.ports().clock.now());
            handle_push::<T, _, _>(store.as_ref(), now, request, |envelope| async move {
                let correlation_id = envelope
                    .event
                    .and_then(|meta| meta.correlation_id)
                    .unwrap_or_else(crate::ids::CorrelationId::generate);
                retry_conflicts(|| handler(state.clone(), envelope.payload.clone(), correlation_id.clone())).await
            })
            .await
        }
    })
}

/// Runs `attempt` again, up to 5 times, while it fails on a conflict: another handler moved the
/// document first, and re-reading now is better than a redelivery's backoff (which would also
/// hold back the messages ordered after this one).
pub async fn retry_conflicts<F, Fut>(mut attempt: F) -> Result<(), HandlerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    let mut outcome = attempt().await;
    for _ in 0..4 {
        match outcome {
            Err(HandlerError::Conflict(_)) => outcome = attempt().await,
            done => return done,
        }
    }
    outcome
}

/// The document recorded for a poison event.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RejectedEvent {
    pub message_id: String,
    pub subscription: Option<String>,
    pub reason: String,
    pub attributes: std::collections::BTreeMap<String, String>,
    /// The first 4 KiB of the data, base64, enough to see what was wrong.
    pub data_head: String,
    pub rejected_at: DateTime<Utc>,
}

/// Records `request` as poison in `rejected/{message-id}`. Idempotent: a redelivered poison
/// event finds its record and is acked again.
pub async fn reject(
    store: &dyn Store,
    request: &PushRequest,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let key = DocKey::new("rejected", request.message.message_id.clone())?;
    let head = &request.message.data[..request.message.data.len().min(4096)];
    let record = RejectedEvent {
        message_id: request.message.message_id.clone(),
        subscription: request.subscription.clone(),
        reason: reason.to_owned(),
        attributes: request.message.attributes.clone(),
        data_head: base64::engine::general_purpose::STANDARD.encode(head),
        rejected_at: now,
    };
    let data = crate::ports::store::to_data(&record)?;
    match store.commit(vec![Write::Create { key, owner: UserId::system(), data }]).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_conflict() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads a rejected record (for tests, the janitor and `/stats`).
pub async fn rejected(store: &dyn Store, message_id: &str) -> Result<Option<RejectedEvent>, StoreError> {
    let key = DocKey::new("rejected", message_id)?;
    store.get(&Scope::All, &key).await?.map(|d| d.parse()).transpose()
}

/// Runs `handle` on the decoded payload of a push request and turns the outcome into the
/// status that acks, retries or rejects it. Every log line inside carries the message id, the
/// event type and the correlation id.
pub async fn handle_push<T, F, Fut>(store: &dyn Store, now: DateTime<Utc>, request: PushRequest, handle: F) -> Response
where
    T: Decode,
    F: FnOnce(PushEnvelope<T>) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    let message_id = request.message.message_id.clone();
    let attempt = request.delivery_attempt.unwrap_or(1);
    let event_type = request.message.attributes.get("ce-type").cloned().unwrap_or_default();
    let correlation_id = request.message.attributes.get("correlation_id").cloned().unwrap_or_default();
    let span = tracing::info_span!("event", %message_id, %event_type, %correlation_id, attempt);
    async move {
        let outcome = match PushEnvelope::<T>::decode(request.clone()) {
            Ok(envelope) => handle(envelope).await,
            Err(e) => Err(HandlerError::Poison(e.to_string())),
        };
        match outcome {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(HandlerError::Poison(reason)) => {
                tracing::warn!(%reason, "rejecting poison event");
                match reject(store, &request, &reason, now).await {
                    Ok(()) => StatusCode::OK.into_response(),
                    Err(e) => {
                        tracing::error!(error = %e, "could not record poison event; will be redelivered");
                        ApiError::unavailable("could not record the rejected event").into_response()
                    }
                }
            }
            Err(HandlerError::Transient(reason) | HandlerError::Conflict(reason)) => {
                tracing::info!(%reason, "transient failure; asking for redelivery");
                ApiError::unavailable(&reason).into_response()
            }
            Err(HandlerError::Internal(reason)) => {
                tracing::error!(%reason, "handler failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error").into_response()
            }
        }
    }
    .instrument(span)
    .await
}

/// The JSON error every HTTP function returns: `{"error": {"code", "message"}}`. The message is
/// for the user and says what to do; causes are logged, not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unavailable(message: &str) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("{message}; try again shortly"))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::NotFound(what) => Self::not_found(format!("{what} not found")),
            StoreError::Invalid(why) => Self::bad_request(why.clone()),
            // Another user's document: answered like a missing one, so ids do not leak.
            StoreError::Forbidden(what) => Self::not_found(format!("{what} not found")),
            StoreError::Conflict { .. } => {
                Self::new(StatusCode::CONFLICT, "conflict", "the resource changed meanwhile; retry the request")
            }
            StoreError::Unavailable(_) => Self::unavailable("storage is unavailable"),
            _ => {
                tracing::error!(error = %e, "store failure");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: &self.message } };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod retry_tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn conflicts_are_retried_at_once_and_other_outcomes_are_not() {
        let calls = AtomicU32::new(0);
        let outcome = retry_conflicts(|| async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 { Err(HandlerError::Conflict("moved".into())) } else { Ok(()) }
        })
        .await;
        assert!(outcome.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicU32::new(0);
        let outcome = retry_conflicts(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(HandlerError::Conflict("always".into()))
        })
        .await;
        assert!(matches!(outcome, Err(HandlerError::Conflict(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 5, "bounded");

        let calls = AtomicU32::new(0);
        let outcome = retry_conflicts(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(HandlerError::Transient("down".into()))
        })
        .await;
        assert!(matches!(outcome, Err(HandlerError::Transient(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
