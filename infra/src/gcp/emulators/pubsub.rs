//! A loopback stand-in for Google Pub/Sub, for the Pub/Sub adapter's tests and benchmarks (no
//! Pub/Sub emulator can be installed here). Unlike the other emulators it runs in this process.
//!
//! This module owns:
//! - the Publisher gRPC API on 127.0.0.1 (`google.pubsub.v1.Publisher/Publish`, `GetTopic`,
//!   `CreateTopic`), served with tonic and decoded with the real protobuf types (`gcloud-sdk`'s
//!   generated `google.pubsub.v1`), so the official client talks to it exactly as to Pub/Sub;
//! - push subscriptions: each message is POSTed as the Pub/Sub push JSON envelope to the
//!   subscription's URL, optionally with `Authorization: Bearer <token>` from a token source;
//! - fault scripting: the next N publishes answer a chosen gRPC status.
//!
//! Delivery is not written again: each topic is one embedded bus ([`LocalBus`], in a temporary
//! directory) whose subscriptions post to a small router that forwards the envelope over HTTP to
//! the push URL and answers with the endpoint's status. The stand-in therefore has exactly the
//! embedded bus's (tested) semantics, which are Pub/Sub push's: 102/200/201/202/204 ack, any
//! other status, a connection error or a missed ack deadline is redelivered with exponential
//! backoff until the subscription's maximum delivery attempts, then dead-lettered (inspectable
//! with [`PubSubStandIn::dead_letters`]); one message at a time per ordering key, in publish
//! order, a retried message holding back the later ones of its key.
//!
//! Differences from Pub/Sub that tests should not rely on: message ids are unique per topic (as
//! on Pub/Sub) but small integers; dead letters stay with their subscription rather than being
//! republished to a dead-letter topic; every subscription is ordered and has a dead-letter
//! policy (so `deliveryAttempt` is always present).

use crate::local::{DeadLetter, LocalBus, SubscriptionConfig};
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use bytes::Bytes;
use devgem_common::clock::SystemClock;
use devgem_common::events::Topic as LocalTopic;
use devgem_common::ports::bus::{Bus, BusError, OutboundMessage};
use gcloud_sdk::google::pubsub::v1 as proto;
use gcloud_sdk::tonic;
use http::StatusCode;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The gRPC status codes [`PubSubStandIn::fail_next_publishes`] takes.
pub use gcloud_sdk::tonic::Code;

/// The embedded bus of one topic carries all of it on this one internal topic.
const CARRIER: LocalTopic = LocalTopic::Deployments;
/// The route of the forwarding router each subscription delivers to.
const FORWARD_PATH: &str = "/forward";
/// Pub/Sub's limit on messages per `Publish` request.
const MAX_MESSAGES_PER_REQUEST: usize = 1000;

/// Mints the bearer token of one push request, given the audience (the push URL unless the
/// subscription names another), as Pub/Sub does with a push subscription's OIDC token.
pub type PushTokenSource = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StandInError {
    #[error("Pub/Sub stand-in I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("Pub/Sub stand-in: topic {0} does not exist")]
    UnknownTopic(String),
    #[error("Pub/Sub stand-in: topic {0} already exists")]
    TopicExists(String),
    #[error("Pub/Sub stand-in: subscription {0} does not exist")]
    UnknownSubscription(String),
    #[error("Pub/Sub stand-in: subscription {0} already exists")]
    SubscriptionExists(String),
    #[error("Pub/Sub stand-in: {0}")]
    Bus(#[from] BusError),
}

/// A push subscription: where and how its messages are delivered.
#[derive(Clone)]
pub struct PushSubscription {
    /// The subscription's id (`projects/<p>/subscriptions/<name>` in the envelope).
    pub name: String,
    /// The topic, `projects/<p>/topics/<t>` or just `<t>` in the stand-in's project.
    pub topic: String,
    /// Where the push requests go, e.g. `http://127.0.0.1:8080/push`.
    pub push_url: String,
    /// Deliveries before a message is dead-lettered (Pub/Sub: 5 to 100, default 5).
    pub max_attempts: u32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// A push that has not answered by then is a nack (Pub/Sub's ack deadline, default 10 s).
    pub ack_deadline: Duration,
    /// Pushes running at once (one at a time per ordering key regardless).
    pub max_in_flight: usize,
    /// Adds `Authorization: Bearer <token>` to each push request.
    pub token_source: Option<PushTokenSource>,
    /// The token's audience; the push URL when `None` (Pub/Sub's default).
    pub audience: Option<String>,
}

impl std::fmt::Debug for PushSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushSubscription")
            .field("name", &self.name)
            .field("topic", &self.topic)
            .field("push_url", &self.push_url)
            .field("max_attempts", &self.max_attempts)
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("ack_deadline", &self.ack_deadline)
            .field("max_in_flight", &self.max_in_flight)
            .field("token_source", &self.token_source.as_ref().map(|_| "…"))
            .field("audience", &self.audience)
            .finish()
    }
}

