//! The Bus port on Google Pub/Sub (DESIGN.md, Events): publishing only. Delivery is Pub/Sub's
//! own push subscriptions (terraform), which post the same push envelope the embedded bus posts.
//!
//! This module owns:
//! - [`PubSubBus`]: one official `google-cloud-pubsub` client (one gRPC connection pool) and one
//!   [`Publisher`] per topic, created on first use and cached. Each publisher batches: messages
//!   published within [`PubSubOptions::batch_delay`] of each other go in one `Publish` request,
//!   yet [`Bus::publish`] returns only once the server accepted the message (it is durable) and
//!   answers with the server's message id.
//! - The mapping of the client's errors to [`BusError`] and to the breaker's [`Failure`] kinds.
//!
//! Retries: the client library already retries a failed `Publish` request (its retry policy sees
//! every attempt of the batch, with backoff), so [`PubSubOptions`] configures *its* policy, and
//! the call goes through [`Api`] with a single attempt: the breaker still sees every outcome, but
//! a request is never retried twice over (library attempts × our attempts).
//!
//! Endpoints: the client ignores `PUBSUB_EMULATOR_HOST`, so when [`GcpConfig::pubsub_emulator`]
//! is set the endpoint (`http://host:port`) and anonymous credentials are set here; otherwise
//! Application Default Credentials on the global endpoint.

use super::GcpConfig;
use super::call::{Api, CallError};
use crate::resilience::{BreakerPolicy, Classify, Failure, RetryPolicy};
use async_trait::async_trait;
use devgem_common::events::Topic;
use devgem_common::ports::bus::{Bus, BusError, OutboundMessage};
use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::exponential_backoff::ExponentialBackoffBuilder;
use google_cloud_gax::retry_policy::RetryPolicyExt;
use google_cloud_pubsub::client::{BasePublisher, Publisher};
use google_cloud_pubsub::error::PublishError;
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::retry_policy::RetryableErrors;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// How the adapter batches and retries. [`PubSubOptions::default`] is for production; tests use
/// short delays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubSubOptions {
    /// How long a publisher waits for more messages before sending a batch: a burst of events
    /// goes in one request, at the cost of this much latency on a lone publish.
    pub batch_delay: Duration,
    /// A batch is sent at once when it holds this many messages (Pub/Sub's limit is 1,000).
    pub batch_max_messages: u32,
    /// Attempts of one `Publish` request in all, the first one included (the library's retries).
    pub retry_attempts: u32,
    pub retry_first_delay: Duration,
    pub retry_max_delay: Duration,
    /// A publish gives up after this long, whatever the attempts left: a handler waiting on it
    /// should answer 503 and let its own delivery be retried rather than hang.
    pub retry_time_limit: Duration,
    /// When Pub/Sub keeps failing, stop calling it for a while (see [`crate::resilience`]).
    pub breaker: BreakerPolicy,
}

impl Default for PubSubOptions {
    fn default() -> Self {
        // The same patience as every other GCP API behind `call::Api::new`.
        Self {
            batch_delay: Duration::from_millis(10),
            batch_max_messages: 100,
            retry_attempts: 5,
            retry_first_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(4),
            retry_time_limit: Duration::from_secs(30),
            breaker: BreakerPolicy { failures: 5, cool_down: Duration::from_secs(30) },
        }
    }
}

/// The Bus port on Pub/Sub. See the module docs.
#[derive(Debug)]
pub struct PubSubBus {
    config: GcpConfig,
    options: PubSubOptions,
    client: BasePublisher,
    /// One publisher per topic: each runs its own batching task, so they are created once.
    publishers: Mutex<HashMap<Topic, Publisher>>,
    api: Api,
}

/// The endpoint of an emulator given as `host:port` (the `*_EMULATOR_HOST` convention) or as a
/// URL.
fn emulator_endpoint(host: &str) -> String {
    if host.starts_with("http://") || host.starts_with("https://") { host.to_owned() } else { format!("http://{host}") }
}

impl PubSubBus {
    /// Connects with the production options.
    pub async fn connect(config: &GcpConfig) -> Result<Self, BusError> {
        Self::connect_with(config, PubSubOptions::default()).await
    }

