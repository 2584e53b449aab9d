//! Our events as binary-mode CloudEvents inside Pub/Sub messages: the CloudEvent is built and
//! validated with `cloudevents-sdk`, then carried as `ce-*` message attributes with JSON data.

use super::EventPayload;
use crate::ids::CorrelationId;
use crate::ports::bus::OutboundMessage;
use chrono::{DateTime, Utc};
use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};
use std::collections::BTreeMap;

/// Attribute names on the Pub/Sub message.
pub mod attributes {
    pub const SPECVERSION: &str = "ce-specversion";
    pub const TYPE: &str = "ce-type";
    pub const SOURCE: &str = "ce-source";
    pub const ID: &str = "ce-id";
    pub const TIME: &str = "ce-time";
    pub const SUBJECT: &str = "ce-subject";
    pub const CONTENT_TYPE: &str = "content-type";
    /// DESIGN.md: the id that finds the whole story of a deployment.
    pub const CORRELATION_ID: &str = "correlation_id";
}

/// Who publishes and on whose behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventContext {
    /// A URI reference naming the producer, e.g. `//devgem/functions/chat`.
    pub source: String,
    pub correlation_id: CorrelationId,
}

impl EventContext {
    pub fn new(function: &str, correlation_id: CorrelationId) -> Self {
        Self { source: format!("//devgem/functions/{function}"), correlation_id }
    }
}

/// The CloudEvent attributes of a received event of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    pub id: String,
    pub event_type: String,
    pub source: String,
    pub time: Option<DateTime<Utc>>,
    pub subject: Option<String>,
    pub correlation_id: Option<CorrelationId>,
}

/// Why a message's attributes are not a valid CloudEvent of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("not a CloudEvent: {0}")]
    NotACloudEvent(String),
    #[error("expected event type {expected}, got {actual}")]
    WrongType { expected: &'static str, actual: String },
    #[error("the event's data is not a valid {event_type}: {reason}")]
    BadData { event_type: &'static str, reason: String },
    #[error("invalid correlation_id attribute: {0}")]
    BadCorrelationId(String),
}

/// Builds the Pub/Sub message for `payload`: a CloudEvent with a fresh id, validated by the SDK,
/// in binary content mode.
pub fn to_message<E: EventPayload>(
    payload: &E,
    ctx: &EventContext,
    now: DateTime<Utc>,
) -> Result<OutboundMessage, EventError> {
    let data =
        serde_json::to_vec(payload).map_err(|e| EventError::BadData { event_type: E::TYPE, reason: e.to_string() })?;
    let event = EventBuilderV10::new()
        .id(uuid::Uuid::now_v7().to_string())
        .ty(E::TYPE)
        .source(ctx.source.clone())
        .subject(payload.subject())
        .time(now)
        .build()
        .map_err(|e| EventError::NotACloudEvent(e.to_string()))?;

    let mut attrs = BTreeMap::new();
    attrs.insert(attributes::SPECVERSION.to_owned(), event.specversion().to_string());
    attrs.insert(attributes::TYPE.to_owned(), event.ty().to_owned());
    attrs.insert(attributes::SOURCE.to_owned(), event.source().to_string());
    attrs.insert(attributes::ID.to_owned(), event.id().to_owned());
    if let Some(time) = event.time() {
        attrs.insert(attributes::TIME.to_owned(), time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    }
    if let Some(subject) = event.subject() {
        attrs.insert(attributes::SUBJECT.to_owned(), subject.to_owned());
    }
    attrs.insert(attributes::CONTENT_TYPE.to_owned(), "application/json".to_owned());
    attrs.insert(attributes::CORRELATION_ID.to_owned(), ctx.correlation_id.to_string());

    Ok(OutboundMessage { data: data.into(), attributes: attrs, ordering_key: payload.ordering_key() })
}

impl EventMeta {
    /// Reads and validates the CloudEvent carried in a message's attributes.
    pub fn from_attributes(attrs: &BTreeMap<String, String>) -> Result<Self, EventError> {
        let get = |name: &str| attrs.get(name).map(String::as_str);
        match get(attributes::SPECVERSION) {
            Some("1.0") => {}
            Some(other) => return Err(EventError::NotACloudEvent(format!("unsupported ce-specversion {other:?}"))),
            None => return Err(EventError::NotACloudEvent("missing ce-specversion attribute".into())),
        }
        let mut builder = EventBuilderV10::new()
            .id(get(attributes::ID).unwrap_or_default())
            .ty(get(attributes::TYPE).unwrap_or_default())
            .source(get(attributes::SOURCE).unwrap_or_default());
        if let Some(subject) = get(attributes::SUBJECT) {
            builder = builder.subject(subject);
        }
        if let Some(time) = get(attributes::TIME) {
            let parsed = DateTime::parse_from_rfc3339(time)
                .map_err(|e| EventError::NotACloudEvent(format!("ce-time {time:?}: {e}")))?;
            builder = builder.time(parsed.with_timezone(&Utc));
        }
        let event = builder.build().map_err(|e| EventError::NotACloudEvent(e.to_string()))?;
        if event.id().is_empty() || event.ty().is_empty() || event.source().is_empty() {
            return Err(EventError::NotACloudEvent("ce-id, ce-type and ce-source must not be empty".into()));
        }
        let correlation_id = get(attributes::CORRELATION_ID)
            .map(|raw| CorrelationId::parse(raw).map_err(|e| EventError::BadCorrelationId(e.to_string())))
            .transpose()?;
        Ok(Self {
            id: event.id().to_owned(),
            event_type: event.ty().to_owned(),
            source: event.source().to_string(),
            time: event.time().copied(),
            subject: event.subject().map(str::to_owned),
            correlation_id,
        })
    }

    /// Decodes `data` as the payload of `E`, checking the type first.
    pub fn decode_payload<E: EventPayload>(&self, data: &[u8]) -> Result<E, EventError> {
        if self.event_type != E::TYPE {
            return Err(EventError::WrongType { expected: E::TYPE, actual: self.event_type.clone() });
        }
        serde_json::from_slice(data).map_err(|e| EventError::BadData { event_type: E::TYPE, reason: e.to_string() })
    }
}