impl PushSubscription {
    /// Pub/Sub's defaults: 5 attempts, backoff 10 s to 600 s, 10 s ack deadline.
    pub fn new(name: &str, topic: &str, push_url: &str) -> Self {
        Self {
            name: name.to_owned(),
            topic: topic.to_owned(),
            push_url: push_url.to_owned(),
            max_attempts: 5,
            min_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(600),
            ack_deadline: Duration::from_secs(10),
            max_in_flight: 64,
            token_source: None,
            audience: None,
        }
    }

    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max;
        self
    }

    pub fn ack_deadline(mut self, deadline: Duration) -> Self {
        self.ack_deadline = deadline;
        self
    }

    /// Signs every push with a token from `source`, as an authenticated push subscription.
    pub fn oidc_token(mut self, source: PushTokenSource, audience: Option<String>) -> Self {
        self.token_source = Some(source);
        self.audience = audience;
        self
    }
}

#[derive(Debug)]
struct StandInTopic {
    name: String,
    bus: LocalBus,
}

#[derive(Debug, Default)]
struct Faults {
    remaining: u32,
    code: Option<Code>,
}

#[derive(Debug)]
struct Shared {
    project: String,
    dir: PathBuf,
    topics: Mutex<BTreeMap<String, Arc<StandInTopic>>>,
    /// Subscription name -> its topic's full name.
    subscriptions: Mutex<HashMap<String, String>>,
    faults: Mutex<Faults>,
    publish_requests: AtomicU64,
    published: AtomicU64,
    http: reqwest::Client,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn full_topic(&self, topic: &str) -> String {
        if topic.contains('/') { topic.to_owned() } else { format!("projects/{}/topics/{topic}", self.project) }
    }

    fn topic(&self, name: &str) -> Option<Arc<StandInTopic>> {
        lock(&self.topics).get(&self.full_topic(name)).cloned()
    }

    fn create_topic(&self, name: &str) -> Result<Arc<StandInTopic>, StandInError> {
        let name = self.full_topic(name);
        let mut topics = lock(&self.topics);
        if topics.contains_key(&name) {
            return Err(StandInError::TopicExists(name));
        }
        let file = self.dir.join(format!("topic-{}.db", topics.len()));
        let bus = LocalBus::open(&file, Arc::new(SystemClock))?;
        let topic = Arc::new(StandInTopic { name: name.clone(), bus });
        topics.insert(name, Arc::clone(&topic));
        Ok(topic)
    }

    /// The next scripted failure, if any is left.
    fn take_fault(&self) -> Option<Code> {
        let mut faults = lock(&self.faults);
        if faults.remaining == 0 {
            return None;
        }
        faults.remaining -= 1;
        faults.code
    }

