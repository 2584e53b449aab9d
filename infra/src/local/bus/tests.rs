use super::*;
use crate::local::LocalStore;
use axum::extract::State;
use axum::routing::post;
use devgem_common::clock::SystemClock;
use devgem_common::events::{ChatTurn, EventContext};
use devgem_common::handler::{HandlerError, handle_push, rejected};
use devgem_common::ids::{CorrelationId, SessionId, UserId};
use devgem_common::ledger::{Once, run_once};
use devgem_common::ports::bus::BusExt;
use devgem_common::ports::store::Store;
use http::StatusCode;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What an endpoint saw: (message id, delivery attempt, when).
type Calls = Arc<Mutex<Vec<(String, u32, Instant)>>>;

fn open(dir: &Path) -> LocalBus {
    LocalBus::open(&dir.join("bus.db"), Arc::new(SystemClock)).expect("open bus")
}

fn fast(name: &str) -> SubscriptionConfig {
    SubscriptionConfig {
        min_backoff: Duration::from_millis(40),
        max_backoff: Duration::from_secs(2),
        ..SubscriptionConfig::new(name, Topic::Deployments, "/push")
    }
}

fn message(text: &str, key: Option<&str>) -> OutboundMessage {
    OutboundMessage {
        data: Bytes::from(text.to_owned()),
        attributes: BTreeMap::from([("kind".to_owned(), "test".to_owned())]),
        ordering_key: key.map(str::to_owned),
    }
}

