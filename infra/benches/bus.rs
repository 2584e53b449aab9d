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
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use bytes::Bytes;
use devgem_common::clock::SystemClock;
use devgem_common::envelope::PushRequest;
use devgem_common::events::Topic;
use devgem_common::ports::bus::{Bus, OutboundMessage};
use devgem_infra::local::{LocalBus, SubscriptionConfig};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

mod support;
use support::{Percentiles, percentiles};

const LATENCY_N: usize = 5_000;
const LATENCY_WARMUP: usize = 500;
const THROUGHPUT_M: usize = 20_000;
const PUBLISHERS: usize = 8;
/// Bytes of message data (index, a space, padding): a small event, like ours.
const PAYLOAD_BYTES: usize = 256;
const PUSH_PATH: &str = "/push";
/// Give up on a phase after this long (a stuck bus should fail the run, not hang it).
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);

/// What the handlers share with the benchmark: when each message was published and arrived.
#[derive(Debug)]
struct Shared {
    base: Instant,
    /// Nanoseconds since `base` just before `publish` was called, by message index.
    starts: Vec<AtomicU64>,
    /// Nanoseconds since `base` of the first delivery, by message index (0: not yet).
    arrivals: Vec<AtomicU64>,
    received: AtomicUsize,
    duplicates: AtomicUsize,
    /// `done` is notified when `received` reaches this.
    target: AtomicUsize,
    done: Notify,
}

impl Shared {
    fn new(messages: usize) -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            starts: (0..messages).map(|_| AtomicU64::new(0)).collect(),
            arrivals: (0..messages).map(|_| AtomicU64::new(0)).collect(),
            received: AtomicUsize::new(0),
            duplicates: AtomicUsize::new(0),
            target: AtomicUsize::new(usize::MAX),
            done: Notify::new(),
        })
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.base).as_nanos()).unwrap_or(u64::MAX).max(1)
    }

    fn mark_start(&self, index: usize) {
        self.starts[index].store(self.nanos(Instant::now()), Ordering::Release);
    }

    fn latency(&self, index: usize) -> Duration {
        let start = self.starts[index].load(Ordering::Acquire);
        let arrival = self.arrivals[index].load(Ordering::Acquire);
        Duration::from_nanos(arrival.saturating_sub(start))
    }

    async fn wait_received(&self, target: usize) {
        self.target.store(target, Ordering::SeqCst);
        let wait = async {
            while self.received.load(Ordering::SeqCst) < target {
                self.done.notified().await;
            }
        };
        if tokio::time::timeout(PHASE_TIMEOUT, wait).await.is_err() {
            panic!(
                "only {} of {target} messages arrived within {PHASE_TIMEOUT:?}",
                self.received.load(Ordering::SeqCst)
            );
        }
    }
}

async fn handler(State(shared): State<Arc<Shared>>, request: PushRequest) -> StatusCode {
    let now = shared.nanos(Instant::now());
    let index = std::str::from_utf8(&request.message.data)
        .ok()
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse::<usize>().ok())
        .expect("message data starts with its index");
    if shared.arrivals[index].compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire).is_err() {
        shared.duplicates.fetch_add(1, Ordering::Relaxed);
        return StatusCode::NO_CONTENT;
    }
    let received = shared.received.fetch_add(1, Ordering::SeqCst) + 1;
    if received >= shared.target.load(Ordering::SeqCst) {
        // notify_one keeps a permit, so a wake-up that races the waiter is not lost.
        shared.done.notify_one();
    }
    StatusCode::NO_CONTENT
}

fn message(index: usize) -> OutboundMessage {
    let mut data = format!("{index} ").into_bytes();
    data.resize(PAYLOAD_BYTES, b'x');
    OutboundMessage {
        data: Bytes::from(data),
        attributes: BTreeMap::from([("kind".to_owned(), "bench".to_owned())]),
        ordering_key: None,
    }
}

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

/// The scale factor: the first numeric CLI argument (cargo bench passes `--bench` too), else
/// `BUS_BENCH_SCALE`, else 1.
fn scale() -> f64 {
    let from_args = std::env::args().skip(1).find_map(|a| a.parse::<f64>().ok());
    let from_env = || std::env::var("BUS_BENCH_SCALE").ok().and_then(|s| s.parse::<f64>().ok());
    let scale = from_args.or_else(from_env).unwrap_or(1.0);
    assert!(scale > 0.0 && scale.is_finite(), "the scale must be a positive number, got {scale}");
    scale
}

fn scaled(n: usize, scale: f64) -> usize {
    ((n as f64 * scale).round() as usize).max(1)
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn main() {
    let scale = scale();
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
