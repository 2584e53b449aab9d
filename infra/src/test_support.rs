//! Test doubles shared by the adapters' tests.

use devgem_common::events::Topic;
use devgem_common::events::cloud_build::CloudBuildNotification;
use devgem_common::ports::bus::{Bus, BusError, OutboundMessage};
use std::sync::Mutex;
use std::time::Duration;

/// A bus that keeps what is published, to read what an adapter announced.
#[derive(Debug, Default)]
pub struct RecordingBus {
    messages: Mutex<Vec<(Topic, OutboundMessage)>>,
    notify: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl Bus for RecordingBus {
    async fn publish(&self, topic: Topic, message: OutboundMessage) -> Result<String, BusError> {
        let mut messages = self.messages.lock().expect("lock");
        messages.push((topic, message));
        self.notify.notify_waiters();
        Ok(messages.len().to_string())
    }
}

impl RecordingBus {
    /// The messages published on `topic` so far.
    pub fn on(&self, topic: Topic) -> Vec<OutboundMessage> {
        self.messages.lock().expect("lock").iter().filter(|(t, _)| *t == topic).map(|(_, m)| m.clone()).collect()
    }

    /// Waits (up to 60 s) for the `index`th message of `topic`.
    pub async fn nth(&self, topic: Topic, index: usize) -> OutboundMessage {
        loop {
            let notified = self.notify.notified();
            if let Some(message) = self.on(topic).get(index).cloned() {
                return message;
            }
            tokio::time::timeout(Duration::from_secs(60), notified).await.expect("published in time");
        }
    }

    /// The `index`th Cloud Build notification.
    pub async fn cloud_build(&self, index: usize) -> CloudBuildNotification {
        let message = self.nth(Topic::CloudBuilds, index).await;
        CloudBuildNotification::decode(&message.attributes, &message.data).expect("a Cloud Build notification")
    }
}