    /// Builds the client. No request is sent yet: connections are made on the first publish.
    pub async fn connect_with(config: &GcpConfig, options: PubSubOptions) -> Result<Self, BusError> {
        let backoff = ExponentialBackoffBuilder::new()
            .with_initial_delay(options.retry_first_delay)
            .with_maximum_delay(options.retry_max_delay.max(options.retry_first_delay))
            .with_scaling(2.0)
            .clamp();
        let retry =
            RetryableErrors.with_attempt_limit(options.retry_attempts.max(1)).with_time_limit(options.retry_time_limit);
        let mut builder = BasePublisher::builder().with_retry_policy(retry).with_backoff_policy(backoff);
        if let Some(host) = &config.pubsub_emulator {
            builder = builder
                .with_endpoint(emulator_endpoint(host))
                .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build());
        }
        let client = builder.build().await.map_err(|e| {
            BusError::Unavailable(format!(
                "could not set up the Pub/Sub client (Application Default Credentials, or \
                 PUBSUB_EMULATOR_HOST for an emulator): {e}"
            ))
        })?;
        // The library retries; our `Api` only keeps the breaker (one attempt per call).
        let api = Api::with_policies(
            "Pub/Sub",
            options.breaker,
            RetryPolicy { attempts: 1, first_delay: options.retry_first_delay, max_delay: options.retry_max_delay },
        );
        Ok(Self { config: config.clone(), options, client, publishers: Mutex::new(HashMap::new()), api })
    }

    /// The full Pub/Sub name of one of our topics. `cloud-builds` is not ours to name: Cloud
    /// Build publishes to the project's topic of that name, so it never takes the prefix.
    pub fn topic_name(&self, topic: Topic) -> String {
        match topic {
            Topic::CloudBuilds => format!("projects/{}/topics/{}", self.config.project, topic.name()),
            _ => self.config.topic_name(topic.name()),
        }
    }

    fn publisher(&self, topic: Topic) -> Publisher {
        let mut publishers = self.publishers.lock().unwrap_or_else(PoisonError::into_inner);
        publishers
            .entry(topic)
            .or_insert_with(|| {
                self.client
                    .publisher(self.topic_name(topic))
                    .set_delay_threshold(self.options.batch_delay)
                    .set_message_count_threshold(self.options.batch_max_messages.clamp(1, 1000))
                    .build()
            })
            .clone()
    }

    /// Sends every batched message now and waits for the outcome (for a graceful shutdown).
    pub async fn flush(&self) {
        let publishers: Vec<Publisher> =
            self.publishers.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        futures_util::future::join_all(publishers.iter().map(Publisher::flush)).await;
    }
}

/// A failed publish, with what it says about Pub/Sub.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
struct PublishFailure {
    /// The gRPC status code, when the service answered.
    code: Option<Code>,
    failure: Failure,
    detail: String,
}

impl Classify for PublishFailure {
    fn failure(&self) -> Failure {
        self.failure
    }
}