    async fn publish(&self, request: proto::PublishRequest) -> Result<proto::PublishResponse, tonic::Status> {
        self.publish_requests.fetch_add(1, Ordering::Relaxed);
        if let Some(code) = self.take_fault() {
            return Err(tonic::Status::new(code, "scripted failure (PubSubStandIn::fail_next_publishes)"));
        }
        let Some(topic) = self.topic(&request.topic) else {
            return Err(tonic::Status::not_found(format!("Resource not found (resource={}).", request.topic)));
        };
        if request.messages.is_empty() || request.messages.len() > MAX_MESSAGES_PER_REQUEST {
            return Err(tonic::Status::invalid_argument(format!(
                "a Publish request carries 1 to {MAX_MESSAGES_PER_REQUEST} messages, not {}",
                request.messages.len()
            )));
        }
        // Each ordering key's messages are stored one after the other, in request order; keys
        // and unordered messages go concurrently (the embedded bus commits them in one batch).
        let count = request.messages.len();
        let mut chains: BTreeMap<Option<String>, Vec<(usize, OutboundMessage)>> = BTreeMap::new();
        let mut unordered = Vec::new();
        for (index, message) in request.messages.into_iter().enumerate() {
            let key = Some(message.ordering_key).filter(|k| !k.is_empty());
            let outbound = OutboundMessage {
                data: Bytes::from(message.data),
                attributes: message.attributes.into_iter().collect(),
                ordering_key: key.clone(),
            };
            match key {
                Some(_) => chains.entry(key).or_default().push((index, outbound)),
                None => unordered.push(vec![(index, outbound)]),
            }
        }
        let bus = &topic.bus;
        let all = chains.into_values().chain(unordered).map(|chain| async move {
            let mut ids = Vec::with_capacity(chain.len());
            for (index, message) in chain {
                ids.push((index, bus.publish(CARRIER, message).await?));
            }
            Ok::<_, BusError>(ids)
        });
        let mut message_ids = vec![String::new(); count];
        for chain in futures_util::future::join_all(all).await {
            for (index, id) in chain.map_err(|e| match e {
                BusError::Invalid(why) => tonic::Status::invalid_argument(why),
                other => tonic::Status::unavailable(other.to_string()),
            })? {
                message_ids[index] = id;
            }
        }
        self.published.fetch_add(count as u64, Ordering::Relaxed);
        Ok(proto::PublishResponse { message_ids })
    }

    fn proto_topic(&self, name: &str) -> proto::Topic {
        proto::Topic { name: name.to_owned(), ..Default::default() }
    }
}

