use super::*;
use crate::gcp::emulators::pubsub::{Code as GrpcCode, PubSubStandIn};
use bytes::Bytes;
use google_cloud_gax::error::rpc::Status;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::time::Instant;

fn config(stand_in: &PubSubStandIn) -> GcpConfig {
    GcpConfig {
        project: stand_in.project().to_owned(),
        pubsub_emulator: Some(stand_in.emulator_host()),
        topic_prefix: "devgem-".to_owned(),
        ..GcpConfig::default()
    }
}

/// Quick retries and a breaker that opens after 3 failed publishes.
fn fast() -> PubSubOptions {
    PubSubOptions {
        batch_delay: Duration::from_millis(5),
        retry_attempts: 4,
        retry_first_delay: Duration::from_millis(10),
        retry_max_delay: Duration::from_millis(40),
        retry_time_limit: Duration::from_secs(10),
        breaker: BreakerPolicy { failures: 3, cool_down: Duration::from_secs(60) },
        ..PubSubOptions::default()
    }
}

fn message(text: &str, key: Option<&str>) -> OutboundMessage {
    OutboundMessage {
        data: Bytes::from(text.to_owned()),
        attributes: BTreeMap::from([("ce-type".to_owned(), "dev.devgem.test.v1".to_owned())]),
        ordering_key: key.map(str::to_owned),
    }
}

