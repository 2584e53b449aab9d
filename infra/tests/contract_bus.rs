//! The Bus contract: one set of checks, run against every adapter of the Bus port.
//!
//! - `embedded`: [`LocalBus`] publishes and delivers through its own subscription, in-process,
//!   to the test's push endpoint (an axum router).
//! - `pubsub`: [`PubSubBus`] (the official client, production batching) publishes over gRPC to
//!   the Pub/Sub stand-in, whose push subscription POSTs to the same kind of endpoint served on
//!   loopback HTTP.
//!
//! Each check asserts what the push endpoint receives: the envelope (DESIGN.md, Events), at least
//! once delivery with redelivery after a nack, dead letters after the maximum attempts, ordering
//! keys, a burst of publishes, and that messages Pub/Sub would refuse are refused alike.

use axum::Router;
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use chrono::Utc;
use devgem_common::clock::SystemClock;
use devgem_common::envelope::{PushEnvelope, PushRequest};
use devgem_common::events::{DeploymentRequested, EventContext, EventPayload, Topic, to_message};
use devgem_common::ids::{CorrelationId, DeploymentId, SessionId, UserId};
use devgem_common::ports::bus::{Bus, BusError, OutboundMessage};
use devgem_infra::gcp::GcpConfig;
use devgem_infra::gcp::emulators::pubsub::{PubSubStandIn, PushSubscription};
use devgem_infra::gcp::pubsub::{PubSubBus, PubSubOptions};
use devgem_infra::local::{DeadLetter, LocalBus, SubscriptionConfig};
use http::{HeaderMap, StatusCode};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const TOPIC: Topic = Topic::Deployments;

/// The subscription a check needs.
#[derive(Debug, Clone)]
struct Sub {
    name: &'static str,
    max_attempts: u32,
    min_backoff: Duration,
    max_backoff: Duration,
}

impl Sub {
    fn new(name: &'static str) -> Self {
        Self { name, max_attempts: 5, min_backoff: Duration::from_millis(30), max_backoff: Duration::from_millis(300) }
    }
}

/// One adapter with a subscription on [`TOPIC`] that pushes to the check's endpoint.
trait Harness: Sized {
    fn start(sub: Sub, endpoint: Router) -> impl Future<Output = Self>;
    fn bus(&self) -> &dyn Bus;
    fn dead_letters(&self, subscription: &str) -> impl Future<Output = Vec<DeadLetter>>;
}

struct Local {
    bus: LocalBus,
    _dir: tempfile::TempDir,
}

impl Harness for Local {
    async fn start(sub: Sub, endpoint: Router) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let bus = LocalBus::open(&dir.path().join("bus.db"), Arc::new(SystemClock)).expect("open bus");
        let config = SubscriptionConfig {
            max_attempts: sub.max_attempts,
            min_backoff: sub.min_backoff,
            max_backoff: sub.max_backoff,
            ..SubscriptionConfig::new(sub.name, TOPIC, "/push")
        };
        bus.subscribe(config, endpoint).await.expect("subscribe");
        Self { bus, _dir: dir }
    }

    fn bus(&self) -> &dyn Bus {
        &self.bus
    }

    async fn dead_letters(&self, subscription: &str) -> Vec<DeadLetter> {
        self.bus.dead_letters(subscription).await.expect("dead letters")
    }
}

struct PubSub {
    stand_in: PubSubStandIn,
    bus: PubSubBus,
    endpoint: tokio::task::JoinHandle<()>,
}

impl Harness for PubSub {
    async fn start(sub: Sub, endpoint: Router) -> Self {
        let stand_in = PubSubStandIn::start("contract").await.expect("stand-in");
        let config = GcpConfig {
            project: stand_in.project().to_owned(),
            pubsub_emulator: Some(stand_in.emulator_host()),
            topic_prefix: "devgem-".to_owned(),
            ..GcpConfig::default()
        };
        // Production options: batching on, the library's retries, the breaker.
        let bus = PubSubBus::connect_with(&config, PubSubOptions::default()).await.expect("client");
        let topic = stand_in.create_topic(&bus.topic_name(TOPIC)).expect("topic");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind endpoint");
        let url = format!("http://{}/push", listener.local_addr().expect("addr"));
        let endpoint = tokio::spawn(async move {
            let _ = axum::serve(listener, endpoint).await;
        });
        let subscription = PushSubscription::new(sub.name, &topic, &url)
            .max_attempts(sub.max_attempts)
            .backoff(sub.min_backoff, sub.max_backoff);
        stand_in.add_push_subscription(subscription).await.expect("subscription");
        Self { stand_in, bus, endpoint }
    }