/// An endpoint that answers each call with the next status of `script` (the last one repeats).
fn scripted(script: Vec<u16>, calls: Calls) -> Router {
    let state = (Arc::new(script), calls);
    Router::new()
        .route(
            "/push",
            post(|State((script, calls)): State<(Arc<Vec<u16>>, Calls)>, request: PushRequest| async move {
                let mut calls = calls.lock().expect("calls");
                let n = calls.len();
                calls.push((request.message.message_id.clone(), request.delivery_attempt.unwrap_or(0), Instant::now()));
                let status = script.get(n).or(script.last()).copied().unwrap_or(200);
                StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
            }),
        )
        .with_state(state)
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_with_growing_delays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = open(dir.path());
    let calls: Calls = Arc::default();
    bus.subscribe(fast("analyze"), scripted(vec![503, 503, 200], Arc::clone(&calls))).await.expect("subscribe");
    let id = bus.publish(Topic::Deployments, message("hello", None)).await.expect("publish");

    wait_for("three deliveries", || calls.lock().expect("calls").len() >= 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = calls.lock().expect("calls").clone();
    assert_eq!(calls.len(), 3, "acked on the third delivery, then never again");
    assert!(calls.iter().all(|(mid, _, _)| *mid == id));
    assert_eq!(calls.iter().map(|c| c.1).collect::<Vec<_>>(), [1, 2, 3], "deliveryAttempt counts up");
    let first_gap = calls[1].2 - calls[0].2;
    let second_gap = calls[2].2 - calls[1].2;
    assert!(first_gap >= Duration::from_millis(40), "waited the minimum backoff: {first_gap:?}");
    assert!(second_gap > first_gap, "delays grow: {first_gap:?} then {second_gap:?}");
    wait_for("ack recorded", || true).await;
    let stats = bus.stats().await.expect("stats");
    assert_eq!((stats.backlog, stats.dead_letters), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_end_in_the_dead_letter_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = open(dir.path());
    let calls: Calls = Arc::default();
    let config = SubscriptionConfig {
        min_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        ..fast("build")
    };
    bus.subscribe(config, scripted(vec![400], Arc::clone(&calls))).await.expect("subscribe");
    let id = bus.publish(Topic::Deployments, message("never works", None)).await.expect("publish");

    let bus2 = bus.clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if bus2.stats().await.expect("stats").dead_letters == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "dead letter never recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(calls.lock().expect("calls").len(), 5, "max attempts (5) deliveries, no more");
    let dead = bus.dead_letters("build").await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].message_id.as_str(), dead[0].attempts, dead[0].last_status.as_str()), (id.as_str(), 5, "400"));
    assert_eq!(dead[0].data.as_ref(), b"never works");
    assert_eq!(bus.stats().await.expect("stats").backlog, 0);
    assert_eq!(Bus::dead_letter_count(&bus).await, Ok(Some(1)), "the port's count, for /stats");

    // The janitor's pruning: only letters that died before the cutoff go.
    let before = dead[0].dead_at - chrono::Duration::seconds(1);
    assert_eq!(bus.prune_dead_letters(before).await.expect("prune"), 0, "a younger letter stays");
    assert_eq!(bus.prune_dead_letters(dead[0].dead_at + chrono::Duration::seconds(1)).await.expect("prune"), 1);
    assert_eq!(bus.stats().await.expect("stats").dead_letters, 0);
    assert_eq!(Bus::dead_letter_count(&bus).await, Ok(Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_miss_is_a_nack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = open(dir.path());
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let endpoint = Router::new().route(
        "/push",
        post(move |_: PushRequest| {
            let counter = Arc::clone(&counter);
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                StatusCode::NO_CONTENT
            }
        }),
    );
    let config = SubscriptionConfig { ack_deadline: Duration::from_millis(100), ..fast("slow") };
    bus.subscribe(config, endpoint).await.expect("subscribe");
    bus.publish(Topic::Deployments, message("m", None)).await.expect("publish");
    wait_for("redelivery after the deadline", || calls.load(Ordering::SeqCst) >= 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_keys_deliver_in_publish_order_even_across_retries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = open(dir.path());
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let failed_once: Arc<Mutex<HashSet<String>>> = Arc::default();
    let (a, f) = (Arc::clone(&acked), Arc::clone(&failed_once));
    let endpoint = Router::new().route(
        "/push",
        post(move |request: PushRequest| {
            let (acked, failed_once) = (Arc::clone(&a), Arc::clone(&f));
            async move {
                let text = String::from_utf8_lossy(&request.message.data).into_owned();
                // Every third message fails its first delivery.
                let n: u32 = text.trim_start_matches("k-").parse().unwrap_or(0);
                if n.is_multiple_of(3) && failed_once.lock().expect("lock").insert(text.clone()) {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                acked.lock().expect("lock").push(text);
                StatusCode::OK
            }
        }),
    );
    bus.subscribe(fast("ordered"), endpoint).await.expect("subscribe");
    for n in 0..30 {
        bus.publish(Topic::Deployments, message(&format!("k-{n}"), Some("deployment-1"))).await.expect("publish");
    }
    wait_for("all acked", || acked.lock().expect("lock").len() == 30).await;
    let expected: Vec<String> = (0..30).map(|n| format!("k-{n}")).collect();
    assert_eq!(*acked.lock().expect("lock"), expected);
}

use std::collections::HashSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_are_recorded_and_not_redelivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = open(dir.path());
    let store: Arc<dyn Store> =
        Arc::new(LocalStore::open(&dir.path().join("store.db"), Arc::new(SystemClock)).expect("store"));
    let calls = Arc::new(AtomicUsize::new(0));
    let (s, c) = (Arc::clone(&store), Arc::clone(&calls));
    let endpoint = Router::new().route(
        "/push",
        post(move |request: PushRequest| {
            let (store, calls) = (Arc::clone(&s), Arc::clone(&c));
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                handle_push::<ChatTurn, _, _>(store.as_ref(), Utc::now(), request, |_| async { Ok(()) }).await
            }
        }),
    );
    bus.subscribe(SubscriptionConfig { topic: Topic::ChatTurns, ..fast("chat") }, endpoint).await.expect("subscribe");
    // Not a CloudEvent at all: the payload can never be handled.
    let id = bus.publish(Topic::ChatTurns, message("garbage", None)).await.expect("publish");
    wait_for("delivery", || calls.load(Ordering::SeqCst) >= 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "acked with 200, not redelivered");
    let record = rejected(store.as_ref(), &id).await.expect("read").expect("recorded in rejected/");
    assert!(record.reason.contains("ce-specversion"), "the reason says what was wrong: {}", record.reason);
    assert_eq!(bus.stats().await.expect("stats").dead_letters, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_turns_two_deliveries_into_one_side_effect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = open(dir.path());
    let store: Arc<dyn Store> =
        Arc::new(LocalStore::open(&dir.path().join("store.db"), Arc::new(SystemClock)).expect("store"));
    let effects = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let (s, e, c) = (Arc::clone(&store), Arc::clone(&effects), Arc::clone(&calls));
    let endpoint = Router::new().route(
        "/push",
        post(move |request: PushRequest| {
            let (store, effects, calls) = (Arc::clone(&s), Arc::clone(&e), Arc::clone(&c));
            async move {
                let call = calls.fetch_add(1, Ordering::SeqCst);
                let ledger_store = Arc::clone(&store);
                handle_push::<ChatTurn, _, _>(store.as_ref(), Utc::now(), request, |envelope| async move {
                    let store = ledger_store;
                    let key = format!("chat-{}", envelope.event.as_ref().map(|m| m.id.clone()).unwrap_or_default());
                    let once = run_once(store.as_ref(), &SystemClock, &key, chrono::Duration::seconds(30), || async {
                        Ok::<_, HandlerError>(effects.fetch_add(1, Ordering::SeqCst) + 1)
                    })
                    .await
                    .map_err(|e| HandlerError::Transient(e.to_string()))?;
                    // The first delivery "crashes" after the effect, before acking.
                    if call == 0 {
                        assert!(matches!(once, Once::Applied(1)));
                        return Err(HandlerError::Transient("simulated crash after the effect".into()));
                    }
                    assert_eq!(once, Once::AlreadyDone(1), "the recorded result comes back");
                    Ok(())
                })
                .await
            }
        }),
    );
    bus.subscribe(SubscriptionConfig { topic: Topic::ChatTurns, ..fast("chat") }, endpoint).await.expect("subscribe");
    let turn = ChatTurn {
        session_id: SessionId::parse("s1").expect("id"),
        user_id: UserId::admin(),
        text: "deploy".into(),
        client_message_id: None,
    };
    let ctx = EventContext::new("relay", CorrelationId::generate());
    bus.publish_event(&turn, &ctx, Utc::now()).await.expect("publish");
    wait_for("the redelivery", || calls.load(Ordering::SeqCst) >= 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "delivered twice");
    assert_eq!(effects.load(Ordering::SeqCst), 1, "the side effect happened once");
    assert_eq!(bus.stats().await.expect("stats").backlog, 0);
}

#[test]
fn messages_published_before_a_crash_are_delivered_after_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    // First life: the subscriber never answers, then the process dies (runtime dropped, no
    // shutdown, no ack recorded).
    {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let bus = open(dir.path());
            let hang = Router::new().route(
                "/push",
                post(|_: PushRequest| async {
                    std::future::pending::<()>().await;
                    StatusCode::OK
                }),
            );
            bus.subscribe(fast("deploy"), hang).await.expect("subscribe");
            for n in 0..3 {
                bus.publish(Topic::Deployments, message(&format!("m{n}"), Some("key"))).await.expect("publish");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
        runtime.shutdown_background();
    }
    // Second life.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let bus = open(dir.path());
        assert_eq!(bus.stats().await.expect("stats").backlog, 3, "still pending on disk");
        let calls: Calls = Arc::default();
        bus.subscribe(fast("deploy"), scripted(vec![200], Arc::clone(&calls))).await.expect("subscribe");
        wait_for("redelivery after restart", || calls.lock().expect("calls").len() == 3).await;
        let ids: Vec<String> = calls.lock().expect("calls").iter().map(|c| c.0.clone()).collect();
        assert_eq!(ids, ["1", "2", "3"], "in publish order");
        let deadline = Instant::now() + Duration::from_secs(5);
        while bus.stats().await.expect("stats").backlog != 0 {
            assert!(Instant::now() < deadline, "acks recorded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

#[tokio::test]
async fn publishes_are_validated_like_pubsub() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = open(dir.path());
    let empty = OutboundMessage { data: Bytes::new(), attributes: BTreeMap::new(), ordering_key: None };
    assert!(matches!(bus.publish(Topic::Builds, empty).await, Err(BusError::Invalid(_))));
    let huge = OutboundMessage {
        data: Bytes::from(vec![0u8; OutboundMessage::MAX_DATA_BYTES + 1]),
        attributes: BTreeMap::new(),
        ordering_key: None,
    };
    let err = bus.publish(Topic::Builds, huge).await.expect_err("too large");
    assert!(err.to_string().contains("limit"), "{err}");
    // A topic without subscriptions accepts the message and drops it, as Pub/Sub does.
    assert!(bus.publish(Topic::Builds, message("x", None)).await.is_ok());
    assert_eq!(bus.stats().await.expect("stats").backlog, 0);
}

#[test]
fn backoff_doubles_with_bounded_jitter_up_to_the_cap() {
    let config = SubscriptionConfig::new("s", Topic::Builds, "/");
    for _ in 0..100 {
        let d1 = config.backoff(1);
        let d2 = config.backoff(2);
        assert!(d1 >= Duration::from_secs(1) && d1 <= Duration::from_millis(1250));
        assert!(d2 >= Duration::from_secs(2) && d2 <= Duration::from_millis(2500));
        assert!(d2 > d1);
        assert!(config.backoff(40) <= Duration::from_secs(75));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_cannot_be_attached_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = open(dir.path());
    let calls: Calls = Arc::default();
    bus.subscribe(fast("once"), scripted(vec![200], Arc::clone(&calls))).await.expect("first");
    let err = bus.subscribe(fast("once"), scripted(vec![200], Arc::clone(&calls))).await.expect_err("second");
    assert!(err.to_string().contains("already attached"), "{err}");
    // After a shutdown it can be attached again, and nothing is delivered twice.
    bus.shutdown(Duration::from_secs(1)).await;
    bus.subscribe(fast("once"), scripted(vec![200], Arc::clone(&calls))).await.expect("after shutdown");
    bus.publish(Topic::Deployments, message("m", None)).await.expect("publish");
    wait_for("delivery", || calls.lock().expect("calls").len() == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(calls.lock().expect("calls").len(), 1);
}