/// A running stand-in. Dropping it stops the gRPC server; [`PubSubStandIn::shutdown`] also lets
/// the deliveries in flight finish.
#[derive(Debug)]
pub struct PubSubStandIn {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl PubSubStandIn {
    /// Starts serving the Publisher API for `project` on a free loopback port.
    pub async fn start(project: &str) -> Result<Self, StandInError> {
        let dir = std::env::temp_dir().join(format!("devgem-pubsub-standin-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let http = reqwest::Client::builder()
            // The ack deadline bounds each push; this only keeps a dead endpoint from
            // holding a connection attempt longer than any sensible deadline.
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| StandInError::Io(std::io::Error::other(e)))?;
        let shared = Arc::new(Shared {
            project: project.to_owned(),
            dir,
            topics: Mutex::new(BTreeMap::new()),
            subscriptions: Mutex::new(HashMap::new()),
            faults: Mutex::new(Faults::default()),
            publish_requests: AtomicU64::new(0),
            published: AtomicU64::new(0),
            http,
        });
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let service = PublisherService { shared: Arc::clone(&shared) };
        // Without TCP_NODELAY a response's trailing frames wait for the client's delayed ACK
        // (40 ms on Linux) whenever responses overlap; gRPC servers, Pub/Sub's included, set it.
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "Pub/Sub stand-in stopped serving");
            }
        });
        Ok(Self { shared, addr, stop: Some(stop), server: Some(server) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `host:port`, as `PUBSUB_EMULATOR_HOST` (and [`crate::gcp::GcpConfig::pubsub_emulator`]).
    pub fn emulator_host(&self) -> String {
        self.addr.to_string()
    }

    pub fn project(&self) -> &str {
        &self.shared.project
    }

    /// Creates a topic (`projects/<p>/topics/<t>` or `<t>`); returns its full name.
    pub fn create_topic(&self, topic: &str) -> Result<String, StandInError> {
        Ok(self.shared.create_topic(topic)?.name.clone())
    }

    /// Starts delivering the topic's messages published from now on to `subscription`'s URL.
    pub async fn add_push_subscription(&self, subscription: PushSubscription) -> Result<(), StandInError> {
        let topic = self
            .shared
            .topic(&subscription.topic)
            .ok_or_else(|| StandInError::UnknownTopic(self.shared.full_topic(&subscription.topic)))?;
        {
            let mut subscriptions = lock(&self.shared.subscriptions);
            if subscriptions.contains_key(&subscription.name) {
                return Err(StandInError::SubscriptionExists(subscription.name));
            }
            subscriptions.insert(subscription.name.clone(), topic.name.clone());
        }
        let forward = Forward {
            http: self.shared.http.clone(),
            audience: subscription.audience.clone().unwrap_or_else(|| subscription.push_url.clone()),
            url: subscription.push_url.clone(),
            subscription: format!("projects/{}/subscriptions/{}", self.shared.project, subscription.name),
            token_source: subscription.token_source.clone(),
        };
        let router = Router::new().route(FORWARD_PATH, post(forward_push)).with_state(forward);
        let config = SubscriptionConfig {
            max_attempts: subscription.max_attempts,
            ack_deadline: subscription.ack_deadline,
            min_backoff: subscription.min_backoff,
            max_backoff: subscription.max_backoff,
            max_in_flight: subscription.max_in_flight,
            ..SubscriptionConfig::new(&subscription.name, CARRIER, FORWARD_PATH)
        };
        if let Err(e) = topic.bus.subscribe(config, router).await {
            lock(&self.shared.subscriptions).remove(&subscription.name);
            return Err(e.into());
        }
        Ok(())
    }

    /// The next `count` `Publish` requests fail with `code` (each attempt of the client's retry
    /// loop is one request).
    pub fn fail_next_publishes(&self, count: u32, code: Code) {
        *lock(&self.shared.faults) = Faults { remaining: count, code: Some(code) };
    }

    /// `Publish` requests received so far (scripted failures included).
    pub fn publish_requests(&self) -> u64 {
        self.shared.publish_requests.load(Ordering::Relaxed)
    }

    /// Messages accepted so far.
    pub fn published_messages(&self) -> u64 {
        self.shared.published.load(Ordering::Relaxed)
    }

    /// The messages of `subscription` that ran out of delivery attempts, oldest first.
    pub async fn dead_letters(&self, subscription: &str) -> Result<Vec<DeadLetter>, StandInError> {
        let topic_name = lock(&self.shared.subscriptions)
            .get(subscription)
            .cloned()
            .ok_or_else(|| StandInError::UnknownSubscription(subscription.to_owned()))?;
        let topic = self.shared.topic(&topic_name).ok_or(StandInError::UnknownTopic(topic_name))?;
        let mut letters = topic.bus.dead_letters(subscription).await?;
        for letter in &mut letters {
            letter.topic = topic.name.clone();
        }
        Ok(letters)
    }

    /// Messages of `subscription` not yet acked or dead-lettered.
    pub async fn backlog(&self, subscription: &str) -> Result<u64, StandInError> {
        let topic_name = lock(&self.shared.subscriptions)
            .get(subscription)
            .cloned()
            .ok_or_else(|| StandInError::UnknownSubscription(subscription.to_owned()))?;
        let topic = self.shared.topic(&topic_name).ok_or(StandInError::UnknownTopic(topic_name))?;
        let stats = topic.bus.stats().await?;
        Ok(stats.subscriptions.get(subscription).map_or(0, |s| s.backlog))
    }

    /// Stops serving, lets deliveries in flight finish (up to `grace`) and removes the data.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        let topics: Vec<Arc<StandInTopic>> = lock(&self.shared.topics).values().cloned().collect();
        futures_util::future::join_all(topics.iter().map(|t| t.bus.shutdown(grace))).await;
    }
}

