//! Pub/Sub adapter benchmark: publish latency and throughput of `PubSubBus` (the official client,
//! production batching: 10 ms delay, 100 messages) on the loopback Pub/Sub stand-in, next to the
//! embedded `LocalBus`, in the same run.
//!
//! ```text
//! cargo bench -p devgem-infra --bench pubsub            # full run: N = 2000, M = 10000
//! cargo bench -p devgem-infra --bench pubsub -- 0.1     # quick run: N and M scaled by 0.1
//! PUBSUB_BENCH_SCALE=0.1 cargo bench -p devgem-infra --bench pubsub
//! ```
//!
//! Both adapters publish on one topic with one push subscription whose endpoint is an axum
//! router taking the real `PushRequest` extractor and answering 204: in-process for `LocalBus`,
//! over loopback HTTP from the stand-in for `PubSubBus` (the stand-in's own delivery is an
//! embedded bus, so its end-to-end numbers include one more SQLite commit and an HTTP hop).
//!
//! - Latency: one task publishes sequentially, each publish awaited (for `PubSubBus` that means
//!   accepted by the server: every lone publish waits out the batching delay).
//! - Throughput: P publisher tasks publish M messages as fast as they can; measured until every
//!   publish returned and until the endpoint received all M. Once more for `PubSubBus` with no
//!   subscription on the topic: on 2 cores the stand-in's deliveries (an embedded bus and an HTTP
//!   hop per message) compete with the publish path, and this shows the publish path alone.

use axum::Router;
use axum::routing::post;
use devgem_common::clock::SystemClock;
use devgem_common::events::Topic;
use devgem_common::ports::bus::Bus;
use devgem_infra::gcp::GcpConfig;
use devgem_infra::gcp::emulators::pubsub::{PubSubStandIn, PushSubscription};
use devgem_infra::gcp::pubsub::PubSubBus;
use devgem_infra::local::{LocalBus, SubscriptionConfig};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod arrivals;
mod support;
use arrivals::{PAYLOAD_BYTES, Shared, handler, message, ms, scale, scaled};
use support::{Percentiles, percentiles};

const LATENCY_N: usize = 2_000;
const LATENCY_WARMUP: usize = 200;
const THROUGHPUT_M: usize = 10_000;
const PUBLISHER_COUNTS: [usize; 2] = [8, 64];
const TOPIC: Topic = Topic::Deployments;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adapter {
    Local,
    PubSub,
    /// `PubSubBus` on a stand-in topic without a subscription: the publish path alone (client,
    /// gRPC, the stand-in storing the message), without the delivery work competing for the
    /// same 2 cores.
    PubSubNoDelivery,
}

impl Adapter {
    fn label(self) -> &'static str {
        match self {
            Adapter::Local => "LocalBus",
            Adapter::PubSub => "PubSubBus",
            Adapter::PubSubNoDelivery => "PubSubBus, no subscription",
        }
    }

    fn delivers(self) -> bool {
        self != Adapter::PubSubNoDelivery
    }
}