    fn bus(&self) -> &dyn Bus {
        &self.bus
    }

    async fn dead_letters(&self, subscription: &str) -> Vec<DeadLetter> {
        self.stand_in.dead_letters(subscription).await.expect("dead letters")
    }
}

impl Drop for PubSub {
    fn drop(&mut self) {
        self.endpoint.abort();
    }
}

/// One push request as the endpoint received it.
#[derive(Debug, Clone)]
struct Delivery {
    raw: serde_json::Value,
    request: PushRequest,
    at: Instant,
}

impl Delivery {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.request.message.data).into_owned()
    }
}

/// What the endpoint saw, shared with the check.
#[derive(Debug, Clone, Default)]
struct Seen {
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    /// Deliveries running now, per ordering key.
    in_flight: Arc<Mutex<HashMap<String, u32>>>,
    /// Times a delivery started while another of its key was running.
    overlaps: Arc<AtomicUsize>,
}

impl Seen {
    fn all(&self) -> Vec<Delivery> {
        self.deliveries.lock().expect("lock").clone()
    }

    fn count(&self) -> usize {
        self.deliveries.lock().expect("lock").len()
    }

    fn of(&self, text: &str) -> Vec<Delivery> {
        self.all().into_iter().filter(|d| d.text() == text).collect()
    }
}

/// Answers a delivery: given the request and how many times this message was delivered before.
type Script = Arc<dyn Fn(&PushRequest, usize) -> StatusCode + Send + Sync>;

fn always(status: StatusCode) -> Script {
    Arc::new(move |_, _| status)
}

