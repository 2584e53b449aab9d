//! The Bus port: publish to a topic. Delivery is push: each subscription posts the Pub/Sub push
//! envelope to its function's route, and the function's status decides ack or retry
//! (see [`crate::handler`]). Subscriptions are wiring, not code: terraform on GCP, `devgem up`
//! on the embedded bus.

use crate::events::{EventContext, EventPayload, Topic, to_message};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    pub data: Bytes,
    pub attributes: BTreeMap<String, String>,
    /// Messages with the same key are delivered in publish order, one at a time.
    pub ordering_key: Option<String>,
}

impl OutboundMessage {
    /// Pub/Sub's limits on one message.
    pub const MAX_DATA_BYTES: usize = 10 * 1024 * 1024;
    pub const MAX_ATTRIBUTES: usize = 100;
    pub const MAX_ORDERING_KEY_BYTES: usize = 1024;

    /// Refuses what Pub/Sub would refuse. Every adapter checks this before it takes a message,
    /// so a message one bus accepts the other accepts too (and on Pub/Sub, one bad message never
    /// fails the whole batch it would have joined).
    pub fn validate(&self) -> Result<(), BusError> {
        let (max_data, max_attributes, max_key) =
            (Self::MAX_DATA_BYTES, Self::MAX_ATTRIBUTES, Self::MAX_ORDERING_KEY_BYTES);
        if self.data.len() > max_data {
            return Err(BusError::Invalid(format!(
                "message data is {} bytes; the limit is {max_data}",
                self.data.len()
            )));
        }
        if self.attributes.len() > max_attributes {
            return Err(BusError::Invalid(format!("at most {max_attributes} attributes")));
        }
        if self.attributes.iter().any(|(k, v)| k.is_empty() || k.len() > 256 || v.len() > 1024 || k.starts_with("goog"))
        {
            return Err(BusError::Invalid(
                "attribute keys are 1-256 bytes not starting with 'goog', values at most 1024".into(),
            ));
        }
        if self.ordering_key.as_ref().is_some_and(|k| k.len() > max_key) {
            return Err(BusError::Invalid(format!("ordering keys are at most {max_key} bytes")));
        }
        if self.data.is_empty() && self.attributes.is_empty() {
            return Err(BusError::Invalid("a message needs data or attributes".into()));
        }
        Ok(())
    }
}

/// Bus failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("message refused: {0}")]
    Invalid(String),
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

impl BusError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Which delivery statuses acknowledge a message (Pub/Sub push's rule, kept by every adapter).
pub fn is_ack_status(status: u16) -> bool {
    matches!(status, 102 | 200 | 201 | 202 | 204)
}

#[async_trait]
pub trait Bus: Send + Sync + std::fmt::Debug {
    /// Publishes one message; when this returns `Ok`, the message is durable and will be
    /// delivered to every subscription of the topic at least once. Returns the message id.
    async fn publish(&self, topic: Topic, message: OutboundMessage) -> Result<String, BusError>;

    /// Removes dead letters that died before `cutoff`; returns how many went. Pub/Sub expires
    /// a dead-letter topic's messages by its own retention, so an adapter whose service does
    /// that keeps this default.
    async fn prune_dead_letters(&self, cutoff: DateTime<Utc>) -> Result<u64, BusError> {
        let _ = cutoff;
        Ok(0)
    }

    /// How many messages are in the dead letters, if the adapter can tell (for `/stats`);
    /// `None` where the dead-letter topic is read elsewhere (Pub/Sub: Cloud Monitoring).
    async fn dead_letter_count(&self) -> Result<Option<u64>, BusError> {
        Ok(None)
    }
}

/// Typed publishing over any [`Bus`].
#[async_trait]
pub trait BusExt: Bus {
    /// Publishes one of our events as a CloudEvent on its topic.
    async fn publish_event<E: EventPayload>(
        &self,
        payload: &E,
        ctx: &EventContext,
        now: DateTime<Utc>,
    ) -> Result<String, BusError> {
        let message = to_message(payload, ctx, now).map_err(|e| BusError::Invalid(e.to_string()))?;
        self.publish(E::TOPIC, message).await
    }
}

impl<B: Bus + ?Sized> BusExt for B {}