/// A fresh bus with one acking subscription, and whatever keeps it alive.
struct Setup {
    bus: Box<dyn Bus>,
    shared: Arc<Shared>,
    local: Option<LocalBus>,
    stand_in: Option<PubSubStandIn>,
    endpoint: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

async fn setup(adapter: Adapter, messages: usize) -> Setup {
    let dir = tempfile::tempdir().expect("temp data dir");
    let shared = Shared::new(messages);
    let router = Router::new().route("/push", post(handler)).with_state(Arc::clone(&shared));
    match adapter {
        Adapter::Local => {
            let bus = LocalBus::open(&dir.path().join("bus.db"), Arc::new(SystemClock)).expect("open bus");
            bus.subscribe(SubscriptionConfig::new("bench", TOPIC, "/push"), router).await.expect("subscribe");
            Setup { bus: Box::new(bus.clone()), shared, local: Some(bus), stand_in: None, endpoint: None, _dir: dir }
        }
        Adapter::PubSub | Adapter::PubSubNoDelivery => {
            let stand_in = PubSubStandIn::start("bench").await.expect("stand-in");
            let config = GcpConfig {
                project: "bench".to_owned(),
                pubsub_emulator: Some(stand_in.emulator_host()),
                ..GcpConfig::default()
            };
            let bus = PubSubBus::connect(&config).await.expect("client");
            let topic = stand_in.create_topic(&bus.topic_name(TOPIC)).expect("topic");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = format!("http://{}/push", listener.local_addr().expect("addr"));
            let endpoint = tokio::spawn(async move {
                let _ = axum::serve(listener, router).await;
            });
            if adapter.delivers() {
                stand_in
                    .add_push_subscription(PushSubscription::new("bench", &topic, &url))
                    .await
                    .expect("subscription");
            }
            Setup {
                bus: Box::new(bus),
                shared,
                local: None,
                stand_in: Some(stand_in),
                endpoint: Some(endpoint),
                _dir: dir,
            }
        }
    }
}

impl Setup {
    async fn publish(&self, index: usize) -> Duration {
        let message = message(index);
        self.shared.mark_start(index);
        let started = Instant::now();
        self.bus.publish(TOPIC, message).await.expect("publish");
        started.elapsed()
    }

    async fn close(self) {
        if let Some(local) = &self.local {
            local.shutdown(Duration::from_secs(10)).await;
        }
        if let Some(stand_in) = self.stand_in {
            stand_in.shutdown(Duration::from_secs(10)).await;
        }
        if let Some(endpoint) = self.endpoint {
            endpoint.abort();
        }
    }
}

#[derive(Debug)]
struct LatencyResult {
    adapter: Adapter,
    messages: usize,
    end_to_end: Percentiles,
    publish_call: Percentiles,
    elapsed: Duration,
    duplicates: usize,
}

async fn bench_latency(adapter: Adapter, warmup: usize, n: usize) -> LatencyResult {
    let setup = setup(adapter, warmup + n).await;
    for index in 0..warmup {
        setup.publish(index).await;
    }
    setup.shared.wait_received(warmup).await;
    let started = Instant::now();
    let mut calls = Vec::with_capacity(n);
    for index in warmup..warmup + n {
        calls.push(setup.publish(index).await);
    }
    setup.shared.wait_received(warmup + n).await;
    let elapsed = started.elapsed();
    let end_to_end = (warmup..warmup + n).map(|i| setup.shared.latency(i)).collect();
    let result = LatencyResult {
        adapter,
        messages: n,
        end_to_end: percentiles(end_to_end),
        publish_call: percentiles(calls),
        elapsed,
        duplicates: setup.shared.duplicates.load(Ordering::SeqCst),
    };
    setup.close().await;
    result
}

#[derive(Debug)]
struct ThroughputResult {
    adapter: Adapter,
    publishers: usize,
    messages: usize,
    published: Duration,
    /// `None` when nothing is delivered.
    received: Option<Duration>,
    publish_call: Percentiles,
    end_to_end: Option<Percentiles>,
    duplicates: usize,
}

async fn bench_throughput(adapter: Adapter, publishers: usize, m: usize) -> ThroughputResult {
    let setup = Arc::new(setup(adapter, m).await);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..publishers {
        let (setup, next) = (Arc::clone(&setup), Arc::clone(&next));
        tasks.spawn(async move {
            let mut calls = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= m {
                    return calls;
                }
                calls.push(setup.publish(index).await);
            }
        });
    }
    let mut calls = Vec::with_capacity(m);
    while let Some(done) = tasks.join_next().await {
        calls.extend(done.expect("publisher task"));
    }
    let published = started.elapsed();
    let (received, end_to_end) = if adapter.delivers() {
        setup.shared.wait_received(m).await;
        let received = started.elapsed();
        (Some(received), Some(percentiles((0..m).map(|i| setup.shared.latency(i)).collect())))
    } else {
        (None, None)
    };
    let result = ThroughputResult {
        adapter,
        publishers,
        messages: m,
        published,
        received,
        publish_call: percentiles(calls),
        end_to_end,
        duplicates: setup.shared.duplicates.load(Ordering::SeqCst),
    };
    if let Ok(setup) = Arc::try_unwrap(setup) {
        setup.close().await;
    }
    result
}