impl Drop for PubSubStandIn {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
        // The buses' files go with the directory; their tasks end with the runtime.
        let _ = std::fs::remove_dir_all(&self.shared.dir);
    }
}

/// Where one subscription's pushes go.
#[derive(Clone)]
struct Forward {
    http: reqwest::Client,
    url: String,
    audience: String,
    /// The subscription's full name, written into each envelope.
    subscription: String,
    token_source: Option<PushTokenSource>,
}

/// Posts the envelope the embedded bus built to the push URL and answers with the endpoint's
/// status, which the embedded bus turns into an ack or a redelivery.
async fn forward_push(State(forward): State<Forward>, body: Bytes) -> StatusCode {
    // The embedded bus names its own project; write the stand-in's subscription name instead.
    let body = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(mut envelope)) => {
            envelope.insert("subscription".into(), serde_json::Value::String(forward.subscription.clone()));
            serde_json::to_vec(&envelope).unwrap_or_default()
        }
        _ => {
            tracing::error!("the embedded bus produced an envelope that is not a JSON object");
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
    };
    let mut request = forward
        .http
        .post(&forward.url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)")
        .body(body);
    if let Some(source) = &forward.token_source {
        match source(&forward.audience) {
            Ok(token) => request = request.bearer_auth(token),
            Err(e) => {
                // Pub/Sub cannot push without its token either: a nack, retried later.
                tracing::warn!(subscription = %forward.subscription, error = %e, "no push token");
                return StatusCode::SERVICE_UNAVAILABLE;
            }
        }
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            // Read the body so the connection goes back to the pool.
            let _ = response.bytes().await;
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY)
        }
        Err(e) => {
            tracing::debug!(subscription = %forward.subscription, error = %e, "push failed");
            // Not an answer from the endpoint: a nack, like Pub/Sub's failed push.
            StatusCode::BAD_GATEWAY
        }
    }
}

/// The Publisher service, routed by method name.
#[derive(Debug, Clone)]
struct PublisherService {
    shared: Arc<Shared>,
}

impl tonic::server::NamedService for PublisherService {
    const NAME: &'static str = "google.pubsub.v1.Publisher";
}

type BoxResponse = Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, Infallible>> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for PublisherService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxResponse;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> BoxResponse {
        let shared = Arc::clone(&self.shared);
        let method = request.uri().path().rsplit('/').next().unwrap_or_default().to_owned();
        Box::pin(async move {
            let response = match method.as_str() {
                "Publish" => {
                    unary(request, move |req: proto::PublishRequest| async move { shared.publish(req).await }).await
                }
                "GetTopic" => {
                    unary(request, move |req: proto::GetTopicRequest| async move {
                        match shared.topic(&req.topic) {
                            Some(topic) => Ok(shared.proto_topic(&topic.name)),
                            None => {
                                Err(tonic::Status::not_found(format!("Resource not found (resource={}).", req.topic)))
                            }
                        }
                    })
                    .await
                }
                "CreateTopic" => {
                    unary(request, move |req: proto::Topic| async move {
                        match shared.create_topic(&req.name) {
                            Ok(topic) => Ok(shared.proto_topic(&topic.name)),
                            Err(StandInError::TopicExists(name)) => Err(tonic::Status::already_exists(format!(
                                "Resource already exists (resource={name})."
                            ))),
                            Err(e) => Err(tonic::Status::internal(e.to_string())),
                        }
                    })
                    .await
                }
                other => {
                    tonic::Status::unimplemented(format!("the Pub/Sub stand-in does not serve {other}")).into_http()
                }
            };
            Ok(response)
        })
    }
}

