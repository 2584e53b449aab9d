//! Embedded bus benchmark: publish → handler latency and sustained throughput (docs/PERF.md).
//!
//! ```text
//! cargo bench -p devgem-infra --bench bus            # full run: N = 5000, M = 20000
//! cargo bench -p devgem-infra --bench bus -- 0.1     # quick run: N and M scaled by 0.1
//! BUS_BENCH_SCALE=0.1 cargo bench -p devgem-infra --bench bus
//! ```
//!
//! Each scenario opens a fresh bus in a fresh temp data dir (`BUS_BENCH_DIR` picks the parent,
//! default the system temp dir) and subscribes in-process axum routers that take the real
//! `PushRequest` extractor and answer 204 (ack).
//!
//! - Latency: publish sequentially from one task, each publish awaited (it returns once the
//!   message is committed to SQLite's WAL). The message's data carries an index into a table of
//!   start instants, taken just before `publish` is called; the handler records its arrival.
//! - Throughput: 8 publisher tasks publish M messages as fast as they can; measured until the
//!   handlers received all M (end to end) and until `stats().backlog == 0` (acks persisted).
//!
//! Both run with 1 topic (1 subscription) and with 8 topics (one subscription on each of
//! `Topic::ALL`, messages spread round-robin).

use axum::Router;
use axum::routing::post;
use devgem_common::clock::SystemClock;
use devgem_common::events::Topic;
use devgem_common::ports::bus::Bus;
use devgem_infra::local::{LocalBus, SubscriptionConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod arrivals;
mod support;
use arrivals::{PAYLOAD_BYTES, PHASE_TIMEOUT, Shared, handler, message, ms, scale, scaled};
use support::{Percentiles, percentiles};

const LATENCY_N: usize = 5_000;
const LATENCY_WARMUP: usize = 500;
const THROUGHPUT_M: usize = 20_000;
const PUBLISHERS: usize = 8;
const PUSH_PATH: &str = "/push";

/// A fresh bus in a fresh data dir, with one acking subscription per topic.
struct Setup {
    bus: LocalBus,
    topics: Vec<Topic>,
    shared: Arc<Shared>,
    _dir: tempfile::TempDir,
}

async fn setup(topics: usize, messages: usize) -> Setup {
    let dir = match std::env::var_os("BUS_BENCH_DIR") {
        Some(parent) => tempfile::tempdir_in(PathBuf::from(parent)),
        None => tempfile::tempdir(),
    }
    .expect("temp data dir");
    let bus = LocalBus::open(&dir.path().join("bus.db"), Arc::new(SystemClock)).expect("open bus");
    let shared = Shared::new(messages);
    let topics: Vec<Topic> = Topic::ALL.iter().copied().take(topics).collect();
    for topic in &topics {
        let router = Router::new().route(PUSH_PATH, post(handler)).with_state(Arc::clone(&shared));
        let name = format!("bench-{}", topic.name());
        bus.subscribe(SubscriptionConfig::new(&name, *topic, PUSH_PATH), router).await.expect("subscribe");
    }
    Setup { bus, topics, shared, _dir: dir }
}

async fn publish(setup: &Setup, index: usize) -> Duration {
    let topic = setup.topics[index % setup.topics.len()];
    let message = message(index);
    setup.shared.mark_start(index);
    let started = Instant::now();
    setup.bus.publish(topic, message).await.expect("publish");
    started.elapsed()
}

async fn wait_backlog_empty(bus: &LocalBus) {
    let wait = async {
        loop {
            if bus.stats().await.expect("stats").backlog == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    if tokio::time::timeout(PHASE_TIMEOUT, wait).await.is_err() {
        panic!("backlog not empty within {PHASE_TIMEOUT:?}");
    }
}

#[derive(Debug)]
struct LatencyResult {
    topics: usize,
    messages: usize,
    end_to_end: Percentiles,
    publish_call: Percentiles,
    elapsed: Duration,
    duplicates: usize,
}

async fn bench_latency(topics: usize, warmup: usize, n: usize) -> LatencyResult {
    let setup = setup(topics, warmup + n).await;
    for index in 0..warmup {
        publish(&setup, index).await;
    }
    setup.shared.wait_received(warmup).await;
    wait_backlog_empty(&setup.bus).await;

    let started = Instant::now();
    let mut calls = Vec::with_capacity(n);
    for index in warmup..warmup + n {
        calls.push(publish(&setup, index).await);
    }
    setup.shared.wait_received(warmup + n).await;
    let elapsed = started.elapsed();
    let end_to_end = (warmup..warmup + n).map(|i| setup.shared.latency(i)).collect();
    let result = LatencyResult {
        topics,
        messages: n,
        end_to_end: percentiles(end_to_end),
        publish_call: percentiles(calls),
        elapsed,
        duplicates: setup.shared.duplicates.load(Ordering::SeqCst),
    };
    setup.bus.shutdown(Duration::from_secs(10)).await;
    result
}

#[derive(Debug)]
struct ThroughputResult {
    topics: usize,
    messages: usize,
    published: Duration,
    received: Duration,
    drained: Duration,
    end_to_end: Percentiles,
    publish_call: Percentiles,
    duplicates: usize,
}

impl ThroughputResult {
    fn rate(&self, over: Duration) -> f64 {
        self.messages as f64 / over.as_secs_f64()
    }
}

async fn bench_throughput(topics: usize, m: usize) -> ThroughputResult {
    let setup = Arc::new(setup(topics, m).await);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut publishers = tokio::task::JoinSet::new();
    for _ in 0..PUBLISHERS {
        let setup = Arc::clone(&setup);
        let next = Arc::clone(&next);
        publishers.spawn(async move {
            let mut calls = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= m {
                    return calls;
                }
                calls.push(publish(&setup, index).await);
            }
        });
    }
    let mut calls = Vec::with_capacity(m);
    while let Some(done) = publishers.join_next().await {
        calls.extend(done.expect("publisher task"));
    }
    let published = started.elapsed();
    setup.shared.wait_received(m).await;
    let received = started.elapsed();
    wait_backlog_empty(&setup.bus).await;
    let drained = started.elapsed();
    let end_to_end = (0..m).map(|i| setup.shared.latency(i)).collect();
    let result = ThroughputResult {
        topics,
        messages: m,
        published,
        received,
        drained,
        end_to_end: percentiles(end_to_end),
        publish_call: percentiles(calls),
        duplicates: setup.shared.duplicates.load(Ordering::SeqCst),
    };
    setup.bus.shutdown(Duration::from_secs(10)).await;
    result
}

fn main() {
    let scale = scale("BUS_BENCH_SCALE");
    let (warmup, n, m) = (scaled(LATENCY_WARMUP, scale), scaled(LATENCY_N, scale), scaled(THROUGHPUT_M, scale));
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("embedded bus benchmark: scale {scale}, {cores} cores, tokio multi-thread with 2 workers");
    println!("payload {PAYLOAD_BYTES} B + 1 attribute, SubscriptionConfig::new defaults, handler answers 204\n");

    let (latency, throughput) = runtime.block_on(async {
        let mut latency = Vec::new();
        let mut throughput = Vec::new();
        for topics in [1, 8] {
            latency.push(bench_latency(topics, warmup, n).await);
            throughput.push(bench_throughput(topics, m).await);
        }
        (latency, throughput)
    });

    println!("(a) latency: {n} messages after {warmup} warm-up, published sequentially by 1 task (ms)");
    println!(
        "{:<7} {:<15} {:>8} {:>8} {:>8} {:>8} {:>10} {:>5}",
        "topics", "measure", "p50", "p90", "p99", "max", "msg/s", "dups"
    );
    for r in &latency {
        let rate = r.messages as f64 / r.elapsed.as_secs_f64();
        for (what, p) in [("publish→handler", r.end_to_end), ("publish() call", r.publish_call)] {
            println!(
                "{:<7} {:<15} {:>8} {:>8} {:>8} {:>8} {:>10.0} {:>5}",
                r.topics,
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

    println!("\n(b) throughput: {m} messages from {PUBLISHERS} concurrent publisher tasks");
    println!(
        "{:<7} {:>12} {:>12} {:>12} {:>14} {:>14} {:>5}",
        "topics", "published s", "received s", "drained s", "e2e events/s", "acked evts/s", "dups"
    );
    for r in &throughput {
        println!(
            "{:<7} {:>12.3} {:>12.3} {:>12.3} {:>14.0} {:>14.0} {:>5}",
            r.topics,
            r.published.as_secs_f64(),
            r.received.as_secs_f64(),
            r.drained.as_secs_f64(),
            r.rate(r.received),
            r.rate(r.drained),
            r.duplicates
        );
    }
    println!("\n(b) latency under that load (ms)");
    println!("{:<7} {:<15} {:>8} {:>8} {:>8} {:>8}", "topics", "measure", "p50", "p90", "p99", "max");
    for r in &throughput {
        for (what, p) in [("publish→handler", r.end_to_end), ("publish() call", r.publish_call)] {
            println!(
                "{:<7} {:<15} {:>8} {:>8} {:>8} {:>8}",
                r.topics,
                what,
                ms(p.p50),
                ms(p.p90),
                ms(p.p99),
                ms(p.max)
            );
        }
    }
}