fn main() {
    let scale = scale("PUBSUB_BENCH_SCALE");
    let (warmup, n, m) = (scaled(LATENCY_WARMUP, scale), scaled(LATENCY_N, scale), scaled(THROUGHPUT_M, scale));
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("Pub/Sub adapter benchmark: scale {scale}, {cores} cores, tokio multi-thread with 2 workers");
    println!(
        "payload {PAYLOAD_BYTES} B + 1 attribute; PubSubBus with PubSubOptions::default() (batch delay 10 ms) \
         on the loopback stand-in; handler answers 204\n"
    );

    let (latency, throughput) = runtime.block_on(async {
        let mut latency = Vec::new();
        let mut throughput = Vec::new();
        for adapter in [Adapter::Local, Adapter::PubSub] {
            latency.push(bench_latency(adapter, warmup, n).await);
            for publishers in PUBLISHER_COUNTS {
                throughput.push(bench_throughput(adapter, publishers, m).await);
            }
        }
        for publishers in PUBLISHER_COUNTS {
            throughput.push(bench_throughput(Adapter::PubSubNoDelivery, publishers, m).await);
        }
        (latency, throughput)
    });

    println!("(a) latency: {n} messages after {warmup} warm-up, published sequentially by 1 task (ms)");
    println!(
        "{:<28} {:<16} {:>8} {:>8} {:>8} {:>8} {:>9} {:>5}",
        "adapter", "measure", "p50", "p90", "p99", "max", "msg/s", "dups"
    );
    for r in &latency {
        let rate = r.messages as f64 / r.elapsed.as_secs_f64();
        for (what, p) in [("publish() call", r.publish_call), ("publish→handler", r.end_to_end)] {
            println!(
                "{:<28} {:<16} {:>8} {:>8} {:>8} {:>8} {:>9.0} {:>5}",
                r.adapter.label(),
                what,
                ms(p.p50),
                ms(p.p90),
                ms(p.p99),
                ms(p.max),
                rate,
                r.duplicates
            );
        }
    }

    println!("\n(b) throughput: {m} messages from P concurrent publisher tasks");
    println!(
        "{:<28} {:>4} {:>12} {:>12} {:>13} {:>13} {:>5}",
        "adapter", "P", "published s", "received s", "publishes/s", "e2e events/s", "dups"
    );
    for r in &throughput {
        let (received, e2e_rate) = match r.received {
            Some(at) => (format!("{:.3}", at.as_secs_f64()), format!("{:.0}", r.messages as f64 / at.as_secs_f64())),
            None => ("-".to_owned(), "-".to_owned()),
        };
        println!(
            "{:<28} {:>4} {:>12.3} {:>12} {:>13.0} {:>13} {:>5}",
            r.adapter.label(),
            r.publishers,
            r.published.as_secs_f64(),
            received,
            r.messages as f64 / r.published.as_secs_f64(),
            e2e_rate,
            r.duplicates
        );
    }
    println!("\n(b) latency under that load (ms)");
    println!("{:<28} {:>4} {:<16} {:>8} {:>8} {:>8} {:>8}", "adapter", "P", "measure", "p50", "p90", "p99", "max");
    for r in &throughput {
        let rows = [("publish() call", Some(r.publish_call)), ("publish→handler", r.end_to_end)];
        for (what, p) in rows.into_iter().filter_map(|(what, p)| p.map(|p| (what, p))) {
            println!(
                "{:<28} {:>4} {:<16} {:>8} {:>8} {:>8} {:>8}",
                r.adapter.label(),
                r.publishers,
                what,
                ms(p.p50),
                ms(p.p90),
                ms(p.p99),
                ms(p.max)
            );
        }
    }
}