async fn setup(topic: Option<Topic>) -> (PubSubStandIn, PubSubBus) {
    let stand_in = PubSubStandIn::start("demo").await.expect("stand-in");
    let bus = PubSubBus::connect_with(&config(&stand_in), fast()).await.expect("client");
    if let Some(topic) = topic {
        stand_in.create_topic(&bus.topic_name(topic)).expect("topic");
    }
    (stand_in, bus)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_unavailable_is_retried_and_the_publish_succeeds() {
    let (stand_in, bus) = setup(Some(Topic::Builds)).await;
    stand_in.fail_next_publishes(2, GrpcCode::Unavailable);
    let id = bus.publish(Topic::Builds, message("hello", None)).await.expect("published after the retries");
    assert!(!id.is_empty(), "the server's message id");
    assert_eq!(stand_in.publish_requests(), 3, "two refused attempts, then the accepted one");
    assert_eq!(stand_in.published_messages(), 1, "accepted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_opens_the_breaker_and_publishes_then_fail_fast() {
    let (stand_in, bus) = setup(Some(Topic::Builds)).await;
    stand_in.fail_next_publishes(10_000, GrpcCode::Unavailable);
    for _ in 0..3 {
        let error = bus.publish(Topic::Builds, message("m", None)).await.expect_err("Pub/Sub is down");
        assert!(error.is_transient(), "{error}");
        assert!(error.to_string().contains("projects/demo/topics/devgem-builds"), "names the topic: {error}");
        assert!(error.to_string().contains("Unavailable"), "says why: {error}");
    }
    assert!(stand_in.publish_requests() > 3, "the client library retried each publish");
    let sent = stand_in.publish_requests();
    let started = Instant::now();
    let error = bus.publish(Topic::Builds, message("m", None)).await.expect_err("breaker open");
    assert!(started.elapsed() < Duration::from_millis(500), "fails fast: {:?}", started.elapsed());
    assert!(error.is_transient(), "{error}");
    let text = error.to_string();
    assert!(text.contains("Pub/Sub is failing repeatedly"), "{text}");
    assert!(text.contains("devgem-builds"), "{text}");
    assert_eq!(stand_in.publish_requests(), sent, "an open breaker sends nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_an_unknown_topic_and_is_not_retried() {
    let (stand_in, bus) = setup(None).await;
    let error = bus.publish(Topic::Alerts, message("m", None)).await.expect_err("no such topic");
    assert_eq!(error, BusError::UnknownTopic("projects/demo/topics/devgem-alerts".to_owned()));
    assert_eq!(stand_in.publish_requests(), 1, "NOT_FOUND is permanent");
    // A refusal is a sign of life: the breaker stays closed and the next call is sent.
    let _ = bus.publish(Topic::Alerts, message("m", None)).await;
    assert_eq!(stand_in.publish_requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_batched_and_every_publish_gets_its_own_id() {
    let (stand_in, bus) = setup(Some(Topic::Deployments)).await;
    let bus = Arc::new(bus);
    let publishes = (0..250).map(|n| {
        let bus = Arc::clone(&bus);
        async move { bus.publish(Topic::Deployments, message(&format!("m{n}"), None)).await }
    });
    let ids: Vec<String> =
        futures_util::future::join_all(publishes).await.into_iter().collect::<Result<_, _>>().expect("all published");
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 250, "one id per message");
    assert_eq!(stand_in.published_messages(), 250);
    let requests = stand_in.publish_requests();
    assert!((3..=25).contains(&requests), "batched (at most 100 a request): {requests} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_ordered_publish_does_not_stop_its_key_for_good() {
    let (stand_in, bus) = setup(Some(Topic::Deployments)).await;
    // Every attempt of the first publish fails: the client pauses the key.
    stand_in.fail_next_publishes(4, GrpcCode::Unavailable);
    let error = bus.publish(Topic::Deployments, message("first", Some("d-1"))).await.expect_err("down");
    assert!(error.is_transient(), "{error}");
    // The caller's retry goes through: the adapter resumed the key.
    bus.publish(Topic::Deployments, message("first", Some("d-1"))).await.expect("retried publish");
    bus.publish(Topic::Deployments, message("second", Some("d-1"))).await.expect("next in order");
    assert_eq!(stand_in.published_messages(), 2);
}

#[test]
fn errors_are_classified_for_the_breaker_and_the_caller() {
    let rpc = |code: Code| {
        PublishFailure::from(PublishError::Rpc(Arc::new(google_cloud_pubsub::Error::service(
            Status::default().set_code(code).set_message("from the service"),
        ))))
    };
    assert_eq!(rpc(Code::ResourceExhausted).failure(), Failure::SlowDown);
    for code in [Code::Unavailable, Code::DeadlineExceeded, Code::Aborted, Code::Internal] {
        assert_eq!(rpc(code).failure(), Failure::Down, "{code:?}");
    }
    for code in [Code::NotFound, Code::InvalidArgument, Code::PermissionDenied] {
        assert_eq!(rpc(code).failure(), Failure::Refused, "{code:?}");
    }
    let connection = PublishFailure::from(PublishError::Rpc(Arc::new(google_cloud_pubsub::Error::io("reset"))));
    assert_eq!(connection.failure(), Failure::Down);
    assert_eq!(PublishFailure::from(PublishError::OrderingKeyPaused).failure(), Failure::Down);
    let failure = rpc(Code::PermissionDenied);
    assert!(failure.detail.contains("from the service"), "{}", failure.detail);
}

#[test]
fn emulator_hosts_become_plain_http_endpoints() {
    assert_eq!(emulator_endpoint("localhost:8085"), "http://localhost:8085");
    assert_eq!(emulator_endpoint("http://127.0.0.1:9"), "http://127.0.0.1:9");
}

#[tokio::test]
async fn our_topics_take_the_prefix_and_cloud_builds_keeps_its_fixed_name() {
    let config = GcpConfig {
        project: "demo".into(),
        topic_prefix: "dg-".into(),
        pubsub_emulator: Some("127.0.0.1:9".into()),
        ..GcpConfig::default()
    };
    // The client connects on the first publish; naming needs no server.
    let bus = PubSubBus::connect(&config).await.expect("client");
    assert_eq!(bus.topic_name(Topic::Builds), "projects/demo/topics/dg-builds");
    assert_eq!(bus.topic_name(Topic::LogEntries), "projects/demo/topics/dg-log-entries");
    assert_eq!(bus.topic_name(Topic::CloudBuilds), "projects/demo/topics/cloud-builds");
}
