//! Push deliveries, decoded once at the edge into typed envelopes.
//!
//! A function accepts both delivery forms on the same route:
//! - a Pub/Sub push request: `{"message": {...}, "subscription", "deliveryAttempt"}`;
//! - an Eventarc request: a binary-mode CloudEvent of type
//!   `google.cloud.pubsub.topic.v1.messagePublished` whose body is the same `{"message", ...}`.
//!
//! Decoding is two steps: [`PushRequest`] (the envelope; malformed means 400, redelivered until
//! dead-lettered) then [`Decode`] into the topic's payload (a bad payload is a poison event:
//! recorded in `rejected/` and acked, see [`crate::handler`]).

use crate::events::cloud_build::{CloudBuildError, CloudBuildNotification};
use crate::events::log_entry::{LogEntry, LogEntryError};
use crate::events::{ControlEvent, DeploymentAbort, EventError, EventMeta, EventPayload, ServiceRollback};
use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The largest push body accepted: Pub/Sub's message limit (10 MB) plus envelope overhead.
pub const MAX_PUSH_BODY: usize = 14 * 1024 * 1024;

/// The CloudEvent type Eventarc uses for Pub/Sub-triggered deliveries.
pub const EVENTARC_PUBSUB_TYPE: &str = "google.cloud.pubsub.topic.v1.messagePublished";

/// A Pub/Sub message as delivered, `data` already base64-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubsubMessage {
    pub data: Bytes,
    pub attributes: BTreeMap<String, String>,
    pub message_id: String,
    pub publish_time: Option<DateTime<Utc>>,
    pub ordering_key: Option<String>,
}

/// How a request reached the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryForm {
    PubsubPush,
    Eventarc,
}

/// A decoded push request, before its payload is interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRequest {
    pub message: PubsubMessage,
    pub subscription: Option<String>,
    /// 1 on first delivery; only present when the subscription has a dead-letter policy.
    pub delivery_attempt: Option<u32>,
    pub form: DeliveryForm,
}

/// Why a request is not a push delivery at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("body is not a Pub/Sub push envelope: {0}")]
    NotJson(String),
    #[error("push envelope has no message id")]
    MissingMessageId,
    #[error("message data is not valid base64: {0}")]
    BadBase64(String),
    #[error("invalid publishTime {0:?}")]
    BadPublishTime(String),
    #[error("Eventarc request is not a valid CloudEvent: {0}")]
    BadCloudEvent(String),
    #[error("Eventarc event type {0:?} is not {EVENTARC_PUBSUB_TYPE}")]
    NotPubsubEvent(String),
    #[error("body larger than {MAX_PUSH_BODY} bytes")]
    TooLarge,
}

// The wire shape. Real Pub/Sub push bodies carry both `messageId` and `message_id` (and both
// publish time spellings), so each spelling is its own field rather than a serde alias, which
// would reject the duplicate.
#[derive(Debug, Serialize, Deserialize)]
struct WireMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attributes: Option<BTreeMap<String, String>>,
    #[serde(rename = "messageId", default, skip_serializing_if = "Option::is_none")]
    message_id_camel: Option<String>,
    #[serde(rename = "message_id", default, skip_serializing_if = "Option::is_none")]
    message_id_snake: Option<String>,
    #[serde(rename = "publishTime", default, skip_serializing_if = "Option::is_none")]
    publish_time_camel: Option<String>,
    #[serde(rename = "publish_time", default, skip_serializing_if = "Option::is_none")]
    publish_time_snake: Option<String>,
    #[serde(rename = "orderingKey", default, skip_serializing_if = "Option::is_none")]
    ordering_key: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WirePush {
    message: WireMessage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subscription: Option<String>,
    #[serde(rename = "deliveryAttempt", default, skip_serializing_if = "Option::is_none")]
    delivery_attempt: Option<u32>,
}

impl PushRequest {
    /// Decodes either delivery form from a request's headers and body.
    pub fn decode(headers: &HeaderMap, body: &[u8]) -> Result<Self, EnvelopeError> {
        if headers.contains_key(cloudevents::binding::http::SPEC_VERSION_HEADER) {
            let event = cloudevents::binding::http::to_event(headers, body.to_vec())
                .map_err(|e| EnvelopeError::BadCloudEvent(e.to_string()))?;
            use cloudevents::AttributesReader;
            if event.ty() != EVENTARC_PUBSUB_TYPE {
                return Err(EnvelopeError::NotPubsubEvent(event.ty().to_owned()));
            }
            let data: Vec<u8> = match event.data() {
                Some(cloudevents::Data::Json(v)) => {
                    serde_json::to_vec(v).map_err(|e| EnvelopeError::NotJson(e.to_string()))?
                }
                Some(cloudevents::Data::String(s)) => s.clone().into_bytes(),
                Some(cloudevents::Data::Binary(b)) => b.clone(),
                None => return Err(EnvelopeError::NotJson("Eventarc event has no body".into())),
            };
            Self::from_wire(&data, DeliveryForm::Eventarc)
        } else {
            Self::from_wire(body, DeliveryForm::PubsubPush)
        }
    }