/// A push endpoint that records every delivery, holds it for `hold` (so overlapping deliveries
/// of one key would be seen) and answers what `script` says.
fn endpoint(seen: Seen, script: Script, hold: Duration) -> Router {
    Router::new().route(
        "/push",
        post(move |headers: HeaderMap, body: Bytes| {
            let (seen, script) = (seen.clone(), Arc::clone(&script));
            async move {
                let Ok(request) = PushRequest::decode(&headers, &body) else {
                    return StatusCode::BAD_REQUEST;
                };
                let raw: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let key = request.message.ordering_key.clone();
                if let Some(key) = &key {
                    let mut in_flight = seen.in_flight.lock().expect("lock");
                    let running = in_flight.entry(key.clone()).or_default();
                    *running += 1;
                    if *running > 1 {
                        seen.overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let before = {
                    let mut deliveries = seen.deliveries.lock().expect("lock");
                    let before = deliveries
                        .iter()
                        .filter(|d| d.request.message.message_id == request.message.message_id)
                        .count();
                    deliveries.push(Delivery { raw, request: request.clone(), at: Instant::now() });
                    before
                };
                if !hold.is_zero() {
                    tokio::time::sleep(hold).await;
                }
                if let Some(key) = &key
                    && let Some(running) = seen.in_flight.lock().expect("lock").get_mut(key)
                {
                    *running -= 1;
                }
                script(&request, before)
            }
        }),
    )
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn text_message(text: &str, key: Option<&str>) -> OutboundMessage {
    OutboundMessage {
        data: Bytes::from(text.to_owned()),
        attributes: BTreeMap::from([("kind".to_owned(), "contract".to_owned())]),
        ordering_key: key.map(str::to_owned),
    }
}

async fn envelope_attributes_and_data_round_trip<H: Harness>() {
    let seen = Seen::default();
    let harness =
        H::start(Sub::new("envelope"), endpoint(seen.clone(), always(StatusCode::NO_CONTENT), Duration::ZERO)).await;
    let payload = DeploymentRequested {
        deployment_id: DeploymentId::generate(),
        owner: UserId::admin(),
        session_id: SessionId::generate(),
    };
    let ctx = EventContext::new("api", CorrelationId::generate());
    let sent = to_message(&payload, &ctx, Utc::now()).expect("message");
    let id = harness.bus().publish(TOPIC, sent.clone()).await.expect("publish");
    wait_for("the delivery", || seen.count() == 1).await;
    let delivery = seen.all().remove(0);

    // The wire shape of a Pub/Sub push request.
    let raw = &delivery.raw;
    let message = &raw["message"];
    assert_eq!(message["data"].as_str(), Some(BASE64.encode(&sent.data).as_str()), "data, base64: {raw}");
    let attributes: BTreeMap<String, String> =
        serde_json::from_value(message["attributes"].clone()).expect("attributes are a string map");
    assert_eq!(attributes, sent.attributes, "every attribute, as published");
    assert_eq!(message["messageId"].as_str(), Some(id.as_str()), "the id publish returned: {raw}");
    let publish_time = message["publishTime"].as_str().expect("publishTime");
    chrono::DateTime::parse_from_rfc3339(publish_time).expect("publishTime is RFC 3339");
    assert_eq!(message["orderingKey"].as_str(), Some(payload.deployment_id.as_str()), "{raw}");
    let subscription = raw["subscription"].as_str().expect("subscription");
    assert!(subscription.starts_with("projects/"), "{subscription}");
    assert!(subscription.ends_with("/subscriptions/envelope"), "{subscription}");
    assert_eq!(raw["deliveryAttempt"].as_u64(), Some(1), "{raw}");

    // The CloudEvent inside, as a handler reads it.
    let envelope = PushEnvelope::<DeploymentRequested>::decode(delivery.request.clone()).expect("our event");
    assert_eq!(envelope.payload, payload, "data round trip");
    let meta = envelope.event.expect("CloudEvent attributes");
    assert_eq!(meta.event_type, DeploymentRequested::TYPE);
    assert_eq!(Some(&meta.id), sent.attributes.get("ce-id"));
    assert_eq!(meta.correlation_id, Some(ctx.correlation_id.clone()));

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(seen.count(), 1, "acked (204): delivered once");
}

async fn a_nacked_message_is_redelivered_until_acked<H: Harness>() {
    let seen = Seen::default();
    let script: Script =
        Arc::new(|_, before| if before == 0 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK });
    let sub = Sub::new("redelivery");
    let harness = H::start(sub.clone(), endpoint(seen.clone(), script, Duration::ZERO)).await;
    let id = harness.bus().publish(TOPIC, text_message("retry me", None)).await.expect("publish");
    wait_for("the redelivery", || seen.count() == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deliveries = seen.all();
    assert_eq!(deliveries.len(), 2, "acked by the second delivery, then never again");
    assert!(deliveries.iter().all(|d| d.request.message.message_id == id), "the same message");
    let attempts: Vec<Option<u32>> = deliveries.iter().map(|d| d.request.delivery_attempt).collect();
    assert_eq!(attempts, [Some(1), Some(2)], "deliveryAttempt counts");
    let gap = deliveries[1].at - deliveries[0].at;
    assert!(gap >= sub.min_backoff, "redelivered after the backoff: {gap:?}");
    assert!(harness.dead_letters(sub.name).await.is_empty());
}

async fn a_rejected_message_is_dead_lettered_after_max_attempts_and_only_then<H: Harness>() {
    let seen = Seen::default();
    // Backoff 20, 40, 80, 160 ms: the 4th failure leaves time to look before the last attempt.
    let sub = Sub { min_backoff: Duration::from_millis(20), max_backoff: Duration::from_secs(1), ..Sub::new("poison") };
    let harness = H::start(sub.clone(), endpoint(seen.clone(), always(StatusCode::BAD_REQUEST), Duration::ZERO)).await;
    let id = harness.bus().publish(TOPIC, text_message("never valid", None)).await.expect("publish");
    wait_for("four deliveries", || seen.count() == 4).await;
    assert!(harness.dead_letters(sub.name).await.is_empty(), "not dead before the last attempt");
    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let dead = harness.dead_letters(sub.name).await;
        if !dead.is_empty() {
            break dead;
        }
        assert!(Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(seen.count(), 5, "dead after exactly max attempts (5)");
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].message_id.as_str(), dead[0].attempts), (id.as_str(), 5));
    assert_eq!(dead[0].last_status, "400");
    assert_eq!(dead[0].data.as_ref(), b"never valid");
    assert_eq!(dead[0].attributes.get("kind").map(String::as_str), Some("contract"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen.count(), 5, "no delivery after the dead letter");
}

async fn one_key_is_delivered_in_order_one_at_a_time_even_across_a_nack<H: Harness>() {
    let seen = Seen::default();
    let script: Script = Arc::new(|request, before| {
        if request.message.data.as_ref() == b"k-3" && before == 0 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    });
    let harness = H::start(Sub::new("ordered"), endpoint(seen.clone(), script, Duration::from_millis(3))).await;
    for n in 0..12 {
        harness.bus().publish(TOPIC, text_message(&format!("k-{n}"), Some("deployment-1"))).await.expect("publish");
    }
    wait_for("every message acked", || seen.count() == 13).await;
    let order: Vec<String> = seen.all().iter().map(Delivery::text).collect();
    let mut expected: Vec<String> = (0..12).map(|n| format!("k-{n}")).collect();
    expected.insert(3, "k-3".to_owned());
    assert_eq!(order, expected, "publish order; k-3 again before anything after it");
    assert_eq!(seen.overlaps.load(Ordering::SeqCst), 0, "one at a time per key");
}

async fn different_keys_do_not_block_each_other<H: Harness>() {
    let seen = Seen::default();
    let script: Script = Arc::new(|request, before| {
        if request.message.data.as_ref() == b"a-0" && before == 0 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    });
    // A long backoff: key A waits ~0.5 s for its redelivery.
    let sub = Sub { min_backoff: Duration::from_millis(500), max_backoff: Duration::from_secs(2), ..Sub::new("keys") };
    let harness = H::start(sub, endpoint(seen.clone(), script, Duration::ZERO)).await;
    harness.bus().publish(TOPIC, text_message("a-0", Some("key-a"))).await.expect("publish");
    harness.bus().publish(TOPIC, text_message("a-1", Some("key-a"))).await.expect("publish");
    for n in 0..5 {
        harness.bus().publish(TOPIC, text_message(&format!("b-{n}"), Some("key-b"))).await.expect("publish");
    }
    wait_for("key A's redelivery and its next message", || seen.of("a-1").len() == 1).await;
    let a0 = seen.of("a-0");
    assert_eq!(a0.len(), 2, "a-0 nacked once, then acked");
    let retried_at = a0[1].at;
    let b: Vec<Delivery> = seen.all().into_iter().filter(|d| d.text().starts_with("b-")).collect();
    assert_eq!(b.iter().map(Delivery::text).collect::<Vec<_>>(), ["b-0", "b-1", "b-2", "b-3", "b-4"]);
    assert!(b.iter().all(|d| d.at < retried_at), "key B went on while key A waited for its retry");
    assert!(seen.of("a-1")[0].at > retried_at, "a-1 waited for a-0");
}

async fn a_burst_of_1000_publishes_all_arrive<H: Harness>() {
    let seen = Seen::default();
    let harness =
        H::start(Sub::new("burst"), endpoint(seen.clone(), always(StatusCode::NO_CONTENT), Duration::ZERO)).await;
    let bus = harness.bus();
    let publishes = (0..1000).map(|n| bus.publish(TOPIC, text_message(&format!("burst-{n}"), None)));
    let ids: Vec<String> = futures_util::future::join_all(publishes)
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every publish accepted");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 1000, "one id per message");
    wait_for("1000 deliveries", || seen.all().iter().map(Delivery::text).collect::<HashSet<_>>().len() == 1000).await;
    let texts: HashSet<String> = seen.all().iter().map(Delivery::text).collect();
    assert!((0..1000).all(|n| texts.contains(&format!("burst-{n}"))), "every message, none lost");
}

async fn invalid_messages_are_refused_and_do_not_fail_the_others<H: Harness>() {
    let seen = Seen::default();
    let harness =
        H::start(Sub::new("invalid"), endpoint(seen.clone(), always(StatusCode::NO_CONTENT), Duration::ZERO)).await;
    let empty = OutboundMessage { data: Bytes::new(), attributes: BTreeMap::new(), ordering_key: None };
    let reserved = OutboundMessage {
        attributes: BTreeMap::from([("googclient_id".to_owned(), "x".to_owned())]),
        ..text_message("reserved attribute", None)
    };
    let huge = OutboundMessage { data: Bytes::from(vec![b'x'; 10 * 1024 * 1024 + 1]), ..text_message("", None) };
    // Published together, so that on Pub/Sub they would share a batch with the valid one.
    let bus = harness.bus();
    let (empty, reserved, huge, valid) = tokio::join!(
        bus.publish(TOPIC, empty),
        bus.publish(TOPIC, reserved),
        bus.publish(TOPIC, huge),
        bus.publish(TOPIC, text_message("valid", None)),
    );
    for refused in [empty, reserved, huge] {
        assert!(matches!(refused, Err(BusError::Invalid(_))), "{refused:?}");
    }
    valid.expect("the valid message is published");
    wait_for("the valid message", || seen.count() == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(seen.all().iter().map(Delivery::text).collect::<Vec<_>>(), ["valid"], "only the valid one");
}

macro_rules! contract {
    ($($check:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check::<super::Local>().await;
                }
            )*
        }
        mod pubsub {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check::<super::PubSub>().await;
                }
            )*
        }
    };
}

contract!(
    envelope_attributes_and_data_round_trip,
    a_nacked_message_is_redelivered_until_acked,
    a_rejected_message_is_dead_lettered_after_max_attempts_and_only_then,
    one_key_is_delivered_in_order_one_at_a_time_even_across_a_nack,
    different_keys_do_not_block_each_other,
    a_burst_of_1000_publishes_all_arrive,
    invalid_messages_are_refused_and_do_not_fail_the_others,
);