/// The innermost client error that carries a status: an exhausted retry loop wraps the last
/// attempt's error.
fn service_error(error: &google_cloud_pubsub::Error) -> Option<&google_cloud_pubsub::Error> {
    let mut current: &(dyn std::error::Error + 'static) = error;
    loop {
        if let Some(e) = current.downcast_ref::<google_cloud_pubsub::Error>()
            && (e.status().is_some() || e.http_status_code().is_some())
        {
            return Some(e);
        }
        if let Some(e) = current.downcast_ref::<std::sync::Arc<google_cloud_pubsub::Error>>()
            && (e.status().is_some() || e.http_status_code().is_some())
        {
            return Some(e.as_ref());
        }
        current = current.source()?;
    }
}

impl From<PublishError> for PublishFailure {
    fn from(error: PublishError) -> Self {
        match &error {
            PublishError::Rpc(rpc) => {
                let answered = service_error(rpc);
                let code = answered.and_then(|e| e.status()).map(|s| s.code);
                let http = answered.and_then(|e| e.http_status_code());
                let failure = match (code, http) {
                    (Some(Code::ResourceExhausted), _) | (None, Some(429)) => Failure::SlowDown,
                    // Unknown too: the library itself retries it, as a service hiccup.
                    (
                        Some(
                            Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Internal | Code::Unknown,
                        ),
                        _,
                    ) => Failure::Down,
                    (Some(_), _) => Failure::Refused,
                    (None, Some(status)) if status >= 500 => Failure::Down,
                    (None, Some(_)) => Failure::Refused,
                    // No answer at all: connection refused or reset, timeout, retries exhausted.
                    (None, None) => Failure::Down,
                };
                let detail = match answered.and_then(|e| e.status()) {
                    Some(status) => format!("{:?}: {}", status.code, status.message),
                    None => rpc.to_string(),
                };
                Self { code, failure, detail }
            }
            // An earlier message of the same key failed, so this one was not sent (in order);
            // the key is resumed and the caller's retry can go through.
            PublishError::OrderingKeyPaused => Self {
                code: None,
                failure: Failure::Down,
                detail: "an earlier message with the same ordering key failed; not sent, to keep the order".into(),
            },
            PublishError::Shutdown => {
                Self { code: None, failure: Failure::Down, detail: "the publisher has shut down".into() }
            }
            other => Self { code: None, failure: Failure::Down, detail: other.to_string() },
        }
    }
}

impl PubSubBus {
    fn to_bus_error(&self, topic: &str, error: CallError<PublishFailure>) -> BusError {
        match error {
            CallError::Open { .. } => BusError::Unavailable(format!("publish to {topic}: {}", error.message())),
            CallError::Failed(failure) => match failure.code {
                Some(Code::NotFound) => BusError::UnknownTopic(topic.to_owned()),
                Some(Code::InvalidArgument) => {
                    BusError::Invalid(format!("Pub/Sub refused the message for {topic}: {}", failure.detail))
                }
                Some(Code::PermissionDenied | Code::Unauthenticated) => BusError::Unavailable(format!(
                    "Pub/Sub denied publishing to {topic} ({}); the service account needs \
                     roles/pubsub.publisher on it",
                    failure.detail
                )),
                _ => BusError::Unavailable(format!("Pub/Sub could not publish to {topic}: {}", failure.detail)),
            },
        }
    }
}

#[async_trait]
impl Bus for PubSubBus {
    async fn publish(&self, topic: Topic, message: OutboundMessage) -> Result<String, BusError> {
        message.validate()?;
        let topic_name = self.topic_name(topic);
        let publisher = self.publisher(topic);
        let ordering_key = message.ordering_key.clone().filter(|k| !k.is_empty());
        let mut outgoing = Message::new().set_data(message.data).set_attributes(message.attributes);
        if let Some(key) = &ordering_key {
            outgoing = outgoing.set_ordering_key(key.clone());
        }
        // The library bounds each request by its retry time limit; this bounds the whole wait
        // (batching delay and queueing included) in case a publisher task stalls. A message
        // given up on may still go out later: the caller retries, and delivery is at least once.
        let limit = self.options.retry_time_limit + self.options.batch_delay + Duration::from_secs(5);
        let outcome = self
            .api
            .call(|| {
                let (publisher, outgoing) = (publisher.clone(), outgoing.clone());
                async move {
                    match tokio::time::timeout(limit, publisher.publish(outgoing)).await {
                        Ok(result) => result.map_err(PublishFailure::from),
                        Err(_) => Err(PublishFailure {
                            code: None,
                            failure: Failure::Down,
                            detail: format!("no answer within {}s", limit.as_secs()),
                        }),
                    }
                }
            })
            .await;
        match outcome {
            Ok(id) => Ok(id),
            Err(error) => {
                // A failure pauses the key in the client, so that later messages cannot
                // overtake the failed one. Our caller learns of the failure and retries
                // (a handler answers 503), so the key is resumed for that retry.
                if let Some(key) = ordering_key {
                    publisher.resume_publish(key);
                }
                Err(self.to_bus_error(&topic_name, error))
            }
        }
    }
}

#[cfg(test)]
mod tests;