/// Serves one unary call: decodes the request message, runs `handle`, encodes its answer.
async fn unary<Req, Res, F, Fut>(
    request: http::Request<tonic::body::Body>,
    handle: F,
) -> http::Response<tonic::body::Body>
where
    Req: gcloud_sdk::prost::Message + Default + Send + 'static,
    Res: gcloud_sdk::prost::Message + Send + 'static,
    F: FnOnce(Req) -> Fut + Send,
    Fut: Future<Output = Result<Res, tonic::Status>> + Send,
{
    let mut handle = Some(handle);
    let service = tower::service_fn(move |request: tonic::Request<Req>| {
        let handle = handle.take();
        async move {
            match handle {
                Some(handle) => handle(request.into_inner()).await.map(tonic::Response::new),
                None => Err(tonic::Status::internal("one unary call, one answer")),
            }
        }
    });
    tonic::server::Grpc::new(tonic_prost::ProstCodec::<Res, Req>::default()).unary(service, request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::publisher_client::PublisherClient;

    /// What a push endpoint saw: the `Authorization` header and the envelope's subscription.
    type Pushes = Arc<Mutex<Vec<(Option<String>, String)>>>;

    async fn client(stand_in: &PubSubStandIn) -> PublisherClient<tonic::transport::Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", stand_in.addr()))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        PublisherClient::new(channel)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn topics_are_created_and_read_over_grpc() {
        let stand_in = PubSubStandIn::start("demo").await.expect("stand-in");
        let mut client = client(&stand_in).await;
        let topic = proto::Topic { name: "projects/demo/topics/t1".into(), ..Default::default() };
        let created = client.create_topic(topic.clone()).await.expect("created").into_inner();
        assert_eq!(created.name, "projects/demo/topics/t1");
        let again = client.create_topic(topic).await.expect_err("exists");
        assert_eq!(again.code(), Code::AlreadyExists);
        let read = client.get_topic(proto::GetTopicRequest { topic: "projects/demo/topics/t1".into() }).await;
        assert_eq!(read.expect("read").into_inner().name, "projects/demo/topics/t1");
        let missing = client.get_topic(proto::GetTopicRequest { topic: "projects/demo/topics/t2".into() }).await;
        assert_eq!(missing.expect_err("missing").code(), Code::NotFound);
        stand_in.fail_next_publishes(1, Code::ResourceExhausted);
        let request = proto::PublishRequest {
            topic: "projects/demo/topics/t1".into(),
            messages: vec![proto::PubsubMessage { data: b"x".to_vec(), ..Default::default() }],
        };
        let refused = client.publish(request.clone()).await.expect_err("scripted");
        assert_eq!(refused.code(), Code::ResourceExhausted);
        let ids = client.publish(request).await.expect("accepted").into_inner().message_ids;
        assert_eq!(ids.len(), 1);
        assert_eq!((stand_in.publish_requests(), stand_in.published_messages()), (2, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pushes_carry_the_token_source_bearer_token_for_the_audience() {
        let stand_in = PubSubStandIn::start("demo").await.expect("stand-in");
        let topic = stand_in.create_topic("events").expect("topic");
        let seen: Pushes = Arc::default();
        let recorder = Arc::clone(&seen);
        let endpoint = Router::new().route(
            "/push",
            post(move |headers: http::HeaderMap, body: Bytes| {
                let recorder = Arc::clone(&recorder);
                async move {
                    let auth =
                        headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
                    let envelope: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let subscription = envelope["subscription"].as_str().unwrap_or_default().to_owned();
                    lock(&recorder).push((auth, subscription));
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
        let url = format!("http://{}/push", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, endpoint).await;
        });
        let tokens: PushTokenSource = Arc::new(|audience: &str| Ok(format!("token-for-{audience}")));
        let subscription =
            PushSubscription::new("signed", &topic, &url).oidc_token(tokens, Some("https://devgem.example".into()));
        stand_in.add_push_subscription(subscription).await.expect("subscription");
        let mut client = client(&stand_in).await;
        let message = proto::PubsubMessage { data: b"hello".to_vec(), ..Default::default() };
        client.publish(proto::PublishRequest { topic, messages: vec![message] }).await.expect("published");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while lock(&seen).is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "never pushed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let seen = lock(&seen).clone();
        assert_eq!(
            seen,
            [(
                Some("Bearer token-for-https://devgem.example".to_owned()),
                "projects/demo/subscriptions/signed".to_owned()
            )]
        );
        server.abort();
    }
}