    fn from_wire(body: &[u8], form: DeliveryForm) -> Result<Self, EnvelopeError> {
        // serde's derived structs also accept a JSON array (fields by position), so `[{...}]`
        // would pass as an envelope: read the body as an object first, then check `message` is one.
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(body).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
        match object.get("message") {
            Some(serde_json::Value::Object(_)) => {}
            Some(_) => return Err(EnvelopeError::NotJson("`message` is not a JSON object".into())),
            None => return Err(EnvelopeError::NotJson("missing field `message`".into())),
        }
        let wire: WirePush = serde_json::from_value(serde_json::Value::Object(object))
            .map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
        let m = wire.message;
        let non_empty = |id: Option<String>| id.filter(|id| !id.is_empty());
        let message_id = non_empty(m.message_id_camel)
            .or_else(|| non_empty(m.message_id_snake))
            .ok_or(EnvelopeError::MissingMessageId)?;
        let data = match m.data {
            Some(b64) => BASE64.decode(b64.as_bytes()).map_err(|e| EnvelopeError::BadBase64(e.to_string()))?,
            None => Vec::new(),
        };
        let publish_time = m
            .publish_time_camel
            .or(m.publish_time_snake)
            .map(|raw| {
                DateTime::parse_from_rfc3339(&raw)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| EnvelopeError::BadPublishTime(raw))
            })
            .transpose()?;
        Ok(Self {
            message: PubsubMessage {
                data: data.into(),
                attributes: m.attributes.unwrap_or_default(),
                message_id,
                publish_time,
                ordering_key: m.ordering_key.filter(|k| !k.is_empty()),
            },
            subscription: wire.subscription,
            delivery_attempt: wire.delivery_attempt,
            form,
        })
    }

    /// The JSON body Pub/Sub would push for this request (both id spellings, as Pub/Sub sends).
    pub fn to_push_json(&self) -> Vec<u8> {
        let m = &self.message;
        let publish_time = m.publish_time.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        let wire = WirePush {
            message: WireMessage {
                data: Some(BASE64.encode(&m.data)),
                attributes: Some(m.attributes.clone()),
                message_id_camel: Some(m.message_id.clone()),
                message_id_snake: Some(m.message_id.clone()),
                publish_time_camel: publish_time.clone(),
                publish_time_snake: publish_time,
                ordering_key: m.ordering_key.clone(),
            },
            subscription: self.subscription.clone(),
            delivery_attempt: self.delivery_attempt,
        };
        // Serializing plain strings and maps cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }
}

/// A payload type that can be read out of a push delivery.
pub trait Decode: Sized + Send + 'static {
    fn decode(message: &PubsubMessage) -> Result<(Self, Option<EventMeta>), PayloadError>;
}

/// Why a delivered message's payload is unusable: a poison event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error(transparent)]
    Event(#[from] EventError),
    #[error(transparent)]
    CloudBuild(#[from] CloudBuildError),
    #[error(transparent)]
    LogEntry(#[from] LogEntryError),
}

impl<E: EventPayload> Decode for E {
    fn decode(message: &PubsubMessage) -> Result<(Self, Option<EventMeta>), PayloadError> {
        let meta = EventMeta::from_attributes(&message.attributes)?;
        let payload = meta.decode_payload::<E>(&message.data)?;
        Ok((payload, Some(meta)))
    }
}

impl Decode for ControlEvent {
    fn decode(message: &PubsubMessage) -> Result<(Self, Option<EventMeta>), PayloadError> {
        let meta = EventMeta::from_attributes(&message.attributes)?;
        let event = match meta.event_type.as_str() {
            DeploymentAbort::TYPE => ControlEvent::Abort(meta.decode_payload(&message.data)?),
            ServiceRollback::TYPE => ControlEvent::Rollback(meta.decode_payload(&message.data)?),
            other => {
                return Err(EventError::WrongType {
                    expected: "a control event (deployment.abort or service.rollback)",
                    actual: other.to_owned(),
                }
                .into());
            }
        };
        Ok((event, Some(meta)))
    }
}

impl Decode for CloudBuildNotification {
    fn decode(message: &PubsubMessage) -> Result<(Self, Option<EventMeta>), PayloadError> {
        Ok((CloudBuildNotification::decode(&message.attributes, &message.data)?, None))
    }
}

impl Decode for LogEntry {
    fn decode(message: &PubsubMessage) -> Result<(Self, Option<EventMeta>), PayloadError> {
        Ok((LogEntry::decode(&message.data)?, None))
    }
}

/// A delivery with its payload decoded.
#[derive(Debug, Clone)]
pub struct PushEnvelope<T> {
    pub payload: T,
    /// The CloudEvent attributes, for our own events; `None` on foreign topics.
    pub event: Option<EventMeta>,
    pub request: PushRequest,
}

impl<T: Decode> PushEnvelope<T> {
    pub fn decode(request: PushRequest) -> Result<Self, PayloadError> {
        let (payload, event) = T::decode(&request.message)?;
        Ok(Self { payload, event, request })
    }
}

/// The 400 sent for a request that is not a push delivery.
#[derive(Debug)]
pub struct EnvelopeRejection(pub EnvelopeError);

impl IntoResponse for EnvelopeRejection {
    fn into_response(self) -> Response {
        let status =
            if self.0 == EnvelopeError::TooLarge { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::BAD_REQUEST };
        crate::handler::ApiError::new(status, "bad_envelope", self.0.to_string()).into_response()
    }
}

impl<S: Send + Sync> FromRequest<S> for PushRequest {
    type Rejection = EnvelopeRejection;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let bytes =
            axum::body::to_bytes(body, MAX_PUSH_BODY).await.map_err(|_| EnvelopeRejection(EnvelopeError::TooLarge))?;
        PushRequest::decode(&parts.headers, &bytes).map_err(EnvelopeRejection)
    }
}

#[cfg(test)]
mod tests;
