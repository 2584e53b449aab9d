//! What the bus benches (`bus`, `pubsub`) share: a push endpoint that records when each message
//! arrived, the messages they publish, and their scale and number formats. (A directory module,
//! so cargo does not take it for a bench of its own.)

use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use devgem_common::envelope::PushRequest;
use devgem_common::ports::bus::OutboundMessage;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Bytes of message data (index, a space, padding): a small event, like ours.
pub const PAYLOAD_BYTES: usize = 256;
/// Give up on a phase after this long (a stuck bus should fail the run, not hang it).
pub const PHASE_TIMEOUT: Duration = Duration::from_secs(300);

/// What the handlers share with the benchmark: when each message was published and arrived.
#[derive(Debug)]
pub struct Shared {
    base: Instant,
    /// Nanoseconds since `base` just before `publish` was called, by message index.
    starts: Vec<AtomicU64>,
    /// Nanoseconds since `base` of the first delivery, by message index (0: not yet).
    arrivals: Vec<AtomicU64>,
    pub received: AtomicUsize,
    pub duplicates: AtomicUsize,
    /// `done` is notified when `received` reaches this.
    target: AtomicUsize,
    done: Notify,
}

impl Shared {
    pub fn new(messages: usize) -> Arc<Self> {
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

    pub fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.base).as_nanos()).unwrap_or(u64::MAX).max(1)
    }

    pub fn mark_start(&self, index: usize) {
        self.starts[index].store(self.nanos(Instant::now()), Ordering::Release);
    }

    pub fn latency(&self, index: usize) -> Duration {
        let start = self.starts[index].load(Ordering::Acquire);
        let arrival = self.arrivals[index].load(Ordering::Acquire);
        Duration::from_nanos(arrival.saturating_sub(start))
    }

    pub async fn wait_received(&self, target: usize) {
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

pub async fn handler(State(shared): State<Arc<Shared>>, request: PushRequest) -> StatusCode {
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

pub fn message(index: usize) -> OutboundMessage {
    let mut data = format!("{index} ").into_bytes();
    data.resize(PAYLOAD_BYTES, b'x');
    OutboundMessage {
        data: Bytes::from(data),
        attributes: BTreeMap::from([("kind".to_owned(), "bench".to_owned())]),
        ordering_key: None,
    }
}

/// The scale factor: the first numeric CLI argument (cargo bench passes `--bench` too), else
/// the variable `env`, else 1.
pub fn scale(env: &str) -> f64 {
    let from_args = std::env::args().skip(1).find_map(|a| a.parse::<f64>().ok());
    let from_env = || std::env::var(env).ok().and_then(|s| s.parse::<f64>().ok());
    let scale = from_args.or_else(from_env).unwrap_or(1.0);
    assert!(scale > 0.0 && scale.is_finite(), "the scale must be a positive number, got {scale}");
    scale
}

pub fn scaled(n: usize, scale: f64) -> usize {
    ((n as f64 * scale).round() as usize).max(1)
}

pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}
